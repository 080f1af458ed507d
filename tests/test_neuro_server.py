"""rys-neuro against the real llama-servers and the demo model.

The exact properties: the lens at full depth is the unmodified model's next-token distribution
(stock server, no layer path); the hidden state at full depth is the unmodified model's embedding;
a layer's influence comes from two different depths (the same depth twice gives 0); a linear probe
finds a property planted in the prompts while its shuffled-label control does not; pair
interactions are joint minus singles, measured on one server; a stock server is refused by every
view with one line naming the patched build.

Both binaries run with ``--no-repack -t 2``: the patched CPU build compiles AMX out where it traps,
so without it the two builds could use different kernels, and bit-identical needs the same ones
(see test_virtual_server.py). Item slices are small: these tests take a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rys import gguf_surgery
from rys import neuro as N
from rys import probes as P

pytestmark = pytest.mark.server

SAME_KERNELS = ["--no-repack", "-t", "2"]
SWA_FULL = "--swa-full"  # Gemma 3: the probes' few-shot prefix stays cached between requests
SENTIMENT = Path(__file__).resolve().parent / "data" / "neuro" / "sentiment.jsonl"
CTX = 4096


def _target(binary: str, model: Path, out: Path) -> N.Target:
    return N.Target(gguf_surgery.SourceModel.open(model), binary, list(SAME_KERNELS), parallel=1,
                    ctx_size=CTX, load_timeout=600.0, timeout=600.0, out=out, chat=False)


def _neuro(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rys.neuro", *args, "-q"], capture_output=True,
                          text=True, timeout=1200, cwd=cwd)


def test_the_lens_at_full_depth_is_the_unmodified_models_distribution(
        patched_server_bin, llama_server_bin, demo_model, server_factory, tmp_path):
    """Depth 17 of the 18-layer demo, switched in place on the patched server, against the stock
    server on the file with no layer path: the answer's log-probability, rank and the top token
    agree, requests in the same order on one slot each."""
    target = _target(patched_server_bin, demo_model, tmp_path)
    target.server_args.append(SWA_FULL)
    jobs = N.logprob_jobs("reasoning:6,math:3,eq:1", "dev")
    with target.engine(tmp_path) as eng:
        rows = N.run_lens(target, eng, jobs, [9, 17], 40, 1, tmp_path, quiet=True)
    srv = server_factory(demo_model, parallel=1, ctx_size=CTX,
                         extra_args=[*SAME_KERNELS, SWA_FULL])
    client = P.LlamaClient(srv.url, timeout=600)
    dists = [client.next_token_probs(prompt, 40) for name, job in jobs.items()
             for item in job.items for _, prompt in P.logprob_prompts(client, job.probe, item)]
    assert len(dists) == len(rows) == 6 + 3 + 4
    found = 0
    for row, dist in zip(rows, dists):
        order = sorted(dist, key=lambda t: -dist[t])
        assert row.top[-1] == order[0]
        if row.token_text in dist:
            found += 1
            assert row.logprob[-1] == pytest.approx(math.log(dist[row.token_text]), abs=2e-6)
            assert row.rank[-1] == order.index(row.token_text) + 1
        else:
            assert row.rank[-1] is None and row.logprob[-1] < math.log(dist[order[-1]]) + 1e-6
    assert found >= len(rows) // 2  # most answers are in the unmodified model's top 40
    # and depth 9 is a different distribution: the comparison can fail
    assert any(abs(r.logprob[0] - r.logprob[-1]) > 0.1 for r in rows)


def test_the_hidden_state_at_full_depth_is_the_unmodified_models_embedding(
        patched_server_bin, llama_server_bin, demo_model, server_factory, tmp_path):
    target = _target(patched_server_bin, demo_model, tmp_path)
    texts = [x.prompt for x in N.read_labelled(SENTIMENT)[:5]]
    ub = N.prompt_ubatch(texts)
    with target.engine(tmp_path, "last", ub) as eng:
        states = N.collect_states(target, eng, texts, [16, 17], tmp_path, quiet=True)
    srv = server_factory(demo_model, parallel=1, ctx_size=CTX, extra_args=[
        *SAME_KERNELS, "--embeddings", "--pooling", "last", "--batch-size", str(ub),
        "--ubatch-size", str(ub)])
    ref = [np.asarray(rows) for rows in P.LlamaClient(srv.url, timeout=600).embeddings(texts)]
    assert ref[0].shape == (1, 640)  # one final-norm state of Gemma 3 270M per prompt
    for got, want in zip(states[17], ref):
        assert np.array_equal(got, want)
    assert all(np.abs(a - b).max() > 1e-3 for a, b in zip(states[16], ref))


def test_influence_comes_from_two_depths_and_one_depth_twice_gives_zero(
        patched_server_bin, demo_model, tmp_path):
    target = _target(patched_server_bin, demo_model, tmp_path)
    texts = [x.prompt for x in N.read_labelled(SENTIMENT)[:4]]
    with target.engine(tmp_path, "last", N.prompt_ubatch(texts)) as eng:
        a = N.collect_states(target, eng, texts, [8, 9], tmp_path, quiet=True)
        again = N.collect_states(target, eng, texts, [8], tmp_path, quiet=True)  # switched back
    assert all(np.array_equal(x, y) for x, y in zip(a[8], again[8]))  # depth 8 reproduced
    same = [N.influence(x, y) for x, y in zip(a[8], again[8])]
    step = [N.influence(x, y) for x, y in zip(a[8], a[9])]
    assert same == [0.0] * 4
    assert all(v > 1e-3 for v in step)
    prof = N.influence_profile([8, 9], a)
    assert (prof[0].prev, prof[0].layer) == (8, 9)
    assert prof[0].value == pytest.approx(np.mean(step), abs=1e-6)
    assert N.influence_profile([8, 8], {8: a[8]})[0].value == 0.0


def test_a_probe_finds_a_planted_property_and_its_shuffled_control_does_not(
        patched_server_bin, demo_model, tmp_path):
    r = _neuro("probe", str(demo_model), "--data", str(SENTIMENT), "--depths", "0,8,17",
               "-o", "out", "--llama-server", patched_server_bin,
               "--server-args", " ".join(SAME_KERNELS), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert doc["chance"] == 0.5 and [x["layer"] for x in doc["layers"]] == [0, 8, 17]
    assert any(x["beats_chance"] for x in doc["layers"]), doc["layers"]
    assert not any(x["control_beats_chance"] for x in doc["layers"]), doc["layers"]
    assert doc["best_layer"] is not None and "best layer" in r.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == set(N.view_files("probe"))


def test_lens_command_writes_json_png_and_html(patched_server_bin, demo_model, tmp_path):
    r = _neuro("lens", str(demo_model), "--probes", "reasoning:2", "--depths", "12,17",
               "-o", "out", "--llama-server", patched_server_bin, "--server-args", SWA_FULL,
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    assert {p.name for p in out.iterdir()} == set(N.view_files("lens"))
    doc = json.loads((out / "lens.json").read_text())
    assert doc["depths"] == [12, 17] and len(doc["rows"]) == 2
    assert all(len(row["logprob"]) == 2 and row["token_text"] for row in doc["rows"])
    page = (out / "lens.html").read_text()
    assert "data:image/png;base64," in page and "<script" not in page
    again = _neuro("lens", str(demo_model), "-o", "out", "--llama-server", patched_server_bin,
                   cwd=tmp_path)
    assert again.returncode == 2 and "pass --force" in again.stderr


def test_pair_interaction_is_joint_minus_singles_measured_on_one_server(
        patched_server_bin, demo_model, tmp_path):
    r = _neuro("pairs", str(demo_model), "--layers", "3,9", "--probes", "reasoning:4",
               "-o", "out", "--llama-server", patched_server_bin, "--server-args", SWA_FULL,
               cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "pairs.json").read_text())
    assert doc["layers"] == [3, 9] and sorted(doc["singles"]) == ["3", "9"]
    (pair,) = doc["pairs"]
    joint = pair["joint"]["delta"]
    singles = doc["singles"]["3"]["combined"]["delta"] + doc["singles"]["9"]["combined"]["delta"]
    assert pair["interaction"]["delta"] == pytest.approx(joint - singles, abs=1e-9)
    assert pair["type"] in ("synergistic", "redundant", "independent")


def test_prompt_repetition_next_to_a_duplicated_block(patched_server_bin, demo_model, tmp_path):
    r = _neuro("repeat", str(demo_model), "--probes", "reasoning:3", "--repeats", "1,2",
               "--paths", "0..7,4..17", "-o", "out", "--llama-server", patched_server_bin,
               "--server-args", SWA_FULL, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads((tmp_path / "out" / "repeat.json").read_text())
    labels = [c["label"] for c in doc["conditions"]]
    assert labels == ["unmodified, prompt x1", "unmodified, prompt x2",
                      "0..7,4..17, prompt x1", "0..7,4..17, prompt x2"]
    assert doc["conditions"][0]["delta"]["combined"]["delta"] == 0.0
    assert len({c["combined"] for c in doc["conditions"]}) > 1  # the conditions differ


@pytest.mark.parametrize("view", [v for v in N.VIEWS])
def test_a_stock_server_is_refused_with_one_line_naming_the_patched_build(
        view, llama_server_bin, demo_model, tmp_path):
    extra = ["--data", str(SENTIMENT)] if view == "probe" else []
    r = _neuro(view, str(demo_model), *extra, "--llama-server", llama_server_bin, "-o", "out",
               cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "scripts/build_llama_server.sh --rys-patches" in lines[0]
    assert list(tmp_path.iterdir()) == []
