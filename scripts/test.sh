#!/usr/bin/env bash
# Builds everything and runs every test: unit tests, the storage conformance suite, and the
# integration tests that start real skein processes (see tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}"
# Integration tests run the real binaries: build them first.
cargo build --workspace --bins
cargo nextest run --workspace --no-fail-fast "$@"
