#!/usr/bin/env python3
"""
Turn a benchmark run's results.jsonl into the results table.

    report.py RESULTS_JSONL [--meta META_JSON]

Every figure is the median over the run's repetitions; "added" figures are
the median over repetitions of (gateway - direct) measured back to back in
the same repetition, and ratios are gateway / direct.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

# Targets from the gateway's design brief.
TARGET_RPS = 4000.0
TARGET_ADDED_P50_MS = 0.5
TARGET_ADDED_P99_MS = 2.0
TARGET_SSE_TTFB_P50_MS = 1.0
TARGET_SSE_GAP_MS = 1.0
TARGET_RSS_GROWTH_MIB = 10.0


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def verdict(ok):
    if ok is None:
        return "n/a"
    return "PASS" if ok else "FAIL"


def f(value, spec=".3f", suffix=""):
    if value is None:
        return "-"
    return format(value, spec) + suffix


def signed(value, spec="+.3f", suffix=" ms"):
    return "-" if value is None else format(value, spec) + suffix


def load(path):
    rows = []
    with open(path) as lines:
        for line in lines:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def wrk_pairs(rows, case):
    """{rep: {target: row}} for one wrk case."""
    reps = {}
    for row in rows:
        if row.get("case") == case:
            reps.setdefault(row["rep"], {})[row["target"]] = row
    return dict(sorted(reps.items()))


def errors_of(row):
    return row["non2xx"], row["err_connect"] + row["err_read"] + row["err_write"] + row["err_timeout"]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--meta")
    args = parser.parse_args()
    rows = load(args.results)
    meta = {}
    if args.meta:
        with open(args.meta) as m:
            meta = json.load(m)

    table = []  # (case, direct, gateway, delta, target, result)
    notes = []
    problems = []
    detail = []

    # -- throughput -----------------------------------------------------------
    reps = wrk_pairs(rows, "throughput")
    if reps:
        d = [r["direct"]["rps"] for r in reps.values() if "direct" in r]
        g = [r["gateway"]["rps"] for r in reps.values() if "gateway" in r]
        ratios = [r["gateway"]["rps"] / r["direct"]["rps"] for r in reps.values() if len(r) == 2]
        md, mg = median(d), median(g)
        table.append((
            f"throughput, req/s (c{meta.get('throughput_connections', 50)}, "
            f"{meta.get('throughput_seconds', '?')} s)",
            f(md, ",.0f"), f(mg, ",.0f"), f(median(ratios), ".3f", "x"),
            f">= {TARGET_RPS:,.0f} req/s", verdict(mg >= TARGET_RPS if mg else None),
        ))
        gl = [r["gateway"]["lat_p50_us"] / 1000 for r in reps.values() if "gateway" in r]
        dl = [r["direct"]["lat_p50_us"] / 1000 for r in reps.values() if "direct" in r]
        table.append((
            "  latency p50 under that load, ms", f(median(dl)), f(median(gl)), "", "(info)", "",
        ))
        for rep, pair in reps.items():
            detail.append(
                f"  throughput rep {rep}: direct {f(pair.get('direct', {}).get('rps'), ',.0f')} req/s,"
                f" gateway {f(pair.get('gateway', {}).get('rps'), ',.0f')} req/s"
            )
        for rep, pair in reps.items():
            for target, row in pair.items():
                non2xx, sock = errors_of(row)
                if non2xx or sock:
                    problems.append(
                        f"throughput rep {rep} {target}: {non2xx} non-2xx answers, "
                        f"{sock} socket errors (of {row['requests']} requests)"
                    )

    # -- latency at concurrency 1 ----------------------------------------------
    reps = wrk_pairs(rows, "latency")
    if reps:
        for q, target in (("p50", TARGET_ADDED_P50_MS), ("p99", TARGET_ADDED_P99_MS)):
            key = f"lat_{q}_us"
            d = [r["direct"][key] / 1000 for r in reps.values() if "direct" in r]
            g = [r["gateway"][key] / 1000 for r in reps.values() if "gateway" in r]
            added = [
                (r["gateway"][key] - r["direct"][key]) / 1000 for r in reps.values() if len(r) == 2
            ]
            ma = median(added)
            table.append((
                f"added latency {q} at c1, ms", f(median(d)), f(median(g)), signed(ma),
                f"<= +{target:g} ms", verdict(ma <= target if ma is not None else None),
            ))
        d = [r["direct"]["rps"] for r in reps.values() if "direct" in r]
        g = [r["gateway"]["rps"] for r in reps.values() if "gateway" in r]
        table.append(("  req/s at c1", f(median(d), ",.0f"), f(median(g), ",.0f"), "", "(info)", ""))
        for rep, pair in reps.items():
            detail.append(
                "  latency rep %s: direct p50/p99 %s/%s ms, gateway p50/p99 %s/%s ms" % (
                    rep,
                    f(pair.get("direct", {}).get("lat_p50_us", 0) / 1000),
                    f(pair.get("direct", {}).get("lat_p99_us", 0) / 1000),
                    f(pair.get("gateway", {}).get("lat_p50_us", 0) / 1000),
                    f(pair.get("gateway", {}).get("lat_p99_us", 0) / 1000),
                )
            )
            for target, row in pair.items():
                non2xx, sock = errors_of(row)
                if non2xx or sock:
                    problems.append(
                        f"latency rep {rep} {target}: {non2xx} non-2xx answers, "
                        f"{sock} socket errors (of {row['requests']} requests)"
                    )

    # -- floor: bare twisted.web on the gateway's CPU -----------------------------
    floor = {}
    for row in rows:
        if row.get("case") == "floor":
            floor.setdefault(row["target"], []).append(row["rps"])
            non2xx, sock = errors_of(row)
            if non2xx or sock:
                problems.append(
                    f"floor {row['target']} rep {row['rep']}: {non2xx} non-2xx, {sock} socket errors"
                )
    gateway_rps = median(
        [r["gateway"]["rps"] for r in wrk_pairs(rows, "throughput").values() if "gateway" in r]
    )
    for target, label in (
        ("floor", "floor: bare twisted.web Resource, req/s"),
        ("floor_noform", "floor, Site(parsePOSTFormSubmission=False)"),
    ):
        if target in floor:
            mf = median(floor[target])
            share = f"gateway = {gateway_rps / mf:.2f}x" if gateway_rps and mf else ""
            table.append((label, "-", f(mf, ",.0f"), share, "(info)", ""))

    # -- SSE --------------------------------------------------------------------
    sse = [r for r in rows if r.get("case") == "sse"]
    if sse:
        s = sse[-1]
        d, g = s["direct"], s["gateway"]
        n = s["n"]
        gap = meta.get("stream_gap_ms", "?")
        a50 = s.get("added_ttfb_p50_ms")
        table.append((
            f"SSE time to first event p50, ms (n={n})", f(d.get("ttfb_p50_ms")),
            f(g.get("ttfb_p50_ms")), signed(a50), f"<= +{TARGET_SSE_TTFB_P50_MS:g} ms",
            verdict(a50 <= TARGET_SSE_TTFB_P50_MS if a50 is not None else None),
        ))
        table.append((
            "SSE time to first event p99, ms", f(d.get("ttfb_p99_ms")), f(g.get("ttfb_p99_ms")),
            signed(s.get("added_ttfb_p99_ms")), "(info)", "",
        ))
        for q in ("p50", "p99"):
            delta = s.get(f"gap_delta_{q}_ms")
            table.append((
                f"SSE inter-event gap {q}, ms (nominal {gap})", f(d.get(f"gap_{q}_ms")),
                f(g.get(f"gap_{q}_ms")), signed(delta), f"within {TARGET_SSE_GAP_MS:g} ms",
                verdict(abs(delta) <= TARGET_SSE_GAP_MS if delta is not None else None),
            ))
        table.append((
            "SSE largest gap seen, ms", f(d.get("gap_max_ms")), f(g.get("gap_max_ms")),
            signed((g.get("gap_max_ms") or 0) - (d.get("gap_max_ms") or 0))
            if "gap_max_ms" in g and "gap_max_ms" in d else "-",
            "(info)", "",
        ))
        for case, label in (
            ("sse_apart", "SSE apart (client on the upstream's CPU)"),
            ("sse_warm", "SSE warm (a call every 2 ms beside it)"),
            ("sse_floor", "SSE floor: nginx proxy on the gateway's CPU"),
        ):
            other = [r for r in rows if r.get("case") == case]
            if other and "added_ttfb_p50_ms" in other[-1]:
                table.append((
                    f"{label}: added first event p50, ms",
                    "-", signed(other[-1]["added_ttfb_p50_ms"]), "", "(info)", "",
                ))
                table.append((
                    f"{label}: added inter-event gap p99, ms",
                    "-", signed(other[-1].get("gap_delta_p99_ms")), "", "(info)", "",
                ))
        if "paired_gap_absdelta_p99_ms" in s:
            notes.append(
                "SSE paired gap |gateway - direct| (same request index, same event): "
                f"p50 {f(s['paired_gap_absdelta_p50_ms'])} ms, "
                f"p99 {f(s['paired_gap_absdelta_p99_ms'])} ms (includes the upstream's own timer jitter twice)"
            )
        for name in ("direct", "gateway"):
            r = s[name]
            if r["errors"] or r["wrong_event_count"] or r["ok"] < r["requests"]:
                problems.append(
                    f"SSE {name}: {r['ok']}/{r['requests']} streams whole; errors {r['errors']}; "
                    f"{r['wrong_event_count']} with an unexpected event count"
                )
        if s.get("timed_out"):
            problems.append("SSE probe hit its time limit: fewer requests than asked")

    # -- memory -----------------------------------------------------------------
    mem = [r for r in rows if r.get("case") == "memory"]
    if mem:
        m = mem[-1]
        growth = m.get("rss_growth_mib")
        size = m["bytes"] / (1024 * 1024)
        table.append((
            f"slow reader: gateway RSS, MiB ({size:.0f} MiB at {m['rate_mib_s']:.1f} MiB/s)",
            "-",
            f"{f(m.get('rss_before_mib'), '.1f')} / {f(m.get('rss_max_mib'), '.1f')} / "
            f"{f(m.get('rss_after_mib'), '.1f')}",
            signed(growth, "+.1f", " MiB"), f"< {TARGET_RSS_GROWTH_MIB:g} MiB growth",
            verdict(growth < TARGET_RSS_GROWTH_MIB if growth is not None and m["bytes"] else None),
        ))
        notes.append(
            "memory: RSS is before / max during / after; "
            f"the gateway used {f(m.get('cpu_seconds'), '.1f')} s of CPU for {size:.0f} MiB"
            f" ({m['seconds']:.1f} s wall, receive buffer {m['rcvbuf']} B)"
        )
        if m.get("expected_bytes") and m["expected_bytes"] != m["bytes"]:
            notes.append(
                f"memory: read {m['bytes']:,} of {m['expected_bytes']:,} bytes"
                + (" (cut by the time limit)" if m.get("cut_by_time_limit") else "")
            )
        if m.get("status") != 200 or m.get("error") or not m.get("complete"):
            if not m.get("cut_by_time_limit"):
                problems.append(
                    f"memory: HTTP {m.get('status')}, complete={m.get('complete')}, "
                    f"error={m.get('error')}"
                )

    # -- contention: other processes on the gateway's CPU ---------------------------
    noise = {}
    steal: dict[str, list[float]] = {}
    for row in rows:
        # Only runs where the gateway (or the floor server) is measured: a
        # direct run leaves the gateway's CPU idle for anyone to use.
        if row.get("case") == "noise" and row.get("of") != "warmup" and row.get("target") != "direct":
            noise.setdefault(row["of"], []).append(row["other_cpu_pct"])
            if "steal_pct" in row:
                steal.setdefault(row["of"], []).append(row["steal_pct"])
    noise_line = None
    if noise:
        parts = [
            f"{case} {median(values):.0f}% (max {max(values):.0f}%)"
            for case, values in noise.items()
        ]
        noise_line = (
            f"other processes' share of CPU {meta.get('gateway_cpu', '?')} (the gateway's) "
            "during the measurements: " + ", ".join(parts)
        )
        if steal:
            noise_line += (
                "; of that, taken by the hypervisor (steal): "
                + ", ".join(
                    f"{case} {median(values):.1f}% (max {max(values):.1f}%)"
                    for case, values in steal.items()
                )
            )
        busy = {case: median(values) for case, values in noise.items() if median(values) > 5}
        if busy:
            problems.append(
                "the machine was busy: other processes took "
                + ", ".join(f"{v:.0f}% ({case})" for case, v in busy.items())
                + " of the gateway's CPU while it was measured; those figures are pessimistic,"
                " run again on a quiet machine"
            )

    # -- print -------------------------------------------------------------------
    head = ("case", "direct", "via llmgate", "gateway vs direct", "target", "result")
    widths = [max(len(str(row[i])) for row in [head] + table) for i in range(len(head))]
    title = (
        f"llmgate benchmark, {meta.get('date', '?')}, "
        f"{meta.get('reps', '?')} repetition(s), medians"
        + (" [QUICK]" if meta.get("quick") else "")
    )
    print(title)
    if meta:
        print(
            f"gateway on CPU {meta.get('gateway_cpu')}, nginx + load generator on CPU "
            f"{meta.get('load_cpu')}"
            + (f", SSE probe's client on CPU {meta['probe_cpu']}" if "probe_cpu" in meta else "")
            + f"; config: {meta.get('config') or '(none, CLI flags only)'}"
        )
    print()
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths))
    print(line)
    print("-" * len(line))
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print()
    verdicts = [row[5] for row in table if row[5] in ("PASS", "FAIL")]
    print(f"targets met: {verdicts.count('PASS')} of {len(verdicts)}")
    if noise_line:
        print(f"note: {noise_line}")
    for note in notes:
        print(f"note: {note}")
    if detail:
        print("per repetition:")
        for line in detail:
            print(line)
    if problems:
        print("PROBLEMS SEEN:")
        for p in problems:
            print(f"  - {p}")
    else:
        print("no errors, non-2xx answers or cut streams seen.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
