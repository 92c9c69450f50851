//! The SMTP server session on arbitrary client bytes, fed in chunks of varying size, with the
//! runtime's answers (AUTH, MAIL, the stored message) simulated. It must never panic, every
//! reply it writes must be well-formed SMTP, and what it hands over for storage must respect
//! its limits.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use skein_smtp::reply::Reply;
use skein_smtp::session::{AuthFailure, ConnectionInfo, Event, Session, SessionConfig, TlsInfo};

const MAX_SIZE: u64 = 16 * 1024;
const MAX_RCPTS: usize = 5;

fn check_reply(bytes: &[u8]) {
    assert!(bytes.ends_with(b"\r\n"), "{bytes:?}");
    for line in bytes[..bytes.len() - 2].split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(
            line.len() >= 3 && line[..3].iter().all(u8::is_ascii_digit),
            "{line:?}"
        );
        assert!(!line.contains(&b'\r'), "bare CR in a reply: {line:?}");
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(first % 32) + 1;
    let cfg = SessionConfig {
        hostname: "fuzz.skein.test".into(),
        max_message_size: MAX_SIZE,
        max_recipients: MAX_RCPTS,
        max_command_line: 512,
        max_data_line: 998,
        max_bad_commands: 20,
        max_auth_failures: 3,
        max_junk_commands: 100,
    };
    let conn = ConnectionInfo {
        client_ip: [192, 0, 2, 1].into(),
        tls: None,
        starttls_available: first & 0x40 != 0,
        auth_available: true,
        auth_without_tls: first & 0x80 != 0,
        relay_by_ip: first & 0x20 != 0,
    };
    let mut s = Session::new(cfg, conn);
    check_reply(&s.greeting().to_bytes());
    for part in rest.chunks(chunk) {
        s.feed(part);
        while let Some(ev) = s.poll() {
            match ev {
                Event::Reply(r) => check_reply(&r.to_bytes()),
                Event::StartTls => s.tls_done(TlsInfo {
                    version: "TLSv1.3".into(),
                    cipher: "TLS13_AES_128_GCM_SHA256".into(),
                }),
                Event::Authenticate { password, .. } => {
                    let ok = password == "right";
                    s.auth_done(if ok {
                        Ok("tenant".into())
                    } else {
                        Err(AuthFailure::Invalid)
                    })
                }
                Event::Mail { reverse_path } => {
                    if let Some(a) = &reverse_path {
                        common::assert_inert(a);
                    }
                    s.mail_done(Ok(()))
                }
                Event::Message { envelope, data } => {
                    assert!(!envelope.rcpt_to.is_empty());
                    assert!(envelope.rcpt_to.len() <= MAX_RCPTS);
                    envelope.rcpt_to.iter().for_each(common::assert_inert);
                    assert!(data.len() as u64 <= MAX_SIZE, "{}", data.len());
                    s.message_done(Reply::new(250, "2.0.0", "queued"));
                }
                Event::Close => return,
            }
        }
    }
});
