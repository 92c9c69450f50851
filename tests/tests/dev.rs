//! `skein dev`: one process, single-node cluster, real RocksDB files, real TLS.

use std::collections::BTreeSet;
use std::time::Duration;

use skein_tests::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

/// Reads SMTP reply lines until a final line (`NNN `) and returns it.
async fn reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<String> {
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await? == 0 {
            anyhow::bail!("connection closed");
        }
        if line.as_bytes().get(3) == Some(&b' ') {
            return Ok(line.trim_end().to_string());
        }
    }
}

/// Connects and runs EHLO, MAIL, RCPT and DATA up to the `354`, checking each reply.
async fn open_data(
    ip: &str,
    port: u16,
) -> anyhow::Result<(BufReader<OwnedReadHalf>, OwnedWriteHalf)> {
    let (rd, mut wr) = tokio::net::TcpStream::connect((ip, port))
        .await?
        .into_split();
    let mut rd = BufReader::new(rd);
    assert!(reply(&mut rd).await?.starts_with("220"));
    wr.write_all(
        b"EHLO raw.test\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n",
    )
    .await?;
    for want in ["250", "250 2.1.0", "250 2.1.5", "354"] {
        let got = reply(&mut rd).await?;
        assert!(got.starts_with(want), "{got} (wanted {want})");
    }
    Ok((rd, wr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_accepts_persists_and_restarts() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.30";
    let (grpc, smtp, smtps) = (free_port(ip), free_port(ip), free_port(ip));
    // Deliveries go to a port nobody listens on: they stay deferred, and the queue holds
    // exactly what was accepted (no outside DNS, no DSNs).
    let closed = free_port(ip);
    let data = dir.path().join("data");
    let cfg = dir.path().join("dev.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nlisten = \"{ip}:{grpc}\"\ndata_dir = \"{}\"\n\
             [edge]\nhostname = \"dev.skein.test\"\nrelay_networks = [\"127.0.0.0/8\"]\n\
             plaintext_auth_networks = [\"127.0.0.0/8\"]\n\
             [[edge.listeners]]\naddress = \"{ip}:{smtp}\"\n\
             [[edge.listeners]]\naddress = \"{ip}:{smtps}\"\ntls = \"implicit\"\n\
             [edge.limits]\nmax_message_size = \"20KB\"\nmax_connections_per_ip = 3\n\
             command_timeout = \"2s\"\ndata_timeout = \"1s\"\nmessages_per_minute_per_ip = 8\n\
             [sender]\nroutes = [{{ domain = \"*\", to = \"{ip}:{closed}\" }}]\n",
            data.display()
        ),
    )?;
    let mut dev = Proc::spawn(
        &[
            "dev",
            "--config",
            cfg.to_str().unwrap(),
            "--tenant",
            "demo:demo-password",
        ],
        &dir.path().join("dev.log"),
    )?;
    wait_for("dev to be ready", Duration::from_secs(30), || {
        let ready = dev.log_text().contains("ready");
        async move { ready.then_some(()) }
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", dev.log_text()))?;
    let banner = dev.log_text();
    assert!(
        banner.contains(&format!("SMTP (STARTTLS)        {ip}:{smtp}")),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("SMTP (implicit TLS)    {ip}:{smtps}")),
        "{banner}"
    );

    let grpc_addr = format!("{ip}:{grpc}");
    let (smtp_s, smtps_s) = (smtp.to_string(), smtps.to_string());
    // The generated self-signed certificate is written out: clients can verify against it.
    let cafile = data.join("edge-cert.pem");
    let cafile = cafile.to_str().unwrap();
    let relayed = submit(&[
        "--host", ip, "--port", &smtps_s, "--ssl", "--cafile", cafile, "--count", "3",
    ])?;
    assert!(
        relayed.iter().all(|r| r.code == Some(250)),
        "{relayed:?}\n{}",
        dev.log_text()
    );

    // The --tenant flag created a tenant; loopback may AUTH without TLS in dev.
    let authed = wait_for("the seeded tenant", Duration::from_secs(10), || async {
        let r = submit(&[
            "--host",
            ip,
            "--port",
            &smtp_s,
            "--user",
            "demo",
            "--password",
            "demo-password",
        ])
        .ok()?;
        (r[0].code == Some(250)).then_some(r)
    })
    .await?;

    // SIZE is enforced at MAIL when the client declares it.
    let big = submit(&["--host", ip, "--port", &smtp_s, "--size", "30000"])?;
    assert_eq!(big[0].code, Some(552), "{big:?}");
    assert!(big[0].text.contains("5.3.4"), "{big:?}");

    // A smuggling attempt against the live edge: one message refused, nothing stored.
    let before = local_ids(&grpc_addr).await?.len();
    let (mut rd, mut wr) = open_data(ip, smtp).await?;
    wr.write_all(b"hello\n.\nMAIL FROM:<spoof@victim.example>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nspoofed\r\n.\r\nQUIT\r\n").await?;
    let got = reply(&mut rd).await?;
    assert!(got.starts_with("554 5.6.0"), "{got}");
    assert!(reply(&mut rd).await?.starts_with("221"));
    assert_eq!(local_ids(&grpc_addr).await?.len(), before);

    // Per-IP message rate: 8 a minute from 127.0.0.77, then 421 4.7.0. Windows are clock
    // minutes; 17 messages cross at most one boundary, so at most 16 can pass.
    let burst = submit(&[
        "--host",
        ip,
        "--port",
        &smtp_s,
        "--source-ip",
        "127.0.0.77",
        "--count",
        "17",
        "--per-connection",
        "100",
    ])?;
    let passed = burst.iter().filter(|r| r.code == Some(250)).count();
    let limited = burst
        .iter()
        .filter(|r| r.code == Some(421) && r.text.contains("4.7.0"))
        .count();
    assert!((8..=16).contains(&passed) && limited >= 1, "{burst:?}");

    // Per-IP connection limit: the fourth concurrent connection is turned away with 421.
    let mut held = Vec::new();
    for _ in 0..3 {
        let s = tokio::net::TcpStream::connect((ip, smtp)).await?;
        let mut r = BufReader::new(s);
        assert!(reply(&mut r).await?.starts_with("220"));
        held.push(r);
    }
    let s = tokio::net::TcpStream::connect((ip, smtp)).await?;
    let got = reply(&mut BufReader::new(s)).await?;
    assert!(got.starts_with("421 4.7.0"), "{got}");
    // An idle client is dropped after command_timeout with 421 4.4.2 (RFC 5321 4.5.3.2).
    let got = tokio::time::timeout(Duration::from_secs(10), reply(&mut held[0])).await??;
    assert!(got.starts_with("421 4.4.2"), "{got}");
    drop(held);
    // A client that stalls inside DATA is dropped with 421 4.4.2 (not left hanging), and the
    // half-received message is not stored.
    let before = local_ids(&grpc_addr).await?.len();
    let (mut rd, mut wr) = open_data(ip, smtp).await?;
    wr.write_all(b"Subject: half a message\r\n").await?;
    let got = tokio::time::timeout(Duration::from_secs(10), reply(&mut rd)).await??;
    assert!(got.starts_with("421 4.4.2"), "{got}");
    assert_eq!(local_ids(&grpc_addr).await?.len(), before);

    // skeinctl, the admin CLI, sees the same queue.
    let ctl = skein_bin().with_file_name("skeinctl");
    let out = std::process::Command::new(&ctl)
        .args(["--server", &grpc_addr, "status"])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success()
            && text.contains("(Leader)")
            && text.contains(&format!("messages {}", 4 + passed)),
        "{text}"
    );
    let out = std::process::Command::new(&ctl)
        .args(["--server", &grpc_addr, "tenant", "list"])
        .output()?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo demo enabled"));

    // SIGKILL and restart: the acknowledged mail is still there, from the RocksDB files.
    let mut want: BTreeSet<String> = relayed.iter().filter_map(|r| r.id.clone()).collect();
    want.extend(authed.iter().filter_map(|r| r.id.clone()));
    want.extend(burst.iter().filter_map(|r| r.id.clone()));
    assert_eq!(want.len(), 4 + passed);
    dev.kill();
    dev.restart()?;
    let got = wait_for("dev after restart", Duration::from_secs(30), || async {
        local_ids(&grpc_addr).await.ok()
    })
    .await?;
    let got: BTreeSet<String> = got.into_iter().collect();
    assert_eq!(got, want);

    // SIGTERM (what Kubernetes sends) stops it cleanly.
    let status = sigterm(&mut dev).await?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

/// Sends `dev` SIGTERM and waits for it to exit.
async fn sigterm(dev: &mut Proc) -> anyhow::Result<std::process::ExitStatus> {
    let pid = dev.child.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()?
        .success());
    wait_for("exit after SIGTERM", Duration::from_secs(30), || {
        let s = dev.child.try_wait().ok().flatten();
        async move { s }
    })
    .await
}

/// A stop that comes while dev is still starting (its first log lines out, nothing listening
/// yet) waits for the start and shuts it down cleanly, instead of killing it halfway: the
/// signal handlers are in place before any role starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_startup_stops_cleanly() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.230";
    let (grpc, smtp) = (free_port(ip), free_port(ip));
    let cfg = dir.path().join("dev.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nlisten = \"{ip}:{grpc}\"\ndata_dir = \"{}\"\n\
             [edge]\nhostname = \"dev.skein.test\"\n\
             [[edge.listeners]]\naddress = \"{ip}:{smtp}\"\n",
            dir.path().join("data").display()
        ),
    )?;
    let mut dev = Proc::spawn(
        &["dev", "--config", cfg.to_str().unwrap()],
        &dir.path().join("dev.log"),
    )?;
    // Watched closely: the whole start takes a fraction of a second.
    let t0 = std::time::Instant::now();
    while dev.log_text().is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(30), "dev wrote nothing");
        std::thread::sleep(Duration::from_millis(1));
    }
    let status = sigterm(&mut dev).await?;
    assert!(status.success(), "{status:?}\n{}", dev.log_text());
    Ok(())
}

