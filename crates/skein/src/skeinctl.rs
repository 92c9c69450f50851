//! `skeinctl`: the admin CLI, a thin client of the Admin gRPC API.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use skein_proto::admin::admin_client::AdminClient;
use skein_proto::admin::*;
use tonic::transport::Channel;

#[path = "skeinctl/shaping.rs"]
mod shaping;

#[derive(Parser)]
#[command(name = "skeinctl", version, about = "Administer a Skein cluster")]
struct Cli {
    /// Any queue node's gRPC address.
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
    Messages {
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Read this node's own state (not forwarded to the leader).
        #[arg(long)]
        local: bool,
    },
    /// Queues: each tenant's unfinished mail per destination domain, with counts.
    Queues {
        /// Only this tenant's ("" for mail relayed by IP address).
        #[arg(long)]
        tenant: Option<String>,
        /// Start after this queue (both flags; from a previous page).
        #[arg(long, default_value = "", requires = "after_domain")]
        after_tenant: String,
        #[arg(long, default_value = "")]
        after_domain: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Sum by tenant, domain, provider or pool instead (with what is held back).
        #[arg(long, conflicts_with_all = ["tenant", "after_tenant", "after_domain"])]
        by: Option<String>,
    },
    /// Show one message (with --data, its content).
    Message {
        id: String,
        #[arg(long)]
        data: bool,
    },
    /// Tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// A tenant's suppression list (addresses not to send to).
    #[command(subcommand)]
    Suppression(SuppressionCmd),
    /// Tenants' DKIM keys (edges sign a tenant's mail with the key of its From: domain).
    #[command(subcommand)]
    Dkim(DkimCmd),
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
    Retry {
        #[command(flatten)]
        scope: Scope,
    },
    /// Bounce queued mail (a DSN to each return path says why).
    Bounce {
        #[command(flatten)]
        scope: Scope,
        /// Why: it goes into the DSNs.
        #[arg(long)]
        reason: String,
    },
    /// A test node's manual clock (`[node] clock = "manual"`).
    #[command(subcommand)]
    Clock(ClockCmd),
}

/// Which queued mail an action covers.
#[derive(clap::Args)]
struct Scope {
    /// One message (queue id).
    #[arg(long, default_value = "")]
    message: String,
    /// A tenant's queues ("" for mail relayed by IP address).
    #[arg(long)]
    tenant: Option<String>,
    /// Queues for this recipient domain.
    #[arg(long, default_value = "")]
    domain: String,
}

impl From<Scope> for QueueScope {
    fn from(s: Scope) -> Self {
        QueueScope {
            message_id: s.message,
            tenant: s.tenant,
            domain: s.domain,
        }
    }
}

#[derive(Subcommand)]
enum ClockCmd {
    /// Move the node's clock forward ("1h", "1d"...). Call every node of a cluster.
    Advance { by: skein_core::HumanDuration },
}

#[derive(Subcommand)]
enum DkimCmd {
    /// Set (or replace) a tenant's key for a domain; prints the TXT record to publish.
    Set {
        tenant: String,
        domain: String,
        /// Selector: the record goes at SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        /// PEM private key file (RSA 2048+ bits or Ed25519).
        #[arg(
            long,
            conflicts_with = "generate",
            required_unless_present = "generate"
        )]
        key: Option<PathBuf>,
        /// Have the cluster generate a key: "ed25519".
        #[arg(long)]
        generate: Option<String>,
    },
    /// List DKIM keys (all tenants' unless --tenant).
    List {
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Remove a tenant's key for a domain (its mail goes unsigned).
    Remove { tenant: String, domain: String },
}

fn print_dkim_key(k: &DkimKey, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tenant": k.tenant, "domain": k.domain, "selector": k.selector,
                "algorithm": k.algorithm, "dns_name": k.dns_name, "dns_record": k.dns_record,
                "created_at_ms": k.created_at_ms,
            })
        );
    } else {
        println!(
            "{} {}: {} IN TXT \"{}\"",
            k.tenant, k.algorithm, k.dns_name, k.dns_record
        );
    }
}

#[derive(Subcommand)]
enum SuppressionCmd {
    /// List suppressed addresses.
    List {
        /// Tenant ("" for mail relayed without AUTH).
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        after: String,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Suppress an address.
    Add {
        address: String,
        #[arg(long, default_value = "")]
        tenant: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Lift a suppression.
    Remove {
        address: String,
        #[arg(long, default_value = "")]
        tenant: String,
    },
}

#[derive(Subcommand)]
enum TenantCmd {
    /// Create a tenant with an SMTP login.
    Create {
        name: String,
        #[arg(long, env = "SKEIN_TENANT_PASSWORD")]
        password: String,
        #[arg(long, default_value = "")]
        username: String,
    },
    /// List tenants.
    List,
    /// Change a tenant's settings.
    Update {
        name: String,
        /// Allow or stop submission.
        #[arg(long)]
        enabled: Option<bool>,
        /// Send DSNs to the return path of bounced mail.
        #[arg(long)]
        dsn: Option<bool>,
    },
}

fn member_json(m: &Member) -> serde_json::Value {
    serde_json::json!({"id": m.id, "addr": m.addr, "voter": m.voter})
}

fn message_json(m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": m.id, "tenant": m.tenant, "mail_from": m.mail_from, "rcpt_to": m.rcpt_to,
        "size": m.size, "received_at_ms": m.received_at_ms, "client_ip": m.client_ip,
        "helo": m.helo, "edge": m.edge, "log_index": m.log_index, "remaining": m.remaining,
    });
    if !m.dsn_for.is_empty() {
        v["dsn_for"] = m.dsn_for.clone().into();
    }
    if !m.recipients.is_empty() {
        v["recipients"] = m.recipients.iter().map(recipient_json).collect();
    }
    v
}

