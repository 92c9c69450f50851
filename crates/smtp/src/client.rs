//! A sans-I/O SMTP client connection (RFC 5321, PIPELINING per RFC 2920).
//!
//! [`ClientConn`] owns no socket and no clock. The runtime writes what [`ClientConn::output`]
//! returns, feeds what it reads to [`ClientConn::feed`], and acts on the [`ClientEvent`]s
//! from [`ClientConn::poll`]: start TLS, run the next transaction, close. While it waits, the
//! runtime asks [`ClientConn::waiting`] which RFC 5321 timeout applies.
//!
//! A transaction ([`ClientConn::start`]) sends MAIL, every RCPT and DATA in one flight when the
//! server offers PIPELINING, and one at a time otherwise. Its result has one reply per
//! recipient, tagged with the [`Stage`] that produced it, for [`crate::outcome::classify`].

use std::collections::VecDeque;

use crate::address::Address;
use crate::outcome::{Failure, Stage};

/// Longest reply line accepted (RFC 5321 allows 512; real servers exceed it).
const MAX_LINE: usize = 4096;
/// Most lines in one reply.
const MAX_LINES: usize = 200;

/// A reply received from a server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteReply {
    /// Reply code.
    pub code: u16,
    /// Enhanced status code (RFC 3463) from the first line, if it had one.
    pub enhanced: Option<String>,
    /// Text of each line, without code, separator or enhanced code.
    pub lines: Vec<String>,
}

impl RemoteReply {
    /// 2xx.
    pub fn is_ok(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// The lines joined by a space.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }
}

impl std::fmt::Display for RemoteReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text()),
            None => write!(f, "{} {}", self.code, self.text()),
        }
    }
}

/// Incremental reply parser: bytes in, complete replies out.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    lines: Vec<(u16, String)>,
}

impl ReplyParser {
    /// Appends bytes read from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete reply, `None` if more bytes are needed, or an error for a malformed
    /// reply (the connection cannot be trusted after one).
    pub fn next_reply(&mut self) -> Option<Result<RemoteReply, String>> {
        loop {
            let Some(end) = self.buf.iter().position(|&b| b == b'\n') else {
                if self.buf.len() > MAX_LINE {
                    return Some(Err(format!("reply line over {MAX_LINE} bytes")));
                }
                return None;
            };
            let raw: Vec<u8> = self.buf.drain(..=end).collect();
            let line = String::from_utf8_lossy(&raw[..raw.len() - 1]);
            let line = line.strip_suffix('\r').unwrap_or(&line);
            if line.len() > MAX_LINE {
                return Some(Err(format!("reply line over {MAX_LINE} bytes")));
            }
            let b = line.as_bytes();
            let code = match line.get(..3).and_then(|c| c.parse::<u16>().ok()) {
                Some(c) if (200..600).contains(&c) && b[..3].iter().all(u8::is_ascii_digit) => c,
                _ => return Some(Err(format!("malformed reply line {:?}", clip(line)))),
            };
            let more = match b.get(3) {
                Some(b'-') => true,
                Some(b' ') | None => false,
                Some(_) => return Some(Err(format!("malformed reply line {:?}", clip(line)))),
            };
            if let Some(&(first, _)) = self.lines.first() {
                if first != code {
                    return Some(Err(format!(
                        "reply lines with different codes {first} and {code}"
                    )));
                }
            }
            let text = line.get(4..).unwrap_or("").to_string();
            self.lines.push((code, text));
            if self.lines.len() > MAX_LINES {
                return Some(Err(format!("reply over {MAX_LINES} lines")));
            }
            if !more {
                let lines: Vec<String> = self.lines.drain(..).map(|(_, t)| t).collect();
                return Some(Ok(split_enhanced(code, lines)));
            }
        }
    }

