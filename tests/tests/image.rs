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