/// A client guessing passwords gets a few tries a minute: past them (3 here) AUTH answers
/// 454 4.7.0 without checking, even the right password; password checks themselves run a
/// few at a time, so a flood waits instead of exhausting memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_auth_is_throttled_per_client() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.116";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.117",
        "",
        "credentials_refresh = \"1s\"\n[edge.limits]\nauth_failures_per_minute_per_ip = 3",
        &["--tenant", "acme:right-password"],
    )
    .await?;
    let port = rig.smtp.to_string();
    let login = |password: &str, from: &str| -> anyhow::Result<Submitted> {
        let args = [
            "--source-ip",
            from,
            "--host",
            ip,
            "--port",
            &port,
            "--user",
            "acme",
            "--password",
            password,
            "--mail-from",
            "app@acme.test",
            "--rcpt",
            "x@example.net",
        ];
        Ok(submit(&args)?.remove(0))
    };
    // The seeded tenant exists once the node leads; the edge learns it on its next refresh
    // (every second here). AUTH before that would count as failures.
    wait_for("the tenant", Duration::from_secs(30), || async {
        let (ok, out, _) = skeinctl(&rig.grpc, &["tenant", "list"]).ok()?;
        (ok && out.contains("acme")).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let s = login("right-password", "127.0.0.1")?;
    assert_eq!(s.code, Some(250), "{s:?}");
    let guesser = "127.0.0.118";
    for _ in 0..3 {
        let s = login("wrong-password", guesser)?;
        assert!(s.text.contains("535"), "{s:?}");
    }
    let s = login("right-password", guesser)?;
    assert!(s.text.contains("454") && s.text.contains("4.7.0"), "{s:?}");
    let s = login("right-password", "127.0.0.1")?;
    assert_eq!(s.code, Some(250), "other clients are not held: {s:?}");
    Ok(())
}

/// The classic open-relay battery against a live edge that relays for nobody by address:
/// every trick to get mail for another domain through without AUTH is refused with a 5.7.1
/// (relaying denied) or a 5.1.x/5.5.x (not an address we take), whatever the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_relay_battery_is_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.119";
    let (grpc, smtp) = free_ports(ip);
    let cfg = dir.path().join("dev.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nlisten = \"{ip}:{grpc}\"\ndata_dir = \"{}\"\n\
             [edge]\nhostname = \"relay.skein.test\"\nrelay_networks = []\n\
             [[edge.listeners]]\naddress = \"{ip}:{smtp}\"\n",
            dir.path().join("data").display()
        ),
    )?;
    let dev = Proc::spawn(
        &["dev", "--config", cfg.to_str().unwrap_or_default()],
        &dir.path().join("dev.log"),
    )?;
    wait_listening(format!("{ip}:{smtp}").parse()?, Duration::from_secs(60))
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&dev.log_text(), 30)))?;
    let long = format!("<{}@remote.test>", "a".repeat(300));
    let rcpts = [
        "<victim@remote.test>",
        "<Victim@REMOTE.TEST>",
        "<victim%remote.test@relay.skein.test>",
        "<victim%remote.test@[127.0.0.119]>",
        "<@relay.skein.test:victim@remote.test>",
        "<\"victim@remote.test\"@relay.skein.test>",
        "<remote.test!victim@relay.skein.test>",
        "<remote.test!victim>",
        "<victim@[192.0.2.1]>",
        "<victim@remote.test@relay.skein.test>",
        "<victim>",
        "<postmaster@remote.test>",
        long.as_str(),
    ];
    for from in ["<a@external.test>", "<>", "<a@relay.skein.test>"] {
        let (rd, mut wr) = tokio::net::TcpStream::connect((ip, smtp))
            .await?
            .into_split();
        let mut rd = BufReader::new(rd);
        assert!(reply(&mut rd).await?.starts_with("220"));
        wr.write_all(format!("EHLO outside.test\r\nMAIL FROM:{from}\r\n").as_bytes())
            .await?;
        assert!(reply(&mut rd).await?.starts_with("250"));
        let mail = reply(&mut rd).await?;
        assert!(mail.starts_with("250"), "MAIL FROM:{from}: {mail}");
        for rcpt in rcpts {
            wr.write_all(format!("RCPT TO:{rcpt}\r\n").as_bytes())
                .await?;
            let got = reply(&mut rd).await?;
            let refused = got.starts_with('5')
                && ["5.7.1", "5.1.", "5.5."]
                    .iter()
                    .any(|code| got[4..].starts_with(code));
            assert!(refused, "MAIL FROM:{from} RCPT TO:{rcpt}: {got}");
        }
        wr.write_all(b"DATA\r\n").await?;
        let data = reply(&mut rd).await?;
        assert!(data.starts_with('5'), "no recipient, no DATA: {data}");
    }
    Ok(())
}

