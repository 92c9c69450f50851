//! Table-driven tests of the session state machine through its public API: every reply code
//! the edge promises, smuggling, STARTTLS injection, AUTH and limits.

use base64::Engine as _;
use skein_smtp::session::AuthFailure;
use skein_smtp::{ConnectionInfo, Event, Reply, Session, SessionConfig, TlsInfo};

/// How the scripted runtime answers the session's questions.
#[derive(Clone)]
struct Runtime {
    /// Password that authenticates as tenant "acme" (user "acme").
    password: &'static str,
    /// Reply for MAIL rate-limit checks.
    mail: Option<Reply>,
    /// Reply after the final dot.
    message: Reply,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            password: "secret-pass",
            mail: None,
            message: Reply::new(250, "2.0.0", "Ok: queued as Q1"),
        }
    }
}

struct Outcome {
    replies: Vec<Reply>,
    closed: bool,
    messages: Vec<(skein_smtp::Envelope, Vec<u8>)>,
    starttls: usize,
}

impl Outcome {
    fn codes(&self) -> Vec<String> {
        self.replies
            .iter()
            .map(|r| match r.enhanced {
                Some(e) => format!("{} {e}", r.code),
                None => r.code.to_string(),
            })
            .collect()
    }
}

fn conn() -> ConnectionInfo {
    ConnectionInfo {
        client_ip: "192.0.2.10".parse().unwrap(),
        tls: None,
        starttls_available: true,
        auth_available: true,
        auth_without_tls: false,
        relay_by_ip: false,
    }
}

fn cfg() -> SessionConfig {
    SessionConfig {
        hostname: "edge.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_command_line: 512,
        max_data_line: 200,
        max_bad_commands: 5,
        max_auth_failures: 2,
        max_junk_commands: 10,
    }
}

/// Feeds `chunks` one after another (as if each arrived in its own read) and drives the
/// session the way the edge runtime does.
fn run(cfg: SessionConfig, conn: ConnectionInfo, rt: Runtime, chunks: &[&[u8]]) -> Outcome {
    let mut s = Session::new(cfg, conn);
    let mut out = Outcome {
        replies: vec![],
        closed: false,
        messages: vec![],
        starttls: 0,
    };
    for chunk in chunks {
        if s.is_closed() {
            break;
        }
        s.feed(chunk);
        while let Some(ev) = s.poll() {
            match ev {
                Event::Reply(r) => out.replies.push(r),
                Event::Close => out.closed = true,
                Event::StartTls => {
                    out.starttls += 1;
                    s.tls_done(TlsInfo {
                        version: "TLSv1.3".into(),
                        cipher: "X".into(),
                    });
                }
                Event::Authenticate {
                    username, password, ..
                } => {
                    if username == "acme" && password == rt.password {
                        s.auth_done(Ok("acme".into()));
                    } else if username == "down" {
                        s.auth_done(Err(AuthFailure::Temporary));
                    } else {
                        s.auth_done(Err(AuthFailure::Invalid));
                    }
                }
                Event::Mail { .. } => s.mail_done(rt.mail.clone().map_or(Ok(()), Err)),
                Event::Message { envelope, data } => {
                    out.messages.push((envelope, data));
                    s.message_done(rt.message.clone());
                }
            }
        }
    }
    out
}

