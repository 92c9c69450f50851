//! The RFC 5321 section 4.4 `Received:` trace header the edge prepends to every message.

use std::net::IpAddr;

use crate::session::Envelope;

/// Builds the `Received:` header (folded, CRLF-terminated) for a message received from
/// `client_ip` in the given envelope, by `hostname`, at `date` (an RFC 5322 date-time).
///
/// The protocol keyword follows RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA.
/// It names no id: the queue id is only known after commit, and the sender's
/// [`relay_header`] carries it.
pub fn received_header(env: &Envelope, client_ip: IpAddr, hostname: &str, date: &str) -> String {
    let proto = match (env.tls.is_some(), env.tenant.is_some()) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    let helo = token(&env.helo);
    let mut h =
        format!("Received: from {helo} ([{client_ip}])\r\n\tby {hostname} (Skein) with {proto}");
    if let Some(tls) = &env.tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            tls.version, tls.cipher
        ));
    }
    if let Some(t) = &env.tenant {
        h.push_str(&format!("\r\n\t(authenticated as tenant {t})"));
    }
    if let [one] = env.rcpt_to.as_slice() {
        h.push_str(&format!("\r\n\tfor <{one}>"));
    }
    h.push_str(&format!(";\r\n\t{date}\r\n"));
    h
}

/// Builds the `Received:` header a sender prepends as it relays queued message `id`: from the
/// edge that took it in (omitted when unknown) by the sender greeting as `by`, for the one
/// recipient of the transaction if there is only one, at `date`.
///
/// This is the field that carries the queue id, the one the client was given in the reply
/// to its final dot, which the logs and `skeinctl message` use.
pub fn relay_header(from: &str, by: &str, id: &str, rcpts: &[&str], date: &str) -> String {
    let mut h = String::from("Received: ");
    if !from.is_empty() {
        h.push_str(&format!("from {}\r\n\t", token(from)));
    }
    h.push_str(&format!("by {} (Skein) id {}", token(by), token(id)));
    if let [one] = rcpts {
        h.push_str(&format!(
            "\r\n\tfor <{}>",
            one.replace(['\r', '\n', '>'], "")
        ));
    }
    h.push_str(&format!(";\r\n\t{date}\r\n"));
    h
}

/// `s` as one trace-field token: printable ASCII without parentheses or semicolons, at most
/// 255 characters (names from clients or other hosts must not add comments or clauses).
fn token(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::parse_path;
    use crate::session::TlsInfo;

    #[test]
    fn header_names_tls_and_tenant() {
        let env = Envelope {
            helo: "client.example (evil)".into(),
            mail_from: None,
            rcpt_to: vec![parse_path("<b@example.net>", false).unwrap().unwrap()],
            body_8bit: false,
            smtputf8: false,
            tenant: Some("acme".into()),
            tls: Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS13_AES_128_GCM_SHA256".into(),
            }),
        };
        let h = received_header(
            &env,
            "127.0.0.1".parse().unwrap(),
            "mx.skein.test",
            "Mon, 23 Nov 2026 20:10:05 +0000",
        );
        assert_eq!(
            h,
            "Received: from client.exampleevil ([127.0.0.1])\r\n\tby mx.skein.test (Skein) with ESMTPSA\r\n\t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\t(authenticated as tenant acme)\r\n\tfor <b@example.net>;\r\n\tMon, 23 Nov 2026 20:10:05 +0000\r\n"
        );
    }

    #[test]
    fn relay_header_carries_the_queue_id() {
        let date = "Mon, 23 Nov 2026 20:10:05 +0000";
        assert_eq!(
            relay_header("edge-1", "out1.skein.test", "0000000000100000", &["b@example.net"], date),
            "Received: from edge-1\r\n\tby out1.skein.test (Skein) id 0000000000100000\r\n\tfor <b@example.net>;\r\n\tMon, 23 Nov 2026 20:10:05 +0000\r\n"
        );
        // No edge (a DSN made by the queue), two recipients, and names that try to add
        // comments or lines of their own.
        assert_eq!(
            relay_header("", "out (x);\r\nX: y", "00AB", &["a@x", "b@x"], date),
            "Received: by outxX:y (Skein) id 00AB;\r\n\tMon, 23 Nov 2026 20:10:05 +0000\r\n"
        );
    }
}
