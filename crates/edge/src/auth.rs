//! Tenant state cached from the cluster: logins (verified locally with argon2) and DKIM keys.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use argon2::{PasswordHash, PasswordVerifier};
use skein_smtp::session::AuthFailure;

use crate::dkim::SigningKeys;
use crate::queue::QueueClient;

#[derive(Debug, Clone)]
struct Login {
    tenant: String,
    hash: String,
    enabled: bool,
}

/// The credential cache.
#[derive(Debug)]
pub struct Credentials {
    queue: QueueClient,
    /// Password checks at once (argon2: ~19 MiB and a core's worth of work each): one per
    /// core, so a flood of AUTH attempts waits instead of exhausting memory.
    checks: tokio::sync::Semaphore,
    by_user: RwLock<Option<HashMap<String, Login>>>,
    last_refresh: RwLock<Option<Instant>>,
    signing: SigningKeys,
}

impl Credentials {
    /// An empty cache filled from `queue`.
    pub fn new(queue: QueueClient) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            queue,
            checks: tokio::sync::Semaphore::new(cores),
            by_user: RwLock::new(None),
            last_refresh: RwLock::new(None),
            signing: SigningKeys::default(),
        }
    }

    /// The tenants' DKIM keys, refreshed with the logins.
    pub fn signing(&self) -> &SigningKeys {
        &self.signing
    }

    /// Reloads every tenant's login and DKIM key from the cluster.
    pub async fn refresh(&self) -> Result<(), tonic::Status> {
        let resp = self.queue.credentials().await?;
        self.signing.load(resp.signing_keys);
        let map = resp
            .tenants
            .into_iter()
            .map(|t| {
                (
                    t.username,
                    Login {
                        tenant: t.name,
                        hash: t.password_hash,
                        enabled: t.enabled,
                    },
                )
            })
            .collect();
        *self.by_user.write().unwrap_or_else(|p| p.into_inner()) = Some(map);
        *self.last_refresh.write().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        Ok(())
    }

    fn lookup(&self, user: &str) -> Option<Option<Login>> {
        let g = self.by_user.read().unwrap_or_else(|p| p.into_inner());
        g.as_ref().map(|m| m.get(user).cloned())
    }

    /// Checks a username and password; `Ok(tenant)` on success.
    pub async fn verify(&self, user: &str, password: &str) -> Result<String, AuthFailure> {
        let mut found = self.lookup(user);
        // Unknown user or empty cache: a tenant may have been created a moment ago. Refresh,
        // at most once a second so failed logins cannot hammer the cluster.
        let stale = self
            .last_refresh
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() > Duration::from_secs(1));
        if !matches!(found, Some(Some(_))) && stale {
            if self.refresh().await.is_err() && found.is_none() {
                return Err(AuthFailure::Temporary);
            }
            found = self.lookup(user);
        }
        let login = match found {
            None => return Err(AuthFailure::Temporary),
            Some(None) => {
                // Spend the same work as a real check, so timing does not reveal usernames.
                let Ok(_permit) = self.checks.acquire().await else {
                    return Err(AuthFailure::Temporary);
                };
                let _ = tokio::task::spawn_blocking(dummy_verify).await;
                return Err(AuthFailure::Invalid);
            }
            Some(Some(l)) => l,
        };
        let password = password.to_string();
        let hash = login.hash.clone();
        let Ok(_permit) = self.checks.acquire().await else {
            return Err(AuthFailure::Temporary);
        };
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    argon2::Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && login.enabled {
            Ok(login.tenant)
        } else {
            Err(AuthFailure::Invalid)
        }
    }
}

fn dummy_verify() {
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0$yuvaWf1pYIwgzC2bC+UkVRCWG2UbaUn9NhgKbrr4aZM";
    if let Ok(h) = PasswordHash::new(DUMMY) {
        let _ = argon2::Argon2::default().verify_password(b"x", &h);
    }
}
