//! Tenant state cached from the cluster: logins (verified locally with argon2) and DKIM keys.

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use argon2::PasswordHash;
use skein_smtp::session::AuthFailure;

use crate::dkim::SigningKeys;
use crate::queue::QueueClient;

/// A password check to run.
type Job = Box<dyn FnOnce() + Send>;

/// The threads that check passwords: one per core, kept for the process's life. Argon2 needs
/// ~19 MiB of working memory per check, and the allocator keeps a freed block with the thread
/// that used it: run on tokio's blocking pool (whichever of its up to 512 threads was free),
/// an AUTH flood grew the edge from 30 MB to 490 MB. On these threads it stays one block each.
#[derive(Debug)]
struct Checkers {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Checkers {
    fn spawn(n: usize) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..n {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("skein-auth-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "starting a password-check thread");
            }
        }
        Self { jobs }
    }

    /// Runs `f` on a checker thread; `None` if none runs.
    async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        rx.await.ok()
    }
}

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
    checkers: Checkers,
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
            checkers: Checkers::spawn(cores),
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
                let _ = self.checkers.run(dummy_verify).await;
                return Err(AuthFailure::Invalid);
            }
            Some(Some(l)) => l,
        };
        let password = password.to_string();
        let hash = login.hash.clone();
        let Ok(_permit) = self.checks.acquire().await else {
            return Err(AuthFailure::Temporary);
        };
        let ok = self
            .checkers
            .run(move || check(&hash, password.as_bytes()))
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
    check(DUMMY, b"x");
}

/// Most argon2 memory a stored hash may ask for, in KiB (the default is 19 MiB): a hash asking
/// more is refused rather than computed.
const MAX_M_COST_KIB: u32 = 64 * 1024;

thread_local! {
    /// Argon2's working memory, allocated once per checker thread and reused by every check.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `password` matches the PHC-format argon2 `hash`, computed in this thread's reused
/// memory (so no check allocates its ~19 MiB anew); the comparison takes constant time.
fn check(hash: &str, password: &[u8]) -> bool {
    let Ok(h) = PasswordHash::new(hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        argon2::Algorithm::try_from(h.algorithm),
        argon2::Params::try_from(&h),
    ) else {
        return false;
    };
    let version = match h.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Some(salt), Some(expected)) = (h.salt, h.hash) else {
        return false;
    };
    if params.m_cost() > MAX_M_COST_KIB {
        return false;
    }
    let mut salt_buf = [0u8; 64];
    let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
        return false;
    };
    let blocks = params.block_count();
    let argon = argon2::Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = BLOCKS.with(|b| {
        let mut b = b.borrow_mut();
        b.resize(blocks, argon2::Block::new());
        argon
            .hash_password_into_with_memory(password, salt, &mut out, &mut b[..])
            .is_ok()
    });
    computed && argon2::password_hash::Output::new(&out).is_ok_and(|o| o == expected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, SaltString};

    #[test]
    fn checks_match_argon2s_own_verification() {
        let salt = SaltString::encode_b64(b"fixed-salt-1234").unwrap();
        let hash = argon2::Argon2::default()
            .hash_password(b"right-password", &salt)
            .unwrap()
            .to_string();
        assert!(check(&hash, b"right-password"));
        assert!(!check(&hash, b"wrong-password"));
        assert!(!check(&hash, b""));
        // The same memory serves the next check, of other parameters too.
        let small = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &salt)
        .unwrap()
        .to_string();
        assert!(check(&small, b"pw"));
        assert!(check(&hash, b"right-password"));
        // Not a hash, or one asking for more memory than allowed: no.
        assert!(!check("plaintext", b"plaintext"));
        let huge = hash.replace("m=19456", "m=1048576");
        assert!(!check(&huge, b"right-password"));
    }
}