/// A client that pipelines commands and never reads the replies can't hold its connection
/// (nor make the edge buffer without end): once the replies fill the sockets, the edge gives
/// up writing after the command timeout (1 s here) and drops it, so the client's one allowed
/// connection is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_dropped() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.131";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.132",
        "",
        "[edge.limits]\ncommand_timeout = \"1s\"\nmax_connections_per_ip = 1",
        &[],
    )
    .await?;
    // The greeting: the connection holds the client's one slot (once the check that the
    // edge listens has let go of it).
    let (rd, mut wr) = wait_for("the first connection", Duration::from_secs(10), || async {
        let (rd, wr) = tokio::net::TcpStream::connect((ip, rig.smtp))
            .await
            .ok()?
            .into_split();
        let mut rd = BufReader::new(rd);
        let line = reply(&mut rd).await.ok()?;
        line.starts_with("220").then_some((rd, wr))
    })
    .await?;
    let probe = || async {
        let s = tokio::net::TcpStream::connect((ip, rig.smtp)).await.ok()?;
        reply(&mut BufReader::new(s)).await.ok()
    };
    let refused = probe().await.unwrap_or_default();
    assert!(
        refused.starts_with("421"),
        "one connection per client: {refused}"
    );
    // 3,000,000 EHLOs (51 MB) and never a read: hundreds of MB of replies.
    let flood = tokio::spawn(async move {
        let _ = wr
            .write_all(&b"EHLO flood.test\r\n".repeat(3_000_000))
            .await;
        wr
    });
    let greeting = wait_for("the slot back", Duration::from_secs(20), || async {
        probe().await.filter(|l| l.starts_with("220"))
    })
    .await?;
    assert!(greeting.contains("ESMTP"), "{greeting}");
    flood.abort();
    drop(rd);
    Ok(())
}

