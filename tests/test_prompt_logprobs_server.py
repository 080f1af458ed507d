"""Prompt (echo) logprobs on the --rys-patches llama-server, and lm-eval's multiple-choice tasks
through rys-eval on it.

Each echoed prompt-token logprob must equal, to float tolerance, the next-token logprob the stock
server reports for the same prefix via /completion with n_probs (for tokens in its top 5); with
several slots and a cached prefix the answers stay the same; an original offline multiple-choice
task (tests/data/lm_eval_tasks/rys_capitals/rys_obvious.*) runs through real lm-eval and scores
well above chance on the demo model. (On a stock server the same task is refused with one line:
test_compare_eval_tasks.py.)
"""

from __future__ import annotations

import concurrent.futures as cf
import json
from pathlib import Path

import pytest
import requests

from rys import compare_eval as ce
from rys import llama_server as LS

pytestmark = pytest.mark.server

TASKS_DIR = Path(__file__).resolve().parent / "data" / "lm_eval_tasks"
# Same kernels on both sides (see test_virtual_server.py), and one token per micro-batch: with
# larger batches llama.cpp's CPU results depend on the batch's shape (up to 0.5 nats apart on this
# 4-bit model between a prompt evaluated whole and its prefix evaluated alone, stock vs stock);
# one token at a time both servers do the same arithmetic, and then they agree to ~1e-4.
SAME_KERNELS = ["--no-repack", "-t", "2", "-ub", "1"]
TOL = 1e-3
PROMPTS = [
    "One, two, three, four, five, six",
    "The quick brown fox jumps over the lazy dog because it wanted to see the other side.",
    " ".join(f"Line {i}: the lamp in room {i % 7} is {('on', 'off')[i % 2]}." for i in range(5)),
]


def _echo(url: str, tokens: list[int], n: int = 5) -> dict:
    r = requests.post(url + "/v1/completions", json={
        "prompt": tokens, "echo": True, "logprobs": n, "max_tokens": 0, "temperature": 0},
        timeout=600)
    r.raise_for_status()
    return r.json()["choices"][0]["logprobs"]


def _tokens(url: str, text: str) -> list[int]:
    r = requests.post(url + "/tokenize", json={"content": text, "add_special": True}, timeout=60)
    return r.json()["tokens"]


def _stock_next(url: str, prefix: list[int]) -> dict[int, float]:
    r = requests.post(url + "/completion", json={
        "prompt": prefix, "n_predict": 1, "n_probs": 5, "temperature": 0,
        "post_sampling_probs": False, "cache_prompt": False}, timeout=600)
    r.raise_for_status()
    return {t["id"]: t["logprob"] for t in r.json()["completion_probabilities"][0]["top_logprobs"]}


@pytest.fixture(scope="module")
def patched(patched_server_bin, demo_model, tmp_path_factory):
    with LS.LlamaServer(demo_model, binary=patched_server_bin, parallel=4, ctx_size=8192,
                        extra_args=[*SAME_KERNELS, *ce.prompt_logprobs_args(patched_server_bin)],
                        log_path=tmp_path_factory.mktemp("p") / "s.log") as srv:
        yield srv


def test_echoed_logprobs_equal_the_stock_servers_next_token_logprobs(
        patched, llama_server_bin, demo_model, tmp_path):
    with LS.LlamaServer(demo_model, binary=llama_server_bin, parallel=1, ctx_size=2048,
                        extra_args=SAME_KERNELS, log_path=tmp_path / "stock.log") as stock:
        checked = worst = 0.0
        for text in PROMPTS:
            toks = _tokens(patched.url, text)
            lp = _echo(patched.url, toks)
            assert len(lp["token_logprobs"]) == len(toks) and lp["token_logprobs"][0] is None
            assert lp["top_logprobs"][0] is None
            step = max(1, len(toks) // 12)  # every position of short prompts, a sample of long
            for i in range(1, len(toks), step):
                ref = _stock_next(stock.url, toks[:i])
                top = lp["top_logprobs"][i]
                assert len(top) == 5
                if toks[i] in ref:
                    diff = abs(lp["token_logprobs"][i] - ref[toks[i]])
                    worst = max(worst, diff)
                    checked += 1
                    assert diff < TOL, (text[:20], i, lp["token_logprobs"][i], ref[toks[i]])
                # the same top 5 (as sets of logprob values, to tolerance)
                mine = sorted(top.values(), reverse=True)
                theirs = sorted(ref.values(), reverse=True)
                assert all(abs(a - b) < TOL for a, b in zip(mine, theirs)), (i, mine, theirs)
        assert checked >= 15, "too few prompt tokens were in the stock top 5 to compare"


def test_several_slots_and_a_cached_prefix_give_the_same_logprobs(patched):
    """Eight requests at once on four slots, sharing a long prefix, repeated after it is cached:
    every answer equals the answer to the same request alone."""
    prefix = PROMPTS[2]
    texts = [prefix + tail for tail in (" All lamps", " The last", " Room 3", " None of")] * 2
    toks = [_tokens(patched.url, t) for t in texts]
    alone = [_echo(patched.url, t)["token_logprobs"] for t in toks[:4]]
    with cf.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda t: _echo(patched.url, t)["token_logprobs"], toks))
    for k, got in enumerate(together):
        want = alone[k % 4]
        assert got[0] is None and len(got) == len(want)
        assert max(abs(a - b) for a, b in zip(got[1:], want[1:])) < TOL
    # the prefix is cached in a slot now: an echo request still gets every prompt token's logprob
    again = _echo(patched.url, toks[0])["token_logprobs"]
    assert len(again) == len(toks[0]) and max(abs(a - b) for a, b in
                                              zip(again[1:], alone[0][1:])) < TOL


def test_a_multiple_choice_task_runs_through_lm_eval_well_above_chance(
        patched_server_bin, demo_model, tmp_path, capsys):
    out = tmp_path / "out"
    code = ce.main(["run", str(demo_model), "--tasks", "rys_obvious", "--include-path",
                    str(TASKS_DIR), "--offline", "--out", str(out), "--llama-server",
                    patched_server_bin, "--engine", "physical", "--server-args",
                    "--no-repack -t 2", "-q"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    meta = json.loads((out / "baseline" / ce.RUN_META).read_text())
    assert meta["status"] == "ok"
    assert ce.PROMPT_LOGPROBS_FLAG in meta["server"]["args"]  # rys-eval turned them on
    assert ce.LM_EVAL_MODEL in meta["lm_eval"]["command"]
    run, _ = ce.load_run(out / "baseline")
    acc = run.tasks["rys_obvious"][("acc", "none")]
    assert acc.value >= 0.6  # chance is 0.25 (four choices)
    samples = list((out / "baseline").glob("samples_rys_obvious_*.jsonl"))
    assert samples and len(samples[0].read_text().splitlines()) == 20


def test_the_server_is_asked_whether_it_returns_prompt_logprobs(patched, llama_server_bin,
                                                                demo_model, tmp_path):
    ok, answer = ce.echo_logprobs_answer(patched.url)
    assert ok and answer == "prompt logprobs"
    with LS.LlamaServer(demo_model, binary=llama_server_bin, parallel=1, ctx_size=512,
                        log_path=tmp_path / "stock.log") as stock:
        ok, answer = ce.echo_logprobs_answer(stock.url)
    assert not ok and "without prompt logprobs" in answer
