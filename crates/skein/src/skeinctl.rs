//! `skeinctl`: the admin CLI, a thin client of the Admin gRPC API.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::*;
use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};

#[path = "skeinctl/queue.rs"]
mod queue;
#[path = "skeinctl/shaping.rs"]
mod shaping;
#[path = "skeinctl/tenants.rs"]
mod tenants;
#[path = "skeinctl/tokens.rs"]
mod tokens;

#[derive(Parser)]
#[command(name = "skeinctl", version, about = "Administer a Skein cluster")]
struct Cli {
    /// Queue nodes' gRPC addresses, comma-separated (`host:port`, `http://host:port`): the
    /// first that answers is used.
    #[arg(
        long,
        short,
        env = "SKEIN_SERVER",
        default_value = "127.0.0.1:7070",
        global = true
    )]
    server: String,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    /// The cluster CA's certificate (PEM): connect over TLS and verify the node by it.
    #[arg(long, env = "SKEIN_CA", global = true)]
    ca: Option<PathBuf>,
    /// An operator certificate (PEM, `skein certs issue --role operator`); needs --ca, --key.
    #[arg(long, env = "SKEIN_CERT", global = true, requires = "key")]
    cert: Option<PathBuf>,
    /// The operator certificate's private key (PEM).
    #[arg(long, env = "SKEIN_KEY", global = true, requires = "cert")]
    key: Option<PathBuf>,
    /// An Admin token (`skeinctl token create`). Prefer SKEIN_TOKEN or --token-file: command
    /// lines are visible to other users.
    #[arg(long, env = "SKEIN_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// A file holding the Admin token.
    #[arg(
        long,
        env = "SKEIN_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Cluster members, leader and log positions.
    Status,
    /// After every node runs the new release: let the cluster write its replicated format.
    FinalizeUpgrade,
    /// Add a node as a learner (it starts replicating).
    AddLearner { id: u64, addr: String },
    /// Make a learner a voter.
    Promote { id: u64 },
    /// Remove a node.
    Remove { id: u64 },
    /// List stored messages, pending and done (done ones keep their envelope and history).
    Messages(queue::MessagesArgs),
    /// Queues: each tenant's unfinished mail per destination domain, with counts.
    Queues(queue::QueuesArgs),
    /// Show one message (with --data, its content).
    Message(queue::MessageArgs),
    /// Tenants.
    #[command(subcommand)]
    Tenant(tenants::TenantCmd),
    /// A tenant's suppression list (addresses not to send to).
    #[command(subcommand)]
    Suppression(tenants::SuppressionCmd),
    /// Tenants' DKIM keys (edges sign a tenant's mail with the key of its From: domain).
    #[command(subcommand)]
    Dkim(tenants::DkimCmd),
    /// Source IPs: add, remove, pause, resume, warm-up, show today's use.
    #[command(subcommand)]
    Ip(shaping::IpCmd),
    /// Which pool of IPs a tenant's mail goes out from.
    #[command(subcommand)]
    Pool(shaping::PoolCmd),
    /// Warm-up schedules (daily caps by warm-up day).
    #[command(subcommand)]
    Schedule(shaping::ScheduleCmd),
    /// Receiving providers: domain and MX rules, hourly limits per IP.
    #[command(subcommand)]
    Provider(shaping::ProviderCmd),
    /// Stop sending for a tenant, domain, provider, pool or IP (mail waits in the queue).
    Suspend {
        /// tenant, domain, provider, pool or ip.
        kind: String,
        name: String,
        /// For how long ("2h", "30m"); until resumed when not given.
        #[arg(long = "for")]
        duration: Option<skein_core::HumanDuration>,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a suspension.
    Resume { kind: String, name: String },
    /// Suspensions in force.
    Suspensions,
    /// Try queued mail again now (a message, or a tenant's and/or a domain's queues).
    Retry(queue::Scope),
    /// Bounce queued mail (a DSN to each return path says why).
    Bounce(queue::BounceArgs),
    /// Delete queued mail: never sent, no DSN (spam from a broken account, say).
    Delete(queue::Scope),
    /// Senders connected to the leader: source IPs, assignments held and allowed at once.
    Senders,
    /// Admin tokens: create (prints the secret once), list, revoke.
    #[command(subcommand)]
    Token(tokens::TokenCmd),
    /// A test node's manual clock (`[node] clock = "manual"`).
    #[command(subcommand)]
    Clock(ClockCmd),
}

#[derive(Subcommand)]
enum ClockCmd {
    /// Move the node's clock forward ("1h", "1d"...). Call every node of a cluster.
    Advance { by: skein_core::HumanDuration },
}

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter,
                       "replicating": m.replicating, "lag": m.lag})
}