/// No session lasts for ever, however busy the client keeps it: past `max_session_duration`
/// the edge answers the next command 421 4.7.0 and closes. A message being received when the
/// time comes is finished (and accepted) first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ends_after_its_longest_duration() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.134";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.135",
        "",
        "[edge.limits]\nmax_session_duration = \"2s\"",
        &[],
    )
    .await?;
    let started = std::time::Instant::now();
    let (mut rd, mut wr) = open_data(ip, rig.smtp).await?;
    // The body arrives a line every 200 ms, across the session's end.
    wr.write_all(b"Subject: slow\r\n\r\n").await?;
    while started.elapsed() < Duration::from_millis(2_600) {
        wr.write_all(b"still typing\r\n").await?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wr.write_all(b".\r\n").await?;
    let accepted = reply(&mut rd).await?;
    assert!(accepted.starts_with("250 2.0.0"), "{accepted}");
    wr.write_all(b"NOOP\r\n").await?;
    let closing = reply(&mut rd).await?;
    assert!(
        closing.starts_with("421 4.7.0") && closing.contains("Session too long"),
        "{closing}"
    );
    assert!(reply(&mut rd).await.is_err(), "closed after the 421");

    // A client that only keeps the session busy with NOOPs gets the same.
    let (rd, mut wr) = tokio::net::TcpStream::connect((ip, rig.smtp))
        .await?
        .into_split();
    let mut rd = BufReader::new(rd);
    assert!(reply(&mut rd).await?.starts_with("220"));
    let started = std::time::Instant::now();
    let last = loop {
        wr.write_all(b"NOOP\r\n").await?;
        let r = reply(&mut rd).await?;
        if !r.starts_with("250") || started.elapsed() > Duration::from_secs(20) {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(last.starts_with("421 4.7.0"), "{last}");
    Ok(())
}

/// The edge's resident memory (kB), from /proc.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// An AUTH flood (160 connections from 40 addresses pipelining wrong passwords as fast as the
/// edge answers) and a slowloris (80 connections trickling a byte every half second) against
/// one edge: password checks stay one per core (each argon2 check takes ~19 MiB, so 160 at
/// once would take 3 GB), memory stays within 150 MB of where it started, and a client with
/// the right password is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_flood_and_a_slowloris_leave_memory_bounded_and_clients_served(
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.136";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.137",
        "",
        "credentials_refresh = \"1s\"",
        &["--tenant", "acme:right-password"],
    )
    .await?;
    wait_for("the tenant", Duration::from_secs(30), || async {
        let (ok, out, _) = skeinctl(&rig.grpc, &["tenant", "list"]).ok()?;
        (ok && out.contains("acme")).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let pid = rig.dev.child.id();
    let before = rss_kb(pid);
    assert!(before > 0);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let port = rig.smtp;
    let edge: std::net::SocketAddr = format!("{ip}:{port}").parse()?;
    // Passwords the edge really checked (535; past the per-client limit it answers 454).
    let checked = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = Vec::new();
    // "\0acme\0wrong-password" in base64.
    let guess = b"EHLO flood.test\r\nAUTH PLAIN AGFjbWUAd3JvbmctcGFzc3dvcmQ=\r\n\
                  AUTH PLAIN AGFjbWUAd3JvbmctcGFzc3dvcmQ=\r\nAUTH PLAIN AGFjbWUAd3JvbmctcGFzc3dvcmQ=\r\n";
    for n in 0..160u32 {
        let (stop, checked) = (stop.clone(), checked.clone());
        let from: std::net::IpAddr = format!("127.0.2.{}", n % 40 + 1).parse()?;
        tasks.push(tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let sock = tokio::net::TcpSocket::new_v4().ok()?;
                sock.bind((from, 0).into()).ok()?;
                let Ok(mut s) = sock.connect(edge).await else {
                    continue;
                };
                let _ = s.write_all(guess).await;
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let rejected = String::from_utf8_lossy(&seen).matches("535 5.7.8").count();
                checked.fetch_add(rejected as u64, std::sync::atomic::Ordering::Relaxed);
            }
            Some(())
        }));
    }
    for _ in 0..80 {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::TcpSocket::new_v4().ok()?;
            sock.bind(("127.0.3.1".parse::<std::net::IpAddr>().ok()?, 0).into())
                .ok()?;
            let mut s = sock.connect(edge).await.ok()?;
            for b in b"EHLO slow.loris.test\r\n".iter().cycle() {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                s.write_all(&[*b]).await.ok()?;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Some(())
        }));
    }
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kb(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let port_s = port.to_string();
    let legit = tokio::task::spawn_blocking(move || {
        submit(&[
            "--source-ip",
            "127.0.0.1",
            "--host",
            ip,
            "--port",
            &port_s,
            "--user",
            "acme",
            "--password",
            "right-password",
            "--mail-from",
            "app@acme.test",
            "--rcpt",
            "x@example.net",
            "--timeout",
            "60",
        ])
    })
    .await??;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sampler.await?;
    for t in tasks {
        t.abort();
    }
    assert_eq!(legit[0].code, Some(250), "{:?}", legit[0]);
    let log = rig.dev.log_text();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let checked = checked.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{checked} passwords checked; edge RSS {before} kB, at most {peak} kB");
    assert!(checked >= 100, "the flood got {checked} passwords checked");
    assert!(
        peak < before + 150 * 1024,
        "RSS went from {before} kB to {peak} kB\n{}",
        tail(&log, 20)
    );
    Ok(())
}

