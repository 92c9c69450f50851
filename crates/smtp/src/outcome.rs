//! Remote outcomes as data: every reply and transport error of a delivery attempt, and the
//! one exhaustive function that classifies them.

use crate::client::RemoteReply;

/// Where in the dialogue something happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Resolving the destination.
    Dns,
    /// Opening the TCP connection.
    Connect,
    /// Waiting for the greeting.
    Greeting,
    /// EHLO or HELO.
    Ehlo,
    /// STARTTLS and the handshake.
    StartTls,
    /// MAIL FROM.
    Mail,
    /// RCPT TO.
    Rcpt,
    /// DATA.
    Data,
    /// The message and its final dot.
    Dot,
    /// QUIT.
    Quit,
}

impl Stage {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Connect => "connect",
            Self::Greeting => "greeting",
            Self::Ehlo => "ehlo",
            Self::StartTls => "starttls",
            Self::Mail => "mail",
            Self::Rcpt => "rcpt",
            Self::Data => "data",
            Self::Dot => "dot",
            Self::Quit => "quit",
        }
    }
}

/// Anything that ends an attempt other than a 2xx at the end of DATA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server replied with a failure.
    Reply {
        /// When.
        stage: Stage,
        /// What it said.
        reply: RemoteReply,
    },
    /// The connection could not be opened (refused, unreachable, bind failed).
    Connect(String),
    /// No reply in time.
    Timeout {
        /// Waiting for what.
        stage: Stage,
    },
    /// The server closed the connection or it broke.
    Closed {
        /// When.
        stage: Stage,
    },
    /// The server sent something that is not SMTP.
    Protocol {
        /// When.
        stage: Stage,
        /// What.
        message: String,
    },
    /// The TLS handshake failed.
    Tls(String),
    /// TLS is required for this destination and the server does not offer it.
    TlsRequired,
    /// The domain does not exist (NXDOMAIN).
    NoSuchDomain(String),
    /// The domain says it accepts no mail (RFC 7505 null MX).
    NullMx,
    /// DNS failed temporarily (timeout, SERVFAIL), or a host had no address.
    Dns(String),
    /// The message needs an extension the server lacks.
    Unsupported {
        /// `SMTPUTF8` or `8BITMIME`.
        extension: &'static str,
    },
    /// The message is bigger than the server's SIZE.
    TooBig {
        /// Message size.
        size: u64,
        /// Server's limit.
        limit: u64,
    },
    /// A recipient address that is not one (never sent to the server: it could carry a
    /// command).
    BadRecipient(String),
    /// The reverse-path is not an address (never sent to the server).
    BadSender(String),
    /// Every address of the domain's hosts is one mail may not go to (this host, the
    /// cluster's own edges...): a mail loop or a misconfigured MX. Says which and why.
    RefusedDestination(String),
}

/// What an outcome means for a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Delivered.
    Delivered,
    /// Try later.
    Transient,
    /// Give up and bounce.
    Permanent,
    /// The server asked to slow down: try later, not counted as an attempt.
    Throttled,
}

/// How far a failure reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The host: another MX host may do better.
    Connection,
    /// The whole message, on this host.
    Message,
    /// One recipient.
    Recipient,
}

/// A classified outcome with the reply to record (the remote one, or one made up locally that
/// says precisely what happened).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// Delivered, transient, permanent or throttled.
    pub class: Class,
    /// How far it reaches.
    pub scope: Scope,
    /// Reply code.
    pub code: u16,
    /// Enhanced status code.
    pub enhanced: String,
    /// Text.
    pub text: String,
}

fn local(class: Class, scope: Scope, code: u16, enhanced: &str, text: String) -> Verdict {
    Verdict {
        class,
        scope,
        code,
        enhanced: enhanced.to_string(),
        text,
    }
}

/// Whether a reply's text says it is greylisting.
fn greylisting(reply: &RemoteReply) -> bool {
    reply.lines.iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("greylist") || l.contains("graylist")
    })
}

