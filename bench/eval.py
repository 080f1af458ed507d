"""Bench: log-likelihood requests per second on the --rys-patches llama-server, 1 vs 4 slots.

The requests are what lm-eval sends for a multiple-choice task through rys-eval
(`compare_eval.register_lm_eval_model`): per item and choice, the context and the choice as token
ids (BOS first), `echo` with `logprobs: 1` and `max_tokens: 1`, from `--concurrency` clients
(default: one per slot). The task is the offline `rys_obvious` (20 items x 4 choices); `--repeat`
sends it several times. Runs alternate (1 slot, 4 slots, 4, 1, ...) on fresh servers and the
ratio is taken per pair, since the load on a shared machine drifts.

    .venv/bin/python bench/eval.py [--model PATH] [--patched-server PATH] [--reps 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
from rys import compare_eval as ce
from rys import llama_server as LS

TASK = ROOT / "tests" / "data" / "lm_eval_tasks" / "rys_capitals" / "rys_obvious.jsonl"
CTX_PER_SLOT = 1024


def task_items() -> list[dict]:
    return [json.loads(line) for line in TASK.read_text().splitlines()]


def requests_for(url: str, repeat: int) -> list[list[int]]:
    """Token ids of context + choice for every item and choice, BOS first (as rys-eval sends)."""
    def tok(text: str, special: bool) -> list[int]:
        r = requests.post(url + "/tokenize", json={"content": text, "add_special": special},
                          timeout=60)
        r.raise_for_status()
        return r.json()["tokens"]

    out = []
    for item in task_items():
        ctx = tok(item["context"], True)
        out += [ctx + tok(choice, False) for choice in item["choices"]]
    return out * repeat


def one(url: str, prompt: list[int]) -> None:
    r = requests.post(url + "/v1/completions", json={
        "prompt": prompt, "echo": True, "logprobs": 1, "max_tokens": 1, "temperature": 0},
        timeout=600)
    r.raise_for_status()
    lp = r.json()["choices"][0]["logprobs"]["token_logprobs"]
    assert lp[0] is None and len(lp) == len(prompt) + 1, "the server returned no prompt logprobs"


def rate(binary: str, model: Path, slots: int, extra: list[str], repeat: int) -> float:
    with tempfile.NamedTemporaryFile(prefix="rys-bench-eval-", suffix=".log") as log, \
            LS.LlamaServer(model, binary=binary, parallel=slots, ctx_size=CTX_PER_SLOT * slots,
                           extra_args=extra, log_path=log.name) as srv:
        prompts = requests_for(srv.url, repeat)
        one(srv.url, prompts[0])  # warm up
        t0 = time.monotonic()
        with cf.ThreadPoolExecutor(slots) as pool:
            list(pool.map(lambda p: one(srv.url, p), prompts))
        return len(prompts) / (time.monotonic() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF (default: the demo model)")
    ap.add_argument("--patched-server", help="the --rys-patches llama-server (default: the build "
                    "script's cached build)")
    ap.add_argument("--reps", type=int, default=2, help="pairs of runs (default 2)")
    ap.add_argument("--repeat", type=int, default=2, help="times the task is sent per run")
    ap.add_argument("--server-args", default="", help="extra llama-server arguments")
    args = ap.parse_args(argv)
    binary = args.patched_server or str(LS.patched_build_path() or "")
    if not binary:
        ap.error("no --rys-patches llama-server: build one with scripts/build_llama_server.sh "
                 "--rys-patches, or pass --patched-server")
    model = Path(args.model) if args.model else LS.demo_model_path()
    extra = shlex.split(args.server_args)
    extra = [*ce.prompt_logprobs_args(binary, extra), *extra]  # as rys-eval starts it
    print(f"model {model.name}; {binary}; {LS.server_version(binary)}; server args {extra}")
    rates: dict[int, list[float]] = {1: [], 4: []}
    for rep in range(args.reps):
        for slots in ((1, 4) if rep % 2 == 0 else (4, 1)):
            rates[slots].append(rate(binary, model, slots, extra, args.repeat))
    n = sum(len(item["choices"]) for item in task_items()) * args.repeat
    print(f"log-likelihood requests per second ({n} requests per run, as rys-eval sends them for "
          f"a 4-choice task; one client per slot):")
    for slots in (1, 4):
        print(f"   {slots} slot{'s' if slots > 1 else ' '}: "
              + ", ".join(f"{r:6.2f}" for r in rates[slots]))
    print(f"   4 slots / 1 slot: median "
          f"{statistics.median(b / a for a, b in zip(rates[1], rates[4])):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
