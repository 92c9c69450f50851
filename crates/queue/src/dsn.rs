//! Delivery status notifications (RFC 3464): the bounce message sent to a return path.
//!
//! Built inside the state machine while applying a [`crate::Request::Deliver`], from replicated
//! data and the command's clock only, so every replica builds the same bytes. That makes these
//! bytes part of the replicated format: a release that changes them must do so only from a new
//! format version (see [`crate::FORMAT`]), or replicas of two releases would store different
//! DSNs for one entry. `tests/format.rs` fails on any change (its fixture bounces a message).

use std::fmt::Write as _;

use skein_core::date::rfc5322;

use crate::records::{MessageRecord, RcptRecord, RcptState};

/// Most of the original header section quoted in a DSN.
const MAX_QUOTED_HEADERS: usize = 64 * 1024;
/// Longest diagnostic text kept (header lines must stay under 998 octets).
const MAX_DIAGNOSTIC: usize = 800;

/// Builds the DSN for `failed` recipients of `original` (whose body is `body`, when still
/// stored). `id` is the DSN's own queue id and `mta` the reporting MTA's name.
pub fn build(
    id: &str,
    mta: &str,
    now_ms: i64,
    original: &MessageRecord,
    body: Option<&[u8]>,
    failed: &[RcptRecord],
) -> Vec<u8> {
    let boundary = format!("{id}/{mta}");
    let date = rfc5322(now_ms);
    let mut m = String::with_capacity(2048);
    let _ = write!(
        m,
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}@{mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         This is the mail system at host {mta}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients.\r\n\
         \r\n",
        to = ascii(&original.mail_from),
    );
    for r in failed {
        let why = match &r.last_reply {
            Some(reply) => ascii(&reply.to_string()),
            None => "no attempt was possible".to_string(),
        };
        let what = if r.state == RcptState::Expired {
            "delivery time expired"
        } else {
            "failed permanently"
        };
        let _ = write!(m, "<{}>: {what}: {}\r\n", ascii(&r.address), clip(&why));
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {mta}\r\n\
         X-Skein-Queue-ID: {qid}\r\n\
         Arrival-Date: {arrival}\r\n",
        qid = original.id,
        arrival = rfc5322(original.received_at_ms),
    );
    for r in failed {
        let last = r.history.last();
        let _ = write!(
            m,
            "\r\nFinal-Recipient: rfc822; {addr}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n",
            addr = ascii(&r.address),
            status = status(r),
        );
        if let Some(a) = last {
            if let Some(host) = a.mx.split_whitespace().next().filter(|h| !h.is_empty()) {
                let _ = write!(m, "Remote-MTA: dns; {}\r\n", ascii(host));
            }
        }
        if let Some(reply) = &r.last_reply {
            let _ = write!(
                m,
                "Diagnostic-Code: smtp; {}\r\n",
                clip(&ascii(&reply.to_string()))
            );
        }
        if let Some(a) = last {
            let _ = write!(m, "Last-Attempt-Date: {}\r\n", rfc5322(a.at_ms));
        }
    }
    let _ = write!(
        m,
        "\r\n--{boundary}\r\n\
         Content-Type: text/rfc822-headers\r\n\
         \r\n"
    );
    let mut out = m.into_bytes();
    out.extend_from_slice(&headers(body.unwrap_or_default()));
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The RFC 3463 status for a failed recipient: the last reply's enhanced code when it has the
/// right class, else a generic one.
fn status(r: &RcptRecord) -> String {
    let enhanced = r.last_reply.as_ref().map(|x| x.enhanced.as_str());
    match (&r.state, enhanced) {
        (RcptState::Expired, Some(e)) if e.starts_with("4.") => e.to_string(),
        (RcptState::Expired, _) => "4.4.7".to_string(),
        (_, Some(e)) if e.starts_with("5.") => e.to_string(),
        _ => "5.0.0".to_string(),
    }
}

/// The header section of `body` (up to and including the blank line's first CRLF), capped.
fn headers(body: &[u8]) -> Vec<u8> {
    let end = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 2)
        .unwrap_or(body.len());
    let mut h = body[..end.min(MAX_QUOTED_HEADERS)].to_vec();
    if !h.ends_with(b"\r\n") {
        h.extend_from_slice(b"\r\n");
    }
    h
}