/// A gRPC status as an error a person can read: its code and message.
fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", e.code(), e.message())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message and its causes, without a backtrace (RUST_BACKTRACE is for bugs).
            eprintln!("skeinctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Adds the Admin token, if any, to every call.
#[derive(Clone)]
pub(crate) struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The Admin client every command uses.
pub(crate) type Client = AdminClient<InterceptedService<Channel, Bearer>>;

/// The token from --token, SKEIN_TOKEN or --token-file, as a header value.
fn bearer(cli: &Cli) -> anyhow::Result<Bearer> {
    let token = match (&cli.token, &cli.token_file) {
        (Some(t), _) => Some(t.clone()),
        (None, Some(f)) => Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("reading the token file {}", f.display()))?,
        ),
        (None, None) => None,
    };
    let Some(token) = token else {
        return Ok(Bearer(None));
    };
    let v = format!("Bearer {}", token.trim())
        .parse()
        .map_err(|_| anyhow::anyhow!("the token holds characters a header cannot carry"))?;
    Ok(Bearer(Some(v)))
}

/// A channel to the node: TLS when --ca is given (with the operator certificate, if any).
async fn connect(cli: &Cli) -> anyhow::Result<Channel> {
    let tls = match (&cli.ca, &cli.cert, &cli.key) {
        (None, None, _) => None,
        (None, Some(_), _) => anyhow::bail!("--cert needs --ca (the cluster CA's certificate)"),
        (Some(ca), Some(cert), Some(key)) => {
            let id = skein_pki::Identity::load(ca, cert, key, std::time::SystemTime::now())?;
            id.require(skein_pki::Role::Operator)?;
            Some(id.client())
        }
        (Some(ca), _, _) => {
            let pem =
                std::fs::read_to_string(ca).with_context(|| format!("reading {}", ca.display()))?;
            Some(skein_pki::anonymous_client(&pem))
        }
    };
    let mut failed = Vec::new();
    for server in cli
        .server
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let addr = match (server.split_once("://"), &tls) {
            (None, _) => server,
            (Some(("http", a)), None) | (Some(("https", a)), Some(_)) => a,
            (Some(("https", _)), None) => {
                anyhow::bail!("{server}: https needs the cluster CA (--ca or SKEIN_CA)")
            }
            (Some(("http", _)), Some(_)) => {
                anyhow::bail!("{server}: with --ca the connection is TLS; drop the http://")
            }
            (Some((scheme, _)), _) => anyhow::bail!("{server}: unknown scheme {scheme:?}"),
        };
        let mut endpoint = Endpoint::from_shared(skein_pki::uri(addr, tls.is_some()))
            .with_context(|| format!("{server:?} is not host:port"))?
            .connect_timeout(std::time::Duration::from_secs(3));
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        match endpoint.connect().await {
            Ok(ch) => return Ok(ch),
            Err(e) => failed.push(format!("{addr}: {}", root_cause(&e))),
        }
    }
    anyhow::bail!(
        "no queue node answered ({}): is it running, and is that its gRPC port ([node] listen)?",
        failed.join("; ")
    )
}

