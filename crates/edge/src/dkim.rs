//! DKIM signing at the edge: the tenants' keys cached from the cluster, chosen by the message's
//! `From:` domain.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use skein_dkim::{PrivateKey, Signer};
use skein_proto::ingest::SigningKey;

/// A key as the cluster sent it, to tell whether a refresh changed it.
#[derive(Debug, PartialEq, Eq)]
struct Source {
    selector: String,
    pem: String,
}

#[derive(Debug)]
struct Entry {
    source: Source,
    signer: Arc<Signer>,
}

/// The signing keys by tenant and domain.
#[derive(Debug, Default)]
pub struct SigningKeys {
    keys: RwLock<HashMap<(String, String), Arc<Entry>>>,
}

impl SigningKeys {
    /// Replaces the cache with `keys`. Keys that did not change are kept as parsed; keys that
    /// do not parse (they were checked when set, so this means a newer format) are skipped
    /// with a warning.
    pub fn load(&self, keys: Vec<SigningKey>) {
        let old = self.keys.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut new = HashMap::with_capacity(keys.len());
        for k in keys {
            let id = (k.tenant, k.domain);
            let source = Source {
                selector: k.selector,
                pem: k.private_key,
            };
            if let Some(e) = old.get(&id).filter(|e| e.source == source) {
                new.insert(id, e.clone());
                continue;
            }
            let signer = PrivateKey::from_pem(&source.pem)
                .and_then(|key| Signer::new(&id.1, &source.selector, key));
            match signer {
                Ok(s) => {
                    new.insert(
                        id,
                        Arc::new(Entry {
                            source,
                            signer: Arc::new(s),
                        }),
                    );
                }
                Err(e) => {
                    tracing::warn!(tenant = %id.0, domain = %id.1, %e, "DKIM key unusable")
                }
            }
        }
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = new;
    }

    /// The signer for `tenant`'s mail from `domain`: the key of the domain itself, else of the
    /// nearest parent domain that has one (a key for example.com signs news.example.com, which
    /// DMARC's relaxed alignment accepts).
    pub fn signer(&self, tenant: &str, domain: &str) -> Option<Arc<Signer>> {
        let keys = self.keys.read().unwrap_or_else(|p| p.into_inner());
        if keys.is_empty() {
            return None;
        }
        let mut d = domain;
        loop {
            if let Some(e) = keys.get(&(tenant.to_string(), d.to_string())) {
                return Some(e.signer.clone());
            }
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent,
                _ => return None,
            }
        }
    }

    /// The signer for `tenant`'s `message`, chosen by its `From:` domain.
    pub fn signer_for(&self, tenant: &str, message: &[u8]) -> Option<Arc<Signer>> {
        self.signer(tenant, &skein_dkim::from_domain(message)?)
    }
}

/// The `DKIM-Signature:` header for `message`; `None` (logged) when signing fails, and the
/// message goes unsigned rather than not at all.
pub fn sign(signer: &Signer, tenant: &str, message: &[u8]) -> Option<String> {
    match signer.sign(message) {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(%tenant, domain = signer.domain(), %e, "DKIM signing failed; sending unsigned");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tenant: &str, domain: &str, selector: &str, pem: &str) -> SigningKey {
        SigningKey {
            tenant: tenant.into(),
            domain: domain.into(),
            selector: selector.into(),
            private_key: pem.into(),
        }
    }

    #[test]
    fn keys_are_chosen_by_tenant_and_nearest_domain() {
        let pem = skein_dkim::generate_ed25519().unwrap();
        let keys = SigningKeys::default();
        keys.load(vec![
            key("acme", "example.com", "s1", &pem),
            key("acme", "other.example", "s2", &pem),
            key("bad", "example.com", "s1", "not a key"),
        ]);
        let s = keys.signer("acme", "news.mail.example.com").unwrap();
        assert_eq!((s.domain(), s.selector()), ("example.com", "s1"));
        assert!(keys.signer("acme", "example.net").is_none());
        assert!(keys.signer("globex", "example.com").is_none());
        assert!(keys.signer("bad", "example.com").is_none());
        let msg = b"From: a@news.example.com\r\nTo: b@x.example\r\n\r\nhi\r\n";
        let h = sign(&keys.signer_for("acme", msg).unwrap(), "acme", msg).unwrap();
        assert!(h.contains("d=example.com"), "{h}");
        assert!(keys.signer_for("globex", msg).is_none());
        // A reload keeps unchanged keys and drops removed ones.
        keys.load(vec![key("acme", "example.com", "s1", &pem)]);
        assert!(Arc::ptr_eq(
            &s,
            &keys.signer("acme", "example.com").unwrap()
        ));
        assert!(keys.signer("acme", "other.example").is_none());
    }
}
