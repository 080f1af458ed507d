"""The adaptive search (#19): budget, item order, racing, records, resume, replay; no server.

Strategies run through rys-sweep itself on constructed scans (tests/scan_fixtures.py) served by the
replay engine, so what is tested is what users run."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from rys import replay
from rys import search as S
from rys import sweep
from rys import sweep_record as R
from rys.sweep_record import Delta

from scan_fixtures import effect_peak, make_scan

GRID6 = ["--grid", "--max-block", "6"]


@pytest.fixture(scope="module")
def peaked(tmp_path_factory) -> Path:
    """(3, 6) clearly best (+0.25); blocks fall 0.1 per layer of distance: far ones clearly worse."""
    path = tmp_path_factory.mktemp("scan") / "peaked.scan.json.gz"
    make_scan(path, effect_peak((3, 6), 0.25, 0.1), noise=0.1)
    return path


def run(scan: Path, out: Path, *args: str) -> tuple[list[R.SweepRecord], dict]:
    rc = sweep.main(["--replay", str(scan), "-o", str(out), "--quiet", *args])
    assert rc == 0
    recs = R.read_records(out).records
    summary = json.loads(R.results_paths(out)["summary"].read_text())
    return recs, summary


def search_records(recs):
    return [r for r in recs if r.search is not None]


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize("text, want", [("0.2", S.Budget(fraction=0.2)),
                                        ("20%", S.Budget(fraction=0.2)),
                                        ("1.0", S.Budget(fraction=1.0)),
                                        ("1", S.Budget(items=1)),
                                        ("1500", S.Budget(items=1500))])
def test_budget_parses(text, want):
    """Integers count item-evaluations; decimals up to 1, or percentages, are fractions."""
    got = S.parse_budget(text)
    assert got.items == want.items
    assert got.fraction == (pytest.approx(want.fraction) if want.fraction else None)


@pytest.mark.parametrize("text", ["0", "0%", "-3", "1.5", "150%", "abc", "", "2e"])
def test_bad_budget_is_an_error(text):
    with pytest.raises(S.SearchError, match="--budget"):
        S.parse_budget(text)


def test_budget_resolves_against_a_full_pass():
    assert S.Budget(fraction=0.2).resolve(7254) == 1450
    assert S.Budget(items=300).resolve(7254) == 300


@pytest.mark.parametrize("text, secs", [("90", 90), ("90s", 90), ("45m", 2700), ("8h", 28800),
                                        ("1h30m", 5400)])
def test_durations(text, secs):
    assert S.parse_duration(text) == secs


@pytest.mark.parametrize("text", ["0", "soon", "5x", "1h-30m"])
def test_bad_durations(text):
    with pytest.raises(S.SearchError, match="--time-limit"):
        S.parse_duration(text)


@pytest.mark.parametrize("argv, needle", [
    (["--budget", "abc"], "--budget"),
    (["--budget", "0"], "--budget"),
    (["--time-limit", "soon"], "--time-limit"),
    (["--chunk", "0"], "--chunk"),
    (["--prune-p", "1.5"], "--prune-p"),
    (["--halving"], "--halving"),
    (["--refine"], "--refine"),
])
def test_bad_search_options_are_one_line_and_exit_2(peaked, tmp_path, argv, needle):
    r = subprocess.run([sys.executable, "-m", "rys.sweep", "--replay", str(peaked), "--search",
                        "adaptive", *argv], capture_output=True, text=True, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], r.stderr
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_unknown_strategy_and_options_without_search(peaked, tmp_path):
    for argv, needle in ((["--search", "bogus"], "--search"), (["--study", "memory"], "--search"),
                         (["--time-limit", "1h"], "--search")):
        r = subprocess.run([sys.executable, "-m", "rys.sweep", "--replay", str(peaked), *argv],
                           capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 2 and needle in r.stderr and len(r.stderr.splitlines()) == 1


# --------------------------------------------------------------------------- items and values


def test_item_order_is_one_seeded_shuffle_with_probes_interleaved():
    items = {"a": [f"a{i}" for i in range(50)], "b": [f"b{i}" for i in range(28)]}
    order = S.item_order(items, seed=3)
    assert order == S.item_order(items, seed=3) != S.item_order(items, seed=4)
    assert Counter((r.probe, r.id) for r in order) == Counter(
        (p, i) for p, ids in items.items() for i in ids)
    for k in range(1, len(order) + 1):  # every prefix holds each probe's share, within one item
        n_a = sum(r.probe == "a" for r in order[:k])
        assert abs(n_a - k * 50 / 78) <= 1


def test_item_scale_makes_the_mean_item_value_the_combined_delta():
    rng = random.Random(0)
    counts, weights = {"a": 50, "b": 28, "c": 7}, {"a": 1.0, "b": 2.5, "c": 0.5}
    diffs = {p: [rng.uniform(-1, 1) for _ in range(n)] for p, n in counts.items()}
    scale = S.item_scale(counts, weights)
    mean = sum(scale[p] * d for p, ds in diffs.items() for d in ds) / sum(counts.values())
    deltas = {p: Delta(sum(ds) / len(ds), 0.01) for p, ds in diffs.items()}
    assert mean == pytest.approx(R.combined_delta(deltas, weights).delta)


def test_nearest_config_skips_measured_ones_and_ends():
    from rys import plans

    space = S.Space.from_plan(plans.plan_grid(6, max_block=2))
    first = space.nearest(2, 2, 1, set())
    assert first is not None and (first.block.i, first.block.j) == (2, 4)
    seen = set()
    for _ in range(len(space)):
        c = space.nearest(2, 2, 1, seen)
        assert c is not None and c.path not in seen
        seen.add(c.path)
    assert space.nearest(2, 2, 1, seen) is None


def test_the_space_is_blocks_only():
    from rys import plans

    with pytest.raises(S.SearchError, match="RYS blocks"):
        S.Space.from_plan(plans.plan_ablate(6))


# --------------------------------------------------------------------------- statistics


def test_holm_and_benjamini_hochberg_by_hand():
    ps = [0.01, 0.04, 0.03, None, 0.2]
    assert R.holm(ps) == pytest.approx([0.04, 0.09, 0.09, None, 0.2])
    bh = R.benjamini_hochberg(ps)
    assert bh[3] is None
    assert bh[0] == pytest.approx(0.04) and bh[1] == pytest.approx(0.04 * 4 / 3)
    assert bh[2] == pytest.approx(0.04 * 4 / 3) and bh[4] == pytest.approx(0.2)


def test_p_gain_is_the_one_sided_normal_tail():
    assert R.p_gain(Delta(0.02, 0.01)) == pytest.approx(0.02275, abs=1e-4)
    assert R.p_gain(Delta(-0.02, 0.01)) == pytest.approx(1 - 0.02275, abs=1e-4)
    assert R.p_gain(Delta(0.02, None)) is None


def test_heldout_holds_only_after_the_correction_and_beyond_noise():
    pairs = [(Delta(0.05, 0.01), Delta(0.03, 0.0125)),  # z 2.4: p 0.008, Holm x3 = 0.025
             (Delta(0.04, 0.01), Delta(0.021, 0.01)),  # z 2.1: p 0.018, Holm x2 = 0.036
             (Delta(0.03, 0.01), Delta(-0.01, 0.01))]
    checks = R.heldout(pairs, floor=0.0)
    assert [c.holds for c in checks] == [True, True, False]
    assert checks[0].shrinkage == pytest.approx(0.02)
    assert not R.heldout(pairs, floor=0.035)[0].holds  # below the noise floor
    verdict = R.heldout_verdict(["dup(1,2)", "dup(2,3)", "dup(3,4)"], checks)
    assert "dup(1,2), holds" in verdict and "shrank by 0.020" in verdict and "dup(2,3)" in verdict


# --------------------------------------------------------------------------- racing and budget


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_racing_stops_the_clearly_worse_and_never_the_true_best(peaked, tmp_path, seed):
    recs, summary = run(peaked, tmp_path / "r.jsonl", "--search", "adaptive", *GRID6,
                        "--budget", "0.5", "--seed", str(seed), "--study", "memory")
    srch = search_records(recs)
    best = [r for r in srch if r.path == "0..5,3..17"]
    assert best and all(not r.search.stopped for r in best)  # measured in full, never stopped
    stopped = [r for r in srch if r.search.stopped]
    assert stopped and all(r.stage == R.Stage.SEARCH for r in stopped)
    far = [r for r in stopped if r.block and abs(r.block.i - 3) + abs(r.block.j - 6) >= 5]
    assert far and all(r.search.items < r.search.of / 2 for r in far)  # stopped early
    assert summary["leaderboard"][0]["path"] == "0..5,3..17"


def test_budget_is_respected_in_item_evaluations(peaked, tmp_path):
    recs, summary = run(peaked, tmp_path / "r.jsonl", "--search", "adaptive", *GRID6,
                        "--budget", "300", "--study", "memory", "--confirm", "0")
    srch = search_records(recs)
    assert sum(r.search.items for r in srch) == summary["search"]["spent"] <= 300
    assert summary["search"]["ended"] == "budget spent"
    assert sum(1 for r in srch if r.search.reason == S.STOP_BUDGET) <= 1


def test_a_stopped_config_is_never_a_full_score(peaked, tmp_path):
    out = tmp_path / "r.jsonl"
    recs, summary = run(peaked, out, "--search", "adaptive", *GRID6, "--budget", "0.3",
                        "--study", "memory")
    stopped = [r for r in search_records(recs) if r.search.stopped]
    assert stopped
    for r in stopped:
        assert r.settings.items == r.search.items < r.search.of
        assert r.settings.order_seed == 0
        assert r.key != R.config_key(r.model.fingerprint, r.path,
                                     R.Settings(**{**r.settings.__dict__, "items": None,
                                                   "order_seed": None}))
        assert sum(p.n for p in r.probes.values()) == r.search.items
        assert r.search.test == S.TEST_NAME and r.search.against
    board = {e["path"] for e in summary["leaderboard"]}
    full = {r.path for r in search_records(recs) if not r.search.stopped}
    assert board <= full
    from rys import visualize as viz  # rys-plot ranks the same configs, stopped ones apart

    (sw,) = viz.load_sweeps([out])
    board = sw.leaderboard()
    n_full = sum(not c.partial for c in board)
    assert {c.path for c in board[:n_full]} == full  # every full measurement first
    assert all(c.partial and c.stage == "search" for c in board[n_full:])
    assert board[0].path == summary["leaderboard"][0]["path"]


def test_random_strategy_scores_every_item(peaked, tmp_path):
    recs, summary = run(peaked, tmp_path / "r.jsonl", "--search", "random", *GRID6,
                        "--budget", "0.1", "--study", "memory", "--confirm", "0")
    srch = search_records(recs)
    assert srch and all(not r.search.stopped or r.search.reason == S.STOP_BUDGET for r in srch)


# --------------------------------------------------------------------------- replay


def test_replay_is_deterministic(peaked, tmp_path):
    a, _ = run(peaked, tmp_path / "a.jsonl", "--search", "adaptive", *GRID6, "--budget", "0.2",
               "--study", "memory")
    b, _ = run(peaked, tmp_path / "b.jsonl", "--search", "adaptive", *GRID6, "--budget", "0.2",
               "--study", "memory")
    c, _ = run(peaked, tmp_path / "c.jsonl", "--search", "adaptive", *GRID6, "--budget", "0.2",
               "--study", "memory", "--seed", "7")

    def trace(recs):
        return [(r.key, r.path, R.to_json(r.combined_delta)) for r in recs]

    assert trace(a) == trace(b) and trace(a) != trace(c)


def test_replay_of_a_plan_equals_the_scan(peaked, tmp_path):
    """A plain plan replayed: every delta is the scan's own (the same paired computation)."""
    recs, _ = run(peaked, tmp_path / "r.jsonl", "--block-sizes", "3", "--start-max", "4")
    scan = replay.Scan.load(peaked)
    for r in recs:
        if r.kind == R.Kind.BLOCK:
            want = scan.delta(r.path, "dev")
            assert r.combined_delta.delta == pytest.approx(want.delta)
            assert r.combined_delta.stderr == pytest.approx(want.stderr)


