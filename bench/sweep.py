"""Bench: per-config overhead and probe concurrency of rys-sweep, measured in one run.

On the demo model (or --model), with the real llama-server; pairs are interleaved (A, B, A, B)
and compared pair by pair, since the load on a shared machine drifts:

1. overhead: a bare ``llama-server`` on a rewritten file, timed from exec to the first ``/health``
   200, against the sweep's own non-probe work on the same path (rewrite into the tmp dir, start
   with /props verification, stop, delete);
2. a small sweep (baseline, identity, 2 duplicated blocks) through ``sweep.Sweep``: the per-config
   time split surgery / load / probes / stop+delete;
3. probe throughput: the same generate-mode probes sent one request at a time, the way rys-sweep
   sends them (probes.run_jobs: probes side by side, each slot pinned to a worker, slots spread
   over the probes by work, longest first, a worker whose probe is done joins the probe with the
   most work left; item costs learned from the previous run, as the sweep learns them from the
   previous config), and probe after probe with all slots on each; a fresh server for each run,
   so no run finds another's prompt cache; for the default suite (--probes) and
4. for a generation-heavy probe (--gen-probes). The server log's token counts are printed: on CPU
   mostly decoding gains from batching, and a slot that starts on a probe processes its few-shot
   prefix again;
5. configs per hour of one plan with 1 worker (all CPU threads) against 2 workers (half the
   threads each), alternating; on a GPU, pass --server-args "-ngl 99" to see two servers share
   one GPU (one loads while the other is probed);
6. the same plan served by the physical engine (rewrite + fresh server) and the virtual one (a
   --rys-patches server switching its path): seconds per config, non-probe seconds per config
   against the switch itself, tmpfs bytes written, and the servers' peak RSS.
7. configs per hour of one plan shared through ``--study`` (an SQLite store on this box) by 1
   rys-sweep process against 2 processes (half the threads each), alternating: what a second
   process buys on the same box, each process measuring its own baseline and identity.

Targets: non-probe time per config <= 1.5x the bare start; concurrent throughput >= 1.6x
sequential; the reference harness needed 222 s per config.

    .venv/bin/python bench/sweep.py [--model PATH] [--parallel 4] [--reps 3]
        [--throughput-reps 2] [--probes SUITE] [--gen-probes SUITE] [--sweep-probes SUITE]
        [--sections 1,2,3,4,5,6,7]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
from rys import engine as E
from rys import gguf_surgery
from rys import layer_path
from rys import llama_server as LS
from rys import probes as P
from rys import plans
from rys import sweep
from rys import sweep_record as R
from rys.probes.loader import DEFAULT_SUITE_SPEC

REFERENCE_S_PER_CONFIG = 222.0


def bare_start(binary: str, model: Path, parallel: int, ctx: int, extra: list[str]) -> float:
    """Seconds from exec to the first /health 200 of a plain llama-server (then killed)."""
    port = LS.free_port()
    cmd = [binary, "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--parallel", str(parallel), "--ctx-size", str(ctx), *extra]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        with requests.Session() as s:
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama-server exited with {proc.returncode}")
                try:
                    if s.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                        return time.monotonic() - t0
                except requests.RequestException:
                    pass
                time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait()


def run_sweep(model: Path, binary: str, parallel: int, ctx: int, probes_spec: str,
              workdir: Path, n_layers: int, extra: list[str], plan: list | None = None,
              workers: int = 1, name: str = "bench",
              engine: str = "physical") -> list[R.SweepRecord]:
    """A sweep through the real runner: its records."""
    plan = plan or [plans.block_config(4, 7, n_layers), plans.block_config(8, 11, n_layers)]
    base = E.ServerSettings(binary=binary, parallel=parallel, ctx_size=ctx,
                            extra_args=list(extra))
    opts = sweep.RunOptions(model=model, results=workdir / f"{name}.jsonl", plan=plan,
                            probes=probes_spec, quiet=True)
    tmp = workdir / f"{name}-tmp"
    tmp.mkdir()
    source = gguf_surgery.SourceModel.open(model)
    suite = sweep.Suite.resolve(probes_spec, "dev", None)
    engines = [E.make_engine(engine, source, ws, tmp, server_log=workdir / f"{name}-virtual.log")
               for ws in E.worker_settings(base, workers=workers)]
    with contextlib.redirect_stdout(io.StringIO()):  # the sweep's own report
        sweep.Sweep(opts, source, suite, engines).run()
    return R.read_records(opts.results).records


STRATEGIES = {
    "sequential": "one request at a time",
    "sweep": "rys-sweep: probes side by side",
    "per-probe": "probe after probe, all slots each",
}


def throughput(model: Path, binary: str, parallel: int, ctx: int, probes_spec: str,
               strategy: str, extra: list[str], costs: dict[str, float]
               ) -> tuple[float, int, tuple[int, int]]:
    """(seconds, items, (prompt tokens evaluated, tokens generated)) for the probes in generate
    mode on a fresh server; the token counts come from the server log.

    strategy (see STRATEGIES): "sequential" (one request at a time), "sweep" (what rys-sweep
    does: probes.run_jobs, probes side by side, slots spread by work, longest first, with
    `costs` learned like the sweep learns them from its previous config, and updated here),
    "per-probe" (probes one after another, all slots on each).
    """
    suite = P.parse_suite(probes_spec)
    jobs = {j.probe.name: j for j in
            (P.ProbeJob.select(e.probe, n=e.n, mode="generate") for e in suite)}
    with tempfile.NamedTemporaryFile(prefix="rys-bench-", suffix=".log") as logf:
        with LS.LlamaServer(model, binary=binary, parallel=parallel, ctx_size=ctx,
                            extra_args=list(extra), log_path=logf.name) as srv:
            t0 = time.monotonic()
            if strategy == "per-probe":
                res = {name: P.run_jobs(srv.url, {name: job}, slots=parallel,
                                        timeout=600)[name] for name, job in jobs.items()}
            else:
                res = P.run_jobs(srv.url, jobs, slots=1 if strategy == "sequential" else parallel,
                                 costs=costs if strategy == "sweep" else None, timeout=600)
                if strategy == "sweep":
                    costs.update(P.measured_costs(res))
            dt = time.monotonic() - t0
        text = Path(logf.name).read_text(errors="replace")
    prompt = sum(int(x) for x in re.findall(r"prompt eval time =\s+[\d.]+ ms /\s+(\d+) tokens",
                                            text))
    gen = sum(int(x) for x in re.findall(r"\|\s+eval time =\s+[\d.]+ ms /\s+(\d+) tokens", text))
    n = sum(r.n + r.n_errors for r in res.values())
    errors = sum(r.n_errors for r in res.values())
    if errors:
        print(f"  warning: {errors} item errors ({strategy})")
    return dt, n, (prompt, gen)


def sweep_overhead(source, path, binary: str, parallel: int, ctx: int, workdir: Path,
                   extra: list[str]) -> dict:
    """One config's non-probe work exactly as the sweep does it, through the same engine:
    rewrite into the tmp dir, start (health + /props verification), stop, delete."""
    settings = E.ServerSettings(binary=binary, parallel=parallel, ctx_size=ctx,
                                extra_args=list(extra))
    eng = E.PhysicalEngine(source, settings, workdir)
    t0 = time.monotonic()
    with eng.serve(path, workdir / "overhead.log") as served:
        t2 = time.monotonic()
    t4 = time.monotonic()
    return {"surgery": served.surgery_s, "start": t2 - t0 - served.surgery_s,
            "stop+delete": t4 - t2, "total": t4 - t0}


def section_overhead(src, model: Path, binary: str, args, ctx: int, work: Path,
                     extra: list[str]) -> None:
    path = layer_path.duplicate(4, 7, src.n_layers)
    bare, over = [], []
    for _ in range(args.reps):
        with gguf_surgery.temporary_rewrite(src, path, work) as f:
            bare.append(bare_start(binary, f, args.parallel, ctx, extra))
        over.append(sweep_overhead(src, path, binary, args.parallel, ctx, work, extra))
    ratios = [o["total"] / b for o, b in zip(over, bare)]
    print(f"\n1. non-probe time per config vs a bare start of the same file ({args.reps} "
          f"interleaved pairs, seconds):")
    print(f"   {'bare start':>10}{'surgery':>9}{'start':>8}{'stop+rm':>9}"
          f"{'total':>8}{'ratio':>7}")
    for b, o, r in zip(bare, over, ratios):
        print(f"   {b:>10.2f}{o['surgery']:>9.2f}{o['start']:>8.2f}{o['stop+delete']:>9.2f}"
              f"{o['total']:>8.2f}{r:>7.2f}")
    print(f"   median ratio {statistics.median(ratios):.2f}x (target <= 1.5x)")


def section_split(src, model: Path, binary: str, args, ctx: int, work: Path,
                  extra: list[str]) -> None:
    recs = run_sweep(model, binary, args.parallel, ctx, args.sweep_probes, work, src.n_layers,
                     extra)
    print(f"\n2. a small sweep, probes {args.sweep_probes}: time split per config (seconds)")
    print(f"   {'config':<16}{'surgery':>9}{'load':>8}{'probes':>9}{'stop+rm':>9}{'total':>8}")
    for r in recs:
        t = r.timings
        other = t.total_s - t.surgery_s - t.load_s - t.probe_s
        print(f"   {r.config_label:<16}{t.surgery_s:>9.2f}{t.load_s:>8.2f}{t.probe_s:>9.2f}"
              f"{other:>9.2f}{t.total_s:>8.2f}")
    mean_total = statistics.mean(r.timings.total_s for r in recs)
    print(f"   mean total per config: {mean_total:.1f}s vs the reference harness's "
          f"{REFERENCE_S_PER_CONFIG:.0f}s ({REFERENCE_S_PER_CONFIG / mean_total:.1f}x faster)")


def section_throughput(label: str, spec: str, model: Path, binary: str, args, ctx: int,
                       extra: list[str]) -> None:
    strategies = tuple(STRATEGIES)
    times: dict[str, list[float]] = {k: [] for k in strategies}
    toks: dict[str, tuple[int, int]] = {}
    costs: dict[str, float] = {}
    n = 0
    for rep in range(args.throughput_reps):
        order = strategies if rep % 2 == 0 else strategies[::-1]
        for strat in order:
            t, n, tk = throughput(model, binary, args.parallel, ctx, spec, strat, extra, costs)
            times[strat].append(t)
            toks[strat] = tk
    print(f"\n{label}. generate-mode probes {spec} ({n} items), {args.parallel} slots, fresh "
          f"server each run; prompt tokens evaluated / generated from the server log:")
    for strat in strategies:
        ts = times[strat]
        speed = [a / b for a, b in zip(times["sequential"], ts)]
        print(f"   {STRATEGIES[strat]:<44} {', '.join(f'{t:5.1f}s' for t in ts)}   "
              f"{toks[strat][0]:>5} / {toks[strat][1]:<4}  speedup "
              f"{statistics.median(speed):.2f}x")
    print("   (target: rys-sweep >= 1.6x one request at a time)")


def section_plan(n_layers: int) -> list[plans.Config]:
    """The plan sections 5 and 6 time: four 3-layer blocks."""
    return plans.plan_blocks(n_layers, [3], stride=3, start_min=2, start_max=11)


def print_rates(rates: dict[int, list[float]], one: str, many: str) -> None:
    """Configs per hour of the 1 and 2 runs, and their median ratio (pairs measured in turn)."""
    for n in (1, 2):
        name = one if n == 1 else many
        print(f"   {n} {name:<{len(many)}}: " + ", ".join(f"{r:6.0f}" for r in rates[n]))
    ratio = [b / a for a, b in zip(rates[1], rates[2])]
    print(f"   2 {many} / 1 {one}: median {statistics.median(ratio):.2f}x")


def section_workers(src, model: Path, binary: str, args, ctx: int, work: Path,
                    extra: list[str]) -> None:
    """Configs per hour of the same plan with 1 worker (all threads) and 2 workers (half the
    threads each), alternating A, B, A, B on fresh results files."""
    threads = os.cpu_count() or 2
    plan = section_plan(src.n_layers)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(args.reps if args.reps > 1 else 1):
        for workers in ((1, 2) if rep % 2 == 0 else (2, 1)):
            t = ["-t", str(max(1, threads // workers))]
            t0 = time.monotonic()
            recs = run_sweep(model, binary, args.parallel, ctx, args.sweep_probes, work,
                             src.n_layers, [*extra, *t], plan, workers,
                             name=f"w{workers}-{rep}")
            wall = time.monotonic() - t0
            rates[workers].append(len(recs) / wall * 3600)
    print(f"\n5. configs per hour, {len(plan)} configs + baseline + identity, probes "
          f"{args.sweep_probes}; 1 worker with -t {threads} vs 2 workers with -t "
          f"{max(1, threads // 2)} each:")
    print_rates(rates, "worker", "workers")


def section_shared(src, model: Path, binary: str, args, work: Path, extra: list[str]) -> None:
    """Configs per hour of one plan shared through a study (an SQLite store on this box) by 1
    rys-sweep process with every thread, and by 2 processes with half the threads each,
    alternating; each process also measures its own baseline and identity (the price of
    sharing), the rate counts the plan's configs over the wall time until the last one ends."""
    threads = os.cpu_count() or 2
    plan = plans.plan_blocks(src.n_layers, [2, 3], stride=3, start_min=1, start_max=13)
    spec = " ".join(f"{c.spec}" for c in plan)
    rates: dict[int, list[float]] = {1: [], 2: []}
    for rep in range(max(1, args.reps)):
        for procs in ((1, 2) if rep % 2 == 0 else (2, 1)):
            d = work / f"shared-{procs}-{rep}"
            d.mkdir()
            (d / "plan.txt").write_text(spec.replace(" ", "\n") + "\n")
            t = ["-t", str(max(1, threads // procs))]
            cmd = [sys.executable, "-m", "rys.sweep", str(model), "--llama-server", binary,
                   "--study", f"sqlite:///{d / 'study.db'}", "--paths-file", str(d / "plan.txt"),
                   "--probes", args.sweep_probes, "--parallel", str(args.parallel), "--quiet",
                   "--server-args", shlex.join([*extra, *t])]
            t0 = time.monotonic()
            ps = [subprocess.Popen([*cmd, "-o", str(d / f"box{k}.jsonl")], cwd=d,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                  for k in range(procs)]
            for pr in ps:
                _, err = pr.communicate()
                if pr.returncode != 0:
                    raise SystemExit(f"section 7: rys-sweep exited {pr.returncode}: {err[-500:]}")
            wall = time.monotonic() - t0
            done = sum(1 for k in range(procs) for r in R.read_records(d / f"box{k}.jsonl").records
                       if r.kind == R.Kind.CUSTOM and r.ok)
            assert done == len(plan), f"section 7: {done} of {len(plan)} configs recorded"
            rates[procs].append(done / wall * 3600)
    print(f"\n7. one plan shared through --study (SQLite on this box), {len(plan)} configs, probes "
          f"{args.sweep_probes}; configs per hour, 1 process with -t {threads} vs 2 processes "
          f"with -t {max(1, threads // 2)} each (each process measures its own baseline and "
          f"identity):")
    print_rates(rates, "process", "processes")


class PeakRss:
    """The largest resident set of any llama-server started by this process, sampled every
    20 ms (their alias token names our pid)."""

    def __init__(self) -> None:
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        mark = f"rys-{os.getpid()}-".encode()
        while not self._stop.is_set():
            for d in Path("/proc").iterdir():
                if not d.name.isdigit():
                    continue
                try:
                    if mark not in (d / "cmdline").read_bytes():
                        continue
                    for line in (d / "status").read_text().splitlines():
                        if line.startswith("VmRSS:"):
                            self.peak = max(self.peak, int(line.split()[1]) * 1024)
                except OSError:
                    continue
            time.sleep(0.02)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def section_engines(src, model: Path, args, ctx: int, work: Path, extra: list[str]) -> None:
    """The same plan served physically and virtually by the same --rys-patches binary."""
    binary = args.patched_server or str(LS.patched_build_path() or "")
    if not binary or not E.supports_layer_paths(binary):
        print("\n6. physical vs virtual: skipped, no --rys-patches llama-server (build it with "
              "scripts/build_llama_server.sh --rys-patches, or pass --patched-server)")
        return
    plan = section_plan(src.n_layers)
    rows: dict[str, list[dict]] = {"physical": [], "virtual": []}
    for rep in range(max(1, args.reps)):
        for engine in (("physical", "virtual") if rep % 2 == 0 else ("virtual", "physical")):
            with PeakRss() as rss:
                recs = run_sweep(model, binary, args.parallel, ctx, args.sweep_probes, work,
                                 src.n_layers, extra, plan, name=f"{engine}-{rep}",
                                 engine=engine)
            cfgs = [r for r in recs if r.kind not in (R.Kind.BASELINE,)]
            written = sum(src.estimate_size(list(layer_path.parse(r.path, src.n_layers)))
                          for r in cfgs if engine == "physical")
            rows[engine].append({
                "per_config": statistics.mean(r.timings.total_s for r in cfgs),
                "non_probe": statistics.mean(r.timings.total_s - r.timings.probe_s for r in cfgs),
                "load": statistics.mean(r.timings.load_s for r in cfgs),
                "tmpfs": written, "rss": rss.peak})
    print(f"\n6. the same plan ({len(plan)} blocks + identity; probes {args.sweep_probes}) on "
          f"{binary}, physical vs virtual engine ({args.reps} alternating runs each; seconds per "
          f"config after the baseline):")
    print(f"   {'engine':<10}{'s/config':>10}{'non-probe':>11}{'load/switch':>13}"
          f"{'tmpfs written':>15}{'server peak RSS':>17}")
    for engine, rs in rows.items():
        for r in rs:
            print(f"   {engine:<10}{r['per_config']:>10.2f}{r['non_probe']:>11.3f}{r['load']:>13.3f}"
                  f"{r['tmpfs'] / 2**20:>12.0f} MiB{r['rss'] / 2**20:>13.0f} MiB")
    p, v = rows["physical"], rows["virtual"]
    over = statistics.median(r["non_probe"] - r["load"] for r in v)
    print(f"   virtual non-probe time beyond the switch itself: {over:.3f} s per config "
          f"(target <= 0.05 s); non-probe time physical / virtual: "
          f"{statistics.median(a['non_probe'] / b['non_probe'] for a, b in zip(p, v)):.1f}x")
    print(f"   tmpfs written per run: physical {statistics.median(r['tmpfs'] for r in p) / 2**20:.0f}"
          f" MiB, virtual {statistics.median(r['tmpfs'] for r in v) / 2**20:.0f} MiB (target 0); "
          f"server peak RSS virtual / physical: "
          f"{statistics.median(b['rss'] / a['rss'] for a, b in zip(p, v)):.2f}x "
          f"(source model {src.file_size / 2**20:.0f} MiB)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF (default: the demo model)")
    ap.add_argument("--parallel", type=int, default=4, help="server slots (default 4)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of each pair (default 3)")
    ap.add_argument("--throughput-reps", type=int, default=2,
                    help="repetitions of each throughput strategy (default 2)")
    ap.add_argument("--probes", default=DEFAULT_SUITE_SPEC,
                    help="generate-mode probes for the throughput test (default: the default "
                    "suite)")
    ap.add_argument("--gen-probes", default="instruction:16",
                    help="generation-heavy probes for a second throughput test ('' to skip)")
    ap.add_argument("--sweep-probes", default="reasoning:8,math:4",
                    help="probes for the time-split sweep")
    ap.add_argument("--server-args", default="--swa-full",
                    help="extra llama-server arguments for every server (default: --swa-full, "
                    "as the demo sweep uses; '' for none)")
    ap.add_argument("--sections", default="1,2,3,4,5,6,7",
                    help="which parts to run (default 1,2,3,4,5,6,7: overhead, time split, "
                    "throughput on --probes, throughput on --gen-probes, 1 vs 2 workers, "
                    "physical vs virtual engine, 1 vs 2 processes sharing a study)")
    ap.add_argument("--patched-server", metavar="PATH",
                    help="the --rys-patches llama-server for section 6 (default: the build "
                    "script's cached build)")
    args = ap.parse_args(argv)
    try:
        sections = {int(x) for x in args.sections.split(",") if x.strip()}
    except ValueError:
        ap.error(f"--sections: comma-separated numbers 1-7, got {args.sections!r}")
    if not sections or not sections <= {1, 2, 3, 4, 5, 6, 7}:
        ap.error(f"--sections: comma-separated numbers 1-7, got {args.sections!r}")
    extra = shlex.split(args.server_args)
    model = Path(args.model) if args.model else LS.demo_model_path()
    binary = LS.find_llama_server()
    ctx = E.DEFAULT_CTX_PER_SLOT * args.parallel
    src = gguf_surgery.SourceModel.open(model)
    print(f"model {model.name} ({src.arch}, {src.n_layers} layers, "
          f"{src.file_size / 2**20:.0f} MiB); {LS.server_version(binary)}; "
          f"parallel {args.parallel}, ctx {ctx}, server args {extra}")
    # Pairs are interleaved (A, B, A, B, ...) and ratios taken per pair, then the median: on a
    # shared machine the load drifts, and a pair measured back to back sees about the same load.
    with gguf_surgery.scratch_dir() as scratch, \
            tempfile.TemporaryDirectory(prefix="rys-bench-", dir=scratch) as d:
        if 1 in sections:
            section_overhead(src, model, binary, args, ctx, Path(d), extra)
        if 2 in sections:
            section_split(src, model, binary, args, ctx, Path(d), extra)
        if 5 in sections:
            section_workers(src, model, binary, args, ctx, Path(d), extra)
        if 6 in sections:
            section_engines(src, model, args, ctx, Path(d), extra)
        if 7 in sections:
            section_shared(src, model, binary, args, Path(d), extra)
    for label, spec in (("3", args.probes), ("4", args.gen_probes)):
        if int(label) in sections and spec:
            section_throughput(label, spec, model, binary, args, ctx, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
