"""Prints bench/run.sh's table from the JSON lines the load generator wrote."""

import json
import sys


def error_text(row: dict) -> str:
    """0, or the count by gRPC code."""
    if not row["error_count"]:
        return "0"
    return ", ".join(f"{code} {n}" for code, n in row["errors"].items())


def reference_latency(ref: dict) -> float:
    """A ceiling's latency: pgbench gives the average of the removal
    transaction; the reference programs their p50."""
    return ref.get("remove_p50_ms", ref.get("remove_avg_ms"))


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    quick = "--quick" in sys.argv
    by = lambda kind, label: [r for r in rows if r["kind"] == kind and r["label"] == label]
    databases = [d for d in ("sqlite", "postgres") if by("load", f"{d}:headline")]

    if quick:
        print("bench/run.sh --quick: reduced sizes, numbers are a smoke test, not a measurement\n")

    print("## Writes (removals/s and latency of the removal calls; each removal is followed by its re-link)\n")
    print("| database | workload | c | removals/s | ceiling/s | ratio | p50 ms | p99 ms | p99.9 ms | ceiling p50 ms | p50 / ceiling | second ceiling/s, ratio, p50 ms, p50 ratio | links/s | errors | CPU s per 1k removals |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for db in databases:
        references = {r["concurrency"]: r for r in by("reference", f"{db}:reference")}
        # The second ceiling. SQLite: the same program through SQLite's C
        # API (no sqlx). PostgreSQL: pgbench with the service's read before
        # each transaction.
        second = "reference-direct" if db == "sqlite" else "reference-read"
        directs = {r["concurrency"]: r for r in by("reference", f"{db}:{second}")}
        for label in ("headline", "remove-one-request-id", "remove-all", "unlink", "mixed"):
            for r in by("load", f"{db}:{label}"):
                c = r["concurrency"]
                ref = references.get(c) if label == "headline" else None
                ceiling = ratio = ref_p50 = p50_ratio = direct = ""
                d = directs.get(c) if label == "headline" else None
                if d:
                    d_latency = reference_latency(d)
                    direct = (
                        f"{d['removes_per_s']:.0f}, {r['removes_per_s'] / d['removes_per_s']:.2f}x, "
                        f"{d_latency:.2f}, {r['remove_p50_ms'] / d_latency:.1f}x"
                    )
                if ref:
                    ceiling = f"{ref['removes_per_s']:.0f}"
                    ratio = f"{r['removes_per_s'] / ref['removes_per_s']:.2f}x"
                    ref_latency = reference_latency(ref)
                    ref_p50 = f"{ref_latency:.2f}"
                    p50_ratio = f"{r['remove_p50_ms'] / ref_latency:.1f}x" if ref_latency else ""
                name = {
                    "headline": "remove one",
                    "remove-one-request-id": "remove one, request id",
                    "remove-all": "remove all",
                    "unlink": "unlink",
                    "mixed": "mixed",
                }[label]
                print(
                    f"| {db} | {name} | {c} | {r['removes_per_s']:.0f} | {ceiling} | {ratio} | "
                    f"{r['remove_p50_ms']:.2f} | {r['remove_p99_ms']:.2f} | {r['remove_p999_ms']:.2f} | "
                    f"{ref_p50} | {p50_ratio} | {direct} | {r['links_per_s']:.0f} | {error_text(r)} | "
                    f"{r.get('cpu_s_per_1000_removes', '')} |"
                )

    print(
        "\nSecond ceiling: SQLite, the reference program through SQLite's C API; "
        "PostgreSQL, the pgbench script with the service's read (bench/reference/read_account.sql) "
        "before each transaction."
    )

    print("\n## Events (commit = the writer's answer; latency to each subscriber's receipt)\n")
    print("| database | figure | removals/s | subscribers | deliveries | missing | p50 ms | p99 ms | max ms | writer ratio | server peak RSS MiB | errors |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for db in databases:
        for label, name in (
            ("same-replica", "10 subscribers, half load, same replica"),
            ("cross-replica", "10 subscribers, half load, replica A to B"),
            ("idle-subscribers", "100 subscribers that never read, full load"),
            ("200-subscribers", "200 subscribers (100 never read), half load"),
        ):
            for r in by("events", f"{db}:{label}"):
                subscribers = r["subscribers"] + r["idle_subscribers"]
                writer_ratio = ""
                if "writer_ratio" in r:
                    # Against the same writers alone, just before and just after.
                    alone = " / ".join(f"{x:.0f}" for x in r["alone_removes_per_s"])
                    writer_ratio = (
                        f"{r['writer_ratio']:.2f}x (alone {alone}/s; "
                        f"{r['filling_writer_ratio']:.2f}x while their windows filled)"
                    )
                latency = ("", "", "")
                if r["deliveries"]:
                    latency = (f"{r['event_p50_ms']:.2f}", f"{r['event_p99_ms']:.2f}", f"{r['event_max_ms']:.2f}")
                print(
                    f"| {db} | {name} | {r['removes_per_s']:.0f} | {subscribers} | {r['deliveries']} | "
                    f"{r['missing']} | {latency[0]} | {latency[1]} | {latency[2]} | {writer_ratio} | "
                    f"{r.get('server_peak_rss_mib', 0):.0f} | {error_text(r)} |"
                )
        for r in by("replay", f"{db}:replay"):
            print(
                f"| {db} | replay of {r['events']} events from BEGINNING: {r['events_per_s']:.0f} events/s "
                f"| | | | | | | | | {r.get('server_peak_rss_mib', 0):.0f} | |"
            )

    relay = [r for r in rows if r["kind"].startswith("relay-")]
    if relay:
        print("\n## Relay to NATS JetStream\n")
        print("| database | sustained events/s (catching up) | writers removals/s | commit to JetStream p50 ms | p99 ms | max ms | missing | errors |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for db in databases:
            catch = next((r for r in by("relay-catch-up", f"{db}:relay")), None)
            lat = next((r for r in by("relay-latency", f"{db}:relay")), None)
            if not catch and not lat:
                continue
            rate = f"{catch['events_per_s']:.0f} ({catch['events']} events)" if catch else ""
            if lat:
                print(
                    f"| {db} | {rate} | {lat['removes_per_s']:.0f} | {lat['event_p50_ms']:.2f} | "
                    f"{lat['event_p99_ms']:.2f} | {lat['event_max_ms']:.2f} | {lat['missing']} | {error_text(lat)} |"
                )
            else:
                print(f"| {db} | {rate} | | | | | | |")

    errors = sum(r.get("error_count", 0) for r in rows) + sum(r.get("missing", 0) for r in rows)
    if errors:
        print(f"\nFAILED: {errors} errors or missing deliveries")
        sys.exit(1)


main()
