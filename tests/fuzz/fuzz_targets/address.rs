//! Path parsing: no panic, and an accepted address can carry no command — no control
//! characters, angle brackets or spaces outside a quoted local part — and parses again to
//! itself.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use skein_smtp::address::{parse_mailbox, parse_path};

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let utf8 = first & 1 == 1;
    if let Ok(Some(a)) = parse_path(s, utf8) {
        common::assert_inert(&a);
        let text = a.to_string();
        assert!(utf8 || !a.is_utf8());
        assert_eq!(parse_mailbox(&text, utf8).as_ref(), Ok(&a), "{text:?}");
    }
    let _ = parse_mailbox(s, utf8);
});
