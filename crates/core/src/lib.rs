//! Small things every Skein crate shares.
//!
//! - [`clock`]: the one source of time ([`Clock`]); the system clock in production, a
//!   [`ManualClock`] in tests, so nothing ever sleeps to test time.
//! - [`units`]: human units in configuration ("10m", "25MB") with serde support.
//! - [`date`]: RFC 5322 date-time formatting for `Received:` and `Date:` headers.
//! - [`MAX_MESSAGE_BYTES`]: the largest message the queue takes, which every role's limits
//!   must respect.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod date;
pub mod units;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};

/// The largest message (as stored: with the edge's `Received:` and `DKIM-Signature:`) the
/// queue accepts over Ingest.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;
/// What an edge may add to a message before it stores it (trace and signature headers), at
/// most: its size limit stays this far below [`MAX_MESSAGE_BYTES`].
pub const EDGE_HEADER_ROOM: usize = 64 * 1024;
pub use units::{ByteSize, HumanDuration, UnitError};
