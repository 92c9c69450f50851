//! The `[node]` section: a queue node.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use skein_core::{ByteSize, HumanDuration};

use crate::{invalid, ConfigError, DeliveryConfig};

/// A queue node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// This node's Raft id, unique in the cluster, > 0. Default 1.
    pub id: u64,
    /// Take the id from the host name instead: a StatefulSet's pod `NAME-N` is node N+1.
    pub id_from_hostname: bool,
    /// Where RocksDB keeps the log and the state. Default `./skein-data`.
    pub data_dir: PathBuf,
    /// gRPC listen address (Raft, Ingest and Admin). Default `127.0.0.1:7070`.
    pub listen: String,
    /// Where to answer HTTP `GET /metrics` (Prometheus), `/healthz` and `/readyz` (probes),
    /// e.g. `0.0.0.0:9464`. Unset: not served.
    pub http: Option<String>,
    /// Address other nodes and edges use to reach this node. Default: `listen`.
    pub advertise: Option<String>,
    /// The cluster's founding voters (this node among them). The node with the lowest id
    /// initializes the cluster once. A node lists them, or sets `join`; `skein dev` founds a
    /// cluster of itself alone.
    pub initial_members: Vec<Member>,
    /// Start without initializing anything and wait to be added to an existing cluster through
    /// the Admin API (AddLearner, then PromoteVoter). Default false.
    pub join: bool,
    /// Raft timing and snapshots.
    pub raft: RaftTuning,
    /// Most messages in one group commit. Default 512.
    pub max_batch_messages: usize,
    /// Most bytes in one group commit, 1MB..=16MB. Default 4MB.
    pub max_batch_bytes: ByteSize,
    /// How long an Enqueue may wait for its commit before failing. Default 10s.
    pub commit_timeout: HumanDuration,
    /// Most message bytes this node holds at once in Enqueue calls waiting for their commit
    /// (or for the leader, when forwarded); beyond it, calls are refused at once with
    /// `RESOURCE_EXHAUSTED` and edges answer `451 4.3.2` (clients retry later), so a flood of
    /// large messages cannot exhaust the node's memory. At least 80MB (the largest message
    /// must fit). Default 512MB.
    pub ingest_memory: ByteSize,
    /// Tenants created at startup when they do not exist yet (for development and bootstrap).
    pub tenants: Vec<TenantSeed>,
    /// Scheduler policy.
    pub delivery: DeliveryConfig,
    /// `"system"` (default), or `"manual"` for tests and simulations: the node's clock starts
    /// at the system time and moves only by the Admin `AdvanceClock` call (`skeinctl clock
    /// advance`), so hour and day boundaries can be crossed in seconds. Never in production.
    pub clock: ClockMode,
    /// DNS servers (`ip` or `ip:port`) the leader asks for the MX host of a recipient domain
    /// no provider's domain rule names, before it first delivers there: a custom domain
    /// hosted at Gmail gets Gmail's limits from its first message. Empty (the default): the
    /// system's resolvers. `skein dev` uses `[sender] nameservers` when this is empty.
    pub nameservers: Vec<String>,
    /// Without `[cluster_tls]` the gRPC port (Raft, Ingest, Admin, Work) has no TLS or
    /// authentication: a node then refuses to listen on anything but loopback unless this is
    /// set, acknowledging that only trusted hosts can reach it (a private network, a firewall).
    /// Default false.
    pub insecure: bool,
    /// gRPC connections open at once (nodes, edges, senders, operators); more wait in the
    /// listen backlog until one closes. Default 4096.
    pub max_connections: usize,
    /// Most log entries a learner may be behind the leader to be promoted to voter
    /// (`skeinctl promote`): a voter far behind (or dead) counts toward the quorum without
    /// helping reach it. Default 1000.
    pub promote_max_lag: u64,
    /// On Kubernetes: follow a StatefulSet's pods (`[node.kubernetes]`). The leader adds a
    /// node for each new pod as a learner, promotes it once caught up, and removes the nodes
    /// of pods the StatefulSet scaled away, one at a time and never leaving a voter majority
    /// unreachable. A node then needs no `join`: one not among `initial_members` waits to be
    /// added. Unset (the default): membership changes only through the Admin API.
    pub kubernetes: Option<KubernetesMembership>,
}

