//! The `[edge]` section: an SMTP edge.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use skein_core::{ByteSize, HumanDuration};

use crate::node::is_host_port;
use crate::{invalid, ConfigError};

/// An SMTP edge.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeConfig {
    /// Name of this edge (in `Received:` and logs). Default `localhost`.
    pub hostname: String,
    /// Queue nodes to submit to (any of them; the edge follows the leader). Default
    /// `["127.0.0.1:7070"]`.
    pub queue: Vec<String>,
    /// Where to answer HTTP `GET /metrics`, `/healthz` and `/readyz` (ready while a queue
    /// node answers), e.g. `0.0.0.0:9465`. Unset: not served.
    pub http: Option<String>,
    /// SMTP listeners. Default: STARTTLS on 127.0.0.1:2525.
    pub listeners: Vec<ListenerConfig>,
    /// Certificate and key; without them a self-signed certificate is generated at start.
    pub tls: Option<TlsFiles>,
    /// Clients in these networks may relay without AUTH. Default none.
    pub relay_networks: Vec<IpNet>,
    /// Clients in these networks may AUTH without TLS. Default none.
    pub plaintext_auth_networks: Vec<IpNet>,
    /// How long to wait for the queue to commit a message before answering 451. Default 15s.
    pub commit_timeout: HumanDuration,
    /// How often to refresh the cached tenant logins and DKIM keys. Default 10s.
    pub credentials_refresh: HumanDuration,
    /// Limits.
    pub limits: EdgeLimits,
}

/// A listener kind.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plain SMTP with STARTTLS offered (ports 25, 587, 2525).
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
}

/// One SMTP listener.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// ip:port to bind.
    pub address: String,
    /// `starttls` (default) or `implicit`.
    #[serde(default = "default_tls_mode")]
    pub tls: TlsMode,
}

fn default_tls_mode() -> TlsMode {
    TlsMode::Starttls
}

/// PEM files.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    #[serde(default)]
    pub cert: PathBuf,
    /// Private key, PEM.
    #[serde(default)]
    pub key: PathBuf,
}

/// Edge limits. Replies follow RFC 5321/3463.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeLimits {
    /// Largest message (SIZE). Default 25MB.
    pub max_message_size: ByteSize,
    /// Recipients per message. Default 1000.
    pub max_recipients: usize,
    /// Longest command line. Default 4096.
    pub max_command_line: usize,
    /// Longest message line, CRLF excluded. Default 998 (RFC 5322).
    pub max_data_line: usize,
    /// Open connections, all clients. Default 2000.
    pub max_connections: usize,
    /// Open connections from one IP. Default 100.
    pub max_connections_per_ip: usize,
    /// Waiting for a command (RFC 5321 4.5.3.2: at least 5 minutes). Default 5m.
    pub command_timeout: HumanDuration,
    /// Waiting for the next block of message data (RFC: 3 minutes). Default 3m.
    pub data_timeout: HumanDuration,
    /// Longest session: past it the edge answers the next command 421 4.7.0 and closes (a
    /// message in DATA is finished first), so no client holds a connection for ever however
    /// busy it keeps it. Default 1h.
    pub max_session_duration: HumanDuration,
    /// Rejected commands before 421. Default 20.
    pub max_bad_commands: u32,
    /// Failed AUTH attempts before 421. Default 3.
    pub max_auth_failures: u32,
    /// Messages per minute from one client IP; 0 = unlimited (default).
    pub messages_per_minute_per_ip: u32,
    /// Messages per minute from one tenant; 0 = unlimited (default).
    pub messages_per_minute_per_tenant: u32,
    /// Failed AUTH attempts per minute from one client (IPv6: its /64); past them, AUTH from
    /// it is answered 454 4.7.0 without checking the password. 0 = unlimited. Default 30.
    pub auth_failures_per_minute_per_ip: u32,
    /// NOOP, RSET, VRFY and HELP between two messages before each counts as an error (toward
    /// `max_bad_commands`, then 421). Default 100.
    pub max_junk_commands: u32,
    /// A message with more `Received:` header fields than this is in a mail loop: refused with
    /// 554 5.4.6 (RFC 5321 section 6.3). Default 50.
    pub max_received_headers: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_message_size: ByteSize(25_000_000),
            max_recipients: 1000,
            max_command_line: 4096,
            max_data_line: 998,
            max_connections: 2000,
            max_connections_per_ip: 100,
            command_timeout: HumanDuration(Duration::from_secs(300)),
            data_timeout: HumanDuration(Duration::from_secs(180)),
            max_session_duration: HumanDuration(Duration::from_secs(3600)),
            max_bad_commands: 20,
            max_auth_failures: 3,
            messages_per_minute_per_ip: 0,
            messages_per_minute_per_tenant: 0,
            max_received_headers: 50,
            max_junk_commands: 100,
            auth_failures_per_minute_per_ip: 30,
        }
    }
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            queue: vec!["127.0.0.1:7070".into()],
            http: None,
            listeners: vec![ListenerConfig {
                address: "127.0.0.1:2525".into(),
                tls: TlsMode::Starttls,
            }],
            tls: None,
            relay_networks: Vec::new(),
            plaintext_auth_networks: Vec::new(),
            commit_timeout: HumanDuration(Duration::from_secs(15)),
            credentials_refresh: HumanDuration(Duration::from_secs(10)),
            limits: EdgeLimits::default(),
        }
    }
}

