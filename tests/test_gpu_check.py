"""bench/gpu_check.sh and bench/gpu_check.py: the GPU check's CPU part runs here (and in CI), so
it cannot rot; on a GPU the same script prints the offload rows and the device's memory.

The table is checked for what it must say (every path bit-identical, the virtual duplicate adding
no weights where the rewrite does, every number present), never for how fast anything was.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _rows(out: str) -> list[tuple[str, str, str]]:
    rows = []
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 3 and cells[0] != "check":
            rows.append(tuple(cells))
    return rows


@pytest.mark.server
def test_the_cpu_part_prints_the_table(patched_server_bin, demo_model):
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--patched-server",
                        patched_server_bin, "--model", str(demo_model), "--probes", "reasoning:1", "--blocks", "2",
                        "--server-args", "--no-repack -t 2"],
                       capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = _rows(r.stdout)
    identical = [row for row in rows if row[0].startswith("bit-identical")]
    assert [row[0].split(",")[1].split()[0] for row in identical] == ["dup", "skip", "reorder"]
    assert all(row[1] == "cpu" and row[2] == "yes" for row in identical), identical

    memory = {row[1].rsplit(", ", 1)[-1]: row[2] for row in rows if row[0].startswith("memory Host")}
    assert set(memory) == {"identity", "physical", "virtual"}, rows
    parts = {k: [int(x) for x in re.findall(r"[+-]?\d+", v)] for k, v in memory.items()}
    for total, model, ctx, compute, *_ in parts.values():
        assert total == model + ctx + compute and model > 0
    assert parts["virtual"][1] == parts["identity"][1]  # the virtual duplicate shares its weights
    assert parts["physical"][1] > parts["identity"][1]  # the rewrite carries 3 more layers
    assert parts["virtual"][2] > parts["identity"][2]  # but each position has its own KV cache

    switch = [row for row in rows if row[0].startswith("switch time")]
    assert len(switch) == 1 and re.fullmatch(r"\d+ / \d+", switch[0][2])
    per_config = {row[1]: row[2] for row in rows if row[0].startswith("s/config")}
    assert set(per_config) == {"physical engine", "virtual engine"}
    assert all(float(v.split()[0]) > 0 for v in per_config.values())
    rates = {row[1]: row[2] for row in rows if row[0].startswith("configs per hour")}
    assert set(rates) == {"1 worker", "2 workers, one device"}
    assert all(float(v.split()[0]) > 0 for v in rates.values())


def _fake(tmp_path: Path, name: str, text: str) -> None:
    (tmp_path / name).write_text(f"#!/bin/sh\n{text}\n")
    (tmp_path / name).chmod(stat.S_IRWXU)


def test_the_script_finds_an_nvidia_gpu_and_builds_for_it(tmp_path):
    _fake(tmp_path, "nvidia-smi", "echo 'GPU 0: NVIDIA H200 (UUID: GPU-0)'")
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    r = subprocess.run([str(SCRIPT), "--dry-run", "--probes", "math:2"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    assert "backend cuda" in r.stderr
    assert "--rys-patches --backend cuda" in r.stderr and "-DGGML_CUDA=ON" in r.stderr
    assert r.stdout.strip().endswith("-cuda/bin/llama-server")
    assert "bench/gpu_check.py --backend cuda --patched-server BINARY --probes math:2" in r.stderr


def test_the_script_refuses_an_unknown_backend_with_one_line():
    r = subprocess.run([str(SCRIPT), "--backend", "tpu", "--dry-run"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == "gpu_check: unknown backend 'tpu'"