fn recipient_json(r: &RecipientStatus) -> serde_json::Value {
    serde_json::json!({
        "address": r.address, "state": r.state, "attempts": r.attempts, "due_ms": r.due_ms,
        "final_at_ms": r.final_at_ms, "sender": r.sender, "source_ip": r.source_ip,
        "history": r.history.iter().map(|a| serde_json::json!({
            "at_ms": a.at_ms, "sender": a.sender, "source_ip": a.source_ip, "mx": a.mx,
            "code": a.code, "enhanced": a.enhanced, "text": a.text, "result": a.result,
        })).collect::<Vec<_>>(),
    })
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

async fn run(cli: Cli) -> anyhow::Result<()> {
    let ch = Channel::from_shared(format!("http://{}", cli.server))?
        .connect()
        .await
        .with_context(|| format!("connecting to {}", cli.server))?;
    let mut c = AdminClient::new(ch).max_decoding_message_size(80 << 20);
    let status = |e: tonic::Status| anyhow::anyhow!("{:?}: {}", e.code(), e.message());
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
        Cmd::Retry { scope } => {
            let r = c
                .retry_now(QueueScope::from(scope))
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "{} recipients due now{}",
                r.recipients,
                if r.more {
                    " (more remain: run again)"
                } else {
                    ""
                }
            );
        }
        Cmd::Bounce { scope, reason } => {
            let r = c
                .bounce_queued(BounceQueuedRequest {
                    scope: Some(scope.into()),
                    reason,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "{} recipients bounced{}",
                r.recipients,
                if r.more {
                    " (more remain: run again)"
                } else {
                    ""
                }
            );
        }
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
                        "members": s.members.iter().map(member_json).collect::<Vec<_>>(),
                    })
                );
            } else {
                println!(
                    "node {} ({}), term {}, leader {} {}",
                    s.node_id, s.state, s.term, s.leader_id, s.leader_addr
                );
                println!(
                    "log {} applied {} messages {}",
                    s.last_log_index, s.last_applied_index, s.message_count
                );
                if s.format < s.release_format {
                    println!(
                        "format {} (this release writes {}: run `skeinctl finalize-upgrade` \
                         once every node runs it)",
                        s.format, s.release_format
                    );
                } else {
                    println!("format {}", s.format);
                }
                for m in s.members {
                    println!(
                        "  {:>4} {:<24} {}",
                        m.id,
                        m.addr,
                        if m.voter { "voter" } else { "learner" }
                    );
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
        Cmd::Queues { by: Some(by), .. } => {
            let r = c
                .queue_summary(QueueSummaryRequest { by: by.clone() })
                .await
                .map_err(status)?
                .into_inner();
            if !cli.json {
                println!(
                    "{by:<24} {:>7} {:>10} {:>10}",
                    "queues", "recipients", "held"
                );
            }
            for row in &r.rows {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "key": row.key, "queues": row.queues, "recipients": row.recipients,
                            "held": row.held, "first_due_ms": row.first_due_ms,
                        })
                    );
                } else {
                    let key = if row.key.is_empty() { "-" } else { &row.key };
                    println!(
                        "{key:<24} {:>7} {:>10} {:>10}",
                        row.queues, row.recipients, row.held
                    );
                }
            }
        }
        Cmd::Queues {
            tenant,
            after_tenant,
            after_domain,
            limit,
            by: None,
        } => {
            let r = c
                .list_queues(ListQueuesRequest {
                    tenant,
                    after_tenant,
                    after_domain,
                    limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64);
            for q in &r.queues {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "tenant": q.tenant, "domain": q.domain,
                            "recipients": q.recipients, "first_due_ms": q.first_due_ms,
                            "held_until_ms": q.held_until_ms, "held_by": q.held_by,
                        })
                    );
                } else {
                    let due = match (q.first_due_ms - now) / 1000 {
                        s if s <= 0 => "due now".to_string(),
                        s => format!("next in {s}s"),
                    };
                    let tenant = if q.tenant.is_empty() { "-" } else { &q.tenant };
                    let held = match (q.held_until_ms, q.held_by.as_str()) {
                        (0, _) => String::new(),
                        (i64::MAX, why) => format!("  held: {why}"),
                        (until, why) => format!("  held: {why} until {}", shaping::ms_utc(until)),
                    };
                    println!(
                        "{tenant:<16} {:<32} {:>8} {due}{held}",
                        q.domain, q.recipients
                    );
                }
            }
            if r.more && !cli.json {
                println!(
                    "(more: --after-tenant {:?} --after-domain {})",
                    r.next_after_tenant, r.next_after_domain
                );
            }
        }
        Cmd::Messages {
            after,
            limit,
            local,
        } => {
            let r = c
                .list_messages(ListMessagesRequest {
                    after,
                    limit,
                    local,
                })
                .await
                .map_err(status)?
                .into_inner();
            for m in &r.messages {
                if cli.json {
                    println!("{}", message_json(m));
                } else {
                    let state = match m.remaining {
                        0 => "done".to_string(),
                        n => format!("{n} pending"),
                    };
                    println!(
                        "{} {:>8} {:<10} <{}> -> {}",
                        m.id,
                        m.size,
                        state,
                        m.mail_from,
                        m.rcpt_to.join(", ")
                    );
                }
            }
            if !r.next_after.is_empty() && !cli.json {
                println!("(more: --after {})", r.next_after);
            }
        }
        Cmd::Message { id, data } => {
            let m = c
                .get_message(GetMessageRequest {
                    id,
                    include_data: data,
                    local: false,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("{}", serde_json::to_string_pretty(&message_json(&m))?);
            if data {
                println!("{}", String::from_utf8_lossy(&m.data));
            }
        }
        Cmd::Tenant(TenantCmd::Create {
            name,
            password,
            username,
        }) => {
            let t = c
                .create_tenant(CreateTenantRequest {
                    name,
                    username,
                    password,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("created tenant {} (login {})", t.name, t.username);
        }
        Cmd::Tenant(TenantCmd::Update { name, enabled, dsn }) => {
            let t = c
                .update_tenant(UpdateTenantRequest { name, enabled, dsn })
                .await
                .map_err(status)?
                .into_inner();
            println!(
                "tenant {}: {}, DSNs {}",
                t.name,
                if t.enabled { "enabled" } else { "disabled" },
                if t.dsn { "on" } else { "off" }
            );
        }
        Cmd::Suppression(SuppressionCmd::List {
            tenant,
            after,
            limit,
        }) => {
            let r = c
                .list_suppressions(ListSuppressionsRequest {
                    tenant,
                    after,
                    limit,
                })
                .await
                .map_err(status)?
                .into_inner();
            for s in &r.suppressions {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({"tenant": s.tenant, "address": s.address,
                            "reason": s.reason, "at_ms": s.at_ms})
                    );
                } else {
                    println!("{} {}", s.address, s.reason);
                }
            }
            if !r.next_after.is_empty() && !cli.json {
                println!("(more: --after {})", r.next_after);
            }
        }
        Cmd::Suppression(SuppressionCmd::Add {
            address,
            tenant,
            reason,
        }) => {
            let s = c
                .add_suppression(AddSuppressionRequest {
                    tenant,
                    address,
                    reason,
                })
                .await
                .map_err(status)?
                .into_inner();
            println!("suppressed {} for tenant {:?}", s.address, s.tenant);
        }
        Cmd::Suppression(SuppressionCmd::Remove { address, tenant }) => {
            c.remove_suppression(RemoveSuppressionRequest {
                tenant: tenant.clone(),
                address: address.clone(),
            })
            .await
            .map_err(status)?;
            println!("removed the suppression of {address} for tenant {tenant:?}");
        }
        Cmd::Dkim(DkimCmd::Set {
            tenant,
            domain,
            selector,
            key,
            generate,
        }) => {
            let private_key = match key {
                Some(p) => std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => String::new(),
            };
            let k = c
                .set_dkim_key(SetDkimKeyRequest {
                    tenant,
                    domain,
                    selector,
                    private_key,
                    generate: generate.unwrap_or_default(),
                })
                .await
                .map_err(status)?
                .into_inner();
            print_dkim_key(&k, cli.json);
        }
        Cmd::Dkim(DkimCmd::List { tenant }) => {
            let r = c
                .list_dkim_keys(ListDkimKeysRequest { tenant })
                .await
                .map_err(status)?
                .into_inner();
            for k in &r.keys {
                print_dkim_key(k, cli.json);
            }
        }
        Cmd::Dkim(DkimCmd::Remove { tenant, domain }) => {
            c.remove_dkim_key(RemoveDkimKeyRequest {
                tenant: tenant.clone(),
                domain: domain.clone(),
            })
            .await
            .map_err(status)?;
            println!("removed the DKIM key of tenant {tenant:?} for {domain}");
        }
        Cmd::Tenant(TenantCmd::List) => {
            let r = c
                .list_tenants(ListTenantsRequest {})
                .await
                .map_err(status)?
                .into_inner();
            for t in r.tenants {
                println!(
                    "{} {} {} dsn={}",
                    t.name,
                    t.username,
                    if t.enabled { "enabled" } else { "disabled" },
                    if t.dsn { "on" } else { "off" }
                );
            }
        }
    }
    Ok(())
}
