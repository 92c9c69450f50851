//! The SMTP server session state machine.

use std::collections::VecDeque;
use std::net::IpAddr;

use base64::Engine as _;

use crate::address::{parse_path, Address, PathError};
use crate::data::{DataError, DataReceiver};
use crate::reply::{canned, Reply};

/// Limits and identity, shared by every session of a listener.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Our host name, in the greeting, EHLO reply and `Received:` header.
    pub hostname: String,
    /// Largest message accepted, in bytes (advertised as SIZE).
    pub max_message_size: u64,
    /// Most recipients in one transaction.
    pub max_recipients: usize,
    /// Longest command line, CRLF excluded (AUTH responses included).
    pub max_command_line: usize,
    /// Longest message line, CRLF excluded (RFC 5322 says 998).
    pub max_data_line: usize,
    /// Rejected commands tolerated before `421` and close.
    pub max_bad_commands: u32,
    /// Failed AUTH attempts tolerated before `421` and close.
    pub max_auth_failures: u32,
    /// NOOP, RSET, VRFY and HELP answered between two messages; past it each counts as an
    /// error (toward [`SessionConfig::max_bad_commands`]), so a client cannot hold a session
    /// open for ever with them (Postfix's `smtpd_junk_command_limit`).
    pub max_junk_commands: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            hostname: "localhost".into(),
            max_message_size: 25_000_000,
            max_recipients: 1000,
            max_command_line: 4096,
            max_data_line: 998,
            max_bad_commands: 20,
            max_auth_failures: 3,
            max_junk_commands: 100,
        }
    }
}

/// Negotiated TLS parameters, for the `Received:` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    /// e.g. `TLSv1.3`.
    pub version: String,
    /// e.g. `TLS13_AES_256_GCM_SHA384`.
    pub cipher: String,
}

/// What the runtime knows about the connection when it starts.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    /// The client's address.
    pub client_ip: IpAddr,
    /// Set when the listener is implicit TLS (the handshake is already done).
    pub tls: Option<TlsInfo>,
    /// STARTTLS can be offered (a certificate is configured).
    pub starttls_available: bool,
    /// AUTH is offered at all.
    pub auth_available: bool,
    /// AUTH may be used without TLS (only where configuration allows, e.g. loopback in dev).
    pub auth_without_tls: bool,
    /// The client's IP is in a relay CIDR: it may relay without AUTH.
    pub relay_by_ip: bool,
}

/// SASL mechanisms spoken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMechanism {
    /// RFC 4616.
    Plain,
    /// The de-facto LOGIN mechanism.
    Login,
}

/// One accepted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// EHLO/HELO argument.
    pub helo: String,
    /// `None` for the null reverse-path `<>`.
    pub mail_from: Option<Address>,
    /// Accepted recipients in order.
    pub rcpt_to: Vec<Address>,
    /// BODY=8BITMIME was given.
    pub body_8bit: bool,
    /// SMTPUTF8 was given.
    pub smtputf8: bool,
    /// Authenticated tenant, if any.
    pub tenant: Option<String>,
    /// TLS in force when the message was received.
    pub tls: Option<TlsInfo>,
}

/// What the runtime must do next.
#[derive(Debug)]
pub enum Event {
    /// Write this reply (batch consecutive ones; flush before waiting for input).
    Reply(Reply),
    /// Flush the replies so far, then start the TLS handshake on the socket and call
    /// [`Session::tls_done`]. Input read before this point has been discarded.
    StartTls,
    /// Check these credentials and call [`Session::auth_done`].
    Authenticate {
        /// The mechanism used.
        mechanism: AuthMechanism,
        /// Authorization identity (PLAIN only; usually empty).
        authzid: String,
        /// Username.
        username: String,
        /// Password.
        password: String,
    },
    /// A syntactically valid MAIL: apply rate limits and call [`Session::mail_done`].
    Mail {
        /// `None` for `<>`.
        reverse_path: Option<Address>,
    },
    /// A complete message: store it and call [`Session::message_done`] with the reply.
    Message {
        /// Who from, to whom.
        envelope: Envelope,
        /// The message as received, dot-unstuffed, CRLF line endings.
        data: Vec<u8>,
    },
    /// Flush the replies and close the connection.
    Close,
}

