"""Clock vs pizza on trained models (Zhong et al. 2023): the pizza2023 preset (attn_coeff 0) reads
as pizza and clock2023 (attn_coeff 1) as clock, by ``groklab analyze``'s measures.

The thresholds are the pizza repository's medians at d_model 128 (``pair.md`` §5): gradient
symmetricity ~0.99 for the pizza, distance irrelevance >~ 0.8 for the clock. Both models grok by
step ~400 (80% of the pairs); 2,000 steps (~90 s each here) already give the full-run readings
(measured on the full 20,000-step runs: pizza DI 0.30 at 2,000, 0.41 at 20,000; clock DI 0.78 at
2,000, 0.81 at 20,000).
"""

import json

import pytest

from groklab.cli import main

pytestmark = pytest.mark.slow

SHORT = ["--train.steps", "2000", "--train.eval_every", "100", "--train.checkpoint_every", "1000",
         "--no-progress"]


def _analysed(tmp_path, preset):
    out = tmp_path / preset
    assert main(["train", "--preset", preset, "--out", str(out), *SHORT]) == 0
    assert main(["analyze", str(out)]) == 0
    a = json.loads((out / "analysis.json").read_text())
    assert "clock_pizza" in a["analyses"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_acc"] >= 0.99  # both algorithms generalise
    return a["clock_pizza"]


def test_pizza_preset_reads_as_pizza(tmp_path):
    cp = _analysed(tmp_path, "pizza2023")
    assert cp["reading"] == "pizza"
    assert cp["gradient_symmetricity"] >= 0.98 and cp["distance_irrelevance"] < 0.5


def test_clock_preset_reads_as_clock(tmp_path):
    cp = _analysed(tmp_path, "clock2023")
    assert cp["reading"] == "clock"
    assert cp["distance_irrelevance"] >= 0.75 and cp["gradient_symmetricity"] < 0.9
