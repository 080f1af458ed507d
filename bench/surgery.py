"""Bench: GGUF rewrite speed against a plain copy of the same bytes, into tmpfs.

Measured in one run on the demo model (llama_server.demo_model_path()): `cp` of the source
file into /dev/shm, a warm rewrite from an already-parsed SourceModel (identity and a
duplicated-block path), and a cold rewrite (parse included). Each is repeated and the median
taken. Speeds compare bytes written per second, since the duplicated model is bigger.
Targets: warm speed >= 0.7x cp speed, cold time within 5x cp time.

    .venv/bin/python bench/surgery.py [--reps 5] [--dir /dev/shm/...] [--model PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from rys import gguf_surgery
from rys import layer_path


def _median_time(fn: Callable[[], object], reps: int, cleanup: Callable[[], None]) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        cleanup()
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--dir", help="output directory (default: the per-user /dev/shm dir)")
    ap.add_argument("--model", help="source GGUF (default: the demo model)")
    args = ap.parse_args(argv)

    if args.model:
        model = Path(args.model)
    else:
        from rys import llama_server

        model = llama_server.demo_model_path()
    with contextlib.ExitStack() as stack:
        base = Path(args.dir) if args.dir else stack.enter_context(gguf_surgery.scratch_dir())
        work = base / f"bench-surgery-{os.getpid()}"
        work.mkdir(parents=True)
        try:
            return _run(model, work, args.reps)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _run(model: Path, work: Path, reps: int) -> int:
    size = model.stat().st_size
    target = work / "out.gguf"

    def rm() -> None:
        target.unlink(missing_ok=True)

    # warm the page cache so every contender reads the source from memory
    with open(model, "rb") as f:
        while f.read(64 << 20):
            pass

    t_cp = _median_time(lambda: subprocess.run(["cp", str(model), str(target)], check=True), reps, rm)
    t_copyfile = _median_time(lambda: shutil.copyfile(model, target), reps, rm)
    t_parse = _median_time(lambda: gguf_surgery.SourceModel.open(model), reps, lambda: None)

    src = gguf_surgery.SourceModel.open(model)
    n = src.n_layers
    ident = layer_path.identity(n)
    i, j = n // 6, n // 6 + max(1, n // 4)
    dup = layer_path.duplicate(i, j, n)
    size_id = src.estimate_size(ident)
    size_dup = src.estimate_size(dup)

    t_warm_id = _median_time(lambda: gguf_surgery.rewrite(src, target, ident, progress=False), reps, rm)
    t_warm_dup = _median_time(lambda: gguf_surgery.rewrite(src, target, dup, progress=False), reps, rm)
    t_cold_dup = _median_time(lambda: gguf_surgery.rewrite(model, target, dup, progress=False), reps, rm)

    mb = 1 << 20
    cp_speed = size / t_cp
    print(f"model: {model} ({size / mb:.1f} MiB, {src.arch}, {n} layers, "
          f"{len(src.tensors)} tensors, {len(src.kv)} metadata keys)")
    print(f"output dir: {work.parent} (tmpfs)   repetitions: {reps}, median shown")
    print(f"dup path: {layer_path.format(dup)} ({len(dup)} layers, {size_dup / mb:.1f} MiB)")
    print()
    rows = [
        ("cp (subprocess)", t_cp, size),
        ("shutil.copyfile", t_copyfile, size),
        ("parse only (SourceModel.open)", t_parse, 0),
        ("warm rewrite, identity", t_warm_id, size_id),
        ("warm rewrite, dup", t_warm_dup, size_dup),
        ("cold rewrite, dup (parse included)", t_cold_dup, size_dup),
    ]
    for label, t, nbytes in rows:
        speed = f"{nbytes / t / mb:8.0f} MiB/s" if nbytes else " " * 14
        print(f"  {label:36s} {t * 1000:8.1f} ms  {speed}")
    print()
    warm_id_x = (size_id / t_warm_id) / cp_speed
    warm_dup_x = (size_dup / t_warm_dup) / cp_speed
    cold_x = t_cold_dup / t_cp
    print(f"warm identity speed: {warm_id_x:.2f}x cp speed (target >= 0.7x)")
    print(f"warm dup speed:      {warm_dup_x:.2f}x cp speed (target >= 0.7x)")
    print(f"cold dup time:       {cold_x:.2f}x cp time (target <= 5x)")
    ok = warm_id_x >= 0.7 and warm_dup_x >= 0.7 and cold_x <= 5
    print("targets met" if ok else "TARGETS MISSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