/// Where in the conversation we are.
#[derive(Debug)]
enum Phase {
    Command,
    AuthPlain,
    AuthLoginUser,
    AuthLoginPass {
        user: String,
    },
    Data(DataReceiver),
    /// A too-long command line: skip to its end.
    DiscardLine,
    /// An event is out with the runtime.
    Waiting,
    Closed,
}

#[derive(Debug, Clone)]
struct Mail {
    from: Option<Address>,
    body_8bit: bool,
    smtputf8: bool,
}

/// Why AUTH did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Wrong username or password (535 5.7.8).
    Invalid,
    /// The credentials could not be checked right now (454 4.7.0).
    Temporary,
}

/// One SMTP server conversation. See the crate docs for how to drive it.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    conn: ConnectionInfo,
    input: Vec<u8>,
    phase: Phase,
    helo: Option<String>,
    esmtp: bool,
    tenant: Option<String>,
    mail: Option<Mail>,
    pending_mail: Option<Mail>,
    rcpts: Vec<Address>,
    bad_commands: u32,
    auth_failures: u32,
    /// Junk commands since the last message.
    junk_commands: u32,
    events: VecDeque<Event>,
}

impl Session {
    /// A new session. Write [`Session::greeting`] first.
    pub fn new(cfg: SessionConfig, conn: ConnectionInfo) -> Self {
        Self {
            cfg,
            conn,
            input: Vec::new(),
            phase: Phase::Command,
            helo: None,
            esmtp: false,
            tenant: None,
            mail: None,
            pending_mail: None,
            rcpts: Vec::new(),
            bad_commands: 0,
            auth_failures: 0,
            junk_commands: 0,
            events: VecDeque::new(),
        }
    }

    /// The 220 greeting.
    pub fn greeting(&self) -> Reply {
        Reply::plain(220, vec![format!("{} ESMTP Skein", self.cfg.hostname)])
    }

