"""The report of non-modular runs (issue 9 item 7): the page's sections per task, its slider data,
the story from the run's numbers, and the public figure functions of ``groklab.report.figures``."""

from __future__ import annotations

import base64
import gzip
import json
import re
import shutil
import warnings

import numpy as np
import pytest

from groklab.report import write_report

TINY = {"train.steps": "60", "train.eval_every": "10", "train.checkpoint_every": "20", "task.n_test": "32"}
RUNS = {
    "induction": ("induction-infinite", {"train.batch_size": "16"}),
    "digits": ("digits5-infinite", {"train.batch_size": "32", "model.d_model": "32", "model.d_mlp": "64",
                                    "train.lr": "3e-3"}),
    "max": ("max-element-infinite", {"train.batch_size": "32"}),
}
COMMON = ["fig-loss-parts", "fig-phase-changes", "fig-traj-loss", "fig-attn-L0"]
EXPECTED = {"induction": COMMON + ["fig-attn-L1", "fig-induction"], "digits": COMMON,
            "max": COMMON + ["fig-skip-trigrams"]}
MODULAR_ONLY = ["fig-loss", "fig-progress", "fig-fourier", "fig-circles", "fig-clusters", "fig-neurons",
                "fig-wl", "fig-logits", "fig-traj-embed", "fig-traj-circles", "fig-traj-neurons"]


@pytest.fixture(scope="module")
def zoo_runs(tmp_path_factory):
    """Tiny runs of the three zoo tasks (60 steps, 4 checkpoints each), not yet analysed."""
    from groklab import get_preset, train
    from groklab.config import apply_overrides

    root = tmp_path_factory.mktemp("zoo")
    out = {}
    for key, (preset, over) in RUNS.items():
        cfg = apply_overrides(get_preset(preset), {**TINY, **over})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(cfg, str(root / key))
        out[key] = root / key
    return out


@pytest.fixture(scope="module")
def pages(zoo_runs):
    """``write_report`` of each run (which analyses it first)."""
    return {k: write_report(run).read_text() for k, run in zoo_runs.items()}


