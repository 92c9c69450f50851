//! Raft membership that follows a StatefulSet, against a real Kubernetes API server
//! (kube-apiserver 1.20 built from Debian's sources by `scripts/kube-apiserver.sh`, with a
//! real etcd) and real `skein node` processes. No kubelet runs: the test plays it, creating
//! the StatefulSet's pods with kubectl and setting their status (IP, Ready) itself. Scaling
//! 3 → 5 must add and promote nodes 4 and 5 one at a time; 5 → 3 must remove 5, then 4; a
//! pod deleted within `replicas` (a rolling restart) must keep its node. Then the Helm chart
//! is installed with `--dry-run=server` against the same server.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use skein_proto::admin::ClusterStatusResponse;
use skein_tests::*;

/// The StatefulSet the nodes follow.
const STS: &str = "skein-node";
/// Node N listens on 127.0.0.(IP_BASE + N).
const IP_BASE: u8 = 194;

fn kubectl_bin() -> PathBuf {
    cached_tool("kubectl", "1.32.3")
}

fn apiserver_dir() -> PathBuf {
    PathBuf::from(std::env::var("HOME").unwrap_or_default())
        .join(".cache/skein/tools/kube-apiserver-1.20.2")
}

/// etcd and kube-apiserver, stopped when dropped.
struct KubeApi {
    procs: Vec<Child>,
    url: String,
    token_file: PathBuf,
    ca: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl KubeApi {
    /// Starts both in `dir`; `None` (after saying why) when the API server could not be built
    /// on this machine.
    fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
        let bin = apiserver_dir();
        if !bin.join("kube-apiserver").exists() {
            // scripts/kube-apiserver.sh leaves why its build failed beside the directory.
            let failed = PathBuf::from(format!("{}.failed", bin.display()));
            if let Ok(why) = std::fs::read_to_string(&failed) {
                eprintln!("SKIPPED: kube-apiserver could not be built here:\n{why}");
                return Ok(None);
            }
            anyhow::bail!(
                "no kube-apiserver at {}: run scripts/setup.sh --tests",
                bin.display()
            );
        }
        let log = |name: &str| -> anyhow::Result<Stdio> {
            Ok(Stdio::from(std::fs::File::create(
                dir.join(format!("{name}.log")),
            )?))
        };
        let (client, peer) = free_ports("127.0.0.1");
        let etcd = Command::new(bin.join("etcd"))
            .args(["--data-dir", &dir.join("etcd").display().to_string()])
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args([
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{client}"),
            ])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
            .args([
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{peer}"),
            ])
            .args([
                "--initial-cluster",
                &format!("default=http://127.0.0.1:{peer}"),
            ])
            .stdout(log("etcd-out")?)
            .stderr(log("etcd")?)
            .spawn()?;
        let mut api = KubeApi {
            procs: vec![etcd],
            url: String::new(),
            token_file: dir.join("token"),
            ca: PathBuf::new(),
            kubeconfig: dir.join("kubeconfig"),
        };
        let (cert, key) = write_cert(dir, &[])?;
        api.ca = cert.clone();
        let sa = rcgen::KeyPair::generate()?;
        std::fs::write(dir.join("sa.key"), sa.serialize_pem())?;
        std::fs::write(dir.join("sa.pub"), sa.public_key_pem())?;
        std::fs::write(
            dir.join("tokens.csv"),
            "test-token,admin,admin,system:masters\n",
        )?;
        std::fs::write(&api.token_file, "test-token")?;
        let port = free_port("127.0.0.1");
        api.url = format!("https://127.0.0.1:{port}");
        let path = |p: &Path| p.display().to_string();
        let server = Command::new(bin.join("kube-apiserver"))
            .args(["--etcd-servers", &format!("http://127.0.0.1:{client}")])
            .args(["--bind-address", "127.0.0.1"])
            .args(["--secure-port", &port.to_string()])
            .args(["--insecure-port", "0"])
            .args(["--tls-cert-file", &path(&cert)])
            .args(["--tls-private-key-file", &path(&key)])
            .args(["--token-auth-file", &path(&dir.join("tokens.csv"))])
            .args(["--authorization-mode", "RBAC"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .args(["--service-account-key-file", &path(&dir.join("sa.pub"))])
            .args([
                "--service-account-signing-key-file",
                &path(&dir.join("sa.key")),
            ])
            .args(["--service-cluster-ip-range", "10.96.0.0/12"])
            // No controller-manager makes default ServiceAccounts.
            .args(["--disable-admission-plugins", "ServiceAccount"])
            .stdout(log("apiserver-out")?)
            .stderr(log("apiserver")?)
            .spawn()?;
        api.procs.push(server);
        std::fs::write(
            &api.kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  cluster:\n    server: {}\n    \
                 certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: test-token\n\
                 contexts:\n- name: t\n  context:\n    cluster: t\n    user: admin\n    \
                 namespace: default\ncurrent-context: t\n",
                api.url,
                path(&cert)
            ),
        )?;
        let start = std::time::Instant::now();
        loop {
            let (ok, out, _) = api.kubectl(&["get", "--raw", "/readyz"])?;
            if ok && out.trim() == "ok" {
                break;
            }
            if start.elapsed() > Duration::from_secs(90) {
                anyhow::bail!(
                    "kube-apiserver not ready in 90 s:\n{}",
                    tail(
                        &std::fs::read_to_string(dir.join("apiserver.log")).unwrap_or_default(),
                        30
                    )
                );
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        Ok(Some(api))
    }

    /// `kubectl ARGS`: (success, stdout, stderr).
    fn kubectl(&self, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new(kubectl_bin())
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .output()
            .map_err(|e| anyhow::anyhow!("kubectl (scripts/setup.sh --tests installs it): {e}"))?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    fn must(&self, args: &[&str]) -> anyhow::Result<String> {
        let (ok, out, err) = self.kubectl(args)?;
        anyhow::ensure!(ok, "kubectl {}: {err}", args.join(" "));
        Ok(out)
    }

    /// `kubectl apply` of a YAML document.
    fn apply(&self, dir: &Path, yaml: &str) -> anyhow::Result<()> {
        let f = dir.join("apply.yaml");
        std::fs::write(&f, yaml)?;
        self.must(&["apply", "-f", &f.display().to_string()])?;
        Ok(())
    }

    /// What a kubelet would do for pod `ordinal`: create it, give it node's IP, mark it Ready.
    fn run_pod(&self, dir: &Path, ordinal: u64) -> anyhow::Result<()> {
        let name = format!("{STS}-{ordinal}");
        self.apply(
            dir,
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {STS}\n\
                 spec:\n  containers:\n  - name: node\n    image: skein:test\n"
            ),
        )?;
        let ip = node_ip(ordinal + 1);
        self.must(&[
            "patch",
            "pod",
            &name,
            "--subresource=status",
            "--type=merge",
            "-p",
            &format!(
                r#"{{"status":{{"phase":"Running","podIP":"{ip}","podIPs":[{{"ip":"{ip}"}}],"conditions":[{{"type":"Ready","status":"True"}}]}}}}"#
            ),
        ])?;
        Ok(())
    }

    /// Deletes pod `ordinal` at once (no kubelet is there to finish a graceful deletion).
    fn delete_pod(&self, ordinal: u64) -> anyhow::Result<()> {
        self.must(&[
            "delete",
            "pod",
            &format!("{STS}-{ordinal}"),
            "--grace-period=0",
            "--force",
        ])?;
        Ok(())
    }

    fn scale(&self, replicas: u64) -> anyhow::Result<()> {
        self.must(&[
            "scale",
            "statefulset",
            STS,
            &format!("--replicas={replicas}"),
        ])?;
        Ok(())
    }
}

fn node_ip(id: u64) -> String {
    format!("127.0.0.{}", u64::from(IP_BASE) + id)
}

/// A port free on every node's address.
fn common_port(ids: std::ops::RangeInclusive<u64>) -> u16 {
    loop {
        let port = free_port(&node_ip(1));
        if ids
            .clone()
            .all(|id| std::net::TcpListener::bind((node_ip(id).as_str(), port)).is_ok())
        {
            return port;
        }
    }
}

/// Starts node `id`'s process, following the StatefulSet; nodes 1-3 found the cluster.
fn start_node(dir: &Path, api: &KubeApi, id: u64, port: u16) -> anyhow::Result<Proc> {
    let founders: Vec<String> = (1..=3)
        .map(|i| format!("{{ id = {i}, addr = \"{}:{port}\" }}", node_ip(i)))
        .collect();
    let cfg = dir.join(format!("node{id}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "[node]\nid = {id}\nlisten = \"{}:{port}\"\ndata_dir = \"{}\"\ninitial_members = [{}]\n\
             [node.kubernetes]\nstatefulset = \"{STS}\"\nnamespace = \"default\"\n\
             address = \"{{pod_ip}}:{port}\"\ninterval = \"1s\"\napi_server = \"{}\"\n\
             token_file = \"{}\"\nca_file = \"{}\"\n",
            node_ip(id),
            dir.join(format!("data{id}")).display(),
            founders.join(", "),
            api.url,
            api.token_file.display(),
            api.ca.display()
        ),
    )?;
    Proc::spawn(
        &["node", "--config", &cfg.display().to_string()],
        &dir.join(format!("node{id}.log")),
    )
}

/// The status of whichever node leads.
async fn leader_status(port: u16) -> Option<ClusterStatusResponse> {
    for id in 1..=5 {
        if let Ok(s) = status(&format!("{}:{port}", node_ip(id))).await {
            if s.leader_id != 0 && s.leader_id == s.node_id {
                return Some(s);
            }
        }
    }
    None
}

/// (id, voter) of the members, by id.
fn members(s: &ClusterStatusResponse) -> Vec<(u64, bool)> {
    let mut m: Vec<(u64, bool)> = s.members.iter().map(|m| (m.id, m.voter)).collect();
    m.sort_unstable();
    m
}

/// The leader's reconciler events.
fn events(s: &ClusterStatusResponse) -> Vec<String> {
    s.reconciler
        .as_ref()
        .map(|r| r.events.iter().map(|e| e.what.clone()).collect())
        .unwrap_or_default()
}

/// Waits until the leader reports exactly `want` as members and nothing left to do.
async fn settle(
    port: u16,
    want: &[(u64, bool)],
    nodes: &[Proc],
) -> anyhow::Result<ClusterStatusResponse> {
    let r = wait_for(
        &format!("members {want:?}"),
        Duration::from_secs(120),
        || async {
            let s = leader_status(port).await?;
            let r = s.reconciler.as_ref()?;
            (members(&s) == want && r.waiting.is_empty()).then_some(s)
        },
    )
    .await;
    match r {
        Ok(s) => Ok(s),
        Err(e) => {
            let last = leader_status(port).await;
            let logs: String = nodes
                .iter()
                .map(|n| tail(&n.log_text(), 15))
                .collect::<Vec<_>>()
                .join("\n---\n");
            anyhow::bail!("{e}; leader's status: {last:?}\n{logs}")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_the_statefulset_on_a_real_api_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let Some(api) = KubeApi::start(dir.path())? else {
        return Ok(());
    };
    let d = dir.path();
    api.apply(
        d,
        &format!(
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata:\n  name: {STS}\nspec:\n  \
             replicas: 3\n  serviceName: {STS}\n  selector:\n    matchLabels:\n      app: {STS}\n  \
             template:\n    metadata:\n      labels:\n        app: {STS}\n    spec:\n      \
             containers:\n      - name: node\n        image: skein:test\n"
        ),
    )?;
    for ordinal in 0..3 {
        api.run_pod(d, ordinal)?;
    }
    let port = common_port(1..=5);
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_node(d, &api, id, port)?);
    }
    let s = settle(port, &[(1, true), (2, true), (3, true)], &nodes).await?;
    let r = s.reconciler.clone().expect("a reconciler");
    assert_eq!(r.statefulset, "default/skein-node");
    assert!(
        events(&s).is_empty(),
        "nothing to change yet: {:?}",
        events(&s)
    );
    let leader_addr = format!("{}:{port}", node_ip(s.node_id));
    let (ok, out, err) = skeinctl(&leader_addr, &["status"])?;
    assert!(ok, "{err}");
    assert!(
        out.contains("membership follows StatefulSet default/skein-node")
            && out.contains("nothing to do"),
        "{out}"
    );

    // Scale up to 5: pods 3 and 4 appear (their nodes started, waiting to be added).
    api.scale(5)?;
    for ordinal in 3..5 {
        api.run_pod(d, ordinal)?;
        nodes.push(start_node(d, &api, ordinal + 1, port)?);
    }
    let s = settle(
        port,
        &[(1, true), (2, true), (3, true), (4, true), (5, true)],
        &nodes,
    )
    .await?;
    let ev = events(&s);
    let order: Vec<&str> = [
        "add node 4",
        "promote node 4",
        "add node 5",
        "promote node 5",
    ]
    .into_iter()
    .collect();
    let at: Vec<Option<usize>> = order
        .iter()
        .map(|w| {
            ev.iter()
                .position(|e| e.starts_with(w) && e.ends_with("done"))
        })
        .collect();
    // One at a time, in this order (a leader elected meanwhile keeps its own list, so only
    // the ones it holds are compared).
    let seen: Vec<usize> = at.iter().flatten().copied().collect();
    assert!(
        !seen.is_empty() && seen.windows(2).all(|w| w[0] < w[1]),
        "{ev:?}"
    );

    // A rolling restart of node 2's pod: gone for a while, but within replicas: it stays.
    let rounds = s.reconciler.as_ref().map_or(0, |r| r.rounds);
    nodes[1].kill();
    api.delete_pod(1)?;
    wait_for("three more rounds", Duration::from_secs(30), || async {
        let s = leader_status(port).await?;
        (s.reconciler.as_ref()?.rounds >= rounds + 3).then_some(())
    })
    .await?;
    let s = leader_status(port).await.expect("a leader");
    assert!(members(&s).contains(&(2, true)), "{:?}", members(&s));
    api.run_pod(d, 1)?;
    nodes[1].restart()?;

    // Scale down to 3: pods 4 and 3 go (their processes stop), then nodes 5 and 4 leave.
    api.scale(3)?;
    for ordinal in [4, 3] {
        nodes[ordinal as usize].kill();
        api.delete_pod(ordinal)?;
    }
    let s = settle(port, &[(1, true), (2, true), (3, true)], &nodes[..3]).await?;
    // Logged by whichever founder led at the time: node 5 first (the highest), then node 4.
    let logs: Vec<String> = nodes[..3].iter().map(Proc::log_text).collect();
    let done = |id: u64| {
        let line = format!("membership: remove node {id} (the StatefulSet has 3 replicas): done");
        logs.iter()
            .find_map(|l| l.find(&line).map(|at| (l.clone(), at)))
    };
    let (Some((log5, at5)), Some((log4, at4))) = (done(5), done(4)) else {
        panic!("removals not logged: {:?}", events(&s));
    };
    if log5 == log4 {
        assert!(at5 < at4, "the highest first: {:?}", events(&s));
    }

    // The three left still commit: a message through a founder.
    let mut ingest = skein_proto::ingest::ingest_client::IngestClient::connect(format!(
        "http://{}:{port}",
        node_ip(s.node_id)
    ))
    .await?;
    let id = ingest
        .enqueue(sized_request("after-scale-down", 0, 100))
        .await?
        .into_inner()
        .id;
    assert!(!id.is_empty());

    // The chart installs against the same server (every object accepted by its API).
    api.must(&["create", "namespace", "skein"])?;
    let helm = cached_tool("helm", "3.17.2");
    let out = Command::new(helm)
        .args(["install", "skein"])
        .arg(manifest_dir().join("../charts/skein"))
        .args(["--dry-run=server", "--namespace", "skein"])
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .output()?;
    assert!(
        out.status.success(),
        "helm install --dry-run=server: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rendered = String::from_utf8_lossy(&out.stdout);
    assert!(
        rendered.contains("kind: StatefulSet") && rendered.contains("kind: Role"),
        "{rendered}"
    );
    Ok(())
}
