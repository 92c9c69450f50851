//! The `[sender]` section: a sender node, which owns source IPs and talks SMTP to the world.

use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use skein_core::HumanDuration;

use crate::node::is_host_port;
use crate::{invalid, ConfigError};

/// A sender node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SenderConfig {
    /// Name reported to the cluster and recorded with every attempt.
    pub name: String,
    /// gRPC addresses of queue nodes; the sender follows the leader among them.
    pub cluster: Vec<String>,
    /// The source IPs this sender owns, each with the name it says in EHLO.
    pub source_ips: Vec<SourceIp>,
    /// Where to answer HTTP `GET /metrics`, `/healthz` and `/readyz` (ready while a work
    /// session with the leader is open), e.g. `0.0.0.0:9466`. Unset: not served.
    pub http: Option<String>,
    /// Assignments worked on at once.
    pub max_in_flight: u32,
    /// Per-domain routes that bypass MX lookup (like a transport map or smarthost).
    pub routes: Vec<Route>,
    /// DNS servers (`ip` or `ip:port`); the system's resolv.conf when empty.
    pub nameservers: Vec<String>,
    /// Port used for MX and A/AAAA targets.
    pub smtp_port: u16,
    /// TLS policy for domains without their own.
    pub tls: TlsPolicy,
    /// Per-domain TLS policies.
    pub tls_policies: Vec<DomainTls>,
    /// Messages sent over one connection before it is closed.
    pub max_messages_per_connection: u32,
    /// How long an idle connection is kept for reuse.
    pub idle_timeout: HumanDuration,
    /// Timeouts of the SMTP dialogue.
    pub timeouts: SmtpTimeouts,
    /// Networks mail may go to although they are refused by default: loopback (this host),
    /// unspecified, link-local, multicast and broadcast addresses are never destinations (an
    /// MX pointing there is a loop or a mistake; the domain bounces with 554 5.4.6). Tests and
    /// `skein dev` allow `127.0.0.0/8` for sinks on this host. Default empty.
    pub allow_destinations: Vec<IpNet>,
    /// Networks never delivered to, even when allowed above: the cluster's own edges (an MX or
    /// route pointing back at them is a mail loop), internal ranges. Default empty.
    pub deny_destinations: Vec<IpNet>,
}

/// One source IP and its EHLO name (which should match the IP's PTR record).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SourceIp {
    /// The address to bind before connecting.
    pub ip: IpAddr,
    /// The EHLO name.
    pub ehlo: String,
}

/// A static route: mail for `domain` goes to `to` instead of the domain's MX.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Domain (exact, case-insensitive), or `*` for every domain without its own route.
    pub domain: String,
    /// `host:port` to deliver to.
    pub to: String,
}

/// Whether to use STARTTLS.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// Use STARTTLS when offered; deliver in clear otherwise or when the handshake fails.
    #[default]
    Opportunistic,
    /// Deliver only over TLS: a server without STARTTLS gets a transient failure.
    Required,
    /// Never use TLS.
    Disabled,
}

/// A TLS policy for one domain.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct DomainTls {
    /// Recipient domain.
    pub domain: String,
    /// Its policy.
    pub policy: TlsPolicy,
}

/// Timeouts per RFC 5321 section 4.5.3.2.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpTimeouts {
    /// TCP connect.
    pub connect: HumanDuration,
    /// Greeting (RFC: 5 minutes).
    pub greeting: HumanDuration,
    /// EHLO, STARTTLS, MAIL and RCPT replies (RFC: 5 minutes).
    pub command: HumanDuration,
    /// Reply to DATA (RFC: 2 minutes).
    pub data_init: HumanDuration,
    /// Sending each block of the message (RFC: 3 minutes).
    pub data_block: HumanDuration,
    /// Reply after the final dot (RFC: 10 minutes).
    pub data_end: HumanDuration,
}

fn secs(s: u64) -> HumanDuration {
    HumanDuration(Duration::from_secs(s))
}

impl Default for SmtpTimeouts {
    fn default() -> Self {
        Self {
            connect: secs(30),
            greeting: secs(300),
            command: secs(300),
            data_init: secs(120),
            data_block: secs(180),
            data_end: secs(600),
        }
    }
}

impl Default for SenderConfig {
    fn default() -> Self {
        Self {
            name: "sender-1".into(),
            cluster: vec!["127.0.0.1:7070".into()],
            source_ips: vec![SourceIp {
                ip: IpAddr::from([127, 0, 0, 1]),
                ehlo: "localhost".into(),
            }],
            max_in_flight: 64,
            routes: Vec::new(),
            nameservers: Vec::new(),
            http: None,
            smtp_port: 25,
            tls: TlsPolicy::Opportunistic,
            tls_policies: Vec::new(),
            max_messages_per_connection: 100,
            idle_timeout: secs(5),
            timeouts: SmtpTimeouts::default(),
            allow_destinations: Vec::new(),
            deny_destinations: Vec::new(),
        }
    }
}

