"""Writing ``RUN/analysis.json`` and ``RUN/analysis.npz``: one writer for every task's analysis."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from ..runs import atomic_write


def json_safe(x: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python numbers, tuples -> lists."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_analysis(run_dir: Path, summary: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write ``analysis.npz`` (``arrays``) then ``analysis.json`` (``summary``), each atomically;
    returns the json's path."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write(run_dir / "analysis.npz", buf.getvalue())
    out = run_dir / "analysis.json"
    atomic_write(out, json.dumps(json_safe(summary), indent=1, allow_nan=False))
    return out
