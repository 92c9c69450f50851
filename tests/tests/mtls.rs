//! The cluster plane over mutual TLS: certificates made with `skein certs`, a 3-node cluster,
//! an edge and a sender that deliver mail through it, every service refused to the roles that
//! may not call it, and `skeinctl` with an operator certificate or an Admin token.

use std::path::Path;
use std::time::Duration;

use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::{ClusterStatusRequest, CreateTenantRequest, ListTenantsRequest};
use skein_proto::ingest::ingest_client::IngestClient;
use skein_proto::ingest::{CredentialsRequest, EnqueueRequest};
use skein_proto::raft::raft_client::RaftClient;
use skein_proto::raft::RaftPayload;
use skein_proto::work::sender_message::Msg;
use skein_proto::work::work_client::WorkClient;
use skein_proto::work::{Hello, SenderMessage, SourceIp};
use skein_tests::*;
use tokio_stream::StreamExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Code;

const ROLE_DOMAIN: &str = "skein.invalid";

/// Runs `skein certs ARGS`, failing with its output.
fn certs(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(skein_bin())
        .arg("certs")
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "skein certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `[cluster_tls]` naming DIR/ca.pem and DIR/NAME.{pem,key}.
fn tls_section(dir: &Path, name: &str) -> String {
    format!(
        "\n[cluster_tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        dir.join("ca.pem").display(),
        dir.join(format!("{name}.pem")).display(),
        dir.join(format!("{name}.key")).display()
    )
}

/// A TLS channel to `addr`, verifying the node by the CA in `dir`, presenting NAME's
/// certificate when given (from `cert_dir`, which may hold another CA's certificates).
async fn channel(dir: &Path, addr: &str, client: Option<(&Path, &str)>) -> anyhow::Result<Channel> {
    let ca = std::fs::read_to_string(dir.join("ca.pem"))?;
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(format!("node.{ROLE_DOMAIN}"));
    if let Some((cert_dir, name)) = client {
        let cert = std::fs::read_to_string(cert_dir.join(format!("{name}.pem")))?;
        let key = std::fs::read_to_string(cert_dir.join(format!("{name}.key")))?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Ok(Endpoint::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await?)
}

/// The status code of one call of each service, in this order: Raft Vote, Ingest Enqueue,
/// Ingest Credentials, Work Session, Admin ListTenants (read), Admin CreateTenant (write).
/// `Ok` stands for a call that succeeded or is still running after 3 s (a Work session).
async fn probe(ch: Channel) -> Vec<Code> {
    let limit = Duration::from_secs(3);
    let code = |r: Result<(), tonic::Status>| r.err().map(|s| s.code()).unwrap_or(Code::Ok);
    let mut out = Vec::new();
    let mut raft = RaftClient::new(ch.clone());
    out.push(code(
        raft.vote(RaftPayload {
            data: vec![0xFF].into(),
        })
        .await
        .map(|_| ()),
    ));
    let mut ingest = IngestClient::new(ch.clone());
    out.push(code(
        ingest.enqueue(EnqueueRequest::default()).await.map(|_| ()),
    ));
    out.push(code(
        ingest.credentials(CredentialsRequest {}).await.map(|_| ()),
    ));
    let mut work = WorkClient::new(ch.clone());
    let hello = tokio_stream::iter(vec![SenderMessage::default()]).chain(tokio_stream::pending());
    let session = async {
        let mut s = work.session(hello).await?.into_inner();
        s.message().await.map(|_| ())
    };
    out.push(match tokio::time::timeout(limit, session).await {
        Ok(r) => code(r),
        Err(_) => Code::Ok,
    });
    let mut admin = AdminClient::new(ch);
    out.push(code(
        admin
            .list_tenants(ListTenantsRequest::default())
            .await
            .map(|_| ()),
    ));
    out.push(code(
        admin
            .create_tenant(CreateTenantRequest {
                name: "probe".into(),
                username: String::new(),
                password: "probe-password-1".into(),
            })
            .await
            .map(|_| ()),
    ));
    out
}

fn refused(c: Code) -> bool {
    matches!(c, Code::Unauthenticated | Code::PermissionDenied)
}

struct Rig {
    certs: tempfile::TempDir,
    cluster: Cluster,
}

/// CA and certificates under a temporary directory, and a 3-node TLS cluster on 127.0.0.151-153.
async fn rig() -> anyhow::Result<Rig> {
    let certs_dir = tempfile::tempdir()?;
    let dir = certs_dir.path();
    let d = dir.to_str().unwrap();
    certs(&["init", "--dir", d])?;
    for (name, args) in [
        ("node", &["--role", "node"][..]),
        ("edge", &["--role", "edge"]),
        // The sender's source IP (the probe's too) is named in its certificate.
        (
            "sender",
            &[
                "--role",
                "sender",
                "--ip",
                "127.0.0.155",
                "--ip",
                "127.0.0.1",
            ],
        ),
        ("operator", &["--role", "operator"]),
    ] {
        certs(&[&["issue", "--dir", d, "--name", name][..], args].concat())?;
    }
    let cluster = Cluster::start(3, 150, &tls_section(dir, "node"))?;
    Ok(Rig {
        certs: certs_dir,
        cluster,
    })
}

impl Rig {
    fn dir(&self) -> &Path {
        self.certs.path()
    }

    fn ctl(&self, node: usize, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let ca = self.dir().join("ca.pem");
        let mut all = vec!["--ca", ca.to_str().unwrap()];
        all.extend(args);
        skeinctl(&self.cluster.addrs[node], &all)
    }

    fn operator(&self) -> Vec<String> {
        vec![
            "--cert".into(),
            self.dir().join("operator.pem").display().to_string(),
            "--key".into(),
            self.dir().join("operator.key").display().to_string(),
        ]
    }

    /// skeinctl with the operator certificate.
    fn ctl_op(&self, node: usize, args: &[&str]) -> anyhow::Result<(bool, String, String)> {
        let op = self.operator();
        let mut all: Vec<&str> = op.iter().map(String::as_str).collect();
        all.extend(args);
        self.ctl(node, &all)
    }

    async fn wait_leader(&self) -> anyhow::Result<()> {
        let op = self.operator();
        // A new cluster raises its format to this release's once it has a leader.
        wait_for("a leader over TLS", Duration::from_secs(30), || async {
            let mut args: Vec<&str> = op.iter().map(String::as_str).collect();
            args.extend(["--json", "status"]);
            let (ok, out, _) = self.ctl(0, &args).ok()?;
            let v: serde_json::Value = serde_json::from_str(&out).ok()?;
            let current = v["format"].as_u64().is_some() && v["format"] == v["release_format"];
            (ok && v["leader_id"].as_u64().unwrap_or(0) > 0 && current).then_some(())
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", self.cluster.logs()))
    }
}

/// Mail flows edge → nodes → sender over mutual TLS; each role's certificate opens its own
/// services only, a client without a certificate gets nothing but Admin with a token, and a
/// certificate from another CA does not get past the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_call_only_their_services_and_mail_flows_over_tls() -> anyhow::Result<()> {
    let rig = rig().await?;
    rig.wait_leader().await?;
    let dir = rig.dir().to_path_buf();
    let addrs = rig.cluster.addrs.clone();

    // The table: what each certificate may call.
    let expected: [(&str, [bool; 6]); 5] = [
        ("node", [true, true, false, false, true, true]),
        ("edge", [false, true, true, false, false, false]),
        ("sender", [false, false, false, true, false, false]),
        ("operator", [false, false, false, false, true, true]),
        ("", [false; 6]),
    ];
    for (name, allowed) in expected {
        let client = (!name.is_empty()).then_some((dir.as_path(), name));
        let got = probe(channel(&dir, &addrs[0], client).await?).await;
        for (i, (code, ok)) in got.iter().zip(allowed).enumerate() {
            assert_eq!(
                !refused(*code),
                ok,
                "certificate {name:?}, call {i}: {code:?} (all: {got:?})"
            );
        }
        if name.is_empty() {
            assert!(got.iter().all(|c| *c == Code::Unauthenticated), "{got:?}");
        }
        if name == "edge" {
            // Another role's certificate is refused as such, not as "no certificate".
            assert_eq!(got[0], Code::PermissionDenied);
        }
    }

    // A sender announces only the source IPs its certificate names.
    let hello = |ip: &str| SenderMessage {
        msg: Some(Msg::Hello(Hello {
            sender: "probe".into(),
            source_ips: vec![SourceIp {
                ip: ip.into(),
                ehlo: "probe.skein.test".into(),
            }],
            max_in_flight: 1,
            active_leases: Vec::new(),
        })),
    };
    let leader = wait_for("the leader's address", Duration::from_secs(10), || async {
        let ch = channel(&dir, &addrs[0], Some((dir.as_path(), "operator")))
            .await
            .ok()?;
        let s = AdminClient::new(ch)
            .cluster_status(ClusterStatusRequest {})
            .await
            .ok()?
            .into_inner();
        (!s.leader_addr.is_empty()).then_some(s.leader_addr)
    })
    .await?;
    let mut work = WorkClient::new(channel(&dir, &leader, Some((dir.as_path(), "sender"))).await?);
    let stream = tokio_stream::iter(vec![hello("127.0.0.157")]).chain(tokio_stream::pending());
    let refused = work.session(stream).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("127.0.0.157 is not named in this sender's certificate"),
        "{refused:?}"
    );
    let stream = tokio_stream::iter(vec![hello("127.0.0.1")]).chain(tokio_stream::pending());
    assert!(work.session(stream).await.is_ok(), "its own IP is taken");
    // Issuing a sender's certificate without its IPs is refused, saying why.
    let err = certs(&[
        "issue",
        "--dir",
        dir.to_str().unwrap(),
        "--name",
        "s2",
        "--role",
        "sender",
    ])
    .unwrap_err()
    .to_string();
    assert!(err.contains("--ip"), "{err}");

    // A certificate from another CA: the handshake fails, nothing is called.
    let rogue = tempfile::tempdir()?;
    let r = rogue.path().to_str().unwrap();
    certs(&["init", "--dir", r])?;
    certs(&["issue", "--dir", r, "--name", "admin", "--role", "operator"])?;
    let rogue_call = match channel(&dir, &addrs[0], Some((rogue.path(), "admin"))).await {
        Err(_) => None,
        Ok(ch) => Some(
            AdminClient::new(ch)
                .cluster_status(ClusterStatusRequest {})
                .await
                .map(|_| ()),
        ),
    };
    let rogue_code = rogue_call.map(|r| r.err().map(|s| s.code()));
    assert!(
        matches!(
            rogue_code,
            None | Some(Some(Code::Unavailable | Code::Unknown | Code::Cancelled))
        ),
        "{rogue_code:?}"
    );
    // A client that trusts another CA refuses the nodes' certificates.
    assert!(channel(rogue.path(), &addrs[0], None).await.is_err());

    // Mail: an edge and a sender with their certificates; the sink counts what arrives.
    let sink_addr = format!("127.0.0.156:{}", free_port("127.0.0.156"));
    let sink = Sink::start(std::slice::from_ref(&sink_addr), &[])?;
    let edge_extra = format!(
        "relay_networks = [\"127.0.0.0/8\"]\n{}",
        tls_section(&dir, "edge")
    );
    let edge = Edge::start(&dir, "127.0.0.154", &addrs, &edge_extra).await?;
    let sender_cfg = sender_config(&dir, "sender-tls", &addrs, "127.0.0.155", &sink_addr)?;
    let mut text = std::fs::read_to_string(&sender_cfg)?;
    text += &tls_section(&dir, "sender");
    std::fs::write(&sender_cfg, text)?;
    let sender = Proc::spawn(
        &["sender", "--config", sender_cfg.to_str().unwrap()],
        &dir.join("sender.log"),
    )?;
    let id = submit_relayed("127.0.0.154", edge.smtp, "over-tls@ex.test")
        .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&edge.proc.log_text(), 20)))?;
    wait_for("delivery over TLS", Duration::from_secs(30), || async {
        (!sink.messages_for("over-tls@ex.test").is_empty()).then_some(())
    })
    .await
    .map_err(|e| {
        anyhow::anyhow!(
            "{e}\nqueue id {id}\nsender:\n{}\nnodes:\n{}",
            tail(&sender.log_text(), 20),
            rig.cluster.logs()
        )
    })?;

    // An edge whose certificate names another role is told so at start.
    let wrong = dir.join("edge-wrong.toml");
    std::fs::write(
        &wrong,
        format!(
            "[edge]\nqueue = [\"{}\"]\n{}",
            addrs[0],
            tls_section(&dir, "sender")
        ),
    )?;
    let (ok, _, err) = {
        let out = std::process::Command::new(skein_bin())
            .args(["check-config", wrong.to_str().unwrap()])
            .output()?;
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(!ok);
    assert!(
        err.contains("names sender, but this process needs role edge"),
        "{err}"
    );
    Ok(())
}

