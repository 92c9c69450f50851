//! A sender node: owns source IPs and talks SMTP to the world on the cluster's behalf.
//!
//! - [`session`] keeps the Work stream to the queue leader: hello, assignments down, reports
//!   up; it reconnects and follows the leader.
//! - [`deliver`] turns one assignment into one report: where to go ([`dns`]: static routes,
//!   MX with preference order and equal-preference shuffle, A/AAAA fallback, null MX), then
//!   SMTP over a connection from the assigned source IP ([`conn`]), trying the next host on
//!   connection-level failures. Every outcome is classified by [`skein_smtp::outcome`].
//!   [`destination`] refuses addresses that would loop (this host, the cluster's edges).
//! - [`conn`] runs the sans-I/O [`skein_smtp::client::ClientConn`] over TCP and TLS with the
//!   RFC 5321 timeouts, and pools idle connections for reuse.
//! - [`tls`] is the client TLS configuration.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod conn;
pub mod deliver;
pub mod destination;
pub mod dns;
pub mod error;
pub mod gate;
pub mod metrics;
pub mod session;
pub mod tls;

pub use deliver::Deliverer;
pub use error::SenderError;
pub use session::run;
