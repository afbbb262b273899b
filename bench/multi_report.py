#!/usr/bin/env python3
"""
Tables for bench/compare.sh and bench/workers.sh from their results.jsonl.

    multi_report.py compare RESULTS_JSONL [--meta META_JSON]
    multi_report.py workers RESULTS_JSONL [--meta META_JSON]

Each wrk run gives two lines: wrk's (post.lua: requests, rps, non2xx, socket
errors) and a "cpu" line (the gateway's utime+stime delta in clock ticks over
the run, its process tree, /proc/stat deltas).  Per run:

- req/s: wrk's requests / its duration;
- CPU per request: gateway CPU seconds / requests (in microseconds);
- gateway cores: gateway CPU seconds / wall seconds of the run;
- others: CPU that neither the gateway nor (for workers) nginx and wrk used,
  on the gateway's CPU (compare) or on the whole machine (workers).

Figures are medians over repetitions; ratios are the median over
repetitions of the ratio within the repetition (runs next to each other in
time), so slow drift of the machine's load cancels.  Standard library only.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

TARGET_METRICS_COST = 0.05      # metrics cost < 5%
TARGET_MIDDLEWARE_KEEP = 0.60   # trace + printer keep >= 60% of throughput
TARGET_WORKERS_RATIO = 1.7      # 2 workers >= 1.7x one


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, spec=",.0f", none="-"):
    return none if value is None else format(value, spec)


def pct(value):
    return "-" if value is None else f"{100 * value:+.1f}%"


def load(path):
    wrk, cpu, files = {}, {}, {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            kind = rec.get("kind")
            if kind == "files":
                files[rec["target"]] = rec
                continue
            key = (rec.get("case"), rec.get("method", ""), rec["target"], rec["rep"])
            (cpu if kind == "cpu" else wrk)[key] = rec
    runs = {}
    for key, w in wrk.items():
        c = cpu.get(key)
        run = dict(w)
        run["errors"] = w["err_connect"] + w["err_read"] + w["err_write"] + w["err_timeout"]
        if c:
            hz = c["clk_tck"]
            gw_s = c["gw_ticks"] / hz
            run["gw_cpu_s"] = gw_s
            run["cpu_us"] = 1e6 * gw_s / w["requests"] if w["requests"] else None
            run["cores"] = (
                c.get("gw_ticks_wall", c["gw_ticks"]) / hz / c["wall"] if c["wall"] > 0 else None
            )
            busy0, total0 = c["cpu0"]
            run["other0"] = max(0.0, (busy0 - c["gw_ticks"]) / total0) if total0 else None
            # Part of other0: what the hypervisor took (older results lack it).
            run["steal0"] = (
                min(c["steal0"] / total0, run["other0"]) if total0 and "steal0" in c else None
            )
            busy, total = c["cpu"]
            load_ticks = c["nginx_ticks"] + c["wrk_cpu_s"] * hz
            # /proc/stat, nginx and wrk figures span the run up to the point
            # where the gateway's CPU settled.
            span = c.get("wall_settled", c["wall"])
            run["load_cores"] = load_ticks / hz / span if span > 0 else None
            run["other_cores"] = (
                max(0.0, (busy - c["gw_ticks"] - load_ticks) / hz / span) if span > 0 else None
            )
            run["split"] = worker_split(c["workers0"], c["workers1"])
        runs[key] = run
    return runs, files


def worker_split(before, after):
    """Each worker's share of the workers' CPU over the run, or None."""
    b = dict(item.split(":") for item in before.split()) if before else {}
    a = dict(item.split(":") for item in after.split()) if after else {}
    deltas = [int(a[p]) - int(b.get(p, 0)) for p in a]
    if len(deltas) < 2 or sum(deltas) <= 0:
        return None
    return [d / sum(deltas) for d in deltas]


QUIET = 0.10  # "quiet" repetition: others took under 10% of the gateway's CPU


def paired(runs, case, method, target, base, field, invert=False, quiet=False):
    """
    Median over repetitions of target/base (base/target with invert); with
    quiet, only repetitions where both runs had others under QUIET on the
    gateway's CPU, and the count: (median, n).
    """
    ratios = []
    for (c, m, t, rep), run in runs.items():
        if (c, m, t) != (case, method, target):
            continue
        other = runs.get((case, method, base, rep))
        if not other or run.get(field) is None or other.get(field) is None:
            continue
        if quiet and not (run.get("other0", 1) < QUIET and other.get("other0", 1) < QUIET):
            continue
        if invert:
            if run[field]:
                ratios.append(other[field] / run[field])
        elif other[field]:
            ratios.append(run[field] / other[field])
    return (median(ratios), len(ratios)) if quiet else median(ratios)


def problems_of(runs, files):
    problems = []
    for (case, method, target, rep), run in sorted(runs.items()):
        if run["non2xx"] or run["errors"]:
            problems.append(
                f"{case} {method} {target} rep {rep}: {run['non2xx']} non-2xx, "
                f"{run['errors']} socket errors"
            )
    for target, rec in files.items():
        if not rec.get("alive", True):
            problems.append(f"gateway {target} was not running at the end")
        if rec.get("log_lines", 0) > 0:
            problems.append(f"gateway {target} wrote {rec['log_lines']} other line(s) to its log at warn")
    return problems


# -- compare -----------------------------------------------------------------------


def report_compare(runs, files, meta):
    targets = []
    for (case, _m, target, _rep) in sorted(runs, key=lambda k: k[3]):
        if case == "compare" and target not in targets:
            targets.append(target)
    order = (meta.get("configs") or ",".join(targets)).split(",")
    targets = [t for t in order if t in targets]
    reps = sorted({k[3] for k in runs if k[0] == "compare"})

    def med(target, field):
        return median(runs[("compare", "", target, r)].get(field) for r in reps
                      if ("compare", "", target, r) in runs)

    out = []
    out.append(
        f"llmgate config comparison, {meta.get('date', '?')}, {len(reps)} repetition(s) "
        f"interleaved, medians; wrk -t1 -c{meta.get('connections', 50)} "
        f"-d{meta.get('seconds', '?')}s"
    )
    out.append(
        f"gateways on CPU {meta.get('gateway_cpu', 0)} (one at a time under load), "
        f"nginx + wrk on CPU {meta.get('load_cpu', 1)}; CPU = gateway utime+stime per request"
    )
    out.append("ratios: median over repetitions of the ratio within the repetition; "
               "'CPU-bound' = base CPU/req / this CPU/req")
    out.append("")
    head = (f"{'config':<20}{'req/s':>8}{'vs bare':>9}{'vs default':>12}"
            f"{'CPU us/req':>12}{'CPU-bound vs bare':>19}{'vs default':>12}"
            f"{'gw cores':>10}{'others CPU0':>13}{'of it steal':>13}{'non2xx/err':>12}")
    out.append(head)
    out.append("-" * len(head))
    have = set(targets)
    for t in targets:
        bad = sum(runs[("compare", "", t, r)]["non2xx"] + runs[("compare", "", t, r)]["errors"]
                  for r in reps if ("compare", "", t, r) in runs)
        out.append(
            f"{t:<20}{fmt(med(t, 'rps')):>8}"
            f"{fmt(paired(runs, 'compare', '', t, 'bare', 'rps') if 'bare' in have else None, '.3f'):>9}"
            f"{fmt(paired(runs, 'compare', '', t, 'default', 'rps') if 'default' in have else None, '.3f'):>12}"
            f"{fmt(med(t, 'cpu_us')):>12}"
            f"{fmt(paired(runs, 'compare', '', t, 'bare', 'cpu_us', True) if 'bare' in have else None, '.3f'):>19}"
            f"{fmt(paired(runs, 'compare', '', t, 'default', 'cpu_us', True) if 'default' in have else None, '.3f'):>12}"
            f"{fmt(med(t, 'cores'), '.2f'):>10}"
            f"{fmt(None if med(t, 'other0') is None else 100 * med(t, 'other0'), '.0f'):>12}%"
            f"{fmt(None if med(t, 'steal0') is None else 100 * med(t, 'steal0'), '.1f'):>12}%"
            f"{bad:>12}"
        )

    out.append("")
    out.append("targets: CPU per request decides (it moves far less with other people's load "
               "than req/s); req/s beside it;")
    out.append("'quiet' = the CPU figure over only the repetitions where others took < "
               f"{100 * QUIET:.0f}% of CPU {meta.get('gateway_cpu', 0)} in both runs (n of them);")
    out.append("cost rows: req/s lost and CPU per request added (negative: the cheaper one was "
               "slower); keep rows: the base's throughput kept (CPU: base CPU/req / this CPU/req)")
    results = []

    def line(label, rps_value, cpu_value, target, ok, quiet=("-", 0)):
        results.append(ok)
        out.append(f"  {label:<52} req/s {rps_value:>7}  CPU {cpu_value:>7}  "
                   f"quiet {quiet[0]:>7} (n={quiet[1]})  "
                   f"{target:<7} {'PASS' if ok else 'FAIL' if ok is not None else '-'}")

    def q(target, base, cost=False):
        value, n = paired(runs, "compare", "", target, base, "cpu_us", not cost, quiet=True)
        if value is None:
            return ("-", 0)
        return (pct(value - 1), n) if cost else (fmt(value, ".1%"), n)

    if {"default", "metrics-off"} <= have:
        rps_cost = paired(runs, "compare", "", "default", "metrics-off", "rps")
        cpu_cost = paired(runs, "compare", "", "default", "metrics-off", "cpu_us")
        rps_cost = None if rps_cost is None else 1 - rps_cost
        cpu_cost = None if cpu_cost is None else cpu_cost - 1
        line("metrics cost: default vs metrics-off",
             pct(rps_cost), pct(cpu_cost), "< 5%",
             None if cpu_cost is None else cpu_cost < TARGET_METRICS_COST,
             q("default", "metrics-off", cost=True))
    for mw in ("trace+printer", "trace+printer-info"):
        for base in ("default", "bare"):
            if {mw, base} <= have:
                r = paired(runs, "compare", "", mw, base, "rps")
                c = paired(runs, "compare", "", mw, base, "cpu_us", True)
                primary = base == "default"
                line(f"{mw} keeps, of {base}{'' if primary else ' (info)'}",
                     fmt(r, '.1%'), fmt(c, '.1%'), ">= 60%" if primary else "(info)",
                     (None if c is None else c >= TARGET_MIDDLEWARE_KEEP) if primary else None,
                     q(mw, base))
    for mw in ("trace", "printer-info"):
        if {mw, "default"} <= have:
            r = paired(runs, "compare", "", mw, "default", "rps")
            c = paired(runs, "compare", "", mw, "default", "cpu_us", True)
            line(f"{mw} alone keeps, of default (info)", fmt(r, '.1%'), fmt(c, '.1%'),
                 "(info)", None, q(mw, "default"))
    if {"bare", "metrics-off"} <= have:
        c = paired(runs, "compare", "", "metrics-off", "bare", "cpu_us")
        r = paired(runs, "compare", "", "metrics-off", "bare", "rps")
        line("sessions cost: metrics-off vs bare (info)",
             pct(None if r is None else 1 - r), pct(None if c is None else c - 1),
             "(info)", None, q("metrics-off", "bare", cost=True))

    out.append("")
    out.append("per repetition (req/s, CPU us/req, gateway cores, others' share of CPU0"
               " (of it steal)):")
    for r in reps:
        parts = []
        for t in targets:
            run = runs.get(("compare", "", t, r))
            if run:
                parts.append(f"{t} {run['rps']:,.0f} / {fmt(run.get('cpu_us'))} / "
                             f"{fmt(run.get('cores'), '.2f')} / {fmt(100 * (run.get('other0') or 0), '.0f')}%"
                             + (f" ({100 * run['steal0']:.1f}%)" if run.get("steal0") is not None else ""))
        out.append(f"  rep {r}: " + "; ".join(parts))

    notes = []
    problems = problems_of(runs, files)
    for t in targets:
        rec = files.get(t, {})
        answered = sum(run["requests"] - run["non2xx"] - run["errors"]
                       for (c, _m, tt, _r), run in runs.items() if tt == t) + 1
        if rec.get("traces", -1) >= 0:
            notes.append(f"{t}: {rec['traces']:,} trace files for about {answered:,} answered calls")
            if rec["traces"] < 0.99 * answered:
                problems.append(f"{t}: only {rec['traces']:,} trace files for about "
                                f"{answered:,} calls (dropped under load?)")
        if rec.get("cut_lines", 0) > 0:
            notes.append(f"{t}: {rec['cut_lines']} printer line(s) 'error=client disconnected': calls "
                         "in flight when wrk stopped (up to 50 per run), expected")
        if rec.get("info_lines", -1) >= 0:
            notes.append(f"{t}: {rec['info_lines']:,} lines in the info log file "
                         f"({rec['info_lines'] / answered:.2f} per call)")
    busy = [f"{t} {100 * med(t, 'other0'):.0f}%" for t in targets
            if med(t, "other0") is not None and med(t, "other0") > 0.10]
    if busy:
        problems.append("other processes took a share of the gateways' CPU during the runs "
                        f"(median): {', '.join(busy)}: req/s is pessimistic and noisy there; "
                        "CPU per request is not affected as much")
    if notes:
        out.append("")
        out.extend("note: " + n for n in notes)
    out.append("")
    out.append("PROBLEMS SEEN:" if problems else "problems seen: none "
               "(no non-2xx, no socket errors, nothing logged at warn)")
    out.extend("  - " + p for p in problems)
    return "\n".join(out)


# -- workers -----------------------------------------------------------------------


def report_workers(runs, files, meta):
    methods = []
    for (case, method, _t, _r) in sorted(runs, key=lambda k: k[3]):
        if case == "workers" and method not in methods:
            methods.append(method)
    reps = sorted({k[3] for k in runs if k[0] == "workers"})
    descriptions = meta.get("methods", {})

    def med(method, target, field):
        return median(runs[("workers", method, target, r)].get(field) for r in reps
                      if ("workers", method, target, r) in runs)

    out = []
    out.append(
        f"llmgate workers comparison, {meta.get('date', '?')}, {len(reps)} repetition(s) "
        f"interleaved, medians; wrk -t1 -c{meta.get('connections', 50)} "
        f"-d{meta.get('seconds', '?')}s; {meta.get('sessions', '')}"
    )
    for m in methods:
        out.append(f"method {m}: {descriptions.get(m, '')}")
    out.append("")
    head = (f"{'method':<8}{'workers':>8}{'req/s':>8}{'2 vs 1':>8}{'CPU us/req':>12}"
            f"{'1 vs 2 CPU':>12}{'gw cores':>10}{'wrk+nginx':>11}{'others':>8}"
            f"{'worker split':>14}{'non2xx/err':>12}")
    out.append(head)
    out.append("-" * len(head))
    verdicts = []
    for m in methods:
        for t in ("w1", "w2"):
            if ("workers", m, t, reps[0]) not in runs:
                continue
            bad = sum(runs[("workers", m, t, r)]["non2xx"] + runs[("workers", m, t, r)]["errors"]
                      for r in reps if ("workers", m, t, r) in runs)
            ratio = paired(runs, "workers", m, "w2", "w1", "rps") if t == "w2" else None
            cpu_ratio = paired(runs, "workers", m, "w2", "w1", "cpu_us") if t == "w2" else None
            splits = [runs[("workers", m, t, r)].get("split") for r in reps
                      if ("workers", m, t, r) in runs]
            splits = [s for s in splits if s]
            split = ("/".join(f"{100 * median([s[i] for s in splits]):.0f}"
                              for i in range(len(splits[0]))) if splits else "-")
            out.append(
                f"{m:<8}{t[1:]:>8}{fmt(med(m, t, 'rps')):>8}{fmt(ratio, '.2f'):>8}"
                f"{fmt(med(m, t, 'cpu_us')):>12}{fmt(cpu_ratio, '.3f'):>12}"
                f"{fmt(med(m, t, 'cores'), '.2f'):>10}{fmt(med(m, t, 'load_cores'), '.2f'):>11}"
                f"{fmt(med(m, t, 'other_cores'), '.2f'):>8}{split:>14}{bad:>12}"
            )
            if t == "w2":
                verdicts.append((m, ratio))
    out.append("")
    out.append("columns: '2 vs 1' = req/s of 2 workers / 1 worker within each repetition; "
               "'1 vs 2 CPU' = CPU per request of 2 workers / 1 worker (1.0: no extra cost per "
               "call); cores = CPU seconds / wall seconds (gateway tree incl. supervisor; "
               "wrk + nginx; everything else on the machine)")
    out.append("")
    out.append("target: 2 workers >= 1.7x the throughput of 1 (measured req/s ratio)")
    for m, ratio in verdicts:
        ok = None if ratio is None else ratio >= TARGET_WORKERS_RATIO
        out.append(f"  {m:<8} {fmt(ratio, '.2f')}x  {'PASS' if ok else 'FAIL' if ok is not None else '-'}")
    out.append("")
    out.append("projection for an otherwise idle 2-core machine (NOT measured; from CPU per request): "
               "1 worker = 1 core / G1;")
    out.append("2 workers = 2 cores / (G2 + L), L = wrk+nginx CPU per request in the 2-worker runs; "
               "ratio = 2 G1 / (G2 + L)")
    for m in methods:
        g1, g2 = med(m, "w1", "cpu_us"), med(m, "w2", "cpu_us")
        load_cores, rps = med(m, "w2", "load_cores"), med(m, "w2", "rps")
        if None in (g1, g2, load_cores, rps) or not rps:
            continue
        lc = 1e6 * load_cores / rps
        out.append(f"  {m:<8} G1 {g1:,.0f} us, G2 {g2:,.0f} us, L {lc:,.0f} us: "
                   f"{1e6 / g1:,.0f} vs {2e6 / (g2 + lc):,.0f} req/s, {2 * g1 / (g2 + lc):.2f}x")
    out.append("")
    out.append("per repetition (req/s, CPU us/req, gateway cores, others' cores):")
    for r in reps:
        parts = []
        for m in methods:
            for t in ("w1", "w2"):
                run = runs.get(("workers", m, t, r))
                if run:
                    parts.append(f"{m}/{t} {run['rps']:,.0f} / {fmt(run.get('cpu_us'))} / "
                                 f"{fmt(run.get('cores'), '.2f')} / {fmt(run.get('other_cores'), '.2f')}")
        out.append(f"  rep {r}: " + "; ".join(parts))
    problems = problems_of(runs, files)
    busy = [(m, t, med(m, t, "other_cores")) for m in methods for t in ("w1", "w2")]
    busy = [f"{m}/{t} {v:.2f}" for m, t, v in busy if v is not None and v > 0.2]
    if busy:
        problems.append("other processes were using cores during the runs (median cores): "
                        + ", ".join(busy) + ": the 2-worker figure competes with them for both "
                        "cores, the 1-worker one for one: req/s ratios are not conclusive")
    out.append("")
    out.append("PROBLEMS SEEN:" if problems else "problems seen: none "
               "(no non-2xx, no socket errors, nothing logged at warn)")
    out.extend("  - " + p for p in problems)
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("mode", choices=["compare", "workers"])
    parser.add_argument("results")
    parser.add_argument("--meta")
    args = parser.parse_args(argv)
    runs, files = load(args.results)
    meta = json.load(open(args.meta)) if args.meta else {}
    if args.mode == "compare":
        print(report_compare(runs, files, meta))
    else:
        print(report_workers(runs, files, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
