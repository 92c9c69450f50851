//! The container image's recipe: hadolint (installed by `scripts/setup.sh --tests`) finds
//! nothing in the Dockerfile, the runtime stage holds the binaries every role runs from and
//! runs as a non-root user, and the build context leaves build output out. (No container
//! runtime runs on these machines: the image itself is not built here.)

use std::path::PathBuf;
use std::process::Command;

use skein_tests::{cached_tool, manifest_dir};

fn hadolint() -> PathBuf {
    cached_tool("hadolint", "2.15.1")
}

#[test]
fn the_dockerfile_passes_hadolint_and_ships_non_root() -> anyhow::Result<()> {
    let root = manifest_dir().join("..");
    let out = Command::new(hadolint())
        .arg(root.join("Dockerfile"))
        .output()
        .map_err(|e| anyhow::anyhow!("hadolint (scripts/setup.sh --tests installs it): {e}"))?;
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(root.join("Dockerfile"))?;
    // The builder's Rust is at least the workspace's rust-version (which covers what the
    // dependencies need).
    let version = |s: &str| -> [u32; 3] {
        let mut v = [0; 3];
        for (slot, p) in v.iter_mut().zip(s.split('.')) {
            *slot = p.parse().unwrap_or(0);
        }
        v
    };
    let builder = text
        .lines()
        .find_map(|l| l.strip_prefix("FROM rust:"))
        .and_then(|l| l.split('-').next())
        .expect("a rust: builder stage");
    let workspace = std::fs::read_to_string(root.join("Cargo.toml"))?;
    let msrv = workspace
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("the workspace's rust-version");
    assert!(version(builder) >= version(msrv), "rust:{builder} < {msrv}");
    // The packages built for this machine (the image's platform too): others are not
    // downloaded, and offline metadata cannot read them.
    let rustc = Command::new("rustc").arg("-vV").output()?;
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc -vV names the host");
    let meta = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host])
        .current_dir(&root)
        .output()?;
    assert!(
        meta.status.success(),
        "{}",
        String::from_utf8_lossy(&meta.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let needed = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| Some((p["rust_version"].as_str()?, p["name"].as_str()?)))
        .max_by_key(|(v, _)| version(v))
        .expect("packages with a rust-version");
    assert!(
        version(msrv) >= version(needed.0),
        "rust-version {msrv} is older than {} needs ({})",
        needed.1,
        needed.0
    );
    let runtime = text
        .rsplit_once("\nFROM ")
        .map(|(_, r)| r)
        .expect("a multi-stage build");
    assert!(
        runtime.starts_with("gcr.io/distroless/cc-debian12"),
        "{runtime}"
    );
    for bin in ["target/release/skein ", "target/release/skeinctl "] {
        assert!(runtime.contains(bin), "{bin} in {runtime}");
    }
    assert!(runtime.contains("\nUSER 65532:65532\n"), "{runtime}");
    // The binaries the image copies are the workspace's.
    let manifest = std::fs::read_to_string(root.join("crates/skein/Cargo.toml"))?;
    for bin in ["name = \"skein\"", "name = \"skeinctl\""] {
        assert!(manifest.contains(bin), "{bin}");
    }
    let ignore = std::fs::read_to_string(root.join(".dockerignore"))?;
    assert!(ignore.lines().any(|l| l == "target") && ignore.lines().any(|l| l == ".git"));
    Ok(())
}
