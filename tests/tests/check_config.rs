//! `skein check-config` on the shipped examples and on broken files.

use std::process::Command;

use skein_tests::{manifest_dir, skein_bin};

#[test]
fn shipped_examples_pass_and_errors_name_the_field() {
    let examples = manifest_dir().join("../crates/config/examples");
    // node.toml names certificates under /etc/skein/pki: made here with `skein certs`.
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path().to_str().unwrap();
    for args in [
        &["init", "--dir", p][..],
        &["issue", "--dir", p, "--name", "node-1", "--role", "node"],
    ] {
        let out = Command::new(skein_bin())
            .arg("certs")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let node = pki.path().join("node.toml");
    let text = std::fs::read_to_string(examples.join("node.toml")).unwrap();
    assert!(
        text.contains("/etc/skein/pki/"),
        "node.toml shows [cluster_tls]"
    );
    std::fs::write(&node, text.replace("/etc/skein/pki", p)).unwrap();
    for file in [node, examples.join("edge.toml"), examples.join("dev.toml")] {
        let name = file.display();
        let out = Command::new(skein_bin())
            .arg("check-config")
            .arg(&file)
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
