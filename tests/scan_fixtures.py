"""Constructed scans for search and replay tests: the real probes' item ids and hashes, made-up
scores with a known answer (which block is best, by how much), so a strategy can be checked
against the truth without a server."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Callable

from rys import layer_path, plans, replay
from rys import probes as P
from rys import sweep_record as R

PROBES = ("reasoning", "eq")
N_LAYERS = 18


def effect_peak(best: tuple[int, int], peak: float, slope: float) -> Callable[[int, int], float]:
    """A landscape: ``peak`` at block ``best``, falling by ``slope`` per layer of distance."""
    return lambda i, j: peak - slope * (abs(i - best[0]) + abs(j - best[1]))


def make_scan(path: Path, effect: Callable[[int, int], float], noise: float = 0.15,
              seed: int = 1, max_block: int = 6, identity_noise: float = 0.01,
              extra: dict[str, float] | None = None) -> replay.Scan:
    """Every block of 1..max_block layers of an 18-layer model; item score = baseline item score
    + effect(i, j) + gaussian noise, clipped to [0, 1]; ``extra``: more paths (canonical specs)
    with their own effect, recorded as custom configs."""
    rng = random.Random(seed)
    probes = {n: P.get_probe(n) for n in PROBES}
    items = {split: {n: [it.id for it in p.split_items(split)] for n, p in probes.items()}
             for split in ("dev", "test")}
    base = {s: {n: [rng.uniform(0.2, 0.8) for _ in ids] for n, ids in by.items()}
            for s, by in items.items()}

    def around(shift: float, sd: float) -> dict:
        return {s: {n: [min(1.0, max(0.0, x + shift + rng.gauss(0, sd))) for x in xs]
                    for n, xs in by.items()} for s, by in base.items()}

    configs = {replay.ORIGINAL: replay.ScanConfig("baseline", None, base),
               layer_path.format(layer_path.identity(N_LAYERS)):
                   replay.ScanConfig("identity", None, around(0.0, identity_noise))}
    for c in plans.plan_grid(N_LAYERS, max_block=max_block):
        assert c.block is not None
        configs[c.spec] = replay.ScanConfig(
            "grid", c.block, around(effect(c.block.i, c.block.j), noise))  # type: ignore[arg-type]
    for spec, eff in (extra or {}).items():
        configs[spec] = replay.ScanConfig("custom", None, around(eff, noise))
    model = R.ModelInfo(file="constructed-18.gguf", size=18 << 20, arch="gemma3",
                        n_layers=N_LAYERS, fingerprint="c0ffee" * 2)
    scan = replay.Scan(model, {"mode": "logprob", "engine": "virtual", "server": "constructed",
                               "probes": {n: p.hash for n, p in probes.items()}},
                       items, configs, "tests/scan_fixtures.py")
    scan.save(path)
    return scan
