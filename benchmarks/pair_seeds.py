"""PAIR's 450-seed statistics (``pair.md`` §1.1) for a batched ``pair2023`` ensemble.

    groklab train --preset pair2023 --seeds 0-63 --vary-data --out RUN
    python benchmarks/pair_seeds.py RUN          # analyses each member (if needed), then prints

For every member: the first logged step with test loss < 1e-3 in PAIR's CE/67 units (plain CE
0.067), whether it gets there within the run, PAIR's outcome, the number of frequencies and the
neurons per frequency. Frequencies are counted both by PAIR's ``parse.js`` rule (a neuron counts
toward its frequency when its largest |DFT| coefficient exceeds 10) and by groklab's key-frequency
rule (>= 2 neurons). The median's 95% confidence interval is the distribution-free one from the
order statistics (binomial, n members).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter
from pathlib import Path

PAIR = {"median": 28_000, "p10": 15_000, "p90": 45_000, "reached": (445, 450),
        "freqs": {2: 1, 3: 274, 4: 165, 5: 10}, "neurons_mode": 5}


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    i = q * (len(xs) - 1)
    lo, hi = math.floor(i), math.ceil(i)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def median_ci(xs: list[float], level: float = 0.95) -> tuple[float, float]:
    """Order-statistic interval [x_(j), x_(k)] with P(j <= B < k) >= level, B ~ Bin(n, 1/2)."""
    xs, n = sorted(xs), len(xs)
    pmf = [math.comb(n, i) / 2 ** n for i in range(n + 1)]
    for j in range(n // 2, -1, -1):
        k = n - j
        if sum(pmf[j:k]) >= level:
            return xs[j], xs[min(k, n - 1)]
    return xs[0], xs[-1]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--threshold", type=float, default=1e-3, help="test loss, in the run's units")
    args = ap.parse_args()
    from groklab.analysis.pipeline import analyze_run

    members = [args.run / m["dir"] for m in json.loads((args.run / "ensemble.json").read_text())["members"]]
    steps, outcomes, n_pair, n_ours, per_freq_pair, per_freq_ours, last = [], Counter(), Counter(), \
        Counter(), Counter(), Counter(), 0
    for d in members:
        if not (d / "analysis.json").exists():
            analyze_run(d, progress=False)
        a = json.loads((d / "analysis.json").read_text())
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        last = rows[-1]["step"]
        hit = next((r["step"] for r in rows
                    if r["test_loss"] is not None and r["test_loss"] < args.threshold), None)
        steps.append(hit)
        outcomes[a["outcome"]] += 1
        strong = Counter(n["k"] for n in a["neurons"] if n["max_dft"] > 10 and n["k"] > 0)
        n_pair[len(strong)] += 1
        per_freq_pair.update(strong.values())
        n_ours[len(a["key_frequencies"])] += 1
        per_freq_ours.update(a["neuron_clusters"][str(k)] for k in a["key_frequencies"])
    got = [s for s in steps if s is not None]
    n = len(members)
    print(f"{n} members, {last:,} steps; test loss < {args.threshold:g} reached by {len(got)} "
          f"({len(got) / n:.1%}; PAIR {PAIR['reached'][0]}/{PAIR['reached'][1]} = "
          f"{PAIR['reached'][0] / PAIR['reached'][1]:.1%})")
    if got:
        # unreached members count as > the run's length: the median is over all members
        allv = [s if s is not None else math.inf for s in steps]
        med = quantile(allv, 0.5) if len(got) > n / 2 else math.inf
        lo, hi = median_ci(allv)
        print(f"step to test loss < {args.threshold:g}: median {med:,.0f} (95% CI {lo:,.0f}–{hi:,.0f}), "
              f"10–90% {quantile(allv, 0.1):,.0f}–{quantile(allv, 0.9):,.0f}, min {min(got):,}; "
              f"PAIR: median ~{PAIR['median']:,}, 10–90% {PAIR['p10']:,}–{PAIR['p90']:,}")
    print("outcomes:", dict(outcomes))
    print("frequencies per model, PAIR's rule (max |DFT| > 10):", dict(sorted(n_pair.items())),
          "; PAIR:", PAIR["freqs"])
    print("frequencies per model, groklab's key-frequency rule (>= 2 neurons):", dict(sorted(n_ours.items())))
    print("neurons per frequency, PAIR's rule:", dict(sorted(per_freq_pair.items())),
          f"(mode {per_freq_pair.most_common(1)[0][0] if per_freq_pair else None}; PAIR's mode 5, then 6, 7)")
    print("neurons per key frequency, groklab's rule:", dict(sorted(per_freq_ours.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
