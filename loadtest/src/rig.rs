//! The cluster a run starts for itself: queue nodes, an edge and a sender as separate `skein`
//! processes on loopback addresses, configured through files and the Admin API (skeinctl).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// One process of the cluster.
struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    /// Its RocksDB directory (queue nodes).
    data: Option<PathBuf>,
    child: Option<Child>,
}

impl Proc {
    fn spawn(&mut self, bin: &Path) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(bin)
            .args(&self.args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Deliveries the sender has in flight at most.
pub const SENDER_IN_FLIGHT: u64 = 128;

/// One process of the rig, for faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// Queue node by id.
    Node(u64),
    /// The edge.
    Edge,
    /// The sender.
    Sender,
    /// The throttled link in front of a queue node (killing it throttles it, restarting it
    /// opens it again).
    Link,
}

/// How to lay the cluster out.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Queue nodes.
    pub nodes: usize,
    /// The first three octets of the addresses (`127.0.5`): nodes on .1-.N, the edge on .10,
    /// source IPs on .21 on.
    pub net: String,
    /// Source IPs of the sender.
    pub source_ips: usize,
    /// Static routes: (recipient domain, `ip:port`), when there is no DNS server.
    pub routes: Vec<(String, String)>,
    /// The DNS server (`ip:port`) for recipient domains, and the port MX hosts listen on.
    pub dns: Option<(String, u16)>,
    /// Extra lines for every queue node's `[node.delivery]`.
    pub delivery: String,
    /// Extra lines for every queue node's `[node]`.
    pub node: String,
    /// Tenants to create (each gets a password of its own); they log in with STARTTLS and
    /// AUTH, the edge presenting a certificate the rig makes.
    pub tenants: Vec<String>,
    /// The queue node everything reaches through a link that faults can throttle.
    pub linked_node: Option<u64>,
}

/// A running cluster.
pub struct Rig {
    bin: PathBuf,
    ctl: PathBuf,
    procs: Vec<Proc>,
    /// The queue nodes' gRPC addresses (node id i+1 at index i).
    pub nodes: Vec<String>,
    /// The edge's SMTP address.
    pub smtp: String,
    /// The source IPs.
    pub source_ips: Vec<String>,
    /// The edge's certificate (PEM): what clients trust.
    pub edge_cert: PathBuf,
    /// The tenants created and their passwords.
    pub tenants: Vec<(String, String)>,
    /// The throttleable link, and the node behind it.
    pub link: Option<(crate::link::Link, u64)>,
}

