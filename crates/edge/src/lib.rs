//! The SMTP edge: accepts mail over SMTP and hands it to the queue cluster, storing none.
//!
//! The protocol itself lives in `skein-smtp` (sans-I/O); this crate is its runtime:
//! - [`server`]: listeners (STARTTLS and implicit TLS) and the per-connection driver that feeds
//!   the session and carries out its events.
//! - [`tls`]: rustls configuration from PEM files, or a generated self-signed certificate.
//! - [`queue`]: the Ingest client: finds a live node, retries while there is no leader, and
//!   reports failure in time for a `451 4.3.0`.
//! - [`auth`]: the tenant credential cache and argon2 verification.
//! - [`dkim`]: the tenants' DKIM keys, and signing by `From:` domain.
//! - [`limits`]: connection counting and per-minute message rates (on the injected clock).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod dkim;
pub mod limits;
pub mod metrics;
pub mod queue;
pub mod server;
pub mod tls;

pub use server::{Edge, EdgeError};
