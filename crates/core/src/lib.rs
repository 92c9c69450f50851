//! Small things every Skein crate shares.
//!
//! - [`clock`]: the one source of time ([`Clock`]); the system clock in production, a
//!   [`ManualClock`] in tests, so nothing ever sleeps to test time.
//! - [`units`]: human units in configuration ("10m", "25MB") with serde support.
//! - [`date`]: RFC 5322 date-time formatting for `Received:` and `Date:` headers.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod clock;
pub mod date;
pub mod units;

pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use units::{ByteSize, HumanDuration, UnitError};
