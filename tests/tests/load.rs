//! The bundled load harness (`skein-load run`), its quick profile as CI runs it: a 3-node
//! cluster, an edge and a sender started by the harness, provider simulators counting what
//! arrives, a leader SIGKILLed part-way, and the verdicts. Then the same harness with the
//! providers' limits kept from Skein, to show the verdict catches a sender that exceeds them.

use std::path::{Path, PathBuf};
use std::process::Command;

use skein_tests::skein_bin;

fn load_bin() -> PathBuf {
    skein_bin().with_file_name("skein-load")
}

fn run(out: &Path, extra: &[&str]) -> anyhow::Result<(i32, serde_json::Value, String)> {
    let o = Command::new(load_bin())
        .args(["run", "--out"])
        .arg(out)
        .args(extra)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let report = std::fs::read_to_string(out.join("report.json"))
        .map_err(|e| anyhow::anyhow!("no report.json ({e}): {text}"))?;
    Ok((
        o.status.code().unwrap_or(-1),
        serde_json::from_str(&report)?,
        text,
    ))
}

#[test]
fn the_quick_profile_passes_with_a_leader_kill_and_limits_held() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("quick");
    let (code, r, text) = run(&out, &["--profile", "quick"])?;
    assert_eq!(code, 0, "{text}");
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!((n("lost"), n("limit_violations")), (0, 0), "{text}");
    assert!(n("accepted") >= 700, "most of 800 are accepted: {text}");
    // Every accepted recipient ended delivered or bounced (permfail-*), counted by the
    // simulators; tempfail-* were deferred once and delivered.
    assert_eq!(n("delivered") + n("bounced"), n("accepted"), "{text}");
    assert!(n("bounced") > 0 && n("deferrals") > 0, "{text}");
    assert!(r["faults"][0]["what"]
        .as_str()
        .is_some_and(|w| w.starts_with("SIGKILL leader")));
    // The load went out from every source IP, each within every provider's hourly limit.
    let hourly = r["hourly"].as_array().unwrap();
    let gmail: Vec<_> = hourly.iter().filter(|h| h["provider"] == "gmail").collect();
    assert_eq!(gmail.len(), 4, "{hourly:?}");
    for h in hourly {
        let (sent, limit) = (h["sent"].as_u64().unwrap(), h["limit"].as_u64().unwrap());
        assert!(limit == 0 || sent <= limit, "{h}");
    }
    for k in ["accepted_per_s", "delivered_per_s"] {
        assert!(r[k].as_f64().unwrap() > 0.0, "{k}: {text}");
    }
    assert!(r["end_to_end_ms"]["p99"].as_f64().unwrap() > 0.0);
    // The simulators were found by MX records from a real DNS server (dnsmasq), a custom
    // domain by its MX at Google's name.
    let dns = std::fs::read_to_string(out.join("dns.log"))?;
    assert!(
        dns.contains("query[MX] gmail.com") && dns.contains("query[MX] brand.test"),
        "{dns}"
    );
    let html = std::fs::read_to_string(out.join("report.html"))?;
    for id in ["throughput", "latency", "hourly"] {
        assert!(html.contains(&format!("<svg id=\"{id}\"")), "{id}");
    }
    assert!(html.contains("class=\"fault\"") && html.contains("PASS"));

    // The plots render in a real browser: headless Chromium's screenshot has the pixels of
    // the accepted and delivered lines, the latency bars and the fault markers. The
    // screenshot and the report are kept beside the binaries as the run's artifacts.
    let artifacts = skein_bin().with_file_name("artifacts").join("load-quick");
    std::fs::create_dir_all(&artifacts)?;
    for f in ["report.html", "report.json"] {
        std::fs::copy(out.join(f), artifacts.join(f))?;
    }
    let shot = artifacts.join("screenshot.png");
    let o = Command::new("python3")
        .arg(skein_tests::manifest_dir().join("py/render_check.py"))
        .arg(artifacts.join("report.html"))
        .arg(&shot)
        .output()?;
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let seen: serde_json::Value = serde_json::from_slice(&o.stdout)?;
    let px = |c: &str| seen["colors"][c].as_u64().unwrap_or(0);
    assert!(px("#1f77b4") > 200, "accepted line: {seen}");
    assert!(px("#2ca02c") > 200, "delivered line: {seen}");
    assert!(px("#9467bd") > 1000, "latency bars: {seen}");
    assert!(px("#d33") > 10, "fault markers: {seen}");
    Ok(())
}

/// With one source IP and Skein not told the providers' limits, it sends past them (yahoo
/// and outlook: 60 an hour per IP, gmail 120; 10 connections each): the simulators refuse as
/// the providers would, the report counts the violations, and the harness exits 1.
#[test]
fn exceeding_a_providers_limit_fails_the_run() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("unshaped");
    let (code, r, text) = run(
        &out,
        &[
            "--net",
            "127.0.7",
            "--sim-net",
            "127.0.8",
            "--no-shaping",
            "--no-faults",
            "--source-ips",
            "1",
            "--messages",
            "600",
            "--rate",
            "200",
            "--drain",
            "20",
        ],
    )?;
    assert_eq!(code, 1, "{text}");
    let v = r["limit_violations"].as_u64().unwrap();
    assert!(v > 0, "{text}");
    // Past the hourly limit (and, unshaped, past the connection limit too).
    let hourly = r["violations"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["kind"] == "hourly")
        .cloned()
        .unwrap_or_default();
    assert_eq!(hourly["source_ip"], "127.0.7.21", "{text}");
    let provider = hourly["provider"].as_str().unwrap_or_default();
    assert!(
        ["gmail", "yahoo", "outlook"].contains(&provider),
        "{provider}: {text}"
    );
    // The hourly table shows that IP over the limit for that provider.
    let over = r["hourly"].as_array().unwrap().iter().any(|h| {
        h["provider"] == provider && h["sent"].as_u64().unwrap() > h["limit"].as_u64().unwrap()
    });
    assert!(over, "{text}");
    let html = std::fs::read_to_string(out.join("report.html"))?;
    assert!(html.contains("FAIL") && html.contains("Violations"));
    Ok(())
}

/// Scaled time: the cluster's clocks (manual) and the simulators' hours run 1,800 times
/// faster, so a few seconds of load span hours, each with its own limits, and nothing is
/// lost or sent twice though leases and retries are timed on the scaled clock.
#[test]
fn scaled_time_spans_hours_and_keeps_every_limit() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("scaled");
    let (code, r, text) = run(
        &out,
        &[
            "--net",
            "127.0.9",
            "--sim-net",
            "127.0.10",
            "--time-scale",
            "1800",
            "--no-faults",
            "--messages",
            "400",
            "--rate",
            "60",
        ],
    )?;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("time x1800"), "{text}");
    let n = |k: &str| r[k].as_u64().unwrap_or(u64::MAX);
    assert_eq!(
        (n("lost"), n("duplicates"), n("limit_violations")),
        (0, 0, 0),
        "{text}"
    );
    let hours: std::collections::BTreeSet<i64> = r["hourly"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["hour"].as_i64().unwrap())
        .collect();
    assert!(hours.len() >= 2, "{hours:?}: {text}");
    Ok(())
}
