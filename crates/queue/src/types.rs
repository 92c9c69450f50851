//! openraft type configuration and the replicated commands.

use bytes::Bytes;
use openraft::{BasicNode, Entry, TokioRuntime};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::records::{AttemptRecord, DkimKeyRecord, SuppressionRecord, TenantRecord};

/// Raft node ids.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Skein's Raft types: commands are [`Request`]s, nodes are known by their gRPC address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = BasicNode,
        Entry = Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = TokioRuntime,
);

/// A message as an edge handed it over, before it has a queue id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage {
    /// Authenticated tenant, empty when relayed by IP.
    pub tenant: String,
    /// Reverse-path, empty for `<>`.
    pub mail_from: String,
    /// Forward-paths.
    pub rcpt_to: Vec<String>,
    /// The message: shared bytes, so that cloning an entry (the recent entries served to
    /// replication and apply, a staged entry) does not copy its body. Encoded as postcard
    /// bytes, as the `Vec<u8>` it was in earlier releases.
    #[serde(with = "shared")]
    pub data: Bytes,
    /// Client address.
    pub client_ip: String,
    /// EHLO name.
    pub helo: String,
    /// Edge name.
    pub edge: String,
    /// SMTPUTF8 requested.
    pub smtputf8: bool,
    /// BODY=8BITMIME declared.
    pub body_8bit: bool,
}

/// A command replicated through the Raft log. Applying one is deterministic: everything that
/// depends on time or randomness (received time, password salt) is decided before proposing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// A group commit of messages. Ids are derived from the log index and position.
    Enqueue {
        /// Leader's clock when the batch was formed.
        received_at_ms: i64,
        /// The messages, in the order their ids are assigned.
        messages: Vec<NewMessage>,
    },
    /// Creates a tenant unless its name or username is taken.
    CreateTenant(TenantRecord),
    /// Changes a tenant's switches; `None` leaves one as it is.
    UpdateTenant {
        /// Tenant name.
        name: String,
        /// May submit.
        enabled: Option<bool>,
        /// Sends DSNs for bounces.
        dsn: Option<bool>,
    },
    /// Adds (or replaces) a suppression.
    Suppress(SuppressionRecord),
    /// Removes a suppression.
    Unsuppress {
        /// Tenant.
        tenant: String,
        /// Address (compared lower-cased).
        address: String,
    },
    /// Sets (or replaces) a tenant's DKIM key for a domain.
    SetDkimKey(DkimKeyRecord),
    /// Removes a tenant's DKIM key for a domain.
    RemoveDkimKey {
        /// Tenant.
        tenant: String,
        /// Signing domain (lower-cased).
        domain: String,
    },
    /// Forgets finished messages (envelope, recipients and their history) that finished
    /// before `before_ms`, oldest first, at most `limit` of them.
    Purge {
        /// Finish-time cutoff (exclusive).
        before_ms: i64,
        /// Most messages removed by this entry.
        limit: u32,
    },
    /// Scheduler decisions: leases and the outcomes senders reported. Policy (retry times,
    /// jitter, expiry) is decided by the scheduler before proposing, so applying is deterministic.
    Deliver {
        /// The scheduler's clock.
        now_ms: i64,
        /// Name of this MTA, for the DSNs this may generate.
        mta: String,
        /// The operations, applied in order.
        ops: Vec<DeliveryOp>,
    },
    /// A group commit like [`Request::Enqueue`] in which each message carries the submission
    /// id its edge chose, the same on every retry of one submission. A message whose
    /// submission was stored less than `dedup_window_ms` before `received_at_ms` is not
    /// stored again: it answers with the id it was stored under. Format v2 (v1 logs hold
    /// `Enqueue`, which still applies as before).
    EnqueueOnce {
        /// Leader's clock when the batch was formed.
        received_at_ms: i64,
        /// How long a submission id is remembered.
        dedup_window_ms: i64,
        /// The messages, in the order their ids are assigned.
        messages: Vec<NewMessage>,
        /// Each message's submission id, in the same order; empty for none.
        submissions: Vec<Vec<u8>>,
    },
    /// Raises the replicated format the leader may write to `version` (never lowers it).
    /// Proposed once every node runs a release that reads that format: at bootstrap, or by
    /// an operator after a rolling upgrade. Format v2.
    SetFormat {
        /// The format version.
        version: u32,
    },
    /// A change to the sending limits (format 4). `at_ms` is the leader's time, for changes
    /// that start something today (a warm-up).
    Shaping {
        /// Leader's clock.
        at_ms: i64,
        /// The change.
        cmd: crate::shaping::ShapingCommand,
    },
    /// Creates or revokes an Admin token (format 6).
    Token(crate::tokens::TokenCommand),
    /// Sets (`Some`) or clears a tenant's own suppression rule (format 7). Answers
    /// `TenantUpdated`, or `TenantNotFound` (the empty tenant, mail relayed by IP address,
    /// always exists).
    SuppressionPolicy {
        /// Tenant.
        tenant: String,
        /// The rule; `None` goes back to the leader's configuration.
        policy: Option<crate::records::TenantSuppressionPolicy>,
    },
    /// Records the cluster's id in the replicated state unless it has one (format 7): how a
    /// cluster founded before ids existed gets one that every node agrees on (the first
    /// applied wins, whichever leaders proposed).
    ClusterId(String),
}

