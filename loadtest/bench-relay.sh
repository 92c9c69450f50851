#!/usr/bin/env bash
# End-to-end relay benchmark (issue: delivery): smtp-source submits, Skein stores and delivers,
# Postfix's smtp-sink receives. Postfix relaying the same load (../shared/bench/postfix-relay.sh)
# runs first, in the same run. Rate = messages / (first submit .. last delivery), where "last
# delivery" is the last `delivered` event Skein logs after the sink's 250 was committed.
# CPU over the same span: Skein's processes (ms per message, from /proc/PID/stat) and the
# whole machine, load generator and sink included (CPU-seconds per 1,000 messages, from
# /proc/stat; Postfix's over its whole script).
# Needs postfix (apt-get install postfix: smtp-source, smtp-sink) and a built workspace.
# SKEIN_PROFILE=release runs the release build (`cargo build --workspace --release --bins`);
# SKEIN_BIN=path runs another build of `skein`.
# SKEIN_PERF=DIR also records each Skein run with `perf record --call-graph dwarf` (Debian's
# linux-perf) and writes a flame graph per process there (loadtest/flamegraph.py: SVG and
# folded stacks). Sampling costs CPU: take figures from runs without it.
# Usage: loadtest/bench-relay.sh [MESSAGES=20000] [SESSIONS=20] [SIZE=5120]
#   e.g. loadtest/bench-relay.sh 5000 20 102400 for 100 KB messages.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
N=${1:-20000}; S=${2:-20}; L=${3:-5120}
T="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}/${SKEIN_PROFILE:-debug}"
BIN="${SKEIN_BIN:-$T/skein}"
shared="${SKEIN_SHARED:-$here/../shared}"
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
now() { date +%s.%N; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }
# CPU ticks (1/100 s) used so far: by the given processes; by the whole machine (all but
# idle and iowait).
ticks() { local s=0 p; for p in "$@"; do s=$((s + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $s; }
busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9}' /proc/stat; }
# Waits until the events files hold N deliveries; prints the rate from t0 to the last one, and
# the CPU used since the given tick counts.
report() { # label t0 skein_ticks0 busy0 "pids" events...
  local label=$1 t0=$2 c0=$3 m0=$4 pids=$5; shift 5
  until [ "$(cat "$@" 2>/dev/null | grep -c '"type":"delivered"' || true)" -ge "$N" ]; do sleep 0.2; done
  profile_end "$label"
  # shellcheck disable=SC2086
  local c1 m1 last; c1=$(ticks $pids); m1=$(busy)
  last=$(cat "$@" | grep '"type":"delivered"' | sed 's/.*"ts_ms":\([0-9]*\).*/\1/' | sort -n | tail -1)
  awk -v a="$t0" -v b="$last" -v n="$N" -v l="$label" -v c="$((c1 - c0))" -v m="$((m1 - m0))" 'BEGIN{s=b/1000-a;
    printf "%s messages=%d e2e_seconds=%.2f e2e_rate=%.0f/s skein_cpu_ms_per_msg=%.3f machine_cpu_s_per_1000=%.2f\n",
      l, n, s, n/s, c*10/n, m*10/n}'
}

# With SKEIN_PERF: sampling of the whole machine from here to profile_end.
profile_start() { # label=pid...
  [ -n "${SKEIN_PERF:-}" ] || return 0
  perf record -a -F 250 --call-graph dwarf,16384 -o "$work/perf.data" >/dev/null 2>&1 & perf=$!
  profiled=("$@"); sleep 0.5
}
profile_end() { # title
  [ -n "${SKEIN_PERF:-}" ] || return 0
  kill -INT "$perf"; wait "$perf" 2>/dev/null || true
  local args=() p; for p in "${profiled[@]}"; do args+=(--pid "$p"); done
  perf script -i "$work/perf.data" -F comm,pid,tid,time,event,ip,sym 2>/dev/null |
    python3 "$here/loadtest/flamegraph.py" --out "$SKEIN_PERF" --title "$1-${L}B" "${args[@]}"
}

echo "== postfix (anchor)"
m0=$(busy)
bash "$shared/bench/postfix-relay.sh" "$N" "$S" "$L" | tail -1
awk -v m="$(($(busy) - m0))" -v n="$N" 'BEGIN{printf "postfix machine_cpu_s_per_1000=%.2f (whole script)\n", m*10/n}'

echo "== skein dev (single node)"
smtp-sink -u postfix 127.0.0.2:2528 256 & sink=$!
"$BIN" dev --data-dir "$work/dev" --route example.net=127.0.0.2:2528 --events "$work/dev-events.jsonl" \
  >"$work/dev.log" 2>&1 &
dev=$!; wait_port 127.0.0.1:2525; sleep 1
profile_start "dev=$dev"
t0=$(now); c0=$(ticks $dev); m0=$(busy)
smtp-source -s "$S" -m "$N" -l "$L" -f a@example.com -t b@example.net 127.0.0.1:2525
report skein-dev "$t0" "$c0" "$m0" "$dev" "$work/dev-events.jsonl"
kill $dev; wait $dev 2>/dev/null || true

echo "== skein 3-node cluster + edge + sender"
members='[{ id = 1, addr = "127.0.0.11:7071" }, { id = 2, addr = "127.0.0.12:7071" }, { id = 3, addr = "127.0.0.13:7071" }]'
for i in 1 2 3; do
  printf '[node]\nid = %d\nlisten = "127.0.0.1%d:7071"\ndata_dir = "%s/n%d"\ninitial_members = %s\n[node.delivery]\nevents = "%s/n%d-events.jsonl"\n' \
    "$i" "$i" "$work" "$i" "$members" "$work" "$i" >"$work/n$i.toml"
  "$BIN" node --config "$work/n$i.toml" >"$work/n$i.log" 2>&1 &
  pids="${pids:-} $!"
done
printf '[edge]\nqueue = ["127.0.0.11:7071", "127.0.0.12:7071", "127.0.0.13:7071"]\nrelay_networks = ["127.0.0.0/8"]\n[[edge.listeners]]\naddress = "127.0.0.1:2525"\n' >"$work/edge.toml"
"$BIN" edge --config "$work/edge.toml" >"$work/edge.log" 2>&1 &
pids="$pids $!"
printf '[sender]\nname = "bench-sender"\ncluster = ["127.0.0.11:7071", "127.0.0.12:7071", "127.0.0.13:7071"]\nmax_in_flight = 256\nsource_ips = [{ ip = "127.0.0.21", ehlo = "out1.bench.test" }, { ip = "127.0.0.22", ehlo = "out2.bench.test" }]\nroutes = [{ domain = "example.net", to = "127.0.0.2:2528" }]\nallow_destinations = ["127.0.0.0/8"]\n' >"$work/sender.toml"
"$BIN" sender --config "$work/sender.toml" >"$work/sender.log" 2>&1 &
pids="$pids $!"
wait_port 127.0.0.1:2525; sleep 2
# shellcheck disable=SC2086
set -- $pids
profile_start "node1=$1" "node2=$2" "node3=$3" "edge=$4" "sender=$5"
t0=$(now); c0=$(ticks $pids); m0=$(busy)
smtp-source -s "$S" -m "$N" -l "$L" -f a@example.com -t b@example.net 127.0.0.1:2525
# Events are written by whichever node leads; the leader is the one whose file fills up.
report skein-cluster "$t0" "$c0" "$m0" "$pids" "$work"/n*-events.jsonl
kill $sink 2>/dev/null || true
