//! DKIM for the edge (RFC 6376, RFC 8463): private keys as operators hand them over (PEM, RSA
//! or Ed25519), the TXT record to publish for each, and signing a message with the key of its
//! `From:` domain. Cryptography and canonicalization are mail-auth's; this crate decides what
//! is signed and how keys are checked, and has no I/O.

use std::fmt;

use base64::Engine as _;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter as _;
use mail_auth::dkim::{Canonicalization, DkimSigner, Done};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::PrivateKeyDer;

/// Headers signed. mail-auth lists each in `h=` whether present or not, and an absent header
/// is signed as empty, so none of these can be added in transit without breaking the
/// signature; `From` is listed twice so that a second `From:` cannot be either.
pub const SIGNED_HEADERS: &[&str] = &[
    "From",
    "From",
    "Reply-To",
    "Sender",
    "To",
    "Cc",
    "Subject",
    "Date",
    "Message-ID",
    "In-Reply-To",
    "References",
    "MIME-Version",
    "Content-Type",
    "Content-Transfer-Encoding",
    "List-Id",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "Feedback-ID",
];

/// Why a key or a signature could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DkimError {
    /// The text is not a PEM private key.
    #[error("not a PEM private key: expected -----BEGIN PRIVATE KEY----- (PKCS#8) or -----BEGIN RSA PRIVATE KEY----- (PKCS#1)")]
    NotPem,
    /// PEM, but not a usable RSA or Ed25519 key.
    #[error("unusable private key: {0}")]
    BadKey(String),
    /// Not a domain name DKIM can sign for.
    #[error("invalid signing domain {0:?}: expected a DNS name like example.com")]
    BadDomain(String),
    /// Not a selector.
    #[error("invalid selector {0:?}: expected 1-63 letters, digits, '-' or '_' per label")]
    BadSelector(String),
    /// The message has none of the headers to sign, or the signer failed.
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `rsa-sha256` (RFC 6376).
    RsaSha256,
    /// `ed25519-sha256` (RFC 8463).
    Ed25519Sha256,
}

impl Algorithm {
    /// The `a=` tag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa-sha256",
            Algorithm::Ed25519Sha256 => "ed25519-sha256",
        }
    }

    /// The `k=` tag value of the DNS record.
    fn key_type(self) -> &'static str {
        match self {
            Algorithm::RsaSha256 => "rsa",
            Algorithm::Ed25519Sha256 => "ed25519",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

enum KeyPair {
    Rsa(RsaKey<Sha256>),
    Ed25519(Ed25519Key),
}

/// A parsed private key with its public half.
pub struct PrivateKey {
    pair: KeyPair,
    /// What goes in `p=`: SubjectPublicKeyInfo DER for RSA, the raw 32 bytes for Ed25519.
    public: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm())
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// Parses a PEM private key: PKCS#8 (RSA or Ed25519, as `openssl genpkey` writes them) or
    /// PKCS#1 RSA. RSA keys must have 2048 to 8192 bits.
    pub fn from_pem(pem: &str) -> Result<Self, DkimError> {
        let der = PrivateKeyDer::from_pem_slice(pem.trim().as_bytes()).map_err(|e| match e {
            rustls_pki_types::pem::Error::NoItemsFound => DkimError::NotPem,
            other => DkimError::BadKey(format!("PEM: {other:?}")),
        })?;
        match der {
            PrivateKeyDer::Pkcs8(ref p8) => {
                if let Ok(k) = Ed25519Key::from_pkcs8_maybe_unchecked_der(p8.secret_pkcs8_der()) {
                    let public = k.public_key();
                    return Ok(Self {
                        pair: KeyPair::Ed25519(k),
                        public,
                    });
                }
                Self::rsa(der)
            }
            PrivateKeyDer::Pkcs1(_) => Self::rsa(der),
            _ => Err(DkimError::BadKey(
                "an EC (SEC1) key: DKIM signs with RSA or Ed25519".into(),
            )),
        }
    }

    fn rsa(der: PrivateKeyDer<'_>) -> Result<Self, DkimError> {
        let k = RsaKey::<Sha256>::from_key_der(der).map_err(|e| {
            DkimError::BadKey(format!("neither Ed25519 nor RSA of 2048-8192 bits ({e})"))
        })?;
        let public = rsa_spki(&k.public_key());
        Ok(Self {
            pair: KeyPair::Rsa(k),
            public,
        })
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        match self.pair {
            KeyPair::Rsa(_) => Algorithm::RsaSha256,
            KeyPair::Ed25519(_) => Algorithm::Ed25519Sha256,
        }
    }

    /// The TXT record to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_record(&self) -> String {
        format!(
            "v=DKIM1; k={}; p={}",
            self.algorithm().key_type(),
            base64::engine::general_purpose::STANDARD.encode(&self.public)
        )
    }
}

