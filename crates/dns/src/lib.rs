//! DNS lookups for Skein: MX and address records through hickory-resolver.
//!
//! - [`Resolver`]: hickory's tokio resolver, asking configured nameservers (tests point it at a
//!   local DNS server) or the system's; its cache keeps answers for their TTL.
//! - [`Answer`]: records found, no records of that type, or no such name. Anything else that
//!   fails (a timeout, SERVFAIL) is an `Err` with the resolver's words: temporary.
//! - [`Resolve`]: the MX lookup as a trait object, for the queue leader, which classifies
//!   recipient domains by their MX host before it first delivers to them.
//! - [`primary`]: the MX host a domain's mail goes to first.
//!
//! Senders build their delivery targets (preference order, implicit MX, null MX) on top of
//! [`Resolver`]; that policy lives with them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;

use hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::TokioResolver;

/// The answer to a query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer<T> {
    /// Records found.
    Found(T),
    /// The name exists but has no records of that type.
    NoRecords,
    /// The name does not exist.
    NxDomain,
}

/// A lookup in progress.
pub type Lookup<'a, T> = Pin<Box<dyn Future<Output = Result<Answer<T>, String>> + Send + 'a>>;

/// MX lookups, as a trait object.
pub trait Resolve: Send + Sync {
    /// MX records of `domain`: (preference, exchange in lower case without the final dot).
    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, Vec<(u16, String)>>;
}

/// MX and address lookups through hickory.
#[derive(Debug, Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl Resolver {
    /// A resolver asking `nameservers`, or the system's (resolv.conf) when empty. Fails only
    /// when the system's configuration cannot be read.
    pub fn new(nameservers: &[SocketAddr]) -> Result<Self, String> {
        let mut builder = if nameservers.is_empty() {
            TokioResolver::builder_tokio().map_err(|e| e.to_string())?
        } else {
            let servers = nameservers
                .iter()
                .map(|a| {
                    let mut ns = NameServerConfig::udp_and_tcp(a.ip());
                    for c in &mut ns.connections {
                        c.port = a.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_name_servers(servers),
                TokioRuntimeProvider::default(),
            )
        };
        let opts: &mut ResolverOpts = builder.options_mut();
        // Names are absolute: never try them under a search domain.
        opts.ndots = 0;
        let inner = builder.build().map_err(|e| e.to_string())?;
        Ok(Self { inner })
    }

    /// MX records of `domain`: (preference, exchange in lower case without the final dot).
    pub async fn mx(&self, domain: &str) -> Result<Answer<Vec<(u16, String)>>, String> {
        match self.inner.mx_lookup(fqdn(domain)).await {
            Ok(lookup) => {
                let v: Vec<(u16, String)> = lookup
                    .answers()
                    .iter()
                    .filter_map(|r| match &r.data {
                        hickory_resolver::proto::rr::RData::MX(mx) => {
                            Some((mx.preference, mx.exchange.to_ascii()))
                        }
                        _ => None,
                    })
                    .map(|(p, e)| (p, e.trim_end_matches('.').to_ascii_lowercase()))
                    .collect();
                Ok(if v.is_empty() {
                    Answer::NoRecords
                } else {
                    Answer::Found(v)
                })
            }
            Err(e) => classify_error(&e),
        }
    }

    /// A and AAAA records of `host`.
    pub async fn addresses(&self, host: &str) -> Result<Answer<Vec<IpAddr>>, String> {
        match self.inner.lookup_ip(fqdn(host)).await {
            Ok(lookup) => {
                let v: Vec<IpAddr> = lookup.iter().collect();
                Ok(if v.is_empty() {
                    Answer::NoRecords
                } else {
                    Answer::Found(v)
                })
            }
            Err(e) => classify_error(&e),
        }
    }
}

impl Resolve for Resolver {
    fn mx<'a>(&'a self, domain: &'a str) -> Lookup<'a, Vec<(u16, String)>> {
        Box::pin(Resolver::mx(self, domain))
    }
}

/// The MX host mail for a domain goes to first: the most preferred exchange (the first by name
/// among equals, so every caller picks the same); `None` for a null MX (RFC 7505) or none.
pub fn primary(records: &[(u16, String)]) -> Option<&str> {
    records
        .iter()
        .filter(|(_, e)| !e.is_empty() && e != ".")
        .min_by(|a, b| a.cmp(b))
        .map(|(_, e)| e.as_str())
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

fn classify_error<T>(e: &hickory_resolver::net::NetError) -> Result<Answer<T>, String> {
    if e.is_nx_domain() {
        Ok(Answer::NxDomain)
    } else if e.is_no_records_found() {
        Ok(Answer::NoRecords)
    } else {
        Err(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_mx_is_the_most_preferred() {
        let r = |v: &[(u16, &str)]| -> Vec<(u16, String)> {
            v.iter().map(|(p, e)| (*p, e.to_string())).collect()
        };
        assert_eq!(
            primary(&r(&[(20, "b.test"), (10, "z.test"), (10, "a.test")])),
            Some("a.test")
        );
        assert_eq!(primary(&r(&[(0, "")])), None);
        assert_eq!(primary(&r(&[(0, "."), (10, "mx.test")])), Some("mx.test"));
        assert_eq!(primary(&[]), None);
    }
}
