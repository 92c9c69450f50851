//! Errors of setting a sender up. Delivery failures are not errors but data
//! ([`skein_smtp::outcome::Failure`]).

/// Why a sender could not start.
#[derive(Debug, thiserror::Error)]
pub enum SenderError {
    /// The DNS resolver could not be configured.
    #[error("DNS resolver: {0}")]
    Resolver(String),
    /// The TLS client could not be configured.
    #[error("TLS client: {0}")]
    Tls(String),
    /// A configured source IP is not an address of this host.
    #[error(
        "source IP {ip} cannot be used here ({reason}): is it configured on one of this host's \
         interfaces?"
    )]
    SourceIp {
        /// The address.
        ip: std::net::IpAddr,
        /// The operating system's words.
        reason: String,
    },
    /// The metrics and probes address cannot be listened on.
    #[error("[sender] http {address:?}: {reason}")]
    Http {
        /// The address.
        address: String,
        /// The operating system's words.
        reason: String,
    },
    /// A cluster address is not usable.
    #[error("cluster address {address:?}: {reason}")]
    Cluster {
        /// The address.
        address: String,
        /// Why.
        reason: String,
    },
}
