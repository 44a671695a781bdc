#!/usr/bin/env bash
# Paired A/B runs of two builds of the server (issue #12's method since the
# late-morning round of 2026-11-29).
#
#   bench/experiments/ab.sh A_BIN_DIR B_BIN_DIR ROUNDS "WORKLOAD:C ..."
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
set -euo pipefail
[ $# -eq 4 ] || { echo 'usage: ab.sh A_BIN_DIR B_BIN_DIR ROUNDS "WORKLOAD:C ..."' >&2; exit 2; }
declare -A BIN=([a]=$1 [b]=$2)
rounds=$3 runs=$4
database=${DATABASE:-postgres}
admin=${POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
per_run=${SECONDS_PER_RUN:-4}
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

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

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
  # shellcheck disable=SC2086
  env ${!env_var:-} RUST_LOG=warn "${BIN[$side]}/connections" serve --database-url "${URL[$side]}" \
    --listen "127.0.0.1:${PORT[$side]}" --http-listen off --rate-limit 0 \
    --max-streams-per-caller 1000 >"$work/$side.log" 2>&1 &
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
      BENCH_TOKEN=$(cat "$work/$side.token") "${BIN[$side]}/connections-bench" load \
        --grpc "http://127.0.0.1:${PORT[$side]}" --api-key 3_bench --vhost 7001 --accounts 2000 \
        --workload "$workload" --concurrency "$c" --seconds "$per_run" --server-pid "${PID[$side]}" \
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

print("| workload | c | A removals/s | B removals/s | B/A median (range) | A p50 ms | B p50 ms | A CPU s/1k | B CPU s/1k | pairs |")
print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
for (workload, c), rounds in runs.items():
    pairs = [d for d in rounds.values() if "a" in d and "b" in d]
    med = lambda side, key: statistics.median(d[side].get(key, 0) for d in pairs)
    ratios = [d["b"]["removes_per_s"] / d["a"]["removes_per_s"] for d in pairs]
    print(f"| {workload} | {c} | {med('a', 'removes_per_s'):.0f} | {med('b', 'removes_per_s'):.0f} | "
          f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | "
          f"{med('a', 'remove_p50_ms'):.3f} | {med('b', 'remove_p50_ms'):.3f} | "
          f"{med('a', 'cpu_s_per_1000_removes'):.3f} | {med('b', 'cpu_s_per_1000_removes'):.3f} | {len(pairs)} |")
EOF
