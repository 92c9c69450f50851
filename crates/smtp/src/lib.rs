//! Sans-I/O SMTP: a server session and a client connection (RFC 5321, with RFC 3463
//! enhanced status codes).
//!
//! The [`Session`] owns no socket and no clock: the runtime feeds it the bytes it reads
//! ([`Session::feed`]), then drains [`Event`]s ([`Session::poll`]): replies to write, TLS to
//! start, credentials to check, messages to store. Decisions that need the outside world (AUTH
//! verification, rate limits, enqueueing) come back through `Session::*_done` calls; while one
//! is pending the session reads no further input, which is what makes PIPELINING safe.
//!
//! Layout:
//! - [`reply`]: the [`Reply`] type and the canned replies the session speaks.
//! - [`address`]: RFC 5321 path parsing with the open-relay tricks refused.
//! - [`data`]: the DATA receiver: exact dot-unstuffing, only `<CRLF>.<CRLF>` ends a message,
//!   bare CR/LF flagged, size enforced without buffering what is over it.
//! - [`session`]: the command state machine.
//! - [`received`]: the `Received:` trace header.
//! - [`header`]: taking a control header (`X-Skein-Pool`) out of a message.
//! - [`client`]: the outbound side: a client connection state machine ([`ClientConn`]), reply
//!   parser, EHLO capabilities, dot-stuffing.
//! - [`outcome`]: delivery failures as data and the one function classifying them.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod address;
pub mod client;
pub mod data;
pub mod header;
pub mod outcome;
pub mod received;
pub mod reply;
pub mod session;

pub use address::{parse_path, Address, PathError};
pub use client::{ClientConn, ClientEvent, RemoteReply, TlsWish, Transaction, TransactionResult};
pub use outcome::{classify, Class, Failure, Scope, Stage, Verdict};
pub use reply::Reply;
pub use session::{
    AuthMechanism, ConnectionInfo, Envelope, Event, Session, SessionConfig, TlsInfo,
};
