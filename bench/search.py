"""Bench: search strategies at the same budget, replayed on a recorded full scan.

The scan (``--scan``, default the demo model's shipped scan: every RYS block of 1-6 layers, reasoning
+ eq in logprob mode, dev and test items) is served by the replay engine, so every strategy runs
through rys-sweep itself (``--replay``), offline and deterministically. For each seed:

* ``grid``: the hand-thinned grid people run (blocks of every size with a stride, the offset from
  the seed), as many configs as the budget buys in full;
* ``halving``: successive halving (eta 3) over a random subset of the space, as large as fits the
  budget;
* ``adaptive``: ``--search adaptive`` (TPE + racing with WilcoxonPruner);
* ``random``: ``--search random`` (random blocks, every item).

Each strategy then checks its top 5 on the held-out items (Holm-corrected). Printed per strategy and
seed: item-evaluations used (fraction of the full scan's), the chosen config (the summary's rank 1),
its regret on the search items (the full scan's best minus the chosen config, in paired stderr units:
0 = the full scan's own winner, below 1 = within one paired stderr of it), its held-out delta and
verdict after the correction, whether that verdict agrees with the full scan's held-out measurement
of the same config (alone, uncorrected), the gain-versus-size Pareto points it recovered of the full
scan's, and wall time. Then the checks of issue #19.

    .venv/bin/python bench/search.py [--scan PATH] [--seeds 5] [--budget 0.2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
from rys import layer_path, plans, replay
from rys import sweep
from rys import sweep_record as R
from rys import visualize as viz

DEFAULT_SCAN = ROOT / "tests" / "data" / "scans" / "gemma-3-270m-q4_k_m.blocks1-6.scan.json.gz"
STRATEGIES = ("grid", "halving", "adaptive", "random")
K = 5


def space_of(scan: replay.Scan) -> list[plans.Config]:
    """The scan's RYS blocks as plan configs (the search space)."""
    n = scan.model.n_layers
    out = []
    for cfg in scan.configs.values():
        b = cfg.block
        if b is not None and b.is_block and cfg.kind != "identity":
            out.append(plans.block_config(int(b.i), int(b.j), n, int(b.times or 1)))
    return sorted(out, key=lambda c: (c.block.j - c.block.i, c.block.i))  # type: ignore[union-attr,operator]


def thinned_grid(space: list[plans.Config], n_configs: int, seed: int) -> list[plans.Config]:
    """Blocks of every size with the smallest stride that fits ``n_configs``; offset by seed."""
    sizes = sorted({c.block.j - c.block.i for c in space})  # type: ignore[union-attr,operator]
    for stride in range(1, len(space) + 1):
        off = seed % stride
        pick = [c for c in space if (c.block.i - off) % stride == 0]  # type: ignore[union-attr,operator]
        if len(pick) <= n_configs:
            return pick or [space[0]]
    return [space[0]]


def halving_subset(space: list[plans.Config], counts: dict[str, int], budget: int, seed: int,
                   confirm: int) -> list[plans.Config]:
    """The largest random subset whose successive halving (eta 3) fits the budget."""
    rng = random.Random(seed)
    order = rng.sample(space, len(space))
    best = order[:1]
    for m in range(1, len(order) + 1):
        rungs = plans.halving_rungs(m, max(counts.values()), 3, 4, min_keep=max(1, confirm))
        if plans.halving_cost(m, rungs, counts, 3)["evaluations"] <= budget:
            best = order[:m]
    return best


def paths_file(configs: list[plans.Config], path: Path) -> Path:
    path.write_text("".join(f"{c.spec}  # {c.config_label}\n" for c in configs))
    return path


