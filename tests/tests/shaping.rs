//! Sending limits end to end through `skeinctl` against `skein dev`: an IP record makes the
//! cluster the truth about the source IP (its EHLO name, its cap), mail past the day's cap
//! waits in the queue, and bad arguments get a precise status.

use std::time::Duration;

use skein_tests::*;

const FINISH: Duration = Duration::from_secs(30);

fn ctl(server: &str, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out, err) = skeinctl(server, args)?;
    anyhow::ensure!(ok, "skeinctl {args:?} failed: {err}");
    Ok(out)
}

fn ctl_err(server: &str, args: &[&str]) -> anyhow::Result<String> {
    let (ok, out, err) = skeinctl(server, args)?;
    anyhow::ensure!(!ok, "skeinctl {args:?} should fail: {out}");
    Ok(err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ip_record_caps_the_day_and_names_the_ehlo() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.97";
    let rig = DevWithSink::start(dir.path(), ip, "127.0.0.98", "", "", &[]).await?;
    let g = rig.grpc.clone();
    // A new cluster writes this release's format once it has a leader.
    wait_for("format 4", FINISH, || async {
        (status(&g).await.ok()?.format >= 4).then_some(())
    })
    .await?;

    // Bad arguments, each with the field or the thing at fault.
    let e = ctl_err(&g, &["schedule", "set", "bad", "1:100", "4:50"])?;
    assert!(
        e.contains("InvalidArgument") && e.contains("must not decrease"),
        "{e}"
    );
    let e = ctl_err(
        &g,
        &["ip", "add", "not-an-ip", "--hostname", "mta.skein.test"],
    )?;
    assert!(
        e.contains("InvalidArgument") && e.contains("not an IP address"),
        "{e}"
    );
    let e = ctl_err(
        &g,
        &[
            "ip",
            "add",
            "127.0.0.1",
            "--hostname",
            "mta.skein.test",
            "--schedule",
            "nope",
        ],
    )?;
    assert!(e.contains("no schedule named \"nope\""), "{e}");
    let e = ctl_err(&g, &["pool", "assign", "ghost", "p1"])?;
    assert!(e.contains("NotFound") && e.contains("ghost"), "{e}");

    // Three a day from 127.0.0.1 (the dev sender's address), named mta1.skein.test.
    let out = ctl(&g, &["schedule", "set", "tiny", "1:3", "2:10"])?;
    assert!(out.contains("1:3 2:10"), "{out}");
    let out = ctl(
        &g,
        &[
            "ip",
            "add",
            "127.0.0.1",
            "--hostname",
            "mta1.skein.test",
            "--schedule",
            "tiny",
        ],
    )?;
    assert!(
        out.contains("warming") && out.contains("today 0/3"),
        "{out}"
    );
    let e = ctl_err(
        &g,
        &["ip", "add", "127.0.0.1", "--hostname", "mta1.skein.test"],
    )?;
    assert!(e.contains("AlreadyExists"), "{e}");

    let mut ids = Vec::new();
    for i in 0..5 {
        let port = rig.smtp.to_string();
        let rcpt = format!("r{i}@capped.test");
        let s = submit(&[
            "--host",
            ip,
            "--port",
            &port,
            "--mail-from",
            "app@routed.test",
            "--rcpt",
            &rcpt,
        ])?;
        ids.push(s[0].id.clone().expect("accepted"));
    }
    wait_for("three deliveries", FINISH, || async {
        (rig.sink.of("message").len() >= 3).then_some(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = rig.sink.of("message");
    assert_eq!(got.len(), 3, "the day's cap: {got:?}");
    for m in &got {
        assert_eq!(m["ehlo"], "mta1.skein.test", "the IP record's name: {m}");
        assert_eq!(m["peer"], "127.0.0.1", "{m}");
    }
    let out = ctl(&g, &["ip", "show"])?;
    assert!(out.contains("today 3/3 (0 left)"), "{out}");
    assert!(
        out.contains("default 3/1000"),
        "this hour's use per provider: {out}"
    );
    let queues = ctl(&g, &["queues"])?;
    assert!(
        queues.contains("capped.test") && queues.contains(" 2 "),
        "{queues}"
    );

    // Pause and resume keep the record; the reason shows.
    let out = ctl(&g, &["ip", "pause", "127.0.0.1", "--reason", "complaints"])?;
    assert!(
        out.contains("paused") && out.contains("complaints"),
        "{out}"
    );
    let out = ctl(&g, &["ip", "resume", "127.0.0.1"])?;
    assert!(out.contains("warming"), "{out}");
    let e = ctl_err(&g, &["ip", "resume", "127.0.0.1"])?;
    assert!(
        e.contains("FailedPrecondition") && e.contains("not paused"),
        "{e}"
    );
    // Completing the warm-up lifts today's cap to the full quota: the rest goes.
    let out = ctl(&g, &["ip", "complete-warmup", "127.0.0.1"])?;
    assert!(out.contains("warm ") && out.contains("/10 "), "{out}");
    for id in &ids {
        let m = wait_final(&g, id, FINISH).await?;
        assert_eq!(m.recipients[0].state, "delivered");
    }
    assert_eq!(rig.sink.of("message").len(), 5);
    let out = ctl(&g, &["--json", "ip", "show"])?;
    let v: serde_json::Value = serde_json::from_str(out.lines().next().unwrap_or_default())?;
    assert_eq!(
        (v["sent_today"].as_u64(), v["state"].as_str()),
        (Some(5), Some("warm"))
    );

    // A suspended domain's mail waits; resumed, it goes.
    let e = ctl_err(&g, &["suspend", "planet", "mars"])?;
    assert!(
        e.contains("InvalidArgument") && e.contains("one of tenant, domain"),
        "{e}"
    );
    let out = ctl(
        &g,
        &[
            "suspend",
            "domain",
            "Capped.Test",
            "--for",
            "1h",
            "--reason",
            "incident 42",
        ],
    )?;
    assert!(
        out.contains("capped.test") && out.contains("until 2") && out.contains("incident 42"),
        "{out}"
    );
    let port = rig.smtp.to_string();
    let one = |rcpt: &str| -> anyhow::Result<String> {
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
            .ok_or_else(|| anyhow::anyhow!("not accepted"))
    };
    let late = one("late@capped.test")?;
    let other = one("x@other.test")?;
    wait_final(&g, &other, FINISH).await?;
    assert!(
        rig.sink.messages_for("late@capped.test").is_empty(),
        "suspended"
    );
    assert!(ctl(&g, &["suspensions"])?.contains("capped.test"));
    ctl(&g, &["resume", "domain", "capped.test"])?;
    assert_eq!(
        wait_final(&g, &late, FINISH).await?.recipients[0].state,
        "delivered"
    );
    let e = ctl_err(&g, &["resume", "domain", "capped.test"])?;
    assert!(e.contains("NotFound"), "{e}");
    assert!(ctl(&g, &["suspensions"])?.trim().is_empty());
    Ok(())
}
