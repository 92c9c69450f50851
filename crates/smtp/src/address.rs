//! RFC 5321 section 4.1.2 paths (`<local@domain>`), strict enough to refuse the tricks
//! classic open-relay tests try: source routes, `%`-hacks, `!` paths and quoted local parts
//! hiding another address.

use std::fmt;

/// A mailbox `local@domain`, as given (case preserved).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// The local part, quotes included if it was quoted.
    pub local: String,
    /// The domain or address literal (`[192.0.2.1]`).
    pub domain: String,
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

impl Address {
    /// Whether any part is outside ASCII (needs SMTPUTF8 end to end).
    pub fn is_utf8(&self) -> bool {
        !self.local.is_ascii() || !self.domain.is_ascii()
    }
}

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// Not of the form `<...>`, or characters outside the grammar.
    Syntax,
    /// `<@a,@b:user@domain>`: a source route.
    SourceRoute,
    /// `%` or `!` in the local part, or a quoted local part hiding `@`, `%` or `!`.
    RelayTrick,
    /// Non-ASCII without SMTPUTF8 on MAIL.
    NeedsUtf8,
    /// Local part over 64 octets, domain over 255, path over 256.
    TooLong,
    /// `<>` where a mailbox is required.
    Null,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Syntax => "not a valid local@domain address",
            Self::SourceRoute => "source routes are not accepted",
            Self::RelayTrick => "'%', '!' or a quoted '@' in the local part is not accepted",
            Self::NeedsUtf8 => "non-ASCII address without SMTPUTF8",
            Self::TooLong => "too long (local part 64, domain 255, path 256 octets at most)",
            Self::Null => "the null path is not accepted here",
        })
    }
}

impl std::error::Error for PathError {}

/// Parses a mailbox given without angle brackets (`local@domain`, as stored in the queue) by
/// the same rules as [`parse_path`]; the null path is [`PathError::Null`].
pub fn parse_mailbox(s: &str, utf8: bool) -> Result<Address, PathError> {
    parse_inner(s, utf8)?.ok_or(PathError::Null)
}

/// Parses `<path>` (angle brackets included, nothing after them).
///
/// Returns `None` for the null path `<>`. `utf8` allows non-ASCII (RFC 6531).
pub fn parse_path(s: &str, utf8: bool) -> Result<Option<Address>, PathError> {
    let inner = s
        .strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .ok_or(PathError::Syntax)?;
    parse_inner(inner, utf8)
}

/// A path without its angle brackets.
fn parse_inner(inner: &str, utf8: bool) -> Result<Option<Address>, PathError> {
    if inner.is_empty() {
        return Ok(None);
    }
    if inner.len() > 254 {
        return Err(PathError::TooLong);
    }
    if inner.starts_with('@') {
        return Err(PathError::SourceRoute);
    }
    if !utf8 && !inner.is_ascii() {
        return Err(PathError::NeedsUtf8);
    }
    let (local, domain) = split_mailbox(inner)?;
    check_local(local)?;
    check_domain(domain)?;
    Ok(Some(Address {
        local: local.to_string(),
        domain: domain.to_string(),
    }))
}

/// Splits at the `@` that ends the local part (which may be a quoted string).
fn split_mailbox(s: &str) -> Result<(&str, &str), PathError> {
    if let Some(rest) = s.strip_prefix('"') {
        // Quoted-string: find the closing quote, honouring backslash escapes.
        let mut escaped = false;
        for (i, c) in rest.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    let local = &s[..i + 2];
                    let after = &rest[i + 1..];
                    let domain = after.strip_prefix('@').ok_or(PathError::Syntax)?;
                    return Ok((local, domain));
                }
                _ => {}
            }
        }
        return Err(PathError::Syntax);
    }
    let at = s.rfind('@').ok_or(PathError::Syntax)?;
    Ok((&s[..at], &s[at + 1..]))
}