/// Classifies a server reply at `stage`.
pub fn classify_reply(stage: Stage, reply: &RemoteReply) -> Verdict {
    let scope = match stage {
        Stage::Dns | Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::StartTls => {
            Scope::Connection
        }
        Stage::Mail | Stage::Data | Stage::Dot | Stage::Quit => Scope::Message,
        Stage::Rcpt => Scope::Recipient,
    };
    let enhanced = reply.enhanced.clone().unwrap_or_default();
    let class = match reply.code {
        200..=299 if stage == Stage::Dot => Class::Delivered,
        // A positive reply where a failure was reported: the server broke the protocol.
        200..=399 => Class::Transient,
        421 => Class::Throttled,
        // Greylisting (often 451 4.7.1) is about this sender and recipient, not a rate: a
        // plain retry, never a back-off of the whole provider.
        400..=499 if greylisting(reply) => Class::Transient,
        400..=499 if enhanced.starts_with("4.7.") => Class::Throttled,
        400..=499 => Class::Transient,
        // A 5xx greeting or EHLO refuses this client on this host, not the message: other MX
        // hosts may still take it, and the last one's answer is final.
        500..=599 => Class::Permanent,
        _ => Class::Transient,
    };
    Verdict {
        class,
        scope,
        code: reply.code,
        enhanced,
        text: reply.text(),
    }
}

