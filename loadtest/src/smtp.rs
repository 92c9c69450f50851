//! The few SMTP client steps the generator and the blaster need: connect and greet, read a
//! (multi-line) reply.

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// A session's two halves, the reading one buffered.
pub type Session = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

/// Connects to `server`, reads the greeting and says EHLO.
pub async fn connect(server: &str) -> anyhow::Result<Session> {
    let sock = TcpStream::connect(server).await?;
    sock.set_nodelay(true)?;
    let (rd, mut wr) = sock.into_split();
    let mut rd = BufReader::new(rd);
    expect(&mut rd, 220).await?;
    wr.write_all(b"EHLO load.test\r\n").await?;
    expect(&mut rd, 250).await?;
    Ok((rd, wr))
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
