//! Configuration files of every Skein role.
//!
//! One TOML file may hold a `[node]` section (a queue node), an `[edge]` section (an SMTP edge)
//! or both (`skein dev`). Every field has a documented default; unknown fields are errors, and
//! [`Config::validate`] names the field that is wrong. Environment overrides are applied by the
//! binary before validation, never read here.
//!
//! Layout: [`node`] and [`edge`] hold the sections; this file holds the top level, loading and
//! the error type.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod delivery;
pub mod edge;
pub mod node;
pub mod sender;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use delivery::{DeliveryConfig, SuppressionPolicy};
pub use edge::{EdgeConfig, EdgeLimits, ListenerConfig, TlsMode};
pub use node::{KubernetesMembership, Member, NodeConfig, RaftTuning, TenantSeed};
pub use sender::{DomainTls, Route, SenderConfig, SmtpTimeouts, SourceIp, TlsPolicy};

/// A configuration could not be loaded or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why (not a `source`: the message says it, once).
        error: std::io::Error,
    },
    /// The TOML does not parse or does not match the schema (unknown field, wrong type).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message, naming line and field.
        message: String,
    },
    /// A field has a value that cannot work.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Dotted path of the field, e.g. `edge.limits.max_recipients`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A section the role needs is missing.
    #[error("missing [{section}] section")]
    MissingSection {
        /// The section name.
        section: &'static str,
    },
}

/// `text` with every `${NAME}` replaced by `lookup(NAME)`; `$${` is a literal `${`. An unset
/// or malformed reference is an error naming it and its line.
pub fn expand(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("${") {
        if rest[..i].ends_with('$') {
            out.push_str(&rest[..i - 1]);
            out.push_str("${");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let line = text.len() - rest.len() + i;
        let line = text[..line].matches('\n').count() + 1;
        let Some(end) = rest[i + 2..].find('}') else {
            return Err(format!("line {line}: `${{` without a closing `}}`"));
        };
        let name = &rest[i + 2..i + 2 + end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {line}: `${{{name}}}` is not a variable name"));
        }
        match lookup(name) {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "line {line}: environment variable {name} is not set"
                ))
            }
        }
        rest = &rest[i + 2 + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// This host's name: `$HOSTNAME`, else the kernel's.
fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The queue node role.
    pub node: Option<NodeConfig>,
    /// The SMTP edge role.
    pub edge: Option<EdgeConfig>,
    /// The sender role.
    pub sender: Option<SenderConfig>,
    /// Mutual TLS between roles; absent, gRPC is plaintext and unauthenticated (loopback only,
    /// unless `[node] insecure = true`).
    pub cluster_tls: Option<ClusterTls>,
}

/// `[cluster_tls]`: this process's identity in the cluster, for every role it runs. Made with
/// `skein certs init` (the CA) and `skein certs issue --role ...` (one per process); the
/// certificate must name each role the file configures (`node`, `edge`, `sender`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClusterTls {
    /// The cluster CA's certificate (PEM): peers are trusted when it signed theirs.
    pub ca: PathBuf,
    /// This process's certificate (PEM).
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
}

