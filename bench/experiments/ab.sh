#!/usr/bin/env bash
# Paired A/B runs of two builds of the server (issue #12's method since the
# late-morning round of 2026-11-29).
#
#   bench/experiments/ab.sh A_BIN_DIR B_BIN_DIR ROUNDS "WORKLOAD:C ..."
#
# A run is a write workload of `connections-bench load` at concurrency C
# (remove-one:32), or `events:N`: N subscribers reading on the same server
# while 8 writers remove at EVENTS_RATE, reported as the events' latency to
# the subscribers and the server's CPU per removal.
#
# A_BIN_DIR and B_BIN_DIR hold a `connections` and a `connections-bench`
# (e.g. copies of target/release from two commits). Both servers start side
# by side, each on a fresh seeded database of its own, and the load
# alternates between them: A then B in odd rounds, B then A in even ones,
# SECONDS each (default 4), PostgreSQL vacuumed before each run. This
# machine's speed drifts by 20-40% within an hour; runs seconds apart fall
# in the same spell, and the median of the pairs' ratios (with their range)
# is the figure, not either side's absolute rate.
#
# Settings (environment):
#   DATABASE        postgres (default) or sqlite
#   POSTGRES_URL    server to create the two databases on
#                   (default postgres://postgres@127.0.0.1:5432/postgres)
#   A_ENV, B_ENV    extra environment for server A or B (e.g. "TOKIO_WORKER_THREADS=1")
#   SECONDS_PER_RUN default 4
#   EVENTS_RATE     removals/s of the events runs (default 300)
set -euo pipefail
[ $# -eq 4 ] || { echo 'usage: ab.sh A_BIN_DIR B_BIN_DIR ROUNDS "WORKLOAD:C ..."' >&2; exit 2; }
declare -A BIN=([a]=$1 [b]=$2)
rounds=$3 runs=$4
database=${DATABASE:-postgres}
admin=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
per_run=${SECONDS_PER_RUN:-4}
events_rate=${EVENTS_RATE:-300}
work=$(mktemp -d "${TMPDIR:-/tmp}/ab.XXXXXX")
declare -A URL PORT PID
cleanup() {
  for side in a b; do
    if [ -n "${PID[$side]:-}" ]; then kill "${PID[$side]}" 2>/dev/null || true; fi
  done
  wait 2>/dev/null || true
  if [ "$database" = postgres ]; then
    for side in a b; do
      psql "$admin" -qc "DROP DATABASE IF EXISTS ab_${side}_$$ WITH (FORCE)" >/dev/null 2>&1 || true
    done
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck source=bench/serve.sh
. "$(dirname "$0")/../serve.sh"

for side in a b; do
  if [ "$database" = sqlite ]; then
    URL[$side]="sqlite://$work/$side.db?mode=rwc"
  else
    psql "$admin" -qc "CREATE DATABASE ab_${side}_$$" >/dev/null
    URL[$side]=$(python3 -c "import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path='/' + sys.argv[2])))" "$admin" "ab_${side}_$$")
  fi
  "${BIN[$side]}/connections" token create --database-url "${URL[$side]}" --caller bench --sites '*' \
    --permissions admin,connections.write,connections.read,events.subscribe >"$work/$side.token" 2>/dev/null
  PORT[$side]=$(free_port)
  env_var=${side^^}_ENV
  SERVER_ENV=${!env_var:-} spawn_server "${BIN[$side]}/connections" "${URL[$side]}" \
    "${PORT[$side]}" "$work/$side.log"
  PID[$side]=$!
  "${BIN[$side]}/connections-bench" ready --grpc "http://127.0.0.1:${PORT[$side]}" --seconds 60
  BENCH_TOKEN=$(cat "$work/$side.token") "${BIN[$side]}/connections-bench" seed \
    --grpc "http://127.0.0.1:${PORT[$side]}" --api-key 3_bench --vhost 7001 --accounts 2000 >/dev/null
done

for round in $(seq "$rounds"); do
  order="a b"
  if [ $((round % 2)) -eq 0 ]; then order="b a"; fi
  for run in $runs; do
    workload=${run%%:*} c=${run##*:}
    for side in $order; do
      if [ "$database" = postgres ]; then psql "${URL[$side]}" -qc "VACUUM ANALYZE" >/dev/null; fi
      target=(--grpc "http://127.0.0.1:${PORT[$side]}" --api-key 3_bench --vhost 7001 --accounts 2000)
      if [ "$workload" = events ]; then
        command=(events "${target[@]}" --read "http://127.0.0.1:${PORT[$side]}" --subscribers "$c"
          --rate "$events_rate" --concurrency 8)
      else
        command=(load "${target[@]}" --workload "$workload" --concurrency "$c")
      fi
      BENCH_TOKEN=$(cat "$work/$side.token") "${BIN[$side]}/connections-bench" "${command[@]}" \
        --seconds "$per_run" --server-pid "${PID[$side]}" \
        --label "$side:$workload:$c:$round" >>"$work/results.jsonl"
    done
  done
done

python3 - "$work/results.jsonl" <<'EOF'
import json, statistics, sys

runs = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    side, workload, c, n = r["label"].split(":")
    runs.setdefault((workload, int(c)), {}).setdefault(n, {})[side] = r

loads = {k: v for k, v in runs.items() if k[0] != "events"}
events = {k: v for k, v in runs.items() if k[0] == "events"}

def pairs_of(rounds):
    return [d for d in rounds.values() if "a" in d and "b" in d]

def med(pairs, side, key):
    return statistics.median(d[side].get(key, 0) for d in pairs)

if loads:
    print("| workload | c | A removals/s | B removals/s | B/A median (range) | A p50 ms | B p50 ms | A CPU s/1k | B CPU s/1k | pairs |")
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
for (workload, c), rounds in loads.items():
    pairs = pairs_of(rounds)
    m = lambda side, key: med(pairs, side, key)
    ratios = [d["b"]["removes_per_s"] / d["a"]["removes_per_s"] for d in pairs]
    print(f"| {workload} | {c} | {m('a', 'removes_per_s'):.0f} | {m('b', 'removes_per_s'):.0f} | "
          f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
          f"{m('a', 'remove_p50_ms'):.3f} | {m('b', 'remove_p50_ms'):.3f} | "
          f"{m('a', 'cpu_s_per_1000_removes'):.3f} | {m('b', 'cpu_s_per_1000_removes'):.3f} | {len(pairs)} |")
if events:
    print()
    print("| subscribers | A removals/s | B removals/s | A event p50 / p99 / max ms | B event p50 / p99 / max ms | A CPU s/1k | B CPU s/1k | missing A / B | pairs |")
    print("|---:|---:|---:|---|---|---:|---:|---|---:|")
for (_, n), rounds in events.items():
    pairs = pairs_of(rounds)
    m = lambda side, key: med(pairs, side, key)
    for d in pairs:
        for side in "ab":
            d[side]["cpu_per_1k"] = 1000 * d[side]["server_cpu_s"] / max(1, d[side]["removes"])
    lat = lambda side: " / ".join(f"{m(side, k):.2f}" for k in ("event_p50_ms", "event_p99_ms", "event_max_ms"))
    missing = lambda side: sum(d[side]["missing"] for d in pairs)
    print(f"| {n} | {m('a', 'removes_per_s'):.0f} | {m('b', 'removes_per_s'):.0f} | {lat('a')} | {lat('b')} | "
          f"{m('a', 'cpu_per_1k'):.3f} | {m('b', 'cpu_per_1k'):.3f} | {missing('a')} / {missing('b')} | {len(pairs)} |")
EOF
