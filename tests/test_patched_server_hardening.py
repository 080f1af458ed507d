"""The --rys-patches llama-server's hardening (issue #21), on the real patched server and the demo
model: each case is something the first patch series got wrong or left open.

* backend sampling (``-bs``) survives layer-path switches (the context is rebuilt with new backend
  samplers instead of aborting on the old ones);
* ``--fit`` counts the layer path's KV cache and compute buffers at load (the context it fits is
  smaller than without the path), and a switch to a path that needs more memory than the
  ``--fit-target`` leaves is answered with a clear error while the old path keeps serving;
* ``POST /layer-path`` is off unless the server is started with ``--layer-path-switch`` (the
  virtual engine passes it);
* the outputs for prompt logprobs are reserved only with ``--prompt-logprobs N``: without it the
  compute buffer is the stock server's, and an echo request with logprobs names the option;
* what cannot work with a layer path is refused with one line: ``--split-mode tensor``, Eagle3
  drafts (they read hidden states by layer index), slot files (they only record the layer
  count);
* control vectors apply by position along the path, exactly as on the rewritten file.

The patched server is started with ``--layer-path-switch`` only where its ``--help`` lists it, as
the engine does, so the same tests run against an older patched build (and fail there on the
behaviour, not on an unknown option).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import requests

from rys import compare_eval as ce
from rys import engine as E
from rys import gguf_surgery
from rys import layer_path
from rys import llama_server as LS

pytestmark = pytest.mark.server

N_LAYERS = 18  # the demo model
DUP = "0..7,4..17"
SAME_KERNELS = ["--no-repack", "-t", "2"]  # see test_virtual_server.py
MIB = 1 << 20


def _serve(binary: str, model, log: Path, *extra: str, switch: bool = True,
           ctx_size: int | None = 2048) -> LS.LlamaServer:
    opt_in = E.switch_args(binary) if switch else []
    return LS.LlamaServer(model, binary=binary, parallel=1, ctx_size=ctx_size, log_path=log,
                          extra_args=[*SAME_KERNELS, *opt_in, *extra])


def _switch(url: str, spec: str) -> requests.Response:
    return requests.post(url + E.SWITCH_ENDPOINT, json={"layer_path": spec}, timeout=600)


def _live_path(url: str) -> list[int]:
    return requests.get(url + "/props", timeout=60).json()["layer_path"]


def _greedy(url: str, **extra) -> str:
    r = requests.post(url + "/completion", json={
        "prompt": "The capital of France is", "n_predict": 12, "temperature": 0,
        "cache_prompt": False, **extra}, timeout=600)
    r.raise_for_status()
    return r.json()["content"]


def _top(url: str) -> list:
    """Greedy tokens with the raw top-5 logprobs of each step (for exact comparisons)."""
    r = requests.post(url + "/completion", json={
        "prompt": "The capital of France is", "n_predict": 6, "temperature": 0, "n_probs": 5,
        "post_sampling_probs": False, "cache_prompt": False}, timeout=600)
    r.raise_for_status()
    return [[(t["id"], t["logprob"]) for t in p["top_logprobs"]]
            for p in r.json()["completion_probabilities"]]


def _total_mib() -> int:
    """The host memory llama.cpp's CPU backend reports (total = free on Linux), in MiB."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // MIB


def _log(server: LS.LlamaServer) -> str:
    return Path(server.log_path).read_text(errors="replace")


# --------------------------------------------------------------------------- backend sampling


def test_backend_sampling_survives_switches(patched_server_bin, demo_model, tmp_path):
    with _serve(patched_server_bin, demo_model, tmp_path / "load.log", "-bs",
                "--layer-path", DUP) as srv:
        dup_at_load = _greedy(srv.url, backend_sampling=True)
    with _serve(patched_server_bin, demo_model, tmp_path / "s.log", "-bs") as srv:
        before = _greedy(srv.url, backend_sampling=True)
        for spec, want in ((DUP, dup_at_load), ("0..17", before)):
            r = _switch(srv.url, spec)
            assert r.status_code == 200, r.text
            assert _greedy(srv.url, backend_sampling=True) == want, spec
        srv.check_alive()
    assert dup_at_load != before  # the path changes the answer: the comparison means something


