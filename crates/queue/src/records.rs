//! Records kept in the state machine's column families.

use serde::{Deserialize, Serialize};

/// A queued message's envelope and bookkeeping (the body is stored apart).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Queue id.
    pub id: String,
    /// Tenant, empty when relayed by IP.
    pub tenant: String,
    /// Reverse-path, empty for `<>`.
    pub mail_from: String,
    /// Forward-paths.
    pub rcpt_to: Vec<String>,
    /// Body size in bytes.
    pub size: u64,
    /// When the batch was formed, by the leader's clock.
    pub received_at_ms: i64,
    /// Client address.
    pub client_ip: String,
    /// EHLO name.
    pub helo: String,
    /// Edge name.
    pub edge: String,
    /// Log index it was committed at.
    pub log_index: u64,
    /// SMTPUTF8 requested.
    pub smtputf8: bool,
    /// BODY=8BITMIME declared.
    pub body_8bit: bool,
    /// Recipients not yet in a final state; the body is deleted when this reaches zero.
    pub remaining: u32,
    /// For a delivery status notification: the id of the message it reports on.
    pub dsn_for: Option<String>,
}

/// The fields of a [`MessageRecord`]'s encoding up to its size, borrowed from it: the
/// scheduler reads the size of every message it plans, and decoding the whole record
/// allocated each of its strings for one number. (Fields are only ever added after the
/// existing ones, so the prefix holds in every format.)
#[derive(Debug, Deserialize)]
pub(crate) struct MessageSize<'a> {
    _id: &'a str,
    _tenant: &'a str,
    _mail_from: &'a str,
    #[serde(borrow)]
    _rcpt_to: Vec<&'a str>,
    /// [`MessageRecord::size`].
    pub size: u64,
}

/// A tenant and its SMTP login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantRecord {
    /// Name, 1-64 of `[A-Za-z0-9._-]`.
    pub name: String,
    /// SMTP AUTH username.
    pub username: String,
    /// PHC-format argon2id hash.
    pub password_hash: String,
    /// May submit.
    pub enabled: bool,
    /// Bounces of this tenant's mail send a DSN to the return path.
    pub dsn: bool,
    /// Creation time.
    pub created_at_ms: i64,
}

/// The key of a message's `idx`-th recipient: its id followed by four hex digits.
pub fn rcpt_key(message_id: &str, idx: usize) -> String {
    format!("{message_id}{idx:04X}")
}

/// The domain of an address, lower-cased (everything after the last `@`).
pub fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(address)
        .to_ascii_lowercase()
}

/// A remote server's reply, or a locally made one describing a failure to get one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// Three-digit code.
    pub code: u16,
    /// RFC 3463 enhanced status code (`5.1.1`), empty when the server gave none.
    pub enhanced: String,
    /// Text, lines joined with a space.
    pub text: String,
}

impl std::fmt::Display for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

/// How one delivery attempt went for one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttemptResult {
    /// The remote server took responsibility (2xx after the message).
    Delivered,
    /// A temporary failure: try again later.
    Transient,
    /// A permanent failure: bounce.
    Permanent,
    /// The remote asked to slow down: retry soon, not counted as an attempt.
    Throttled,
}

/// One delivery attempt of one recipient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the sender finished the attempt.
    pub at_ms: i64,
    /// Sender node name.
    pub sender: String,
    /// Source IP the connection came from.
    pub source_ip: String,
    /// MX host (or route) tried last, with the address used.
    pub mx: String,
    /// The reply that decided it.
    pub reply: Reply,
    /// The classification.
    pub result: AttemptResult,
}

/// A recipient handed to a sender until `expires_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Token chosen by the scheduler; reports must carry it.
    pub id: u64,
    /// Sender node name.
    pub sender: String,
    /// Source IP the sender was told to use.
    pub source_ip: String,
    /// When the lease lapses and the recipient may be leased again.
    pub expires_ms: i64,
}

/// Where a recipient is in its delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RcptState {
    /// Waiting for its first attempt.
    Queued,
    /// Handed to a sender.
    Leased(Lease),
    /// Failed temporarily; due again at the record's `due_ms`.
    Deferred,
    /// Delivered. Final.
    Delivered,
    /// Failed permanently. Final.
    Bounced,
    /// Still failing at the maximum age. Final.
    Expired,
    /// On the tenant's suppression list: never attempted. Final.
    Suppressed,
    /// Deleted by an operator: not sent, no DSN. Final (format 7).
    Deleted,
}

impl RcptState {
    /// True for the states a recipient never leaves.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Self::Delivered | Self::Bounced | Self::Expired | Self::Suppressed | Self::Deleted
        )
    }

    /// Lower-case name, for events and the Admin API.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Leased(_) => "leased",
            Self::Deferred => "deferred",
            Self::Delivered => "delivered",
            Self::Bounced => "bounced",
            Self::Expired => "expired",
            Self::Suppressed => "suppressed",
            Self::Deleted => "deleted",
        }
    }
}