    /// The authenticated tenant, if any.
    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// Whether the session is receiving message content (the runtime applies the DATA
    /// timeout instead of the command timeout).
    pub fn in_data(&self) -> bool {
        matches!(self.phase, Phase::Data(_))
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// Whether an event is out with the runtime (do not feed input until it is answered).
    pub fn is_waiting(&self) -> bool {
        matches!(self.phase, Phase::Waiting)
    }

    /// Hands the session bytes read from the client.
    pub fn feed(&mut self, bytes: &[u8]) {
        if !self.is_closed() {
            self.input.extend_from_slice(bytes);
        }
    }

    /// The next thing for the runtime to do, or `None` when more input is needed (or an event
    /// is pending, or the session is closed).
    pub fn poll(&mut self) -> Option<Event> {
        if self.events.is_empty() {
            self.process();
        }
        self.events.pop_front()
    }

    /// The TLS handshake after STARTTLS finished: the session starts over (RFC 3207 4.2).
    pub fn tls_done(&mut self, info: TlsInfo) {
        self.conn.tls = Some(info);
        self.helo = None;
        self.esmtp = false;
        self.tenant = None;
        self.reset_transaction();
        self.input.clear();
        self.phase = Phase::Command;
    }

    /// The result of an [`Event::Authenticate`]: the tenant name, or why not.
    pub fn auth_done(&mut self, result: Result<String, AuthFailure>) {
        self.phase = Phase::Command;
        match result {
            Ok(tenant) => {
                self.tenant = Some(tenant);
                self.reply(Reply::new(235, "2.7.0", "Authentication successful"));
            }
            Err(AuthFailure::Temporary) => {
                self.reply(Reply::new(454, "4.7.0", "Temporary authentication failure"));
            }
            Err(AuthFailure::Invalid) => {
                self.auth_failures += 1;
                self.reply(Reply::new(
                    535,
                    "5.7.8",
                    "Authentication credentials invalid",
                ));
                if self.auth_failures >= self.cfg.max_auth_failures {
                    let host = self.cfg.hostname.clone();
                    self.close_with(Reply::new(
                        421,
                        "4.7.0",
                        format!("{host} Too many failed authentication attempts"),
                    ));
                }
            }
        }
    }

    /// The result of an [`Event::Mail`]: `Ok` to accept, or the refusal (a 421 also closes).
    pub fn mail_done(&mut self, result: Result<(), Reply>) {
        self.phase = Phase::Command;
        let mail = self.pending_mail.take();
        match result {
            Ok(()) => {
                self.mail = mail;
                self.reply(Reply::new(250, "2.1.0", "Ok"));
            }
            Err(r) if r.code == 421 => self.close_with(r),
            Err(r) => self.reply(r),
        }
    }

    /// The result of an [`Event::Message`]: the reply to send after the final dot. The
    /// transaction is over either way.
    pub fn message_done(&mut self, reply: Reply) {
        self.phase = Phase::Command;
        self.reset_transaction();
        self.junk_commands = 0;
        if reply.code == 421 {
            self.close_with(reply);
        } else {
            self.reply(reply);
        }
    }

    fn reset_transaction(&mut self) {
        self.mail = None;
        self.pending_mail = None;
        self.rcpts.clear();
    }

    fn reply(&mut self, r: Reply) {
        self.events.push_back(Event::Reply(r));
    }

    fn close_with(&mut self, r: Reply) {
        self.reply(r);
        self.events.push_back(Event::Close);
        self.phase = Phase::Closed;
        self.input.clear();
    }

    /// A refused command: counts toward the error limit.
    fn reject(&mut self, r: Reply) {
        self.reply(r);
        self.count_error("Too many errors");
    }

    /// One more error; at the limit, `421` with `why` and close.
    fn count_error(&mut self, why: &str) {
        self.bad_commands += 1;
        if self.bad_commands >= self.cfg.max_bad_commands {
            let host = self.cfg.hostname.clone();
            self.close_with(Reply::new(421, "4.7.0", format!("{host} {why}, closing")));
        }
    }

    fn process(&mut self) {
        loop {
            if !self.events.is_empty() {
                return;
            }
            match &mut self.phase {
                Phase::Closed | Phase::Waiting => return,
                Phase::Data(rx) => match rx.feed(&self.input) {
                    None => {
                        self.input.clear();
                        return;
                    }
                    Some(n) => {
                        self.input.drain(..n);
                        let Phase::Data(rx) = std::mem::replace(&mut self.phase, Phase::Command)
                        else {
                            unreachable!("matched Data above")
                        };
                        self.end_of_data(rx);
                    }
                },
                Phase::DiscardLine => match memchr_lf(&self.input) {
                    None => {
                        self.input.clear();
                        return;
                    }
                    Some(i) => {
                        self.input.drain(..=i);
                        self.phase = Phase::Command;
                    }
                },
                _ => {
                    let Some(i) = memchr_lf(&self.input) else {
                        if self.input.len() > self.cfg.max_command_line {
                            self.input.clear();
                            self.phase = Phase::DiscardLine;
                            self.reject(Reply::new(500, "5.5.2", "Line too long"));
                        }
                        return;
                    };
                    let mut line: Vec<u8> = self.input.drain(..=i).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    if line.len() > self.cfg.max_command_line {
                        self.reject(Reply::new(500, "5.5.2", "Line too long"));
                        continue;
                    }
                    self.line(line);
                }
            }
        }
    }

    fn end_of_data(&mut self, rx: DataReceiver) {
        let max = self.cfg.max_message_size;
        let max_line = self.cfg.max_data_line;
        match rx.finish() {
            Err(DataError::TooBig) => {
                self.reset_transaction();
                self.reply(Reply::new(
                    552,
                    "5.3.4",
                    format!("Message size exceeds fixed maximum message size of {max} bytes"),
                ));
            }
            Err(DataError::BareLineEnding) => {
                self.reset_transaction();
                self.reply(Reply::new(
                    554,
                    "5.6.0",
                    "Message contains bare CR or LF; lines must end with CRLF (RFC 5321 2.3.8)",
                ));
            }
            Err(DataError::LineTooLong) => {
                self.reset_transaction();
                self.reply(Reply::new(
                    554,
                    "5.6.0",
                    format!("Message contains a line longer than {max_line} characters"),
                ));
            }
            Ok(data) => {
                let Some(mail) = self.mail.clone() else {
                    // Unreachable by construction: DATA needs MAIL. Refuse rather than panic.
                    self.reply(Reply::new(503, "5.5.1", "Need MAIL command"));
                    return;
                };
                let envelope = Envelope {
                    helo: self.helo.clone().unwrap_or_default(),
                    mail_from: mail.from,
                    rcpt_to: std::mem::take(&mut self.rcpts),
                    body_8bit: mail.body_8bit,
                    smtputf8: mail.smtputf8,
                    tenant: self.tenant.clone(),
                    tls: self.conn.tls.clone(),
                };
                self.phase = Phase::Waiting;
                self.events.push_back(Event::Message { envelope, data });
            }
        }
    }

    fn line(&mut self, line: Vec<u8>) {
        match std::mem::replace(&mut self.phase, Phase::Command) {
            Phase::AuthPlain => self.auth_plain_response(&line),
            Phase::AuthLoginUser => match decode_b64(&line) {
                Err(r) => self.auth_abort(r),
                Ok(user) => {
                    self.phase = Phase::AuthLoginPass { user };
                    self.reply(Reply::plain(334, vec!["UGFzc3dvcmQ6".into()]));
                }
            },
            Phase::AuthLoginPass { user } => match decode_b64(&line) {
                Err(r) => self.auth_abort(r),
                Ok(password) => {
                    self.phase = Phase::Waiting;
                    self.events.push_back(Event::Authenticate {
                        mechanism: AuthMechanism::Login,
                        authzid: String::new(),
                        username: user,
                        password,
                    });
                }
            },
            _ => self.command(&line),
        }
    }

    fn auth_abort(&mut self, r: Reply) {
        self.phase = Phase::Command;
        self.reject(r);
    }

    fn auth_plain_response(&mut self, line: &[u8]) {
        let raw = match line {
            b"*" => return self.auth_abort(Reply::new(501, "5.0.0", "Authentication cancelled")),
            _ => match base64::engine::general_purpose::STANDARD.decode(line) {
                Ok(v) => v,
                Err(_) => {
                    return self.auth_abort(Reply::new(501, "5.5.2", "Cannot decode AUTH response"))
                }
            },
        };
        let parts: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let [authzid, user, pass] = parts[..] else {
            return self.auth_abort(Reply::new(501, "5.5.2", "Malformed AUTH PLAIN response"));
        };
        let (Ok(authzid), Ok(user), Ok(pass)) = (
            String::from_utf8(authzid.to_vec()),
            String::from_utf8(user.to_vec()),
            String::from_utf8(pass.to_vec()),
        ) else {
            return self.auth_abort(Reply::new(501, "5.5.2", "AUTH PLAIN response is not UTF-8"));
        };
        self.phase = Phase::Waiting;
        self.events.push_back(Event::Authenticate {
            mechanism: AuthMechanism::Plain,
            authzid,
            username: user,
            password: pass,
        });
    }

    fn auth_offered(&self) -> bool {
        self.conn.auth_available && (self.conn.tls.is_some() || self.conn.auth_without_tls)
    }

    fn command(&mut self, line: &[u8]) {
        let Ok(line) = std::str::from_utf8(line) else {
            return self.reject(Reply::new(500, "5.5.2", "Command is not valid UTF-8"));
        };
        if line.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
            return self.reject(Reply::new(500, "5.5.2", "Control characters in command"));
        }
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        if matches!(verb.as_str(), "NOOP" | "RSET" | "VRFY" | "HELP") {
            self.junk_commands = self.junk_commands.saturating_add(1);
        }
        // The command is answered as usual; past the junk limit it also counts as an error.
        let junk = self.junk_commands > self.cfg.max_junk_commands
            && matches!(verb.as_str(), "NOOP" | "RSET" | "VRFY" | "HELP");
        match verb.as_str() {
            "EHLO" => self.ehlo(arg, true),
            "HELO" => self.ehlo(arg, false),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => self.data(arg),
            "RSET" => {
                self.reset_transaction();
                self.reply(canned::ok());
            }
            "NOOP" => self.reply(canned::ok()),
            "QUIT" => self.close_with(canned::bye()),
            "VRFY" => self.reply(Reply::new(
                252,
                "2.5.2",
                "Cannot VRFY user, but will accept message and attempt delivery",
            )),
            "EXPN" => self.reject(Reply::new(502, "5.5.1", "EXPN not supported")),
            "HELP" => self.reply(Reply::new(
                214,
                "2.0.0",
                "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS AUTH",
            )),
            "STARTTLS" => self.starttls(arg),
            "AUTH" => self.auth(arg),
            "" => self.reject(Reply::new(500, "5.5.2", "Error: empty command")),
            _ => self.reject(Reply::new(500, "5.5.2", "Error: command not recognized")),
        }
        if junk && !self.is_closed() {
            self.count_error("Too many commands without a message");
        }
    }

