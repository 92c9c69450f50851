//! Harness for Skein's integration tests: starts real `skein` processes (queue nodes, edges,
//! `skein dev`) on loopback addresses with their own RocksDB directories, talks to them over
//! the Admin gRPC API, and submits mail with Python's smtplib (`tests/py/submit.py`).
//!
//! The `skein` binary must be built first (`cargo build --bins`; `scripts/test.sh` does it).

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::{
    ClusterStatusRequest, ClusterStatusResponse, ListMessagesRequest, Message,
};
use tonic::transport::Channel;

/// This package's directory (`tests/`). Read at run time: cargo and nextest set it for every
/// test process, while a value compiled in may name another checkout that shared the build
/// cache (cargo does not rebuild when only the checkout's path changed).
pub fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// A test tool `scripts/setup.sh --tests` caches under `~/.cache/skein/tools/NAME-VERSION/`,
/// or else `name` on the PATH.
pub fn cached_tool(name: &str, version: &str) -> PathBuf {
    let home = std::env::var("HOME").unwrap_or_default();
    let cached = PathBuf::from(home)
        .join(".cache/skein/tools")
        .join(format!("{name}-{version}"))
        .join(name);
    if cached.exists() {
        cached
    } else {
        PathBuf::from(name)
    }
}

/// The `skein` binary next to the test executable's `deps/` directory.
pub fn skein_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let bin = dir.join("skein");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// A free TCP port on `ip` (bound and released; fine on loopback in tests).
pub fn free_port(ip: &str) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Two different free TCP ports on `ip` (two calls of [`free_port`] may return the same one).
pub fn free_ports(ip: &str) -> (u16, u16) {
    let a = free_port(ip);
    loop {
        let b = free_port(ip);
        if b != a {
            return (a, b);
        }
    }
}

/// A child process killed when dropped, with its stderr in a log file.
pub struct Proc {
    /// The process.
    pub child: Child,
    /// Its log.
    pub log: PathBuf,
    args: Vec<String>,
}

impl Proc {
    /// Starts `skein ARGS` logging to `log`.
    pub fn spawn(args: &[&str], log: &Path) -> anyhow::Result<Self> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let child = Self::start(&args, log)?;
        Ok(Self {
            child,
            log: log.to_path_buf(),
            args,
        })
    }

    fn start(args: &[String], log: &Path) -> anyhow::Result<Child> {
        let err = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let out = err.try_clone()?;
        Command::new(skein_bin())
            .args(args)
            .env("SKEIN_LOG", "info,skein_cluster=debug,openraft=warn")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .context("spawning skein")
    }

    /// SIGKILL, no goodbye.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the same command again (after [`Proc::kill`]).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.child = Self::start(&self.args, &self.log)?;
        Ok(())
    }

    /// The log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An Admin client of the node at `addr`.
pub async fn admin(addr: &str) -> anyhow::Result<AdminClient<Channel>> {
    let ch = Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(Duration::from_secs(10))
        .connect()
        .await?;
    Ok(AdminClient::new(ch).max_decoding_message_size(80 << 20))
}

/// Cluster status from the node at `addr`.
pub async fn status(addr: &str) -> anyhow::Result<ClusterStatusResponse> {
    Ok(admin(addr)
        .await?
        .cluster_status(ClusterStatusRequest {})
        .await?
        .into_inner())
}

/// Polls `f` every 100 ms until it returns `Some`, or fails after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if start.elapsed() > limit {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message id in the node's own applied state (Admin ListMessages with `local`).
pub async fn local_ids(addr: &str) -> anyhow::Result<Vec<String>> {
    list_ids(addr, true).await
}

/// Every message id the cluster holds, read on the leader after it has applied everything
/// committed (Admin ListMessages, linearizable, through the node at `addr`).
pub async fn cluster_ids(addr: &str) -> anyhow::Result<Vec<String>> {
    list_ids(addr, false).await
}

async fn list_ids(addr: &str, local: bool) -> anyhow::Result<Vec<String>> {
    let mut c = admin(addr).await?;
    let mut ids = Vec::new();
    let mut after = String::new();
    loop {
        let r = c
            .list_messages(ListMessagesRequest {
                after: after.clone(),
                limit: 1000,
                local,
                ..Default::default()
            })
            .await?
            .into_inner();
        ids.extend(r.messages.iter().map(|m: &Message| m.id.clone()));
        if r.next_after.is_empty() {
            return Ok(ids);
        }
        after = r.next_after;
    }
}

