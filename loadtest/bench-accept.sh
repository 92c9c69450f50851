#!/usr/bin/env bash
# Acceptance benchmark (issue: ingest): Postfix, `skein dev` and a 3-node cluster + edge take the
# same load in the same run. Throughput from Postfix's smtp-source; final-dot-to-250 latency
# from skein-load (loadtest/). Needs postfix (apt-get install postfix) and a built workspace.
# Usage: loadtest/bench-accept.sh [MESSAGES=20000] [SESSIONS=20] [SIZE=5120]
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
N=${1:-20000}; S=${2:-20}; L=${3:-5120}
T="${CARGO_TARGET_DIR:-$HOME/.cache/skein/target}/debug"
shared="${SKEIN_SHARED:-$here/../shared}"
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
now() { date +%s.%N; }
source_run() { # label addr
  local t0 t1; t0=$(now)
  smtp-source -s "$S" -m "$N" -l "$L" -f a@example.com -t b@example.net "$2"
  t1=$(now)
  awk -v a="$t0" -v b="$t1" -v n="$N" -v l="$1" 'BEGIN{printf "%s smtp-source messages=%d seconds=%.2f rate=%.0f/s\n", l, n, b-a, n/(b-a)}'
}
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/${1%:*}/${1#*:}) 2>/dev/null && return; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

echo "== postfix (anchor)"
bash "$shared/bench/postfix-accept.sh" "$N" "$S" "$L" | tail -1
. "$shared/bench/postfix-common.sh"
postfix_setup 127.0.0.9:2599 hold
"$T/skein-load" blast --label postfix -s "$S" -m "$N" -l "$L" 127.0.0.1:2526
postfix_teardown

echo "== skein dev (single node)"
"$T/skein" dev --data-dir "$work/dev" >"$work/dev.log" 2>&1 &
dev=$!; wait_port 127.0.0.1:2525; sleep 1
source_run skein-dev 127.0.0.1:2525
"$T/skein-load" blast --label skein-dev -s "$S" -m "$N" -l "$L" 127.0.0.1:2525
"$T/skeinctl" status | head -2
kill $dev; wait $dev 2>/dev/null || true

echo "== skein 3-node cluster + edge"
members='[{ id = 1, addr = "127.0.0.11:7071" }, { id = 2, addr = "127.0.0.12:7071" }, { id = 3, addr = "127.0.0.13:7071" }]'
for i in 1 2 3; do
  printf '[node]\nid = %d\nlisten = "127.0.0.1%d:7071"\ndata_dir = "%s/n%d"\ninitial_members = %s\n' "$i" "$i" "$work" "$i" "$members" >"$work/n$i.toml"
  "$T/skein" node --config "$work/n$i.toml" >"$work/n$i.log" 2>&1 &
done
printf '[edge]\nqueue = ["127.0.0.11:7071", "127.0.0.12:7071", "127.0.0.13:7071"]\nrelay_networks = ["127.0.0.0/8"]\n[[edge.listeners]]\naddress = "127.0.0.1:2525"\n' >"$work/edge.toml"
"$T/skein" edge --config "$work/edge.toml" >"$work/edge.log" 2>&1 &
wait_port 127.0.0.1:2525; sleep 2
source_run skein-cluster 127.0.0.1:2525
"$T/skein-load" blast --label skein-cluster -s "$S" -m "$N" -l "$L" 127.0.0.1:2525
"$T/skeinctl" --server 127.0.0.12:7071 status | head -2
