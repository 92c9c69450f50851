//! Header edits the edge makes on every message (counting `Received:`, taking out
//! `X-Skein-Pool:`): no panic, and taking a header out only ever removes bytes of the header
//! section.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skein_smtp::header::{count_fields, take_header};

fuzz_target!(|input: &[u8]| {
    let n = count_fields(input, "Received");
    assert!(n <= input.len());
    let (value, rest) = take_header(input.to_vec(), "X-Skein-Pool");
    assert!(rest.len() <= input.len());
    if value.is_none() {
        assert_eq!(rest, input);
    }
    // Whatever followed the header section is untouched.
    if let Some(at) = input.windows(4).position(|w| w == b"\r\n\r\n") {
        assert!(rest.ends_with(&input[at + 4..]));
    }
});