def test_a_scan_made_from_replayed_sweeps_round_trips(peaked, tmp_path):
    plan = ["--block-sizes", "2", "--start-max", "3"]
    run(peaked, tmp_path / "dev.jsonl", *plan)
    run(peaked, tmp_path / "test.jsonl", *plan, "--split", "test")
    out = tmp_path / "again.scan.json.gz"
    assert replay.main(["make", "-o", str(out), str(tmp_path / "dev.jsonl"),
                        str(tmp_path / "test.jsonl")]) == 0
    again, orig = replay.Scan.load(out), replay.Scan.load(peaked)
    assert set(again.paths) == {"0,1,0..17", "0..2,1..17", "0..3,2..17", "0..4,3..17",
                                "0..17"}
    for key in again.configs:
        assert again.configs[key].scores == orig.configs[key].scores
    assert replay.main(["make", "-o", str(out), str(tmp_path / "dev.jsonl")]) == 2  # exists


def test_replay_refuses_what_it_cannot_serve(peaked, tmp_path):
    def err(*argv):
        r = subprocess.run([sys.executable, "-m", "rys.sweep", *argv], capture_output=True,
                           text=True, cwd=tmp_path)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
        return r.stderr

    assert "give no MODEL" in err("model.gguf", "--replay", str(peaked))
    assert "scan" in err("--replay", str(tmp_path / "missing.json.gz"))
    assert "math" in err("--replay", str(peaked), "--probes", "math")
    assert "mode" in err("--replay", str(peaked), "--mode", "generate")
    assert "not in the recorded scan" in err("--replay", str(peaked), "--block-sizes", "7")
    # configs outside the scan are refused up front, the others run
    recs, _ = run(peaked, tmp_path / "r.jsonl", "--block-sizes", "6", "7", "--start-max", "0")
    assert [r.path for r in recs if r.kind == R.Kind.BLOCK] == ["0..5,0..17"]