    /// Whether bytes are buffered (a server talking out of turn).
    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty() || !self.lines.is_empty()
    }
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(80) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Separates an enhanced status code of the reply's class from the start of each line.
fn split_enhanced(code: u16, mut lines: Vec<String>) -> RemoteReply {
    let class = char::from(b'0' + (code / 100) as u8);
    let parse = |t: &str| -> Option<(String, usize)> {
        let word = t.split(' ').next()?;
        let mut parts = word.split('.');
        let (c, s, d) = (parts.next()?, parts.next()?, parts.next()?);
        let ok = parts.next().is_none()
            && c.len() == 1
            && c.starts_with(class)
            && (1..=3).contains(&s.len())
            && (1..=3).contains(&d.len())
            && s.bytes().chain(d.bytes()).all(|b| b.is_ascii_digit());
        ok.then(|| (word.to_string(), word.len()))
    };
    let enhanced = lines.first().and_then(|l| parse(l)).map(|(e, _)| e);
    if let Some(e) = &enhanced {
        for l in &mut lines {
            if l.starts_with(e.as_str()) {
                *l = l[e.len()..].trim_start().to_string();
            }
        }
    }
    RemoteReply {
        code,
        enhanced,
        lines,
    }
}

/// What a server offered in its EHLO reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// STARTTLS.
    pub starttls: bool,
    /// PIPELINING.
    pub pipelining: bool,
    /// SIZE, with its limit (0 = none stated).
    pub size: Option<u64>,
    /// 8BITMIME.
    pub eightbitmime: bool,
    /// SMTPUTF8.
    pub smtputf8: bool,
    /// ENHANCEDSTATUSCODES.
    pub enhanced_status_codes: bool,
}

impl Capabilities {
    /// Parses the lines of a 250 EHLO reply (the first is the greeting line).
    pub fn parse(reply: &RemoteReply) -> Self {
        let mut c = Self::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(kw) = words.next() else { continue };
            match kw.to_ascii_uppercase().as_str() {
                "STARTTLS" => c.starttls = true,
                "PIPELINING" => c.pipelining = true,
                "SIZE" => c.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => c.eightbitmime = true,
                "SMTPUTF8" => c.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => c.enhanced_status_codes = true,
                _ => {}
            }
        }
        c
    }
}

/// Whether to use STARTTLS on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsWish {
    /// If offered.
    Opportunistic,
    /// Fail the connection if not offered.
    Required,
    /// Never.
    Never,
}

/// Which reply the connection is waiting for, to pick the timeout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// Nothing: the runtime should act on events.
    Nothing,
    /// A reply to a command at this stage.
    Reply(Stage),
}

/// What the runtime must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// Perform the TLS handshake, then call [`ClientConn::tls_done`].
    StartTls,
    /// The session is ready for a transaction ([`ClientConn::start`]).
    Ready,
    /// A transaction finished.
    Done(TransactionResult),
    /// The connection failed; close it. Every transaction in progress failed with it.
    Failed(Failure),
}

/// The envelope and message of one transaction. Addresses are parsed ones, never raw
/// strings: nothing but a path can reach a `MAIL` or `RCPT` command.
#[derive(Debug, Clone)]
pub struct Transaction {
    /// Reverse-path, `None` for `<>`.
    pub mail_from: Option<Address>,
    /// Forward-paths.
    pub rcpts: Vec<Address>,
    /// The message, with CRLF line ends, not dot-stuffed. Shared: a transaction tried on
    /// several hosts (or again on a new connection) is cloned without copying its message.
    pub body: bytes::Bytes,
    /// The message needs SMTPUTF8.
    pub smtputf8: bool,
}

/// One reply per recipient of a transaction, in order, with the stage that gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionResult {
    /// Per recipient.
    pub rcpts: Vec<(Stage, RemoteReply)>,
}

#[derive(Debug)]
enum State {
    Greeting,
    Ehlo { after_tls: bool },
    Helo,
    StartTls,
    AwaitTls,
    Ready,
    Tx(Box<Tx>),
    Quit,
    Closed,
}

/// An in-progress transaction.
#[derive(Debug)]
struct Tx {
    n_rcpts: usize,
    /// Replies still expected, in order.
    expect: VecDeque<Stage>,
    /// Commands not yet sent (without pipelining, one at a time).
    unsent: VecDeque<Vec<u8>>,
    mail: Option<RemoteReply>,
    rcpt_replies: Vec<RemoteReply>,
    data: Option<RemoteReply>,
    body: Option<Vec<u8>>,
    /// The body was sent; the next reply is the final one.
    body_sent: bool,
}

