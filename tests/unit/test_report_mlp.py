"""The report of PAIR's MLP family (``report/mlp.py``): the page of a tiny modular run, the star
construction, a tiny five-neuron (circle) run and a tiny sparse-parity run, each analysed by
``groklab analyze`` (which ``write_report`` runs first). The figures' numbers are checked against
the analysis arrays, the checkpoints and ``analysis.mlp.group_logits``; one browser check (skipped
without Chromium / Playwright) runs the page's own scripts."""

from __future__ import annotations

import base64
import gzip
import json
import math
import os
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.testing import assert_close as _assert_close

from groklab.analysis.mlp import group_logits as state_group_logits
from groklab.cli import main
from groklab.report import write_report
from groklab.runs import RunError, load_run

TINY = ["--task.p", "11", "--train.steps", "300", "--train.checkpoint_every", "100", "--no-progress"]
RUNS = {
    "modular": ["train", "--preset", "pair2023", "--model.d_embed", "16", "--model.d_hidden", "12", *TINY],
    "five": ["train", "--preset", "pair-five-neurons", "--train.eval_every", "50", *TINY],
    "parity": ["train", "--preset", "pair-parity", "--task.n_bits", "12", "--task.n_train", "200",
               "--task.n_test", "200", "--model.d_hidden", "16", "--train.steps", "300", "--no-progress"],
    "star": ["construct", "star", "--p", "67", "--neurons", "5", "--freqs", "4,5,7"],
}
MODULAR_FIGS = ["fig-traj-loss", "fig-weights", "fig-waves", "fig-dft", "fig-stars", "fig-group-logits",
                "fig-progress"]
PARITY_FIGS = ["fig-traj-loss", "fig-parity-weights", "fig-parity-trajectory", "fig-live-distractors"]
TRANSFORMER_ONLY = ["fig-loss", "fig-fourier", "fig-circles", "fig-clusters", "fig-neurons", "fig-wl",
                    "fig-traj-embed", "fig-loss-parts"]
DTYPES = {"f4": np.float32, "f8": np.float64, "i1": np.int8, "u1": np.uint8, "i2": np.int16, "i4": np.int32,
          "u2": np.uint16, "u4": np.uint32}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Tiny MLP runs (300 steps, 4 checkpoints; the construction: one), not yet analysed."""
    root = tmp_path_factory.mktemp("mlp-report")
    out = {}
    for name, args in RUNS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main([*args, "--out", str(root / name)]) == 0
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def pages(runs) -> dict[str, str]:
    """``write_report`` of each run; it runs ``groklab analyze`` first (no analysis files yet)."""
    assert not any((r / "analysis.json").exists() for r in runs.values())
    return {k: write_report(r).read_text() for k, r in runs.items()}


def assert_close(actual, expected, **kw) -> None:
    """``torch.testing.assert_close`` on numpy arrays, lists or tensors (same dtype, float64 for
    floats; the default tolerances are float32's unless given)."""
    def t(x):
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x))
        return x.double() if x.is_floating_point() else x
    if "rtol" not in kw:
        kw.update(rtol=1.3e-6, atol=1e-5)
    _assert_close(t(actual), t(expected), **kw)


def _npz(run: Path) -> dict[str, np.ndarray]:
    with np.load(run / "analysis.npz") as z:
        return {k: z[k] for k in z.files}


def _json(run: Path) -> dict:
    return json.loads((run / "analysis.json").read_text())


def _decode(x):
    """plotly's JSON with its base64 typed arrays (``{dtype, bdata, shape}``) as numpy arrays."""
    if isinstance(x, dict) and "bdata" in x and "dtype" in x:
        a = np.frombuffer(base64.b64decode(x["bdata"]), dtype=DTYPES[x["dtype"]])
        shape = [int(s) for s in str(x.get("shape", a.size)).split(",")]
        return a.reshape(shape)
    if isinstance(x, dict):
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


def _figure(page: str, fid: str) -> dict:
    """The figure ``fid`` as the page draws it (its data and layout, arrays decoded)."""
    m = re.search(rf'<div id="{fid}" [^>]*></div><script>\(function\(\){{const f=(.*?);Plotly\.newPlot\(',
                  page, re.S)
    assert m, f"{fid} is not on the page"
    return _decode(json.loads(m.group(1)))


def _payload(page: str) -> dict:
    return json.loads(re.search(r'id="traj-data">(.*?)</script>', page, re.S).group(1).replace("<\\/", "</"))