/// `[node.kubernetes]`: membership that follows a StatefulSet.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesMembership {
    /// The StatefulSet whose pods are the queue nodes: pod `NAME-N` is node N+1.
    pub statefulset: String,
    /// Its namespace. Default: the pod's own (from its service account).
    #[serde(default)]
    pub namespace: Option<String>,
    /// A node's gRPC address, made from its pod: `{pod}` (the pod's name), `{namespace}`,
    /// `{pod_ip}`, e.g. `"{pod}.skein-node.{namespace}.svc.cluster.local:7070"` (the
    /// headless Service's stable names: what the chart uses). An address that changes when
    /// the pod restarts (`{pod_ip}`) strands the node: the cluster keeps the old one.
    pub address: String,
    /// How often the leader compares the pods with the membership. Default 5s.
    #[serde(default = "default_reconcile_interval")]
    pub interval: HumanDuration,
    /// The API server's URL. Default: the one a pod is given (in-cluster configuration).
    #[serde(default)]
    pub api_server: Option<String>,
    /// With `api_server`: a file holding the bearer token to present.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// With `api_server`: the PEM file of the CA that signed the API server's certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

fn default_reconcile_interval() -> HumanDuration {
    HumanDuration(Duration::from_secs(5))
}

impl KubernetesMembership {
    /// The address of the node in `pod` (its IP `pod_ip`, when it has one yet), or `None`
    /// while the template needs an IP the pod does not have.
    pub fn address_of(&self, pod: &str, namespace: &str, pod_ip: Option<&str>) -> Option<String> {
        if self.address.contains("{pod_ip}") && pod_ip.is_none() {
            return None;
        }
        Some(
            self.address
                .replace("{pod}", pod)
                .replace("{namespace}", namespace)
                .replace("{pod_ip}", pod_ip.unwrap_or_default()),
        )
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.statefulset.is_empty()
            || self.statefulset.len() > 52
            || !self
                .statefulset
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(invalid(
                "node.kubernetes.statefulset",
                format!(
                    "{:?} is not a StatefulSet name (lowercase letters, digits and '-', at \
                     most 52)",
                    self.statefulset
                ),
            ));
        }
        let sample = self
            .address_of("pod-0", "ns", Some("10.0.0.1"))
            .unwrap_or_default();
        if !is_host_port(&sample) || sample.contains(['{', '}']) {
            return Err(invalid(
                "node.kubernetes.address",
                format!(
                    "{:?} does not make a host:port (placeholders: {{pod}}, {{namespace}}, \
                     {{pod_ip}})",
                    self.address
                ),
            ));
        }
        if self.interval.0 < Duration::from_secs(1) {
            return Err(invalid("node.kubernetes.interval", "at least 1s"));
        }
        if self.api_server.is_none() && (self.token_file.is_some() || self.ca_file.is_some()) {
            return Err(invalid(
                "node.kubernetes.api_server",
                "token_file and ca_file go with api_server (in a pod, leave all three unset)",
            ));
        }
        Ok(())
    }
}

/// Where a node's time comes from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClockMode {
    /// The operating system's clock.
    #[default]
    System,
    /// Moves only when an operator advances it.
    Manual,
}

/// A voting member of the initial cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
}

/// A tenant to create at startup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TenantSeed {
    /// Tenant name.
    pub name: String,
    /// SMTP AUTH username; defaults to the name.
    #[serde(default)]
    pub username: Option<String>,
    /// SMTP AUTH password (stored only as an argon2id hash).
    pub password: String,
}

