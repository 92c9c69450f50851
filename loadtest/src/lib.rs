//! Skein's load harness, as a library: provider simulators, an open-loop generator, the
//! cluster a run starts, scaled time, a DNS server for simulated domains, and the report.
//! The `skein-load` binary runs it; the integration tests reuse its DNS server.
#![warn(missing_docs)]

pub mod blast;
pub mod clock;
mod conductor;
pub mod display;
pub mod dns;
pub mod faults;
pub mod gen;
pub mod link;
pub mod max;
mod profiles;
pub mod report;
pub mod rig;
pub mod run;
pub mod sim;
pub mod smtp;
