//! What every accepted address must be, wherever it was parsed: nothing in it can end the
//! path or the command line it is written into.

use skein_smtp::Address;

/// No control characters, no angle brackets, and spaces only inside a quoted local part.
pub fn assert_inert(a: &Address) {
    let text = a.to_string();
    assert!(!text.chars().any(|c| c.is_control()), "{text:?}");
    assert!(!text.contains(['<', '>']), "{text:?}");
    assert!(!a.domain.contains(' '), "{text:?}");
    if !a.local.starts_with('"') {
        assert!(!a.local.contains(' '), "{text:?}");
    }
}