/// `record` as the data of a zone file's TXT record: one quoted string when it fits in 255
/// characters (a TXT string's limit), else 255-character strings in parentheses, which
/// resolvers join back into one (RSA keys of 2048 bits and more need this). The record is
/// ASCII without quotes or backslashes, so nothing needs escaping.
pub fn zone_txt(record: &str) -> String {
    let parts: Vec<String> = record
        .as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect();
    if parts.len() <= 1 {
        parts.concat()
    } else {
        format!("( {} )", parts.join(" "))
    }
}

/// A new Ed25519 private key as PKCS#8 PEM. (RSA keys come from the operator, e.g.
/// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`.)
pub fn generate_ed25519() -> Result<String, DkimError> {
    let der = Ed25519Key::generate_pkcs8().map_err(|e| DkimError::BadKey(e.to_string()))?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok(pem)
}

/// Wraps a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo (rsaEncryption), the form DKIM
/// records usually carry and every verifier accepts.
fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    const RSA_ALGORITHM_ID: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bit_string = vec![0u8];
    bit_string.extend_from_slice(pkcs1);
    let mut body = RSA_ALGORITHM_ID.to_vec();
    der_put(&mut body, 0x03, &bit_string);
    let mut out = Vec::with_capacity(body.len() + 4);
    der_put(&mut out, 0x30, &body);
    out
}

fn der_put(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .into_iter()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
}

/// Checks a signing domain: a DNS name of at least two labels.
pub fn check_domain(domain: &str) -> Result<String, DkimError> {
    let d = domain.trim_end_matches('.').to_ascii_lowercase();
    let ok = d.len() <= 253
        && d.contains('.')
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if ok {
        Ok(d)
    } else {
        Err(DkimError::BadDomain(domain.to_string()))
    }
}

/// Checks a selector: dot-separated labels of letters, digits, `-` and `_`.
pub fn check_selector(selector: &str) -> Result<(), DkimError> {
    let ok = selector.len() <= 253
        && selector.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(DkimError::BadSelector(selector.to_string()))
    }
}

/// The signing template every key gets: relaxed/relaxed over [`SIGNED_HEADERS`].
fn configure<T: SigningKey>(key: T, domain: &str, selector: &str) -> DkimSigner<T, Done> {
    DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(SIGNED_HEADERS.iter().copied())
        .header_canonicalization(Canonicalization::Relaxed)
        .body_canonicalization(Canonicalization::Relaxed)
}

enum Inner {
    Rsa(DkimSigner<RsaKey<Sha256>, Done>),
    Ed25519(DkimSigner<Ed25519Key, Done>),
}

/// Signs for one domain with one key, relaxed/relaxed canonicalization.
pub struct Signer {
    domain: String,
    selector: String,
    algorithm: Algorithm,
    inner: Inner,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("domain", &self.domain)
            .field("selector", &self.selector)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for `d=domain`, `s=selector`.
    pub fn new(domain: &str, selector: &str, key: PrivateKey) -> Result<Self, DkimError> {
        let domain = check_domain(domain)?;
        check_selector(selector)?;
        let algorithm = key.algorithm();
        let inner = match key.pair {
            KeyPair::Rsa(k) => Inner::Rsa(configure(k, &domain, selector)),
            KeyPair::Ed25519(k) => Inner::Ed25519(configure(k, &domain, selector)),
        };
        Ok(Self {
            domain,
            selector: selector.to_string(),
            algorithm,
            inner,
        })
    }

    /// The signing domain (`d=`).
    pub fn domain(&self) -> &str {
        &self.domain
    }

    /// The selector (`s=`).
    pub fn selector(&self) -> &str {
        &self.selector
    }

    /// The algorithm (`a=`).
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Signs `message` (headers and body, CRLF line endings) and returns the complete
    /// `DKIM-Signature:` header field, folded and ending in CRLF, to prepend to it. The `t=`
    /// tag is the system time (mail-auth reads it itself).
    pub fn sign(&self, message: &[u8]) -> Result<String, DkimError> {
        let sig = match &self.inner {
            Inner::Rsa(s) => s.sign(message),
            Inner::Ed25519(s) => s.sign(message),
        }
        .map_err(|e| DkimError::Sign(e.to_string()))?;
        Ok(sig.to_header())
    }
}

