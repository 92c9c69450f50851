//! Header fields of a received message (RFC 5322 section 2.2), as the edge handles them before
//! it stores a message: taking out a control header meant for Skein only.

/// Removes every `name:` field (case-insensitive, with its folded continuation lines) from the
/// header section of `message`, and returns the first one's unfolded, trimmed value with the
/// message without them. The body, and header fields of other names, are untouched; a message
/// without a blank line is all header section. A message without the field is given back as
/// it is, not copied.
pub fn take_header(message: Vec<u8>, name: &str) -> (Option<String>, Vec<u8>) {
    if count_fields(&message, name) == 0 {
        return (None, message);
    }
    let mut out = Vec::with_capacity(message.len());
    let mut first: Option<Vec<u8>> = None;
    // What the field being read is: one to take out (and whether it is the first), or not.
    let mut taking = false;
    let mut taking_first = false;
    let mut pos = 0;
    while pos < message.len() {
        let end = message[pos..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(message.len(), |i| pos + i + 1);
        let line = &message[pos..end];
        if line == b"\r\n" || line == b"\n" {
            // The blank line: the rest is the body.
            out.extend_from_slice(&message[pos..]);
            break;
        }
        if matches!(line.first(), Some(b' ' | b'\t')) {
            if taking_first {
                if let Some(v) = first.as_mut() {
                    v.extend_from_slice(line);
                }
            }
        } else {
            taking = field_name(line).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes()));
            taking_first = taking && first.is_none();
            if taking_first {
                let colon = line.iter().position(|&b| b == b':').unwrap_or(0);
                first = Some(line[colon + 1..].to_vec());
            }
        }
        if !taking {
            out.extend_from_slice(line);
        }
        pos = end;
    }
    let value = first.map(|v| {
        // Unfold: a line break followed by white space is white space.
        let v = String::from_utf8_lossy(&v).replace(['\r', '\n'], "");
        v.trim().to_string()
    });
    (value, out)
}

/// How many `name:` fields (case-insensitive) the header section of `message` holds.
pub fn count_fields(message: &[u8], name: &str) -> usize {
    message
        .split(|&b| b == b'\n')
        .take_while(|line| !(line.is_empty() || *line == b"\r"))
        .filter(|line| field_name(line).is_some_and(|n| n.eq_ignore_ascii_case(name.as_bytes())))
        .count()
}

/// The field name of a header line (`Name:` with no space before the colon).
fn field_name(line: &[u8]) -> Option<&[u8]> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    (!name.is_empty() && name.iter().all(|&b| b.is_ascii_graphic())).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(m: &str) -> (Option<String>, String) {
        let (v, out) = take_header(m.as_bytes().to_vec(), "X-Skein-Pool");
        (v, String::from_utf8(out).unwrap())
    }

    #[test]
    fn the_field_is_taken_out_of_the_header_section_only() {
        let (v, out) = take(
            "From: a@x.test\r\nx-skein-pool:  bulk \r\nSubject: hi\r\n\r\nX-Skein-Pool: body\r\n",
        );
        assert_eq!(v.as_deref(), Some("bulk"));
        assert_eq!(
            out,
            "From: a@x.test\r\nSubject: hi\r\n\r\nX-Skein-Pool: body\r\n"
        );
    }

    #[test]
    fn folded_and_repeated_fields_go_whole_and_the_first_counts() {
        let (v, out) = take(
            "X-Skein-Pool: bu\r\n lk\r\nSubject: s\r\n\tfolded\r\nX-Skein-Pool: other\r\n \
             more\r\n\r\nbody\r\n",
        );
        assert_eq!(v.as_deref(), Some("bu lk"));
        assert_eq!(out, "Subject: s\r\n\tfolded\r\n\r\nbody\r\n");
    }

    #[test]
    fn fields_are_counted_in_the_header_section_only() {
        let m = b"Received: a\r\n\tfolded\r\nreceived: b\r\nSubject: s\r\n\r\nReceived: body\r\n";
        assert_eq!(count_fields(m, "Received"), 2);
        assert_eq!(count_fields(b"Subject: s\r\n", "Received"), 0);
    }

    #[test]
    fn without_the_field_or_a_body_nothing_changes() {
        let m = "Subject: s\r\nX-Skein-Poolside: no\r\n\r\nbody";
        assert_eq!(take(m), (None, m.to_string()));
        let (v, out) = take("X-Skein-Pool: p\r\nSubject: s\r\n");
        assert_eq!((v.as_deref(), out.as_str()), (Some("p"), "Subject: s\r\n"));
        assert_eq!(take(""), (None, String::new()));
    }
}
