#!/usr/bin/env bash
# The benchmark: the service beside the database's own ceiling, in one run.
#
#   bench/run.sh            full run (under ten minutes on 2 cores)
#   bench/run.sh --quick    reduced run for CI smoke (debug build, small
#                           sizes: the numbers are not a measurement)
#
# For each database (a fresh SQLite file, and a fresh PostgreSQL database when
# one is reachable) it builds the release binaries if needed, creates a token,
# starts `connections serve` exactly as users run it (authentication on),
# seeds a site and accounts, runs the write workloads at concurrency 1, 8 and
# 32, each headline run followed by the same removal as the database's
# ceiling at the same concurrency (pgbench with
# bench/reference/remove_connection.sql; for SQLite the reference program
# `connections-bench sqlite-reference`, through sqlx and, with --direct,
# through SQLite's C API), the event figures, and prints one
# table. Everything it creates is removed on exit.
#
# Settings (environment):
#   CONNECTIONS_BENCH_POSTGRES_URL  server to create the bench database on
#                                   (default: CONNECTIONS_TEST_POSTGRES_URL, else
#                                   postgres://postgres@127.0.0.1:5432/postgres);
#                                   set to "off" to skip PostgreSQL
#   CONNECTIONS_BENCH_NATS_URL      NATS JetStream server: adds the relay's
#                                   sustained rate and commit-to-JetStream
#                                   latency (default: CONNECTIONS_TEST_NATS_URL;
#                                   none: no relay figures)
#   CONNECTIONS_BENCH_DATABASES     which to run (default "sqlite postgres")
#   CONNECTIONS_BENCH_OUT           also write the raw JSON lines here
#   CONNECTIONS_BENCH_BIN_DIR       use the connections and connections-bench
#                                   binaries in this directory instead of building
set -euo pipefail
cd "$(dirname "$0")/.."

quick=
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    *) echo "usage: bench/run.sh [--quick]" >&2; exit 2 ;;
  esac
done

if [ -n "$quick" ]; then
  ACCOUNTS=200; SECONDS_HEADLINE=1.5; SECONDS_OTHER=1; BACKLOG=20000; LEVELS="1 8"
else
  ACCOUNTS=2000; SECONDS_HEADLINE=6; SECONDS_OTHER=3; BACKLOG=1000000; LEVELS="1 8 32"
fi
API_KEY=3_bench
VHOST=7001
FIRST_UID=1000000

