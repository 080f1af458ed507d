"""Virtual layer paths: the --rys-patches llama-server runs a path in place (`--layer-path` at load,
`POST /layer-path` at run time), and it computes exactly what the physical rewrite computes.

For dup, triple, skip, reorder and descending paths on the demo model, greedy text, token ids and
top-5 log-probabilities of a short prompt and of one longer than Gemma 3's 512-token sliding
window are compared as exact floats between (a) rys-path's physical rewrite on the stock
llama-server, (b) `--layer-path` at load and (c) a runtime switch from another path; switching
back to the identity reproduces the unmodified model. Then the engine and a virtual sweep.

Both binaries run with `--no-repack`: the patched CPU build compiles AMX out where it traps
(scripts/build_llama_server.sh), so it would otherwise use ggml's repacked kernels while the stock
build (with AMX compiled in) needs --no-repack on such a VM; bit-identical needs the same kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from rys import engine as E
from rys import gguf_surgery
from rys import layer_path
from rys import llama_server as LS
from rys import sweep
from rys import sweep_record as R

pytestmark = pytest.mark.server

SAME_KERNELS = ["--no-repack", "-t", "2"]
PATHS = {
    "dup": "0..7,4..17",
    "triple": "0..7,(4..7)x2,8..17",
    "skip": "0..5,7..17",
    "reorder": "0..3,5,4,6..17",
    "descending": "0..9,13..10,14..17",
}
SHORT = "The capital of France is"
LONG = " ".join(f"Note {i}: the {('red', 'green', 'blue', 'grey', 'gold')[i % 5]} crate on shelf "
                f"{i % 9} holds {3 * i + 1} marbles." for i in range(40)) + " In total, the crates"


def _answer(url: str, prompt: str) -> dict:
    """Greedy tokens and the top-5 of the raw distribution at each step, as the server says."""
    r = requests.post(url + "/completion", json={
        "prompt": prompt, "n_predict": 8, "temperature": 0, "seed": 7, "n_probs": 5,
        "post_sampling_probs": False, "cache_prompt": False}, timeout=600)
    r.raise_for_status()
    body = r.json()
    steps = [[(t["id"], t["logprob"]) for t in p["top_logprobs"]]
             for p in body["completion_probabilities"]]
    return {"content": body["content"], "tokens": body.get("tokens"), "steps": steps}


def _answers(url: str) -> dict:
    return {"short": _answer(url, SHORT), "long": _answer(url, LONG)}


def _serve(binary: str, model, log: Path, *extra: str) -> LS.LlamaServer:
    return LS.LlamaServer(model, binary=binary, parallel=1, ctx_size=2048, log_path=log,
                          extra_args=[*SAME_KERNELS, *extra])


@pytest.fixture(scope="module")
def physical(llama_server_bin, demo_model, tmp_path_factory) -> dict:
    """(a) The stock server on rys-path's physical rewrite of each path (and the original)."""
    tmp = tmp_path_factory.mktemp("physical")
    src = gguf_surgery.SourceModel.open(demo_model)
    out = {}
    with _serve(llama_server_bin, demo_model, tmp / "orig.log") as srv:
        out["identity"] = _answers(srv.url)
        n_tokens = len(requests.post(srv.url + "/tokenize", json={"content": LONG},
                                     timeout=60).json()["tokens"])
    assert n_tokens > 600  # beyond Gemma 3's 512-token sliding window
    for name, spec in PATHS.items():
        with gguf_surgery.temporary_rewrite(src, layer_path.parse(spec, 18), tmp) as f, \
                _serve(llama_server_bin, f, tmp / f"{name}.log") as srv:
            out[name] = _answers(srv.url)
    return out


@pytest.mark.parametrize("name", sorted(PATHS))
def test_layer_path_at_load_is_bit_identical_to_the_rewrite(name, physical, patched_server_bin,
                                                            demo_model, tmp_path):
    with _serve(patched_server_bin, demo_model, tmp_path / "s.log",
                "--layer-path", PATHS[name]) as srv:
        assert srv.props["layer_path"] == layer_path.parse(PATHS[name], 18)
        assert _answers(srv.url) == physical[name]


