"""``groklab bench``'s heap choice: it is made before anything allocates, and a bad value exits 2."""

from __future__ import annotations

import contextlib

import pytest

from groklab import bench


@pytest.fixture
def spy(monkeypatch):
    """Records whether ``retained_heap`` was entered and the argv ``_run_bench`` received."""
    seen = {"retained": 0, "argv": None}

    @contextlib.contextmanager
    def fake_heap():
        seen["retained"] += 1
        yield

    def fake_run(argv, tmp):
        seen["argv"] = argv
        return 0

    monkeypatch.setattr(bench, "retained_heap", fake_heap)
    monkeypatch.setattr(bench, "_run_bench", fake_run)
    return seen


@pytest.mark.parametrize("argv,retained", [([], 1), (["--zoo"], 1), (["--heap", "retained"], 1),
                                           (["--zoo", "--heap", "default"], 0), (["--heap=default"], 0)])
def test_heap_choice(spy, argv, retained):
    assert bench.run_bench(argv) == 0
    assert spy["retained"] == retained
    assert spy["argv"] == argv  # the full argv still reaches the real parser


def test_bad_heap_exits_2(spy, capsys):
    with pytest.raises(SystemExit) as e:
        bench.run_bench(["--heap", "tcmalloc"])
    assert e.value.code == 2
    assert "--heap" in capsys.readouterr().err
    assert spy["argv"] is None  # nothing ran


def test_zoo_presets_rejects_unknown(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        bench._run_bench(["--zoo", "--zoo-presets", "nanda2023"], tmp_path)
    assert e.value.code == 2
    assert "induction" in capsys.readouterr().err  # the valid choices are listed
