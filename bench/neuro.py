"""Bench: does rys-neuro's zero-sweep prediction find the RYS blocks a full scan finds?

Measures, in one run: the hidden states after every layer of the model for the calibration items
(``rys-neuro predict``'s default probe slice, or ``--probes``) on the --rys-patches llama-server,
the predicted merit of every block the scan holds (each statistic of ``neuro.block_scores``), and
its agreement with the scan's combined deltas on the dev and the test items: Spearman's rho, the
overlap of the top 5, and how far the predicted best block is from the scan's best. The reference,
measured in the same run, is chance: random rankings of the same blocks (2000, seeded), which give
the expected overlap and the permutation p-values printed next to each number.

    .venv/bin/python bench/neuro.py --scan SCAN.json.gz [--model PATH] [--patched-server PATH]
        [--probes SPEC] [--server-args ARGS] [--influence influence.json]

The scan is a full scan of the model's RYS blocks recorded by rys-sweep and loaded with
``replay.Scan.load`` (``scan.block_deltas(split)``). With ``--influence`` the states of an
earlier ``rys-neuro influence`` run over every layer are used instead of measuring them.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from pathlib import Path

from rys import gguf_surgery
from rys import llama_server as LS
from rys import neuro as N

import numpy as np


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scan", required=True, help="a full scan (replay.Scan) of the model")
    ap.add_argument("--model", help="the GGUF (default: the scan's model, else the demo)")
    ap.add_argument("--patched-server", help="the --rys-patches llama-server")
    ap.add_argument("--probes", default=N.DEFAULT_PROBES, help="calibration items")
    ap.add_argument("--server-args", default="", help='e.g. "-ngl 99" (demo: --swa-full)')
    ap.add_argument("--influence", help="an influence.json over every layer: no server")
    ap.add_argument("--top", type=int, default=5, help="top-k for the overlap (default 5)")
    args = ap.parse_args(argv)
    try:
        from rys import replay
    except ImportError:
        print("bench/neuro.py needs rys.replay (the full scan's loader); merge main",
              file=sys.stderr)
        return 2
    scan = replay.Scan.load(args.scan)
    model = Path(args.model or scan.model.path or LS.demo_model_path())
    if not model.is_file():
        model = LS.demo_model_path()
    source = gguf_surgery.SourceModel.open(model)
    if source.fingerprint != scan.model.fingerprint:
        print(f"{model} is not the scan's model ({scan.model.file})", file=sys.stderr)
        return 2
    n = int(source.n_layers)
    truth = {s: {b: d.delta for b, d in scan.block_deltas(s).items() if d.delta is not None}
             for s in scan.splits}
    blocks = {b for t in truth.values() for b in t}
    sizes = sorted({j - i for i, j, _ in blocks})
    times = sorted({t for _, _, t in blocks})
    print(f"scan {args.scan}: {len(blocks)} blocks of {sizes[0]}-{sizes[-1]} layers "
          f"(times {times}), splits {', '.join(scan.splits)}, probes "
          f"{', '.join(scan.probe_names)}; model {model.name} ({n} layers)")
    t0 = time.monotonic()
    if args.influence:
        S = np.array(json.loads(Path(args.influence).read_text())["similarity"], dtype=float)
        how = f"states from {args.influence}"
    else:
        binary = args.patched_server or str(LS.patched_build_path() or "")
        if not binary:
            print("no --rys-patches llama-server: pass --patched-server", file=sys.stderr)
            return 2
        extra = shlex.split(args.server_args) or ([] if args.model else list(N.DEMO_SERVER_ARGS))
        with tempfile.TemporaryDirectory(prefix="rys-bench-neuro-") as d:
            target = N.Target(source, binary, extra, parallel=1, ctx_size=None,
                              load_timeout=600.0, timeout=600.0, out=Path(d), chat=False)
            jobs = N.logprob_jobs(args.probes, "dev", view="predict")
            names, states, _ = N.probe_states(target, jobs, list(range(n)), Path(d))
        S = N.similarity_matrix(list(range(n)), states)
        how = f"{len(names)} calibration prompts ({args.probes}), one pass per depth"
    print(f"states: {how}, {time.monotonic() - t0:.0f} s")
    print(f"{'statistic':<10} {'split':<5} {'blocks':>6}  {'spearman':>8} {'perm p':>7}  "
          f"top-{args.top} overlap (chance)  {'perm p':>7}  best: predicted / scan (distance)")
    for stat in N.STATISTICS:
        by_times = {}
        for t in times:
            by_times.update(N.block_scores(S, n, sizes[0], sizes[-1], t, stat))
        for split, tr in truth.items():
            ag = N.agreement(by_times, tr, k=args.top)
            ratio = ag.overlap / ag.chance_overlap if ag.chance_overlap else math.nan
            print(f"{stat:<10} {split:<5} {ag.n:>6}  {ag.spearman:>+8.3f} "
                  f"{ag.perm_spearman_p:>7.3f}"
                  f"  {ag.overlap}/{ag.k} ({ag.chance_overlap:.2f}; {ratio:.1f}x chance)"
                  f"        {ag.perm_overlap_p:>7.3f}  dup({ag.predicted_best[0]},"
                  f"{ag.predicted_best[1]}) / dup({ag.scan_best[0]},{ag.scan_best[1]}) "
                  f"({ag.best_distance})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
