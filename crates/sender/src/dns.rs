//! Where mail for a domain goes: a static route, or its MX hosts (RFC 5321 section 5.1).
//!
//! MX hosts are tried in preference order, hosts of equal preference in random order; a domain
//! without MX records gets the implicit MX (its own A/AAAA); a single MX of `.` is RFC 7505's
//! null MX (the domain takes no mail: bounce at once); NXDOMAIN bounces; anything else that
//! fails is temporary. Lookups go through hickory-resolver, whose cache keeps answers for their
//! TTL; the nameservers are configurable, so tests can point at a local DNS server.

use std::net::{IpAddr, SocketAddr};

use skein_smtp::outcome::Failure;

/// MX hosts tried per delivery attempt.
pub const MAX_MX_HOSTS: usize = 5;
/// Addresses tried per delivery attempt, over all hosts.
pub const MAX_ADDRESSES: usize = 8;

/// One host to try, with the addresses to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name (or the address, for a route to a literal address).
    pub host: String,
    /// Its addresses, in the order to try them.
    pub addrs: Vec<SocketAddr>,
}

pub use skein_dns::{Answer, Resolver};

/// The hosts to try for `domain`, or why there are none. `route` (`host:port`) replaces the
/// MX lookup; `port` is used for MX and implicit-MX targets; `v4` keeps only the addresses of
/// the source address's family.
pub async fn targets(
    resolver: &Resolver,
    domain: &str,
    route: Option<&str>,
    port: u16,
    v4: bool,
) -> Result<Vec<Target>, Failure> {
    if let Some(route) = route {
        let (host, port) = split_host_port(route)
            .ok_or_else(|| Failure::Dns(format!("route {route:?} is not host:port")))?;
        let hosts = vec![host.to_string()];
        return resolve_hosts(resolver, hosts, port, v4).await;
    }
    let hosts = match resolver.mx(domain).await.map_err(Failure::Dns)? {
        Answer::NxDomain => return Err(Failure::NoSuchDomain(domain.to_string())),
        // RFC 5321 5.1: no MX, the domain itself is the implicit MX.
        Answer::NoRecords => vec![domain.to_ascii_lowercase()],
        Answer::Found(records) => order_mx(records, &mut fastrand::Rng::new())?,
    };
    resolve_hosts(resolver, hosts, port, v4).await
}

async fn resolve_hosts(
    resolver: &Resolver,
    hosts: Vec<String>,
    port: u16,
    v4: bool,
) -> Result<Vec<Target>, Failure> {
    let mut targets = Vec::new();
    let mut errors = Vec::new();
    let mut budget = MAX_ADDRESSES;
    for host in hosts.into_iter().take(MAX_MX_HOSTS) {
        if budget == 0 {
            break;
        }
        let ips = match host.parse::<IpAddr>() {
            Ok(ip) => vec![ip],
            Err(_) => match resolver.addresses(&host).await {
                Ok(Answer::Found(ips)) => ips,
                Ok(Answer::NoRecords | Answer::NxDomain) => {
                    errors.push(format!("{host} has no address"));
                    continue;
                }
                Err(e) => {
                    errors.push(format!("{host}: {e}"));
                    continue;
                }
            },
        };
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .filter(|ip| ip.is_ipv4() == v4)
            .take(budget)
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        if addrs.is_empty() {
            errors.push(format!(
                "{host} has no IPv{} address",
                if v4 { 4 } else { 6 }
            ));
            continue;
        }
        budget -= addrs.len();
        targets.push(Target { host, addrs });
    }
    if targets.is_empty() {
        return Err(Failure::Dns(errors.join("; ")));
    }
    Ok(targets)
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals).
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return None;
    }
    Some((host, port.parse().ok()?))
}

/// MX exchanges in the order to try: by preference, shuffled within a preference; a null MX
/// (a single record whose exchange is the root) is [`Failure::NullMx`].
pub fn order_mx(
    mut records: Vec<(u16, String)>,
    rng: &mut fastrand::Rng,
) -> Result<Vec<String>, Failure> {
    if records.iter().any(|(_, e)| e.is_empty() || e == ".") {
        // RFC 7505: a null MX must be the only record; with others around it, ignore it.
        if records.len() == 1 {
            return Err(Failure::NullMx);
        }
        records.retain(|(_, e)| !(e.is_empty() || e == "."));
    }
    rng.shuffle(&mut records);
    // A stable sort keeps the shuffled order within one preference.
    records.sort_by_key(|(p, _)| *p);
    let mut out: Vec<String> = Vec::with_capacity(records.len());
    for (_, e) in records {
        if !out.contains(&e) {
            out.push(e);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_order_is_by_preference_and_shuffled_within_one() {
        let records = vec![
            (20, "b1".to_string()),
            (10, "a1".to_string()),
            (20, "b2".to_string()),
            (10, "a2".to_string()),
            (30, "c".to_string()),
        ];
        let mut seen_first = std::collections::HashSet::new();
        for seed in 0..64 {
            let o = order_mx(records.clone(), &mut fastrand::Rng::with_seed(seed)).unwrap();
            assert_eq!(o.len(), 5);
            let mut head: Vec<&str> = o[..2].iter().map(String::as_str).collect();
            head.sort_unstable();
            assert_eq!(head, ["a1", "a2"]);
            let mut mid: Vec<&str> = o[2..4].iter().map(String::as_str).collect();
            mid.sort_unstable();
            assert_eq!(mid, ["b1", "b2"]);
            assert_eq!(o[4], "c");
            seen_first.insert(o[0].clone());
        }
        assert_eq!(seen_first.len(), 2, "equal preferences are randomised");
    }

    #[test]
    fn null_mx_and_duplicates() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(
            order_mx(vec![(0, String::new())], &mut rng),
            Err(Failure::NullMx)
        );
        assert_eq!(
            order_mx(vec![(0, String::new()), (10, "mx".into())], &mut rng).unwrap(),
            ["mx"]
        );
        assert_eq!(
            order_mx(vec![(10, "mx".into()), (10, "mx".into())], &mut rng).unwrap(),
            ["mx"]
        );
    }

    #[test]
    fn host_port() {
        assert_eq!(split_host_port("127.0.0.1:2626"), Some(("127.0.0.1", 2626)));
        assert_eq!(split_host_port("[::1]:25"), Some(("::1", 25)));
        assert_eq!(split_host_port("smtp.test:587"), Some(("smtp.test", 587)));
        assert_eq!(split_host_port("nohost"), None);
        assert_eq!(split_host_port(":25"), None);
    }
}
