"""PAIR's 450-seed statistics (``pair.md`` §1.1) for a batched ``pair2023`` ensemble.

    groklab train --preset pair2023 --seeds 0-63 --vary-data --out RUN
    python benchmarks/pair_seeds.py RUN          # analyses each member (if needed), then prints
    python benchmarks/pair_seeds.py RUN --trajectory   # median train/test CE by step beside PAIR's

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
# median plain cross-entropy (CE/67 x 67) over PAIR's 450 runs at each step: (train, test), computed
# from source/grokking/mod-bot/seeds/data__allmetrics_mlp_modular_addition_sweep.csv (PAIR-code/
# ai-explorables; logged every 1,000 steps)
PAIR_MEDIANS = {1000: (2.66e-04, 91.9), 2000: (6.53e-05, 93.6), 3000: (6.05e-05, 86.0), 5000: (5.4e-05, 75.4),
                10000: (4.32e-05, 54.1), 15000: (3.42e-05, 31.8), 20000: (2.76e-05, 17.0),
                25000: (1.98e-05, 2.68), 30000: (1.38e-05, 1.54e-03), 40000: (1.24e-05, 1.41e-04),
                50000: (1.21e-05, 9.89e-05)}


def trajectory(runs: list[list[dict]], scale: float) -> None:
    """Median train and test cross-entropy (plain CE: the run's loss times ``scale``) of the
    members at PAIR's logged steps, beside PAIR's 450-run medians."""
    print(f"{'step':>7} {'train CE ours':>14} {'PAIR':>9} {'test CE ours':>13} {'PAIR':>9}")
    for step, (p_tr, p_te) in PAIR_MEDIANS.items():
        rows = [r for run in runs for r in run if r["step"] == step]
        if len(rows) < len(runs):
            break
        tr = quantile([r["train_loss"] * scale for r in rows], 0.5)
        te = quantile([r["test_loss"] * scale for r in rows], 0.5)
        print(f"{step:>7,} {tr:>14.3g} {p_tr:>9.3g} {te:>13.3g} {p_te:>9.3g}")


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    i = q * (len(xs) - 1)
    lo, hi = math.floor(i), math.ceil(i)
    if math.isinf(xs[hi]):  # an unreached member (inf) at or above the quantile
        return xs[lo] if lo == hi else math.inf
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
    ap.add_argument("--trajectory", action="store_true",
                    help="only the median train/test CE at PAIR's logged steps beside PAIR's (no analysis)")
    args = ap.parse_args()
    if args.trajectory:
        dirs = [args.run / m["dir"] for m in json.loads((args.run / "ensemble.json").read_text())["members"]]
        runs = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in dirs]
        cfg = json.loads((dirs[0] / "config.json").read_text())
        trajectory(runs, cfg["task"]["p"] if cfg["train"]["loss_reduction"] == "class_mean" else 1.0)
        return 0
    from groklab.analysis.pipeline import analyze_run

    members = [args.run / m["dir"] for m in json.loads((args.run / "ensemble.json").read_text())["members"]]
    steps, outcomes, freqs, last = [], Counter(), [], 0
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
        freqs.append((strong, {k: a["neuron_clusters"][str(k)] for k in a["key_frequencies"]}))
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
    # PAIR's counts come from its 450 runs, 445 of which generalised: the members that reached the
    # threshold are the comparable set; all members are printed too
    for label, keep in (("reached the threshold", [h is not None for h in steps]), ("all", [True] * n)):
        n_pair, n_ours, per_pair, per_ours = Counter(), Counter(), Counter(), Counter()
        for (strong, key), k in zip(freqs, keep, strict=True):
            if k:
                n_pair[len(strong)] += 1
                per_pair.update(strong.values())
                n_ours[len(key)] += 1
                per_ours.update(key.values())
        print(f"-- {label} ({sum(keep)} members)")
        print("frequencies per model, PAIR's rule (max |DFT| > 10):", dict(sorted(n_pair.items())),
              "; PAIR:", PAIR["freqs"])
        print("frequencies per model, groklab's key-frequency rule (>= 2 neurons):",
              dict(sorted(n_ours.items())))
        print("neurons per frequency, PAIR's rule:", dict(sorted(per_pair.items())),
              f"(mode {per_pair.most_common(1)[0][0] if per_pair else None}; PAIR's mode 5, then 6, 7)")
        print("neurons per key frequency, groklab's rule:", dict(sorted(per_ours.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