/// The newest replicated format this release reads and, once the cluster's format says so,
/// writes. 1: release 0.1.0. 2: [`Request::EnqueueOnce`] and [`Request::SetFormat`]; a
/// `Delivered` report applies under any lease of a recipient that is not final. 3: command
/// times never go backwards (each is raised to the latest applied before it). 4: sending limits
/// ([`Request::Shaping`], [`DeliveryOp::LeaseShaped`], the `shaping` column family). 5: a
/// message may choose a pool its tenant is allowed (`ShapingCommand::AllowPools`): it is
/// queued as the stream `tenant+pool`, which uses its tenant's settings and suppression list.
/// 6: Admin tokens ([`Request::Token`]). 7: suppression rules and deletion
/// ([`Disposition::BounceWith`], [`Disposition::Delete`]): the bounce of a message with a null
/// reverse path (a DSN) suppresses nothing, suppressions may expire, domain-level failures
/// suppress after repeats, and a delivery clears an address's count of them; the cluster id
/// is replicated ([`Request::ClusterId`]). Behaviour
/// that changes how an existing command applies is decided by the replicated format, never
/// by the release, so replicas of different releases apply every entry alike.
pub const FORMAT: u32 = 7;

/// The first format in which a message may choose a pool (streams `tenant+pool` use their
/// tenant's settings; `ShapingCommand::AllowPools`).
pub const POOL_CHOICE_FORMAT: u32 = 5;

/// The first format with Admin tokens ([`Request::Token`]).
pub const TOKENS_FORMAT: u32 = 6;

/// The first format that replicates the cluster id ([`Request::ClusterId`]).
pub const CLUSTER_ID_FORMAT: u32 = 7;

/// The first format with suppression rules and deletion ([`Disposition::BounceWith`],
/// [`Disposition::Delete`]).
pub const SUPPRESSION_FORMAT: u32 = 7;

// The replicated format: commands are postcard-encoded enums, so variants and their fields
// are never changed or reordered. A new shape of a command is a new variant added at the end
// (as `EnqueueOnce` is), and `tests/format.rs` proves every older entry still decodes and
// applies to the same state.

