"""``groklab report --format png|svg``: every figure also written as an image beside the page."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from groklab.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_report_exports_every_figure(report_run, tmp_path, fmt):
    if not (shutil.which("chromium") or Path("/usr/bin/chromium").exists()):
        pytest.skip("no Chromium: `apt-get install chromium` (kaleido >= 1 needs a Chrome)")
    pytest.importorskip("kaleido", reason="`pip install kaleido` for static export")
    out = tmp_path / "r.html"
    assert main(["report", str(report_run), "-o", str(out), "--format", fmt]) == 0
    images = sorted(tmp_path.glob(f"r-*.{fmt}"))
    names = {p.stem.removeprefix("r-") for p in images}
    assert {"loss", "progress", "fourier", "circles", "clusters", "neurons", "wl", "attention", "logits",
            "traj-loss", "traj-embed", "traj-circles", "traj-neurons"} == names
    head = images[0].read_bytes()[:64]
    assert head.startswith(b"\x89PNG") if fmt == "png" else b"<svg" in head or b"<?xml" in head
