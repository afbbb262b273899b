"""
The table of bench/tail.sh: throughput at c64 and latency percentiles at c1
for each configuration, as medians over repetitions, with ratios and
differences to ``bare`` taken within each repetition.
"""

import argparse
import json
import os
import statistics


def load(path):
    runs, files, cpu = {}, {}, {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            row = json.loads(line)
            if row.get("kind") == "files":
                files[row["target"]] = row
            elif row.get("kind") == "cpu":
                cpu[(row["case"], row["target"], row["rep"])] = row
            elif "requests" in row:
                runs[(row["case"], row["target"], row["rep"])] = row
    return runs, files, cpu


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("results")
    parser.add_argument("--configs", default="bare,trace+sessions,everything")
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    runs, files, cpu = load(args.results)
    names = args.configs.split(",")
    reps = sorted({r for (c, _t, r) in runs if c == "c64"})

    def per_rep(case, target, field, base=None, ratio=False):
        out = []
        for r in reps:
            this = runs.get((case, target, r))
            if this is None:
                continue
            if base is None:
                out.append(this[field])
                continue
            other = runs.get((case, base, r))
            if other is None:
                continue
            out.append(this[field] / other[field] if ratio else this[field] - other[field])
        return med(out)

    def cpu_us(target):
        out = []
        for r in reps:
            row, c = runs.get(("c64", target, r)), cpu.get(("c64", target, r))
            if row and c and row["requests"]:
                out.append(1e6 * c["gw_ticks"] / c["clk_tck"] / row["requests"])
        return med(out)

    ms = lambda us: "-" if us is None else f"{us / 1000:.2f}"
    plus = lambda us: "-" if us is None else f"{us / 1000:+.2f}"
    head = (f"{'configuration':<18}{'req/s c64':>10}{'÷ bare':>8}{'CPU us/req':>11}"
            f"{'c1 p50':>8}{'p90':>7}{'p99':>7}{'p99.9':>7}{'max':>8}"
            f"{'  p90-bare':>10}{'p99-bare':>9}")
    print(f"bench/tail.sh: {len(reps)} repetition(s) interleaved, medians; latencies in ms;"
          " '÷ bare' and '-bare' against the same code's bare relay, within each repetition")
    print(head)
    print("-" * len(head))
    verdicts = []
    for t in names:
        # Old code is compared with its own bare relay, new code with its own.
        bare = "old:bare" if t.startswith("old:") else "bare"
        rps = per_rep("c64", t, "rps")
        ratio = per_rep("c64", t, "rps", bare, ratio=True) if t != bare else 1.0
        d90 = per_rep("c1", t, "lat_p90_us", bare) if t != bare else None
        d99 = per_rep("c1", t, "lat_p99_us", bare) if t != bare else None
        print(f"{t:<18}{'-' if rps is None else f'{rps:,.0f}':>10}"
              f"{'-' if ratio is None else f'{ratio:.2f}':>8}"
              f"{'-' if cpu_us(t) is None else f'{cpu_us(t):.0f}':>11}"
              f"{ms(per_rep('c1', t, 'lat_p50_us')):>8}{ms(per_rep('c1', t, 'lat_p90_us')):>7}"
              f"{ms(per_rep('c1', t, 'lat_p99_us')):>7}{ms(per_rep('c1', t, 'lat_p999_us')):>7}"
              f"{ms(per_rep('c1', t, 'lat_max_us')):>8}{plus(d90):>10}{plus(d99):>9}")
        if t != bare and not t.startswith("old:"):
            verdicts.append((f"{t}: throughput >= 0.5 x bare", ratio is not None and ratio >= 0.5))
            if t == "everything":
                verdicts.append((f"{t}: c1 p90 <= bare + 0.3 ms", d90 is not None and d90 <= 300))
                verdicts.append((f"{t}: c1 p99 <= bare + 1 ms", d99 is not None and d99 <= 1000))
    print()
    for text, ok in verdicts:
        print(f"  {text:<45} {'PASS' if ok else 'FAIL'}")
    print()
    print("per repetition (c64 req/s | c1 p50/p90/p99 ms):")
    for r in reps:
        parts = []
        for t in names:
            a, b = runs.get(("c64", t, r)), runs.get(("c1", t, r))
            if a and b:
                parts.append(f"{t} {a['rps']:,.0f} | {b['lat_p50_us']/1000:.2f}/"
                             f"{b['lat_p90_us']/1000:.2f}/{b['lat_p99_us']/1000:.2f}")
        print(f"  rep {r}: " + "; ".join(parts))
    for t in names:
        rec = files.get(t, {})
        answered = sum(runs[k]["requests"] for k in runs if k[1] == t)
        if rec.get("traces", -1) >= 0:
            print(f"note: {t}: {rec['traces']:,} trace files for about {answered:,} calls")
    if args.work:
        for t in names:
            path = os.path.join(args.work, f"gw-{t}", "metrics.txt")
            if os.path.exists(path):
                summary = stall_summary(open(path).read())
                if summary:
                    print(f"{t} stalls over the whole run: {summary}")


def stall_summary(text):
    """
    One line from the gateway's llmgate_gc_pause_seconds and
    llmgate_loop_lag_seconds histograms.
    """
    counts, sums, buckets = {}, {}, {}
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(("llmgate_gc_pause", "llmgate_loop_lag")):
            continue
        name, value = line.rsplit(" ", 1)
        value = float(value)
        if "_count" in name:
            counts[name.replace("_count", "")] = value
        elif "_sum" in name:
            sums[name.replace("_sum", "")] = value
        elif name.startswith("llmgate_loop_lag_seconds_bucket"):
            buckets[name.split('le="')[1].rstrip('"}')] = value
    parts = []
    for generation in "012":
        key = f'llmgate_gc_pause_seconds{{generation="{generation}"}}'
        if counts.get(key):
            parts.append(f"gc{generation} {counts[key]:.0f}x avg {1000 * sums[key] / counts[key]:.2f} ms")
    total = buckets.get("+Inf")
    if total:
        over = {le: total - n for le, n in buckets.items() if le != "+Inf"}
        parts.append("loop lag > 1/5/20 ms: " + "/".join(
            f"{100 * over.get(le, 0) / total:.1f}%" for le in ("0.001", "0.005", "0.02")))
    return "; ".join(parts)

if __name__ == "__main__":
    main()