/// One line of `submit.py` output.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// Message number.
    pub i: u64,
    /// SMTP code after the final dot, if any reply came.
    pub code: Option<u64>,
    /// Queue id when the code was 250.
    pub id: Option<String>,
    /// The reply text or the client-side error.
    pub text: String,
}

/// Submits one message to `rcpt` through the edge at `ip`:`port` (relayed from 127.0.0.0/8);
/// its queue id.
pub fn submit_relayed(ip: &str, port: u16, rcpt: &str) -> anyhow::Result<String> {
    let port = port.to_string();
    let s = submit(&[
        "--host",
        ip,
        "--port",
        &port,
        "--mail-from",
        "app@routed.test",
        "--rcpt",
        rcpt,
    ])?;
    s[0].id
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{rcpt}: not accepted"))
}

/// Path of the Python client.
pub fn submit_py() -> PathBuf {
    manifest_dir().join("py/submit.py")
}

/// Runs `submit.py ARGS` to completion and returns one record per message.
pub fn submit(args: &[&str]) -> anyhow::Result<Vec<Submitted>> {
    let out = Command::new("python3")
        .arg(submit_py())
        .args(args)
        .output()
        .context("python3")?;
    if !out.status.success() {
        bail!("submit.py failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_submitted(&String::from_utf8_lossy(&out.stdout))
}

/// Starts `submit.py ARGS` in the background; its stdout is read with [`SubmitRun::next_record`].
pub struct SubmitRun {
    child: Child,
    reader: BufReader<std::process::ChildStdout>,
}

impl SubmitRun {
    /// Starts the client.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut child = Command::new("python3")
            .arg(submit_py())
            .args(args)
            .stdout(Stdio::piped())
            .spawn()?;
        let reader = BufReader::new(child.stdout.take().context("stdout")?);
        Ok(Self { child, reader })
    }

    /// Blocks for the next record; `None` at the end.
    pub fn next_record(&mut self) -> anyhow::Result<Option<Submitted>> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                let _ = self.child.wait();
                return Ok(None);
            }
            if let Some(s) = parse_submitted(&line)?.pop() {
                return Ok(Some(s));
            }
        }
    }
}

/// `submit.py` running in the background until stopped, its records kept with the time each
/// arrived (the script flushes one line per message).
pub struct Submitter {
    pid: u32,
    records: std::sync::Arc<std::sync::Mutex<Vec<(Instant, Submitted)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Submitter {
    /// Starts `submit.py ARGS`.
    pub fn start(args: &[&str]) -> anyhow::Result<Self> {
        let mut run = SubmitRun::start(args)?;
        let pid = run.child.id();
        let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = records.clone();
        let reader = std::thread::spawn(move || {
            while let Ok(Some(r)) = run.next_record() {
                sink.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((Instant::now(), r));
            }
        });
        Ok(Self {
            pid,
            records,
            reader: Some(reader),
        })
    }

    /// Every record so far, with its arrival time.
    pub fn records(&self) -> Vec<(Instant, Submitted)> {
        self.records
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Stops the client (SIGTERM) and waits for its last records.
    pub fn stop(&mut self) {
        signal(self.pid, "TERM");
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Submitter {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Sends signal `name` (`STOP`, `CONT`, `TERM`...) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

fn parse_submitted(text: &str) -> anyhow::Result<Vec<Submitted>> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| line.to_string())?;
        if v.get("done").is_some() {
            continue;
        }
        out.push(Submitted {
            i: v["i"].as_u64().unwrap_or(0),
            code: v["code"].as_u64(),
            id: v["id"].as_str().map(str::to_string),
            text: v["reply"]
                .as_str()
                .or(v["error"].as_str())
                .unwrap_or("")
                .to_string(),
        });
    }
    Ok(out)
}

/// A certificate for `127.0.0.1`, `localhost` and the given extra names, written as
/// `cert.pem` and `key.pem` under `dir`.
pub fn write_cert(dir: &Path, extra: &[&str]) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    names.extend(extra.iter().map(|s| s.to_string()));
    let ck = rcgen::generate_simple_self_signed(names)?;
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.signing_key.serialize_pem())?;
    Ok((cert, key))
}

