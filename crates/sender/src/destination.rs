//! Which addresses mail may go to. An MX or route that resolves to this host (loopback), to no
//! host (unspecified), to a link-local, multicast or broadcast address, or to a network the
//! operator lists in `[sender] deny_destinations` (the cluster's own edges, internal ranges) is
//! a mail loop or a misconfiguration, never a destination: such addresses are skipped, and a
//! domain left with none bounces with 554 5.4.6, as Postfix does when mail loops back to itself.
//! `[sender] allow_destinations` lets chosen networks through (a sink on this host in tests and
//! `skein dev`); the deny list wins over it.

use std::net::IpAddr;

use ipnet::IpNet;

/// The sender's destination policy.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

impl Destinations {
    /// Refuses the special addresses and `deny`, except what `allow` lets through.
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    /// Why mail may not go to `ip`, or `None` when it may.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        // An IPv4 address written as IPv6 (::ffff:127.0.0.1) is the IPv4 address.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return Some("listed in [sender] deny_destinations");
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        const LOOPBACK: &str = "a loopback address (this host)";
        const UNSPECIFIED: &str = "the unspecified address";
        const LINK_LOCAL: &str = "a link-local address";
        const MULTICAST: &str = "a multicast address";
        let special = match ip {
            IpAddr::V4(v4) => [
                (v4.is_loopback(), LOOPBACK),
                (v4.is_unspecified(), UNSPECIFIED),
                (v4.is_link_local(), LINK_LOCAL),
                (v4.is_multicast(), MULTICAST),
                (v4.is_broadcast(), "the broadcast address"),
            ],
            IpAddr::V6(v6) => [
                (v6.is_loopback(), LOOPBACK),
                (v6.is_unspecified(), UNSPECIFIED),
                (v6.is_unicast_link_local(), LINK_LOCAL),
                (v6.is_multicast(), MULTICAST),
                (false, ""),
            ],
        };
        special
            .into_iter()
            .find(|(hit, _)| *hit)
            .map(|(_, why)| why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(n: &[&str]) -> Vec<IpNet> {
        n.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn special_addresses_are_refused_unless_allowed_and_the_deny_list_wins() {
        let strict = Destinations::default();
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "0.0.0.0",
            "169.254.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(strict.refusal(ip.parse().unwrap()).is_some(), "{ip}");
        }
        for ip in ["192.0.2.1", "10.1.2.3", "2001:db8::1", "::ffff:192.0.2.1"] {
            assert_eq!(strict.refusal(ip.parse().unwrap()), None, "{ip}");
        }
        let dev = Destinations::new(
            nets(&["127.0.0.0/8"]),
            nets(&["127.0.0.25/32", "10.0.0.0/8"]),
        );
        assert_eq!(dev.refusal("127.0.0.1".parse().unwrap()), None);
        assert_eq!(
            dev.refusal("127.0.0.25".parse().unwrap()),
            Some("listed in [sender] deny_destinations")
        );
        assert!(dev.refusal("10.9.9.9".parse().unwrap()).is_some());
        assert!(
            dev.refusal("::1".parse().unwrap()).is_some(),
            "only what is allowed"
        );
    }
}
