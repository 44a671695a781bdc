#!/usr/bin/env bash
# What batching removals across requests would save on PostgreSQL, measured
# with pgbench before building it (issue #12, "Where the time goes").
#
#   bench/experiments/batched_writes.sh DATABASE_URL [BATCH]
#
# DATABASE_URL: a scratch database seeded the way bench/run.sh seeds one
# (`connections-bench seed`: site 1, accounts 1..2000, each with a facebook
# identity), with no server running on it. It rewrites those identities and
# leaves the accounts as it found them otherwise; the events it appends are
# deleted at the end.
#
# It runs the service's guarded write statements (the removal's: touch the
# account if free, delete the identity, append the event; the re-link's:
# touch the account, insert the identity) as pgbench scripts, once with one
# account per statement, as the service writes today, and once with BATCH
# accounts per statement (default 8: each account its own CTEs, as a
# batched write would chain them), at 8 and 32 clients, and prints removals/s
# and the machine's CPU per removal and re-link (all processes, pgbench
# included, from /proc/stat). The reads are left out: both scripts would
# make the same ones.
set -euo pipefail
url=${1:?usage: batched_writes.sh DATABASE_URL [BATCH]}
batch=${2:-8}
work=$(mktemp -d "${TMPDIR:-/tmp}/batched-writes.XXXXXX")
trap 'rm -rf "$work"' EXIT

python3 - "$work" "$batch" <<'PY'
import sys
work, n = sys.argv[1], int(sys.argv[2])

def member(k):
    a = f"(:a{k})::bigint"
    guard = (f"g{k} AS (UPDATE accounts SET updated_at = now() WHERE id = (SELECT id FROM accounts "
             f"WHERE id = {a} FOR UPDATE SKIP LOCKED) RETURNING {k} AS m, 'guard' AS kind)")
    removal = (f"{guard}, h{k} AS (DELETE FROM identities WHERE account_id = {a} AND provider = "
               f"'facebook' AND EXISTS (SELECT 1 FROM g{k}) RETURNING {k} AS m, 'hard' AS kind), "
               f"e{k} AS (INSERT INTO events (position, event_id, occurred_at, api_key, provider, "
               f"source, payload) SELECT NULL::bigint, gen_random_uuid()::text, now(), '3_bench', "
               f"'facebook', 'REFERENCE', repeat('p', 470) WHERE EXISTS (SELECT 1 FROM g{k}) "
               f"RETURNING 1)")
    link = (f"{guard}, l{k} AS (INSERT INTO identities (site_id, account_id, provider, "
            f"sub_provider, provider_uid, login_id, state, session, linked_at, updated_at) "
            f"SELECT 1, {a}, 'facebook', '', 'facebook-x' || {a}, NULL, 'ACTIVE', "
            f"'\\x000102030405060708090a0b0c0d0e0f'::bytea, now(), now() "
            f"WHERE EXISTS (SELECT 1 FROM g{k}) RETURNING {k} AS m, 'linked' AS kind)")
    return removal, link

def script(size):
    lines = [f"\\set slot random(0, :accounts / :clients / {size} - 1)"]
    lines += [f"\\set a{k} :first + :client_id + :clients * (:slot * {size} + {k})"
              for k in range(size)]
    removals, links = zip(*(member(k) for k in range(size)))
    answers = lambda names: " UNION ALL ".join(f"SELECT * FROM {x}{k}" for k in range(size) for x in names)
    lines.append("WITH " + ", ".join(removals) + " " + answers("gh") + ";")
    lines.append("WITH " + ", ".join(links) + " " + answers("l") + ";")
    return "\n".join(lines) + "\n"

for size in (1, n):
    open(f"{work}/writes_{size}.sql", "w").write(script(size))
PY

busy() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9, $5 + $6 }' /proc/stat; }

run() { # SIZE CLIENTS
  local size=$1 clients=$2 before after out tps
  psql "$url" -qc "VACUUM ANALYZE" >/dev/null
  before=$(busy)
  out=$(pgbench -n -M prepared -c "$clients" -j 2 -T 8 -D first=1 -D accounts=2000 \
    -D clients="$clients" -f "$work/writes_$size.sql" "$url" 2>&1) || { echo "$out" >&2; exit 1; }
  after=$(busy)
  tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
  python3 - "$before" "$after" "$tps" "$size" "$clients" <<'PY'
import sys
(b_busy, b_idle), (a_busy, a_idle) = (map(int, s.split()) for s in sys.argv[1:3])
tps, size, clients = float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
share = (a_busy - b_busy) / ((a_busy - b_busy) + (a_idle - b_idle))
rate = tps * size
cores = __import__("os").cpu_count()
print(f"{size} per statement, {clients} clients: {rate:.0f} removals/s, machine busy "
      f"{100 * share:.0f}%, {1000 * share * cores / rate:.3f} ms CPU per removal and re-link")
PY
}

for clients in 8 32; do
  run 1 "$clients"
  run "$batch" "$clients"
done
psql "$url" -qc "DELETE FROM events WHERE source = 'REFERENCE'" >/dev/null
