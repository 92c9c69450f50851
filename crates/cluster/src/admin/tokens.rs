//! Admin tokens: their secrets (made on the leader, shown once, kept only as a SHA-256), names
//! and scopes as the API spells them, and the lookup the auth layer makes on every Admin call.

use base64::Engine as _;
use ring::rand::SecureRandom as _;
use skein_proto::admin::Token;
use skein_queue::{TokenRecord, TokenScope};

use crate::auth::{Scope, Tokens};
use crate::error::ClusterError;
use crate::route::Cluster;

/// Every secret starts with this, so a leaked one is easy to recognize (and to scan for).
pub const SECRET_PREFIX: &str = "skn_";

/// Longest secret worth hashing: anything longer is no token of ours.
const MAX_SECRET: usize = 128;

/// A new secret: the prefix and 32 random bytes from the operating system, base64url.
pub fn new_secret() -> Result<String, ClusterError> {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| ClusterError::Raft("no randomness from the operating system".into()))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// What the cluster keeps of a secret.
pub fn sha256(secret: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .to_vec()
}

/// A token name: 1 to 64 letters, digits, '-', '_' or '.'.
pub fn token_name(name: &str) -> Result<String, ClusterError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(name.to_string())
    } else {
        Err(ClusterError::Invalid {
            field: "name",
            reason: format!("{name:?}: 1 to 64 letters, digits, '-', '_' or '.' make a token name"),
        })
    }
}

/// `read` or `admin`.
pub fn scope(s: &str) -> Result<TokenScope, ClusterError> {
    match s {
        "read" => Ok(TokenScope::Read),
        "admin" => Ok(TokenScope::Admin),
        other => Err(ClusterError::Invalid {
            field: "scope",
            reason: format!("{other:?}: \"read\" (calls that change nothing) or \"admin\""),
        }),
    }
}

fn scope_name(s: TokenScope) -> &'static str {
    match s {
        TokenScope::Read => "read",
        TokenScope::Admin => "admin",
    }
}

/// A token as the API shows it (never its hash).
pub fn token_proto(t: &TokenRecord) -> Token {
    Token {
        name: t.name.clone(),
        scope: scope_name(t.scope).into(),
        created_at_ms: t.created_ms,
    }
}

/// Tokens as this node applied them: a revocation counts here once it is applied here (at
/// once on the node that proposed it, within a replication round trip on the others).
impl Tokens for Cluster {
    fn lookup(&self, secret: &str) -> Option<(String, Scope)> {
        if !secret.starts_with(SECRET_PREFIX) || secret.len() > MAX_SECRET {
            return None;
        }
        match self.reader.token_by_hash(&sha256(secret)) {
            Ok(t) => t.map(|t| {
                let scope = match t.scope {
                    TokenScope::Read => Scope::Read,
                    TokenScope::Admin => Scope::Admin,
                };
                (t.name, scope)
            }),
            Err(e) => {
                tracing::error!(error = %e, "reading Admin tokens");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_random_prefixed_and_hashed() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(SECRET_PREFIX) && a.len() == 4 + 43, "{a}");
        assert_eq!(sha256(&a).len(), 32);
        assert_ne!(sha256(&a), sha256(&b));
    }

    #[test]
    fn names_and_scopes_are_checked() {
        assert!(token_name("ci-deploy.2").is_ok());
        for bad in ["", "a b", "tab\t", &"x".repeat(65), "ü"] {
            assert!(token_name(bad).is_err(), "{bad:?}");
        }
        assert_eq!(scope("read").unwrap(), TokenScope::Read);
        assert!(scope("root").unwrap_err().to_string().contains("\"read\""));
    }
}
