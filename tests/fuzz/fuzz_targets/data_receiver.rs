//! The DATA receiver against a plain reference: for input made of clean CRLF lines, the
//! message it returns and where it says the message ended are exactly what reading line by
//! line, removing one leading dot, gives — however the input is split into reads. On any
//! input it never panics and never returns more than its size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_smtp::data::DataReceiver;

const MAX_SIZE: u64 = 8 * 1024;
const MAX_LINE: usize = 998;

/// (bytes consumed through the terminator, message) for input of clean lines; `None` when a
/// line holds a bare CR or LF, is too long, or no terminator comes.
fn reference(input: &[u8]) -> Option<(usize, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let rest = &input[pos..];
        let eol = rest.windows(2).position(|w| w == b"\r\n")?;
        let line = &rest[..eol];
        if line.contains(&b'\r') || line.contains(&b'\n') || line.len() > MAX_LINE {
            return None;
        }
        if line == b"." {
            return Some((pos + eol + 2, out));
        }
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
        out.extend_from_slice(b"\r\n");
        pos += eol + 2;
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, body)) = input.split_first() else {
        return;
    };
    let chunk = usize::from(first % 16) + 1;
    let mut rx = DataReceiver::new(MAX_SIZE, MAX_LINE, Vec::new());
    let mut consumed = None;
    let mut offset = 0;
    for part in body.chunks(chunk) {
        if let Some(n) = rx.feed(part) {
            assert!(n <= part.len());
            consumed = Some(offset + n);
            break;
        }
        offset += part.len();
    }
    let Some(consumed) = consumed else {
        return;
    };
    let got = rx.finish();
    if let Ok(m) = &got {
        assert!(m.len() as u64 <= MAX_SIZE);
    }
    if let Some((end, message)) = reference(body) {
        assert_eq!(consumed, end);
        if message.len() as u64 <= MAX_SIZE {
            assert_eq!(got.as_deref().ok(), Some(message.as_slice()));
        }
    }
});