/// Raft timing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RaftTuning {
    /// Leader heartbeat. Default 100ms.
    pub heartbeat_interval: HumanDuration,
    /// Lower bound of the randomized election timeout. Default 600ms.
    pub election_timeout_min: HumanDuration,
    /// Upper bound of the randomized election timeout. Default 1200ms.
    pub election_timeout_max: HumanDuration,
    /// Build a snapshot after this many log entries since the last one. Default 5000.
    pub snapshot_after_entries: u64,
    /// Log entries kept behind a snapshot for slow followers. Default 1000.
    pub keep_entries_after_snapshot: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        Self {
            heartbeat_interval: HumanDuration(Duration::from_millis(100)),
            election_timeout_min: HumanDuration(Duration::from_millis(600)),
            election_timeout_max: HumanDuration(Duration::from_millis(1200)),
            snapshot_after_entries: 5000,
            keep_entries_after_snapshot: 1000,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: 1,
            data_dir: PathBuf::from("./skein-data"),
            listen: "127.0.0.1:7070".into(),
            advertise: None,
            initial_members: Vec::new(),
            join: false,
            raft: RaftTuning::default(),
            max_batch_messages: 512,
            max_batch_bytes: ByteSize(4_000_000),
            commit_timeout: HumanDuration(Duration::from_secs(10)),
            ingest_memory: ByteSize(512_000_000),
            tenants: Vec::new(),
            delivery: DeliveryConfig::default(),
            clock: ClockMode::System,
            nameservers: Vec::new(),
            http: None,
            id_from_hostname: false,
            insecure: false,
            max_connections: 4096,
            promote_max_lag: 1000,
            kubernetes: None,
        }
    }
}

impl NodeConfig {
    /// The address to publish for this node.
    pub fn advertise_addr(&self) -> &str {
        self.advertise.as_deref().unwrap_or(&self.listen)
    }

    /// Whether this node starts by waiting to be added to a running cluster: `join`, or, when
    /// membership follows Kubernetes, not being one of `initial_members`.
    pub fn joins(&self) -> bool {
        self.join
            || (self.kubernetes.is_some() && !self.initial_members.iter().any(|m| m.id == self.id))
    }

    /// The founding voters, defaulting to this node alone.
    pub fn founders(&self) -> Vec<Member> {
        if self.initial_members.is_empty() {
            vec![Member {
                id: self.id,
                addr: self.advertise_addr().to_string(),
            }]
        } else {
            self.initial_members.clone()
        }
    }

    /// Refuses a listen address other hosts can reach when the gRPC port would have no TLS
    /// (`tls` is whether `[cluster_tls]` is configured), unless `insecure` says so.
    pub fn check_exposure(&self, tls: bool) -> Result<(), ConfigError> {
        let Ok(listen) = self.listen.parse::<SocketAddr>() else {
            return Ok(()); // validate() names it
        };
        if !listen.ip().is_loopback() && !tls && !self.insecure {
            return Err(invalid(
                "node.listen",
                format!(
                    "{listen} is reachable from other hosts, and without [cluster_tls] the \
                     cluster's gRPC port (Raft, Ingest, Admin, Work) has no TLS or \
                     authentication: whoever reaches it can read tenants' credentials and DKIM \
                     keys and relay mail. Configure [cluster_tls] (`skein certs init`, then \
                     `skein certs issue`), listen on loopback, or set `insecure = true` in \
                     [node] once only trusted hosts can reach it"
                ),
            ));
        }
        Ok(())
    }