def _unpack(a: dict) -> np.ndarray:
    raw = gzip.decompress(base64.b64decode(a["gz"]))
    return np.frombuffer(raw, dtype={"f4": np.float32, "u1": np.uint8, "i1": np.int8}[a["dtype"]]
                         ).reshape(a["shape"])


def _levels(T: dict, key: str) -> np.ndarray:
    """A uint8 payload array back in weight units."""
    lo, hi = T[f"{key}_lo"], T[f"{key}_hi"]
    return lo + _unpack(T[key]).astype(np.float64) * (hi - lo) / 255


@pytest.mark.parametrize("key", list(RUNS))
def test_page_has_the_sections_of_its_run_and_nothing_of_the_transformer(pages, key):
    page = pages[key]
    want = PARITY_FIGS if key == "parity" else MODULAR_FIGS + (["fig-five-proj"] if key == "five" else [])
    for fid in want:
        assert f'id="{fid}"' in page
    for fid in TRANSFORMER_ONLY + (["fig-five-proj"] if key != "five" else []):
        assert f'id="{fid}"' not in page
    assert 'id="traj-slider"' in page and ('id="logit-a"' in page) == (key != "parity")


def test_weights_heatmaps_are_the_analysis_sorted(pages, runs):
    z = _npz(runs["modular"])
    fig = _figure(pages["modular"], "fig-weights")
    order = z["sort_order"]
    assert_close(fig["data"][0]["z"], z["W_input"][-1][:, order].T)
    assert_close(fig["data"][1]["z"], z["W_output"][-1][order])
    k = z["neuron_k"]
    assert fig["data"][0]["y"] == [f"n{j} · k{k[j]}" for j in order]
    assert (z["W_input"][-1][:, order].T != z["W_input"][-1].T).any()  # the sort does something here


def test_slider_payload_decodes_to_every_checkpoints_weights(pages, runs):
    z, T = _npz(runs["modular"]), _payload(pages["modular"])
    assert T["steps"] == [int(s) for s in z["steps"]] == [0, 100, 200, 300]
    for key, arr in (("win", z["W_input"]), ("wout", z["W_output"])):
        step = (T[f"{key}_hi"] - T[f"{key}_lo"]) / 255
        assert_close(_levels(T, key), arr.astype(np.float64), atol=step / 2 + 1e-6, rtol=0)
    assert T["order"] == [int(j) for j in z["sort_order"]]


def test_waves_are_the_columns_of_w_input_by_group(pages, runs):
    z, s = _npz(runs["modular"]), _json(runs["modular"])
    fig, T = _figure(pages["modular"], "fig-waves"), _payload(pages["modular"])
    groups = [s["stars"][str(k)]["neurons"] for k in s["key_frequencies"]]
    in_group = {n for g in groups for n in g}
    groups += [[int(n) for n in z["sort_order"] if int(n) not in in_group]] if len(in_group) < 12 else []
    expect = [(j, w) for g in groups for j in g for w in (0, 1)]
    assert [tuple(t) for t in T["waves"]] == expect
    for trace, (j, w) in zip(fig["data"], expect, strict=True):
        assert_close(trace["y"], z["W_output"][-1][j] if w else z["W_input"][-1][:, j])


def test_dft_heatmaps_are_labelled_by_fourier_component(pages, runs):
    z = _npz(runs["star"])
    fig = _figure(pages["star"], "fig-dft")
    order = z["sort_order"]
    assert fig["data"][0]["x"] == [str(s) for s in z["fourier_labels"]][:67]
    assert fig["data"][0]["x"][:3] == ["Const", "cos 1", "sin 1"]
    assert_close(fig["data"][0]["z"], z["dft_W_input"][:, order].T.astype(np.float32))
    assert_close(fig["data"][1]["z"], z["dft_W_output"][order].astype(np.float32))


