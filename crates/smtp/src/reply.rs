//! SMTP replies.

use std::fmt;

/// One SMTP reply: a code, an optional RFC 3463 enhanced status code and one or more lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit reply code.
    pub code: u16,
    /// Enhanced status code such as `"5.7.1"`, written at the start of every line.
    pub enhanced: Option<&'static str>,
    /// Text lines (at least one).
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply with an enhanced status code.
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        Self {
            code,
            enhanced: Some(enhanced),
            lines: vec![text.into()],
        }
    }

    /// A reply without enhanced code (greeting, EHLO, 334 challenges).
    pub fn plain(code: u16, lines: Vec<String>) -> Self {
        Self {
            code,
            enhanced: None,
            lines,
        }
    }

    /// Whether the code is 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Appends the wire form (CRLF-terminated lines, `-` continuation) to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let text = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 < n { '-' } else { ' ' };
            out.extend_from_slice(format!("{}{}", self.code, sep).as_bytes());
            if let Some(e) = self.enhanced {
                out.extend_from_slice(e.as_bytes());
                if !text.is_empty() {
                    out.push(b' ');
                }
            }
            // Never let a CR or LF from anywhere break the framing.
            out.extend(text.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The wire form as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.write_to(&mut v);
        v
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.to_bytes()))
    }
}

/// Canned replies, named by what they mean.
pub mod canned {
    use super::Reply;

    /// 221 on QUIT.
    pub fn bye() -> Reply {
        Reply::new(221, "2.0.0", "Bye")
    }
    /// 250 for NOOP, RSET.
    pub fn ok() -> Reply {
        Reply::new(250, "2.0.0", "Ok")
    }
    /// 421 when a limit of connections is reached.
    pub fn too_many_connections(host: &str) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!("{host} Too many connections, try again later"),
        )
    }
    /// 421 when the client was idle too long (RFC 5321 4.5.3.2).
    pub fn timeout(host: &str) -> Reply {
        Reply::new(421, "4.4.2", format!("{host} Error: timeout exceeded"))
    }
    /// 421 when a session has lasted as long as one may.
    pub fn session_too_long(host: &str) -> Reply {
        Reply::new(
            421,
            "4.7.0",
            format!("{host} Session too long, closing connection; reconnect to go on"),
        )
    }
    /// 421 when the server shuts down.
    pub fn shutting_down(host: &str) -> Reply {
        Reply::new(
            421,
            "4.3.2",
            format!("{host} Service shutting down, try again later"),
        )
    }
    /// 451 when the queue could not commit the message.
    pub fn queue_unavailable() -> Reply {
        Reply::new(
            451,
            "4.3.0",
            "Queue temporarily unavailable, try again later",
        )
    }
    /// 451 when the queue holds all the incoming mail it may at once.
    pub fn queue_busy() -> Reply {
        Reply::new(451, "4.3.2", "Queue busy, try again later")
    }
}