/// One scheduler decision in a [`Request::Deliver`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeliveryOp {
    /// Lease recipients (of one message, one domain) to a sender. Recipients that are no longer
    /// due or are validly leased elsewhere are skipped.
    Lease {
        /// Token the sender's reports must carry.
        lease: u64,
        /// Sender node name.
        sender: String,
        /// Source IP to use.
        source_ip: String,
        /// Lease expiry.
        expires_ms: i64,
        /// Recipient keys.
        rcpts: Vec<String>,
    },
    /// Record an outcome for a recipient.
    Report {
        /// The lease it was attempted under; `None` for the scheduler's own decisions (expiry
        /// of a recipient no sender could take).
        lease: Option<u64>,
        /// Recipient key.
        rcpt: String,
        /// The attempt, if one was made.
        attempt: Option<AttemptRecord>,
        /// What happens next.
        disposition: Disposition,
    },
    /// Records the MX host a sender reached for `domain` (format 4), so providers are also
    /// recognised by MX (a custom domain hosted at Gmail counts as Gmail) on every node, a new
    /// leader included. Classification is decided again from it whenever rules change.
    LearnMx {
        /// Recipient domain.
        domain: String,
        /// The MX host (lower-case, no trailing dot).
        mx: String,
    },
    /// [`DeliveryOp::Lease`] within the sending limits (format 4): granted only for as many
    /// recipients as the IP's cap for the day and its limit for `provider` this hour leave,
    /// and counted against both.
    LeaseShaped {
        /// Token the sender's reports must carry.
        lease: u64,
        /// Sender node name.
        sender: String,
        /// Source IP to use: one of the cluster's IP records.
        source_ip: String,
        /// The provider the recipients' domain belongs to.
        provider: String,
        /// Lease expiry.
        expires_ms: i64,
        /// Recipient keys.
        rcpts: Vec<String>,
    },
}

impl DeliveryOp {
    /// This op as a cluster at `format` reads it (see [`Disposition::for_format`]); `None`
    /// when it has no meaning there.
    pub fn for_format(self, format: u32) -> Option<Self> {
        match self {
            Self::Report {
                lease,
                rcpt,
                attempt,
                disposition,
            } => Some(Self::Report {
                lease,
                rcpt,
                attempt,
                disposition: disposition.for_format(format)?,
            }),
            other => Some(other),
        }
    }
}

/// What happens to a recipient after a report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Disposition {
    /// Delivered.
    Delivered,
    /// Try again at `at_ms`; `counted` says whether this was a real attempt (a "slow down" is
    /// not).
    Retry {
        /// Next attempt.
        at_ms: i64,
        /// Adds one to the recipient's attempts.
        counted: bool,
    },
    /// Bounce, adding the address to the tenant's suppression list if `suppress`.
    Bounce {
        /// Hard bounce: suppress the address.
        suppress: bool,
    },
    /// Too old: give up.
    Expire,
    /// Bounce, adding the address to the tenant's suppression list as `rule` says (format
    /// 7). The bounce of a message with a null reverse path (a DSN) never suppresses: its
    /// recipient is a return path, not an address the tenant mails.
    BounceWith(SuppressRule),
    /// Deleted by an operator (format 7): final, no DSN.
    Delete,
}

impl Disposition {
    /// This disposition as a cluster at `format` reads it: before
    /// [`SUPPRESSION_FORMAT`], a [`Disposition::BounceWith`] is the plain bounce that
    /// suppresses at once for [`SuppressRule::Now`] (and never else). `None`: there is no
    /// such decision before that format ([`Disposition::Delete`]).
    pub fn for_format(self, format: u32) -> Option<Self> {
        if format >= SUPPRESSION_FORMAT {
            return Some(self);
        }
        match self {
            Self::BounceWith(rule) => Some(Self::Bounce {
                suppress: matches!(rule, SuppressRule::Now { .. }),
            }),
            Self::Delete => None,
            other => Some(other),
        }
    }

    /// Whether this ends in a bounce.
    pub fn is_bounce(&self) -> bool {
        matches!(self, Self::Bounce { .. } | Self::BounceWith(_))
    }
}