/// Classifies any failure. Exhaustive: a new [`Failure`] must be decided here.
pub fn classify(f: &Failure) -> Verdict {
    use Class::*;
    use Scope::*;
    match f {
        Failure::Reply { stage, reply } => classify_reply(*stage, reply),
        Failure::Connect(e) => local(
            Transient,
            Connection,
            451,
            "4.4.1",
            format!("connect failed: {e}"),
        ),
        Failure::Timeout { stage } => local(
            Transient,
            if matches!(
                stage,
                Stage::Connect | Stage::Greeting | Stage::Ehlo | Stage::StartTls
            ) {
                Connection
            } else {
                Message
            },
            451,
            "4.4.2",
            format!("timed out waiting for the {} reply", stage.name()),
        ),
        Failure::Closed { stage } => local(
            Transient,
            if matches!(stage, Stage::Greeting | Stage::Ehlo | Stage::StartTls) {
                Connection
            } else {
                Message
            },
            451,
            "4.4.2",
            format!("connection lost at {}", stage.name()),
        ),
        Failure::Protocol { stage, message } => local(
            Transient,
            Connection,
            451,
            "4.5.0",
            format!("protocol error at {}: {message}", stage.name()),
        ),
        Failure::Tls(e) => local(
            Transient,
            Connection,
            451,
            "4.7.5",
            format!("TLS handshake failed: {e}"),
        ),
        Failure::TlsRequired => local(
            Transient,
            Connection,
            451,
            "4.7.10",
            "TLS is required for this destination and the server does not offer STARTTLS".into(),
        ),
        Failure::NoSuchDomain(d) => local(
            Permanent,
            Message,
            550,
            "5.1.2",
            format!("domain {d} does not exist"),
        ),
        Failure::NullMx => local(
            Permanent,
            Message,
            556,
            "5.1.10",
            "recipient domain accepts no mail (null MX)".into(),
        ),
        Failure::Dns(e) => local(
            Transient,
            Message,
            451,
            "4.4.3",
            format!("DNS lookup failed: {e}"),
        ),
        Failure::Unsupported { extension } => local(
            Permanent,
            Message,
            554,
            if *extension == "SMTPUTF8" {
                "5.6.7"
            } else {
                "5.6.3"
            },
            format!("the message needs {extension}, which the receiving server does not offer"),
        ),
        Failure::TooBig { size, limit } => local(
            Permanent,
            Message,
            552,
            "5.3.4",
            format!("message of {size} bytes exceeds the receiving server's limit of {limit}"),
        ),
        Failure::BadRecipient(why) => local(
            Permanent,
            Recipient,
            553,
            "5.1.3",
            format!("bad recipient address syntax: {why}"),
        ),
        Failure::BadSender(why) => local(
            Permanent,
            Message,
            553,
            "5.1.7",
            format!("bad sender address syntax: {why}"),
        ),
        Failure::RefusedDestination(why) => local(
            Permanent,
            Message,
            554,
            "5.4.6",
            format!("mail loop or misconfigured MX, not delivered: {why}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, enhanced: Option<&str>) -> RemoteReply {
        RemoteReply {
            code,
            enhanced: enhanced.map(str::to_string),
            lines: vec!["text".into()],
        }
    }

    #[test]
    fn replies_by_code_and_stage() {
        let cases = [
            (Stage::Dot, 250, None, Class::Delivered, Scope::Message),
            (
                Stage::Rcpt,
                550,
                Some("5.1.1"),
                Class::Permanent,
                Scope::Recipient,
            ),
            (
                Stage::Rcpt,
                450,
                Some("4.2.1"),
                Class::Transient,
                Scope::Recipient,
            ),
            (Stage::Rcpt, 452, None, Class::Transient, Scope::Recipient),
            (
                Stage::Mail,
                421,
                Some("4.7.0"),
                Class::Throttled,
                Scope::Message,
            ),
            (
                Stage::Rcpt,
                450,
                Some("4.7.1"),
                Class::Throttled,
                Scope::Recipient,
            ),
            (
                Stage::Dot,
                554,
                Some("5.7.1"),
                Class::Permanent,
                Scope::Message,
            ),
            (
                Stage::Dot,
                451,
                Some("4.3.0"),
                Class::Transient,
                Scope::Message,
            ),
            (
                Stage::Greeting,
                554,
                None,
                Class::Permanent,
                Scope::Connection,
            ),
            (
                Stage::Greeting,
                421,
                None,
                Class::Throttled,
                Scope::Connection,
            ),
            (Stage::Ehlo, 550, None, Class::Permanent, Scope::Connection),
            (Stage::Data, 250, None, Class::Transient, Scope::Message),
        ];
        for (stage, code, enh, class, scope) in cases {
            let v = classify_reply(stage, &reply(code, enh));
            assert_eq!(
                (v.class, v.scope),
                (class, scope),
                "{stage:?} {code} {enh:?}"
            );
            assert_eq!(v.code, code);
        }
    }

    #[test]
    fn local_failures_get_precise_codes() {
        let cases: Vec<(Failure, Class, Scope, &str)> = vec![
            (
                Failure::Connect("refused".into()),
                Class::Transient,
                Scope::Connection,
                "4.4.1",
            ),
            (
                Failure::Timeout {
                    stage: Stage::Greeting,
                },
                Class::Transient,
                Scope::Connection,
                "4.4.2",
            ),
            (
                Failure::Timeout { stage: Stage::Dot },
                Class::Transient,
                Scope::Message,
                "4.4.2",
            ),
            (
                Failure::Closed { stage: Stage::Rcpt },
                Class::Transient,
                Scope::Message,
                "4.4.2",
            ),
            (
                Failure::Tls("bad".into()),
                Class::Transient,
                Scope::Connection,
                "4.7.5",
            ),
            (
                Failure::TlsRequired,
                Class::Transient,
                Scope::Connection,
                "4.7.10",
            ),
            (
                Failure::NoSuchDomain("x.test".into()),
                Class::Permanent,
                Scope::Message,
                "5.1.2",
            ),
            (Failure::NullMx, Class::Permanent, Scope::Message, "5.1.10"),
            (
                Failure::Dns("SERVFAIL".into()),
                Class::Transient,
                Scope::Message,
                "4.4.3",
            ),
            (
                Failure::Unsupported {
                    extension: "SMTPUTF8",
                },
                Class::Permanent,
                Scope::Message,
                "5.6.7",
            ),
            (
                Failure::Unsupported {
                    extension: "8BITMIME",
                },
                Class::Permanent,
                Scope::Message,
                "5.6.3",
            ),
            (
                Failure::TooBig { size: 2, limit: 1 },
                Class::Permanent,
                Scope::Message,
                "5.3.4",
            ),
            (
                Failure::Protocol {
                    stage: Stage::Mail,
                    message: "junk".into(),
                },
                Class::Transient,
                Scope::Connection,
                "4.5.0",
            ),
        ];
        for (f, class, scope, enhanced) in cases {
            let v = classify(&f);
            assert_eq!(
                (v.class, v.scope, v.enhanced.as_str()),
                (class, scope, enhanced),
                "{f:?}"
            );
            assert!(
                v.code / 100 == if class == Class::Permanent { 5 } else { 4 },
                "{f:?}"
            );
            assert!(!v.text.is_empty());
        }
    }

    /// Greylisting in a 4.7.x reply is a plain deferral (found by the load harness: as a
    /// "slow down" it held back the sending IP's whole provider class at each first contact);
    /// other 4.7.x temporary replies stay a slow-down.
    #[test]
    fn greylisting_is_a_deferral_not_a_slow_down() {
        let reply = |code: u16, enhanced: &str, text: &str| RemoteReply {
            code,
            enhanced: Some(enhanced.into()),
            lines: vec![text.into()],
        };
        for r in [
            reply(451, "4.7.1", "Greylisted, please try again in 300 seconds"),
            reply(
                450,
                "4.7.1",
                "<a@b>: Recipient address rejected: GREYLISTED",
            ),
            reply(451, "4.7.1", "Please retry later, you are graylisted"),
        ] {
            assert_eq!(
                classify_reply(Stage::Rcpt, &r).class,
                Class::Transient,
                "{r:?}"
            );
        }
        let limit = reply(451, "4.7.1", "Too many messages from your IP, slow down");
        assert_eq!(classify_reply(Stage::Rcpt, &limit).class, Class::Throttled);
    }
}