/// Admin tokens through skeinctl: an operator creates a read token and an admin token (on a
/// node that may forward to the leader); the read token lists but may not change anything, the
/// admin token may, until it is revoked (then every node refuses it); without a certificate or
/// token skeinctl is told what the call needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skeinctl_with_and_without_a_token() -> anyhow::Result<()> {
    let rig = rig().await?;
    rig.wait_leader().await?;
    let (ok, viewer, err) = rig.ctl_op(1, &["token", "create", "viewer"])?;
    assert!(ok, "{err}");
    assert!(err.contains("shown only now"), "{err}");
    let viewer = viewer.trim().to_string();
    assert!(viewer.starts_with("skn_"), "{viewer}");
    let (ok, out, err) = rig.ctl_op(
        2,
        &["--json", "token", "create", "deployer", "--scope", "admin"],
    )?;
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let file = rig.dir().join("deployer.token");
    std::fs::write(&file, format!("{}\n", v["secret"].as_str().unwrap()))?;
    let file = file.to_str().unwrap();

    // The read token: lists, but changes nothing.
    let (ok, _, err) = rig.ctl(0, &["--token", &viewer, "tenant", "list"])?;
    assert!(ok, "{err}");
    let create = ["tenant", "create", "acme", "--password", "acme-secret-1"];
    let (ok, _, err) = rig.ctl(0, &[&["--token", viewer.as_str()][..], &create].concat())?;
    assert!(!ok);
    assert!(
        err.contains("PermissionDenied") && err.contains("\"viewer\" has the read scope"),
        "{err}"
    );
    // The admin token (from a file) changes things.
    let (ok, _, err) = rig.ctl(0, &[&["--token-file", file][..], &create].concat())?;
    assert!(ok, "{err}");
    let (ok, out, _) = rig.ctl(1, &["--token", &viewer, "tenant", "list"])?;
    assert!(ok && out.contains("acme"), "{out}");

    // Listing shows names and scopes, never secrets.
    let (ok, out, err) = rig.ctl_op(0, &["token", "list"])?;
    assert!(ok, "{err}");
    assert!(out.contains("deployer") && out.contains("admin"), "{out}");
    assert!(out.contains("viewer") && !out.contains("skn_"), "{out}");

    // Revoked: every node refuses it (once the revocation reached it).
    let (ok, _, err) = rig.ctl_op(0, &["token", "revoke", "deployer"])?;
    assert!(ok, "{err}");
    for node in 0..3 {
        let msg = wait_for("the revocation", Duration::from_secs(10), || async {
            let (ok, _, err) = rig
                .ctl(node, &["--token-file", file, "tenant", "list"])
                .ok()?;
            (!ok).then_some(err)
        })
        .await?;
        assert!(msg.contains("unknown or revoked"), "node {node}: {msg}");
    }
    let (ok, _, err) = rig.ctl_op(0, &["token", "revoke", "deployer"])?;
    assert!(!ok && err.contains("NotFound"), "{err}");

    // Nothing at all: the node says what it takes.
    let (ok, _, err) = rig.ctl(0, &["tenant", "list"])?;
    assert!(!ok);
    assert!(
        err.contains("Unauthenticated") && err.contains("operator certificate or an Admin token"),
        "{err}"
    );
    // And plaintext to a TLS port gets nowhere.
    let (ok, _, _) = skeinctl(&rig.cluster.addrs[0], &["tenant", "list"])?;
    assert!(!ok);
    Ok(())
}