/// One client connection's protocol state.
#[derive(Debug)]
pub struct ClientConn {
    state: State,
    parser: ReplyParser,
    helo_name: String,
    tls: TlsWish,
    tls_active: bool,
    caps: Capabilities,
    out: Vec<u8>,
    events: VecDeque<ClientEvent>,
}

impl ClientConn {
    /// A connection that will greet as `helo_name`, just opened (waiting for the greeting).
    pub fn new(helo_name: &str, tls: TlsWish) -> Self {
        Self {
            state: State::Greeting,
            parser: ReplyParser::default(),
            helo_name: helo_name.to_string(),
            tls,
            tls_active: false,
            caps: Capabilities::default(),
            out: Vec::new(),
            events: VecDeque::new(),
        }
    }

    /// The server's capabilities (after EHLO).
    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    /// Whether TLS is active.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Bytes to write to the server (drained).
    pub fn output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// The next event, if any.
    pub fn poll(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// What the connection waits for.
    pub fn waiting(&self) -> Waiting {
        match &self.state {
            State::Greeting => Waiting::Reply(Stage::Greeting),
            State::Ehlo { .. } | State::Helo => Waiting::Reply(Stage::Ehlo),
            State::StartTls => Waiting::Reply(Stage::StartTls),
            State::Tx(tx) => match (tx.body_sent, tx.expect.front()) {
                (true, _) => Waiting::Reply(Stage::Dot),
                (false, Some(s)) => Waiting::Reply(*s),
                (false, None) => Waiting::Nothing,
            },
            State::Quit => Waiting::Reply(Stage::Quit),
            State::AwaitTls | State::Ready | State::Closed => Waiting::Nothing,
        }
    }

    fn fail(&mut self, f: Failure) {
        self.state = State::Closed;
        self.events.push_back(ClientEvent::Failed(f));
    }

    /// The TLS handshake finished (`Ok`) or failed (`Err` with why).
    pub fn tls_done(&mut self, result: Result<(), String>) {
        match result {
            Ok(()) => {
                self.tls_active = true;
                // RFC 3207: forget everything learnt before TLS and greet again.
                self.caps = Capabilities::default();
                self.parser = ReplyParser::default();
                self.out
                    .extend_from_slice(format!("EHLO {}\r\n", self.helo_name).as_bytes());
                self.state = State::Ehlo { after_tls: true };
            }
            Err(e) => self.fail(Failure::Tls(e)),
        }
    }

    /// Starts a transaction; only when [`ClientEvent::Ready`] was the last event. Checks what
    /// the message needs against what the server offers first: a mismatch fails the
    /// transaction locally, without a word to the server.
    pub fn start(&mut self, t: Transaction) -> Result<(), Failure> {
        if !matches!(self.state, State::Ready) {
            return Err(Failure::Protocol {
                stage: Stage::Mail,
                message: "transaction started while the connection was not ready".into(),
            });
        }
        if t.rcpts.is_empty() {
            return Err(Failure::Protocol {
                stage: Stage::Rcpt,
                message: "a transaction needs a recipient".into(),
            });
        }
        let eight_bit = !t.body.is_ascii();
        if t.smtputf8 && !self.caps.smtputf8 {
            return Err(Failure::Unsupported {
                extension: "SMTPUTF8",
            });
        }
        if eight_bit && !self.caps.eightbitmime {
            return Err(Failure::Unsupported {
                extension: "8BITMIME",
            });
        }
        let size = t.body.len() as u64;
        if let Some(limit) = self.caps.size.filter(|&l| l > 0) {
            if size > limit {
                return Err(Failure::TooBig { size, limit });
            }
        }
        let mut mail = match &t.mail_from {
            Some(a) => format!("MAIL FROM:<{a}>"),
            None => "MAIL FROM:<>".to_string(),
        };
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit {
            mail.push_str(" BODY=8BITMIME");
        }
        if t.smtputf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        let mut cmds = VecDeque::new();
        let mut expect = VecDeque::new();
        cmds.push_back(mail.into_bytes());
        expect.push_back(Stage::Mail);
        for r in &t.rcpts {
            cmds.push_back(format!("RCPT TO:<{r}>\r\n").into_bytes());
            expect.push_back(Stage::Rcpt);
        }
        cmds.push_back(b"DATA\r\n".to_vec());
        expect.push_back(Stage::Data);
        let mut tx = Box::new(Tx {
            n_rcpts: t.rcpts.len(),
            expect,
            unsent: cmds,
            mail: None,
            rcpt_replies: Vec::new(),
            data: None,
            body: Some(stuff(&t.body)),
            body_sent: false,
        });
        if self.caps.pipelining {
            for c in tx.unsent.drain(..) {
                self.out.extend_from_slice(&c);
            }
        } else if let Some(c) = tx.unsent.pop_front() {
            self.out.extend_from_slice(&c);
        }
        self.state = State::Tx(tx);
        Ok(())
    }

    /// Sends QUIT; the connection then waits for its reply (or the runtime just closes).
    pub fn quit(&mut self) {
        if !matches!(self.state, State::Closed) {
            self.out.extend_from_slice(b"QUIT\r\n");
            self.state = State::Quit;
        }
    }

    /// Feeds bytes read from the server.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.parser.feed(bytes);
        while !matches!(self.state, State::Closed | State::AwaitTls) {
            match self.parser.next_reply() {
                None => break,
                Some(Err(message)) => {
                    let stage = match self.waiting() {
                        Waiting::Reply(s) => s,
                        Waiting::Nothing => Stage::Greeting,
                    };
                    self.fail(Failure::Protocol { stage, message });
                }
                Some(Ok(reply)) => self.on_reply(reply),
            }
        }
    }