impl EdgeConfig {
    /// `skein dev`'s edge: STARTTLS on 2525, implicit TLS on 4650, loopback may relay and AUTH
    /// in plaintext.
    pub fn dev_default() -> Self {
        let loopback: IpNet = "127.0.0.0/8".parse().expect("literal CIDR");
        let loopback6: IpNet = "::1/128".parse().expect("literal CIDR");
        Self {
            listeners: vec![
                ListenerConfig {
                    address: "127.0.0.1:2525".into(),
                    tls: TlsMode::Starttls,
                },
                ListenerConfig {
                    address: "127.0.0.1:4650".into(),
                    tls: TlsMode::Implicit,
                },
            ],
            relay_networks: vec![loopback, loopback6],
            plaintext_auth_networks: vec![loopback, loopback6],
            ..Self::default()
        }
    }

    /// Checks values; errors name the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.hostname.is_empty() || self.hostname.contains(char::is_whitespace) {
            return Err(invalid("edge.hostname", "must be a host name"));
        }
        if let Some(h) = &self.http {
            h.parse::<std::net::SocketAddr>()
                .map_err(|_| invalid("edge.http", format!("{h:?} is not an ip:port")))?;
        }
        if self.queue.is_empty() {
            return Err(invalid(
                "edge.queue",
                "needs at least one queue node address",
            ));
        }
        if let Some(a) = self.queue.iter().find(|a| !is_host_port(a)) {
            return Err(invalid("edge.queue", format!("{a:?} is not a host:port")));
        }
        if self.listeners.is_empty() {
            return Err(invalid("edge.listeners", "needs at least one listener"));
        }
        for (i, l) in self.listeners.iter().enumerate() {
            if l.address.parse::<SocketAddr>().is_err() {
                return Err(invalid(
                    format!("edge.listeners[{i}].address"),
                    format!("{:?} is not an ip:port", l.address),
                ));
            }
        }
        if let Some(t) = &self.tls {
            if t.cert.as_os_str().is_empty() || t.key.as_os_str().is_empty() {
                return Err(invalid("edge.tls", "needs both cert and key"));
            }
        }
        if self.commit_timeout.0.is_zero() {
            return Err(invalid("edge.commit_timeout", "must be > 0"));
        }
        let l = &self.limits;
        let checks: [(&str, bool); 9] = [
            (
                "max_message_size",
                (1024..=(skein_core::MAX_MESSAGE_BYTES - skein_core::EDGE_HEADER_ROOM) as u64)
                    .contains(&l.max_message_size.0),
            ),
            ("max_recipients", l.max_recipients > 0),
            ("max_command_line", l.max_command_line >= 512),
            ("max_data_line", l.max_data_line >= 78),
            ("max_connections", l.max_connections > 0),
            ("max_connections_per_ip", l.max_connections_per_ip > 0),
            ("command_timeout", !l.command_timeout.0.is_zero()),
            ("data_timeout", !l.data_timeout.0.is_zero()),
            (
                "max_session_duration",
                l.max_session_duration.0 >= Duration::from_secs(1),
            ),
        ];
        if let Some((name, _)) = checks.iter().find(|(_, ok)| !ok) {
            let why = match *name {
                "max_message_size" => {
                    "must be at least 1KB, and at most 64MiB less 64KiB (the largest message \
                     the queue takes, with room for the edge's headers)"
                }
                "max_command_line" => "must be at least 512 (RFC 5321 4.5.3.1.4)",
                "max_data_line" => "must be at least 78",
                "max_session_duration" => "must be at least 1s",
                _ => "must be greater than 0",
            };
            return Err(invalid(format!("edge.limits.{name}"), why));
        }
        if l.max_bad_commands == 0 || l.max_auth_failures == 0 {
            return Err(invalid(
                "edge.limits.max_bad_commands",
                "limits must be > 0",
            ));
        }
        Ok(())
    }
}