/// The innermost cause of an error ("Connection refused (os error 111)"), without the layers
/// that each repeat it.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut e = e;
    while let Some(inner) = e.source() {
        e = inner;
    }
    e.to_string()
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ch = connect(&cli).await?;
    let mut c =
        AdminClient::with_interceptor(ch, bearer(&cli)?).max_decoding_message_size(80 << 20);
    match cli.cmd {
        Cmd::Ip(cmd) => shaping::ip(&mut c, cmd, cli.json).await?,
        Cmd::Pool(cmd) => shaping::pool(&mut c, cmd).await?,
        Cmd::Schedule(cmd) => shaping::schedule(&mut c, cmd, cli.json).await?,
        Cmd::Provider(cmd) => shaping::provider(&mut c, cmd, cli.json).await?,
        Cmd::Suspend {
            kind,
            name,
            duration,
            reason,
        } => {
            let r = SuspendRequest {
                kind,
                name,
                for_seconds: duration.map_or(0, |d| d.0.as_secs().max(1)),
                reason,
            };
            shaping::suspend(&mut c, r, cli.json).await?
        }
        Cmd::Resume { kind, name } => shaping::resume(&mut c, kind, name).await?,
        Cmd::Suspensions => shaping::suspensions(&mut c, cli.json).await?,
        Cmd::Clock(ClockCmd::Advance { by }) => {
            let r = c
                .advance_clock(AdvanceClockRequest {
                    ms: by.0.as_millis() as u64,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("clock at {} ms", r.now_ms);
        }
        Cmd::FinalizeUpgrade => {
            let r = c
                .finalize_upgrade(FinalizeUpgradeRequest {})
                .await
                .map_err(status)?
                .into_inner();
            println!("the cluster writes format {}", r.format);
        }
        Cmd::Status => {
            let s = c
                .cluster_status(ClusterStatusRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "node_id": s.node_id, "leader_id": s.leader_id, "leader_addr": s.leader_addr,
                        "term": s.term, "state": s.state, "last_log_index": s.last_log_index,
                        "last_applied_index": s.last_applied_index, "message_count": s.message_count,
                        "format": s.format, "release_format": s.release_format,
                        "cluster_id": s.cluster_id,
                        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
                        "reconciler": s.reconciler.as_ref().map(|r| serde_json::json!({
                            "statefulset": r.statefulset, "waiting": r.waiting,
                            "rounds": r.rounds,
                            "events": r.events.iter().map(|e| serde_json::json!({
                                "at_ms": e.at_ms, "what": e.what,
                            })).collect::<Vec<_>>(),
                        })),
                    })
                );
            } else {
                if s.leader_id == 0 && s.members.is_empty() {
                    println!(
                        "node {}: not part of a cluster yet (starting, or waiting to be added \
                         with `skeinctl add-learner`)",
                        s.node_id
                    );
                } else if s.leader_id == 0 {
                    println!(
                        "node {} ({}), term {}: no leader yet (electing, or the cluster has lost \
                         its quorum)",
                        s.node_id, s.state, s.term
                    );
                } else {
                    println!(
                        "node {} ({}), term {}, leader {} {}",
                        s.node_id, s.state, s.term, s.leader_id, s.leader_addr
                    );
                }
                println!(
                    "log {} applied {} messages {}",
                    s.last_log_index, s.last_applied_index, s.message_count
                );
                if !s.cluster_id.is_empty() {
                    println!("cluster {}", s.cluster_id);
                }
                if s.format < s.release_format {
                    println!(
                        "format {} (this release writes {}: run `skeinctl finalize-upgrade` \
                         once every node runs it)",
                        s.format, s.release_format
                    );
                } else {
                    println!("format {}", s.format);
                }
                let leads = s.leader_id == s.node_id && s.leader_id != 0;
                for m in s.members {
                    // Replication is the leader's to know.
                    let health = match (leads, m.replicating, m.lag) {
                        (false, _, _) => String::new(),
                        (true, false, _) => "  not replicating (down or unreachable?)".into(),
                        (true, true, 0) => "  up to date".into(),
                        (true, true, lag) => format!("  {lag} entries behind"),
                    };
                    println!(
                        "  {:>4} {:<24} {:<8}{health}",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" }
                    );
                }
                if !leads && s.leader_id != 0 {
                    println!(
                        "  (members' replication: ask the leader, --server {})",
                        s.leader_addr
                    );
                }
                if let Some(r) = s.reconciler {
                    println!(
                        "membership follows StatefulSet {} ({} rounds): {}",
                        r.statefulset,
                        r.rounds,
                        if r.waiting.is_empty() {
                            "nothing to do".to_string()
                        } else {
                            r.waiting
                        }
                    );
                    for e in r.events {
                        println!("  {}  {}", shaping::ms_utc(e.at_ms as i64), e.what);
                    }
                }
            }
        }
        Cmd::AddLearner { id, addr } => {
            let r = c
                .add_learner(AddLearnerRequest { id, addr })
                .await
                .map_err(status)?
                .into_inner();
            println!("added learner {id} at log index {}", r.log_index);
        }
        Cmd::Promote { id } => {
            let r = c
                .promote_voter(NodeRef { id })
                .await
                .map_err(status)?
                .into_inner();
            println!("node {id} is a voter (log index {})", r.log_index);
        }
        Cmd::Remove { id } => {
            let r = c
                .remove_node(NodeRef { id })
                .await
                .map_err(status)?
                .into_inner();
            println!("node {id} removed (log index {})", r.log_index);
        }
        Cmd::Messages(a) => queue::messages(&mut c, a, cli.json).await?,
        Cmd::Message(a) => queue::message(&mut c, a).await?,
        Cmd::Queues(a) => queue::queues(&mut c, a, cli.json).await?,
        Cmd::Retry(scope) => queue::retry(&mut c, scope).await?,
        Cmd::Bounce(a) => queue::bounce(&mut c, a).await?,
        Cmd::Delete(scope) => queue::delete(&mut c, scope).await?,
        Cmd::Tenant(cmd) => tenants::tenant(&mut c, cmd).await?,
        Cmd::Token(cmd) => tokens::token(&mut c, cmd, cli.json).await?,
        Cmd::Senders => {
            let r = c
                .list_senders(ListSendersRequest {})
                .await
                .map_err(status)?
                .into_inner();
            if r.senders.is_empty() && !cli.json {
                println!("no sender connected (mail waits until one is)");
            }
            for s in r.senders {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"name": s.name, "source_ips": s.source_ips,
                            "max_in_flight": s.max_in_flight, "in_flight": s.in_flight})
                    );
                } else {
                    println!(
                        "{:<20} {:>5} of {:<5} leases  {}",
                        s.name,
                        s.in_flight,
                        s.max_in_flight,
                        s.source_ips.join(", ")
                    );
                }
            }
        }
        Cmd::Suppression(cmd) => tenants::suppression(&mut c, cmd, cli.json).await?,
        Cmd::Dkim(cmd) => tenants::dkim(&mut c, cmd, cli.json).await?,
    }
    Ok(())
}
