#!/usr/bin/env bash
# Runs `skein dev`: one process, single-node cluster, data in ./skein-data, SMTP on
# 127.0.0.1:2525 (STARTTLS) and 127.0.0.1:4650 (implicit TLS), gRPC on 127.0.0.1:7070.
# Extra arguments go to `skein dev` (e.g. --tenant demo:demo-password).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
"$here/scripts/setup.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}"
# The first build compiles RocksDB (about 25 minutes); cargo shows its progress.
cargo build --manifest-path "$here/Cargo.toml" --workspace --bins
exec "$CARGO_TARGET_DIR/debug/skein" dev "$@"
