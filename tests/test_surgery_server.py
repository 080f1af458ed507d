"""Rewritten demo models under a real llama-server: identity is exact, duplicated paths load
and answer, and the Gemma 3 sliding-window kinds follow the layers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests

import gguf_fixtures as F
from rys import gguf_surgery as S
from rys import layer_path as L

pytestmark = pytest.mark.server

# llama.cpp's model/KV-cache info lines (print_info, llama_kv_cache) need log verbosity 4
VERBOSE = ["-lv", "4"]
PROMPT = "The capital of France is Paris. The capital of Germany is"


def _complete(server, n_predict: int = 16, n_probs: int = 5) -> dict:
    r = requests.post(server.url + "/completion", json={
        "prompt": PROMPT, "n_predict": n_predict, "temperature": 0, "seed": 1234,
        "n_probs": n_probs, "cache_prompt": False,
    }, timeout=300)
    r.raise_for_status()
    return r.json()


def _log(server) -> str:
    return Path(server.log_path).read_text(errors="replace")


def _kv_layers(log: str) -> tuple[int, int]:
    """(non-SWA, SWA) layer counts of the last iSWA KV cache llama.cpp created."""
    base = log.rfind("creating non-SWA KV cache")
    swa = log.rfind("creating     SWA KV cache")
    assert base >= 0 and swa > base, "no iSWA KV cache in the server log"
    pat = re.compile(r"\(\s*\d+ cells,\s*(\d+) layers")
    return int(pat.search(log, base).group(1)), int(pat.search(log, swa).group(1))


@pytest.fixture(scope="module")
def demo_src(demo_model):
    return S.SourceModel.open(demo_model)


def test_identity_rewrite_answers_exactly_like_the_original(server_factory, demo_model, demo_src, tmp_path):
    assert demo_src.arch == "gemma3" and demo_src.n_layers == 18
    out = S.rewrite(demo_src, tmp_path / "identity.gguf", L.identity(demo_src.n_layers))
    original = server_factory(demo_model)
    want = _complete(original)
    original.stop()
    rewritten = server_factory(out)
    got = _complete(rewritten)
    assert got["content"] == want["content"]
    assert got["completion_probabilities"] == want["completion_probabilities"]
    assert len(got["completion_probabilities"]) == 16
    assert len(got["completion_probabilities"][0]["top_logprobs"]) == 5


def test_duplicated_path_loads_and_answers(server_factory, demo_src, tmp_path):
    path = L.duplicate(3, 7, 18)
    with S.temporary_rewrite(demo_src, path, tmp_dir=tmp_path) as out:
        server = server_factory(out, extra_args=VERBOSE)
        res = _complete(server)
        assert res["content"].strip()
        assert len(res["completion_probabilities"]) == res["tokens_predicted"] > 0
        assert re.search(r"n_layer\s+=\s+22\b", _log(server))
        server.stop()
    assert not out.exists()


def test_gemma3_global_layer_stays_global_in_every_copy(server_factory, demo_model, demo_src, tmp_path):
    path = list(range(6)) + [5, 5] + list(range(6, 18))  # layer 5 (global) three times
    out = S.rewrite(demo_src, tmp_path / "g5x3.gguf", path)
    swa = F.field_value(F.read(out), "gemma3.attention.sliding_window_pattern")
    globals_at = [pos for pos, s in enumerate(swa) if not s]
    assert [path[pos] for pos in globals_at] == [5, 5, 5, 11, 17]
    # llama.cpp's own view: one non-SWA KV layer per global position (3 in the original)
    original = server_factory(demo_model, extra_args=VERBOSE)
    assert _kv_layers(_log(original)) == (3, 15)
    original.stop()
    server = server_factory(out, extra_args=VERBOSE)
    assert _kv_layers(_log(server)) == (5, 15)
    assert _complete(server, n_predict=4)["content"].strip()
