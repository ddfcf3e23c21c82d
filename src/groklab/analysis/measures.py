"""Progress measures of one checkpoint, and the (optionally parallel) pass over all checkpoints.

``CheckpointMeasurer`` holds what is shared by every checkpoint of a run (the task grid, the key
cos/sin directions, the Fourier basis) and turns one checkpoint into one row of
``analysis.json["checkpoints"]`` plus its small arrays. ``measure_all`` streams the checkpoints,
in this process or in a pool of worker processes that each stream a share of them.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..runs import RunError, load_run
from ..tasks import make_data
from . import circuit as C
from .forward import GridEvaluator
from .fourier import component_norms, fourier_basis
from .progress import cross_entropy64, gini, restricted_scores_fast, split_scores, sum_sq_weights

Measured = tuple[dict[str, Any], dict[str, np.ndarray]]


class CheckpointMeasurer:
    """Measures checkpoints of the run in ``run_dir`` against fixed key frequencies.

    Args:
        run_dir: the run directory. key: key frequencies (found once, on the final checkpoint).
        sign: +1 for the a+b directions, -1 for a-b.
    """

    def __init__(self, run_dir: Path, key: list[int], sign: int):
        self.run = load_run(run_dir)
        cfg = self.run.config
        self.p, self.key, self.cfg = cfg.task.p, list(key), cfg
        data = make_data(cfg.task)
        self.F = fourier_basis(self.p)[0]
        self.fitter = C.CosFitter(self.p, self.key, sign)
        U = self.fitter.U  # (p^2, 2K) unit cos/sin(w_k(a + s b)) directions
        self.x_idx = torch.remainder(data.tokens[:, 0] + sign * data.tokens[:, 1], self.p)
        self.V = torch.zeros(self.p, U.shape[1], dtype=U.dtype)
        self.V[self.x_idx] = U  # U = V[x_idx]: the directions depend on x = a + s b only
        self.tr = data.is_train
        self.tr_idx = torch.nonzero(self.tr)[:, 0]
        self.U, self.U_tr = U, U[self.tr_idx]
        self.labels, self.tr_lab = data.labels, data.labels[self.tr_idx]
        self.ev = GridEvaluator(cfg, data.tokens)

    def __call__(self, step: int) -> Measured:
        """One row of ``checkpoints`` and the per-checkpoint arrays for ``step``.

        Raises:
            RunError: the checkpoint is missing, corrupt, or does not match ``config.json``.
        """
        p, key, st = self.p, self.key, self.run.state_at(step)
        try:
            logits = self.ev.logits(st).double()
            W_out = st[f"blocks.{self.cfg.model.n_layers - 1}.mlp.W_out"]
            W_U = st["unembed.W_U"]
        except (KeyError, RuntimeError) as e:
            raise RunError(f"{self.run.path}: checkpoint {step} does not match config.json ({e})") from None
        full = split_scores(logits, self.labels, self.tr)
        coef = self.fitter.project(logits)  # (2K, p)
        res = restricted_scores_fast(coef, logits.mean(0), self.V, self.x_idx, self.labels, self.tr)
        L_tr = logits[self.tr_idx]
        ex_tr = L_tr - self.U_tr @ coef  # excluded logits on the train split
        ex_by = {}
        for i, k in enumerate(key):
            sl = slice(2 * i, 2 * i + 2)
            ex_by[str(k)] = cross_entropy64(L_tr - self.U_tr[:, sl] @ coef[sl], self.tr_lab)
        W_E = st["embed.W_E"][:p].double()
        ef = component_norms(W_E, self.F)
        wlf = component_norms(C.neuron_logit_map(W_out, W_U, p), self.F)
        tot, per = sum_sq_weights(st)
        cc = self.fitter.cos_coeffs(coef)
        row = {
            "step": step, "train_loss": full.train_loss, "test_loss": full.test_loss,
            "train_acc": full.train_acc, "test_acc": full.test_acc,
            "restricted_loss": res.all_loss, "restricted_acc": res.all_acc,
            "restricted_loss_train": res.train_loss, "restricted_loss_test": res.test_loss,
            "restricted_acc_train": res.train_acc, "restricted_acc_test": res.test_acc,
            "excluded_loss": cross_entropy64(ex_tr, self.tr_lab),
            "excluded_acc": float((ex_tr.argmax(-1) == self.tr_lab).double().mean()),
            "excluded_loss_by_freq": ex_by,
            "gini_W_E": gini(ef[1:]), "gini_W_L": gini(wlf[1:]),
            "sum_sq_weights": tot,
            "cos_coeffs": {str(k): float(c) for k, c in zip(key, cc, strict=True)},
            "logit_fit_fve": self.fitter.fit(logits, coef).fve,
        }
        arrays = {
            "ef": ef.numpy(), "wlf": wlf.numpy(),
            "planes": C.embed_key_planes(W_E, self.F, key).numpy(),
            "ssw": np.array(list(per.values())), "ssw_names": np.array(list(per)),
            "cos": cc.numpy(), "exk": np.array([ex_by[str(k)] for k in key]),
        }
        return row, arrays


def _worker_main(argv: list[str]) -> int:
    """``python -m groklab.analysis.measures RUN KEY_JSON SIGN STEPS_JSON OUT``: measure the steps
    and pickle the results to OUT; print one line per checkpoint (progress)."""
    run_dir, key, sign, steps, out = argv[0], json.loads(argv[1]), int(argv[2]), json.loads(argv[3]), argv[4]
    torch.set_num_threads(1)
    m = CheckpointMeasurer(Path(run_dir), key, sign)
    res = []
    for s in steps:
        try:
            res.append(m(s))
        except RunError as e:
            res = RunError(str(e))
            break
        print(s, flush=True)
    with open(out, "wb") as f:
        pickle.dump(res, f)
    return 0


def measure_all(run_dir: Path, steps: list[int], key: list[int], sign: int, workers: int = 1,
                on_done: Callable[[int], None] | None = None) -> Iterator[Measured]:
    """Measure ``steps`` in order, one checkpoint in memory per process at a time.

    Args:
        workers: processes; 1 measures here. More start ``python -m groklab.analysis.measures``
            children (no ``__main__`` re-import, unlike a multiprocessing ``spawn`` pool), each
            streaming a contiguous share of the steps with one thread; results come back in
            step order.
        on_done: called with 1 after each finished checkpoint (progress bar).

    Raises:
        RunError: from any checkpoint, or a worker that failed.
    """
    done = on_done or (lambda n: None)
    if workers <= 1 or len(steps) < workers:
        m = CheckpointMeasurer(run_dir, key, sign)
        for s in steps:
            yield m(s)
            done(1)
        return
    share = -(-len(steps) // workers)
    parts = [steps[i:i + share] for i in range(0, len(steps), share)]
    with tempfile.TemporaryDirectory(prefix="groklab-analyze-") as tmp:
        procs, outs = [], []
        for i, part in enumerate(parts):
            out = Path(tmp) / f"part{i}.pkl"
            cmd = [sys.executable, "-m", "groklab.analysis.measures", str(run_dir), json.dumps(key),
                   str(sign), json.dumps(part), str(out)]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
            outs.append(out)
        errs: list[str] = [""] * len(procs)

        def pump(i: int, proc: subprocess.Popen) -> None:
            with proc.stdout, proc.stderr:
                for _ in proc.stdout:
                    done(1)
                errs[i] = proc.stderr.read()

        threads = [threading.Thread(target=pump, args=(i, pr), daemon=True) for i, pr in enumerate(procs)]
        try:
            for t in threads:
                t.start()
            for t, pr in zip(threads, procs, strict=True):
                t.join()
                pr.wait()
        finally:
            for pr in procs:
                if pr.poll() is None:
                    pr.kill()
                    pr.wait()
        for pr, out, err in zip(procs, outs, errs, strict=True):
            if pr.returncode != 0 or not out.exists():
                raise RunError(f"{run_dir}: analysis worker failed (exit {pr.returncode}): "
                               f"{err.strip().splitlines()[-1] if err.strip() else 'no message'}")
        for out in outs:
            with open(out, "rb") as f:
                res = pickle.load(f)  # noqa: S301 - our own worker's output
            if isinstance(res, RunError):
                raise res
            yield from res


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