/// How a bounce adds its address to the tenant's suppression list (format 7). Durations are
/// in ms; an `expire_after_ms` of 0 keeps the entry until it is removed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SuppressRule {
    /// Never (a failure that says nothing about the address).
    Never,
    /// At once: the address itself is bad (unknown user and the like).
    Now {
        /// How long the entry lasts.
        expire_after_ms: i64,
    },
    /// After `strikes` bounces of this kind (the domain or its DNS failed), the first at
    /// least `span_ms` before the latest; a count whose first bounce is older than
    /// `window_ms` starts again, and a delivery to the address clears it.
    After {
        /// Bounces needed.
        strikes: u32,
        /// Least time between the first and the latest.
        span_ms: i64,
        /// How long a count lasts from its first bounce.
        window_ms: i64,
        /// How long the entry lasts.
        expire_after_ms: i64,
    },
}

/// The result of applying a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to report (blank and membership entries).
    None,
    /// Queue ids of an [`Request::Enqueue`], in order.
    Enqueued {
        /// One id per message.
        ids: Vec<String>,
        /// Recipients not queued because the tenant suppresses them: (position of the message
        /// in the batch, address).
        suppressed: Vec<(u32, String)>,
        /// Positions of the messages that repeated an earlier submission (their ids are the
        /// earlier ones; nothing was stored for them).
        repeats: Vec<u32>,
    },
    /// The tenant was created.
    TenantCreated,
    /// A tenant with that name or username exists already.
    TenantExists,
    /// The tenant was updated.
    TenantUpdated,
    /// No tenant of that name.
    TenantNotFound,
    /// A suppression was added, or removed (`false` when there was none).
    Suppression(bool),
    /// A DKIM key was set, or removed (`false` when there was none).
    DkimKey(bool),
    /// How many finished messages a [`Request::Purge`] removed.
    Purged(u32),
    /// The cluster's format after a [`Request::SetFormat`].
    Format(u32),
    /// The result of a [`Request::Deliver`].
    Delivered {
        /// Per lease op, in order: the recipient keys actually leased.
        leased: Vec<(u64, Vec<String>)>,
        /// Recipient keys of the reports applied (the rest were stale or about final
        /// recipients).
        applied: Vec<String>,
        /// Ids of the DSN messages generated.
        dsns: Vec<String>,
    },
    /// How a [`Request::Shaping`] applied.
    Shaped(crate::shaping::ShapingOutcome),
    /// How a [`Request::Token`] applied.
    Token(crate::tokens::TokenOutcome),
    /// The cluster id in force after a [`Request::ClusterId`].
    ClusterId(String),
}

/// Encodes `v` with postcard into a vector of exactly its size: one pass sizes it, one
/// writes it. (Grown as it is written, a vector holding a 100 KB body is reallocated and
/// copied several times over, each time into fresh, unmapped memory.)
pub fn encode<T: serde::Serialize + ?Sized>(v: &T) -> postcard::Result<Vec<u8>> {
    let n = postcard::experimental::serialized_size(v)?;
    postcard::to_io(v, Vec::with_capacity(n))
}

/// Decodes `buf` with postcard; the message bodies in it become slices of `buf` instead of
/// copies (see [`shared`]). Use it where a received or read buffer holds 100 KB bodies.
///
/// A body decoded so keeps the whole of `buf`'s allocation alive while it lives: bounded where
/// entries are held (the recent entries, staged uploads) by their budgets in entry bytes,
/// which a received buffer may exceed by its spare capacity (up to about its own size with
/// tonic's decoder, spare pages that are never written).
pub fn decode_shared<T: DeserializeOwned>(buf: &Bytes) -> postcard::Result<T> {
    shared::SOURCE.with(|s| {
        let outer = s.replace(Some(buf.clone()));
        let r = postcard::from_bytes(buf);
        s.replace(outer);
        r
    })
}

