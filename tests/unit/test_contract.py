"""Cheap contract tests: the README's hook names and presets are what the code has."""

import re
from pathlib import Path

from groklab import PRESETS, build_model, get_preset

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_readme_hook_names_match_model():
    block = README.split("<!-- hook-names -->")[1].split("<!-- /hook-names -->")[0]
    documented = set(re.findall(r"`((?:blocks\.0\.)?(?:[a-z0-9_]+\.)?hook_[a-z_]+)`", block))
    documented = {h for h in documented if ".ln" not in h}
    assert documented == set(build_model(get_preset("nanda2023")).hook_dict)


def test_readme_lists_every_preset():
    for name in PRESETS:
        assert f"`{name}`" in README


def test_readme_layout_names_run_files():
    for f in ("RUN/config.json", "RUN/metrics.jsonl", "step_{step:07d}.safetensors"):
        assert f in README