    /// The server closed the connection.
    pub fn eof(&mut self) {
        match self.waiting() {
            Waiting::Reply(Stage::Quit) => self.state = State::Closed,
            Waiting::Reply(stage) => self.fail(Failure::Closed { stage }),
            Waiting::Nothing => self.state = State::Closed,
        }
    }

    fn on_reply(&mut self, reply: RemoteReply) {
        let state = std::mem::replace(&mut self.state, State::Closed);
        match state {
            State::Greeting => {
                if reply.code == 220 {
                    self.out
                        .extend_from_slice(format!("EHLO {}\r\n", self.helo_name).as_bytes());
                    self.state = State::Ehlo { after_tls: false };
                } else {
                    self.fail(Failure::Reply {
                        stage: Stage::Greeting,
                        reply,
                    });
                }
            }
            State::Ehlo { after_tls } => {
                if reply.is_ok() {
                    self.caps = Capabilities::parse(&reply);
                    self.after_ehlo(after_tls);
                } else if !after_tls && (500..=502).contains(&reply.code) {
                    // An old server without EHLO: HELO, no extensions.
                    self.out
                        .extend_from_slice(format!("HELO {}\r\n", self.helo_name).as_bytes());
                    self.state = State::Helo;
                } else {
                    self.fail(Failure::Reply {
                        stage: Stage::Ehlo,
                        reply,
                    });
                }
            }
            State::Helo => {
                if reply.is_ok() {
                    self.caps = Capabilities::default();
                    self.after_ehlo(false);
                } else {
                    self.fail(Failure::Reply {
                        stage: Stage::Ehlo,
                        reply,
                    });
                }
            }
            State::StartTls => {
                if reply.code == 220 {
                    if self.parser.has_pending() {
                        // Plaintext after the 220 would be injected into the TLS session.
                        self.fail(Failure::Protocol {
                            stage: Stage::StartTls,
                            message: "data after the STARTTLS reply".into(),
                        });
                    } else {
                        self.state = State::AwaitTls;
                        self.events.push_back(ClientEvent::StartTls);
                    }
                } else if self.tls == TlsWish::Required {
                    self.fail(Failure::Reply {
                        stage: Stage::StartTls,
                        reply,
                    });
                } else {
                    // Opportunistic: carry on in clear.
                    self.state = State::Ready;
                    self.events.push_back(ClientEvent::Ready);
                }
            }
            State::Tx(tx) => self.on_tx_reply(tx, reply),
            State::Quit => self.state = State::Closed,
            State::AwaitTls | State::Ready | State::Closed => {
                self.fail(Failure::Protocol {
                    stage: Stage::Mail,
                    message: format!("unexpected reply {reply}"),
                });
            }
        }
    }