def test_star_points_are_the_dft_coefficients_and_make_a_pentagram(pages, runs):
    z, s = _npz(runs["star"]), _json(runs["star"])
    fig = _figure(pages["star"], "fig-stars")
    assert s["key_frequencies"] == [4, 5, 7]
    dots = [t for t in fig["data"] if t.get("mode") == "markers+text"]
    assert len(dots) == 6
    cols = 3  # W_input panels are row 1, W_output row 2, one column per key frequency
    for i, k in enumerate(s["key_frequencies"]):
        ns = s["stars"][str(k)]["neurons"]
        d_in, d_out = dots[2 * i], dots[2 * i + 1]
        assert d_in["text"] == [str(n) for n in ns] == d_out["text"]
        assert_close(np.stack([d_in["x"], d_in["y"]], 1),
                     np.stack([z["dft_W_input"][2 * k - 1, ns], z["dft_W_input"][2 * k, ns]], 1)
                     .astype(np.float32))
        assert_close(np.stack([d_out["x"], d_out["y"]], 1),
                     np.stack([z["dft_W_output"][ns, 2 * k - 1], z["dft_W_output"][ns, 2 * k]], 1)
                     .astype(np.float32))
        # the construction (PAIR App. A): five directions 72° apart, W_output at twice the angle
        a_in = np.unwrap(np.arctan2(d_in["y"], d_in["x"]).astype(np.float64))
        a_out = np.arctan2(d_out["y"], d_out["x"]).astype(np.float64)
        assert_close(np.diff(a_in), np.full(4, 2 * math.pi / 5), atol=1e-5, rtol=0)
        assert_close(np.cos(a_out - 2 * a_in), np.ones(5), atol=1e-5, rtol=0)
        assert d_in["xaxis"] == f"x{i + 1 if i else ''}" and d_out["xaxis"] == f"x{cols + i + 1}"
    lines = [fig["data"][3 * j + 1] for j in range(6)]  # each panel: ring, line, dots
    for line, dot in zip(lines, dots, strict=True):  # a closed loop through the dots in their order
        assert_close(line["x"], np.append(dot["x"], dot["x"][0]))


def _oracle(run: Path, neurons, a: int, b: int) -> torch.Tensor:
    r = load_run(run)
    return state_group_logits(r.state_at(r.steps[-1]), r.config.model.act_fn, neurons, a, b)


@pytest.mark.parametrize("key", ["star", "modular"])
def test_group_logits_bars_are_the_masked_network(pages, runs, key):
    fig, T = _figure(pages[key], "fig-group-logits"), _payload(pages[key])
    L = T["logits"]
    a, b, p = L["a"], L["b"], L["p"]
    bars = [t for t in fig["data"] if t["type"] == "bar"]
    assert [t["name"] for t in bars] == [lab for lab, _ in L["panels"]]
    assert L["panels"][-1] == ["All logits", None]
    for t, (_, ns) in zip(bars, L["panels"], strict=True):
        want = _oracle(runs[key], ns, a, b)
        assert_close(t["y"], want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))
        assert t["marker"]["color"][(a + b) % p] == "#FD4376"
        assert t["marker"]["color"].count("#FD4376") == 1
    # the groups partition the neurons, so their logits add up to all of them
    assert_close(np.sum([t["y"] for t in bars[:-1]], 0), bars[-1]["y"], rtol=1e-5, atol=1e-4)
    if key == "star":
        assert int(np.argmax(bars[-1]["y"])) == (a + b) % p  # the construction is right


def test_logits_payload_gives_the_script_the_numbers_of_the_state(pages, runs):
    """What the page's script computes, done in Python on the embedded numbers, for other pairs."""
    from groklab.report.mlp_data import group_logits

    L = _payload(pages["star"])["logits"]
    p, H = L["p"], L["H"]
    Wi, Wo = np.array(L["W_input"]).reshape(p, H), np.array(L["W_output"]).reshape(H, p)
    for a, b in ((0, 0), (7, 60), (66, 66)):
        for _, ns in L["panels"]:
            assert_close(group_logits(Wi, Wo, L["act"], ns, a, b), _oracle(runs["star"], ns, a, b),
                         rtol=1e-6, atol=1e-6)


def test_five_neuron_projections_are_the_state(pages, runs):
    r = load_run(runs["five"])
    fig, T = _figure(pages["five"], "fig-five-proj"), _payload(pages["five"])
    st = r.state_at(r.steps[-1])
    W_in, W_out = st["mlp.W_in"].double().numpy(), st["mlp.W_out"].double().numpy()  # (2, 5), (5, 2)
    order = np.argsort(np.arctan2(W_in[1], W_in[0]))
    dots_in, dots_out = fig["data"][2], fig["data"][5]
    assert dots_in["text"] == [str(j) for j in order] == dots_out["text"]
    assert_close(np.stack([dots_in["x"], dots_in["y"]]), W_in[:, order].astype(np.float32))
    assert_close(np.stack([dots_out["x"], dots_out["y"]], 1), W_out[order].astype(np.float32))
    pin, pout = _unpack(T["pin"]), _unpack(T["pout"])
    assert pin.shape == (4, 2, 5) and pout.shape == (4, 5, 2)
    for f, step in enumerate(T["steps"]):
        s = r.state_at(step)
        assert_close(pin[f], s["mlp.W_in"].numpy())
        assert_close(pout[f], s["mlp.W_out"].numpy())


