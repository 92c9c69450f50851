//! `skein`: one binary, one role per subcommand. Wiring only; the logic lives in the crates.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};
use skein_config::{Config, EdgeConfig, NodeConfig, Route, TenantSeed, TlsMode};
use skein_core::{SharedClock, SystemClock};
use skein_pki::{Identity, Role};

#[derive(Parser)]
#[command(
    name = "skein",
    version,
    about = "Skein: a clustered outbound SMTP relay"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        global = true,
        env = "SKEIN_LOG",
        default_value = "info,openraft=warn"
    )]
    log: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a queue node (Raft + RocksDB, Ingest and Admin gRPC).
    Node {
        /// Configuration file with a [node] section.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run an SMTP edge.
    Edge {
        /// Configuration file with an [edge] section.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a sender: takes work from the cluster and delivers it from its source IPs.
    Sender {
        /// Configuration file with a [sender] section.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Everything in one process on a single-node cluster: the embedded default.
    Dev {
        /// Optional configuration file ([node], [edge], [sender]); defaults fill the rest.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Data directory (overrides the file).
        #[arg(long, env = "SKEIN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Create a tenant at start: NAME:PASSWORD (repeatable).
        #[arg(long = "tenant", value_name = "NAME:PASSWORD")]
        tenants: Vec<String>,
        /// Deliver mail for DOMAIN to HOST:PORT instead of its MX (repeatable; `*` for every
        /// domain).
        #[arg(long = "route", value_name = "DOMAIN=HOST:PORT")]
        routes: Vec<String>,
        /// Write delivery events as JSON lines to this file (`-` for standard output).
        #[arg(long)]
        events: Option<PathBuf>,
    },
    /// Validate a configuration file without starting anything (and its [cluster_tls] files).
    CheckConfig {
        /// The file.
        file: PathBuf,
    },
    /// The cluster's certificates: a CA, and one certificate per process naming its roles.
    #[command(subcommand)]
    Certs(CertsCmd),
}

#[derive(Subcommand)]
enum CertsCmd {
    /// Create the cluster CA: DIR/ca.pem (give it to every process) and DIR/ca.key (keep it
    /// offline; only `certs issue` needs it). Refuses to overwrite an existing CA.
    Init {
        /// Directory to write to.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = 3650)]
        days: u32,
    },
    /// Issue DIR/NAME.pem and DIR/NAME.key, signed by DIR/ca.key, naming the given roles.
    Issue {
        /// Directory holding the CA; the certificate is written there too.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Name of the holder (file names and the certificate's common name): node-1, edge-a.
        #[arg(long)]
        name: String,
        /// A role: node, edge, sender or operator (repeatable; a process running several
        /// roles needs each).
        #[arg(long = "role", required = true)]
        roles: Vec<skein_pki::Role>,
        /// A source IP the holder may send from (repeatable): a sender announces only the
        /// IPs its certificate names.
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line a person can act on: the error and its causes. Backtraces (with
            // RUST_BACKTRACE set) are for panics, which are bugs, not for a bad config.
            eprintln!("skein: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();
    // One crypto provider for the whole process (see stack notes: two would panic).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        // From the start: a stop asked for while a role starts up stops it cleanly too.
        listen_for_shutdown();
        // Each message's trace, exported when OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set;
        // flushed when this guard drops at exit.
        let service = match &cli.cmd {
            Cmd::Node { .. } => Some("skein-node"),
            Cmd::Edge { .. } => Some("skein-edge"),
            Cmd::Sender { .. } => Some("skein-sender"),
            Cmd::Dev { .. } => Some("skein-dev"),
            _ => None,
        };
        let _exporting = match service {
            Some(name) => skein_observe::trace::init(name).map_err(anyhow::Error::msg)?,
            None => None,
        };
        match cli.cmd {
            Cmd::Certs(cmd) => certs(cmd),
            Cmd::CheckConfig { file } => {
                let c = Config::load(&file)?;
                c.validate().with_context(|| file_name(&file))?;
                identity(&c)?;
                let roles: Vec<&str> = [
                    c.node.as_ref().map(|_| "node"),
                    c.edge.as_ref().map(|_| "edge"),
                    c.sender.as_ref().map(|_| "sender"),
                ]
                .into_iter()
                .flatten()
                .collect();
                println!("{}: ok ({})", file.display(), roles.join(", "));
                Ok(())
            }
            Cmd::Node { config } => {
                let c = Config::load(&config)?;
                c.validate().with_context(|| file_name(&config))?;
                let tls = identity(&c)?;
                let Some(node) = c.node else {
                    bail!("{}: missing [node] section", config.display())
                };
                run_node(node, tls).await
            }
            Cmd::Edge { config } => {
                let c = Config::load(&config)?;
                c.validate().with_context(|| file_name(&config))?;
                let tls = identity(&c)?;
                let Some(edge) = c.edge else {
                    bail!("{}: missing [edge] section", config.display())
                };
                run_edge(edge, tls, None).await
            }
            Cmd::Sender { config } => {
                let c = Config::load(&config)?;
                c.validate().with_context(|| file_name(&config))?;
                let tls = identity(&c)?;
                let Some(sender) = c.sender else {
                    bail!("{}: missing [sender] section", config.display())
                };
                println!(
                    "skein sender {} with {} source IP(s), working for {}",
                    sender.name,
                    sender.source_ips.len(),
                    sender.cluster.join(", ")
                );
                let tls = tls.map(|id| id.client());
                Ok(skein_sender::run(sender, clock(), tls, shutdown_signal()).await?)
            }
            Cmd::Dev {
                config,
                data_dir,
                tenants,
                routes,
                events,
            } => run_dev(config, data_dir, tenants, routes, events).await,
        }
    })
}

/// Set once SIGINT (Ctrl-C) or SIGTERM (what Kubernetes and systemd send to stop a process)
/// arrived; see [`listen_for_shutdown`].
static SHUTDOWN: std::sync::OnceLock<tokio::sync::watch::Receiver<bool>> =
    std::sync::OnceLock::new();

/// Takes SIGINT and SIGTERM over from their default (ending the process at once) for the
/// whole run: registered before any role starts, so a stop that comes while one is still
/// starting (a restarted pod stopped again, say) waits for it and shuts it down cleanly
/// instead of killing it halfway.
fn listen_for_shutdown() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        tokio::spawn(async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            let _ = tx.send(true);
        });
    }
    #[cfg(not(unix))]
    tokio::spawn(async move {
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    let _ = SHUTDOWN.set(rx);
}

/// Resolves once SIGINT or SIGTERM arrived (at any time since [`listen_for_shutdown`]).
async fn shutdown_signal() {
    match SHUTDOWN.get() {
        Some(rx) => {
            let _ = rx.clone().wait_for(|stop| *stop).await;
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn clock() -> SharedClock {
    Arc::new(SystemClock)
}

/// A configuration file's name, for the errors about its content.
fn file_name(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// The process's `[cluster_tls]` identity, checked against every role the file configures.
fn identity(c: &Config) -> anyhow::Result<Option<Identity>> {
    let Some(t) = &c.cluster_tls else {
        return Ok(None);
    };
    let id = Identity::load(&t.ca, &t.cert, &t.key, std::time::SystemTime::now())
        .context("[cluster_tls]")?;
    let roles = [
        c.node.as_ref().map(|_| Role::Node),
        c.edge.as_ref().map(|_| Role::Edge),
        c.sender.as_ref().map(|_| Role::Sender),
    ];
    for role in roles.into_iter().flatten() {
        id.require(role).context("[cluster_tls]")?;
    }
    Ok(Some(id))
}

/// Writes `text` to `path`, readable by its owner only when `secret`; never over a file.
fn write_new(path: &std::path::Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

fn certs(cmd: CertsCmd) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now();
    match cmd {
        CertsCmd::Init { dir, days } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
            let ca = skein_pki::create_ca(now, days)?;
            write_new(&dir.join("ca.key"), &ca.key, true)?;
            write_new(&dir.join("ca.pem"), &ca.cert, false)?;
            println!(
                "cluster CA written: {}/ca.pem (every process), {}/ca.key (keep it offline)",
                dir.display(),
                dir.display()
            );
        }
        CertsCmd::Issue {
            dir,
            name,
            roles,
            ips,
            days,
        } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                bail!("--name {name:?}: letters, digits, '-', '_' and '.' only");
            }
            let key_path = dir.join("ca.key");
            let ca_key = std::fs::read_to_string(&key_path).with_context(|| {
                format!(
                    "reading {} (run `skein certs init` first)",
                    key_path.display()
                )
            })?;
            let roles: skein_pki::Roles = roles.into_iter().collect();
            if roles.contains(Role::Sender) && ips.is_empty() {
                bail!("a sender's certificate names the source IPs it sends from: add --ip IP for each");
            }
            let pem = skein_pki::issue(&ca_key, roles, &name, &ips, now, days)?;
            let cert = dir.join(format!("{name}.pem"));
            let key = dir.join(format!("{name}.key"));
            write_new(&key, &pem.key, true)?;
            write_new(&cert, &pem.cert, false)?;
            println!(
                "{} and {} issued for {roles}, valid {days} days",
                cert.display(),
                key.display()
            );
        }
    }
    Ok(())
}

async fn start_node(
    node: &NodeConfig,
    tls: Option<&Identity>,
) -> anyhow::Result<skein_cluster::NodeHandle> {
    let listener = tokio::net::TcpListener::bind(&node.listen)
        .await
        .with_context(|| format!("binding node.listen {}", node.listen))?;
    Ok(skein_cluster::start(node, clock(), listener, tls).await?)
}

async fn run_node(node: NodeConfig, tls: Option<Identity>) -> anyhow::Result<()> {
    let mut h = start_node(&node, tls.as_ref()).await?;
    if let Some(k) = &node.kubernetes {
        let (client, namespace) = skein_kube::connect(k).await?;
        let reconciler = skein_kube::Reconciler::new(
            h.admin.clone(),
            client,
            namespace,
            k.clone(),
            node.promote_max_lag,
            clock(),
            h.admin.reconciler_report(),
        );
        tokio::spawn(reconciler.run());
    }
    println!(
        "skein node {} listening on {} (data in {})",
        node.id,
        h.local_addr,
        node.data_dir.display()
    );
    tokio::select! {
        r = h.serve_forever() => {
            r.map_err(anyhow::Error::msg)?;
            if h.was_removed() {
                eprintln!("skein node {}: removed from the cluster, stopped", node.id);
            }
            Ok(())
        }
        _ = shutdown_signal() => { h.shutdown().await; Ok(()) }
    }
}

/// Starts the edge's listeners; `cert_out` is where a generated certificate is written.
async fn start_edge(
    edge: EdgeConfig,
    cluster: Option<&Identity>,
    cert_out: Option<PathBuf>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let tls = match &edge.tls {
        Some(f) => skein_edge::tls::from_pem_files(&f.cert, &f.key)?,
        None => {
            // Name every address the edge listens on, so clients can verify the certificate.
            let ips: Vec<String> = edge
                .listeners
                .iter()
                .filter_map(|l| l.address.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.ip())
                .filter(|ip| !ip.is_unspecified())
                .map(|ip| ip.to_string())
                .collect();
            let (cfg, pem) = skein_edge::tls::self_signed(&edge.hostname, &ips)?;
            match &cert_out {
                Some(p) => {
                    std::fs::write(p, pem).with_context(|| format!("writing {}", p.display()))?;
                    println!("  TLS certificate: self-signed, written to {}", p.display());
                }
                None => {
                    println!("  TLS certificate: self-signed (configure [edge.tls] for a real one)")
                }
            }
            cfg
        }
    };
    let cluster = cluster.map(|id| id.client());
    let e = skein_edge::Edge::new(edge.clone(), tls, cluster.as_ref(), clock())?;
    let mut tasks = vec![tokio::spawn(e.clone().refresh_credentials())];
    for l in &edge.listeners {
        let listener = tokio::net::TcpListener::bind(&l.address)
            .await
            .with_context(|| format!("binding SMTP listener {}", l.address))?;
        let kind = match l.tls {
            TlsMode::Starttls => "SMTP (STARTTLS)",
            TlsMode::Implicit => "SMTP (implicit TLS)",
        };
        println!("  {kind:<22} {}", listener.local_addr()?);
        tasks.push(tokio::spawn(e.clone().serve(listener, l.tls)));
    }
    if let Some(addr) = &edge.http {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the edge's metrics and probes on {addr}"))?;
        println!("  {:<22} {}", "metrics and probes", listener.local_addr()?);
        skein_observe::http::spawn(
            listener,
            std::sync::Arc::new(skein_edge::metrics::EdgeProbe),
        );
    }
    Ok(tasks)
}

async fn run_edge(
    edge: EdgeConfig,
    cluster: Option<Identity>,
    cert_out: Option<PathBuf>,
) -> anyhow::Result<()> {
    println!(
        "skein edge {} submitting to {}",
        edge.hostname,
        edge.queue.join(", ")
    );
    let _tasks = start_edge(edge, cluster.as_ref(), cert_out).await?;
    shutdown_signal().await;
    Ok(())
}

async fn run_dev(
    config: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    tenants: Vec<String>,
    routes: Vec<String>,
    events: Option<PathBuf>,
) -> anyhow::Result<()> {
    let mut c = match &config {
        Some(p) => Config::load(p)?,
        None => Config::dev_default(),
    };
    let mut node = c.node.take().unwrap_or_default();
    let mut edge = c.edge.take().unwrap_or_else(EdgeConfig::dev_default);
    let mut sender = c.sender.take().unwrap_or_default();
    for r in routes {
        let Some((domain, to)) = r.split_once('=') else {
            bail!("--route {r:?}: expected DOMAIN=HOST:PORT");
        };
        sender.routes.push(Route {
            domain: domain.into(),
            to: to.into(),
        });
    }
    if events.is_some() {
        node.delivery.events = events;
    }
    // What happens to mail shows in dev's own output.
    node.delivery.log_outcomes = true;
    if let Some(d) = data_dir {
        node.data_dir = d;
    }
    for t in tenants {
        let Some((name, password)) = t.split_once(':') else {
            bail!("--tenant {t:?}: expected NAME:PASSWORD");
        };
        node.tenants.push(TenantSeed {
            name: name.into(),
            username: None,
            password: password.into(),
        });
    }
    if node.initial_members.is_empty() && !node.join {
        // One process, one node: it founds a cluster of itself.
        node.initial_members = node.founders();
    }
    if sender.allow_destinations.is_empty() {
        // One host, sinks on loopback: dev delivers there (a real sender refuses to).
        sender.allow_destinations = vec![
            "127.0.0.0/8".parse().expect("literal CIDR"),
            "::1/128".parse().expect("literal CIDR"),
        ];
    }
    if node.nameservers.is_empty() {
        // One process, one view of DNS.
        node.nameservers = sender.nameservers.clone();
    }
    edge.queue = vec![node.advertise_addr().to_string()];
    sender.cluster = vec![node.advertise_addr().to_string()];
    let whole = Config {
        node: Some(node.clone()),
        edge: Some(edge.clone()),
        sender: Some(sender.clone()),
        cluster_tls: c.cluster_tls.take(),
    };
    whole.validate().with_context(|| {
        config
            .as_deref()
            .map_or("the dev defaults".into(), file_name)
    })?;
    let tls = identity(&whole)?;

    let mut h = start_node(&node, tls.as_ref()).await?;
    println!(
        "skein dev: single-node cluster, data in {}",
        node.data_dir.display()
    );
    println!("  {:<22} {}", "gRPC (Ingest, Admin)", h.local_addr);
    let relay: Vec<String> = edge.relay_networks.iter().map(|n| n.to_string()).collect();
    let cert = node.data_dir.join("edge-cert.pem");
    let _tasks = start_edge(edge, tls.as_ref(), Some(cert)).await?;
    println!(
        "  relay without AUTH from: {}",
        if relay.is_empty() {
            "nobody".into()
        } else {
            relay.join(", ")
        }
    );
    for t in &node.tenants {
        println!(
            "  tenant {:?} may AUTH as {:?}",
            t.name,
            t.username.as_deref().unwrap_or(&t.name)
        );
    }
    for r in &sender.routes {
        println!("  route {:<16} -> {}", r.domain, r.to);
    }
    if sender.routes.is_empty() {
        println!("  delivery: by MX lookup (add --route DOMAIN=HOST:PORT to deliver locally)");
    }
    if let Some(e) = &node.delivery.events {
        println!("  delivery events: {}", e.display());
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sender_tls = tls.as_ref().map(|id| id.client());
    let sender_task = tokio::spawn(skein_sender::run(sender, clock(), sender_tls, async move {
        let _ = stop_rx.await;
    }));
    println!("ready");
    let ended = tokio::select! {
        r = h.serve_forever() => Some(r.map_err(anyhow::Error::msg)),
        _ = shutdown_signal() => None,
    };
    // The sender finishes and reports what it holds while the node still runs.
    let _ = stop_tx.send(());
    let _ = sender_task.await;
    match ended {
        Some(r) => r,
        None => {
            h.shutdown().await;
            Ok(())
        }
    }
}
