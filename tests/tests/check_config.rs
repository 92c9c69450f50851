//! `skein check-config` on the shipped examples and on broken files.

use std::process::Command;

use skein_tests::{manifest_dir, skein_bin};

#[test]
fn shipped_examples_pass_and_errors_name_the_field() {
    let examples = manifest_dir().join("../crates/config/examples");
    for name in ["node.toml", "edge.toml", "dev.toml"] {
        let out = Command::new(skein_bin())
            .arg("check-config")
            .arg(examples.join(name))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ok"),
            "{name}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "[edge]\n[edge.limits]\nmax_recipients = 0\n",
            "edge.limits.max_recipients",
        ),
        ("[node]\nid = 1\nlisten = \"127.0.0.1\"\n", "node.listen"),
        ("[edge]\nlistners = []\n", "listners"),
        ("[node]\ncommit_timeout = \"5 fortnights\"\n", "fortnights"),
    ];
    for (text, field) in cases {
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(skein_bin())
            .arg("check-config")
            .arg(&f)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(field),
            "{text}: error {err:?} does not name {field}"
        );
    }
}