/// `skein dev` logs each outcome; `skeinctl message ID --data` on a delivered message says its
/// content is gone (it is dropped once every recipient is final) instead of printing an empty
/// line; skeinctl takes several servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_message_says_its_content_is_gone() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.138";
    let rig = DevWithSink::start(dir.path(), ip, "127.0.0.139", "", "", &[]).await?;
    let id = submit_relayed(ip, rig.smtp, "done@example.net")?;
    let m = wait_final(&rig.grpc, &id, Duration::from_secs(30)).await?;
    assert_eq!(m.recipients[0].state, "delivered", "{m:?}");
    // dev says what happened to it, without --events.
    let said = format!("delivered {id} to done@example.net via");
    wait_for("dev's outcome line", Duration::from_secs(10), || async {
        rig.dev.log_text().contains(&said).then_some(())
    })
    .await?;
    let (ok, out, err) = skeinctl(&rig.grpc, &["message", &id, "--data"])?;
    assert!(ok, "{err}");
    assert!(out.contains(&id), "the envelope is still shown: {out}");
    assert!(
        err.contains("is no longer stored") && err.contains(&id),
        "{err}"
    );

    // Several servers: the first that answers is used; none answering is one line saying so.
    let down = format!("127.0.0.139:{}", free_port("127.0.0.139"));
    let (ok, out, err) = skeinctl(&format!("{down},http://{}", rig.grpc), &["status"])?;
    assert!(ok && out.contains("leader"), "{out}{err}");
    let (ok, _, err) = skeinctl(&down, &["status"])?;
    assert!(!ok);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("no queue node answered") && err.contains("Connection refused"),
        "{err}"
    );
    Ok(())
}