/// `skein dev` with `[cluster_tls]` and one certificate naming node, edge and sender (and the
/// sender's source IP): its roles speak mutual TLS among themselves in one process, mail is
/// delivered, and the gRPC port takes TLS only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_runs_every_role_over_mutual_tls() -> anyhow::Result<()> {
    let pki = tempfile::tempdir()?;
    let d = pki.path().to_str().unwrap();
    certs(&["init", "--dir", d])?;
    certs(&[
        "issue",
        "--dir",
        d,
        "--name",
        "dev",
        "--role",
        "node",
        "--role",
        "edge",
        "--role",
        "sender",
        "--ip",
        "127.0.0.1",
    ])?;
    let dir = tempfile::tempdir()?;
    let ip = "127.0.0.157";
    let rig = DevWithSink::start(
        dir.path(),
        ip,
        "127.0.0.158",
        "",
        &tls_section(pki.path(), "dev"),
        &[],
    )
    .await?;
    submit_relayed(ip, rig.smtp, "dev-tls@example.net")?;
    wait_for("delivery", Duration::from_secs(30), || async {
        (!rig.sink.messages_for("dev-tls@example.net").is_empty()).then_some(())
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&rig.dev.log_text(), 20)))?;
    let (ok, _, _) = skeinctl(&rig.grpc, &["status"])?;
    assert!(!ok, "plaintext is not served");
    let ca = pki.path().join("ca.pem");
    let (ok, _, err) = skeinctl(&rig.grpc, &["--ca", ca.to_str().unwrap(), "status"])?;
    assert!(
        !ok && err.contains("operator certificate or an Admin token"),
        "{err}"
    );
    Ok(())
}