/// A queue cluster of real `skein node` processes on 127.0.0.x addresses.
pub struct Cluster {
    /// The node processes, index i is node id i+1.
    pub nodes: Vec<Proc>,
    /// gRPC addresses, same order.
    pub addrs: Vec<String>,
    /// Where configs, data and logs live.
    pub dir: tempfile::TempDir,
    /// Slow links in front of the nodes, when started with [`Cluster::start_throttled`].
    pub links: Vec<SlowLink>,
}

impl Cluster {
    /// Starts `n` nodes on 127.0.0.{ip_base+1..}; `extra` is appended to every [node] section.
    pub fn start(n: usize, ip_base: u8, extra: &str) -> anyhow::Result<Self> {
        Self::start_with(n, ip_base, extra, None)
    }

    /// Like [`Cluster::start`], but nodes reach each other only through a [`SlowLink`]
    /// carrying `rate` bytes per second each way (each node advertises its link's address;
    /// `addrs` still reach the nodes directly).
    pub fn start_throttled(n: usize, ip_base: u8, extra: &str, rate: u64) -> anyhow::Result<Self> {
        Self::start_with(n, ip_base, extra, Some(rate))
    }

    fn start_with(n: usize, ip_base: u8, extra: &str, rate: Option<u64>) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let addrs: Vec<String> = (1..=n)
            .map(|i| {
                let ip = format!("127.0.0.{}", ip_base as usize + i);
                format!("{ip}:{}", free_port(&ip))
            })
            .collect();
        let links = match rate {
            Some(rate) => addrs
                .iter()
                .map(|a| SlowLink::start(a, rate))
                .collect::<anyhow::Result<Vec<_>>>()?,
            None => Vec::new(),
        };
        let advertised: Vec<String> = match rate {
            Some(_) => links.iter().map(|l| l.addr.clone()).collect(),
            None => addrs.clone(),
        };
        let members: Vec<String> = advertised
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }}", i + 1))
            .collect();
        let mut nodes = Vec::new();
        for (i, addr) in addrs.iter().enumerate() {
            let id = i + 1;
            let cfg = dir.path().join(format!("node{id}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[node]\nid = {id}\nlisten = \"{addr}\"\nadvertise = \"{}\"\ndata_dir = \"{}\"\ninitial_members = [{}]\n{extra}\n",
                    advertised[i],
                    dir.path().join(format!("data{id}")).display(),
                    members.join(", ")
                ),
            )?;
            let log = dir.path().join(format!("node{id}.log"));
            nodes.push(Proc::spawn(
                &["node", "--config", cfg.to_str().expect("utf-8 path")],
                &log,
            )?);
        }
        Ok(Self {
            nodes,
            addrs,
            dir,
            links,
        })
    }

    /// Waits until a node reports a leader that the others agree on; returns its index.
    pub async fn leader(&self, alive: &[usize], limit: Duration) -> anyhow::Result<usize> {
        wait_for("a leader", limit, || async {
            let mut leader = None;
            for &i in alive {
                let s = status(&self.addrs[i]).await.ok()?;
                if s.leader_id == 0 || leader.is_some_and(|l| l != s.leader_id) {
                    return None;
                }
                leader = Some(s.leader_id);
            }
            leader.map(|l| l as usize - 1)
        })
        .await
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .enumerate()
            .map(|(i, p)| {
                // Backtrace frames would crowd out the error that ended a process.
                let text = p.log_text();
                let lines: Vec<&str> = text
                    .lines()
                    .filter(|l| {
                        let t = l.trim_start();
                        !(t.starts_with("at ")
                            || t.split_once(": ")
                                .is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit())))
                    })
                    .collect();
                format!("--- node {} ---\n{}", i + 1, tail(&lines.join("\n"), 40))
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A TCP proxy in front of `target` that carries at most `rate` bytes per second each way on
/// each connection: a slow network link. It runs on a thread of its own until dropped.
pub struct SlowLink {
    /// Where to connect instead of the target (same IP, another port).
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl SlowLink {
    /// Starts a link to `target` (`ip:port`).
    pub fn start(target: &str, rate: u64) -> anyhow::Result<Self> {
        let ip = target.rsplit_once(':').context("ip:port")?.0;
        let listener = TcpListener::bind((ip, 0))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?.to_string();
        let target = target.to_string();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    while let Ok((down, _)) = listener.accept().await {
                        let target = target.clone();
                        tokio::spawn(async move {
                            let Ok(up) = tokio::net::TcpStream::connect(&target).await else {
                                return;
                            };
                            let _ = (down.set_nodelay(true), up.set_nodelay(true));
                            let (dr, dw) = down.into_split();
                            let (ur, uw) = up.into_split();
                            tokio::join!(slow_copy(dr, uw, rate), slow_copy(ur, dw, rate));
                        });
                    }
                };
                tokio::select! {
                    _ = accept => {}
                    _ = stopped => {}
                }
            });
        });
        Ok(Self {
            addr,
            stop: Some(stop),
        })
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// Copies `from` to `to` at most `rate` bytes per second, then closes `to`'s write side.
async fn slow_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    rate: u64,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let start = tokio::time::Instant::now();
    let mut sent: u64 = 0;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        sent += n as u64;
        // Ahead of the rate: wait until the bytes sent so far are due.
        let due = start + Duration::from_micros(sent.saturating_mul(1_000_000) / rate);
        tokio::time::sleep_until(due).await;
    }
    let _ = to.shutdown().await;
}