/// `skeinctl messages` shows each message's recipients by state and filters by state,
/// recipient, tenant and age, paging past a page as asked; `skeinctl senders` shows the
/// connected sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_list_by_state_and_filter() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.186";
    let rig = DevWithSink::start(dir.path(), ip, "127.0.0.187", "", "", &[]).await?;
    let ok = submit_relayed(ip, rig.smtp, "ok@example.net")?;
    let bounced = submit_relayed(ip, rig.smtp, "reject-x@example.net")?;
    let deferred = submit_relayed(ip, rig.smtp, "defer-99-x@example.net")?;
    wait_final(&rig.grpc, &ok, Duration::from_secs(30)).await?;
    wait_final(&rig.grpc, &bounced, Duration::from_secs(30)).await?;
    wait_for("the deferral", Duration::from_secs(30), || async {
        let m = message_status(&rig.grpc, &deferred).await.ok()?;
        (m.recipients.first()?.state == "deferred").then_some(())
    })
    .await?;
    let list = |args: &[&str]| -> anyhow::Result<(Vec<String>, String)> {
        let (ok, out, err) = skeinctl(&rig.grpc, &[&["messages"][..], args].concat())?;
        anyhow::ensure!(ok, "{err}");
        Ok((out.lines().map(str::to_string).collect(), err))
    };
    let ids = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter_map(|l| l.split_whitespace().next().map(str::to_string))
            .collect()
    };
    let (lines, _) = list(&["--state", "bounced"])?;
    assert_eq!(ids(&lines), [bounced], "{lines:?}");
    assert!(lines[0].contains("bounced 1"), "{lines:?}");
    let (lines, _) = list(&["--state", "pending"])?;
    assert_eq!(ids(&lines), [deferred], "{lines:?}");
    assert!(lines[0].contains("deferred 1"), "{lines:?}");
    let (lines, _) = list(&["--rcpt", "OK@example.net"])?;
    assert_eq!(ids(&lines), [ok], "case-insensitive: {lines:?}");
    assert!(lines[0].contains("delivered 1"), "{lines:?}");
    let (lines, _) = list(&["--older-than", "1h"])?;
    assert!(lines.is_empty(), "{lines:?}");
    let (lines, _) = list(&["--tenant", "nobody"])?;
    assert!(lines.is_empty(), "{lines:?}");
    // One at a time: the next page is named.
    let (lines, err) = list(&["--limit", "1"])?;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        err.contains(&format!("--after {}", ids(&lines)[0])),
        "{err}"
    );
    // A state that is none is refused, naming the ones there are.
    let (okay, _, err) = skeinctl(&rig.grpc, &["messages", "--state", "lost"])?;
    assert!(!okay && err.contains("one of queued"), "{err}");
    // The sender working for the cluster, with its source IP (published once a second).
    let senders = wait_for("the sender listed", Duration::from_secs(10), || async {
        let (ok, out, _) = skeinctl(&rig.grpc, &["senders"]).ok()?;
        (ok && out.contains("dev-sender")).then_some(out)
    })
    .await?;
    assert!(senders.contains("127.0.0.1"), "{senders}");
    // The hard bounce put its address on the suppression list: when and why are shown.
    let (ok, out, err) = skeinctl(&rig.grpc, &["suppression", "list", "--tenant", ""])?;
    assert!(ok, "{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("reject-x@example.net"))
        .unwrap_or_default();
    assert!(
        line.contains(" since 20") && line.contains("5.1.1"),
        "{out}"
    );
    Ok(())
}

/// An edge whose queue nodes do not answer says so in its log, naming them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_says_when_no_queue_node_answers() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let dead = format!("127.0.0.189:{}", free_port("127.0.0.189"));
    let edge = Edge::start(dir.path(), "127.0.0.188", std::slice::from_ref(&dead), "").await?;
    wait_for("the warning", Duration::from_secs(20), || async {
        let log = edge.proc.log_text();
        (log.contains("no queue node answers") && log.contains(&dead)).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&edge.proc.log_text(), 10)))?;
    Ok(())
}
