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


def rows_of(rows: list, kind: str, label: str) -> list:
    """The measurements of one kind and label, in the run's order."""
    return [r for r in rows if r["kind"] == kind and r["label"] == label]


def print_targets(rows: list, databases: list, quick: bool, errors: int) -> None:
    """Issue #12's targets against this run's figures (a figure the run did
    not measure is left out)."""
    one = lambda kind, label, **match: next(
        (r for r in rows_of(rows, kind, label) if all(r.get(k) == v for k, v in match.items())),
        None,
    )
    lines = []

    def target(figure: str, shown: str, goal: str, met: bool, always: bool = False) -> None:
        # A --quick run's figures are not judged, but for errors: any fails it.
        verdict = "not judged" if quick and not always else "met" if met else "missed"
        lines.append(f"| {figure} | {shown} | {goal} | {verdict} |")

    names = {"sqlite": "SQLite", "postgres": "PostgreSQL"}
    for db in databases:
        name = names[db]
        goal = 1.0 if db == "sqlite" else 0.8
        run = one("load", f"{db}:headline", concurrency=32)
        ref = one("reference", f"{db}:reference", concurrency=32)
        if run and ref:
            ratio = run["removes_per_s"] / ref["removes_per_s"]
            target(f"{name} remove one, c=32, ratio to the ceiling", f"{ratio:.2f}x", f">= {goal}x", ratio >= goal)
        goal = 2.0 if db == "sqlite" else 1.5
        run = one("load", f"{db}:headline", concurrency=1)
        ref = one("reference", f"{db}:reference", concurrency=1)
        if run and ref and reference_latency(ref):
            ratio = run["remove_p50_ms"] / reference_latency(ref)
            target(f"{name} remove one, c=1, p50 to the ceiling's", f"{ratio:.1f}x", f"<= {goal}x", ratio <= goal)
    for db in databases:
        # The issue bounds the same replica's max (20 ms), not replica A to B's.
        for label, where, goal, top_goal in (
            ("same-replica", "same replica", 5.0, 20.0),
            ("cross-replica", "replica A to B", 10.0, None),
        ):
            r = one("events", f"{db}:{label}")
            if r and r["deliveries"]:
                p99, top = r["event_p99_ms"], r["event_max_ms"]
                target(
                    f"{names[db]} events, 10 subscribers at half load, {where}: p99 / max ms",
                    f"{p99:.2f} / {top:.2f}",
                    f"<= {goal:g} / {top_goal:g}" if top_goal else f"<= {goal:g} / -",
                    p99 <= goal and (top_goal is None or top <= top_goal),
                )
    for db in databases:
        r = one("replay", f"{db}:replay")
        if r:
            target(f"{names[db]} replay from BEGINNING, events/s", f"{r['events_per_s']:,.0f}", ">= 200,000", r["events_per_s"] >= 200_000)
    for db in databases:
        r = one("events", f"{db}:200-subscribers")
        if r:
            rss = r.get("server_peak_rss_mib", 0)
            target(f"{names[db]} peak RSS with 200 subscribers, MiB", f"{rss:.0f}", "<= 150", rss <= 150)
    for db in databases:
        r = one("events", f"{db}:idle-subscribers")
        if r and "writer_ratio" in r:
            target(
                f"{names[db]} writers with 100 subscribers that never read, to alone",
                f"{r['writer_ratio']:.2f}x", ">= 0.9x", r["writer_ratio"] >= 0.9,
            )
    target("errors and missing deliveries, whole run", f"{errors}", "0", errors == 0, always=True)

    print("\n## Issue #12's targets" + (" (a --quick run: debug build, reduced sizes)" if quick else "") + "\n")
    print("| figure | this run | target | |")
    print("|---|---:|---:|---|")
    print("\n".join(lines))


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    quick = "--quick" in sys.argv
    by = lambda kind, label: rows_of(rows, kind, label)
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
    for db in databases:
        for r in by("ping", f"{db}:empty-call"):
            print(
                f"\nEmpty calls on the {db} server (grpc.health.v1 Check: no database, no token), c=1: "
                f"p50 {r['call_p50_ms']:.2f} ms, p99 {r['call_p99_ms']:.2f} ms, {r['calls_per_s']:.0f} calls/s, "
                f"server CPU {r.get('cpu_s_per_1000_calls', 0):.3f} s per 1k calls."
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
    print_targets(rows, databases, quick, errors)

    if errors:
        print(f"\nFAILED: {errors} errors or missing deliveries")
        sys.exit(1)


main()
