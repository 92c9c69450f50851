#!/usr/bin/env bash
# Coverage-guided fuzzing of what Skein reads from strangers (tests/fuzz): each target runs
# for SECONDS (default 60) from its checked-in seeds, and the totals are printed. Separate from
# the test suite (CI runs `scripts/test.sh`); run it before a release or after touching
# crates/smtp. A crash leaves its input under tests/fuzz/artifacts/TARGET/ and fails the run.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# cargo-fuzz drives libFuzzer; it needs nightly flags, which the stable toolchain accepts with
# RUSTC_BOOTSTRAP=1. Instrumented builds go to their own target directory.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(server_session data_receiver reply_parser address headers)

version=0.13.2
tools="$HOME/.cache/skein/tools/cargo-fuzz-$version"
if [ ! -x "$tools/bin/cargo-fuzz" ]; then
  CARGO_TARGET_DIR="$HOME/.cache/skein/tools/build" \
    cargo install cargo-fuzz --version "$version" --locked --root "$tools"
fi
export PATH="$tools/bin:$PATH"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="$HOME/.cache/skein/fuzz-target"

status=0
for t in "${targets[@]}"; do
  seeds="tests/fuzz/corpus/$t"
  found=$(mktemp -d)   # new inputs go here; the checked-in seeds stay as they are
  log=$(mktemp)
  if cargo fuzz run --fuzz-dir tests/fuzz --sanitizer none "$t" "$found" "$seeds" -- \
      -max_total_time="$secs" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
    tail -40 "$log"
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
  printf '%-16s %-5s %12s runs in %ss, coverage %s, corpus %s inputs\n' \
    "$t" "$result" "$runs" "$secs" "$cov" "$(ls "$found" "$seeds" | grep -vc ':$\|^$')"
  rm -rf "$found" "$log"
done
exit $status
