//! The cluster's identities: who may call what between Skein's roles.
//!
//! Every link between roles (edge → node, sender → node, node ↔ node, operator → node) is
//! mutual TLS under one private cluster CA. A certificate names the roles its holder plays as
//! DNS names in its subject alternative names: `node.skein.invalid`, `edge.skein.invalid`,
//! `sender.skein.invalid`, `operator.skein.invalid` (the `.invalid` top-level domain never
//! resolves, so these names cannot collide with a real host). One certificate may name several
//! roles (a process running `[node]`, `[edge]` and `[sender]` together).
//!
//! - [`create_ca`] and [`issue`]: a CA and role certificates (`skein certs init|issue`).
//! - [`Identity`]: a process's CA, certificate and key, checked when loaded (the certificate is
//!   signed by the CA, current, and names a role), and the tonic TLS settings built from them.
//!   Clients verify that the server holds a `node` certificate, whatever address they dial.
//! - [`roles_of`]: the roles a peer's certificate names (its chain was verified by the TLS
//!   handshake against the same CA).
//!
//! A CA made elsewhere works too: issue certificates with the role names above and both
//! `serverAuth` and `clientAuth` extended key usages.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Identity as TonicIdentity, ServerTlsConfig};

/// The domain under which certificates name roles: `node.skein.invalid` and so on.
pub const ROLE_DOMAIN: &str = "skein.invalid";

/// The common name of CAs made by [`create_ca`] (the issuer name of every certificate they sign).
pub const CA_NAME: &str = "Skein cluster CA";

/// How long a TLS handshake with a node may take before the connection is dropped.
pub const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// A part a process plays in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// A queue node: Raft, and the server every other role calls.
    Node,
    /// An SMTP edge: submits mail (Ingest) and fetches credentials.
    Edge,
    /// A sender: takes deliveries (Work).
    Sender,
    /// A person or tool administering the cluster (Admin).
    Operator,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Node, Role::Edge, Role::Sender, Role::Operator];

    /// The role's name: `node`, `edge`, `sender`, `operator`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Node => "node",
            Role::Edge => "edge",
            Role::Sender => "sender",
            Role::Operator => "operator",
        }
    }

    /// The DNS name a certificate carries to hold this role, e.g. `edge.skein.invalid`.
    pub fn dns_name(self) -> String {
        format!("{}.{ROLE_DOMAIN}", self.as_str())
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: one of node, edge, sender, operator"))
    }
}

/// A set of roles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Roles(u8);

