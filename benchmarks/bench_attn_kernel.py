"""A/B of builds of the fused attention kernel (``models/_attn_kernel.cpp``), alternated in one
process on the induction preset's shapes, so that machine noise hits every build alike.

    git show HEAD~1:src/groklab/models/_attn_kernel.cpp > /tmp/old.cpp
    python benchmarks/bench_attn_kernel.py /tmp/old.cpp src/groklab/models/_attn_kernel.cpp [--reps 30]

Each source is compiled under its own extension name (``models/attn_kernel.py``'s flags); the
first is the baseline. Every build's outputs and gradients are first checked against the
baseline's (``assert_close``), then each rep times one forward and one backward of every build,
the order reversed on odd reps (``--no-check`` skips the check, to time a deliberately wrong
variant as an upper bound). Shapes: layer 0 = ``[128, 85, 4, 12]`` causal (q | k | v packed),
layer 1 = 30 loss-slot queries on 85 keys, sorted random prefixes, and layer 0 tables = layer 0's
causal attention with q | k | v from a 128-token and an 85-position table (what training runs).
Prints median ms (wall) of the forward, the backward and their sum, and the baseline's sum over
each build's.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.utils.cpp_extension import load

from groklab.models.attn_kernel import _CFLAGS, _qkv

B, L, H, D, K, V = 128, 85, 4, 12, 30, 128


def _cases() -> dict[str, tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]]:
    """``name -> (q, k, v views, lim, gradient views)`` for layer 0 and layer 1."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(B, L, 3 * H * D, generator=g) * 0.5
    lim0 = torch.arange(1, L + 1, dtype=torch.int32).expand(B, L).contiguous()
    xq = torch.randn(B, K, H * D, generator=g) * 0.5
    xkv = torch.randn(B, L, 2 * H * D, generator=g) * 0.5
    lim1 = (torch.sort(torch.randint(10, L - 1, (B, K), generator=g), 1).values + 1).to(torch.int32)
    return {
        "layer 0": (_qkv(x0, None, H), lim0, _qkv(torch.empty_like(x0), None, H)),
        "layer 1": (_qkv(xq, xkv, H), lim1.contiguous(),
                    _qkv(torch.empty_like(xq), torch.empty_like(xkv), H)),
        # what training runs for layer 0: q | k | v from token and position tables (V = 128)
        "layer 0 tables": ((torch.randn(V, 3 * H * D, generator=g) * 0.5,
                            torch.randn(L, 3 * H * D, generator=g) * 0.5,
                            torch.randint(0, V, (B, L), generator=g)), lim0, None),
    }


_SAVE: dict = {}  # module -> (True,) where its forward takes ``save`` (saves the pattern), else ()


def _signature(mod) -> tuple:
    """``(True,)`` for kernels whose forward saves the pattern for the backward (3 outputs), ``()``
    for older sources (2 outputs, backward recomputes), so that old and new builds compare."""
    return (True,) if "saved pattern" in (mod.forward.__doc__ or "") else ()


def _once(mod, case) -> tuple[float, float, list[torch.Tensor]]:
    inputs, lim, grads = case
    if grads is None:  # tables: (TE, TP, tok), one member (N = B)
        TE, TP, tok = inputs
        t0 = time.perf_counter()
        z, lse, *pat = mod.forward_tables(TE, TP, tok, lim, H, B, *_SAVE[mod])
        t1 = time.perf_counter()
        dTE, dTP = mod.backward_tables(TE, TP, tok, lim, z, lse, *pat, torch.ones(z.shape), H, B)
        t2 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, [z, dTE, dTP]
    q, k, v = inputs
    dz = torch.ones(q.shape)
    t0 = time.perf_counter()
    z, lse, *pat = mod.forward(q, k, v, lim, *_SAVE[mod])
    t1 = time.perf_counter()
    mod.backward(q, k, v, lim, z, lse, *pat, dz, *grads)
    t2 = time.perf_counter()
    return (t1 - t0) * 1e3, (t2 - t1) * 1e3, [z, *[g.clone() for g in grads]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sources", nargs="+", type=Path, help="kernel .cpp files; the first is the baseline")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--no-check", action="store_true",
                    help="skip the check against the baseline (to time a deliberately wrong variant)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    mods = [load(name=f"groklab_attn_ab{i}_{s.stem}", sources=[str(s)], extra_cflags=_CFLAGS)
            for i, s in enumerate(args.sources)]
    cases = _cases()
    for m in mods:
        _SAVE[m] = _signature(m)
    for name, case in cases.items() if not args.no_check else ():
        ref = _once(mods[0], case)[2]
        for s, m in zip(args.sources[1:], mods[1:], strict=True):
            for a, b in zip(_once(m, case)[2], ref, strict=True):
                torch.testing.assert_close(a, b, msg=lambda msg, s=s, name=name: f"{s} ({name}): {msg}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.reps} reps, medians (ms)")
    for name, case in cases.items():
        times = [([], []) for _ in mods]
        for r in range(args.reps):
            order = range(len(mods)) if r % 2 == 0 else reversed(range(len(mods)))
            for i in order:
                f, b, _ = _once(mods[i], case)
                times[i][0].append(f)
                times[i][1].append(b)
        base = statistics.median(times[0][0]) + statistics.median(times[0][1])
        for s, (f, b) in zip(args.sources, times, strict=True):
            fm, bm = statistics.median(f), statistics.median(b)
            print(f"{name}  {str(s):48s} fwd {fm:6.2f}  bwd {bm:6.2f}  total {fm + bm:6.2f}  "
                  f"baseline / this {base / (fm + bm):.3f}")


if __name__ == "__main__":
    main()
