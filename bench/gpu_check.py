"""The GPU check of the --rys-patches llama-server (issue #21): one table, measured in one run.

    bench/gpu_check.sh                   # builds the patched server for this machine's GPU, runs this
    .venv/bin/python bench/gpu_check.py --patched-server PATH [--backend cuda] [--model GGUF]

On the demo model (or --model), with one patched llama-server binary for both engines:

1. bit-identity: greedy tokens and raw top-5 logprobs of a short and a long prompt for a dup, a
   skip and a reorder path, the physical rewrite (a fresh server on the rewritten file) against
   the virtual path (one server switched in place), at full offload (-ngl 99) and at a partial
   -ngl (half the layers, the last ones: every altered layer stays on the host in both, so both
   place every position on the same device); on a CPU build once, without -ngl;
2. device memory (llama.cpp's own breakdown at exit: model + context + compute) of the identity
   and of a 3-layer duplicate, physical and virtual (the virtual server after switching);
3. switch time: POST /layer-path between the identity and the duplicate, as the server and as the
   client measure it;
4. seconds per config of a sweep of 6 three-layer blocks (--blocks; + baseline and identity),
   physical engine vs virtual engine;
5. the same sweep with 2 workers (2 virtual servers on one device) vs 1: configs per hour.

Ratios compare runs made here, in this run. On a CPU build (CI runs that part: tests/
test_gpu_check.py) the offload rows collapse into one and the memory is the host's.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import sweep as bench_sweep  # noqa: E402  (bench/sweep.py: run_sweep, the sweep through the runner)

from rys import engine as E  # noqa: E402
from rys import gguf_surgery  # noqa: E402
from rys import layer_path  # noqa: E402
from rys import llama_server as LS  # noqa: E402
from rys import plans  # noqa: E402
from rys import sweep_record as R  # noqa: E402

SHORT = "The capital of France is"
LONG = " ".join(f"Item {i}: the {('red', 'green', 'blue')[i % 3]} box on shelf {i % 7} holds "
                f"{2 * i + 3} coins." for i in range(40)) + " Altogether, the boxes"
BREAKDOWN = re.compile(r"common_memory_breakdown_print: \|\s+- (\S+).*?\|(.*)\|")


def paths_to_check(n: int) -> dict[str, list[int]]:
    """A dup, a skip and a reorder, all before the second half (see the module docstring)."""
    q = max(2, n // 4)
    return {"dup": layer_path.duplicate(q, q + 3, n),
            "skip": [i for i in range(n) if i != q + 1],
            "reorder": [*range(q), q + 1, q, *range(q + 2, n)]}


def dup3(n: int) -> list[int]:
    return layer_path.duplicate(n // 2 - 1, n // 2 + 2, n)


def answers(url: str) -> list:
    out = []
    for prompt in (SHORT, LONG):
        r = requests.post(url + "/completion", json={
            "prompt": prompt, "n_predict": 8, "temperature": 0, "n_probs": 5,
            "post_sampling_probs": False, "cache_prompt": False}, timeout=600)
        r.raise_for_status()
        body = r.json()
        out.append([body.get("tokens"), [[(t["id"], t["logprob"]) for t in p["top_logprobs"]]
                                         for p in body["completion_probabilities"]]])
    return out


def switch(url: str, path: list[int]) -> float:
    """Switch a running patched server; the server's own t_switch_ms."""
    r = requests.post(url + E.SWITCH_ENDPOINT, json={"layer_path": layer_path.format(path)},
                      timeout=600)
    if r.status_code != 200:
        raise RuntimeError(f"switch to {layer_path.format(path)}: {LS.error_message(r) or r.text}")
    return float(r.json()["t_switch_ms"])