def _payload(page: str) -> dict:
    return json.loads(re.search(r'id="traj-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))


@pytest.mark.parametrize("key", list(RUNS))
def test_page_has_the_sections_of_its_task_and_no_fourier(pages, key):
    page = pages[key]
    for fid in EXPECTED[key]:
        assert page.count(f'id="{fid}"') == 1, fid
        block = re.search(rf'<figure id="sec-{fid[4:]}"><h3>([^<]+)</h3>.*?<figcaption>([^<]+)</figcaption>',
                          page, re.S)
        assert block and block.group(1).strip() and len(block.group(2)) > 20, fid
    others = {f for k in EXPECTED for f in EXPECTED[k]} - set(EXPECTED[key])
    for fid in [*others, *MODULAR_ONLY]:
        assert f'id="{fid}"' not in page, fid
    headings = re.findall(r"<h[23]>([^<]+)</h[23]>", page)
    assert not [h for h in headings if "Fourier" in h or "algorithm" in h], headings
    assert 'id="summary"' in page and 'id="traj-slider"' in page and "The story of this run" in page


def test_page_is_self_contained(pages):
    from plotly.offline import get_plotlyjs

    for page in pages.values():
        assert page.count(get_plotlyjs()[:200]) == 1
        assert not re.search(r"<script[^>]+src=", page)
        assert not re.search(r"<link[^>]+href=[\"']https?:", page)


@pytest.mark.parametrize("key", list(RUNS))
def test_slider_has_one_frame_per_checkpoint_and_decodes_to_the_attention(pages, zoo_runs, key):
    from groklab import load_run
    from groklab.report.zoo_data import attention_patterns, load_zoo_data

    run = load_run(zoo_runs[key])
    T = _payload(pages[key])
    assert T["steps"] == run.steps  # 4 checkpoints: all on the slider
    cfg = run.config.model
    a = T["attn"]
    levels = np.frombuffer(gzip.decompress(base64.b64decode(a["gz"])), np.uint8).reshape(a["shape"])
    assert levels.shape == (len(run.steps), cfg.n_layers, cfg.n_heads, cfg.n_ctx, cfg.n_ctx)
    assert T["figs"] == [f"fig-attn-L{layer}" for layer in range(cfg.n_layers)]
    d = load_zoo_data(run, analyze=False)
    for f in (0, len(run.steps) - 1):
        want = attention_patterns(d, run.steps[f])
        np.testing.assert_allclose(levels[f] / (T["levels"] - 1), want, atol=0.5 / (T["levels"] - 1) + 1e-6)
    assert np.allclose(attention_patterns(d, run.steps[-1]).sum(-1), 1, atol=1e-5)  # rows are distributions


def test_attention_axes_are_the_example_tokens(zoo_runs):
    from groklab.report import figures
    from groklab.report.zoo_data import load_zoo_data

    d = load_zoo_data(zoo_runs["digits"], analyze=False)
    fig = figures.attention_figure(zoo_runs["digits"], layer=0)
    names = d.token_names()
    assert len(names) == 18 and names[5] == "+" and names[11] == "="
    assert list(fig.layout.xaxis.ticktext) == names and list(fig.layout.yaxis.ticktext) == names
    assert [t.type for t in fig.data] == ["heatmap"] * 4
    assert fig.layout.title.text.endswith(f"(step {d.run.steps[-1]})")
    # a long sequence: one panel per layer, a button per head
    fig = figures.attention_figure(zoo_runs["induction"], step=20, layer=1)
    assert len(fig.data) == 4 and sum(bool(t.visible) for t in fig.data) == 1
    assert [b.label for b in fig.layout.updatemenus[0].buttons] == [f"head L1H{h}" for h in range(4)]
    with pytest.raises(ValueError, match="layer 2"):
        figures.attention_figure(zoo_runs["induction"], layer=2)


def test_public_figures_return_plotly_figures_with_their_traces(pages, zoo_runs):
    import plotly.graph_objects as go

    from groklab.report import figures

    fig = figures.loss_parts_figure(zoo_runs["digits"])
    assert isinstance(fig, go.Figure) and fig.layout.meta["caption"]
    names = {t.name for t in fig.data}
    assert {"total", "digit0 (carry)", "digit1", "digit5 (units)"} <= names
    assert fig.layout.yaxis2.type == "log" and fig.layout.yaxis.type != "log"  # linear and log y
    assert isinstance(figures.phase_changes_figure(zoo_runs["max"]), go.Figure)

    fig = figures.induction_scores_figure(zoo_runs["induction"])
    assert sorted(t.name.rstrip(" ★") for t in fig.data) == [f"L{i}H{h}" for i in (0, 1) for h in range(4)]
    assert all(len(t.x) == 4 for t in fig.data)  # one point per analysed checkpoint

    fig = figures.skip_trigram_figure(zoo_runs["max"])
    assert [t.name for t in fig.data][:10] == [f"label{i}" for i in range(10)]
    with pytest.raises(ValueError, match="max_element"):
        figures.skip_trigram_figure(zoo_runs["induction"])
    with pytest.raises(ValueError, match="modular"):
        figures.fourier_norms_figure(zoo_runs["digits"])


def test_modular_figures_are_public_too(report_run):
    import plotly.graph_objects as go

    from groklab.report import figures

    fig = figures.fourier_norms_figure(report_run)
    assert isinstance(fig, go.Figure) and [t.type for t in fig.data] == ["bar", "bar"]
    assert isinstance(figures.attention_to_a_figure(report_run), go.Figure)
    assert [t.type for t in figures.attention_figure(report_run).data] == ["heatmap"] * 2  # 'a b =' per head


def test_without_an_analysis_the_scores_come_from_the_checkpoints(zoo_runs, tmp_path, monkeypatch):
    import groklab.analysis.pipeline as pipeline
    from groklab.report import figures

    run = tmp_path / "max"
    shutil.copytree(zoo_runs["max"], run, ignore=shutil.ignore_patterns("analysis.*", "report*"))
    fig = figures.skip_trigram_figure(run)
    assert "Computed by the report" in fig.layout.meta["caption"] and len(fig.data) >= 10

    def broken(*a, **k):
        raise RuntimeError("no analysis today")

    monkeypatch.setattr(pipeline, "analyze_run", broken)
    page = write_report(run).read_text()
    assert "no analysis today" in page and 'id="fig-skip-trigrams"' in page
    assert not (run / "analysis.json").exists()


def test_story_is_written_from_the_numbers(zoo_runs):
    from groklab.report.zoo_data import load_zoo_data
    from groklab.report.zoo_story import story_paragraphs, summary_rows

    d = load_zoo_data(zoo_runs["digits"], analyze=False)
    steps = {"digit0": 100, "digit1": 480, "digit2": 1580, "digit3": 1540, "digit4": 1030, "digit5": 1630}
    d.summary = {"phase_changes": {"train": {"start": 900, "steepest": 1500, "end": 2000},
                                   **{f"train.{p}": {"start": s - 50, "steepest": s, "end": s + 50}
                                      for p, s in steps.items()}}}
    d.run.metrics = [{**r, "train_loss": 2.0 if r["step"] < 40 else 0.5} for r in d.run.metrics]
    text = " ".join(story_paragraphs(d))
    assert "train loss fell below 1 at step 40" in text
    assert ("The six digit phase changes (steepest drop of each part's train loss) came in this order: "
            "digit0 (carry) at step 100, digit1 at 480, digit4 at 1,030, digit3 at 1,540, digit2 at 1,580, "
            "digit5 (units) at 1,630") in text
    assert "the carry digit first" in text and "steepest at 1,500" in text
    rows = dict(summary_rows(d))
    assert rows["phase changes (steepest step)"].startswith("digit0 100; digit1 480")

    d = load_zoo_data(zoo_runs["induction"], analyze=False)
    d.summary = {"phase_changes": {"train": {"start": 800, "steepest": 900, "end": 1100}},
                 "induction": {"prev_token_heads": ["L0H2"], "induction_heads": ["L1H1"], "formed_step": 950}}
    text = " ".join(story_paragraphs(d))
    assert "previous-token head(s) L0H2 in layer 0 and the induction head(s) L1H1" in text
    assert "formed at step 950, inside the loss drop (steps 800–1,100)" in text


def test_cli_reports_a_zoo_run(zoo_runs, tmp_path, capsys):
    from groklab.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(zoo_runs["max"]), "-o", str(out)]) == 0
    assert 'id="fig-skip-trigrams"' in out.read_text()
