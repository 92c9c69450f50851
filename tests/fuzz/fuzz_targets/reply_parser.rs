//! The client's parser of server replies on arbitrary server bytes, in chunks: no panic, every
//! reply it returns has a code from 200 to 599, and what an EHLO reply advertises parses.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_smtp::client::{Capabilities, ReplyParser};

fuzz_target!(|input: &[u8]| {
    let Some((&first, rest)) = input.split_first() else {
        return;
    };
    let mut p = ReplyParser::default();
    for part in rest.chunks(usize::from(first % 16) + 1) {
        p.feed(part);
        while let Some(r) = p.next_reply() {
            match r {
                Ok(reply) => {
                    assert!((200..600).contains(&reply.code), "{reply:?}");
                    let _ = Capabilities::parse(&reply);
                    let _ = reply.to_string();
                }
                Err(_) => return,
            }
        }
    }
});