@dataclass
class Check:
    binary: str
    model: Path
    src: gguf_surgery.SourceModel
    work: Path
    extra: list[str]

    def server(self, model: Path, log: str, *more: str) -> LS.LlamaServer:
        return LS.LlamaServer(model, binary=self.binary, parallel=1, ctx_size=2048,
                              log_path=self.work / log,
                              extra_args=[*E.switch_args(self.binary), *self.extra, *more])

    @contextlib.contextmanager
    def rewritten(self, path: list[int]):
        with gguf_surgery.temporary_rewrite(self.src, path, self.work) as f:
            yield f

    def identity_rows(self, ngl: list[str]) -> list[tuple[str, str, str]]:
        n = self.src.n_layers
        rows = []
        physical = {}
        for name, path in paths_to_check(n).items():
            with self.rewritten(path) as f, self.server(f, f"phys-{name}.log", *ngl) as srv:
                physical[name] = answers(srv.url)
        with self.server(self.model, "virt.log", *ngl) as srv:
            for name, path in paths_to_check(n).items():
                switch(srv.url, path)
                same = answers(srv.url) == physical[name]
                rows.append((f"bit-identical, {name} {layer_path.format(path)}",
                             " ".join(ngl) or "cpu", "yes" if same else "NO"))
        return rows

    def memory_and_switch_rows(self, ngl: list[str], n: int = 7) -> list[tuple[str, str, str]]:
        """Device memory of the identity and of a 3-layer duplicate, physical and virtual; the
        virtual server switches n times between the identity and the duplicate (ending on it)."""
        path, ident = dup3(self.src.n_layers), list(range(self.src.n_layers))
        trace = ["-lv", "4"]  # the breakdown a server prints at exit
        with self.server(self.model, "mem-id.log", *ngl, *trace) as srv:
            pass
        mem = {"identity": device_memory(srv.log_path)}
        with self.rewritten(path) as f, self.server(f, "mem-phys.log", *ngl, *trace) as srv:
            pass
        mem["physical"] = device_memory(srv.log_path)
        server_ms, client_ms = [], []
        with self.server(self.model, "mem-virt.log", *ngl, *trace) as srv:
            for k in range(n):
                t0 = time.monotonic()
                server_ms.append(switch(srv.url, path if k % 2 == 0 else ident))
                client_ms.append((time.monotonic() - t0) * 1000)
        mem["virtual"] = device_memory(srv.log_path)
        rows = []
        for label, per_dev in mem.items():
            for dev, (model, ctx, compute) in per_dev.items():
                total = model + ctx + compute
                delta = total - sum(mem["identity"].get(dev, (0, 0, 0)))
                what = "identity" if label == "identity" else \
                    f"dup {layer_path.format(path)}, {label}"
                rows.append((f"memory {dev}, MiB (model + context + compute)", what,
                             f"{total} = {model} + {ctx} + {compute}"
                             + ("" if label == "identity" else f" ({delta:+d})")))
        rows.append(("switch time, ms (server / client, median)",
                     f"{n} switches identity <-> dup",
                     f"{statistics.median(server_ms):.0f} / {statistics.median(client_ms):.0f}"))
        return rows


def device_memory(log_path) -> dict[str, tuple[int, int, int]]:
    """(model, context, compute) MiB per device from the breakdown a server prints at exit."""
    text = Path(log_path).read_text(errors="replace")
    last = text.rsplit("memory breakdown [MiB]", 1)[-1]
    out = {}
    for name, cols in BREAKDOWN.findall(last):
        nums = [int(x) for x in re.findall(r"-?\d+", cols)]
        if len(nums) == 7:  # a device: total = free + (self = model + context + compute) + unaccounted
            out[name] = tuple(nums[3:6])
        elif len(nums) == 4 and name == "Host":  # self = model + context + compute
            out[name] = tuple(nums[1:4])
    if not out:
        raise RuntimeError(f"no memory breakdown in {log_path}")
    return out