impl Roles {
    /// Whether the set holds `role`.
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Whether the set holds any of `roles`.
    pub fn any_of(self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.contains(*r))
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The roles in the set, in [`Role::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<T: IntoIterator<Item = Role>>(iter: T) -> Self {
        Roles(iter.into_iter().fold(0, |acc, r| acc | r.bit()))
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no role");
        }
        let names: Vec<_> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

/// What went wrong making or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read.
    #[error("cannot read {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// Why (in the message, not a source: a chain would say it twice).
        error: std::io::Error,
    },
    /// PEM text holds no certificate or key of the expected kind.
    #[error("{what}: {reason}")]
    Pem {
        /// Which input (a path, or "CA key").
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// The certificate does not verify against the CA, or is not current.
    #[error("{cert} is not valid under the CA {ca}: {reason}")]
    NotTrusted {
        /// The certificate's source.
        cert: String,
        /// The CA's source.
        ca: String,
        /// webpki's reason (e.g. `UnknownIssuer`, `CertExpired`).
        reason: String,
    },
    /// The certificate lacks a role the process needs.
    #[error("{cert} names {has}, but this process needs role {needs}: issue a certificate with `skein certs issue --role {needs}`")]
    MissingRole {
        /// The certificate's source.
        cert: String,
        /// The roles it names.
        has: Roles,
        /// The role it needs.
        needs: Role,
    },
    /// rcgen could not make a key or certificate.
    #[error("cannot make the certificate: {0}")]
    Generate(String),
}

fn generate(e: rcgen::Error) -> PkiError {
    PkiError::Generate(e.to_string())
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8). Keep it secret: file mode 0600.
    pub key: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem")
            .field("cert", &self.cert)
            .field("key", &"(secret)")
            .finish()
    }
}

fn validity(params: &mut CertificateParams, now: SystemTime, days: u32) {
    let now = time::OffsetDateTime::from(now);
    // An hour back: a peer whose clock is a little behind still accepts it.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// The CA's subject and usages: the same every time, so a CA key alone (with these) signs.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A new cluster CA (ECDSA P-256) valid for `days` from `now`.
pub fn create_ca(now: SystemTime, days: u32) -> Result<Pem, PkiError> {
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = ca_params();
    validity(&mut params, now, days);
    let cert = params.self_signed(&key).map_err(generate)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `roles`, signed by the CA whose private key is `ca_key` (a CA made by
/// [`create_ca`]), valid for `days` from `now`. `name` becomes its common name (for people
/// reading it: `node-1`, `edge-a`, `alice`). `ips` are the source IPs a sender may announce
/// (IP addresses in its subject alternative names; see [`certifies_ip`]).
pub fn issue(
    ca_key: &str,
    roles: Roles,
    name: &str,
    ips: &[IpAddr],
    now: SystemTime,
    days: u32,
) -> Result<Pem, PkiError> {
    if roles.is_empty() {
        return Err(PkiError::Generate(
            "a certificate needs at least one role".into(),
        ));
    }
    let ca_key = KeyPair::from_pem(ca_key).map_err(|e| PkiError::Pem {
        what: "CA key".into(),
        reason: e.to_string(),
    })?;
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().map_err(generate)?;
    let mut params = CertificateParams::new(roles.iter().map(Role::dns_name).collect::<Vec<_>>())
        .map_err(generate)?;
    params
        .subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, days);
    let cert = params.signed_by(&key, &issuer).map_err(generate)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// The roles `cert` names. A certificate that does not parse names none. (Call it on a peer's
/// certificate only after its chain was verified, as the TLS handshake does.)
pub fn roles_of(cert: &CertificateDer<'_>) -> Roles {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return Roles::default();
    };
    cert.valid_dns_names()
        .filter_map(|name| {
            let role = name.strip_suffix(ROLE_DOMAIN)?.strip_suffix('.')?;
            role.parse::<Role>().ok()
        })
        .collect()
}

/// Whether `cert` names `ip` (an IP address subject alternative name): a sender may announce
/// only the source IPs its certificate names, so one sender's certificate cannot take another's
/// work. (Call it on a peer's certificate only after its chain was verified.)
pub fn certifies_ip(cert: &CertificateDer<'_>, ip: IpAddr) -> bool {
    let Ok(cert) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    cert.verify_is_valid_for_subject_name(&ServerName::IpAddress(ip.into()))
        .is_ok()
}

/// A process's place in the cluster: the CA it trusts, its certificate and key.
#[derive(Clone)]
pub struct Identity {
    ca: String,
    cert: String,
    key: String,
    roles: Roles,
    source: String,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("certificate", &self.source)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

fn first_cert(pem: &str, what: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem {
        what: what.to_string(),
        reason: format!("no PEM certificate ({e})"),
    })
}

impl Identity {
    /// Reads the three PEM files and checks them (see [`Identity::from_pem`]).
    pub fn load(ca: &Path, cert: &Path, key: &Path, now: SystemTime) -> Result<Self, PkiError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|error| PkiError::Read {
                path: p.display().to_string(),
                error,
            })
        };
        Self::from_pem(
            &read(ca)?,
            &read(cert)?,
            &read(key)?,
            &ca.display().to_string(),
            &cert.display().to_string(),
            now,
        )
    }

    /// Checks that `cert` is signed by `ca`, is current at `now`, may serve as both TLS client
    /// and server, names at least one role, and that `key` is a private key. `ca_source` and
    /// `cert_source` name the inputs in errors.
    pub fn from_pem(
        ca: &str,
        cert: &str,
        key: &str,
        ca_source: &str,
        cert_source: &str,
        now: SystemTime,
    ) -> Result<Self, PkiError> {
        let ca_der = first_cert(ca, ca_source)?;
        let cert_der = first_cert(cert, cert_source)?;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
            PkiError::Pem {
                what: format!("the key of {cert_source}"),
                reason: format!("no PEM private key ({e})"),
            }
        })?;
        let not_trusted = |reason: String| PkiError::NotTrusted {
            cert: cert_source.to_string(),
            ca: ca_source.to_string(),
            reason,
        };
        let anchor =
            webpki::anchor_from_trusted_cert(&ca_der).map_err(|e| not_trusted(e.to_string()))?;
        let end =
            webpki::EndEntityCert::try_from(&cert_der).map_err(|e| not_trusted(e.to_string()))?;
        let at = UnixTime::since_unix_epoch(
            now.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default(),
        );
        for usage in [
            webpki::KeyUsage::client_auth(),
            webpki::KeyUsage::server_auth(),
        ] {
            end.verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                std::slice::from_ref(&anchor),
                &[],
                at,
                usage,
                None,
                None,
            )
            .map_err(|e| not_trusted(format!("{e:?}")))?;
        }
        let roles = roles_of(&cert_der);
        if roles.is_empty() {
            return Err(not_trusted(format!(
                "it names no role (a DNS name such as {})",
                Role::Node.dns_name()
            )));
        }
        Ok(Self {
            ca: ca.to_string(),
            cert: cert.to_string(),
            key: key.to_string(),
            roles,
            source: cert_source.to_string(),
        })
    }

    /// The roles the certificate names.
    pub fn roles(&self) -> Roles {
        self.roles
    }

    /// Fails, saying what to do, unless the certificate names `role`.
    pub fn require(&self, role: Role) -> Result<(), PkiError> {
        if self.roles.contains(role) {
            Ok(())
        } else {
            Err(PkiError::MissingRole {
                cert: self.source.clone(),
                has: self.roles,
                needs: role,
            })
        }
    }

    /// A node's server settings: its certificate, and client certificates verified against the
    /// CA when presented. Presenting none is allowed at the handshake (an operator may use a
    /// token instead); each call then checks what the caller proved.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(TonicIdentity::from_pem(&self.cert, &self.key))
            .client_ca_root(Certificate::from_pem(&self.ca))
            .client_auth_optional(true)
            .timeout(HANDSHAKE_LIMIT)
    }

    /// Client settings for calling a node: this certificate, and the server must hold a `node`
    /// certificate signed by the CA.
    pub fn client(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(TonicIdentity::from_pem(&self.cert, &self.key))
            .domain_name(Role::Node.dns_name())
    }
}

/// Client settings for calling a node without a certificate (an operator with a token): only
/// the server is verified.
pub fn anonymous_client(ca: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(Role::Node.dns_name())
}

/// `https://addr` with TLS, `http://addr` without.
pub fn uri(addr: &str, tls: bool) -> String {
    if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn roles(r: &[Role]) -> Roles {
        r.iter().copied().collect()
    }

    #[test]
    fn issued_certificates_carry_their_roles_and_verify() {
        let ca = create_ca(now(), 3650).unwrap();
        let edge = issue(
            &ca.key,
            roles(&[Role::Edge, Role::Sender]),
            "edge-a",
            &[],
            now(),
            365,
        )
        .unwrap();
        let id = Identity::from_pem(&ca.cert, &edge.cert, &edge.key, "ca", "edge", now()).unwrap();
        assert_eq!(id.roles(), roles(&[Role::Edge, Role::Sender]));
        assert!(id.require(Role::Sender).is_ok());
        let err = id.require(Role::Node).unwrap_err().to_string();
        assert!(
            err.contains("names edge, sender") && err.contains("--role node"),
            "{err}"
        );
        let der = first_cert(&edge.cert, "edge").unwrap();
        assert_eq!(roles_of(&der), roles(&[Role::Edge, Role::Sender]));
    }

    #[test]
    fn another_ca_or_an_expired_certificate_is_refused() {
        let ca = create_ca(now(), 3650).unwrap();
        let other = create_ca(now(), 3650).unwrap();
        let node = issue(&other.key, roles(&[Role::Node]), "n", &[], now(), 30).unwrap();
        let err = Identity::from_pem(&ca.cert, &node.cert, &node.key, "ca.pem", "n.pem", now())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("n.pem is not valid under the CA ca.pem"),
            "{err}"
        );
        let node = issue(&ca.key, roles(&[Role::Node]), "n", &[], now(), 30).unwrap();
        let later = now() + Duration::from_secs(31 * 86_400);
        let err = Identity::from_pem(&ca.cert, &node.cert, &node.key, "ca", "n", later)
            .unwrap_err()
            .to_string();
        assert!(err.contains("Expired"), "{err}");
    }

    #[test]
    fn foreign_names_are_not_roles() {
        let ca = create_ca(now(), 3650).unwrap();
        let key = KeyPair::from_pem(&ca.key).unwrap();
        let issuer = Issuer::new(ca_params(), key);
        let leaf = KeyPair::generate().unwrap();
        let params = CertificateParams::new(vec![
            "node.skein.invalid.example.com".to_string(),
            "xnode.skein.invalid".to_string(),
            "operator.example.com".to_string(),
        ])
        .unwrap();
        let cert = params.signed_by(&leaf, &issuer).unwrap();
        assert!(roles_of(cert.der()).is_empty());
        assert!(roles_of(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }

    #[test]
    fn a_sender_certificate_names_its_source_ips() {
        let ca = create_ca(now(), 3650).unwrap();
        let ips: Vec<IpAddr> = vec![
            "192.0.2.10".parse().unwrap(),
            "2001:db8::a".parse().unwrap(),
        ];
        let s = issue(&ca.key, roles(&[Role::Sender]), "sender-a", &ips, now(), 30).unwrap();
        let id = Identity::from_pem(&ca.cert, &s.cert, &s.key, "ca", "s", now()).unwrap();
        assert_eq!(id.roles(), roles(&[Role::Sender]), "IPs are no roles");
        let der = first_cert(&s.cert, "s").unwrap();
        for ip in &ips {
            assert!(certifies_ip(&der, *ip), "{ip}");
        }
        assert!(!certifies_ip(&der, "192.0.2.11".parse().unwrap()));
        let plain = issue(&ca.key, roles(&[Role::Sender]), "b", &[], now(), 30).unwrap();
        let der = first_cert(&plain.cert, "b").unwrap();
        assert!(!certifies_ip(&der, ips[0]));
    }

    #[test]
    fn roles_parse_and_print() {
        assert_eq!("sender".parse::<Role>(), Ok(Role::Sender));
        assert!("admin".parse::<Role>().unwrap_err().contains("one of node"));
        assert_eq!(
            roles(&[Role::Operator, Role::Node]).to_string(),
            "node, operator"
        );
        assert_eq!(Roles::default().to_string(), "no role");
        assert!(issue(
            &create_ca(now(), 1).unwrap().key,
            Roles::default(),
            "x",
            &[],
            now(),
            1
        )
        .is_err());
    }
}