    fn after_ehlo(&mut self, after_tls: bool) {
        let want_tls = match self.tls {
            TlsWish::Never => false,
            TlsWish::Opportunistic => self.caps.starttls,
            TlsWish::Required => true,
        };
        if after_tls || !want_tls {
            self.state = State::Ready;
            self.events.push_back(ClientEvent::Ready);
        } else if !self.caps.starttls {
            self.fail(Failure::TlsRequired);
        } else {
            self.out.extend_from_slice(b"STARTTLS\r\n");
            self.state = State::StartTls;
        }
    }

    fn on_tx_reply(&mut self, mut tx: Box<Tx>, reply: RemoteReply) {
        if tx.body_sent {
            // The final reply after the dot decides every recipient RCPT accepted.
            let rcpts = finish(&tx, Some((Stage::Dot, &reply)));
            self.state = State::Ready;
            self.events
                .push_back(ClientEvent::Done(TransactionResult { rcpts }));
            self.events.push_back(ClientEvent::Ready);
            return;
        }
        match tx.expect.pop_front() {
            Some(Stage::Mail) => tx.mail = Some(reply),
            Some(Stage::Rcpt) => tx.rcpt_replies.push(reply),
            Some(Stage::Data) => tx.data = Some(reply),
            _ => {
                self.fail(Failure::Protocol {
                    stage: Stage::Mail,
                    message: format!("unexpected reply {reply}"),
                });
                return;
            }
        }
        let mail_ok = tx.mail.as_ref().is_some_and(|m| m.is_ok());
        let accepted = tx.rcpt_replies.iter().filter(|r| r.is_ok()).count();
        // Without pipelining, stop early when the rest cannot succeed.
        if !tx.unsent.is_empty() {
            let all_rcpts_answered = tx.rcpt_replies.len() == tx.n_rcpts;
            if !mail_ok || (all_rcpts_answered && accepted == 0) {
                let rcpts = finish(&tx, None);
                self.events
                    .push_back(ClientEvent::Done(TransactionResult { rcpts }));
                self.reset_after_failure();
                return;
            }
            if let Some(c) = tx.unsent.pop_front() {
                self.out.extend_from_slice(&c);
            }
            self.state = State::Tx(tx);
            return;
        }
        if !tx.expect.is_empty() {
            self.state = State::Tx(tx);
            return;
        }
        // MAIL, RCPTs and DATA are answered.
        let go = tx.data.as_ref().is_some_and(|d| d.code == 354);
        if go && mail_ok && accepted > 0 {
            if let Some(body) = tx.body.take() {
                self.out.extend_from_slice(&body);
            }
            tx.body_sent = true;
            self.state = State::Tx(tx);
        } else if go {
            // RFC 2920: DATA was accepted though nothing else was; end it empty.
            self.out.extend_from_slice(b".\r\n");
            let rcpts = finish(&tx, None);
            self.events
                .push_back(ClientEvent::Done(TransactionResult { rcpts }));
            self.reset_after_failure();
        } else {
            let rcpts = finish(&tx, None);
            self.events
                .push_back(ClientEvent::Done(TransactionResult { rcpts }));
            self.reset_after_failure();
        }
    }

    /// After a failed transaction the connection is not reused: QUIT.
    fn reset_after_failure(&mut self) {
        self.out.extend_from_slice(b"QUIT\r\n");
        self.state = State::Quit;
    }
}

/// Per-recipient replies of a finished transaction: MAIL's failure for all, else each RCPT's
/// own failure, else DATA's failure, else the final reply.
fn finish(tx: &Tx, last: Option<(Stage, &RemoteReply)>) -> Vec<(Stage, RemoteReply)> {
    let missing = || RemoteReply {
        code: 451,
        enhanced: Some("4.4.2".into()),
        lines: vec!["no reply to this command".into()],
    };
    (0..tx.n_rcpts)
        .map(|i| match (&tx.mail, tx.rcpt_replies.get(i)) {
            (Some(m), _) if !m.is_ok() => (Stage::Mail, m.clone()),
            (None, _) => (Stage::Mail, missing()),
            (_, Some(r)) if !r.is_ok() => (Stage::Rcpt, r.clone()),
            (_, None) => (Stage::Rcpt, missing()),
            (_, Some(_)) => match (&tx.data, last) {
                (Some(d), _) if d.code != 354 => (Stage::Data, d.clone()),
                (None, _) => (Stage::Data, missing()),
                (_, Some((s, r))) => (s, r.clone()),
                (_, None) => (Stage::Dot, missing()),
            },
        })
        .collect()
}