    fn ehlo(&mut self, arg: &str, esmtp: bool) {
        let verb = if esmtp { "EHLO" } else { "HELO" };
        if arg.is_empty() || arg.contains(' ') || arg.len() > 255 {
            return self.reject(Reply::new(501, "5.5.4", format!("Syntax: {verb} hostname")));
        }
        self.reset_transaction();
        self.helo = Some(arg.to_string());
        self.esmtp = esmtp;
        let host = &self.cfg.hostname;
        if !esmtp {
            return self.reply(Reply::plain(250, vec![host.clone()]));
        }
        let mut lines = vec![
            format!("{host} Hello {arg}"),
            "PIPELINING".into(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".into(),
            "SMTPUTF8".into(),
            "ENHANCEDSTATUSCODES".into(),
        ];
        if self.conn.starttls_available && self.conn.tls.is_none() {
            lines.push("STARTTLS".into());
        }
        if self.auth_offered() && self.tenant.is_none() {
            lines.push("AUTH PLAIN LOGIN".into());
        }
        self.reply(Reply::plain(250, lines));
    }

    fn mail(&mut self, arg: &str) {
        if self.helo.is_none() {
            return self.reject(Reply::new(503, "5.5.1", "Error: send HELO/EHLO first"));
        }
        if self.mail.is_some() {
            return self.reject(Reply::new(503, "5.5.1", "Error: nested MAIL command"));
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self.reject(Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>"));
        };
        let Some((path, params)) = split_path(rest.trim_start()) else {
            return self.reject(Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>"));
        };
        let mut mail = Mail {
            from: None,
            body_8bit: false,
            smtputf8: false,
        };
        for p in params.split(' ').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_uppercase().as_str() {
                "SIZE" if self.esmtp => match v.parse::<u64>() {
                    Ok(n) if n > self.cfg.max_message_size => {
                        return self.reject(Reply::new(
                            552,
                            "5.3.4",
                            "Message size exceeds fixed maximum message size",
                        ))
                    }
                    Ok(_) => {}
                    Err(_) => return self.reject(Reply::new(501, "5.5.4", "Bad SIZE parameter")),
                },
                "BODY" if self.esmtp => match v.to_ascii_uppercase().as_str() {
                    "7BIT" => mail.body_8bit = false,
                    "8BITMIME" => mail.body_8bit = true,
                    _ => return self.reject(Reply::new(501, "5.5.4", "Bad BODY parameter")),
                },
                "SMTPUTF8" if self.esmtp && v.is_empty() => mail.smtputf8 = true,
                // RFC 4954 5: accept and ignore AUTH=<mailbox> on MAIL.
                "AUTH" if self.esmtp => {}
                _ => {
                    return self.reject(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported MAIL parameter {k}"),
                    ))
                }
            }
        }
        match parse_path(path, mail.smtputf8) {
            Ok(from) => mail.from = from,
            Err(e) => {
                let r = match e {
                    PathError::NeedsUtf8 => {
                        Reply::new(553, "5.6.7", "Non-ASCII sender address requires SMTPUTF8")
                    }
                    PathError::SourceRoute | PathError::RelayTrick => Reply::new(
                        553,
                        "5.1.7",
                        "Source routes, %-hacks and ! paths are not accepted",
                    ),
                    _ => Reply::new(501, "5.1.7", "Bad sender address syntax"),
                };
                return self.reject(r);
            }
        }
        let reverse_path = mail.from.clone();
        self.pending_mail = Some(mail);
        self.phase = Phase::Waiting;
        self.events.push_back(Event::Mail { reverse_path });
    }

    fn rcpt(&mut self, arg: &str) {
        let Some(mail) = &self.mail else {
            return self.reject(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        };
        let utf8 = mail.smtputf8;
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self.reject(Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"));
        };
        let Some((path, params)) = split_path(rest.trim_start()) else {
            return self.reject(Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"));
        };
        if let Some(p) = params.split(' ').find(|p| !p.is_empty()) {
            let k = p.split_once('=').map_or(p, |(k, _)| k);
            return self.reject(Reply::new(
                555,
                "5.5.4",
                format!("Unsupported RCPT parameter {k}"),
            ));
        }
        let addr = match parse_path(path, utf8) {
            Ok(Some(a)) => a,
            Ok(None) => return self.reject(Reply::new(501, "5.1.3", "Null recipient not allowed")),
            Err(PathError::NeedsUtf8) => {
                return self.reject(Reply::new(
                    553,
                    "5.6.7",
                    "Non-ASCII recipient address requires SMTPUTF8",
                ))
            }
            Err(PathError::SourceRoute | PathError::RelayTrick) => {
                return self.reject(Reply::new(
                    554,
                    "5.7.1",
                    format!(
                        "{path}: Relay access denied: source routes, %-hacks, ! paths and \
                         quoted addresses are not accepted"
                    ),
                ))
            }
            Err(_) => return self.reject(Reply::new(501, "5.1.3", "Bad recipient address syntax")),
        };
        if self.tenant.is_none() && !self.conn.relay_by_ip {
            return self.reject(Reply::new(
                554,
                "5.7.1",
                format!("<{addr}>: Relay access denied"),
            ));
        }
        if self.rcpts.len() >= self.cfg.max_recipients {
            // 452 is a temporary refusal of this recipient only; not a client error.
            return self.reply(Reply::new(452, "4.5.3", "Too many recipients"));
        }
        self.rcpts.push(addr);
        self.reply(Reply::new(250, "2.1.5", "Ok"));
    }

    fn data(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.reject(Reply::new(501, "5.5.4", "Syntax: DATA"));
        }
        if self.mail.is_none() {
            return self.reject(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        }
        if self.rcpts.is_empty() {
            return self.reject(Reply::new(554, "5.5.1", "Error: no valid recipients"));
        }
        self.reply(Reply::plain(
            354,
            vec!["End data with <CR><LF>.<CR><LF>".into()],
        ));
        self.phase = Phase::Data(DataReceiver::new(
            self.cfg.max_message_size,
            self.cfg.max_data_line,
            Vec::new(),
        ));
    }

    fn starttls(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.reject(Reply::new(501, "5.5.4", "Syntax: STARTTLS"));
        }
        if self.conn.tls.is_some() {
            return self.reject(Reply::new(503, "5.5.1", "Error: TLS already active"));
        }
        if !self.conn.starttls_available {
            return self.reject(Reply::new(502, "5.5.1", "Error: STARTTLS not available"));
        }
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        // RFC 3207 / CVE-2011-0411: anything pipelined after STARTTLS in plaintext is dropped.
        self.input.clear();
        self.phase = Phase::Waiting;
        self.events.push_back(Event::StartTls);
    }

    fn auth(&mut self, arg: &str) {
        if !self.esmtp {
            return self.reject(Reply::new(503, "5.5.1", "Error: send EHLO first"));
        }
        if self.tenant.is_some() {
            return self.reject(Reply::new(503, "5.5.1", "Error: already authenticated"));
        }
        if self.mail.is_some() {
            return self.reject(Reply::new(
                503,
                "5.5.1",
                "Error: AUTH not allowed during a transaction",
            ));
        }
        if !self.conn.auth_available {
            return self.reject(Reply::new(
                502,
                "5.5.1",
                "Error: authentication not enabled",
            ));
        }
        if !self.auth_offered() {
            return self.reject(Reply::new(
                538,
                "5.7.11",
                "Encryption required for requested authentication mechanism",
            ));
        }
        let (mech, initial) = match arg.split_once(' ') {
            Some((m, i)) => (m, Some(i.trim())),
            None => (arg, None),
        };
        match mech.to_ascii_uppercase().as_str() {
            "PLAIN" => match initial {
                // "=" is an empty initial response (RFC 4954 4).
                Some(i) if i != "=" => self.auth_plain_response(i.as_bytes()),
                _ => {
                    self.phase = Phase::AuthPlain;
                    self.reply(Reply::plain(334, vec![String::new()]));
                }
            },
            "LOGIN" => match initial {
                Some(i) => match decode_b64(i.as_bytes()) {
                    Err(r) => self.reject(r),
                    Ok(user) => {
                        self.phase = Phase::AuthLoginPass { user };
                        self.reply(Reply::plain(334, vec!["UGFzc3dvcmQ6".into()]));
                    }
                },
                None => {
                    self.phase = Phase::AuthLoginUser;
                    self.reply(Reply::plain(334, vec!["VXNlcm5hbWU6".into()]));
                }
            },
            "" => self.reject(Reply::new(501, "5.5.4", "Syntax: AUTH mechanism")),
            _ => self.reject(Reply::new(504, "5.5.4", "Unrecognized authentication type")),
        }
    }
}

fn memchr_lf(b: &[u8]) -> Option<usize> {
    b.iter().position(|c| *c == b'\n')
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Splits `<path> params` at the `>` that closes the path (quote-aware).
fn split_path(s: &str) -> Option<(&str, &str)> {
    if !s.starts_with('<') {
        return None;
    }
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                let rest = &s[i + 1..];
                if !rest.is_empty() && !rest.starts_with(' ') {
                    return None;
                }
                return Some((&s[..=i], rest.trim()));
            }
            _ => {}
        }
    }
    None
}

fn decode_b64(line: &[u8]) -> Result<String, Reply> {
    if line == b"*" {
        return Err(Reply::new(501, "5.0.0", "Authentication cancelled"));
    }
    base64::engine::general_purpose::STANDARD
        .decode(line)
        .ok()
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| Reply::new(501, "5.5.2", "Cannot decode AUTH response"))
}
