//! Operational endpoints: what a Skein process tells Prometheus and Kubernetes probes.
//!
//! - [`metrics`]: lock-free counters and histograms for the hot paths, and an
//!   [`metrics::Exposition`] that writes the Prometheus text format (0.0.4) at scrape time.
//! - [`http`]: a small HTTP/1.1 server (GET only, one request per connection, bounded and
//!   timed) answering `/metrics`, `/healthz` (the process works) and `/readyz` (it can serve),
//!   from a [`Probe`] the process implements. The request parsing is a pure function.
//! - [`trace`]: each message's trace across the roles, exported by OTLP when configured.
#![warn(missing_docs)]

pub mod http;
pub mod metrics;
pub mod trace;

/// What a process reports about itself.
pub trait Probe: Send + Sync + 'static {
    /// The metrics, in the Prometheus text format.
    fn metrics(&self) -> String;
    /// Whether the process is alive and working (`Err` says why not): a failed liveness
    /// probe restarts it.
    fn live(&self) -> Result<(), String>;
    /// Whether it can serve now (`Err` says why not): traffic waits until it can.
    fn ready(&self) -> Result<(), String>;
}
