//! Operational endpoints of a queue node: `GET /metrics` in the Prometheus text format
//! (checked by Prometheus's own `promtool check metrics`), `/healthz` and `/readyz`, against
//! `skein dev` delivering mail and a node that has not joined a cluster yet.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use skein_tests::*;

/// GET `path` from `addr`: the status code and the body.
fn get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.get(9..12).unwrap_or("0").parse()?;
    let body = out
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// The value of the sample line starting with `series ` (name and labels, exactly).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_probes_of_a_working_node() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.190";
    let (port, edge_port) = free_ports(ip);
    let (http, edge_http) = (format!("{ip}:{port}"), format!("{ip}:{edge_port}"));
    let sender_http = format!("127.0.0.194:{}", free_port("127.0.0.194"));
    let rig = DevWithSink::start_with_sender(
        dir.path(),
        ip,
        "127.0.0.191",
        &format!("http = \"{http}\""),
        "",
        &format!("http = \"{edge_http}\""),
        &format!("http = \"{sender_http}\""),
        &[],
    )
    .await?;
    // Sending limits in force: 127.0.0.1 (the dev sender's address) as a warm IP.
    wait_for("a leader", Duration::from_secs(30), || async {
        let (ok, _, _) = skeinctl(
            &rig.grpc,
            &[
                "ip",
                "add",
                "127.0.0.1",
                "--hostname",
                "mta.skein.test",
                "--warm",
            ],
        )
        .ok()?;
        ok.then_some(())
    })
    .await?;
    let id = submit_relayed(ip, rig.smtp, "someone@example.test")?;
    let m = wait_final(&rig.grpc, &id, Duration::from_secs(30)).await?;
    assert_eq!(m.recipients[0].state, "delivered");

    wait_for("ready", Duration::from_secs(10), || async {
        (get(&http, "/readyz").ok()?.0 == 200).then_some(())
    })
    .await?;
    assert_eq!(get(&http, "/healthz")?, (200, "ok\n".into()));
    let (status, text) = get(&http, "/metrics")?;
    assert_eq!(status, 200);
    assert!(
        sample(&text, "skein_ingest_committed_messages_total").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        sample(&text, "skein_delivery_attempts_total{result=\"delivered\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert_eq!(sample(&text, "skein_raft_leader"), Some(1.0), "{text}");
    // Deliveries by result, source IP and provider; what the limits leave each IP.
    let delivered = "skein_deliveries_total{result=\"delivered\",source_ip=\"127.0.0.1\",\
                     provider=\"default\"}";
    assert_eq!(sample(&text, delivered), Some(1.0), "{text}");
    let of_ip = |name: &str| format!("{name}{{ip=\"127.0.0.1\",pool=\"default\"}}");
    assert_eq!(
        sample(&text, &of_ip("skein_ip_sent_today")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(sample(&text, &of_ip("skein_ip_warm")), Some(1.0), "{text}");
    assert!(
        sample(&text, &of_ip("skein_ip_daily_cap")).unwrap_or(0.0) > 1.0,
        "{text}"
    );
    let hour = |name: &str, p: &str| format!("{name}{{ip=\"127.0.0.1\",provider=\"{p}\"}}");
    assert_eq!(
        sample(&text, &hour("skein_ip_provider_sent_this_hour", "default")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, &hour("skein_ip_provider_sent_this_hour", "gmail")),
        Some(0.0),
        "{text}"
    );
    assert!(
        sample(&text, &hour("skein_ip_provider_hourly_limit", "gmail")).unwrap_or(0.0) >= 500.0,
        "{text}"
    );
    // The queue has nothing left to send.
    assert_eq!(
        sample(&text, "skein_queue_unfinished_recipients"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(sample(&text, "skein_queues"), Some(0.0), "{text}");
    assert!(sample(&text, "skein_ingest_commit_seconds_count").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6);
    assert_eq!(get(&http, "/nothing")?.0, 404);

    promtool(&text)?;
    let node_text = text.clone();

    // The edge's: the message it queued, its session, the queue reachable.
    let (status, text) = get(&edge_http, "/metrics")?;
    assert_eq!(status, 200);
    assert!(
        sample(&text, "skein_edge_messages_total{code=\"250\"}").unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "skein_edge_sessions_total").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "skein_edge_enqueue_seconds_count").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        sample(&text, "skein_edge_queue_reachable"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get(&edge_http, "/readyz")?.0, 200);
    promtool(&text)?;
    let edge_text = text.clone();

    // The sender's: the delivery it made, its session with the leader open.
    let (status, text) = get(&sender_http, "/metrics")?;
    assert_eq!(status, 200);
    assert!(
        sample(
            &text,
            "skein_sender_recipients_total{outcome=\"delivered\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{text}"
    );
    assert!(sample(&text, "skein_sender_delivery_seconds_count").unwrap_or(0.0) >= 1.0);
    assert_eq!(
        sample(&text, "skein_sender_session_open"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(get(&sender_http, "/readyz")?.0, 200);
    promtool(&text)?;
    let scraped = [node_text, edge_text, text].concat();
    dashboard_queries_are_promql_over_these_metrics(&scraped)?;
    a_real_prometheus_scrapes(dir.path(), &[&http, &edge_http, &sender_http]).await
}

/// A real Prometheus server (Debian's) scrapes `targets` every second: each is up, and what
/// it stored answers queries (the message committed, queued with a 250, delivered).
async fn a_real_prometheus_scrapes(dir: &std::path::Path, targets: &[&str]) -> anyhow::Result<()> {
    let web = format!("127.0.0.1:{}", free_port("127.0.0.1"));
    let cfg = dir.join("prometheus.yml");
    std::fs::write(
        &cfg,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: skein\n    \
             static_configs:\n      - targets: [{}]\n",
            targets
                .iter()
                .map(|t| format!("'{t}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    let mut prom = Command::new("prometheus")
        .arg(format!("--config.file={}", cfg.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join("prometheus.log"),
        )?))
        .spawn()
        .map_err(|e| anyhow::anyhow!("prometheus (scripts/setup.sh --tests): {e}"))?;
    let query = |q: &str| -> Option<f64> {
        let (status, body) = get(&web, &format!("/api/v1/query?query={q}")).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        (status == 200).then_some(())?;
        v["data"]["result"]
            .as_array()?
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse::<f64>().ok())
            .reduce(f64::max)
    };
    let r = wait_for(
        "Prometheus to scrape all three",
        Duration::from_secs(60),
        || async { (query("sum(up)")? == targets.len() as f64).then_some(()) },
    )
    .await;
    let checks = [
        "skein_ingest_committed_messages_total",
        "skein_edge_messages_total%7Bcode%3D%22250%22%7D",
        "skein_sender_recipients_total%7Boutcome%3D%22delivered%22%7D",
    ]
    .map(|q| (q, query(q)));
    let _ = prom.kill();
    let _ = prom.wait();
    r.map_err(|e| {
        anyhow::anyhow!(
            "{e}: {}",
            tail(
                &std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default(),
                20
            )
        )
    })?;
    for (q, v) in checks {
        assert!(v.unwrap_or(0.0) >= 1.0, "{q}: {v:?}");
    }
    Ok(())
}

/// Every query of the chart's Grafana dashboard is PromQL that Prometheus parses (`promtool
/// check rules`, each as a recording rule), and names only metrics the node, the edge and
/// the sender expose (in `scraped`, their scrapes together).
fn dashboard_queries_are_promql_over_these_metrics(scraped: &str) -> anyhow::Result<()> {
    let file = skein_tests::manifest_dir().join("../charts/skein/dashboards/skein.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let exprs: Vec<String> = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap().clone())
        .map(|t| t["expr"].as_str().unwrap().to_string())
        .collect();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let dir = tempfile::tempdir()?;
    let rules = dir.path().join("rules.yml");
    let mut y = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, e) in exprs.iter().enumerate() {
        y.push_str(&format!(
            "      - record: dashboard:q{i}\n        expr: {}\n",
            serde_json::to_string(e)?
        ));
    }
    std::fs::write(&rules, y)?;
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(&rules)
        .output()?;
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let families: std::collections::HashSet<&str> = scraped
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for e in &exprs {
        let names = e
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("skein_") || w.starts_with("process_"));
        for name in names {
            let family = name.trim_end_matches("_bucket");
            assert!(families.contains(family), "{name} in {e}: not exposed");
        }
    }
    Ok(())
}

/// Prometheus's own checker on `text`: exit 0, no lint complaints.
fn promtool(text: &str) -> anyhow::Result<()> {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("promtool (scripts/setup.sh --tests installs it): {e}"))?;
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())?;
    let out = promtool.wait_with_output()?;
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// An edge whose queue nodes do not answer is alive but not ready: mail would get 451.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_without_a_queue_is_not_ready() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.193";
    let (smtp, http) = free_ports(ip);
    let dead = free_port(ip);
    let http = format!("{ip}:{http}");
    let cfg = dir.path().join("edge.toml");
    std::fs::write(
        &cfg,
        format!(
            "[edge]\nhostname = \"edge.test\"\nqueue = [\"{ip}:{dead}\"]\nhttp = \"{http}\"\n\
             credentials_refresh = \"1s\"\n[[edge.listeners]]\naddress = \"{ip}:{smtp}\"\n"
        ),
    )?;
    let _edge = Proc::spawn(
        &["edge", "--config", cfg.to_str().unwrap()],
        &dir.path().join("edge.log"),
    )?;
    wait_for(
        "the edge's HTTP endpoint",
        Duration::from_secs(30),
        || async { get(&http, "/healthz").ok().filter(|r| r.0 == 200) },
    )
    .await?;
    let (status, why) = get(&http, "/readyz")?;
    assert_eq!(status, 503);
    assert!(why.contains("no queue node answers"), "{why}");
    Ok(())
}

/// A node waiting to be added to a cluster is alive but not ready, and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_has_not_joined_is_live_but_not_ready() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.192";
    let (grpc, http) = free_ports(ip);
    let http = format!("{ip}:{http}");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = 4\nlisten = \"{ip}:{grpc}\"\ndata_dir = \"{}\"\njoin = true\n\
             http = \"{http}\"\n",
            dir.path().join("data").display()
        ),
    )?;
    let _node = Proc::spawn(
        &["node", "--config", cfg.to_str().unwrap()],
        &dir.path().join("node.log"),
    )?;
    wait_for("the HTTP endpoint", Duration::from_secs(30), || async {
        get(&http, "/healthz").ok().filter(|r| r.0 == 200)
    })
    .await?;
    let (status, why) = get(&http, "/readyz")?;
    assert_eq!(status, 503);
    assert!(why.contains("no leader known"), "{why}");
    let (_, text) = get(&http, "/metrics")?;
    assert_eq!(sample(&text, "skein_raft_has_leader"), Some(0.0), "{text}");
    Ok(())
}

/// One span as rotel's detailed debug log prints it.
#[derive(Debug, Default, Clone)]
struct LoggedSpan {
    trace: String,
    parent: String,
    id: String,
    name: String,
    service: String,
    attrs: Vec<(String, String)>,
}

impl LoggedSpan {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// The spans in rotel's log (`--debug-log traces --debug-log-verbosity detailed`).
fn logged_spans(log: &str) -> Vec<LoggedSpan> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut cur: Option<LoggedSpan> = None;
    for line in log.lines() {
        let t = line.trim();
        let field = |name: &str| {
            t.strip_prefix(name)
                .and_then(|r| r.trim_start().strip_prefix(':'))
                .map(|v| v.trim().to_string())
        };
        // `-> key: Str(value)` / `Int(value)`.
        let attr = t.strip_prefix("-> ").and_then(|a| {
            let (k, v) = a.split_once(": ")?;
            let v = v.split_once('(')?.1.strip_suffix(')')?;
            Some((k.to_string(), v.to_string()))
        });
        if t.starts_with("ResourceSpans #") {
            spans.extend(cur.take());
            service.clear();
        } else if t.starts_with("Span #") {
            spans.extend(cur.take());
            cur = Some(LoggedSpan {
                service: service.clone(),
                ..Default::default()
            });
        } else if let (Some(s), Some(v)) = (cur.as_mut(), field("Trace ID")) {
            s.trace = v;
        } else if let (Some(s), Some(v)) = (cur.as_mut(), field("Parent ID")) {
            s.parent = v;
        } else if let (Some(s), Some(v)) = (cur.as_mut(), field("ID")) {
            s.id = v;
        } else if let (Some(s), Some(v)) = (cur.as_mut(), field("Name")) {
            s.name = v;
        } else if let Some((k, v)) = attr {
            match cur.as_mut() {
                Some(s) => s.attrs.push((k, v)),
                None if k == "service.name" => service = v,
                None => {}
            }
        }
    }
    spans.extend(cur);
    spans
}

/// A message relayed by Python's smtplib through `skein dev` to aiosmtpd leaves one trace in
/// a real OTLP collector (rotel, installed by `scripts/setup.sh --tests`): the edge's
/// `smtp receive` (the root), the leader's `queue commit` under it (context carried in the
/// Enqueue call's gRPC metadata), `queue schedule` under that, and the sender's
/// `smtp deliver` under it (context carried in the assignment) with the remote's 250 reply;
/// all four name the queue id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_leaves_one_trace_from_edge_to_remote_reply() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.192";
    let (grpc, http) = free_ports("127.0.0.1");
    let log_path = dir.path().join("rotel.log");
    let mut rotel = Command::new(cached_tool("rotel-agent", "0.0.1a15"))
        .args(["start", "--exporter", "blackhole"])
        .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc}")])
        .args(["--otlp-http-endpoint", &format!("127.0.0.1:{http}")])
        .args(["--debug-log", "traces", "--debug-log-verbosity", "detailed"])
        .stdout(Stdio::from(std::fs::File::create(&log_path)?))
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| anyhow::anyhow!("rotel-agent (scripts/setup.sh --tests): {e}"))?;
    wait_listening(
        format!("127.0.0.1:{grpc}").parse()?,
        Duration::from_secs(20),
    )
    .await?;
    // The standard variables, inherited by `skein dev` (nextest runs each test alone in
    // its process).
    std::env::set_var(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        format!("http://127.0.0.1:{grpc}"),
    );
    std::env::set_var("OTEL_BSP_SCHEDULE_DELAY", "100");
    let rig = DevWithSink::start(dir.path(), ip, "127.0.0.193", "", "", &[]).await?;
    let id = wait_for(
        "the first message accepted",
        Duration::from_secs(30),
        || async { submit_relayed(ip, rig.smtp, "traced@example.test").ok() },
    )
    .await?;
    let m = wait_final(&rig.grpc, &id, Duration::from_secs(30)).await?;
    assert_eq!(m.recipients[0].state, "delivered");

    let names = [
        "smtp receive",
        "queue commit",
        "queue schedule",
        "smtp deliver",
    ];
    let spans = wait_for(
        "the message's four spans",
        Duration::from_secs(30),
        || async {
            let spans: Vec<LoggedSpan> = logged_spans(&std::fs::read_to_string(&log_path).ok()?)
                .into_iter()
                .filter(|s| s.attr("skein.queue_id") == Some(id.as_str()))
                .collect();
            names
                .iter()
                .all(|n| spans.iter().any(|s| s.name == *n))
                .then_some(spans)
        },
    )
    .await;
    let _ = rotel.kill();
    let _ = rotel.wait();
    let spans = spans.map_err(|e| {
        anyhow::anyhow!(
            "{e}:\n{}",
            tail(&std::fs::read_to_string(&log_path).unwrap_or_default(), 60)
        )
    })?;
    let span = |name: &str| spans.iter().find(|s| s.name == name).expect(name);
    let (receive, commit, schedule, deliver) = (
        span("smtp receive"),
        span("queue commit"),
        span("queue schedule"),
        span("smtp deliver"),
    );
    assert_eq!(spans.len(), 4, "one of each: {spans:#?}");
    assert!(
        receive.parent.is_empty(),
        "the edge's span is the root: {receive:?}"
    );
    assert_eq!(commit.parent, receive.id, "{spans:#?}");
    assert_eq!(schedule.parent, commit.id, "{spans:#?}");
    assert_eq!(deliver.parent, schedule.id, "{spans:#?}");
    assert!(spans
        .iter()
        .all(|s| s.trace == receive.trace && s.trace.len() == 32));
    assert!(spans.iter().all(|s| s.service == "skein-dev"), "{spans:#?}");
    assert!(receive
        .attr("smtp.reply")
        .unwrap()
        .starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(receive.attr("client.address"), Some("127.0.0.1"));
    let reply = deliver.attr("smtp.reply").unwrap();
    assert!(reply.starts_with("250"), "the remote's reply: {reply}");
    assert!(deliver
        .attr("server.address")
        .unwrap()
        .contains("127.0.0.193"));
    assert_eq!(deliver.attr("skein.delivered"), Some("1"));
    Ok(())
}