/// The domain of the first address in the message's `From:` header, lower-cased; `None` when
/// there is no `From:` header or no address in it.
pub fn from_domain(message: &[u8]) -> Option<String> {
    let value = header_value(message, b"from")?;
    let value = strip_comments_and_quotes(&value);
    // `Name <local@domain>` or a bare `local@domain`, possibly a group or list: the first
    // address is enough.
    let addr = match (value.find('<'), value.find('>')) {
        (Some(a), Some(b)) if a < b => value[a + 1..b].to_string(),
        _ => value
            .split([',', ';', ':'])
            .find(|p| p.contains('@'))?
            .to_string(),
    };
    let (_, domain) = addr.trim().rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.');
    check_domain(domain).ok()
}

/// The unfolded value of the first header field called `name` (lower-case), from the header
/// section only.
fn header_value(message: &[u8], name: &[u8]) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for line in message.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break; // end of the header section
        }
        let continuation = line[0] == b' ' || line[0] == b'\t';
        match (&mut value, continuation) {
            (Some(v), true) => v.extend_from_slice(line),
            (Some(_), false) => break,
            (None, false) => {
                if let Some(colon) = line.iter().position(|&b| b == b':') {
                    if line[..colon].trim_ascii().eq_ignore_ascii_case(name) {
                        value = Some(line[colon + 1..].to_vec());
                    }
                }
            }
            (None, true) => {}
        }
    }
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// Drops `(comments)` and the contents of `"quoted strings"`, where a display name may hide
/// `<`, `@` or `,`.
fn strip_comments_and_quotes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let (mut depth, mut quoted, mut escaped) = (0usize, false, false);
    for c in s.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted && depth > 0 => depth -= 1,
            _ if quoted || depth > 0 => {}
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ed25519 key as OpenSSL 3 writes it (`openssl genpkey -algorithm ed25519`): PKCS#8 v1,
    /// without the public key, which ring calls "unchecked".
    const OPENSSL_ED25519: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEICa5Wf9AKHM39Jo1LQXToXjYftrJSTRaK/xyBazxDXZD