def sweep_rows(c: Check, probes: str, blocks: int, ngl: list[str],
               cpu: bool) -> list[tuple[str, str, str]]:
    n = c.src.n_layers
    plan = plans.plan_blocks(n, [3], stride=max(1, (n - 5) // blocks), start_min=2)[:blocks]
    per_config: dict[str, float] = {}
    rate: dict[int, float] = {}
    threads = os.cpu_count() or 2

    def run(engine: str, workers: int, name: str) -> tuple[float, float]:
        extra = [*c.extra, *ngl]
        if cpu:  # workers share the CPU: half the threads each (bench/sweep.py section 5)
            extra += ["-t", str(max(1, threads // workers))]
        t0 = time.monotonic()
        recs = bench_sweep.run_sweep(c.model, c.binary, 2, 2 * E.DEFAULT_CTX_PER_SLOT, probes,
                                     c.work, n, extra, plan, workers, name=name, engine=engine)
        wall = time.monotonic() - t0
        cfgs = [r for r in recs if r.kind != R.Kind.BASELINE]
        return statistics.mean(r.timings.total_s for r in cfgs), len(recs) / wall * 3600

    per_config["physical"], _ = run("physical", 1, "phys")
    per_config["virtual"], rate[1] = run("virtual", 1, "virt1")
    _, rate[2] = run("virtual", 2, "virt2")
    label = f"s/config, {len(plan)} blocks of 3 + identity, probes {probes}"
    return [(label, "physical engine", f"{per_config['physical']:.2f}"),
            (label, "virtual engine", f"{per_config['virtual']:.2f} "
             f"({per_config['physical'] / per_config['virtual']:.2f}x faster)"),
            ("configs per hour, virtual", "1 worker", f"{rate[1]:.0f}"),
            ("configs per hour, virtual", "2 workers, one device",
             f"{rate[2]:.0f} ({rate[2] / rate[1]:.2f}x)")]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patched-server", help="the --rys-patches llama-server (default: the build "
                    "script's cached CPU build)")
    ap.add_argument("--backend", default="cpu", help="what the binary was built for (cpu: one "
                    "offload setting, host memory)")
    ap.add_argument("--model", help="GGUF (default: the demo model)")
    ap.add_argument("--partial-ngl", type=int, help="-ngl of the partial offload rows (default: "
                    "half the layers)")
    ap.add_argument("--probes", default="reasoning:8,math:4", help="probes of the sweep rows")
    ap.add_argument("--blocks", type=int, default=6, help="3-layer blocks of the sweep rows "
                    "(default 6)")
    ap.add_argument("--server-args", default="", help="extra llama-server arguments")
    args = ap.parse_args(argv)
    if args.blocks < 1:
        ap.error(f"--blocks must be >= 1, got {args.blocks}")
    binary = args.patched_server or str(LS.patched_build_path() or "")
    if not binary or not E.supports_layer_paths(binary):
        ap.error("no --rys-patches llama-server: build it with scripts/build_llama_server.sh "
                 "--rys-patches, or pass --patched-server")
    model = Path(args.model) if args.model else LS.demo_model_path()
    src = gguf_surgery.SourceModel.open(model)
    cpu = args.backend == "cpu"
    extra = shlex.split(args.server_args)
    offloads = [[]] if cpu else [["-ngl", "99"],
                                 ["-ngl", str(args.partial_ngl or src.n_layers // 2)]]
    print(f"GPU check: {model.name} ({src.arch}, {src.n_layers} layers); backend {args.backend}; "
          f"{binary}; {LS.server_version(binary)}; server args {extra}", flush=True)
    rows: list[tuple[str, str, str]] = []
    with gguf_surgery.scratch_dir() as scratch, \
            tempfile.TemporaryDirectory(prefix="rys-gpu-check-", dir=scratch) as d:
        c = Check(binary, model, src, Path(d), extra)
        for ngl in offloads:
            rows += c.identity_rows(ngl)
        rows += c.memory_and_switch_rows(offloads[0])
        rows += sweep_rows(c, args.probes, args.blocks, offloads[0], cpu)
    print("\n| check | setting | result |\n|---|---|---|")
    for check, setting, result in rows:
        print(f"| {check} | {setting} | {result} |")
    return 0 if all(r[2] != "NO" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