/// One recipient of one message and its delivery state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RcptRecord {
    /// [`rcpt_key`] of the recipient.
    pub key: String,
    /// Queue id of the message.
    pub message_id: String,
    /// Forward-path.
    pub address: String,
    /// Its domain, lower-cased.
    pub domain: String,
    /// Tenant of the message.
    pub tenant: String,
    /// State.
    pub state: RcptState,
    /// Counted attempts so far.
    pub attempts: u32,
    /// When it is due: next attempt, or lease expiry while leased. Indexed in the `due` column
    /// family while the state is not final.
    pub due_ms: i64,
    /// When the message was received, for the maximum age.
    pub received_at_ms: i64,
    /// The last reply, if any.
    pub last_reply: Option<Reply>,
    /// Attempts, oldest first (the most recent [`MAX_HISTORY`] are kept).
    pub history: Vec<AttemptRecord>,
    /// When it reached a final state.
    pub final_at_ms: Option<i64>,
}

/// Attempts kept per recipient.
pub const MAX_HISTORY: usize = 64;

/// A tenant's DKIM key for one signing domain (at most one per tenant and domain).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DkimKeyRecord {
    /// Tenant.
    pub tenant: String,
    /// Signing domain (`d=`), lower-cased; also used for its subdomains.
    pub domain: String,
    /// Selector (`s=`).
    pub selector: String,
    /// `rsa-sha256` or `ed25519-sha256`.
    pub algorithm: String,
    /// The private key, PEM.
    pub private_key: String,
    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub dns_record: String,
    /// When it was set.
    pub created_at_ms: i64,
}

/// An address the tenant must not send to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuppressionRecord {
    /// Tenant.
    pub tenant: String,
    /// Address, lower-cased.
    pub address: String,
    /// Why: the bounce reply, or an operator's note.
    pub reason: String,
    /// When it was added.
    pub at_ms: i64,
}

/// A suppression as stored: the record, then (from format 7, for entries that expire) the
/// time it lapses. Entries written before format 7 are the bare record and never lapse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SuppressionEntry {
    /// The suppression.
    pub record: SuppressionRecord,
    /// When it stops applying (Unix ms), if it does.
    pub expires_at_ms: Option<i64>,
}

impl SuppressionEntry {
    /// Whether it still applies at `now_ms`.
    pub fn applies_at(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_none_or(|e| now_ms < e)
    }

    /// The stored form: the postcard record, followed by the expiry when there is one.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = postcard::to_allocvec(&self.record).expect("postcard encodes plain data");
        if let Some(e) = self.expires_at_ms {
            v.extend(postcard::to_allocvec(&e).expect("postcard encodes plain data"));
        }
        v
    }

    /// Reads the stored form (both shapes).
    pub fn decode(v: &[u8]) -> Result<Self, postcard::Error> {
        let (record, rest) = postcard::take_from_bytes::<SuppressionRecord>(v)?;
        let expires_at_ms = if rest.is_empty() {
            None
        } else {
            Some(postcard::from_bytes::<i64>(rest)?)
        };
        Ok(Self {
            record,
            expires_at_ms,
        })
    }
}

/// A tenant's own rule for which domain-level bounces suppress (format 7), in place of the
/// leader's `[node.delivery.suppression]`. Durations in ms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantSuppressionPolicy {
    /// Domain-level bounces before an address is suppressed; 0: never.
    pub domain_failures: u32,
    /// Least time between the first and the latest of them.
    pub domain_failure_span_ms: i64,
    /// A count whose first bounce is older starts again.
    pub domain_failure_window_ms: i64,
    /// How long an entry a bounce adds lasts; 0: until removed.
    pub expire_after_ms: i64,
}

/// Bounces of one address that count towards suppressing it under
/// [`crate::SuppressRule::After`] (format 7).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StrikeRecord {
    /// Bounces counted.
    pub count: u32,
    /// When the first was.
    pub first_ms: i64,
    /// When the latest was.
    pub last_ms: i64,
    /// The latest reply.
    pub reason: String,
}

#[cfg(test)]
mod size_tests {
    use super::*;

    #[test]
    fn the_size_prefix_reads_the_size_of_a_whole_record() {
        let rec = MessageRecord {
            id: "0000000000010000".into(),
            tenant: "acme".into(),
            mail_from: "a@example.com".into(),
            rcpt_to: vec!["b@example.net".into(), "c@example.org".into()],
            size: 123_456_789,
            received_at_ms: 5,
            client_ip: "127.0.0.1".into(),
            helo: "client.example".into(),
            edge: "edge-1".into(),
            log_index: 1,
            smtputf8: true,
            body_8bit: false,
            remaining: 2,
            dsn_for: Some("0000000000020000".into()),
        };
        let v = postcard::to_allocvec(&rec).unwrap();
        let prefix: MessageSize<'_> = postcard::from_bytes(&v).unwrap();
        assert_eq!(prefix.size, 123_456_789);
    }
}