fn relay_conn() -> ConnectionInfo {
    ConnectionInfo {
        relay_by_ip: true,
        ..conn()
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn reply_code_table() {
    let plain = b64("\0acme\0secret-pass");
    let bad = b64("\0acme\0wrong");
    let tls = ConnectionInfo {
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "X".into(),
        }),
        ..conn()
    };
    let cases: Vec<(&str, ConnectionInfo, String, Vec<&str>)> = vec![
        ("basic relay by ip", relay_conn(),
         "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n".into(),
         vec!["250", "250 2.1.0", "250 2.1.5", "354", "250 2.0.0", "221 2.0.0"]),
        ("HELO works too", relay_conn(), "HELO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.net>\r\n".into(),
         vec!["250", "250 2.1.0", "250 2.1.5"]),
        ("MAIL before HELO", relay_conn(), "MAIL FROM:<a@example.com>\r\n".into(), vec!["503 5.5.1"]),
        ("RCPT before MAIL", relay_conn(), "EHLO c\r\nRCPT TO:<b@example.net>\r\n".into(), vec!["250", "503 5.5.1"]),
        ("DATA before RCPT", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nDATA\r\n".into(), vec!["250", "250 2.1.0", "554 5.5.1"]),
        ("DATA before MAIL", relay_conn(), "EHLO c\r\nDATA\r\n".into(), vec!["250", "503 5.5.1"]),
        ("nested MAIL", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nMAIL FROM:<a@x.com>\r\n".into(), vec!["250", "250 2.1.0", "503 5.5.1"]),
        ("EHLO without name", relay_conn(), "EHLO\r\n".into(), vec!["501 5.5.4"]),
        ("bad MAIL syntax", relay_conn(), "EHLO c\r\nMAIL FROM:a@x.com\r\nMAIL TO:<a@x.com>\r\n".into(), vec!["250", "501 5.5.4", "501 5.5.4"]),
        ("bad sender address", relay_conn(), "EHLO c\r\nMAIL FROM:<a@>\r\n".into(), vec!["250", "501 5.1.7"]),
        ("SIZE over limit at MAIL", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com> SIZE=1001\r\nMAIL FROM:<a@x.com> SIZE=1000\r\n".into(), vec!["250", "552 5.3.4", "250 2.1.0"]),
        ("unknown MAIL param", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com> FOO=1\r\n".into(), vec!["250", "555 5.5.4"]),
        ("BODY and SMTPUTF8", relay_conn(), "EHLO c\r\nMAIL FROM:<δ@x.com> BODY=8BITMIME SMTPUTF8\r\nRCPT TO:<ü@y.com>\r\n".into(), vec!["250", "250 2.1.0", "250 2.1.5"]),
        ("UTF-8 needs SMTPUTF8", relay_conn(), "EHLO c\r\nMAIL FROM:<δ@x.com>\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<ü@y.com>\r\n".into(), vec!["250", "553 5.6.7", "250 2.1.0", "553 5.6.7"]),
        ("relay denied without auth", conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<b@example.net>\r\n".into(), vec!["250", "250 2.1.0", "554 5.7.1"]),
        ("source route", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<@hop.net,@hop2.net:v@target.org>\r\n".into(), vec!["250", "250 2.1.0", "554 5.7.1"]),
        ("percent hack", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<v%target.org@edge.test>\r\n".into(), vec!["250", "250 2.1.0", "554 5.7.1"]),
        ("bang path", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<target.org!v@edge.test>\r\n".into(), vec!["250", "250 2.1.0", "554 5.7.1"]),
        ("quoted trick", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<\"v@target.org\"@edge.test>\r\n".into(), vec!["250", "250 2.1.0", "554 5.7.1"]),
        ("too many recipients", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<1@y.com>\r\nRCPT TO:<2@y.com>\r\nRCPT TO:<3@y.com>\r\nRCPT TO:<4@y.com>\r\n".into(), vec!["250", "250 2.1.0", "250 2.1.5", "250 2.1.5", "250 2.1.5", "452 4.5.3"]),
        ("RCPT params refused", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<1@y.com> NOTIFY=NEVER\r\n".into(), vec!["250", "250 2.1.0", "555 5.5.4"]),
        ("null recipient", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<>\r\n".into(), vec!["250", "250 2.1.0", "501 5.1.3"]),
        ("RSET NOOP VRFY HELP EXPN", relay_conn(), "RSET\r\nNOOP\r\nVRFY x\r\nHELP\r\nEXPN x\r\n".into(), vec!["250 2.0.0", "250 2.0.0", "252 2.5.2", "214 2.0.0", "502 5.5.1"]),
        ("unknown command", relay_conn(), "FOO\r\n\r\n".into(), vec!["500 5.5.2", "500 5.5.2"]),
        ("DATA with argument", relay_conn(), "EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<1@y.com>\r\nDATA x\r\n".into(), vec!["250", "250 2.1.0", "250 2.1.5", "501 5.5.4"]),
        ("data over size", relay_conn(), format!("EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<1@y.com>\r\nDATA\r\n{}\r\n.\r\nNOOP\r\n", "x".repeat(150) + &"\r\nyyyy".repeat(300)), vec!["250", "250 2.1.0", "250 2.1.5", "354", "552 5.3.4", "250 2.0.0"]),
        ("data line too long", relay_conn(), format!("EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<1@y.com>\r\nDATA\r\n{}\r\n.\r\n", "x".repeat(201)), vec!["250", "250 2.1.0", "250 2.1.5", "354", "554 5.6.0"]),
        ("command line too long", relay_conn(), format!("NOOP {}\r\nNOOP\r\n", "x".repeat(600)), vec!["500 5.5.2", "250 2.0.0"]),
        ("AUTH needs TLS", conn(), format!("EHLO c\r\nAUTH PLAIN {plain}\r\n"), vec!["250", "538 5.7.11"]),
        ("AUTH before EHLO", tls.clone(), format!("AUTH PLAIN {plain}\r\n"), vec!["503 5.5.1"]),
        ("AUTH PLAIN ok then relay", tls.clone(), format!("EHLO c\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<b@example.net>\r\nAUTH PLAIN {plain}\r\n"), vec!["250", "235 2.7.0", "250 2.1.0", "250 2.1.5", "503 5.5.1"]),
        ("AUTH PLAIN two-step", tls.clone(), format!("EHLO c\r\nAUTH PLAIN\r\n{plain}\r\n"), vec!["250", "334", "235 2.7.0"]),
        ("AUTH LOGIN", tls.clone(), format!("EHLO c\r\nAUTH LOGIN\r\n{}\r\n{}\r\n", b64("acme"), b64("secret-pass")), vec!["250", "334", "334", "235 2.7.0"]),
        ("AUTH LOGIN initial", tls.clone(), format!("EHLO c\r\nAUTH LOGIN {}\r\n{}\r\n", b64("acme"), b64("secret-pass")), vec!["250", "334", "235 2.7.0"]),
        ("AUTH cancelled", tls.clone(), "EHLO c\r\nAUTH LOGIN\r\n*\r\n".into(), vec!["250", "334", "501 5.0.0"]),
        ("AUTH bad base64", tls.clone(), "EHLO c\r\nAUTH PLAIN !!!\r\n".into(), vec!["250", "501 5.5.2"]),
        ("AUTH unknown mechanism", tls.clone(), "EHLO c\r\nAUTH CRAM-MD5\r\n".into(), vec!["250", "504 5.5.4"]),
        ("AUTH temporary failure", tls.clone(), format!("EHLO c\r\nAUTH PLAIN {}\r\n", b64("\0down\0x")), vec!["250", "454 4.7.0"]),
        ("AUTH failures close", tls.clone(), format!("EHLO c\r\nAUTH PLAIN {bad}\r\nAUTH PLAIN {bad}\r\nNOOP\r\n"), vec!["250", "535 5.7.8", "535 5.7.8", "421 4.7.0"]),
        ("STARTTLS when active", tls.clone(), "EHLO c\r\nSTARTTLS\r\n".into(), vec!["250", "503 5.5.1"]),
        ("STARTTLS with argument", conn(), "STARTTLS x\r\n".into(), vec!["501 5.5.4"]),
        ("STARTTLS unavailable", ConnectionInfo { starttls_available: false, ..conn() }, "STARTTLS\r\n".into(), vec!["502 5.5.1"]),
        ("too many errors", relay_conn(), "A\r\nB\r\nC\r\nD\r\nE\r\nNOOP\r\n".into(), vec!["500 5.5.2", "500 5.5.2", "500 5.5.2", "500 5.5.2", "500 5.5.2", "421 4.7.0"]),
    ];
    for (name, conn, input, want) in cases {
        let out = run(cfg(), conn, Runtime::default(), &[input.as_bytes()]);
        assert_eq!(out.codes(), want, "case {name:?}: {:?}", out.replies);
    }
}

#[test]
fn ehlo_advertises_by_state() {
    let out = run(cfg(), conn(), Runtime::default(), &[b"EHLO c\r\n"]);
    let text = out.replies[0].to_string();
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(text.contains(ext), "{ext} missing from {text}");
    }
    assert!(
        !text.contains("AUTH"),
        "AUTH must not be offered in plaintext: {text}"
    );
    let out = run(
        cfg(),
        conn(),
        Runtime::default(),
        &[b"STARTTLS\r\n", b"EHLO c\r\n"],
    );
    let text = out.replies[1].to_string();
    assert!(
        text.contains("AUTH PLAIN LOGIN") && !text.contains("STARTTLS"),
        "{text}"
    );
    let dev = ConnectionInfo {
        auth_without_tls: true,
        ..conn()
    };
    let out = run(cfg(), dev, Runtime::default(), &[b"EHLO c\r\n"]);
    assert!(out.replies[0].to_string().contains("AUTH PLAIN LOGIN"));
}

#[test]
fn pipelined_plaintext_after_starttls_is_discarded() {
    // The classic STARTTLS command injection: commands sent in the same packet as STARTTLS
    // must never be executed inside the TLS session.
    let out = run(
        cfg(),
        conn(),
        Runtime::default(),
        &[
            b"EHLO c\r\nSTARTTLS\r\nRSET\r\nMAIL FROM:<evil@x.com>\r\n",
            b"EHLO c\r\n",
        ],
    );
    assert_eq!(out.starttls, 1);
    assert_eq!(out.codes(), vec!["250", "220 2.0.0", "250"]);
    // Session state was reset by TLS: MAIL needs EHLO again, and no transaction leaked in.
    let out = run(
        cfg(),
        ConnectionInfo {
            relay_by_ip: true,
            ..conn()
        },
        Runtime::default(),
        &[
            b"EHLO c\r\nMAIL FROM:<a@x.com>\r\nSTARTTLS\r\n",
            b"RCPT TO:<b@y.com>\r\n",
        ],
    );
    assert_eq!(
        out.codes(),
        vec!["250", "250 2.1.0", "220 2.0.0", "503 5.5.1"]
    );
}

#[test]
fn smuggling_never_yields_a_second_message() {
    let attacks: &[&[u8]] = &[
        b"hi\n.\nMAIL FROM:<spoof@victim.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nspoofed\r\n.\r\n",
        b"hi\n.\r\nMAIL FROM:<spoof@victim.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nspoofed\r\n.\r\n",
        b"hi\r.\rMAIL FROM:<spoof@victim.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nspoofed\r\n.\r\n",
        b"hi\r\n.\nMAIL FROM:<spoof@victim.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nspoofed\r\n.\r\n",
        b"hi\r.\r\nMAIL FROM:<spoof@victim.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nspoofed\r\n.\r\n",
    ];
    for attack in attacks {
        let out = run(
            cfg(),
            relay_conn(),
            Runtime::default(),
            &[
                b"EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\n",
                attack,
                b"NOOP\r\n",
            ],
        );
        assert!(
            out.messages.is_empty(),
            "{:?} produced a message",
            String::from_utf8_lossy(attack)
        );
        assert_eq!(
            out.codes(),
            vec![
                "250",
                "250 2.1.0",
                "250 2.1.5",
                "354",
                "554 5.6.0",
                "250 2.0.0"
            ],
            "{:?}",
            String::from_utf8_lossy(attack)
        );
    }
}

#[test]
fn message_and_envelope_are_exact() {
    let out = run(
        cfg(),
        relay_conn(),
        Runtime::default(),
        &[
            b"EHLO client.example\r\nMAIL FROM:<a@x.com> BODY=8BITMIME\r\n",
            b"RCPT TO:<b@y.com>\r\nRCPT TO:<c@z.org>\r\nDATA\r\nSubject: t\r\n\r\n..lead",
            b"ing dot\r\n.\r\n",
        ],
    );
    assert_eq!(out.messages.len(), 1);
    let (env, data) = &out.messages[0];
    assert_eq!(data, b"Subject: t\r\n\r\n.leading dot\r\n");
    assert_eq!(env.helo, "client.example");
    assert_eq!(env.mail_from.as_ref().unwrap().to_string(), "a@x.com");
    let rcpts: Vec<String> = env.rcpt_to.iter().map(|a| a.to_string()).collect();
    assert_eq!(rcpts, ["b@y.com", "c@z.org"]);
    assert!(env.body_8bit);
    assert_eq!(out.codes().last().unwrap(), "250 2.0.0");
}

#[test]
fn queue_failure_and_rate_limits_reach_the_client() {
    let rt = Runtime {
        message: Reply::new(451, "4.3.0", "Queue unavailable"),
        ..Runtime::default()
    };
    let out = run(
        cfg(),
        relay_conn(),
        rt,
        &[b"EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nx\r\n.\r\nMAIL FROM:<a@x.com>\r\n"],
    );
    // 451 after the dot, and the next transaction starts clean.
    assert_eq!(
        out.codes(),
        vec![
            "250",
            "250 2.1.0",
            "250 2.1.5",
            "354",
            "451 4.3.0",
            "250 2.1.0"
        ]
    );

    // The runtime refuses MAIL (rate limits): 451 keeps the session, 421 closes it.
    let refused_mail = |r: Reply| {
        let rt = Runtime {
            mail: Some(r),
            ..Runtime::default()
        };
        let script: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<b@y.com>\r\n";
        run(cfg(), relay_conn(), rt, &[script])
    };
    let out = refused_mail(Reply::new(451, "4.7.1", "Rate limit"));
    assert_eq!(out.codes(), vec!["250", "451 4.7.1", "503 5.5.1"]);
    assert!(!out.closed);
    let out = refused_mail(Reply::new(421, "4.7.0", "Slow down"));
    assert_eq!(out.codes(), vec!["250", "421 4.7.0"]);
    assert!(out.closed);
}

#[test]
fn byte_at_a_time_equals_all_at_once() {
    let script: &[u8] = b"EHLO c\r\nMAIL FROM:<a@x.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nline\r\n..\r\n.\r\nQUIT\r\n";
    let whole = run(cfg(), relay_conn(), Runtime::default(), &[script]);
    let bytes: Vec<&[u8]> = script.chunks(1).collect();
    let split = run(cfg(), relay_conn(), Runtime::default(), &bytes);
    assert_eq!(whole.codes(), split.codes());
    assert_eq!(whole.messages, split.messages);
    assert_eq!(split.messages[0].1, b"line\r\n.\r\n");
    assert!(split.closed);
}

#[test]
fn reply_wire_format() {
    let r = Reply::plain(250, vec!["a".into(), "b".into()]);
    assert_eq!(r.to_bytes(), b"250-a\r\n250 b\r\n");
    let r = Reply::new(554, "5.7.1", "no\r\nINJECTED");
    assert_eq!(r.to_bytes(), b"554 5.7.1 noINJECTED\r\n");
}

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_input_never_panics_and_replies_stay_well_formed() {
    const PIECES: &[&[u8]] = &[
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@x.com>\r\n",
        b"MAIL FROM:<>\r\n",
        b"RCPT TO:<b@y.com>\r\n",
        b"RCPT TO:<@a,@b:c@d>\r\n",
        b"DATA\r\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"..\r\n",
        b"\n.\n",
        b"\r",
        b"\n",
        b".",
        b"RSET\r\n",
        b"NOOP\r\n",
        b"AUTH PLAIN\r\n",
        b"AUTH LOGIN\r\n",
        b"AGFjbWUAc2VjcmV0LXBhc3M=\r\n",
        b"*\r\n",
        b"STARTTLS\r\n",
        b"BDAT 10 LAST\r\n",
        b"MAIL FROM:<a@x.com> SIZE=99999999999999999999\r\n",
        b"\xff\xfe\x00\x01",
        b"QUIT\r\n",
        b"x",
        b" ",
        b"\t",
    ];
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for round in 0..3000 {
        let mut script = Vec::new();
        for _ in 0..rng.below(40) {
            if rng.below(4) == 0 {
                let n = rng.below(600);
                script.extend((0..n).map(|_| rng.next() as u8));
            } else {
                script.extend_from_slice(PIECES[rng.below(PIECES.len())]);
            }
        }
        let mut chunks = Vec::new();
        let mut rest: &[u8] = &script;
        while !rest.is_empty() {
            let n = 1 + rng.below(rest.len().min(700));
            chunks.push(&rest[..n]);
            rest = &rest[n..];
        }
        let conn = match round % 3 {
            0 => conn(),
            1 => relay_conn(),
            _ => ConnectionInfo {
                tls: Some(TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "X".into(),
                }),
                ..conn()
            },
        };
        let out = run(cfg(), conn, Runtime::default(), &chunks);
        for r in &out.replies {
            let wire = String::from_utf8(r.to_bytes()).expect("replies are UTF-8");
            assert!((200..600).contains(&r.code), "round {round}: {r:?}");
            assert!(wire.ends_with("\r\n"), "round {round}: {wire:?}");
            // Every line is "NNN-" or "NNN " and no CR or LF hides inside a line.
            for line in wire.trim_end_matches("\r\n").split("\r\n") {
                assert!(
                    line.starts_with(&r.code.to_string()),
                    "round {round}: {wire:?}"
                );
                assert!(!line.contains(['\r', '\n']), "round {round}: {wire:?}");
            }
        }
        for (_, data) in &out.messages {
            assert!(data.len() as u64 <= cfg().max_message_size, "round {round}");
        }
    }
}

/// NOOP, RSET, VRFY and HELP past the junk limit (10 here) count as errors, so a client
/// can't hold a session with them: the fifth error closes it with 421. A message between
/// them starts the count again.
#[test]
fn junk_commands_past_the_limit_close_the_session() {
    let noops = "NOOP\r\n".repeat(10);
    let out = run(
        cfg(),
        relay_conn(),
        Runtime::default(),
        &[
            b"EHLO client.example\r\n",
            noops.as_bytes(),
            b"MAIL FROM:<a@x.com>\r\nRCPT TO:<b@y.com>\r\nDATA\r\nSubject: t\r\n\r\nx\r\n.\r\n",
            noops.as_bytes(),
        ],
    );
    assert!(!out.closed, "{:?}", out.codes());
    assert_eq!(out.messages.len(), 1);

    let junk = "RSET\r\nVRFY x\r\nHELP\r\nNOOP\r\n".repeat(4);
    let out = run(
        cfg(),
        relay_conn(),
        Runtime::default(),
        &[b"EHLO client.example\r\n", junk.as_bytes()],
    );
    assert!(out.closed);
    let codes = out.codes();
    // EHLO, then 10 + 5 junk commands answered, then 421.
    assert_eq!(codes.len(), 1 + 15 + 1, "{codes:?}");
    assert_eq!(codes.last().unwrap(), "421 4.7.0");
}