/// `s` with anything outside printable US-ASCII replaced, so header fields stay valid.
fn ascii(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

fn clip(s: &str) -> &str {
    match s.char_indices().nth(MAX_DIAGNOSTIC) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::{AttemptRecord, AttemptResult, Reply};

    fn original() -> MessageRecord {
        MessageRecord {
            id: "00000000000A0000".into(),
            tenant: "acme".into(),
            mail_from: "app@acme.test".into(),
            rcpt_to: vec!["nobody@example.test".into()],
            size: 10,
            received_at_ms: 1_700_000_000_000,
            client_ip: "127.0.0.1".into(),
            helo: "c".into(),
            edge: "e".into(),
            log_index: 10,
            smtputf8: false,
            body_8bit: false,
            remaining: 0,
            dsn_for: None,
        }
    }

    fn failed(state: RcptState, code: u16, enhanced: &str) -> RcptRecord {
        let reply = Reply {
            code,
            enhanced: enhanced.into(),
            text: "no such user\u{e9}".into(),
        };
        RcptRecord {
            key: "00000000000A00000000".into(),
            message_id: "00000000000A0000".into(),
            address: "nobody@example.test".into(),
            domain: "example.test".into(),
            tenant: "acme".into(),
            state,
            attempts: 1,
            due_ms: 0,
            received_at_ms: 1_700_000_000_000,
            last_reply: Some(reply.clone()),
            history: vec![AttemptRecord {
                at_ms: 1_700_000_001_000,
                sender: "s1".into(),
                source_ip: "127.0.0.1".into(),
                mx: "mx.example.test 127.0.0.21:25".into(),
                reply,
                result: AttemptResult::Permanent,
            }],
            final_at_ms: Some(1_700_000_001_000),
        }
    }

    #[test]
    fn a_bounce_reports_status_diagnostic_and_original_headers() {
        let body = b"Subject: hi\r\nFrom: app@acme.test\r\n\r\nsecret body\r\n";
        let dsn = build(
            "00000000000B0000",
            "relay.test",
            1_700_000_002_000,
            &original(),
            Some(body),
            &[failed(RcptState::Bounced, 550, "5.1.1")],
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("To: <app@acme.test>\r\n"));
        assert!(text.contains("report-type=delivery-status"));
        assert!(text.contains("Final-Recipient: rfc822; nobody@example.test\r\n"));
        assert!(text.contains("Status: 5.1.1\r\n"));
        assert!(text.contains("Remote-MTA: dns; mx.example.test\r\n"));
        assert!(text.contains("Diagnostic-Code: smtp; 550 5.1.1 no such user?\r\n"));
        assert!(text.contains("Subject: hi\r\nFrom: app@acme.test\r\n"));
        assert!(!text.contains("secret body"), "only headers are quoted");
        assert!(text.ends_with("--00000000000B0000/relay.test--\r\n"));
        assert!(text.is_ascii());
    }

    #[test]
    fn an_expiry_keeps_a_transient_status() {
        let dsn = build(
            "00000000000B0000",
            "relay.test",
            0,
            &original(),
            None,
            &[failed(RcptState::Expired, 451, "4.2.0")],
        );
        let text = String::from_utf8(dsn).unwrap();
        assert!(text.contains("Status: 4.2.0\r\n"));
        assert!(text.contains("delivery time expired"));
        let mut no_code = failed(RcptState::Expired, 421, "");
        no_code.last_reply.as_mut().unwrap().enhanced.clear();
        assert_eq!(status(&no_code), "4.4.7");
        assert_eq!(status(&failed(RcptState::Bounced, 554, "")), "5.0.0");
    }
}
