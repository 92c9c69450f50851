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
    /// Creation time.
    pub created_at_ms: i64,
}
