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
        assert!(
            err.contains("bad.toml"),
            "{text}: error {err:?} does not name the file"
        );
    }
}

/// A person's mistake (a missing file, a bad value, a port in use) is one line on stderr, even
/// with RUST_BACKTRACE set as many developers have it: backtraces are for panics.
#[test]
fn user_errors_are_one_line_even_with_rust_backtrace() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[node]\nid = 2\n").unwrap();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ok = dir.path().join("busy.toml");
    std::fs::write(
        &ok,
        format!(
            "[node]\nlisten = \"{}\"\ninitial_members = [{{ id = 1, addr = \"{}\" }}]\n\
             data_dir = \"{}\"\n",
            busy.local_addr().unwrap(),
            busy.local_addr().unwrap(),
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let missing = dir.path().join("missing.toml");
    // A source IP this host does not have (TEST-NET-1).
    let sender = dir.path().join("sender.toml");
    std::fs::write(
        &sender,
        "[sender]\ncluster = [\"127.0.0.1:1\"]\n\
         source_ips = [{ ip = \"192.0.2.77\", ehlo = \"out.example.com\" }]\n",
    )
    .unwrap();
    let cases: [(&[&std::ffi::OsStr], &str); 4] = [
        (
            &["sender".as_ref(), "--config".as_ref(), sender.as_os_str()],
            "source IP 192.0.2.77 cannot be used here",
        ),
        (
            &["node".as_ref(), "--config".as_ref(), missing.as_os_str()],
            "skein: cannot read",
        ),
        (
            &["check-config".as_ref(), bad.as_os_str()],
            "invalid node.initial_members",
        ),
        (
            &["node".as_ref(), "--config".as_ref(), ok.as_os_str()],
            "Address already in use",
        ),
    ];
    for (args, want) in cases {
        let out = Command::new(skein_bin())
            .args(args)
            .env("RUST_BACKTRACE", "1")
            .env("SKEIN_LOG", "off")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(
            err.matches("(os error").count().min(1),
            err.matches("(os error").count(),
            "said once: {err}"
        );
    }
}