    /// Checks values; errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.id == 0 {
            return Err(invalid("node.id", "must be greater than 0"));
        }
        self.listen.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "node.listen",
                format!("{:?} is not an ip:port", self.listen),
            )
        })?;
        if let Some(h) = &self.http {
            h.parse::<SocketAddr>()
                .map_err(|_| invalid("node.http", format!("{h:?} is not an ip:port")))?;
        }
        if let Some(a) = &self.advertise {
            if !is_host_port(a) {
                return Err(invalid(
                    "node.advertise",
                    format!("{a:?} is not a host:port"),
                ));
            }
        }
        if !self.initial_members.is_empty() {
            let mut ids: Vec<u64> = self.initial_members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            ids.dedup();
            if ids.len() != self.initial_members.len() || ids.contains(&0) {
                return Err(invalid(
                    "node.initial_members",
                    "ids must be unique and > 0",
                ));
            }
            if !ids.contains(&self.id) && self.kubernetes.is_none() {
                return Err(invalid(
                    "node.initial_members",
                    format!("must include this node (id {})", self.id),
                ));
            }
            if let Some(m) = self.initial_members.iter().find(|m| !is_host_port(&m.addr)) {
                return Err(invalid(
                    "node.initial_members",
                    format!("{:?} is not a host:port", m.addr),
                ));
            }
        }
        if let Some(n) = self
            .nameservers
            .iter()
            .find(|n| crate::sender::parse_nameserver(n).is_none())
        {
            return Err(invalid(
                "node.nameservers",
                format!("{n:?} is not an ip or ip:port"),
            ));
        }
        if self.max_connections == 0 {
            return Err(invalid("node.max_connections", "must be > 0"));
        }
        self.delivery.validate()?;
        let r = &self.raft;
        if r.heartbeat_interval.0.is_zero() {
            return Err(invalid("node.raft.heartbeat_interval", "must be > 0"));
        }
        if r.election_timeout_min.0 <= r.heartbeat_interval.0 {
            return Err(invalid(
                "node.raft.election_timeout_min",
                "must be longer than heartbeat_interval",
            ));
        }
        if r.election_timeout_max.0 <= r.election_timeout_min.0 {
            return Err(invalid(
                "node.raft.election_timeout_max",
                "must be longer than election_timeout_min",
            ));
        }
        if r.snapshot_after_entries == 0 {
            return Err(invalid("node.raft.snapshot_after_entries", "must be > 0"));
        }
        if self.max_batch_messages == 0 || self.max_batch_messages > 65_535 {
            return Err(invalid("node.max_batch_messages", "must be 1..=65535"));
        }
        if !(1_000_000..=16_000_000).contains(&self.max_batch_bytes.0) {
            return Err(invalid(
                "node.max_batch_bytes",
                "must be between 1MB and 16MB",
            ));
        }
        if self.commit_timeout.0.is_zero() {
            return Err(invalid("node.commit_timeout", "must be > 0"));
        }
        if !(80_000_000..=u32::MAX as u64).contains(&self.ingest_memory.0) {
            return Err(invalid(
                "node.ingest_memory",
                "must be between 80MB (the largest message must fit) and 4GB",
            ));
        }
        for (i, t) in self.tenants.iter().enumerate() {
            if let Err(reason) = check_tenant_name(&t.name) {
                return Err(invalid(format!("node.tenants[{i}].name"), reason));
            }
            if t.password.len() < 8 {
                return Err(invalid(
                    format!("node.tenants[{i}].password"),
                    "at least 8 characters",
                ));
            }
        }
        if let Some(k) = &self.kubernetes {
            k.validate()?;
        }
        match (self.initial_members.is_empty(), self.join) {
            (true, false) => Err(invalid(
                "node.initial_members",
                "say how this node starts: `initial_members = [...]` lists the founding voters \
                 of a new cluster (this node alone for a single-node one), or `join = true` \
                 waits to be added to a running cluster (`skeinctl add-learner`)",
            )),
            (false, true) => Err(invalid(
                "node.join",
                "`join = true` waits to be added to a running cluster, `initial_members` founds \
                 a new one: keep one of the two",
            )),
            _ => Ok(()),
        }
    }
}

/// Whether `s` looks like `host:port` (a non-empty host and a port 1-65535).
pub fn is_host_port(s: &str) -> bool {
    match s.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    }
}

/// Tenant names: 1-64 of `[A-Za-z0-9._-]`.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// The node id of a StatefulSet pod named `NAME-N`: N + 1 (ids start at 1).
pub fn ordinal_id(hostname: &str) -> Option<u64> {
    let (_, n) = hostname.trim().rsplit_once('-')?;
    n.parse::<u64>().ok()?.checked_add(1)
}