-----END PRIVATE KEY-----
";

    const MESSAGE: &[u8] = b"From: \"Doe, <John>\" (work) <John.Doe@News.Example.COM>\r\n\
To: you@example.net\r\nSubject: hello\r\n  folded\r\n\r\nbody\r\n";

    #[test]
    fn from_domain_reads_the_address_not_the_display_name() {
        assert_eq!(from_domain(MESSAGE).as_deref(), Some("news.example.com"));
        assert_eq!(
            from_domain(b"Subject: x\r\nfrom:\r\n a@b.example\r\n\r\n").as_deref(),
            Some("b.example")
        );
        assert_eq!(
            from_domain(b"From: Team: a@one.example, b@two.example;\r\n\r\n").as_deref(),
            Some("one.example")
        );
        // A From: in the body does not count; neither does a header without an address.
        assert_eq!(
            from_domain(b"To: a@b.example\r\n\r\nFrom: x@y.example\r\n"),
            None
        );
        assert_eq!(from_domain(b"From: nobody\r\n\r\n"), None);
        assert_eq!(from_domain(b"From: <a@bad_domain>\r\n\r\n"), None);
    }

    #[test]
    fn generated_ed25519_keys_parse_and_publish_32_bytes() {
        let pem = generate_ed25519().unwrap();
        let k = PrivateKey::from_pem(&pem).unwrap();
        assert_eq!(k.algorithm(), Algorithm::Ed25519Sha256);
        let rec = k.dns_record();
        let p = rec.strip_prefix("v=DKIM1; k=ed25519; p=").unwrap();
        let raw = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        assert_eq!(raw.len(), 32);
        // Two generated keys differ.
        let other = PrivateKey::from_pem(&generate_ed25519().unwrap()).unwrap();
        assert_ne!(other.dns_record(), rec);
    }

    #[test]
    fn openssl_ed25519_keys_are_accepted() {
        let k = PrivateKey::from_pem(OPENSSL_ED25519).unwrap();
        assert_eq!(k.algorithm(), Algorithm::Ed25519Sha256);
    }

    #[test]
    fn bad_keys_get_precise_errors() {
        assert_eq!(
            PrivateKey::from_pem("hello").unwrap_err(),
            DkimError::NotPem
        );
        let garbage = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            PrivateKey::from_pem(garbage).unwrap_err(),
            DkimError::BadKey(_)
        ));
        let ec = "-----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY-----\n";
        assert!(matches!(
            PrivateKey::from_pem(ec).unwrap_err(),
            DkimError::BadKey(m) if m.contains("EC")
        ));
    }

    #[test]
    fn signatures_name_domain_selector_algorithm_and_headers() {
        let k = PrivateKey::from_pem(OPENSSL_ED25519).unwrap();
        let s = Signer::new("News.Example.com.", "s2026", k).unwrap();
        assert_eq!(s.domain(), "news.example.com");
        let h = s.sign(MESSAGE).unwrap();
        assert!(h.starts_with("DKIM-Signature: "), "{h}");
        assert!(h.ends_with("\r\n"), "{h}");
        let flat: String = h.split_whitespace().collect();
        for tag in [
            "a=ed25519-sha256;",
            "d=news.example.com;",
            "s=s2026;",
            "c=relaxed/relaxed;",
        ] {
            assert!(flat.contains(tag), "{tag} missing in {h}");
        }
        let hl = flat.split("h=").nth(1).unwrap().split(';').next().unwrap();
        // Every listed header is signed, present or not: an absent one signed as empty cannot
        // be added in transit without breaking the signature.
        let mut got: Vec<String> = hl.split(':').map(|h| h.to_ascii_lowercase()).collect();
        let mut want: Vec<String> = SIGNED_HEADERS
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        // The body hash covers the body.
        let bh = |h: &str| {
            let flat: String = h.split_whitespace().collect();
            flat.split("bh=")
                .nth(1)
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string()
        };
        let mut other = MESSAGE.to_vec();
        other.extend_from_slice(b"more\r\n");
        assert_ne!(bh(&h), bh(&s.sign(&other).unwrap()));
    }

    #[test]
    fn domains_and_selectors_are_checked() {
        assert_eq!(check_domain("Example.COM").unwrap(), "example.com");
        for bad in ["", "localhost", "a..b", "-a.b", "a b.c", "x_y.com"] {
            assert!(check_domain(bad).is_err(), "{bad}");
        }
        for good in ["s1", "2026-11._x", "a.b"] {
            assert!(check_selector(good).is_ok(), "{good}");
        }
        for bad in ["", "a..b", "a b", "a;b", "x=1"] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
    }

    /// A 2048-bit RSA test key in PKCS#1 PEM (`openssl genrsa -traditional 2048`).
    const RSA_PKCS1: &str = include_str!("../testdata/rsa2048-pkcs1.pem");

    #[test]
    fn rsa_keys_sign_and_publish_spki() {
        let k = PrivateKey::from_pem(RSA_PKCS1).unwrap();
        assert_eq!(k.algorithm(), Algorithm::RsaSha256);
        let rec = k.dns_record();
        let p = rec.strip_prefix("v=DKIM1; k=rsa; p=").unwrap();
        let spki = base64::engine::general_purpose::STANDARD.decode(p).unwrap();
        // SEQUENCE { rsaEncryption, BIT STRING { RSAPublicKey } } of a 2048-bit key.
        assert_eq!(&spki[..4], &[0x30, 0x82, 0x01, 0x22]);
        let s = Signer::new("example.com", "rsa1", k).unwrap();
        let h = s.sign(MESSAGE).unwrap();
        assert!(h
            .split_whitespace()
            .collect::<String>()
            .contains("a=rsa-sha256;"));
    }

    #[test]
    fn rsa_public_keys_are_wrapped_in_spki() {
        let spki = rsa_spki(&[0x30, 0x03, 0x02, 0x01, 0x05]);
        assert_eq!(
            spki,
            [
                0x30, 0x17, 0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01,
                0x01, 0x05, 0x00, 0x03, 0x06, 0x00, 0x30, 0x03, 0x02, 0x01, 0x05
            ]
        );
        // Long forms: a 270-byte 2048-bit modulus key.
        let long = rsa_spki(&vec![0u8; 270]);
        assert_eq!(&long[..4], &[0x30, 0x82, 0x01, 0x22]);
    }

    #[test]
    fn long_records_split_into_txt_strings_of_255() {
        assert_eq!(
            zone_txt("v=DKIM1; k=ed25519; p=AB"),
            "\"v=DKIM1; k=ed25519; p=AB\""
        );
        let long = format!("v=DKIM1; k=rsa; p={}", "A".repeat(600));
        let txt = zone_txt(&long);
        assert!(txt.starts_with("( \"") && txt.ends_with("\" )"), "{txt}");
        // The quoted strings are every other piece between quotes.
        let parts: Vec<&str> = txt.split('"').skip(1).step_by(2).collect();
        assert_eq!(parts.len(), 3, "{txt}");
        assert!(parts.iter().all(|p| p.len() <= 255));
        assert_eq!(parts.concat(), long, "joined back, the record is whole");
    }
}
