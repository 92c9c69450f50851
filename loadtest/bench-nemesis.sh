#!/usr/bin/env bash
# Liveness benchmark (issue 16): runs the nemesis tests (tests/tests/nemesis.rs) RUNS times each,
# with FAULTS faults per run, and reports the time from each fault to the first new commit
# (p50/p99/max over all faults), how many runs stalled or lost a message (aim: 0), and how
# many messages the sink received more than once.
# Needs a built workspace (scripts/test.sh or `cargo build --workspace --bins`).
# Usage: loadtest/bench-nemesis.sh [RUNS=10] [FAULTS=5]
set -uo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
RUNS=${1:-10}; FAULTS=${2:-5}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}"
out=$(mktemp); logs=$(mktemp -d)
failed=0
cd "$here"
for r in $(seq "$RUNS"); do
  for t in nemesis_commits_resume_and_acknowledged_mail_is_delivered nemesis_with_snapshot_catch_up; do
    if SKEIN_NEMESIS_OUT="$out" SKEIN_NEMESIS_FAULTS="$FAULTS" \
       cargo nextest run --workspace --no-fail-fast -E "test($t)" >"$logs/$r-$t.log" 2>&1; then
      echo "run $r $t: ok"
    else
      failed=$((failed + 1))
      echo "run $r $t: FAILED ($(grep -o 'seed [0-9]*' "$logs/$r-$t.log" | head -1)); log in $logs/$r-$t.log"
    fi
  done
done
python3 - "$out" "$failed" "$((RUNS * 2))" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rows = [r for r in lines if "recovery_ms" in r]
runs = [r for r in lines if "duplicate_deliveries" in r]
ms = sorted(r["recovery_ms"] for r in rows)
pct = lambda p: ms[round((len(ms) - 1) * p)] if ms else 0
by = {}
for r in rows:
    by.setdefault(r["fault"], []).append(r["recovery_ms"])
print(f"faults={len(ms)} runs={sys.argv[3]} failed_runs={sys.argv[2]} "
      f"first_commit_after_fault_ms p50={pct(0.5)} p99={pct(0.99)} max={pct(1.0)}")
print(f"acknowledged={sum(r['acknowledged'] for r in runs)} "
      f"stored={sum(r['stored'] for r in runs)} "
      f"duplicate_deliveries={sum(r['duplicate_deliveries'] for r in runs)} "
      f"(per run max {max((r['duplicate_deliveries'] for r in runs), default=0)})")
for f, v in sorted(by.items()):
    v.sort()
    print(f"  {f}: n={len(v)} p50={v[len(v)//2]} max={v[-1]}")
PY
