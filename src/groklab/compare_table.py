"""The table of ``groklab compare``: ``compare.md`` (markdown with a caption) and ``compare.csv``
(one row per switch), both rendered from the ``compare.json`` object (docs/compare.md).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from typing import Any


def fmt_overrides(over: Mapping[str, Any]) -> str:
    """``{"train.lr": 0.01, "train.loss": "stablemax"}`` -> ``"train.lr=0.01,train.loss=stablemax"``."""
    return ",".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in over.items())


def _num(v: float | None, kind: str) -> str:
    if v is None:
        return "∞" if kind != "ratio" else "—"
    if kind == "step":
        return f"{v:.0f}" if float(v).is_integer() else f"{v:.1f}"
    if kind == "wall":
        return f"{v:.1f}" if v >= 10 else f"{v:.3g}"
    return {"norm": f"{v:.2f}", "ratio": f"{v:.2f}×"}[kind]


def _cell(stat: dict[str, Any], kind: str) -> str:
    lo, hi = stat["ci"]
    if lo is None:  # nothing grokked at the lower rank: no information beyond the budget
        return "—"
    med = "—" if stat["median"] is None else _num(stat["median"], kind)
    return f"{med} [{_num(lo, kind)}, {_num(hi, kind)}]"


def seeds_text(seeds: list[int]) -> str:
    """``[0, 1, 2, 3, 7]`` -> ``"0-3,7"``."""
    parts, i = [], 0
    while i < len(seeds):
        j = i
        while j + 1 < len(seeds) and seeds[j + 1] == seeds[j] + 1:
            j += 1
        parts.append(f"{seeds[i]}-{seeds[j]}" if j > i else f"{seeds[i]}")
        i = j + 1
    return ",".join(parts)


def render_md(d: dict[str, Any]) -> str:
    """``compare.md``: the markdown table of ``compare.json``'s object ``d`` and its caption."""
    head = ["switch", "overrides", "grokked", "grok step, median [CI]", "wall s at grok, median [CI]",
            "speed-up (steps)", "speed-up (wall)", "final ‖W‖, median"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, sw in d["switches"].items():
        s = sw["summary"]
        norm = s["final_weight_norm_median"]
        lines.append("| " + " | ".join([
            name, f"`{fmt_overrides(sw['overrides'])}`" if sw["overrides"] else "—",
            f"{s['n_grokked']}/{s['n']}", _cell(s["grok_step"], "step"), _cell(s["grok_wall_s"], "wall"),
            _num(s["speedup_steps"], "ratio"), _num(s["speedup_wall"], "ratio"),
            _num(norm, "norm") if norm is not None else "—"]) + " |")
    ci = d["ci"]
    small = f" (n = {ci['n']} is too small for {d['level']:.0%})" if ci["coverage"] < d["level"] else ""
    base = (f"Speed-up: {d['baseline']}'s median over the switch's." if d["baseline"]
            else "Speed-up: none without the baseline switch.")
    common = f" Common overrides: `{fmt_overrides(d['overrides'])}`." if d["overrides"] else ""
    caption = (
        f"Preset `{d['preset']}`, budget {d['budget']} steps, seeds {seeds_text(d['seeds'])} "
        f"(n = {len(d['seeds'])}).{common} A run stops at its first evaluation with test accuracy ≥ 99% "
        f"(the grok step). Every seed trained alone (group size 1), {d['workers']} worker(s) × "
        f"{d['threads']} CPU thread(s); wall s is the run's `elapsed_s` at its grok step. A seed that "
        f"did not grok within the budget counts as +∞ (median —: fewer than half grokked). Brackets: "
        f"the distribution-free order-statistic interval [x({ci['ranks'][0]}), x({ci['ranks'][1]})] "
        f"for the median, coverage {ci['coverage']:.2%}{small}. {base} ‖W‖: sqrt of `sum_sq_weights` "
        f"at the last logged step. Command: `{d['command']}`")
    return "\n".join(lines) + "\n\n" + caption + "\n"


CSV_COLUMNS = ("switch", "overrides", "n", "n_grokked", "grok_step_median", "grok_step_ci_lo",
               "grok_step_ci_hi", "grok_wall_s_median", "grok_wall_s_ci_lo", "grok_wall_s_ci_hi",
               "ci_coverage", "speedup_steps", "speedup_wall", "final_weight_norm_median")


def render_csv(d: dict[str, Any]) -> str:
    """``compare.csv``: one row per switch (``CSV_COLUMNS``); an empty cell is "not reported"
    (median: fewer than half grokked), ``inf`` a censored interval bound; floats as ``repr``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    cell = lambda v: "" if v is None else repr(v) if isinstance(v, float) else str(v)  # noqa: E731
    bound = lambda v: "inf" if v is None else cell(v)  # noqa: E731
    for name, sw in d["switches"].items():
        s = sw["summary"]
        st, wa = s["grok_step"], s["grok_wall_s"]
        w.writerow([name, fmt_overrides(sw["overrides"]), s["n"], s["n_grokked"], cell(st["median"]),
                    bound(st["ci"][0]), bound(st["ci"][1]), cell(wa["median"]), bound(wa["ci"][0]),
                    bound(wa["ci"][1]), cell(st["coverage"]), cell(s["speedup_steps"]),
                    cell(s["speedup_wall"]), cell(s["final_weight_norm_median"])])
    return buf.getvalue()