say() { printf '== %s\n' "$*" >&2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/connections-bench.XXXXXX")
results="$work/results.jsonl"
servers=()
pg_admin=
pg_db=
cleanup() {
  for pid in "${servers[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${servers[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [ -n "$pg_db" ]; then
    psql "$pg_admin" -qc "DROP DATABASE IF EXISTS \"$pg_db\" WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

if [ -n "${CONNECTIONS_BENCH_BIN_DIR:-}" ]; then
  bin_dir=$CONNECTIONS_BENCH_BIN_DIR
else
  profile=release; build_flags=(--release)
  if [ -n "$quick" ]; then profile=debug; build_flags=(); fi
  say "$profile build"
  cargo build "${build_flags[@]}" --quiet --bin connections --bin connections-bench
  target_dir=$(cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  bin_dir="$target_dir/$profile"
fi
CONNECTIONS="$bin_dir/connections"
BENCH="$bin_dir/connections-bench"

# shellcheck source=bench/serve.sh
. bench/serve.sh

NATS=${CONNECTIONS_BENCH_NATS_URL:-${CONNECTIONS_TEST_NATS_URL:-}}

# start_server DATABASE_URL NAME [FLAG...]: starts a replica, sets $port and $pid.
start_server() {
  local url=$1 name=$2
  shift 2
  port=$(free_port)
  spawn_server "$CONNECTIONS" "$url" "$port" "$work/$name.log" "$@"
  pid=$!
  servers+=("$pid")
  "$BENCH" ready --grpc "http://127.0.0.1:$port" --seconds 120 \
    || { cat "$work/$name.log" >&2; exit 1; }
}

stop_server() {
  kill "$1"; wait "$1" 2>/dev/null || true
}

target_args() { echo --grpc "http://127.0.0.1:$1" --api-key "$API_KEY" --vhost "$VHOST" --accounts "$ACCOUNTS"; }

max_rate() { # the c=8 headline removals/s of a database
  python3 - "$results" "$1" <<'EOF'
import json, sys
rate = 0
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["kind"] == "load" and r["label"] == sys.argv[2] + ":headline" and r["concurrency"] == 8:
        rate = r["removes_per_s"]
print(rate)
EOF
}

# settle NAME URL: PostgreSQL only, VACUUM ANALYZE before each measured run,
# service and ceiling alike. Every removal and re-link leaves dead rows and
# index entries (the sequencer's stamp is an UPDATE); autovacuum would clean
# them in production, but it may be off (it is on this project's machine),
# and then each workload would run on the bloat of all the ones before it.
settle() {
  if [ "$1" = postgres ]; then psql "$2" -qc "VACUUM ANALYZE" >/dev/null; fi
}

# bench_database NAME URL
bench_database() {
  local db=$1 url=$2
  say "$db: token, server, $ACCOUNTS accounts"
  BENCH_TOKEN=$("$CONNECTIONS" token create --database-url "$url" --caller bench --sites '*' \
    --permissions admin,connections.write,connections.read,events.subscribe)
  export BENCH_TOKEN
  start_server "$url" "$db-a"
  local a_port=$port a_pid=$pid
  # shellcheck disable=SC2046
  "$BENCH" seed $(target_args "$a_port")

  # The floor of any call's latency on this server: empty calls, no
  # database (the table prints it beside the c=1 removals).
  say "$db: empty calls (gRPC health check), concurrency 1"
  "$BENCH" ping --grpc "http://127.0.0.1:$a_port" --concurrency 1 --seconds "$SECONDS_OTHER" \
    --server-pid "$a_pid" --label "$db:empty-call" >>"$results"

  # Each headline run is followed at once by the ceiling at the same
  # concurrency (with the server stopped: the reference's outbox rows are
  # not the service's to stamp or deliver), so that a drift of this
  # machine's speed between the two does not become the ratio.
  for c in $LEVELS; do
    say "$db: RemoveConnection (one provider), concurrency $c"
    settle "$db" "$url"
    # shellcheck disable=SC2046
    "$BENCH" load $(target_args "$a_port") --workload remove-one --concurrency "$c" \
      --seconds "$SECONDS_HEADLINE" --server-pid "$a_pid" --label "$db:headline" >>"$results"
    stop_server "$a_pid"
    ceiling "$db" "$url" "$c"
    start_server "$url" "$db-a"
    a_port=$port a_pid=$pid
  done
  for workload in remove-one-request-id remove-all unlink mixed; do
    for c in $LEVELS; do
      say "$db: $workload, concurrency $c"
      settle "$db" "$url"
      # shellcheck disable=SC2046
      "$BENCH" load $(target_args "$a_port") --workload "$workload" --concurrency "$c" \
        --seconds "$SECONDS_OTHER" --server-pid "$a_pid" --label "$db:$workload" >>"$results"
    done
  done

  local half
  half=$(python3 -c "print(max(1.0, $(max_rate "$db") / 2))")
  say "$db: events, 10 subscribers, writers at $half removals/s"
  settle "$db" "$url"
  # shellcheck disable=SC2046
  "$BENCH" events $(target_args "$a_port") --read "http://127.0.0.1:$a_port" --subscribers 10 \
    --rate "$half" --concurrency 8 --seconds "$SECONDS_HEADLINE" --server-pid "$a_pid" \
    --label "$db:same-replica" >>"$results"
  if [ "$db" = postgres ]; then
    start_server "$url" "$db-b"
    local b_port=$port b_pid=$pid
    say "$db: events written on replica A, read on replica B"
    settle "$db" "$url"
    # shellcheck disable=SC2046
    "$BENCH" events $(target_args "$a_port") --read "http://127.0.0.1:$b_port" --subscribers 10 \
      --rate "$half" --concurrency 8 --seconds "$SECONDS_HEADLINE" --server-pid "$a_pid,$b_pid" \
      --label "$db:cross-replica" >>"$results"
    stop_server "$b_pid"
  fi
  say "$db: writers with 100 subscribers that never read (and alone, just before and after)"
  settle "$db" "$url"
  # shellcheck disable=SC2046
  "$BENCH" events $(target_args "$a_port") --read "http://127.0.0.1:$a_port" --subscribers 0 \
    --idle-subscribers 100 --rate 0 --concurrency 8 --seconds "$SECONDS_HEADLINE" \
    --server-pid "$a_pid" --label "$db:idle-subscribers" >>"$results"
  say "$db: 200 live subscribers (100 reading, 100 not) under half load"
  settle "$db" "$url"
  # shellcheck disable=SC2046
  "$BENCH" events $(target_args "$a_port") --read "http://127.0.0.1:$a_port" --subscribers 100 \
    --idle-subscribers 100 --rate "$half" --concurrency 8 --seconds "$SECONDS_OTHER" \
    --server-pid "$a_pid" --label "$db:200-subscribers" >>"$results"
  stop_server "$a_pid"

  if [ -n "$NATS" ]; then
    local head stream="BENCH_${db}_$$" prefix="connections_bench.$$.$db"
    head=$("$BENCH" head --database-url "$url")
    # Before the replay backlog, so the relay catches up with what the
    # workloads wrote, not with a million copied events.
    say "$db: relay to NATS JetStream: catching up with $head events, then latency at $half removals/s"
    start_server "$url" "$db-relay" --nats-url "$NATS" --nats-stream "$stream" \
      --nats-subject-prefix "$prefix"
    "$BENCH" relay-catch-up --nats "$NATS" --stream "$stream" --head "$head" --server-pid "$pid" \
      --label "$db:relay" >>"$results"
    # shellcheck disable=SC2046
    "$BENCH" relay-latency $(target_args "$port") --nats "$NATS" --subject-prefix "$prefix" \
      --delete-stream "$stream" --rate "$half" --seconds "$SECONDS_HEADLINE" --server-pid "$pid" \
      --label "$db:relay" >>"$results"
    stop_server "$pid"
  fi

  say "$db: replay of $BACKLOG events from BEGINNING"
  "$BENCH" backlog --database-url "$url" --events "$BACKLOG"
  settle "$db" "$url"
  start_server "$url" "$db-replay"
  "$BENCH" replay --grpc "http://127.0.0.1:$port" --events "$BACKLOG" --server-pid "$pid" \
    --label "$db:replay" >>"$results"
  stop_server "$pid"
}

# ceiling NAME URL CONCURRENCY: the database's own removal and re-link,
# with no server running on it.
ceiling() {
  local db=$1 url=$2 c=$3
  say "$db: ceiling, concurrency $c"
  if [ "$db" = sqlite ]; then
    local file=${url#sqlite://}
    "$BENCH" sqlite-reference --db "${file%%\?*}" --api-key "$API_KEY" --accounts "$ACCOUNTS" \
      --concurrency "$c" --seconds "$SECONDS_HEADLINE" --label "$db:reference" >>"$results"
    # The same through SQLite's C API, as the service's write path runs.
    "$BENCH" sqlite-reference --direct --db "${file%%\?*}" --api-key "$API_KEY" \
      --accounts "$ACCOUNTS" --concurrency "$c" --seconds "$SECONDS_HEADLINE" \
      --label "$db:reference-direct" >>"$results"
  else
    settle "$db" "$url"
    pgbench_reference "$url" "$c" "$db:reference" bench/reference/remove_connection.sql
    # The same with the service's read before each transaction (see
    # read_first below): where the writes' rate goes when each is decided
    # by a read first, as the domain rules need.
    settle "$db" "$url"
    pgbench_reference "$url" "$c" "$db:reference-read" "$work/read_first.sql"
  fi
}

# The ceiling's script with the service's read
# (bench/reference/read_account.sql) before each of its transactions.
awk -v read=bench/reference/read_account.sql \
  '/^BEGIN;/ { while ((getline line < read) > 0) if (line !~ /^--/) print line; close(read) } { print }' \
  bench/reference/remove_connection.sql >"$work/read_first.sql"

# pgbench_reference URL CONCURRENCY LABEL SCRIPT: the ceiling's removals/s
# and the removal transaction's own latency (its statements' latencies
# summed, up to its COMMIT).
pgbench_reference() {
  local url=$1 c=$2 label=$3 script=$4 site_id out
  site_id=$(psql "$url" -qtAc "SELECT id FROM sites WHERE api_key = '$API_KEY'")
  out=$(pgbench -n -M prepared -r -c "$c" -j "$(( c < 2 ? c : 2 ))" -T "${SECONDS_HEADLINE%.*}" \
    -D site_id="$site_id" -D first_uid="$FIRST_UID" -D accounts="$ACCOUNTS" -D clients="$c" \
    -f "$script" "$url" 2>&1) || { echo "$out" >&2; exit 1; }
  psql "$url" -qc "DELETE FROM events WHERE source = 'REFERENCE'" >/dev/null
  printf '%s\n' "$out" >"$work/pgbench.out"
  python3 - "$c" "$work/pgbench.out" "$label" >>"$results" <<'EOF'
import json, re, sys
out = open(sys.argv[2]).read()
tps = float(re.search(r"tps = ([0-9.]+)", out).group(1))
# Per-statement latencies: the removal is everything up to the first COMMIT.
removal = 0.0
for line in out.split("statement latencies in milliseconds", 1)[1].splitlines()[1:]:
    m = re.match(r"\s+([0-9.]+)\s+(?:[0-9]+\s+)*(.*)", line)
    if not m:
        continue
    removal += float(m.group(1))
    if m.group(2).strip().upper().startswith("COMMIT"):
        break
print(json.dumps({"kind": "reference", "label": sys.argv[3], "concurrency": int(sys.argv[1]),
                  "removes_per_s": tps, "remove_avg_ms": round(removal, 3)}))
EOF
}

databases=${CONNECTIONS_BENCH_DATABASES:-sqlite postgres}
if [[ " $databases " == *" sqlite "* ]]; then
  bench_database sqlite "sqlite://$work/bench.db?mode=rwc"
fi

pg_admin=${CONNECTIONS_BENCH_POSTGRES_URL:-${CONNECTIONS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}}
if [[ " $databases " != *" postgres "* ]] || [ "$pg_admin" = off ]; then
  say "PostgreSQL not selected (CONNECTIONS_BENCH_DATABASES / CONNECTIONS_BENCH_POSTGRES_URL=off)"
elif ! psql "$pg_admin" -qtAc 'SELECT 1' >/dev/null 2>&1; then
  say "PostgreSQL SKIPPED: cannot reach $pg_admin (set CONNECTIONS_BENCH_POSTGRES_URL)"
else
  pg_db="connections_bench_$$"
  psql "$pg_admin" -qc "CREATE DATABASE \"$pg_db\"" >/dev/null
  pg_url=$(python3 -c "import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path='/' + sys.argv[2])))" "$pg_admin" "$pg_db")
  bench_database postgres "$pg_url"
fi

if [ -n "${CONNECTIONS_BENCH_OUT:-}" ]; then cp "$results" "$CONNECTIONS_BENCH_OUT"; fi
python3 bench/table.py "$results" ${quick:+--quick}