/// An Enqueue call for one message of `size` bytes to `r{i}@example.net`, with Message-ID
/// `<{tag}-{i}@test>` and submission id `{tag}-{i}`.
pub fn sized_request(tag: &str, i: usize, size: usize) -> skein_proto::ingest::EnqueueRequest {
    let mut data =
        format!("Message-ID: <{tag}-{i}@test>\r\nSubject: {tag} {i}\r\n\r\n").into_bytes();
    data.resize(size, b'x');
    skein_proto::ingest::EnqueueRequest {
        mail_from: "app@example.com".into(),
        rcpt_to: vec![format!("r{i}@example.net")],
        data: data.into(),
        client_ip: "127.0.0.1".into(),
        submission_id: format!("{tag}-{i}").into_bytes(),
        ..Default::default()
    }
}

/// The last `n` lines of `s`.
pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes an edge config submitting to `queue` and returns (config path, SMTP port, TLS port).
pub fn edge_config(
    dir: &Path,
    ip: &str,
    queue: &[String],
    cert: &Path,
    key: &Path,
    extra: &str,
) -> anyhow::Result<(PathBuf, u16, u16)> {
    let smtp = free_port(ip);
    let smtps = free_port(ip);
    let q: Vec<String> = queue.iter().map(|a| format!("\"{a}\"")).collect();
    let cfg = dir.join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[edge]\nhostname = \"edge.skein.test\"\nqueue = [{}]\ncommit_timeout = \"8s\"\ncredentials_refresh = \"1s\"\n{extra}\n\
             [[edge.listeners]]\naddress = \"{ip}:{smtp}\"\ntls = \"starttls\"\n\
             [[edge.listeners]]\naddress = \"{ip}:{smtps}\"\ntls = \"implicit\"\n\
             [edge.tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            q.join(", "),
            cert.display(),
            key.display()
        ),
    )?;
    Ok((cfg, smtp, smtps))
}

/// A `skein edge` process on `ip` submitting to `queue`, with a certificate for `ip`.
pub struct Edge {
    /// The process.
    pub proc: Proc,
    /// Its STARTTLS (and plain) SMTP port on `ip`.
    pub smtp: u16,
    /// Its implicit-TLS port.
    pub smtps: u16,
    /// The certificate it presents (a CA file for clients).
    pub cert: PathBuf,
}

impl Edge {
    /// Writes a certificate and a configuration ([`edge_config`], with `extra` lines in
    /// `[edge]`) under `dir`, starts the edge and waits until its SMTP port listens.
    pub async fn start(
        dir: &Path,
        ip: &str,
        queue: &[String],
        extra: &str,
    ) -> anyhow::Result<Self> {
        let (cert, key) = write_cert(dir, &[ip])?;
        let (cfg, smtp, smtps) = edge_config(dir, ip, queue, &cert, &key, extra)?;
        let proc = Proc::spawn(
            &["edge", "--config", cfg.to_str().context("utf-8 path")?],
            &dir.join("edge.log"),
        )?;
        wait_listening(format!("{ip}:{smtp}").parse()?, Duration::from_secs(20)).await?;
        Ok(Self {
            proc,
            smtp,
            smtps,
            cert,
        })
    }
}