# --------------------------------------------------------------------------- --fit


def _fitted(binary: str, model, log: Path, *extra: str) -> tuple[int, int]:
    """(context per slot the server runs with, MiB --fit projected for its first measurement):
    a server with n_ctx left to --fit (no --ctx-size), fit's trace on (-lv 4)."""
    with _serve(binary, model, log, "-lv", "4", *extra, ctx_size=None) as srv:
        n_ctx = srv.props["default_generation_settings"]["n_ctx"]
        projected = re.findall(r"projected to use (\d+) MiB", _log(srv))
    assert projected, "--fit printed no projection"
    return int(n_ctx), int(projected[0])


def test_fit_counts_the_layer_path_at_load(patched_server_bin, demo_model, tmp_path):
    # the identity at the model's full context, as --fit projects it
    n_ctx_full, used = _fitted(patched_server_bin, demo_model, tmp_path / "probe.log")
    # a target that the identity just meets: it keeps its full context, the doubled path does not
    target = str(_total_mib() - used - 1)
    n_ctx_id, _ = _fitted(patched_server_bin, demo_model, tmp_path / "id.log", "-fitt", target)
    n_ctx_path, used_path = _fitted(patched_server_bin, demo_model, tmp_path / "path.log",
                                    "-fitt", target, "--layer-path", "(0..17)x2")
    assert n_ctx_id == n_ctx_full
    assert used_path > used  # the projection counts the 36 layers' KV cache and compute
    assert n_ctx_path < n_ctx_full


def test_fit_refuses_a_switch_that_needs_more_memory_than_the_target_leaves(
        patched_server_bin, demo_model, tmp_path):
    # a target no context meets: switches that need more memory are refused, smaller ones are not
    with _serve(patched_server_bin, demo_model, tmp_path / "s.log",
                "-fitt", str(_total_mib())) as srv:
        r = _switch(srv.url, "(0..17)x2")
        assert r.status_code == 400
        msg = LS.error_message(r) or ""
        assert "--fit-target" in msg and "MiB" in msg, msg
        assert _live_path(srv.url) == list(range(N_LAYERS))
        r = _switch(srv.url, "1..17")
        assert r.status_code == 200, r.text
        _greedy(srv.url)  # the server still answers
        srv.check_alive()
    # --fit off skips the check
    with _serve(patched_server_bin, demo_model, tmp_path / "off.log",
                "-fitt", str(_total_mib()), "--fit", "off") as srv:
        r = _switch(srv.url, "(0..17)x2")
        assert r.status_code == 200, r.text


# --------------------------------------------------------------------------- opt-in switch


def test_the_switch_endpoint_needs_its_option_and_the_virtual_engine_passes_it(
        patched_server_bin, demo_model, tmp_path):
    with _serve(patched_server_bin, demo_model, tmp_path / "off.log", switch=False) as srv:
        r = _switch(srv.url, DUP)
        assert r.status_code == 501
        assert E.SWITCH_FLAG in (LS.error_message(r) or "")
        assert _live_path(srv.url) == list(range(N_LAYERS))
    # the engine finds both options in --help (--layer-path is not --layer-path-switch)
    assert E.supports_layer_paths(patched_server_bin)
    assert E.has_option(patched_server_bin, E.SWITCH_FLAG)
    src = gguf_surgery.SourceModel.open(demo_model)
    settings = E.ServerSettings(binary=patched_server_bin, extra_args=list(SAME_KERNELS),
                                parallel=1, ctx_size=2048)
    with E.VirtualEngine(src, settings, server_log=tmp_path / "v.log") as eng:
        path = layer_path.parse(DUP, N_LAYERS)
        with eng.serve(path, tmp_path / "unused.log") as served:
            assert _live_path(served.url) == path
        assert E.SWITCH_FLAG in eng.server.command


# --------------------------------------------------------------------------- prompt logprobs


def _compute_mib(server: LS.LlamaServer) -> float:
    sizes = re.findall(r"CPU compute buffer size = +([\d.]+) MiB", _log(server))
    assert sizes, "no compute buffer size in the log"
    return float(sizes[-1])