def test_runtime_switches_are_bit_identical_and_back_to_the_identity(physical, patched_server_bin,
                                                                      demo_model, tmp_path):
    # (c) start on another path, switch to each one, then back to the identity
    with _serve(patched_server_bin, demo_model, tmp_path / "s.log", "--layer-path", "17..0",
                E.SWITCH_FLAG) as srv:
        for name, spec in PATHS.items():
            r = requests.post(srv.url + "/layer-path", json={"layer_path": spec}, timeout=600)
            assert r.status_code == 200, r.text
            assert r.json()["layer_path"] == layer_path.parse(spec, 18)
            assert _answers(srv.url) == physical[name], name
        r = requests.post(srv.url + "/layer-path", json={"layer_path": "0..17"}, timeout=600)
        assert r.status_code == 200
        assert _answers(srv.url) == physical["identity"]
        # a bad path is refused with the reason; the live path is untouched
        bad = requests.post(srv.url + "/layer-path", json={"layer_path": "0..40"}, timeout=600)
        assert bad.status_code == 400 and "out of range" in bad.json()["error"]["message"]
        assert requests.get(srv.url + "/props", timeout=60).json()["layer_path"] == list(range(18))
        assert _answers(srv.url)["short"] == physical["identity"]["short"]


def test_virtual_engine_switches_and_reports_refusals(patched_server_bin, demo_model, tmp_path):
    src = gguf_surgery.SourceModel.open(demo_model)
    settings = E.ServerSettings(binary=patched_server_bin, extra_args=list(SAME_KERNELS),
                                parallel=1, ctx_size=2048)
    with E.VirtualEngine(src, settings, server_log=tmp_path / "v.log") as eng:
        path = layer_path.parse(PATHS["dup"], 18)
        with eng.serve(path, tmp_path / "ignored.log") as served:
            assert served.surgery_s == 0.0
            assert requests.get(served.url + "/props", timeout=60).json()["layer_path"] == path
            pid = served.server.proc.pid
        with eng.serve(None, tmp_path / "ignored.log") as served:  # the baseline: identity
            assert served.server.proc.pid == pid  # the same server: no reload
            assert requests.get(served.url + "/props", timeout=60).json()["layer_path"] == \
                list(range(18))
        with pytest.raises(E.EngineError, match="out of range"):
            eng.switch([0, 1, 99])
        assert eng.live_path == list(range(18))
    assert not (tmp_path / "ignored.log").exists()  # one server log, the engine's
    assert (tmp_path / "v.log").stat().st_size > 0


def test_a_virtual_sweep_records_its_engine_and_writes_no_model(patched_server_bin, demo_model,
                                                               tmp_path, capsys):
    tmp_dir = tmp_path / "shm"
    tmp_dir.mkdir()
    (tmp_path / "paths.txt").write_text("0..8,6..17  # dup 6-8\n0..5,7..17  # skip 6\n")
    base = [str(demo_model), "--paths-file", str(tmp_path / "paths.txt"), "--probes",
            "reasoning:3", "--mode", "logprob", "--parallel", "2", "--ctx-size", "2048", "--quiet",
            "--llama-server", patched_server_bin, "--tmp-dir", str(tmp_dir)]
    out_v, out_p = tmp_path / "v.jsonl", tmp_path / "p.jsonl"
    assert sweep.main([*base, "-o", str(out_v)]) == 0  # auto: the binary supports it
    recs = R.read_records(out_v).records
    assert [r.kind for r in recs] == ["baseline", "identity", "custom", "custom"]
    assert all(r.ok and r.server.engine == "virtual" and r.timings.surgery_s == 0 for r in recs)
    assert all(r.settings.engine == "virtual" for r in recs)
    assert list(tmp_dir.iterdir()) == []  # nothing rewritten
    assert len({r.server.log for r in recs}) == 1  # one server, one log
    # the physical engine on the same binary: other keys, so the two never resume each other
    assert sweep.main([*base, "-o", str(out_p), "--engine", "physical"]) == 0
    phys = R.read_records(out_p).records
    assert {r.key for r in phys}.isdisjoint({r.key for r in recs})
    assert all(r.server.engine == "physical" for r in phys)
    # a rerun resumes everything
    assert sweep.main([*base, "-o", str(out_v)]) == 0
    assert len(R.read_records(out_v).records) == 4
    summary = json.loads(out_v.with_name("v.summary.json").read_text())
    assert summary["engine"] == "virtual" and summary["counts"]["resumed"] == 4


def test_engine_virtual_on_a_stock_binary_is_one_clear_line(llama_server_bin, demo_model,
                                                             tmp_path, capsys):
    rc = sweep.main([str(demo_model), "--engine", "virtual", "--llama-server", llama_server_bin,
                     "-o", str(tmp_path / "r.jsonl"), "--probes", "reasoning:2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "--engine virtual needs a llama-server that runs layer paths in place" in err[0]
    assert "--rys-patches" in err[0]
    assert not (tmp_path / "r.jsonl").exists()