def run_strategy(scan_path: Path, strategy: str, seed: int, budget_fraction: float,
                 space: list[plans.Config], counts: dict[str, int], work: Path) -> dict:
    full = len(space) * sum(counts.values())
    budget = math.floor(budget_fraction * full)
    out = work / f"{strategy}-{seed}.jsonl"
    common = ["--replay", str(scan_path), "-o", str(out), "--quiet", "--confirm", str(K)]
    if strategy in ("adaptive", "random"):
        argv = [*common, "--search", strategy, "--budget", str(budget), "--seed", str(seed),
                "--study", "memory", "--grid", "--max-block", str(max(
                    c.block.j - c.block.i for c in space))]  # type: ignore[union-attr,operator]
    elif strategy == "grid":
        pick = thinned_grid(space, budget // sum(counts.values()), seed)
        argv = [*common, "--paths-file", str(paths_file(pick, work / f"grid-{seed}.txt"))]
    else:
        pick = halving_subset(space, counts, budget, seed, K)
        argv = [*common, "--halving", "3", "--paths-file",
                str(paths_file(pick, work / f"halving-{seed}.txt"))]
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        rc = sweep.main(argv)
    wall = time.perf_counter() - t0
    if rc != 0:
        raise SystemExit(f"{strategy} seed {seed}: rys-sweep exited {rc}")
    summary = json.loads(R.results_paths(out)["summary"].read_text())
    if summary.get("search"):
        used = summary["search"]["spent"]
    elif summary.get("halving"):
        used = summary["halving"]["evaluations"]
    else:  # a plain plan: every candidate on every item
        used = sum(sum(p.n for p in r.probes.values()) for r in R.read_records(out).records
                   if r.kind not in R.REFERENCE_KINDS and r.kind != R.Kind.CONFIRM and r.ok)
    (sw,) = viz.load_sweeps([out])
    return {"strategy": strategy, "seed": seed, "used": used, "budget": budget, "full": full,
            "chosen": summary["leaderboard"][0]["path"], "label": summary["leaderboard"][0]["config"],
            "confirm": summary["confirm"] or [],
            "front": {r["path"] for r in viz.gain_size_front(sw)}, "wall_s": wall}


def full_scan_facts(scan: replay.Scan, space: list[plans.Config]) -> dict:
    n = scan.model.n_layers
    dev = {c.spec: scan.delta(c.spec, "dev") for c in space}
    test = {c.spec: scan.delta(c.spec, "test") for c in space}
    best = max(dev, key=lambda k: dev[k].delta)  # type: ignore[union-attr,return-value,arg-type]
    ident = layer_path.format(layer_path.identity(n))
    floor = None
    if ident in scan.configs:
        deltas = {}
        from rys import probes as P

        for probe in scan.items["dev"]:
            d, se = P.paired_delta(scan.item_results(replay.ORIGINAL, "dev", probe),
                                   scan.item_results(ident, "dev", probe))
            deltas[probe] = R.Delta(d, se)
        floor = R.noise_floor(deltas, R.combined_delta(deltas, {p: 1.0 for p in deltas})) \
            .get(R.COMBINED)
    added = {c.spec: len(c.path) - n for c in space}
    front = viz.pareto_front({k: (test[k].delta, -added[k]) for k in test})  # type: ignore[union-attr]
    return {"dev": dev, "test": test, "best": best, "floor": floor, "front": set(front)}


def evaluate(row: dict, scan: replay.Scan, facts: dict) -> dict:
    chosen, best = row["chosen"], facts["best"]
    if chosen == best:
        regret = 0.0
    else:
        d = scan.paired(chosen, best, "dev")
        regret = (d.delta / d.stderr) if d and d.stderr else math.inf  # type: ignore[operator]
    conf = next((c for c in row["confirm"] if c["path"] == chosen), None)
    holds = bool(conf and conf["holds"])
    test = conf["test"] if conf else None
    alone = R.heldout([(facts["dev"][chosen], facts["test"][chosen])], facts["floor"])[0]
    return {**row, "regret": regret, "holds": holds, "test": test,
            "scan_holds": alone.holds, "agrees": holds == alone.holds,
            "recovered": len(row["front"] & facts["front"])}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", type=Path, default=DEFAULT_SCAN)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--budget", type=float, default=0.2, help="fraction of a full pass")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    args = ap.parse_args(argv)
    scan = replay.Scan.load(args.scan)
    space = space_of(scan)
    counts = {p: len(ids) for p, ids in scan.items["dev"].items()}
    facts = full_scan_facts(scan, space)
    full = len(space) * sum(counts.values())
    best = facts["best"]
    bd = facts["dev"][best]
    print(f"scan: {args.scan.name}: {len(space)} blocks x {sum(counts.values())} search items "
          f"(full pass {full} item-evaluations), {sum(len(v) for v in scan.items['test'].values())}"
          f" held-out items; made with: {scan.made_with}")
    floor = "none" if facts["floor"] is None else f"{facts['floor']:.4f}"
    print(f"full scan: best on the search items {best} ({R.fmt_delta(bd)}), held-out "
          f"{R.fmt_delta(facts['test'][best])}; noise floor {floor}; gain-vs-size front "
          f"{len(facts['front'])} configs: {', '.join(sorted(facts['front']))}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rys-bench-search-") as tmp:
        for seed in range(args.seeds):
            for strategy in args.strategies.split(","):
                rows.append(evaluate(run_strategy(args.scan, strategy, seed, args.budget, space,
                                                  counts, Path(tmp)), scan, facts))
    print()
    head = ("strategy", "seed", "items used", "chosen", "regret (SE)", "held-out delta",
            "verdict", "agrees", "front", "wall s")
    table = [head]
    for r in rows:
        t = r["test"]
        table.append((r["strategy"], str(r["seed"]), f"{r['used']} ({r['used'] / full:.1%})",
                      r["label"], f"{r['regret']:.2f}",
                      R.fmt_delta(R.Delta(t["delta"], t["stderr"])) if t else "n/a",
                      "holds" if r["holds"] else "does not hold", "yes" if r["agrees"] else "NO",
                      f"{r['recovered']}/{len(facts['front'])}", f"{r['wall_s']:.1f}"))
    widths = [max(len(x[k]) for x in table) for k in range(len(head))]
    for line in table:
        print("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip())
    print()
    by = {s: [r for r in rows if r["strategy"] == s] for s in args.strategies.split(",")}
    for s, rs in by.items():
        print(f"{s:<9} mean regret {statistics.mean(r['regret'] for r in rs):.2f} SE, mean items "
              f"{statistics.mean(r['used'] for r in rs) / full:.1%} of the full pass, within 1 SE "
              f"on {sum(r['regret'] <= 1 for r in rs)}/{len(rs)} seeds, verdict agrees on "
              f"{sum(r['agrees'] for r in rs)}/{len(rs)}, mean wall {statistics.mean(r['wall_s'] for r in rs):.1f} s")
    if "adaptive" in by and "random" in by:
        ad, rnd = by["adaptive"], by["random"]
        ge = sum(a["regret"] <= b["regret"] for a, b in zip(ad, rnd))
        checks = [
            ("adaptive within 1 paired SE of the full scan's best on every seed",
             all(r["regret"] <= 1 for r in ad)),
            ("adaptive used at most 20% of the full scan's item-evaluations",
             all(r["used"] <= 0.2 * full for r in ad)),
            (f"adaptive at least as good as random on {ge}/{len(ad)} seeds (>= 4 of 5)",
             ge >= min(4, len(ad))),
            ("adaptive better than random on average",
             statistics.mean(r["regret"] for r in ad) < statistics.mean(r["regret"] for r in rnd)),
            ("adaptive's held-out verdict agrees with the full scan's on every seed",
             all(r["agrees"] for r in ad)),
        ]
        print()
        for text, ok in checks:
            print(f"{'met ' if ok else 'NOT met'}  {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