/// A sender's configuration file: one source IP, every domain routed to `sink`.
pub fn sender_config(
    dir: &Path,
    name: &str,
    cluster: &[String],
    source_ip: &str,
    sink: &str,
) -> anyhow::Result<PathBuf> {
    let nodes: Vec<String> = cluster.iter().map(|a| format!("\"{a}\"")).collect();
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[sender]\nname = \"{name}\"\ncluster = [{}]\nmax_in_flight = 16\n\
             allow_destinations = [\"127.0.0.0/8\"]\n\
             source_ips = [{{ ip = \"{source_ip}\", ehlo = \"{name}.skein.test\" }}]\n\
             routes = [{{ domain = \"*\", to = \"{sink}\" }}]\n",
            nodes.join(", ")
        ),
    )?;
    Ok(path)
}

/// Waits until something accepts TCP connections at `addr`.
pub async fn wait_listening(addr: SocketAddr, limit: Duration) -> anyhow::Result<()> {
    wait_for(&format!("{addr} to listen"), limit, || async move {
        tokio::net::TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
}

/// A destination SMTP server not written here: aiosmtpd (`tests/py/sink.py`), scripted by the
/// recipients' local parts, recording every message and refusal as JSON.
pub struct Sink {
    child: Child,
    events: std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>,
}

/// Debian's Python, which has python3-aiosmtpd (`scripts/setup.sh --tests` installs it).
const SYSTEM_PYTHON: &str = "/usr/bin/python3";

impl Sink {
    /// Starts the sink on every `addr` (`ip:port`) with extra `args`; returns once it listens.
    pub fn start(addrs: &[String], args: &[&str]) -> anyhow::Result<Self> {
        let script = manifest_dir().join("py/sink.py");
        let mut child = Command::new(SYSTEM_PYTHON)
            .arg(script)
            .args(addrs)
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the aiosmtpd sink (is python3-aiosmtpd installed?)")?;
        let out = child.stdout.take().context("sink stdout")?;
        let events = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink_events = events.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    sink_events.lock().expect("sink events").push(v);
                }
            }
        });
        let sink = Self { child, events };
        let start = Instant::now();
        while sink.of("listening").len() < addrs.len() {
            if start.elapsed() > Duration::from_secs(10) {
                bail!("the sink did not start listening on {addrs:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sink)
    }

    /// The text of the first DSN (null return path) received for `rcpt`, waiting up to
    /// `limit` for it.
    pub async fn dsn_to(&self, rcpt: &str, limit: Duration) -> anyhow::Result<String> {
        let dsn = wait_for("the DSN", limit, || async {
            self.messages_for(rcpt)
                .into_iter()
                .find(|m| m["mail_from"] == "<>" || m["mail_from"] == "")
        })
        .await?;
        Ok(dsn["data"].as_str().unwrap_or_default().to_string())
    }

    /// Every event recorded so far.
    pub fn events(&self) -> Vec<serde_json::Value> {
        self.events.lock().expect("sink events").clone()
    }

    /// The events of one kind (`message`, `rcpt`, `held`, `listening`).
    pub fn of(&self, kind: &str) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .filter(|e| e["event"] == kind)
            .collect()
    }

    /// Messages received for `rcpt`.
    pub fn messages_for(&self, rcpt: &str) -> Vec<serde_json::Value> {
        self.of("message")
            .into_iter()
            .filter(|m| {
                m["rcpts"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|r| r.as_str() == Some(rcpt)))
            })
            .collect()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `skeinctl --server <server> <args>`: (success, stdout, stderr).
pub fn skeinctl(server: &str, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
    let out = Command::new(skein_bin().with_file_name("skeinctl"))
        .args(["--server", server])
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `skein dev` on `ip` with mail for every domain routed to an aiosmtpd [`Sink`] on `sink_ip`,
/// relaying for 127.0.0.0/8 and allowing AUTH without TLS from there.
pub struct DevWithSink {
    /// The `skein dev` process.
    pub dev: Proc,
    /// Where its mail arrives.
    pub sink: Sink,
    /// gRPC (Ingest, Admin) address.
    pub grpc: String,
    /// SMTP port on `ip`.
    pub smtp: u16,
}

impl DevWithSink {
    /// Starts both; `delivery` and `edge` are extra TOML lines for `[node.delivery]` and
    /// `[edge]`, `args` extra `skein dev` arguments. Returns once SMTP listens.
    pub async fn start(
        dir: &Path,
        ip: &str,
        sink_ip: &str,
        delivery: &str,
        edge: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, ip, sink_ip, "", delivery, edge, args).await
    }

    /// Like [`DevWithSink::start`], with extra TOML lines `node` in `[node]`. `{smtp}` in
    /// `args` stands for the edge's own SMTP address (to route mail back to it).
    pub async fn start_with(
        dir: &Path,
        ip: &str,
        sink_ip: &str,
        node: &str,
        delivery: &str,
        edge: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::start_with_sender(dir, ip, sink_ip, node, delivery, edge, "", args).await
    }

    /// Like [`DevWithSink::start_with`], with extra TOML lines `sender` in `[sender]`.
    #[allow(clippy::too_many_arguments)]
    pub async fn start_with_sender(
        dir: &Path,
        ip: &str,
        sink_ip: &str,
        node: &str,
        delivery: &str,
        edge: &str,
        sender: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let (grpc, smtp) = free_ports(ip);
        let grpc = format!("{ip}:{grpc}");
        let sink_addr = format!("{sink_ip}:{}", free_port(sink_ip));
        let sink = Sink::start(std::slice::from_ref(&sink_addr), &[])?;
        let cfg = dir.join("dev.toml");
        std::fs::write(
            &cfg,
            format!(
                "[node]\nlisten = \"{grpc}\"\ndata_dir = \"{data}\"\n{node}\n\
                 [node.delivery]\n{delivery}\n\
                 [edge]\nhostname = \"dev.skein.test\"\nrelay_networks = [\"127.0.0.0/8\"]\n\
                 plaintext_auth_networks = [\"127.0.0.0/8\"]\n{edge}\n\
                 [[edge.listeners]]\naddress = \"{ip}:{smtp}\"\n\
                 [sender]\nname = \"dev-sender\"\n{sender}\n\
                 routes = [{{ domain = \"*\", to = \"{sink_addr}\" }}]\n",
                data = dir.join("data").display(),
            ),
        )?;
        let own = format!("{ip}:{smtp}");
        let args: Vec<String> = args.iter().map(|a| a.replace("{smtp}", &own)).collect();
        let mut all = vec!["dev", "--config", cfg.to_str().unwrap_or_default()];
        all.extend(args.iter().map(String::as_str));
        let dev = Proc::spawn(&all, &dir.join("dev.log"))?;
        wait_listening(format!("{ip}:{smtp}").parse()?, Duration::from_secs(60)).await?;
        Ok(Self {
            dev,
            sink,
            grpc,
            smtp,
        })
    }
}

/// A real DNS server for test zones: dnsmasq answering only from its command line, for names
/// under `.test` (everything else there is NXDOMAIN). The load harness's, with `.test` local.
pub struct Dns(skein_load::dns::Dns);

impl Dns {
    /// Starts dnsmasq on `ip` with records given as dnsmasq options, e.g.
    /// `--mx-host=ex.test,mx1.ex.test,10`, `--host-record=mx1.ex.test,127.0.0.41`, or
    /// `--dns-rr=null.test,15,000000` (a null MX).
    pub fn start(ip: &str, records: &[String], log: &Path) -> anyhow::Result<Self> {
        let records = [&["--local=/test/".to_string()], records].concat();
        Ok(Self(skein_load::dns::Dns::start(ip, &records, log)?))
    }
}

impl std::ops::Deref for Dns {
    type Target = skein_load::dns::Dns;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// A message's delivery status (Admin GetMessage, recipients included).
pub async fn message_status(addr: &str, id: &str) -> anyhow::Result<Message> {
    Ok(admin(addr)
        .await?
        .get_message(skein_proto::admin::GetMessageRequest {
            id: id.to_string(),
            include_data: false,
            local: false,
        })
        .await?
        .into_inner())
}

/// Waits until every recipient of message `id` is in a final state; returns the message.
pub async fn wait_final(addr: &str, id: &str, limit: Duration) -> anyhow::Result<Message> {
    let final_states = ["delivered", "bounced", "expired", "suppressed"];
    wait_for(&format!("message {id} to finish"), limit, || async {
        let m = message_status(addr, id).await.ok()?;
        (!m.recipients.is_empty()
            && m.recipients
                .iter()
                .all(|r| final_states.contains(&r.state.as_str())))
        .then_some(m)
    })
    .await
}