impl Rig {
    /// Writes the configuration under `dir` and starts every process with the binaries in
    /// `bin_dir`.
    pub async fn start(dir: &Path, bin_dir: &Path, l: &Layout) -> anyhow::Result<Self> {
        let bin = bin_dir.join("skein");
        let ctl = bin_dir.join("skeinctl");
        for b in [&bin, &ctl] {
            if !b.exists() {
                bail!(
                    "{} not found: build the workspace (cargo build --workspace --bins) or pass \
                     --bin-dir",
                    b.display()
                );
            }
        }
        let ip = |last: usize| format!("{}.{last}", l.net);
        let nodes: Vec<String> = (1..=l.nodes)
            .map(|i| Ok(format!("{}:{}", ip(i), free_port(&ip(i))?)))
            .collect::<anyhow::Result<_>>()?;
        // The linked node listens elsewhere and advertises the link: its address in
        // `nodes` (what every other process uses) is the link's.
        let mut listen = nodes.clone();
        let mut link = None;
        if let Some(id) = l.linked_node.filter(|id| (1..=l.nodes as u64).contains(id)) {
            let i = id as usize - 1;
            listen[i] = format!("{}:{}", ip(i + 1), free_port(&ip(i + 1))?);
            let throttle = crate::link::Throttle::DEFAULT;
            let started =
                crate::link::Link::start(nodes[i].parse()?, listen[i].parse()?, throttle).await?;
            link = Some((started, id));
        }
        let members = nodes
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ id = {}, addr = \"{a}\" }}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let quoted = nodes
            .iter()
            .map(|a| format!("\"{a}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let nameservers = match &l.dns {
            Some((dns, _)) => format!("nameservers = [\"{dns}\"]\n"),
            None => String::new(),
        };
        let mut procs = Vec::new();
        for (i, addr) in nodes.iter().enumerate() {
            let id = i + 1;
            let cfg = dir.join(format!("node{id}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[node]\nid = {id}\nlisten = \"{}\"\nadvertise = \"{addr}\"\n\
                     data_dir = \"{}\"\n\
                     initial_members = [{members}]\n{nameservers}{}\n\
                     [node.delivery]\nmta_name = \"load.skein.test\"\n{}\n",
                    listen[i],
                    dir.join(format!("node{id}")).display(),
                    l.node,
                    l.delivery,
                ),
            )?;
            procs.push(Proc {
                name: format!("node {id}"),
                args: vec!["node".into(), "--config".into(), cfg.display().to_string()],
                log: dir.join(format!("node{id}.log")),
                data: Some(dir.join(format!("node{id}"))),
                child: None,
            });
        }
        let smtp = format!("{}:{}", ip(10), free_port(&ip(10))?);
        // The edge's certificate, for its IP: clients that STARTTLS verify it.
        let cert = rcgen::generate_simple_self_signed(vec!["edge.load.test".into(), ip(10)])?;
        let (edge_cert, edge_key) = (dir.join("edge-cert.pem"), dir.join("edge-key.pem"));
        std::fs::write(&edge_cert, cert.cert.pem())?;
        std::fs::write(&edge_key, cert.signing_key.serialize_pem())?;
        let edge = dir.join("edge.toml");
        std::fs::write(
            &edge,
            format!(
                "[edge]\nhostname = \"edge.load.test\"\nqueue = [{quoted}]\n\
                 relay_networks = [\"127.0.0.0/8\"]\ncredentials_refresh = \"1s\"\n\
                 [edge.tls]\ncert = \"{}\"\nkey = \"{}\"\n\
                 [[edge.listeners]]\naddress = \"{smtp}\"\n\
                 [edge.limits]\nmax_connections_per_ip = 2000\n",
                edge_cert.display(),
                edge_key.display()
            ),
        )?;
        procs.push(Proc {
            name: "edge".into(),
            args: vec!["edge".into(), "--config".into(), edge.display().to_string()],
            log: dir.join("edge.log"),
            data: None,
            child: None,
        });
        let source_ips: Vec<String> = (0..l.source_ips).map(|i| ip(21 + i)).collect();
        let sources = source_ips
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{{ ip = \"{a}\", ehlo = \"o{}.load.test\" }}", i + 1))
            .collect::<Vec<_>>()
            .join(", ");
        let routes = l
            .routes
            .iter()
            .map(|(d, to)| format!("{{ domain = \"{d}\", to = \"{to}\" }}"))
            .collect::<Vec<_>>()
            .join(", ");
        let resolve = match &l.dns {
            Some((_, port)) => format!("{nameservers}smtp_port = {port}\n"),
            None => String::new(),
        };
        let sender = dir.join("sender.toml");
        std::fs::write(
            &sender,
            format!(
                "[sender]\nname = \"load-sender\"\ncluster = [{quoted}]\nmax_in_flight = {SENDER_IN_FLIGHT}\n\
                 source_ips = [{sources}]\nroutes = [{routes}]\n{resolve}\
                 allow_destinations = [\"127.0.0.0/8\"]\ntls = \"disabled\"\n\
                 [sender.timeouts]\nconnect = \"5s\"\n"
            ),
        )?;
        procs.push(Proc {
            name: "sender".into(),
            args: vec![
                "sender".into(),
                "--config".into(),
                sender.display().to_string(),
            ],
            log: dir.join("sender.log"),
            data: None,
            child: None,
        });
        let mut rig = Self {
            bin,
            ctl,
            procs,
            nodes,
            smtp,
            source_ips,
            edge_cert,
            tenants: l
                .tenants
                .iter()
                .map(|t| (t.clone(), format!("{t}-{:016x}", fastrand::u64(..))))
                .collect(),
            link,
        };
        for p in &mut rig.procs {
            p.spawn(&rig.bin)?;
        }
        Ok(rig)
    }

    /// Runs skeinctl against the nodes: its standard output.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.ctl)
            .arg("--server")
            .arg(self.nodes.join(","))
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "skeinctl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until the cluster has a leader that writes at least replicated format `format`,
    /// and the edge listens.
    pub async fn ready(&self, format: u32, limit: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + limit;
        loop {
            let ok = self
                .ctl(&["--json", "status"])
                .ok()
                .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
                .is_some_and(|v| {
                    v["leader_id"].as_u64().unwrap_or(0) != 0
                        && v["format"].as_u64().unwrap_or(0) >= u64::from(format)
                });
            if ok && tokio::net::TcpStream::connect(&self.smtp).await.is_ok() {
                return Ok(());
            }
            if Instant::now() > until {
                bail!("the cluster was not ready within {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates the tenants and waits until the edge lets each of them log in.
    pub async fn create_tenants(&self, limit: Duration) -> anyhow::Result<()> {
        for (name, password) in &self.tenants {
            self.ctl(&["tenant", "create", name, "--password", password])?;
        }
        let until = Instant::now() + limit;
        for login in self.logins()? {
            loop {
                match crate::smtp::connect_as(&self.smtp, Some(&login)).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() > until => {
                        bail!("tenant {} cannot log in: {e:#}", login.user)
                    }
                    // The edge learns new tenants on its next refresh.
                    Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
        }
        Ok(())
    }

    /// The tenants' logins, trusting the edge's certificate.
    pub fn logins(&self) -> anyhow::Result<Vec<crate::smtp::Login>> {
        let tls = crate::smtp::trusting(&std::fs::read(&self.edge_cert)?)?;
        Ok(self
            .tenants
            .iter()
            .map(|(user, password)| crate::smtp::Login {
                tls: tls.clone(),
                user: user.clone(),
                password: password.clone(),
            })
            .collect())
    }

    /// The current leader's node id.
    pub fn leader(&self) -> anyhow::Result<u64> {
        let s = self.ctl(&["--json", "status"])?;
        let v: serde_json::Value = serde_json::from_str(&s)?;
        match v["leader_id"].as_u64() {
            Some(id) if id > 0 => Ok(id),
            _ => bail!("no leader"),
        }
    }

    fn proc_index(&self, part: Part) -> Option<usize> {
        match part {
            Part::Node(id) => Some(id as usize - 1),
            Part::Edge => Some(self.nodes.len()),
            Part::Sender => Some(self.nodes.len() + 1),
            Part::Link => None,
        }
    }

    /// A part's name ("node 1", "edge", "sender", "link to node 3").
    pub fn name(&self, part: Part) -> String {
        match (self.proc_index(part), &self.link) {
            (Some(i), _) => self.procs[i].name.clone(),
            (None, Some((_, id))) => format!("link to node {id}"),
            (None, None) => "link (none)".into(),
        }
    }

    /// SIGKILLs one process (throttles the link).
    pub fn kill(&mut self, part: Part) {
        match self.proc_index(part) {
            Some(i) => self.procs[i].kill(),
            None => {
                if let Some((l, _)) = &self.link {
                    l.set(true);
                }
            }
        }
    }

    /// Starts a killed process again (a queue node on the same data directory; opens the
    /// link).
    pub fn restart(&mut self, part: Part) -> anyhow::Result<()> {
        match self.proc_index(part) {
            Some(i) => {
                let bin = self.bin.clone();
                self.procs[i].spawn(&bin)
            }
            None => {
                if let Some((l, _)) = &self.link {
                    l.set(false);
                }
                Ok(())
            }
        }
    }

    /// The running processes: name, pid and data directory (queue nodes).
    pub fn processes(&self) -> Vec<(String, u32, Option<PathBuf>)> {
        self.procs
            .iter()
            .filter_map(|p| Some((p.name.clone(), p.child.as_ref()?.id(), p.data.clone())))
            .collect()
    }

    /// Stops everything.
    pub fn stop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop();
    }
}
