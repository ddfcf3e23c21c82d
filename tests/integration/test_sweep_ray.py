"""``--backend ray``: loopback-only local instance, same results.csv as local, an address passed in."""

from __future__ import annotations

import csv
import importlib.util
import ipaddress
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from groklab.cli import main

TINY = ["--preset", "pair-parity", "--seeds", "0-1", "--grid", "train.weight_decay=0.1,1",
        "--grid", "model.d_hidden=8,16", "--train.steps", "60", "--train.checkpoint_every", "30",
        "--train.regularization", "l2", "--train.lr", "0.01", "--task.n_bits", "8", "--task.k", "2",
        "--task.n_train", "200", "--task.n_test", "200", "--stop", "grokked", "--no-progress",
        "--workers", "2"]


# not importorskip: Ray's loopback settings only act if groklab sets them before `import ray`
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason='needs pip install -e ".[ray]"')


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _listeners() -> set[tuple[str, int]]:
    """Listening TCP sockets of this machine (address, port), from /proc/net/tcp and tcp6."""
    out = set()
    for name, fam in (("tcp", socket.AF_INET), ("tcp6", socket.AF_INET6)):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            raw = bytes.fromhex(addr_hex)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # little-endian words
            out.add((socket.inet_ntop(fam, raw), int(port_hex, 16)))
    return out


def test_without_ray_exit_2_and_install_hint(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "ray" else real(n, *a))
    assert main(["sweep", *TINY, "--backend", "ray", "--out", str(tmp_path / "s")]) == 2
    assert 'pip install -e ".[ray]"' in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc/net")
@needs_ray
def test_local_instance_listens_on_loopback_only():
    from groklab.sweep.ray_backend import ray_session

    before = _listeners()
    with ray_session(None, num_cpus=1):
        new = _listeners() - before
    assert new, "the Ray instance opened no listening socket?"
    addrs = [ipaddress.ip_address(a) for a, _ in new]
    addrs = [getattr(a, "ipv4_mapped", None) or a for a in addrs]  # ::ffff:127.0.0.1 is 127.0.0.1
    assert all(a.is_loopback for a in addrs), f"listening beyond loopback: {sorted(new)}"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"


@needs_ray
def test_ray_backend_gives_the_local_results(tmp_path):
    assert main(["sweep", *TINY, "--out", str(tmp_path / "local")]) == 0
    assert main(["sweep", *TINY, "--backend", "ray", "--out", str(tmp_path / "ray")]) == 0
    a, b = _csv(tmp_path / "local" / "results.csv"), _csv(tmp_path / "ray" / "results.csv")
    assert a == b and len(a) == 8 and any(r["stopped"] for r in a)


@needs_ray
def test_ray_backend_on_an_address_passed_in(tmp_path):
    ray_cli = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from groklab.sweep.ray_backend import LOOPBACK_ENV

    env = {**os.environ, **LOOPBACK_ENV}
    subprocess.run([ray_cli, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
                    "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=120)
    try:
        assert main(["sweep", *TINY, "--backend", "ray", "--address", f"127.0.0.1:{port}",
                     "--out", str(tmp_path / "ray")]) == 0
    finally:
        subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120)
    assert main(["sweep", *TINY, "--out", str(tmp_path / "local")]) == 0
    assert _csv(tmp_path / "ray" / "results.csv") == _csv(tmp_path / "local" / "results.csv")