# --------------------------------------------------------------------------- resume


def _study(db: Path) -> optuna.Study:
    st = optuna.storages.RDBStorage(f"sqlite:///{db}")
    (summary,) = optuna.get_all_study_summaries(st)
    return optuna.load_study(study_name=summary.study_name, storage=st)


def _spent(study: optuna.Study) -> int:
    return S.spent_in(study.get_trials())


def test_an_interrupted_race_is_finished_from_its_items(tmp_path):
    """A process dies mid-config: the next Search on the same study queues that trial again
    with the items it had scored, and its race goes on from there."""
    from rys import plans

    url = f"sqlite:///{tmp_path / 's.db'}"
    settings = S.SearchSettings(seed=1, chunk=4, startup=2)
    space = S.Space.from_plan(plans.plan_grid(8, max_block=2))
    order = S.item_order({"a": [f"a{i}" for i in range(12)]}, 1)
    base = {("a", f"a{i}"): 0.5 for i in range(12)}
    scale = S.item_scale({"a": 12}, {"a": 1.0})

    def results(refs):
        return {"a": P.ProbeResult("a", None, None, 0, 0, 1, "h", "dev", "logprob", False,
                                   items=[P.ItemResult(r.id, 0.6) for r in refs])}

    from rys import probes as P

    first = S.Search(S.open_search_study(url, "t", True, settings), space, settings, order)
    prop = first.ask()
    race = first.race(prop, base, scale)
    chunk = race.next_chunk()
    race.report(chunk, results(chunk))
    done = {r.id for r in chunk}
    # the process dies here: the trial stays RUNNING
    second = S.Search(S.open_search_study(url, "t", True, settings), space, settings, order)
    assert second.spent == 4
    again = second.ask()
    assert again.cfg.path == prop.cfg.path and {d["id"] for d in again.prior["a"]} == done
    race2 = second.race(again, base, scale)
    rest = []
    while (c := race2.next_chunk()) is not None:
        assert not {r.id for r in c} & done  # never scored twice
        race2.report(c, results(c))
        rest += c
    assert len(rest) == 8 and race2.complete and second.spent == 12