def test_prompt_logprob_outputs_are_reserved_only_when_enabled(
        patched_server_bin, llama_server_bin, demo_model, tmp_path):
    trace = ["-lv", "4"]  # the compute buffer's size is logged at trace level
    with _serve(llama_server_bin, demo_model, tmp_path / "stock.log", *trace, switch=False) as srv:
        stock = _compute_mib(srv)
    with _serve(patched_server_bin, demo_model, tmp_path / "off.log", *trace) as srv:
        off = _compute_mib(srv)
        r = requests.post(srv.url + "/v1/completions", json=ce.ECHO_PROBE, timeout=600)
        assert r.status_code == 400
        assert ce.PROMPT_LOGPROBS_FLAG in (LS.error_message(r) or "")
        ok, answer = ce.echo_logprobs_answer(srv.url)
        assert not ok and ce.PROMPT_LOGPROBS_FLAG in answer
    with _serve(patched_server_bin, demo_model, tmp_path / "on.log", *trace,
                *ce.prompt_logprobs_args(patched_server_bin)) as srv:
        on = _compute_mib(srv)
        assert ce.echo_logprobs_answer(srv.url) == (True, "prompt logprobs")
    assert off == stock  # no extra outputs: the stock server's compute buffer
    assert on > off + 10  # 512 more outputs of 262k logits (in micro-batches of 512 tokens)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("extra,message", [
    (["--split-mode", "tensor"], "--layer-path is not supported with --split-mode tensor"),
    (["--spec-type", "draft-eagle3"],
     "--layer-path is not supported with speculative decoding of type 'draft-eagle3'"),
])
def test_what_a_layer_path_cannot_do_is_refused_with_one_line(
        extra, message, patched_server_bin, demo_model, tmp_path):
    srv = _serve(patched_server_bin, demo_model, tmp_path / "s.log", "--layer-path", DUP, *extra)
    with pytest.raises(LS.ServerExited):
        srv.start()
    assert message in _log(srv)


def test_slot_files_are_refused_under_a_layer_path(patched_server_bin, demo_model, tmp_path):
    slots = tmp_path / "slots"
    slots.mkdir()
    with _serve(patched_server_bin, demo_model, tmp_path / "s.log",
                "--slot-save-path", str(slots)) as srv:
        _greedy(srv.url, id_slot=0, cache_prompt=True)

        def act(action: str) -> requests.Response:
            return requests.post(f"{srv.url}/slots/0?action={action}",
                                 json={"filename": "slot0.bin"}, timeout=600)

        assert act("save").status_code == 200
        assert _switch(srv.url, DUP).status_code == 200
        for action in ("save", "restore"):
            r = act(action)
            assert r.status_code == 501, (action, r.text)
            assert "layer path" in (LS.error_message(r) or "")
        assert _switch(srv.url, "0..17").status_code == 200
        assert act("restore").status_code == 200


# --------------------------------------------------------------------------- control vectors


def _control_vector(path: Path, n_embd: int, n_layers: int) -> Path:
    import gguf

    rng = np.random.default_rng(21)
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", "gemma3")
    w.add_uint32("controlvector.layer_count", n_layers - 1)
    for il in range(1, n_layers):
        w.add_tensor(f"direction.{il}", rng.normal(0, 2.0, n_embd).astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_control_vectors_apply_by_position_like_the_rewritten_file(
        patched_server_bin, demo_model, tmp_path):
    src = gguf_surgery.SourceModel.open(demo_model)
    n_embd = next(int(e.value) for e in src.kv if e.key == f"{src.arch}.embedding_length")
    cvec = str(_control_vector(tmp_path / "cvec.gguf", n_embd, N_LAYERS))
    path = layer_path.parse(DUP, N_LAYERS)
    with gguf_surgery.temporary_rewrite(src, path, tmp_path) as rewritten:
        with _serve(patched_server_bin, rewritten, tmp_path / "phys.log", "--control-vector",
                    cvec, switch=False) as srv:
            physical = _top(srv.url)
        with _serve(patched_server_bin, rewritten, tmp_path / "plain.log", switch=False) as srv:
            plain = _top(srv.url)
    with _serve(patched_server_bin, demo_model, tmp_path / "virt.log", "--layer-path", DUP,
                "--control-vector", cvec, switch=False) as srv:
        virtual = _top(srv.url)
    assert physical != plain  # the vector changes the answer
    assert virtual == physical
