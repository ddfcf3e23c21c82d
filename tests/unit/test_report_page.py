"""The report page: its figures, offline-ness, numbers and errors (no browser needed)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from groklab.cli import main
from groklab.report import write_report
from groklab.report.data import fourier_labels
from groklab.report.page import figure_json
from groklab.report.trajectory import frame_indices
from groklab.runs import RunError

FIGURES = ["fig-loss", "fig-progress", "fig-traj-loss", "fig-traj-embed", "fig-traj-circles",
           "fig-traj-neurons", "fig-fourier", "fig-circles", "fig-clusters", "fig-neurons", "fig-wl",
           "fig-attention", "fig-logits"]


@pytest.fixture(scope="module")
def page(report_run, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("page") / "r.html"
    assert write_report(report_run, out) == out
    return out.read_text()


def test_every_figure_has_a_div_title_and_caption(page):
    for fid in FIGURES:
        assert page.count(f'id="{fid}"') == 1, fid
        block = re.search(rf'<figure id="sec-{fid[4:]}"><h3>([^<]+)</h3>.*?<figcaption>([^<]+)</figcaption>',
                          page, re.S)
        assert block and block.group(1).strip() and len(block.group(2)) > 20, fid
    assert 'id="summary"' in page and 'id="traj-slider"' in page


def test_plotly_is_inlined_once_and_nothing_is_fetched(page):
    from plotly.offline import get_plotlyjs

    assert page.count(get_plotlyjs()[:200]) == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert not re.search(r"<link[^>]+href=[\"']https?:", page)


def test_story_and_summary_carry_the_numbers(page, report_run):
    summary = json.loads((report_run / "analysis.json").read_text())
    keys = ", ".join(map(str, summary["key_frequencies"]))
    assert f"<th>key frequencies</th><td>{keys}</td>" in page
    assert "Memorisation" in page and "Circuit formation" in page and "Cleanup" in page


def test_trajectory_payload_decodes_to_the_analysis(page, report_run):
    import base64
    import gzip

    data = json.loads(re.search(r'id="traj-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))
    e = data["embed"]
    embed = np.frombuffer(gzip.decompress(base64.b64decode(e["gz"])), np.float32).reshape(e["shape"])
    with np.load(report_run / "analysis.npz") as z:
        steps = list(z["steps"])
        want = z["embed_fourier_norms"][[steps.index(s) for s in data["steps"]]]
    np.testing.assert_allclose(embed, want, rtol=1e-6, atol=0)
    assert data["heat"]["shape"][0] == len(data["steps"])


def test_figure_json_keeps_slashes_but_never_closes_the_script():
    import plotly.graph_objects as go

    j = figure_json(go.Figure(go.Heatmap(z=np.full((2, 3), 255, np.uint8)), layout_title_text="</script>"))
    assert "////" in j and "</" not in j
    assert json.loads(j)["layout"]["title"]["text"] == "</script>"


def test_frame_indices_subsample_and_keep_ends():
    steps = list(range(0, 1000, 10))
    idx = frame_indices(steps, steps, max_frames=40)
    assert len(idx) == 40 and idx[0] == 0 and idx[-1] == 99 and idx == sorted(set(idx))
    assert frame_indices(steps, steps[:5]) == [0, 1, 2, 3, 4]  # only checkpoints on disk


def test_fourier_labels():
    assert fourier_labels(5) == ["Const", "cos 1", "sin 1", "cos 2", "sin 2"]


def test_missing_run_is_a_run_error_and_exit_2(tmp_path, capsys):
    with pytest.raises(RunError, match="no such run directory"):
        write_report(tmp_path / "nope")
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "groklab: error:" in capsys.readouterr().err


def test_corrupt_analysis_is_exit_2(report_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    (run / "analysis.npz").write_bytes(b"not a zip")
    assert main(["report", str(run)]) == 2
    assert "analysis" in capsys.readouterr().err


def test_bad_format_is_a_config_error(report_run, tmp_path):
    from groklab.config import ConfigError

    with pytest.raises(ConfigError, match="png or svg"):
        write_report(report_run, tmp_path / "x.html", "gif")


def test_fast_neuron_activations_match_the_model(report_run):
    """The factorised heatmap computation against the model's own forward (run_with_cache)."""
    import torch

    from groklab import load_run, make_data
    from groklab.report.activations import neuron_activations, neuron_activations_fast

    run = load_run(report_run)
    neurons = [0, 3, 7]
    for step in (run.steps[0], run.steps[-1]):
        want = neuron_activations(run.model_at(step), make_data(run.config.task).tokens,
                                  run.config.task.p, neurons)
        got = neuron_activations_fast(run.state_at(step), run.config, neurons)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_missing_analysis_is_computed_first(report_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(report_run, run)
    for name in ("analysis.json", "analysis.npz"):
        (run / name).unlink()
    out = write_report(run)
    assert out == run / "report.html" and out.stat().st_size > 1_000_000
    assert (run / "analysis.json").is_file() and (run / "analysis.npz").is_file()