def test_parity_figures_are_the_analysis(pages, runs):
    z, s = _npz(runs["parity"]), _json(runs["parity"])
    page = pages["parity"]
    heat = _figure(page, "fig-parity-weights")
    assert heat["data"][0]["x"] == [str(i) for i in range(12)] + ["Bias"]
    assert_close(heat["data"][0]["z"], z["W_in"][-1].T)
    assert_close(heat["data"][1]["z"], z["W_out"][-1][:, None])
    acc = _figure(page, "fig-traj-loss")
    assert acc["layout"]["yaxis"]["range"][0] == 0.45
    assert [t["line"]["color"] for t in acc["data"]] == ["#9730c9", "#4CB769"] * 2
    traj = _figure(page, "fig-parity-trajectory")
    by_name = {t["name"]: t for t in traj["data"]}
    parity, dist, bias = by_name["first 3 digits (parity)"], by_name["distractor digits"], by_name["bias"]
    assert parity["line"]["color"] == "#b4cc16" and bias["line"]["color"] == "#f45ca2"
    assert dist["opacity"] == 0.1 and dist["line"]["color"] == "#888888"
    C = len(z["steps"])  # <= 60 checkpoints: every one of them
    assert_close(parity["y"].reshape(-1, C + 1)[:, :C], z["W_in"][:, :3, :].reshape(C, -1).T)
    assert_close(bias["y"].reshape(-1, C + 1)[:, :C], z["W_in"][:, 12, :].T)
    assert np.isnan(parity["y"].reshape(-1, C + 1)[:, C]).all()
    live = _figure(page, "fig-live-distractors")
    assert live["data"][0]["y"].tolist() == z["live_distractors"].tolist()
    T = _payload(page)
    step = (T["win_hi"] - T["win_lo"]) / 255
    assert_close(_levels(T, "win"), z["W_in"].astype(np.float64), atol=step / 2 + 1e-6, rtol=0)
    assert s["n_bits"] == 12 and "sparse parity" in page


def test_story_and_summary_are_written_from_the_analysis(pages, runs):
    s = _json(runs["star"])
    star = pages["star"]
    assert "set by hand" in star and "k = 4 (5 neurons), k = 5 (5 neurons), k = 7 (5 neurons)" in star
    assert "Every group of 3 or more neurons is a star" in star
    assert f"{s['grid_accuracy']:.1%}" in star
    five = pages["five"]
    assert "5-neuron model" in five and "20 weights are trained" in five
    m = _json(runs["modular"])
    words = {"grok": "grokking", "together": "fell together", "memorise": "memorisation",
             "cant_fit": "could not fit"}
    assert words[m["outcome"]] in pages["modular"]
    p = _json(runs["parity"])
    assert f"{p['live_threshold']:g}" in pages["parity"]


def test_colour_scale_is_pairs_when_it_fits():
    from groklab.report.mlp_figures import colour_scale, nice_ceil

    assert colour_scale(np.full(100, 4.0), 5.0)[0] == 5.0
    clip, note = colour_scale(np.full(100, 0.3), 5.0)
    assert clip == 0.3 and "smaller" in note
    clip, note = colour_scale(np.full(100, 29.5), 5.0)
    assert clip == 30.0 and "larger" in note
    assert [nice_ceil(x) for x in (0.91, 1.0, 1.01, 7, 0.0)] == [1.0, 1.0, 1.5, 8.0, 1.0]


def test_public_figures(runs, pages):
    from groklab.report import figures

    fig = figures.mlp_weights_figure(runs["modular"], step=100)
    z = _npz(runs["modular"])
    assert_close(np.asarray(fig.data[0].z), z["W_input"][1][:, z["sort_order"]].T)
    assert "step 100" in fig.layout.title.text and fig.layout.meta["caption"]
    assert figures.mlp_five_neurons_figure(runs["five"], step=0).layout.meta["id"] == "fig-five-proj"
    assert figures.parity_weights_figure(runs["parity"]).layout.meta["id"] == "fig-parity-weights"
    for fn in (figures.mlp_training_figure, figures.mlp_dft_figure, figures.mlp_stars_figure,
               figures.mlp_group_logits_figure, figures.mlp_progress_figure, figures.mlp_waves_figure):
        assert fn(runs["star"]).data
    with pytest.raises(ValueError, match="step 150 was not analysed"):
        figures.mlp_weights_figure(runs["modular"], step=150)
    with pytest.raises(ValueError, match="sparse_parity"):
        figures.mlp_stars_figure(runs["parity"])
    with pytest.raises(ValueError, match="circle"):
        figures.mlp_five_neurons_figure(runs["modular"])
    with pytest.raises(ValueError, match="mlp"):
        figures.loss_figure(runs["modular"])


