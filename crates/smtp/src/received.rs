//! The RFC 5321 section 4.4 `Received:` trace header the edge prepends to every message.

use std::net::IpAddr;

use crate::session::Envelope;

/// Builds the `Received:` header (folded, CRLF-terminated) for a message received from
/// `client_ip` in the given envelope, by `hostname`, at `date` (an RFC 5322 date-time).
///
/// The protocol keyword follows RFC 3848: ESMTP, ESMTPS (TLS), ESMTPA (AUTH), ESMTPSA.
/// `id` is the edge's transaction id (the queue id is only known after commit).
pub fn received_header(
    env: &Envelope,
    client_ip: IpAddr,
    hostname: &str,
    id: &str,
    date: &str,
) -> String {
    let proto = match (env.tls.is_some(), env.tenant.is_some()) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    // The HELO name is client-controlled: keep it to printable ASCII without parentheses.
    let helo: String = env
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic() && !matches!(c, '(' | ')' | ';'))
        .take(255)
        .collect();
    let mut h = format!(
        "Received: from {helo} ([{client_ip}])\r\n\tby {hostname} (Skein) with {proto} id {id}"
    );
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
            "E1",
            "Mon, 23 Nov 2026 20:10:05 +0000",
        );
        assert_eq!(
            h,
            "Received: from client.exampleevil ([127.0.0.1])\r\n\tby mx.skein.test (Skein) with ESMTPSA id E1\r\n\t(using TLSv1.3 with cipher TLS13_AES_128_GCM_SHA256)\r\n\t(authenticated as tenant acme)\r\n\tfor <b@example.net>;\r\n\tMon, 23 Nov 2026 20:10:05 +0000\r\n"
        );
    }
}
