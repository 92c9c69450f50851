#!/usr/bin/env bash
# Cost of sending limits (issue: shaping): `skein dev` relays MESSAGES messages to five
# provider domains (gmail.com, yahoo.com, outlook.com, aol.com, icloud.com, in turn) from a
# sender with 20 source IPs (127.0.1.1-20) into Postfix's smtp-sink, twice: without IP records
# (no limits) and with the 20 IPs recorded as warm IPs (every lease planned and applied within
# the daily caps and the five providers' hourly limits). Reports the end-to-end rate and the
# skein process's CPU time per message for each.
# Needs postfix (smtp-sink) and a built workspace. SKEIN_BIN=path runs another build.
# Usage: loadtest/bench-shaping.sh [MESSAGES=20000] [SESSIONS=20] [SIZE=5120]
set -euo pipefail
N=${1:-20000}; S=${2:-20}; L=${3:-5120}
T="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}/debug"
BIN="${SKEIN_BIN:-$T/skein}"
CTL="$(dirname "$BIN")/skeinctl"
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
now() { date +%s.%N; }
wait_port() { for _ in $(seq 300); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }
ips=$(for i in $(seq 20); do printf '{ ip = "127.0.1.%d", ehlo = "o%d.bench.test" }, ' "$i" "$i"; done)

run() { # label shaped
  local dir="$work/$1"; mkdir -p "$dir"
  cat >"$dir/dev.toml" <<TOML
[node]
listen = "127.0.0.1:7070"
data_dir = "$dir/data"
[node.delivery]
events = "$dir/events.jsonl"
[edge]
hostname = "bench.skein.test"
relay_networks = ["127.0.0.0/8"]
[[edge.listeners]]
address = "127.0.0.1:2525"
[sender]
name = "bench"
max_in_flight = 256
source_ips = [ ${ips%, } ]
routes = [{ domain = "*", to = "127.0.0.2:2528" }]
TOML
  smtp-sink -u postfix 127.0.0.2:2528 256 & local sink=$!
  "$BIN" dev --config "$dir/dev.toml" >"$dir/dev.log" 2>&1 & local dev=$!
  wait_port 127.0.0.1:2525; wait_port 127.0.0.1:7070; sleep 1
  if [ "$2" = 1 ]; then
    until "$CTL" status 2>/dev/null | grep -Eq "^format ([4-9]|[1-9][0-9])"; do sleep 0.2; done
    for i in $(seq 20); do
      "$CTL" ip add "127.0.1.$i" --hostname "o$i.bench.test" --warm >/dev/null
    done
  fi
  local cpu0; cpu0=$(awk '{print $14+$15}' "/proc/$dev/stat")
  local t0; t0=$(now)
  "$T/skein-load" blast 127.0.0.1:2525 -s "$S" -m "$N" -l "$L" \
    --to u@gmail.com,u@yahoo.com,u@outlook.com,u@aol.com,u@icloud.com --label "$1" | tail -1
  until [ "$(grep -c '"type":"delivered"' "$dir/events.jsonl" 2>/dev/null || true)" -ge "$N" ]; do sleep 0.2; done
  local cpu1; cpu1=$(awk '{print $14+$15}' "/proc/$dev/stat")
  local last; last=$(grep '"type":"delivered"' "$dir/events.jsonl" | sed 's/.*"ts_ms":\([0-9]*\).*/\1/' | sort -n | tail -1)
  local ticks; ticks=$(getconf CLK_TCK)
  awk -v a="$t0" -v b="$last" -v n="$N" -v l="$1" -v c="$((cpu1 - cpu0))" -v hz="$ticks" \
    'BEGIN{s=b/1000-a; printf "%s messages=%d e2e_seconds=%.2f e2e_rate=%.0f/s skein_cpu_ms_per_message=%.3f\n", l, n, s, n/s, c/hz*1000/n}'
  if [ "$2" = 1 ]; then
    "$CTL" ip show >"$work/ipshow.txt"; awk '/today/ {split($7, t, "/"); sum += t[1]} END {print "leased from the 20 IPs today: " sum}' "$work/ipshow.txt"; head -2 "$work/ipshow.txt"
  fi
  kill $dev $sink; wait $dev $sink 2>/dev/null || true
}

run no-limits 0
run limits-20-ips-5-providers 1