def test_analysis_missing_a_key_is_a_run_error(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["modular"], run)
    z = _npz(run)
    del z["W_input"]
    np.savez(run / "analysis.npz", **z)
    with pytest.raises(RunError, match="W_input"):
        write_report(run)


def test_cli_report_of_an_mlp_run(runs, tmp_path, capsys):
    out = tmp_path / "p.html"
    assert main(["report", str(runs["parity"]), "-o", str(out)]) == 0
    assert 'id="fig-parity-trajectory"' in out.read_text()


# --- the page's scripts in a real browser ------------------------------------------------------

def _browser_or_skip():
    exe = os.environ.get("GROKLAB_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(exe).exists():
        pytest.skip(f"no Chromium at {exe}: `apt-get install chromium` to run the browser check")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: `pip install playwright` to run the browser check")
    return exe, sync_playwright


def test_page_scripts_in_chromium(runs, pages):
    """The per-group logits the page computes for a picked (a, b) are the masked network's; the
    slider redraws the heatmaps, the waves and the five-neuron circle with that checkpoint's weights."""
    exe, sync_playwright = _browser_or_skip()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=exe, args=args)
        for key in ("star", "modular", "five", "parity"):
            page, errors = browser.new_page(), []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.on("console", lambda m, errors=errors: errors.append(m.text) if m.type == "error" else None)
            page.goto((runs[key] / "report.html").as_uri())
            page.wait_for_selector("#traj-slider[data-ready='1']", timeout=20_000)
            if key != "parity":
                page.wait_for_selector("#logit-a[data-ready='1']", timeout=5_000)
                L = _payload(pages[key])["logits"]
                a, b = (7, 60) if key == "star" else (3, 9)
                page.fill("#logit-a", str(a))
                page.fill("#logit-b", str(b))
                gd = "document.getElementById('fig-group-logits')"
                ys = page.evaluate(f"{gd}.data.map(t => Array.from(t.y))")
                cols = page.evaluate(f"{gd}.data[0].marker.color")
                for y, (_, ns) in zip(ys, L["panels"], strict=True):
                    assert_close(y, _oracle(runs[key], ns, a, b), rtol=1e-6, atol=1e-6)
                assert cols[(a + b) % L["p"]] == "#FD4376" and cols.count("#FD4376") == 1
                assert f"(a + b) mod {L['p']} = {(a + b) % L['p']}" in page.inner_text("#logit-ab")
            if key in ("modular", "five", "parity"):
                page.fill("#traj-slider", "0")
                page.wait_for_timeout(200)
                T, z = _payload(pages[key]), _npz(runs[key])
                if key == "parity":
                    got = page.evaluate("document.getElementById('fig-parity-weights').data[0].z")
                    assert_close(np.array(got), _levels(T, "win")[0].T, rtol=0, atol=1e-9)
                    continue
                got = page.evaluate("document.getElementById('fig-weights').data.map(t => t.z)")
                order = z["sort_order"]
                assert_close(np.array(got[0]), _levels(T, "win")[0][:, order].T, rtol=0, atol=1e-9)
                assert_close(np.array(got[1]), _levels(T, "wout")[0][order], rtol=0, atol=1e-9)
                wave = page.evaluate("document.getElementById('fig-waves').data[0].y")
                j, w = T["waves"][0]
                assert_close(np.array(wave), _levels(T, "wout")[0][j] if w else _levels(T, "win")[0][:, j],
                             rtol=0, atol=1e-9)
                if key == "five":
                    W_in = load_run(runs["five"]).state_at(0)["mlp.W_in"].numpy()
                    dots = page.evaluate("[document.getElementById('fig-five-proj').data[2].x, "
                                         "document.getElementById('fig-five-proj').data[2].text]")
                    order5 = [int(t) for t in dots[1]]
                    assert order5 == np.argsort(np.arctan2(W_in[1], W_in[0])).tolist()
                    assert_close(np.array(dots[0]), W_in[0, order5].astype(np.float64), rtol=1e-6, atol=1e-7)
            assert errors == []
        browser.close()
