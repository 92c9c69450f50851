#!/usr/bin/env bash
# Snapshot benchmark (issue 9): a 3-node cluster queues MESSAGES messages of SIZE bytes (no
# sender, so they stay queued), then node 3 starts over from an empty data directory and
# catches up by snapshot. Reports the queued bytes, the time node 3 takes to hold every message,
# and peak RSS (VmHWM) of node 3 and of the leader (before and after the catch-up).
# Needs a built workspace. SKEIN_BIN=path runs another build of `skein` (to compare releases).
# Usage: loadtest/bench-snapshot.sh [MESSAGES=20000] [SIZE=51200]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
N=${1:-20000}; L=${2:-51200}
T="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}/debug"
BIN="${SKEIN_BIN:-$T/skein}"
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$1/status"; }
field() { # server key -> value from `skeinctl --json status`
  "$T/skeinctl" --server "$1" --json status 2>/dev/null |
    python3 -c "import json,sys; print(json.load(sys.stdin)['$2'])" 2>/dev/null || echo 0
}

members='[{ id = 1, addr = "127.0.0.31:7072" }, { id = 2, addr = "127.0.0.32:7072" }, { id = 3, addr = "127.0.0.33:7072" }]'
declare -A pid
start() {
  "$BIN" node --config "$work/n$1.toml" >>"$work/n$1.log" 2>&1 &
  pid[$1]=$!
}
for i in 1 2 3; do
  printf '[node]\nid = %d\nlisten = "127.0.0.3%d:7072"\ndata_dir = "%s/n%d"\ninitial_members = %s\n[node.raft]\nsnapshot_after_entries = 200\nkeep_entries_after_snapshot = 50\n' \
    "$i" "$i" "$work" "$i" "$members" >"$work/n$i.toml"
  start "$i"
done
printf '[edge]\nqueue = ["127.0.0.31:7072", "127.0.0.32:7072", "127.0.0.33:7072"]\nrelay_networks = ["127.0.0.0/8"]\n[[edge.listeners]]\naddress = "127.0.0.30:2529"\n' >"$work/edge.toml"
"$BIN" edge --config "$work/edge.toml" >"$work/edge.log" 2>&1 &
wait_port 127.0.0.30:2529; sleep 2
"$T/skein-load" blast 127.0.0.30:2529 -s 20 -m "$N" -l "$L" --label fill | tail -1

kill -9 "${pid[3]}"; wait "${pid[3]}" 2>/dev/null || true
rm -rf "$work/n3"
leader=$(field 127.0.0.31:7072 leader_id)
lead_before=$(hwm "${pid[$leader]}")
t0=$(date +%s.%N)
start 3
until [ "$(field 127.0.0.33:7072 message_count)" -ge "$N" ]; do sleep 0.1; done
t1=$(date +%s.%N)
du_snap=$(du -sm "$work/n$leader" | cut -f1)
echo "messages=$N size=$L leader_data_mb=$du_snap catch_up_seconds=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}') \
node3_peak_rss_mb=$(hwm "${pid[3]}") leader_peak_rss_mb_before=$lead_before leader_peak_rss_mb_after=$(hwm "${pid[$leader]}")"
grep -c "install" "$work/n3.log" >/dev/null || true