fn check_local(local: &str) -> Result<(), PathError> {
    if local.is_empty() {
        return Err(PathError::Syntax);
    }
    if local.len() > 64 {
        return Err(PathError::TooLong);
    }
    if let Some(q) = local.strip_prefix('"') {
        let q = q.strip_suffix('"').ok_or(PathError::Syntax)?;
        // Angle brackets too: `<"a>"@x>` ends early for a server that reads paths naively
        // (a parser difference to smuggle another address through). Found by fuzzing.
        if q.contains(['@', '%', '!', '<', '>']) {
            return Err(PathError::RelayTrick);
        }
        if q.chars().any(char::is_control) {
            return Err(PathError::Syntax);
        }
        return Ok(());
    }
    if local.contains(['%', '!']) {
        return Err(PathError::RelayTrick);
    }
    if local.contains('@') {
        // user@host@domain: another relay trick.
        return Err(PathError::RelayTrick);
    }
    // Dot-string: atoms separated by single dots.
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err(PathError::Syntax);
    }
    const SPECIALS: &str = "!#$%&'*+-/=?^_`{|}~";
    // Non-ASCII (RFC 6531) but never a control character (U+0085 NEL and the other C1s).
    let utf8_text = |c: char| !c.is_ascii() && !c.is_control();
    if local.split('.').all(|atom| {
        atom.chars()
            .all(|c| c.is_ascii_alphanumeric() || SPECIALS.contains(c) || utf8_text(c))
    }) {
        Ok(())
    } else {
        Err(PathError::Syntax)
    }
}

fn check_domain(domain: &str) -> Result<(), PathError> {
    if domain.is_empty() {
        return Err(PathError::Syntax);
    }
    if domain.len() > 255 {
        return Err(PathError::TooLong);
    }
    if let Some(lit) = domain.strip_prefix('[') {
        let lit = lit.strip_suffix(']').ok_or(PathError::Syntax)?;
        let ok = match lit.strip_prefix("IPv6:") {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok { Ok(()) } else { Err(PathError::Syntax) };
    }
    for label in domain.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| {
                c.is_ascii_alphanumeric() || c == '-' || (!c.is_ascii() && !c.is_control())
            });
        if !ok {
            return Err(PathError::Syntax);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Input, SMTPUTF8 allowed, expected result.
    type Case = (&'static str, bool, Result<Option<&'static str>, PathError>);

    #[test]
    fn paths() {
        use PathError::*;
        let cases: &[Case] = &[
            ("<>", false, Ok(None)),
            ("<a@example.com>", false, Ok(Some("a@example.com"))),
            (
                "<first.last+tag@sub.example.co.uk>",
                false,
                Ok(Some("first.last+tag@sub.example.co.uk")),
            ),
            (
                "<\"john doe\"@example.com>",
                false,
                Ok(Some("\"john doe\"@example.com")),
            ),
            ("<a@[192.0.2.1]>", false, Ok(Some("a@[192.0.2.1]"))),
            (
                "<a@[IPv6:2001:db8::1]>",
                false,
                Ok(Some("a@[IPv6:2001:db8::1]")),
            ),
            ("a@example.com", false, Err(Syntax)),
            ("<a@example.com", false, Err(Syntax)),
            ("<a>", false, Err(Syntax)),
            ("<@example.com>", false, Err(SourceRoute)),
            (
                "<@relay.net,@other.net:victim@target.org>",
                false,
                Err(SourceRoute),
            ),
            ("<victim%target.org@relay.example>", false, Err(RelayTrick)),
            ("<target.org!victim@relay.example>", false, Err(RelayTrick)),
            (
                "<\"victim@target.org\"@relay.example>",
                false,
                Err(RelayTrick),
            ),
            (
                "<\"victim%target.org\"@relay.example>",
                false,
                Err(RelayTrick),
            ),
            ("<victim@target.org@relay.example>", false, Err(RelayTrick)),
            // Found by the fuzz target `address`: brackets inside quotes end a naive path.
            ("<\"a>\"@relay.example>", false, Err(RelayTrick)),
            ("<\"x><victim\"@relay.example>", false, Err(RelayTrick)),
            ("<a\u{85}b@example.com>", true, Err(Syntax)),
            ("<ab@exa\u{85}mple.com>", true, Err(Syntax)),
            ("<\"a\u{85}b\"@example.com>", true, Err(Syntax)),
            ("<a..b@example.com>", false, Err(Syntax)),
            ("<.a@example.com>", false, Err(Syntax)),
            ("<a@-bad.example>", false, Err(Syntax)),
            ("<a@exa mple.com>", false, Err(Syntax)),
            ("<a@[999.1.1.1]>", false, Err(Syntax)),
            ("<δοκιμή@παράδειγμα.δοκιμή>", false, Err(NeedsUtf8)),
            (
                "<δοκιμή@παράδειγμα.δοκιμή>",
                true,
                Ok(Some("δοκιμή@παράδειγμα.δοκιμή")),
            ),
        ];
        for (input, utf8, want) in cases {
            let got = parse_path(input, *utf8).map(|a| a.map(|a| a.to_string()));
            let want = want.map(|o| o.map(str::to_string));
            assert_eq!(got, want, "{input}");
        }
        let long_local = format!("<{}@example.com>", "a".repeat(65));
        assert_eq!(parse_path(&long_local, false), Err(TooLong));
    }
}
