"""Pure parts of the sweep: planners, successive halving's core and its cost, weights, config
keys, records as the runner makes them, resume compatibility, stale temp files, signals. No
server, no model. (The record format itself: test_sweep_record.py.)"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from rys import gguf_surgery
from rys import layer_path
from rys import plans
from rys import sweep
from rys import sweep_record as R
from rys.sweep_record import Block, Delta, Kind

N = 18


def ij(c):
    return (c.block.i, c.block.j)


# --------------------------------------------------------------------------- planners


def test_plan_blocks_paths_and_bounds():
    plan = plans.plan_blocks(N, [3, 5], stride=4, start_min=4, start_max=12)
    assert [(c.block.i, c.block.j, c.block.times) for c in plan] == [
        (4, 7, 1), (8, 11, 1), (12, 15, 1), (4, 9, 1), (8, 13, 1), (12, 17, 1)]
    for c in plan:
        b = c.block
        assert c.kind == Kind.BLOCK
        assert list(c.path) == layer_path.duplicate(b.i, b.j, N, b.times)
        assert len(c.path) == N + (b.j - b.i) * b.times


def test_plan_blocks_times_runs_block_times_plus_one():
    (c,) = plans.plan_blocks(6, [2], start_min=2, start_max=2, times=2)
    assert c.path == (0, 1, 2, 3, 2, 3, 2, 3, 4, 5)
    assert c.block.to_json() == {"i": 2, "j": 4, "times": 2}
    assert c.config_label == "dup(2,4)x3"


def test_plan_blocks_never_runs_past_the_last_layer():
    plan = plans.plan_blocks(N, [4])
    assert max(c.block.j for c in plan) == N
    assert len(plan) == N - 4 + 1


@pytest.mark.parametrize("kwargs, needle", [
    ({"sizes": [40]}, "larger than the model's 18 layers"),
    ({"sizes": [0]}, "block size must be >= 1"),
    ({"sizes": [3], "stride": 0}, "--stride"),
    ({"sizes": [3], "start_min": 18}, "--start-min"),
    ({"sizes": [3], "start_min": 5, "start_max": 4}, "--start-max"),
    ({"sizes": [3], "times": 0}, "--times"),
])
def test_plan_blocks_rejects_bad_options(kwargs, needle):
    with pytest.raises(plans.PlanError, match=needle.replace("(", r"\(")):
        plans.plan_blocks(N, **kwargs)


def test_plan_grid_covers_every_block_in_range():
    plan = plans.plan_grid(10, min_block=2, skip_early=1, skip_late=2)
    blocks = {ij(c) for c in plan}
    want = {(i, j) for i in range(1, 8) for j in range(i + 2, 9)}
    assert blocks == want
    assert all(c.kind == Kind.GRID for c in plan)
    assert len(plans.plan_grid(10, max_block=1)) == 10
    with pytest.raises(plans.PlanError):
        plans.plan_grid(10, min_block=5, skip_early=3, skip_late=3)


def test_plan_ablate_skips_each_layer_once():
    plan = plans.plan_ablate(5)
    assert [c.block.skip for c in plan] == [0, 1, 2, 3, 4]
    assert plan[2].path == (0, 1, 3, 4)
    assert plan[2].block.to_json() == {"skip": 2}
    assert plan[2].config_label == "skip(2)"


def test_paths_file_comments_labels_and_errors():
    text = "# header\n0..5,3..17   # my favourite\n\n  0..-1\n0..2,4..17\n"
    plan = plans.parse_paths_text(text, N)
    assert [c.kind for c in plan] == [Kind.CUSTOM] * 3
    assert plan[0].label == "my favourite" and plan[0].config_label == "my favourite"
    assert plan[1].path == tuple(range(N))
    assert plan[2].config_label == "0..2,4..17"
    with pytest.raises(plans.PlanError, match="line 2"):
        plans.parse_paths_text("0..5\n0..99\n", N)
    with pytest.raises(plans.PlanError, match="no layer paths"):
        plans.parse_paths_text("# nothing\n", N)


def test_dedupe_keeps_first_and_drops_done():
    a = plans.plan_blocks(N, [3], start_min=2, start_max=2)[0]
    g = [c for c in plans.plan_grid(N) if ij(c) == (2, 5)][0]
    assert a.path == g.path
    out = plans.dedupe([a, g, a], done=[tuple(range(N))])
    assert out == [a]
    assert plans.dedupe([a], done=[a.path]) == []


def test_refine_plans_unrun_neighbours_of_the_top_k():
    coarse = plans.plan_blocks(N, [3], stride=3)
    score = {c.block.i: -abs(c.block.i - 6) for c in coarse}  # best block starts at 6
    scored = [(c, score[c.block.i]) for c in coarse]
    new = plans.plan_refine(scored, N, top_k=1, done=[c.path for c in coarse])
    got = {ij(c) for c in new}
    assert got == {(5, 8), (5, 9), (6, 8), (6, 10), (7, 9), (7, 10), (7, 8), (5, 10)} - {(6, 9)}
    assert all(c.kind == Kind.REFINE for c in new)
    # nothing already done is planned again
    again = plans.plan_refine(scored, N, top_k=1, done=[c.path for c in coarse + new])
    assert again == []
    # non-block configs have no neighbours
    abl = plans.plan_ablate(N)
    assert plans.plan_refine([(c, 1.0) for c in abl], N, 3, []) == []


def test_refine_stays_inside_the_model():
    (edge,) = plans.plan_blocks(N, [2], start_min=16, start_max=16)
    new = plans.plan_refine([(edge, 1.0)], N, 1, [edge.path])
    assert all(0 <= c.block.i < c.block.j <= N for c in new)


# --------------------------------------------------------------------------- halving


def test_halving_rungs_shape():
    rungs = plans.halving_rungs(27, 100, eta=3, min_items=4)
    assert [r.keep for r in rungs] == [27, 9, 3]
    assert [r.limit for r in rungs] == [12, 34, 100]
    assert rungs[-1].limit == 100
    # few items: fewer rungs; the last always has all items
    assert plans.halving_rungs(27, 12, 3, 4) == [plans.Rung(27, 4), plans.Rung(9, 12)]
    assert plans.halving_rungs(27, 8, 3, 4) == [plans.Rung(27, 8)]  # 8/3 < min_items
    assert plans.halving_rungs(1, 50, 3, 4) == [plans.Rung(1, 50)]
    # never fewer survivors than min_keep
    assert all(r.keep >= 5 for r in plans.halving_rungs(40, 200, 3, 2, min_keep=5))


def _synthetic_table(n_configs: int, n_items: int, seed: int):
    """Per-config true skill plus item noise; score(c, n) is the mean over the first n items."""
    rng = random.Random(seed)
    skill = {c: rng.uniform(0.2, 0.8) for c in range(n_configs)}
    items = {c: [1.0 if rng.random() < skill[c] else 0.0 for _ in range(n_items)]
             for c in range(n_configs)}
    return skill, items


def test_halving_keeps_the_winners_of_a_full_pass_and_saves_work():
    n_items = 300
    skill, items = _synthetic_table(30, n_items, seed=7)
    # make the winner clearly the best, as a sweep's real winner must be to matter
    items[13] = [1.0] * n_items
    calls = []

    def score(c, n):
        calls.append((c, n))
        return sum(items[c][:n]) / n

    def score_rung(r, rung, alive):
        return {c: score(c, rung.limit) for c in alive}

    full_best = max(range(30), key=lambda c: score(c, n_items))
    calls.clear()
    rungs = plans.halving_rungs(30, n_items, eta=3, min_items=10)
    res = plans.successive_halving(list(range(30)), score_rung, rungs)
    assert res.ranking[0] == full_best == 13
    cost = plans.halving_cost(30, rungs, {"p": n_items}, 3)
    assert cost["evaluations"] < cost["full_evaluations"] / 2
    assert cost["saved"] == cost["full_evaluations"] - cost["evaluations"]
    # later rungs only ever see survivors of the earlier ones, and each rung has all its items
    for earlier, later in zip(res.survivors, res.survivors[1:]):
        assert set(later) <= set(earlier)
    assert res.survivors[-1] and all(n == n_items for c, n in calls[-len(res.survivors[-1]):])
    assert res.runs == sum(len(s) for s in res.survivors)


def test_halving_cost_counts_only_the_extra_items():
    rungs = plans.halving_rungs(9, 90, eta=3, min_items=10)
    res = plans.successive_halving(list(range(9)),
                                   lambda r, rung, alive: {c: -c for c in alive}, rungs)
    # rungs: 9 x 10, 3 x 30, 1 x 90 -> 9*10 + 3*20 + 1*60
    assert [r.limit for r in res.rungs] == [10, 30, 90]
    cost = plans.halving_cost(9, rungs, {"p": 90}, 3)
    assert cost["evaluations"] == 9 * 10 + 3 * 20 + 1 * 60
    assert cost["full_evaluations"] == 9 * 90
    assert res.runs == cost["runs"] == 9 + 3 + 1
    assert res.ranking == [0]
    # probes of different sizes: a probe with fewer items stops growing at its size
    two = plans.halving_cost(9, rungs, {"p": 90, "q": 20}, 3)
    assert two["evaluations"] == 9 * (10 + 10) + 3 * (20 + 10) + 1 * (60 + 0)


def test_halving_slices_score_each_item_once():
    counts = {"p": 27, "q": 5}
    assert plans.halving_slices(counts, 3, None) == {"p": (0, 3), "q": (0, 3)}
    assert plans.halving_slices(counts, 9, 3) == {"p": (3, 6), "q": (3, 2)}
    assert plans.halving_slices(counts, 27, 9) == {"p": (9, 18), "q": (5, 0)}


def test_select_top_nan_last_and_stable():
    scores = {"a": 0.5, "b": float("nan"), "c": 0.9, "d": None, "e": 0.5}
    assert plans.select_top(scores, 5) == ["c", "a", "e", "b", "d"]
    assert plans.select_top(scores, 2) == ["c", "a"]


# --------------------------------------------------------------------------- keys and scores


def _settings(**kw):
    base = dict(split="dev", limit=None, mode="auto", no_think=False, weights={"math": 1.0},
                probes={"math": "h1"}, suite="math:12")
    base.update(kw)
    return R.Settings(**base)


def _key(fp, cfg, s):
    return R.config_key(fp, cfg.key_path, s)


def test_key_separates_baseline_identity_and_settings():
    base = plans.baseline_config(N)
    ident = plans.identity_config(N)
    s = _settings()
    kb, ki = _key("fp", base, s), _key("fp", ident, s)
    assert kb != ki and len(kb) == 16 and int(kb, 16) >= 0
    # the same path from two planners is the same measurement
    a = plans.plan_blocks(N, [3], start_min=2, start_max=2)[0]
    g = [c for c in plans.plan_grid(N) if ij(c) == (2, 5)][0]
    assert _key("fp", a, s) == _key("fp", g, s)
    # anything that changes a measurement changes the key; weights do not
    for changed in (_settings(split="test"), _settings(limit=4), _settings(mode="logprob"),
                    _settings(no_think=True), _settings(probes={"math": "h2"}),
                    _settings(suite="math:8"), _settings(engine="virtual")):
        assert _key("fp", a, changed) != _key("fp", a, s)
    assert _key("fp2", a, s) != _key("fp", a, s)
    assert _key("fp", a, _settings(weights={"math": 3.0})) == _key("fp", a, s)
    # a confirm of the baseline is still the unmodified model
    assert plans.confirm_config(base).original and not plans.confirm_config(a).original


def test_key_is_unchanged_from_results_written_before_engines():
    """Keys of existing results files must not move: the physical engine adds nothing."""
    s = _settings()
    assert "engine" not in s.key_part() and "engine" not in s.to_json()
    assert R.config_key("fp", "0..17", s) == "13a5a8c5e7407a4d"  # computed by the code before


def test_weights_parsing():
    names = ["math", "eq"]
    assert sweep.parse_weights(None, names) == {"math": 1.0, "eq": 1.0}
    assert sweep.parse_weights("math=2", names) == {"math": 2.0, "eq": 1.0}
    # the documented default string works with a suite lacking some of its probes
    assert sweep.parse_weights("math=1,eq=1,reasoning=1,instruction=1", names) == \
        {"math": 1.0, "eq": 1.0}
    for bad in ("math", "math=x", "math=-1", "nope=1", "math=0,eq=0"):
        with pytest.raises(sweep.SweepError):
            sweep.parse_weights(bad, names)


def _score(score, stderr=0.05, n=10):
    return R.ProbeScore(score=score, stderr=stderr, n=n, n_errors=0, version=1, hash="h1",
                        split="dev", metrics={"x": 1.0}, mode="generate", chat=False)


def test_make_record_matches_schema():
    cfg = plans.plan_blocks(N, [3], start_min=4, start_max=4)[0]
    s = _settings(weights={"math": 1.0})
    rec = sweep.make_record(
        key="0123456789abcdef", cfg=cfg, status="ok", error=None,
        probes={"math": _score(0.5)}, delta={"math": Delta(0.1, 0.02)},
        settings=s, timings=R.Timings(1, 2, 3, 6.5),
        server=R.ServerInfo(["--x"], "version: 1", "r.logs/k.log"),
        model=R.ModelInfo("m.gguf", 1, "gemma3", N, "f", "/models/m.gguf"),
        started_at="2025-01-01T00:00:00Z", ended_at="2025-01-01T00:00:06Z")
    j = rec.to_json()
    required = {"schema", "key", "path", "kind", "block", "n_layers", "status", "error", "probes",
                "delta", "combined", "combined_delta", "timings", "server", "model", "settings",
                "started_at", "ended_at", "label", "stage", "confirm"}
    assert required == set(j)
    assert j["schema"] == "rys.sweep/1" and j["kind"] == "block"
    assert j["path"] == layer_path.format(cfg.path)
    assert j["block"] == {"i": 4, "j": 7, "times": 1}
    assert j["n_layers"] == N + 3
    assert set(j["probes"]["math"]) >= {"score", "stderr", "n", "n_errors", "version", "hash",
                                        "split", "metrics"}
    assert j["combined"] == pytest.approx(0.5)
    assert j["combined_delta"]["delta"] == pytest.approx(0.1)
    assert set(j["timings"]) == {"surgery_s", "load_s", "probe_s", "total_s"}
    assert set(j["settings"]) >= {"split", "limit", "mode", "weights", "no_think"}
    assert j["server"]["engine"] == "physical" and j["model"]["path"] == "/models/m.gguf"
    assert R.SweepRecord.from_json(j) == rec
    err = sweep.make_record(
        key="k", cfg=cfg, status="error", error="boom", probes={}, delta={}, settings=s,
        timings=R.Timings(), server=R.ServerInfo(), model=R.ModelInfo(), started_at="a",
        ended_at="b")
    assert err.combined is None and err.combined_delta is None and err.error == "boom"
    assert "ERROR boom" in sweep.record_line(err)
    assert "+0.100±0.020" in sweep.record_line(rec)
    assert sweep.record_line(rec).startswith("dup(4,7) 0..6,4..17  ")


def test_check_compatible():
    rec = R.SweepRecord(key="k", path="0..17", kind=Kind.BLOCK,
                        model=R.ModelInfo(file="m.gguf", fingerprint="fp1"),
                        settings=R.Settings(probes={"math": "h1", "eq": "h2"}))
    assert sweep.check_compatible([rec], "fp1", {"math": "h1", "eq": "h2"}) is None
    assert "another model" in sweep.check_compatible([rec], "fp9", {"math": "h1", "eq": "h2"})
    assert "probes" in sweep.check_compatible([rec], "fp1", {"math": "h1"})
    assert "changed" in sweep.check_compatible([rec], "fp1", {"math": "h1", "eq": "hX"})


# --------------------------------------------------------------------------- temp hygiene


def test_stale_temp_files_only_ours_and_dead(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = os.getppid()
    names = {
        f"model.0-5_3-17.{dead.pid}-0.gguf": True,  # dead sweep's model
        f".model.0-5_3-17.{dead.pid}-1.gguf.partial-{dead.pid}": True,  # its partial write
        f"model.0-5_3-17.{live}-0.gguf": False,  # a live process's model
        f"model.0-5_3-17.{os.getpid()}-0.gguf": False,  # our own
        "model.gguf": False,  # not our naming pattern
        "notes.txt": False,
    }
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    stale = {p.name for p in gguf_surgery.stale_temporaries(tmp_path)}
    assert stale == {n for n, is_stale in names.items() if is_stale}
    removed = gguf_surgery.remove_stale_temporaries(tmp_path)
    assert {p.name for p in removed} == stale
    assert {p.name for p in tmp_path.iterdir()} == {n for n, s in names.items() if not s}


# --------------------------------------------------------------------------- signals


def test_signal_guard_turns_sigterm_into_one_interrupt_and_defers():
    guard = sweep.SignalGuard()
    with guard:
        with pytest.raises(KeyboardInterrupt):
            with guard.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                done = True  # the deferred block finishes first
            assert False, "not reached"
        assert done
        os.kill(os.getpid(), signal.SIGTERM)  # during cleanup: ignored
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL or callable(
        signal.getsignal(signal.SIGTERM))


def test_split_passthrough():
    assert sweep.split_passthrough(["m.gguf", "--top", "3", "--", "-ngl", "99", "--", "x"]) == \
        (["m.gguf", "--top", "3"], ["-ngl", "99", "--", "x"])
    assert sweep.split_passthrough(["m.gguf"]) == (["m.gguf"], [])


def test_config_from_record_roundtrip():
    for cfg in (plans.plan_blocks(N, [3], start_min=4, start_max=4, times=2)[0],
                plans.plan_ablate(N)[3],
                plans.parse_paths_text("0..5,3..17  # lbl", N)[0]):
        rec = R.SweepRecord(path=cfg.spec, kind=cfg.kind, block=cfg.block, label=cfg.label)
        assert plans.config_from_record(rec, N) == cfg
    assert plans.config_from_record(R.SweepRecord(path="0..99"), N) is None


def test_one_sweep_per_results_file(tmp_path):
    store = sweep.ResultsStore(tmp_path / "r.jsonl")
    store.check_writable()
    store.create()
    with store.locked():
        with pytest.raises(sweep.SweepError, match="another rys-sweep"):
            with sweep.ResultsStore(tmp_path / "r.jsonl").locked():
                pass
    with sweep.ResultsStore(tmp_path / "r.jsonl").locked():  # released
        pass