impl Config {
    /// Parses TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: origin.to_string(),
            message: e.to_string(),
        })
    }

    /// Reads and parses a file (does not validate). `${NAME}` in it is replaced by the
    /// environment variable NAME (`$${` stands for a literal `${`), so one file serves every
    /// pod of a StatefulSet; `[node] id_from_hostname` takes the node's id from the host
    /// name's ordinal.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: origin.clone(),
            error,
        })?;
        let text = expand(&text, |name| std::env::var(name).ok()).map_err(|message| {
            ConfigError::Parse {
                path: origin.clone(),
                message,
            }
        })?;
        let mut cfg = Self::parse(&text, &origin)?;
        if let Some(n) = cfg.node.as_mut().filter(|n| n.id_from_hostname) {
            let host = hostname();
            n.id = node::ordinal_id(&host).ok_or_else(|| {
                invalid(
                    "node.id_from_hostname",
                    format!("host name {host:?} does not end in -N (a StatefulSet pod's ordinal)"),
                )
            })?;
        }
        Ok(cfg)
    }

    /// Checks every section present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.node.is_none() && self.edge.is_none() && self.sender.is_none() {
            return Err(invalid("(file)", "no [node], [edge] or [sender] section"));
        }
        if let Some(n) = &self.node {
            n.validate()?;
            n.check_exposure(self.cluster_tls.is_some())?;
        }
        if let Some(t) = &self.cluster_tls {
            for (field, path) in [
                ("cluster_tls.ca", &t.ca),
                ("cluster_tls.cert", &t.cert),
                ("cluster_tls.key", &t.key),
            ] {
                if path.as_os_str().is_empty() {
                    return Err(invalid(field, "must name a PEM file"));
                }
            }
        }
        if let Some(e) = &self.edge {
            e.validate()?;
        }
        if let Some(s) = &self.sender {
            s.validate()?;
        }
        Ok(())
    }

    /// The configuration `skein dev` uses when given no file: one node on 127.0.0.1:7070 with
    /// data in `./skein-data`, an edge with STARTTLS on 127.0.0.1:2525 and implicit TLS on
    /// 127.0.0.1:4650, loopback clients allowed to relay.
    pub fn dev_default() -> Self {
        let mut node = NodeConfig::default();
        node.initial_members = node.founders();
        Self {
            node: Some(node),
            edge: Some(EdgeConfig::dev_default()),
            sender: Some(SenderConfig::default()),
            cluster_tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn environment_variables_are_expanded_and_missing_ones_named() {
        let env = |name: &str| (name == "POD").then(|| "skein-node-2".to_string());
        assert_eq!(
            expand("a = \"${POD}.svc:7070\"\nb = \"$${POD}\"\n", env).unwrap(),
            "a = \"skein-node-2.svc:7070\"\nb = \"${POD}\"\n"
        );
        let e = expand("x = 1\ny = \"${NOPE}\"", env).unwrap_err();
        assert_eq!(e, "line 2: environment variable NOPE is not set");
        assert!(expand("y = \"${A B}\"", env)
            .unwrap_err()
            .contains("not a variable name"));
        assert!(expand("y = \"${POD\"", env)
            .unwrap_err()
            .contains("without a closing"));
        assert_eq!(expand("no references", env).unwrap(), "no references");
    }

    #[test]
    fn a_statefulset_pod_is_node_ordinal_plus_one() {
        assert_eq!(node::ordinal_id("skein-node-0"), Some(1));
        assert_eq!(node::ordinal_id("skein-node-12\n"), Some(13));
        assert_eq!(node::ordinal_id("laptop"), None);
        assert_eq!(node::ordinal_id("web-x"), None);
    }

    use super::*;
    use std::time::Duration;

    #[test]
    fn kubernetes_membership_is_checked_and_lets_later_pods_join() {
        const FOUNDERS: &str = "initial_members = [{ id = 1, addr = \"127.0.0.1:7070\" }]\n";
        let with =
            |id: u64, k: &str| format!("[node]\nid = {id}\n{FOUNDERS}[node.kubernetes]\n{k}");
        let good =
            "statefulset = \"skein-node\"\naddress = \"{pod}.skein-node.{namespace}.svc:7070\"\n";
        // Node 4 is not a founder: with Kubernetes membership it waits to be added.
        let cfg = Config::parse(&with(4, good), "t.toml").unwrap();
        cfg.validate().unwrap();
        let node = cfg.node.unwrap();
        assert!(node.joins());
        let k = node.kubernetes.unwrap();
        assert_eq!(k.interval.0, Duration::from_secs(5));
        assert_eq!(
            k.address_of("skein-node-3", "mail", None).as_deref(),
            Some("skein-node-3.skein-node.mail.svc:7070")
        );
        let by_ip = KubernetesMembership {
            address: "{pod_ip}:7070".into(),
            ..k
        };
        assert_eq!(by_ip.address_of("skein-node-3", "mail", None), None);
        assert_eq!(
            by_ip
                .address_of("skein-node-3", "mail", Some("10.1.2.3"))
                .as_deref(),
            Some("10.1.2.3:7070")
        );
        // A founder founds.
        let cfg = Config::parse(&with(1, good), "t.toml").unwrap();
        assert!(!cfg.node.unwrap().joins());
        for (k, field) in [
            (
                "statefulset = \"Skein_Node\"\naddress = \"{pod}:7070\"\n",
                "node.kubernetes.statefulset",
            ),
            (
                "statefulset = \"skein-node\"\naddress = \"{pod}\"\n",
                "node.kubernetes.address",
            ),
            (
                "statefulset = \"skein-node\"\naddress = \"{host}:7070\"\n",
                "node.kubernetes.address",
            ),
            (
                "statefulset = \"skein-node\"\naddress = \"{pod}:7070\"\ninterval = \"100ms\"\n",
                "node.kubernetes.interval",
            ),
            (
                "statefulset = \"skein-node\"\naddress = \"{pod}:7070\"\ntoken_file = \"t\"\n",
                "node.kubernetes.api_server",
            ),
        ] {
            let err = Config::parse(&with(4, k), "t.toml")
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(field), "{k}: {err}");
        }
    }

    #[test]
    fn dev_default_is_valid() {
        Config::dev_default().validate().unwrap();
    }

    #[test]
    fn unknown_field_is_named() {
        let err = Config::parse("[edge]\nhostnme = \"x\"\n", "t.toml").unwrap_err();
        assert!(err.to_string().contains("hostnme"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let cases = [
            ("[node]\nid = 0\n", "node.id"),
            ("[node]\nid = 1\nlisten = \"nonsense\"\n", "node.listen"),
            ("[node]\nnameservers = [\"dns.test\"]\n", "node.nameservers"),
            ("[node]\nlisten = \"0.0.0.0:7070\"\njoin = true\n", "node.listen"),
            ("[node]\nid = 3\n", "node.initial_members"),
            (
                "[node]\njoin = true\ninitial_members = [{ id = 1, addr = \"127.0.0.1:1\" }]\n",
                "node.join",
            ),
            (
                "[node]\njoin = true\n[cluster_tls]\nca = \"\"\ncert = \"c.pem\"\nkey = \"k.pem\"\n",
                "cluster_tls.ca",
            ),
            (
                "[edge]\n[edge.limits]\nmax_message_size = \"70MB\"\n",
                "edge.limits.max_message_size",
            ),
            (
                "[node]\nid = 2\ninitial_members = [{ id = 1, addr = \"127.0.0.1:1\" }]\n",
                "node.initial_members",
            ),
            ("[edge]\nqueue = []\n", "edge.queue"),
            (
                "[edge]\n[edge.limits]\nmax_recipients = 0\n",
                "edge.limits.max_recipients",
            ),
            ("[edge]\n[edge.tls]\ncert = \"/x.pem\"\n", "edge.tls"),
            ("[edge]\nlisteners = []\n", "edge.listeners"),
            ("[sender]\ncluster = []\n", "sender.cluster"),
            (
                "[sender]\nroutes = [{ domain = \"a.test\", to = \"nowhere\" }]\n",
                "sender.routes",
            ),
            (
                "[node]\n[node.delivery]\nretry_first = \"10m\"\nretry_max = \"1m\"\n",
                "node.delivery.retry_max",
            ),
            ("[node]\ningest_memory = \"64MB\"\n", "node.ingest_memory"),
            (
                "[node]\n[node.delivery]\nbatch = 60001\n",
                "node.delivery.batch",
            ),
            (
                "[node]\n[node.delivery]\nassignment_memory = \"500KB\"\n",
                "node.delivery.assignment_memory",
            ),
        ];
        for (text, field) in cases {
            let err = Config::parse(text, "t.toml")
                .and_then(|c| c.validate())
                .unwrap_err();
            match &err {
                ConfigError::Invalid { field: f, .. } => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: expected Invalid({field}), got {other}"),
            }
        }
    }

    #[test]
    fn cluster_tls_lets_a_node_listen_beyond_loopback() {
        let tls = "[cluster_tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"\n";
        let text = format!("[node]\nlisten = \"0.0.0.0:7070\"\njoin = true\n{tls}");
        Config::parse(&text, "t").unwrap().validate().unwrap();
        let err = Config::parse("[node]\nlisten = \"0.0.0.0:7070\"\njoin = true\n", "t")
            .unwrap()
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("skein certs init"), "{err}");
    }

    #[test]
    fn human_units_parse() {
        let c = Config::parse(
            "[edge]\n[edge.limits]\nmax_message_size = \"10MB\"\ncommand_timeout = \"2m\"\n",
            "t",
        )
        .unwrap();
        let l = &c.edge.unwrap().limits;
        assert_eq!(l.max_message_size.0, 10_000_000);
        assert_eq!(l.command_timeout.0.as_secs(), 120);
    }

    #[test]
    fn shipped_examples_are_valid() {
        // At run time: a path compiled in may name another checkout sharing the build cache.
        let dir = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or(env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let c = Config::load(&path).unwrap();
                c.validate()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                n += 1;
            }
        }
        assert!(
            n >= 3,
            "expected example configs for node, edge and dev, found {n}"
        );
    }
}
