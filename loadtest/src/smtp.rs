//! The few SMTP client steps the generator and the blaster need: connect and greet, STARTTLS
//! and AUTH PLAIN as a tenant, read a (multi-line) reply.

use std::sync::Arc;

use anyhow::{bail, Context as _};
use base64::Engine as _;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadHalf, WriteHalf,
};
use tokio::net::TcpStream;

/// A plain or TLS connection.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A session's reading half, buffered.
pub type Reader = BufReader<ReadHalf<Box<dyn Io>>>;
/// A session's writing half.
pub type Writer = WriteHalf<Box<dyn Io>>;
/// A session's two halves.
pub type Session = (Reader, Writer);

/// How a session logs in: STARTTLS (trusting `tls`'s roots) then AUTH PLAIN.
#[derive(Clone)]
pub struct Login {
    /// The TLS client configuration (the edge's certificate among its roots).
    pub tls: Arc<rustls::ClientConfig>,
    /// The tenant's user name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Login({})", self.user)
    }
}

/// Connects to `server`, reads the greeting and says EHLO; with `login`, upgrades to TLS and
/// authenticates.
pub async fn connect(server: &str) -> anyhow::Result<Session> {
    connect_as(server, None).await
}

/// [`connect`], logging in as a tenant when `login` is given.
pub async fn connect_as(server: &str, login: Option<&Login>) -> anyhow::Result<Session> {
    let sock = TcpStream::connect(server).await?;
    sock.set_nodelay(true)?;
    let ip = sock.peer_addr()?.ip();
    let (mut rd, mut wr) = halves(Box::new(sock));
    expect(&mut rd, 220).await?;
    wr.write_all(b"EHLO load.test\r\n").await?;
    expect(&mut rd, 250).await?;
    let Some(login) = login else {
        return Ok((rd, wr));
    };
    wr.write_all(b"STARTTLS\r\n").await?;
    expect(&mut rd, 220).await?;
    if !rd.buffer().is_empty() {
        bail!("the server sent data after its STARTTLS reply");
    }
    let plain = rd.into_inner().unsplit(wr);
    let tls = tokio_rustls::TlsConnector::from(login.tls.clone())
        .connect(rustls_pki_types::ServerName::IpAddress(ip.into()), plain)
        .await
        .context("TLS handshake with the edge")?;
    let (mut rd, mut wr) = halves(Box::new(tls));
    wr.write_all(b"EHLO load.test\r\n").await?;
    expect(&mut rd, 250).await?;
    let token = base64::engine::general_purpose::STANDARD
        .encode(format!("\0{}\0{}", login.user, login.password));
    wr.write_all(format!("AUTH PLAIN {token}\r\n").as_bytes())
        .await?;
    expect(&mut rd, 235)
        .await
        .with_context(|| format!("AUTH as {}", login.user))?;
    Ok((rd, wr))
}

fn halves(io: Box<dyn Io>) -> Session {
    let (rd, wr) = tokio::io::split(io);
    (BufReader::new(rd), wr)
}

/// A TLS client configuration that trusts only `ca_pem`'s certificates.
pub fn trusting(ca_pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls_pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("reading the certificate")?)?;
    }
    if roots.is_empty() {
        bail!("no certificate in the file");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ))
}

/// Reads one (possibly multi-line) reply; returns its code and last line.
pub async fn reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> anyhow::Result<(u16, String)> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            bail!("server closed the connection");
        }
        if line.len() >= 4 && line.as_bytes()[3] == b' ' {
            let code = line[..3].parse().context("reply code")?;
            return Ok((code, line.trim_end().to_string()));
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            bail!("malformed reply line {:?}", line.trim_end());
        }
    }
}

/// Reads a reply and fails unless its code is `want`.
pub async fn expect<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    want: u16,
) -> anyhow::Result<()> {
    let (code, text) = reply(r).await?;
    if code != want {
        bail!("expected {want}, got {text}");
    }
    Ok(())
}
