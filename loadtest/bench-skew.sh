#!/usr/bin/env bash
# Fairness benchmark (issue 10): `skein dev` delivers BACKLOG messages to slow.test, whose
# destination takes DELAY seconds per message (tests/py/sink.py --delay), and then FAST
# messages to fast.test (a destination that answers at once). Reports, for fast.test, the time
# from a message's receipt to its first delivery attempt (p50/p99/max), from the events log.
# A fair scheduler starts fast.test's mail while the backlog is still being worked through.
# Needs a built workspace and Debian's python3-aiosmtpd (scripts/setup.sh --tests installs it).
# SKEIN_BIN=path runs another build of `skein`.
# Usage: loadtest/bench-skew.sh [BACKLOG=50000] [FAST=1000] [DELAY=0.1]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
B=${1:-50000}; F=${2:-1000}; D=${3:-0.1}
T="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}/debug"
BIN="${SKEIN_BIN:-$T/skein}"
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

/usr/bin/python3 "$here/tests/py/sink.py" 127.0.0.41:2541 --delay "$D" >"$work/slow.jsonl" 2>&1 &
/usr/bin/python3 "$here/tests/py/sink.py" 127.0.0.42:2542 >"$work/fast.jsonl" 2>&1 &
"$BIN" dev --data-dir "$work/dev" --events "$work/events.jsonl" \
  --route slow.test=127.0.0.41:2541 --route fast.test=127.0.0.42:2542 >"$work/dev.log" 2>&1 &
wait_port 127.0.0.41:2541; wait_port 127.0.0.42:2542; wait_port 127.0.0.1:2525; sleep 1
"$T/skein-load" blast 127.0.0.1:2525 -s 20 -m "$B" -l 1024 --to r@slow.test --label backlog | tail -1
"$T/skein-load" blast 127.0.0.1:2525 -s 4 -m "$F" -l 1024 --to r@fast.test --label fast | tail -1
count() { grep -c '"type":"attempt".*"domain":"fast.test"' "$work/events.jsonl" 2>/dev/null || true; }
for _ in $(seq 1800); do [ "$(count)" -ge "$F" ] && break; sleep 0.5; done
python3 - "$work/events.jsonl" "$B" "$F" "$D" <<'PY'
import json, sys
first = {}
slow_done = 0
for line in open(sys.argv[1]):
    e = json.loads(line)
    if e.get("type") != "attempt":
        continue
    if e.get("domain") == "slow.test":
        slow_done += 1
        continue
    k = e["message_id"]
    if e.get("domain") == "fast.test" and k not in first:
        first[k] = e["ts_ms"] - e["received_ms"]
ms = sorted(first.values())
pct = lambda p: ms[round((len(ms) - 1) * p)] if ms else -1
print(f"backlog={sys.argv[2]} fast={sys.argv[3]} delay={sys.argv[4]}s fast_first_attempts={len(ms)} "
      f"receipt_to_first_attempt_ms p50={pct(0.5)} p99={pct(0.99)} max={pct(1.0)} "
      f"backlog_attempted_meanwhile={slow_done}")
PY