/// Dot-stuffs a message and appends the terminating `.`: lines starting with `.` get another,
/// a missing final CRLF is added.
pub fn stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 64 + 5);
    // A line starts with `.` at the start or after a LF: only those places get a second `.`,
    // found with a vectorised search, and the runs between them are copied whole.
    let mut from = 0;
    if body.first() == Some(&b'.') {
        out.push(b'.');
    }
    for lf in memchr::memmem::find_iter(body, b"\n.") {
        out.extend_from_slice(&body[from..=lf]);
        out.push(b'.');
        from = lf + 1;
    }
    out.extend_from_slice(&body[from..]);
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tx(rcpts: &[&str], body: &[u8]) -> Transaction {
        let a = |s: &str| crate::address::parse_mailbox(s, false).unwrap();
        Transaction {
            mail_from: Some(a("a@x.test")),
            rcpts: rcpts.iter().map(|r| a(r)).collect(),
            body: body.to_vec().into(),
            smtputf8: false,
        }
    }

    fn out(c: &mut ClientConn) -> String {
        String::from_utf8(c.output()).unwrap()
    }

    /// A connection past EHLO with the given extensions.
    fn ready(ext: &str) -> ClientConn {
        let mut c = ClientConn::new("mta.test", TlsWish::Never);
        c.feed(b"220 mx.test ESMTP\r\n");
        assert_eq!(out(&mut c), "EHLO mta.test\r\n");
        c.feed(format!("250-mx.test\r\n{ext}250 HELP\r\n").as_bytes());
        assert_eq!(c.poll(), Some(ClientEvent::Ready));
        c
    }

    #[test]
    fn parser_handles_multiline_split_reads_and_enhanced_codes() {
        let mut p = ReplyParser::default();
        p.feed(b"250-first\r\n250-sec");
        assert!(p.next_reply().is_none());
        p.feed(b"ond\r\n250 third\r\n550 5.1.1 <u@x> no such user\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!((r.code, r.lines.len()), (250, 3));
        assert_eq!(r.enhanced, None);
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(r.text(), "<u@x> no such user");
        // A 4.x.x code on a 5xx line is text, not an enhanced code.
        p.feed(b"550 4.1.1 odd\r\n");
        assert_eq!(p.next_reply().unwrap().unwrap().enhanced, None);
        for bad in [
            &b"25 short\r\n"[..],
            b"abc text\r\n",
            b"250xtext\r\n",
            b"700 no\r\n",
        ] {
            let mut p = ReplyParser::default();
            p.feed(bad);
            assert!(p.next_reply().unwrap().is_err(), "{bad:?}");
        }
        let mut p = ReplyParser::default();
        p.feed(b"250-a\r\n251 b\r\n");
        assert!(p.next_reply().unwrap().is_err());
        let mut p = ReplyParser::default();
        p.feed(&vec![b'2'; MAX_LINE + 1]);
        assert!(p.next_reply().unwrap().is_err());
    }

    #[test]
    fn pipelined_transaction_sends_one_flight_and_reuses_the_connection() {
        let mut c = ready("250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n");
        assert!(c.capabilities().pipelining);
        c.start(tx(
            &["b@y.test", "c@y.test"],
            b"Subject: hi\r\n\r\n.dot\r\nend",
        ))
        .unwrap();
        assert_eq!(
            out(&mut c),
            "MAIL FROM:<a@x.test> SIZE=24\r\nRCPT TO:<b@y.test>\r\nRCPT TO:<c@y.test>\r\nDATA\r\n"
        );
        assert_eq!(c.waiting(), Waiting::Reply(Stage::Mail));
        c.feed(b"250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n");
        assert_eq!(out(&mut c), "Subject: hi\r\n\r\n..dot\r\nend\r\n.\r\n");
        assert_eq!(c.waiting(), Waiting::Reply(Stage::Dot));
        c.feed(b"250 2.0.0 queued as X\r\n");
        let Some(ClientEvent::Done(r)) = c.poll() else {
            panic!("no result")
        };
        assert_eq!(r.rcpts[0].0, Stage::Dot);
        assert_eq!(r.rcpts[0].1.code, 250);
        assert_eq!(r.rcpts[1].0, Stage::Rcpt);
        assert_eq!(r.rcpts[1].1.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(c.poll(), Some(ClientEvent::Ready));
        // The connection takes another transaction.
        c.start(tx(&["d@y.test"], b"x\r\n")).unwrap();
        assert!(out(&mut c).starts_with("MAIL FROM:<a@x.test> SIZE=3\r\n"));
    }

    #[test]
    fn without_pipelining_commands_go_one_at_a_time_and_stop_early() {
        let mut c = ready("");
        c.start(tx(&["b@y.test", "c@y.test"], b"x\r\n")).unwrap();
        assert_eq!(out(&mut c), "MAIL FROM:<a@x.test>\r\n");
        c.feed(b"250 ok\r\n");
        assert_eq!(out(&mut c), "RCPT TO:<b@y.test>\r\n");
        c.feed(b"450 4.2.1 busy\r\n");
        assert_eq!(out(&mut c), "RCPT TO:<c@y.test>\r\n");
        c.feed(b"550 5.1.1 unknown\r\n");
        // Nobody accepted: no DATA, and the connection is closed politely.
        let Some(ClientEvent::Done(r)) = c.poll() else {
            panic!("no result")
        };
        assert_eq!(
            r.rcpts.iter().map(|(_, r)| r.code).collect::<Vec<_>>(),
            [450, 550]
        );
        assert_eq!(out(&mut c), "QUIT\r\n");
        c.feed(b"221 bye\r\n");
        assert_eq!(c.waiting(), Waiting::Nothing);
    }

    #[test]
    fn mail_rejection_fails_every_recipient_and_ends_an_accepted_data() {
        let mut c = ready("250-PIPELINING\r\n");
        c.start(tx(&["b@y.test", "c@y.test"], b"x\r\n")).unwrap();
        out(&mut c);
        c.feed(b"553 5.7.1 sender refused\r\n554 no valid rcpt\r\n554 no valid rcpt\r\n354 go\r\n");
        let Some(ClientEvent::Done(r)) = c.poll() else {
            panic!("no result")
        };
        assert!(r
            .rcpts
            .iter()
            .all(|(s, r)| *s == Stage::Mail && r.code == 553));
        assert_eq!(out(&mut c), ".\r\nQUIT\r\n");
    }

    #[test]
    fn starttls_then_fresh_ehlo_and_required_tls_fails_without_it() {
        let mut c = ClientConn::new("mta.test", TlsWish::Opportunistic);
        c.feed(b"220 hi\r\n");
        out(&mut c);
        c.feed(b"250-mx\r\n250-STARTTLS\r\n250 PIPELINING\r\n");
        assert_eq!(out(&mut c), "STARTTLS\r\n");
        c.feed(b"220 go ahead\r\n");
        assert_eq!(c.poll(), Some(ClientEvent::StartTls));
        c.tls_done(Ok(()));
        assert!(c.tls_active());
        assert!(!c.capabilities().pipelining, "capabilities are forgotten");
        assert_eq!(out(&mut c), "EHLO mta.test\r\n");
        c.feed(b"250-mx\r\n250 PIPELINING\r\n");
        assert_eq!(c.poll(), Some(ClientEvent::Ready));
        assert!(c.capabilities().pipelining);

        // Injected plaintext after the 220 is refused.
        let mut c = ClientConn::new("mta.test", TlsWish::Opportunistic);
        c.feed(b"220 hi\r\n250-mx\r\n250 STARTTLS\r\n");
        c.feed(b"220 go\r\n250 injected\r\n");
        assert!(matches!(
            c.poll(),
            Some(ClientEvent::Failed(Failure::Protocol { .. }))
        ));

        let mut c = ClientConn::new("mta.test", TlsWish::Required);
        c.feed(b"220 hi\r\n250 mx\r\n");
        assert_eq!(c.poll(), Some(ClientEvent::Failed(Failure::TlsRequired)));
    }

    #[test]
    fn helo_fallback_and_local_checks_before_sending() {
        let mut c = ClientConn::new("mta.test", TlsWish::Opportunistic);
        c.feed(b"220 old\r\n");
        out(&mut c);
        c.feed(b"502 what\r\n");
        assert_eq!(out(&mut c), "HELO mta.test\r\n");
        c.feed(b"250 hello\r\n");
        assert_eq!(c.poll(), Some(ClientEvent::Ready));
        let eight = tx(&["b@y.test"], "caf\u{e9}\r\n".as_bytes());
        assert_eq!(
            c.start(eight),
            Err(Failure::Unsupported {
                extension: "8BITMIME"
            })
        );
        let mut utf8 = tx(&["b@y.test"], b"x\r\n");
        utf8.smtputf8 = true;
        assert_eq!(
            c.start(utf8),
            Err(Failure::Unsupported {
                extension: "SMTPUTF8"
            })
        );
        let mut c = ready("250-SIZE 10\r\n");
        assert_eq!(
            c.start(tx(&["b@y.test"], &[b'x'; 20])),
            Err(Failure::TooBig {
                size: 20,
                limit: 10
            })
        );
        assert!(c.output().is_empty(), "nothing was said to the server");
    }

    #[test]
    fn failures_at_each_stage() {
        let mut c = ClientConn::new("mta.test", TlsWish::Never);
        c.feed(b"554 go away\r\n");
        assert!(matches!(
            c.poll(),
            Some(ClientEvent::Failed(Failure::Reply {
                stage: Stage::Greeting,
                ..
            }))
        ));
        let mut c = ready("");
        c.start(tx(&["b@y.test"], b"x\r\n")).unwrap();
        c.eof();
        assert_eq!(
            c.poll(),
            Some(ClientEvent::Failed(Failure::Closed { stage: Stage::Mail }))
        );
        let mut c = ready("");
        c.feed(b"garbage\r\n");
        assert!(matches!(
            c.poll(),
            Some(ClientEvent::Failed(Failure::Protocol { .. }))
        ));
    }

    #[test]
    fn stuffing() {
        assert_eq!(stuff(b".a\r\nb\r\n..c"), b"..a\r\nb\r\n...c\r\n.\r\n");
        assert_eq!(stuff(b""), b".\r\n");
        // A bare LF starts a line too (the receiver refuses them, but a stored body is
        // sent as it is); a dot after a CR alone does not.
        assert_eq!(stuff(b"a\n.b\r.c\r\n"), b"a\n..b\r.c\r\n.\r\n");
        assert_eq!(stuff(b".\r\n."), b"..\r\n..\r\n.\r\n");
        assert_eq!(stuff(b"\n\n.."), b"\n\n...\r\n.\r\n");
    }

    /// Stuffing found by search agrees with stuffing line by line, on every body of up to 8
    /// bytes over `.`, CR, LF and `a`.
    #[test]
    fn stuffing_agrees_with_line_by_line() {
        fn by_lines(body: &[u8]) -> Vec<u8> {
            let mut out = Vec::new();
            for line in body.split_inclusive(|&b| b == b'\n') {
                if line[0] == b'.' {
                    out.push(b'.');
                }
                out.extend_from_slice(line);
            }
            if !body.is_empty() && !body.ends_with(b"\r\n") {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
            out
        }
        let alphabet = [b'.', b'\r', b'\n', b'a'];
        for len in 0..=8u32 {
            for n in 0..4usize.pow(len) {
                let body: Vec<u8> = (0..len).map(|i| alphabet[n / 4usize.pow(i) % 4]).collect();
                assert_eq!(stuff(&body), by_lines(&body), "{body:?}");
            }
        }
    }

    #[test]
    fn eight_bit_bodies_need_8bitmime() {
        let mut c = ready("");
        let mut t = tx(&["b@y.test"], b"caf\xc3\xa9\r\n");
        assert!(matches!(
            c.start(t.clone()),
            Err(Failure::Unsupported {
                extension: "8BITMIME"
            })
        ));
        let mut c = ready("250-8BITMIME\r\n");
        c.start(t.clone()).unwrap();
        assert_eq!(out(&mut c), "MAIL FROM:<a@x.test> BODY=8BITMIME\r\n");
        t.body = b"plain\r\n".to_vec().into();
        let mut c = ready("250-8BITMIME\r\n");
        c.start(t).unwrap();
        assert_eq!(out(&mut c), "MAIL FROM:<a@x.test>\r\n");
    }
}