def test_kill_9_then_resume_scores_no_item_twice(peaked, tmp_path):
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-m", "rys.sweep", "--replay", str(peaked), "--search", "adaptive",
           *GRID6, "--budget", "0.3", "-o", str(out), "--quiet"]
    p = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while (not out.exists() or sum(1 for _ in open(out)) < 12) and time.monotonic() < deadline:
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    db = R.results_paths(out)["study"]
    spent_before = _spent(_study(db))
    assert 0 < spent_before
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    summary = json.loads(R.results_paths(out)["summary"].read_text())["search"]
    assert summary["spent"] == spent_before + summary["scored_this_run"] <= summary["budget"]
    recs = R.read_records(out).records
    per = Counter((r.path, r.kind, str(r.stage)) for r in recs)
    assert max(per.values()) == 1  # one record per config and stage: nothing measured twice
    ok = _study(db)
    assert not [t for t in ok.get_trials() if t.state.name == "RUNNING"]


def test_a_finished_search_reruns_as_a_no_op(peaked, tmp_path):
    out = tmp_path / "r.jsonl"
    run(peaked, out, "--search", "adaptive", *GRID6, "--budget", "200")
    n = len(R.read_records(out).records)
    _, summary = run(peaked, out, "--search", "adaptive", *GRID6, "--budget", "200")
    assert len(R.read_records(out).records) == n and summary["search"]["scored_this_run"] == 0
    assert math.isclose(summary["search"]["spent"], 200, abs_tol=0)


# --------------------------------------------------------------------------- the sweep, replayed