impl SenderConfig {
    /// The route for `domain`, if any: its own, else the `*` route.
    pub fn route(&self, domain: &str) -> Option<&str> {
        let own = self
            .routes
            .iter()
            .find(|r| r.domain.eq_ignore_ascii_case(domain));
        own.or_else(|| self.routes.iter().find(|r| r.domain == "*"))
            .map(|r| r.to.as_str())
    }

    /// The TLS policy for `domain`.
    pub fn tls_for(&self, domain: &str) -> TlsPolicy {
        self.tls_policies
            .iter()
            .find(|p| p.domain.eq_ignore_ascii_case(domain))
            .map_or(self.tls, |p| p.policy)
    }

    /// Checks the values, naming the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() || self.name.len() > 64 {
            return Err(invalid("sender.name", "must be 1-64 characters"));
        }
        if let Some(h) = &self.http {
            h.parse::<std::net::SocketAddr>()
                .map_err(|_| invalid("sender.http", format!("{h:?} is not an ip:port")))?;
        }
        if self.cluster.is_empty() {
            return Err(invalid("sender.cluster", "needs at least one queue node"));
        }
        if let Some(a) = self.cluster.iter().find(|a| !is_host_port(a)) {
            return Err(invalid(
                "sender.cluster",
                format!("{a:?} is not a host:port"),
            ));
        }
        if self.source_ips.is_empty() {
            return Err(invalid("sender.source_ips", "needs at least one address"));
        }
        let mut ips: Vec<IpAddr> = self.source_ips.iter().map(|s| s.ip).collect();
        ips.sort_unstable();
        ips.dedup();
        if ips.len() != self.source_ips.len() {
            return Err(invalid("sender.source_ips", "addresses must be unique"));
        }
        if let Some(s) = self.source_ips.iter().find(|s| !is_hostname(&s.ehlo)) {
            return Err(invalid(
                "sender.source_ips",
                format!("{:?} is not a valid EHLO host name", s.ehlo),
            ));
        }
        if !(1..=10_000).contains(&self.max_in_flight) {
            return Err(invalid("sender.max_in_flight", "must be 1-10000"));
        }
        for r in &self.routes {
            if r.domain.is_empty() || r.domain.contains(char::is_whitespace) {
                return Err(invalid(
                    "sender.routes",
                    format!("{:?} is not a domain", r.domain),
                ));
            }
            if !is_host_port(&r.to) {
                return Err(invalid(
                    "sender.routes",
                    format!("{:?} is not a host:port", r.to),
                ));
            }
        }
        if let Some(n) = self
            .nameservers
            .iter()
            .find(|n| parse_nameserver(n).is_none())
        {
            return Err(invalid(
                "sender.nameservers",
                format!("{n:?} is not an ip or ip:port"),
            ));
        }
        if self.smtp_port == 0 {
            return Err(invalid("sender.smtp_port", "must be > 0"));
        }
        if self.max_messages_per_connection == 0 {
            return Err(invalid("sender.max_messages_per_connection", "must be > 0"));
        }
        let t = &self.timeouts;
        for (name, d) in [
            ("connect", t.connect),
            ("greeting", t.greeting),
            ("command", t.command),
            ("data_init", t.data_init),
            ("data_block", t.data_block),
            ("data_end", t.data_end),
        ] {
            if d.0.is_zero() {
                return Err(invalid(format!("sender.timeouts.{name}"), "must be > 0"));
            }
        }
        Ok(())
    }
}

/// Parses a nameserver given as `ip` (port 53) or `ip:port`.
pub fn parse_nameserver(s: &str) -> Option<std::net::SocketAddr> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(std::net::SocketAddr::new(ip, 53));
    }
    s.parse().ok()
}

/// A plausible DNS host name (letters, digits, hyphens and dots; 1-253 characters), or an
/// address literal in brackets.
pub fn is_hostname(s: &str) -> bool {
    if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return inner.trim_start_matches("IPv6:").parse::<IpAddr>().is_ok();
    }
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_match_exactly_then_the_wildcard() {
        let mut c = SenderConfig {
            routes: vec![
                Route {
                    domain: "Example.test".into(),
                    to: "127.0.0.1:2626".into(),
                },
                Route {
                    domain: "*".into(),
                    to: "smarthost.test:587".into(),
                },
            ],
            ..SenderConfig::default()
        };
        assert_eq!(c.route("example.TEST"), Some("127.0.0.1:2626"));
        assert_eq!(c.route("other.test"), Some("smarthost.test:587"));
        c.routes.pop();
        assert_eq!(c.route("other.test"), None);
    }

    #[test]
    fn hostnames_and_nameservers() {
        assert!(is_hostname("mail-1.example.com"));
        assert!(is_hostname("[127.0.0.1]"));
        assert!(!is_hostname("bad host"));
        assert!(!is_hostname("a..b"));
        assert_eq!(
            parse_nameserver("127.0.0.53"),
            Some("127.0.0.53:53".parse().unwrap())
        );
        assert_eq!(
            parse_nameserver("127.0.0.1:5353"),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(parse_nameserver("dns.example"), None);
    }
}
