//! Admin tokens in the replicated state (format 6): each token's name, scope and the SHA-256
//! of its secret — never the secret, which only its creator saw once. Stored in the `settings`
//! column family under `token/` + name, so snapshots carry them like every other setting.

use rocksdb::{Direction, IteratorMode, DB};
use serde::{Deserialize, Serialize};

use crate::store::{cf, dec, CF_SETTINGS};
use crate::QueueError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenScope {
    /// Calls that change nothing.
    Read,
    /// Every Admin call.
    Admin,
}

/// An Admin token as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its name, unique (`ci-deploy`, `alice`).
    pub name: String,
    /// Its powers.
    pub scope: TokenScope,
    /// SHA-256 of the secret.
    pub secret_sha256: Vec<u8>,
    /// When it was created (leader's clock).
    pub created_ms: i64,
}

/// A change to the Admin tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenCommand {
    /// Adds a token (refused when the name is taken).
    Create(TokenRecord),
    /// Removes a token: calls with it are refused from then on.
    Revoke {
        /// Its name.
        name: String,
    },
}

/// How a [`TokenCommand`] applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenOutcome {
    /// Done.
    Done,
    /// A token of that name exists.
    Exists,
    /// No token of that name.
    NotFound,
}

const PREFIX: &[u8] = b"token/";

/// Key of token `name`.
pub(crate) fn token_key(name: &str) -> Vec<u8> {
    let mut k = PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Every token, by name.
pub(crate) fn all(db: &DB) -> Result<Vec<TokenRecord>, QueueError> {
    let mut out = Vec::new();
    let it = db.iterator_cf(
        cf(db, CF_SETTINGS),
        IteratorMode::From(PREFIX, Direction::Forward),
    );
    for kv in it {
        let (k, v) = kv?;
        if !k.starts_with(PREFIX) {
            break;
        }
        out.push(dec(&v).map_err(|source| QueueError::Corrupt {
            cf: CF_SETTINGS,
            source,
        })?);
    }
    Ok(out)
}