/// Serde for message bodies held as [`Bytes`]: written as bytes; read as a slice of the buffer
/// being decoded when [`decode_shared`] decodes it (zero-copy), else as a copy.
pub mod shared {
    use std::cell::RefCell;

    use bytes::Bytes;
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    thread_local! {
        /// The buffer [`super::decode_shared`] is decoding on this thread.
        pub(super) static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
    }

    /// Writes `b` as bytes.
    pub fn serialize<S: Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    /// Reads bytes: a slice of the buffer [`super::decode_shared`] decodes when they lie in
    /// it, otherwise a copy.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Bytes, D::Error> {
        d.deserialize_bytes(BytesVisitor)
    }

    struct BytesVisitor;

    impl<'de> Visitor<'de> for BytesVisitor {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("bytes")
        }

        fn visit_borrowed_bytes<E: Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            Ok(SOURCE.with(|s| match s.borrow().as_ref() {
                Some(src) if within(src, v) => src.slice_ref(v),
                _ => Bytes::copy_from_slice(v),
            }))
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
            while let Some(b) = seq.next_element()? {
                v.push(b);
            }
            Ok(Bytes::from(v))
        }
    }

    /// Whether `v` lies inside `src`'s memory ([`Bytes::slice_ref`] panics otherwise).
    fn within(src: &[u8], v: &[u8]) -> bool {
        let (s, e) = (src.as_ptr() as usize, src.as_ptr() as usize + src.len());
        let (a, b) = (v.as_ptr() as usize, v.as_ptr() as usize + v.len());
        !v.is_empty() && s <= a && b <= e
    }
}

/// The queue id of the `pos`-th message of the batch at log index `index`: 16 upper-case hex
/// digits that sort in commit order.
///
/// Positions stay below 65,536: batches are capped at 65,535 messages
/// (`max_batch_messages`), and a scheduling round can fail at most 64,096 messages, so it
/// generates fewer DSNs than that.
pub fn message_id(index: u64, pos: usize) -> String {
    debug_assert!(pos <= 0xFFFF, "position {pos} does not fit a queue id");
    format!("{index:012X}{pos:04X}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The body's encoding is the one `Vec<u8>` with serde_bytes had (earlier releases).
    #[derive(Serialize)]
    struct OldBody {
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct NewBody {
        #[serde(with = "shared")]
        data: Bytes,
    }

    #[test]
    fn bodies_encode_as_before_and_decode_as_slices_of_the_buffer() {
        let body: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
        let old = encode(&OldBody { data: body.clone() }).unwrap();
        let new = encode(&NewBody {
            data: Bytes::from(body.clone()),
        })
        .unwrap();
        assert_eq!(old, new);

        let buf = Bytes::from(old);
        let shared: NewBody = decode_shared(&buf).unwrap();
        assert_eq!(shared.data, body);
        let range = buf.as_ptr_range();
        assert!(
            range.contains(&shared.data.as_ptr()),
            "a slice of the buffer"
        );

        let copied: NewBody = postcard::from_bytes(&buf).unwrap();
        assert_eq!(copied.data, body);
        assert!(
            !range.contains(&copied.data.as_ptr()),
            "outside decode_shared: a copy"
        );

        // The empty body, and a body decoded after (not inside) a shared decode.
        let empty: NewBody = decode_shared(&Bytes::from(
            encode(&NewBody { data: Bytes::new() }).unwrap(),
        ))
        .unwrap();
        assert!(empty.data.is_empty());
        let again: NewBody = postcard::from_bytes(&buf).unwrap();
        assert!(!range.contains(&again.data.as_ptr()));
    }

    #[test]
    fn ids_sort_in_commit_order() {
        let a = message_id(9, 65535);
        let b = message_id(10, 0);
        assert!(a < b);
        assert_eq!(a.len(), 16);
        assert_eq!(message_id(0x1_0000_0000, 1), "0001000000000001");
    }
}
