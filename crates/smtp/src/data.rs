//! The DATA receiver: turns the byte stream after `354` into a message.
//!
//! - Only `<CRLF>.<CRLF>` ends the message. A bare LF or bare CR never starts a new line, so
//!   `<LF>.<LF>`, `<LF>.<CRLF>` or `<CR>.<CR>` cannot end it early and smuggle a second
//!   message; any bare CR or LF is recorded and the message is refused at the end.
//! - Dot-unstuffing is exact: one leading `.` is removed from a line that starts with one.
//! - The size limit is enforced as bytes arrive: past it, the body is dropped, not buffered,
//!   and reading continues to the terminator so the reply lines up with the client.

/// Byte-level position inside the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    /// At the start of a line (after CRLF, or at the very beginning).
    LineStart,
    /// A `.` opened the line.
    Dot,
    /// `.` then CR opened the line: LF now ends the message.
    DotCr,
    /// Inside a line.
    Mid,
    /// Inside a line, just after a CR.
    Cr,
}

/// What is wrong with a received message, in the order they are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    /// Over the configured maximum size (552 5.3.4).
    TooBig,
    /// A CR or LF that was not part of a CRLF pair (554 5.6.0).
    BareLineEnding,
    /// A line longer than the configured maximum (554 5.6.0).
    LineTooLong,
}

/// Incremental DATA parser. Feed it input until it reports the end.
#[derive(Debug)]
pub struct DataReceiver {
    pos: Pos,
    body: Vec<u8>,
    size: u64,
    max_size: u64,
    line_len: usize,
    max_line: usize,
    too_big: bool,
    bare: bool,
    long_line: bool,
}

impl DataReceiver {
    /// A receiver that accepts at most `max_size` bytes of message and lines of at most
    /// `max_line` bytes (CRLF excluded). `prefix` is content placed before the body (e.g. a
    /// `Received:` header); it counts toward the size.
    pub fn new(max_size: u64, max_line: usize, prefix: Vec<u8>) -> Self {
        let size = prefix.len() as u64;
        Self {
            pos: Pos::LineStart,
            body: prefix,
            size,
            max_size,
            line_len: 0,
            max_line,
            too_big: false,
            bare: false,
            long_line: false,
        }
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.size += bytes.len() as u64;
        if self.too_big {
            return;
        }
        if self.size > self.max_size {
            self.too_big = true;
            self.body = Vec::new();
            return;
        }
        self.body.extend_from_slice(bytes);
    }

    /// Message text inside a line (no line ending).
    fn text_run(&mut self, bytes: &[u8]) {
        self.line_len += bytes.len();
        if self.line_len > self.max_line {
            self.long_line = true;
        }
        self.emit(bytes);
    }

    /// Consumes input. Returns `Some(n)` when the terminator was found, `n` being how many bytes
    /// of `input` belonged to the message (the rest is the client's next command); `None` when
    /// all of `input` was consumed and more is needed.
    pub fn feed(&mut self, input: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < input.len() {
            if self.pos == Pos::Mid {
                // Fast path: the run of ordinary bytes up to the next CR or LF is copied whole;
                // only line endings go through the state machine byte by byte.
                let run = memchr::memchr2(b'\r', b'\n', &input[i..]).unwrap_or(input.len() - i);
                if run > 0 {
                    self.text_run(&input[i..i + run]);
                    i += run;
                    continue;
                }
            }
            let b = input[i];
            i += 1;
            match (self.pos, b) {
                (Pos::LineStart, b'.') => self.pos = Pos::Dot,
                (Pos::Dot, b'\r') => self.pos = Pos::DotCr,
                (Pos::DotCr, b'\n') => return Some(i),
                (Pos::LineStart | Pos::Mid, b'\r') => self.pos = Pos::Cr,
                (Pos::DotCr, _) => {
                    // ".<CR>x": the CR was bare. The leading dot stays removed.
                    self.bare = true;
                    self.text_run(b"\r");
                    self.pos = Pos::Mid;
                    self.byte_mid(b);
                }
                (Pos::Cr, b'\n') => {
                    self.emit(b"\r\n");
                    self.line_len = 0;
                    self.pos = Pos::LineStart;
                }
                (Pos::Cr, b'\r') => {
                    self.bare = true;
                    self.text_run(b"\r");
                }
                (Pos::Cr, _) => {
                    self.bare = true;
                    self.text_run(b"\r");
                    self.pos = Pos::Mid;
                    self.byte_mid(b);
                }
                (Pos::LineStart | Pos::Dot | Pos::Mid, _) => {
                    self.pos = Pos::Mid;
                    self.byte_mid(b);
                }
            }
        }
        None
    }

    fn byte_mid(&mut self, b: u8) {
        if b == b'\n' {
            // A bare LF does not end the line: only CRLF does.
            self.bare = true;
        }
        if b == b'\r' {
            self.pos = Pos::Cr;
        } else {
            self.text_run(&[b]);
        }
    }