def test_an_interrupted_sweep_summarises_what_finished(peaked, tmp_path, monkeypatch):
    """Ctrl-C in the middle of a plan: the summary ranks the configs that finished and has the
    noise floor (the identity finished), instead of "no candidate config has finished yet"."""
    calls = {"n": 0}
    real = replay._ReplayServed.answer

    def answer(self, jobs, **kw):
        calls["n"] += 1
        if calls["n"] == 5:  # baseline, identity, two blocks, then Ctrl-C
            raise KeyboardInterrupt("SIGINT")
        return real(self, jobs, **kw)

    monkeypatch.setattr(replay._ReplayServed, "answer", answer)
    out = tmp_path / "r.jsonl"
    assert sweep.main(["--replay", str(peaked), "-o", str(out), "--quiet", "--block-sizes",
                       "3"]) == sweep.EXIT_INTERRUPTED
    summary = json.loads(R.results_paths(out)["summary"].read_text())
    assert summary["interrupted"] and summary["noise_floor"]
    assert len(summary["leaderboard"]) == 2
    assert "no candidate config has finished yet" not in summary["verdict"]


def test_a_significantly_worse_top_config_is_not_called_noise():
    v = R.verdict("dup(4,7)", Delta(-0.263, 0.067), 0.01)
    assert "significantly worse" in v and "within noise" not in v
    assert "within noise" in R.verdict("dup(4,7)", Delta(-0.005, 0.01), 0.01)


def test_compose_measures_pairs_of_blocks_that_hold(tmp_path):
    """--compose: the blocks that hold on held-out items are composed in pairs; a pair is measured
    and checked on held-out items too (here the scan makes every pair near the peak better)."""
    from rys import layer_path as L

    near = [(i, j) for i in range(1, 6) for j in range(i + 1, min(i + 7, 19))
            if abs(i - 3) + abs(j - 6) <= 2]
    extra = {L.format(L.compose([(a, b, 1), (c, d, 1)], 18)): 0.4
             for (a, b) in near for (c, d) in near if b < d}
    scan = tmp_path / "c.scan.json.gz"
    make_scan(scan, effect_peak((3, 6), 0.25, 0.05), noise=0.08, extra=extra)
    recs, summary = run(scan, tmp_path / "r.jsonl", "--search", "adaptive", *GRID6,
                        "--budget", "0.5", "--study", "memory", "--compose")
    held = [r for r in summary["confirm"] if r["holds"]]
    assert len(held) >= 2
    rows = summary["compose"]
    assert rows and all("+" in r["config"] for r in rows)
    assert all(r["path"] in extra for r in rows)  # composed as layer_path.compose does
    assert any(r["holds"] for r in rows)
    # and without --confirm there is nothing to compose: one line, exit 2
    r = subprocess.run([sys.executable, "-m", "rys.sweep", "--replay", str(scan), "--compose"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and "--confirm" in r.stderr


def test_the_space_can_hold_repeat_counts():
    """--times 1 2: every block once and twice more; the search proposes the count too."""
    from rys import plans

    plan = plans.plan_blocks(12, [2], times=1) + plans.plan_blocks(12, [2], times=2)
    space = S.Space.from_plan(plan)
    assert space.times == (1, 2) and len(space) == 22
    c = space.nearest(4, 2, 2, set())
    assert (c.block.i, c.block.j, c.block.times) == (4, 6, 2)
    assert c.config_label == "dup(4,6)x3"


# --------------------------------------------------------------------------- the shipped scan

SHIPPED = Path(__file__).resolve().parent / "data" / "scans" / \
    "gemma-3-270m-q4_k_m.blocks1-6.scan.json.gz"


def test_the_shipped_demo_scan_is_complete_small_and_matches_todays_probes(tmp_path):
    """The scan bench/search.py and the docs rely on: every block of 1-6 layers of the 18-layer
    demo, each scored on every dev and test item; a few hundred KiB; and replayable, which means
    the built-in probes it was recorded with are unchanged (replay refuses changed content)."""
    assert SHIPPED.stat().st_size < 1 << 20
    scan = replay.Scan.load(SHIPPED)
    blocks = {(int(c.block.i), int(c.block.j)) for c in scan.configs.values()
              if c.block is not None and c.block.is_block and c.kind != "identity"}
    assert blocks == {(i, i + n) for n in range(1, 7) for i in range(0, 18 - n + 1)}
    assert {k: sum(len(v) for v in scan.items[k].values()) for k in ("dev", "test")} == \
        {"dev": 78, "test": 39}
    args = ["--search", "adaptive", *GRID6, "--budget", "0.05", "--seed", "1"]
    recs, summary = run(SHIPPED, tmp_path / "a.jsonl", *args)
    again, _ = run(SHIPPED, tmp_path / "b.jsonl", *args)

    def trace(rs):
        return [(r.key, r.path, R.to_json(r.combined_delta)) for r in rs]

    assert trace(recs) == trace(again)
    spent = sum(r.search.items for r in search_records(recs))
    assert 0 < spent <= math.ceil(0.05 * 93 * 78)
    assert summary["search"]["spent"] == spent and summary["confirm"]  # held-out rescoring ran