    /// Bytes of message received so far (prefix included), whether kept or not.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Finishes: the message, or the first thing wrong with it.
    pub fn finish(self) -> Result<Vec<u8>, DataError> {
        if self.too_big {
            Err(DataError::TooBig)
        } else if self.bare {
            Err(DataError::BareLineEnding)
        } else if self.long_line {
            Err(DataError::LineTooLong)
        } else {
            Ok(self.body)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> (Option<usize>, Result<Vec<u8>, DataError>) {
        let mut r = DataReceiver::new(1000, 50, Vec::new());
        let end = r.feed(input);
        (end, r.finish())
    }

    #[test]
    fn table() {
        type Case<'a> = (&'a [u8], Option<usize>, Result<&'a [u8], DataError>);
        let cases: &[Case] = &[
            (b".\r\n", Some(3), Ok(b"")),
            (b"hello\r\n.\r\n", Some(10), Ok(b"hello\r\n")),
            (b"a\r\n..b\r\n.\r\n", Some(11), Ok(b"a\r\n.b\r\n")),
            (b"a\r\n...\r\n.\r\n", Some(11), Ok(b"a\r\n..\r\n")),
            (b"a\r\n.\r\nMAIL FROM:<x@y>\r\n", Some(6), Ok(b"a\r\n")),
            // Smuggling attempts: none of these end the message.
            (
                b"a\n.\nMAIL FROM:<x@y>\r\n",
                None,
                Err(DataError::BareLineEnding),
            ),
            (
                b"a\n.\r\nMAIL FROM:<x@y>\r\n",
                None,
                Err(DataError::BareLineEnding),
            ),
            (
                b"a\r.\rMAIL FROM:<x@y>\r\n",
                None,
                Err(DataError::BareLineEnding),
            ),
            (
                b"a\r\n.\nMAIL FROM:<x@y>\r\n",
                None,
                Err(DataError::BareLineEnding),
            ),
            // ... and when the real terminator comes, the message is refused.
            (
                b"a\n.\nb\r\n.\r\n",
                Some(10),
                Err(DataError::BareLineEnding),
            ),
            (
                b"a\r.\r\nb\r\n.\r\n",
                Some(11),
                Err(DataError::BareLineEnding),
            ),
            (b"a\r\r\n.\r\n", Some(7), Err(DataError::BareLineEnding)),
            (b".\rx\r\n.\r\n", Some(8), Err(DataError::BareLineEnding)),
        ];
        for (input, end, body) in cases {
            let (e, b) = run(input);
            assert_eq!(e, *end, "end for {:?}", String::from_utf8_lossy(input));
            if end.is_some() {
                assert_eq!(
                    b,
                    body.map(<[u8]>::to_vec),
                    "{:?}",
                    String::from_utf8_lossy(input)
                );
            } else {
                assert_eq!(b.err(), body.err());
            }
        }
    }

    #[test]
    fn split_anywhere_gives_the_same_result() {
        let input: &[u8] = b"Subject: x\r\n\r\n..dot\r\nline\r\n.\r\nQUIT\r\n";
        for cut in 0..input.len() {
            let mut r = DataReceiver::new(1000, 100, Vec::new());
            let end = match r.feed(&input[..cut]) {
                Some(n) => Some(n),
                None => r.feed(&input[cut..]).map(|n| n + cut),
            };
            assert_eq!(end, Some(input.len() - 6), "cut at {cut}");
            assert_eq!(r.finish().unwrap(), b"Subject: x\r\n\r\n.dot\r\nline\r\n");
        }
    }

    #[test]
    fn oversize_is_not_buffered() {
        let mut r = DataReceiver::new(100, 1000, b"Received: x\r\n".to_vec());
        let line = [b'x'; 98];
        for _ in 0..1000 {
            assert_eq!(r.feed(&line), None);
            assert_eq!(r.feed(b"\r\n"), None);
            assert!(
                r.body.capacity() <= 256,
                "body must not grow past the limit"
            );
        }
        assert_eq!(r.feed(b".\r\n"), Some(3));
        assert!(r.size() > 100_000);
        assert_eq!(r.finish(), Err(DataError::TooBig));
    }

    #[test]
    fn exact_size_limit() {
        let mut r = DataReceiver::new(7, 100, Vec::new());
        assert_eq!(r.feed(b"hello\r\n.\r\n"), Some(10));
        assert_eq!(r.finish().unwrap(), b"hello\r\n");
        let mut r = DataReceiver::new(6, 100, Vec::new());
        r.feed(b"hello\r\n.\r\n");
        assert_eq!(r.finish(), Err(DataError::TooBig));
    }

    #[test]
    fn long_lines() {
        let mut r = DataReceiver::new(10_000, 10, Vec::new());
        r.feed(b"0123456789\r\n.\r\n");
        assert!(r.finish().is_ok());
        let mut r = DataReceiver::new(10_000, 10, Vec::new());
        r.feed(b"0123456789A\r\n.\r\n");
        assert_eq!(r.finish(), Err(DataError::LineTooLong));
    }
}
