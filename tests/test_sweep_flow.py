"""The sweep's orchestration with fakes at the edges (no llama-server, no GGUF): order of
configs, halving rungs and item merging, refine, confirm, resume after an interrupt, error
records and --retry-errors, weights. The real runner, records and resume code run; the engine (what
serves a path) and the HTTP probing are replaced by a synthetic score table."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
from pathlib import Path

import pytest

from rys import engine as E
from rys import layer_path
from rys import llama_server as LS
from rys import probes as P
from rys import plans
from rys import sweep
from rys import sweep_record as R

N = 12


# Synthetic truth: duplicating block (6, 9) is great, (7, 9) even better, the rest middling.
SKILL = {tuple(layer_path.duplicate(6, 9, N)): 0.9, tuple(layer_path.duplicate(7, 9, N)): 1.0}


def skill_of(path: tuple[int, ...]) -> float:
    return SKILL.get(tuple(path), 0.4)


def item_score(path, item_id: str, split: str) -> float:
    h = int(hashlib.sha256(f"{path}/{item_id}/{split}".encode()).hexdigest()[:8], 16)
    return 1.0 if (h % 1000) / 1000 < skill_of(path) else 0.0


class FakeSource:
    def __init__(self, tmp: Path):
        self.paths = [tmp / "src.gguf"]
        self.paths[0].write_text("fake")
        self.n_layers = N
        self.arch = "fake"
        self.file_size = 1000
        self.fingerprint = "f" * 32
        self.has_chat_template = False

    def estimate_size(self, path):
        return 1000


class FakeServer:
    """What a Served holds: a url, and a death the sweep can notice."""

    def __init__(self, url: str):
        self.url, self.dead = url, False

    def check_alive(self, grace=0.0):
        if self.dead:
            raise LS.ServerExited("llama-server exited with code -9: x", -9, "boom")


class FakeEngine(E.Engine):
    """Serves a path by remembering it under a fresh url (the probe fake reads it back)."""

    name = "physical"

    def __init__(self, fakes: "Fakes", source, name: str = "", fail_start: bool = False):
        super().__init__(source, E.ServerSettings(binary="fake", name=name))
        self.fakes, self.fail_start, self.started = fakes, fail_start, 0

    def check(self, path):
        pass

    def serve(self, path, log_path):
        fakes = self

        class _Serving(E.Serving):
            def _enter(self, stack):
                fakes.started += 1
                if fakes.fail_start:
                    raise LS.ServerExited("llama-server exited while loading with exit code -11",
                                          -11, "ggml_cuda_init: no CUDA devices")
                url = f"http://fake:{next(fakes.fakes.ports)}"
                srv = FakeServer(url)
                fakes.fakes.served[url] = (tuple(range(N)) if path is None else tuple(path), srv)
                stack.callback(fakes.fakes.served.pop, url)
                Path(log_path).write_text("fake server log\n")
                self.server_args = ["--model", "fake"]
                return E.Served(url, 1, srv, 0.01, 0.01)

        return _Serving(Path(log_path))


class Fakes:
    """Installs the fakes; counts probe calls; can interrupt or crash on a given call."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple] = []
        self.interrupt_at: int | None = None
        self.crash_paths: set[tuple] = set()
        self.served: dict[str, tuple] = {}
        self.ports = itertools.count(1)
        fakes = self

        def fake_run_jobs(base_url, jobs, *, slots=None, chat=False, no_think=False,
                          timeout=60.0, costs=None, progress=False):
            path, srv = fakes.served[base_url]
            out = {}
            for name, job in jobs.items():
                ids = [it.id for it in job.probe.split_items(job.split)]
                offset = ids.index(job.items[0].id)
                fakes.calls.append((path, job.probe.name, job.split, len(job.items), offset))
                if fakes.interrupt_at is not None and len(fakes.calls) == fakes.interrupt_at:
                    raise KeyboardInterrupt
                if path in fakes.crash_paths:
                    srv.dead = True
                    res = [P.ItemResult(id=it.id, score=None, error="connection refused")
                           for it in job.items]
                else:
                    res = [P.ItemResult(id=it.id, score=item_score(path, it.id, job.split))
                           for it in job.items]
                out[name] = P.aggregate(job.probe, job.split, job.mode, chat, res, 0.0)
            return out

        monkeypatch.setattr(LS, "server_version", lambda binary: "version: fake")
        monkeypatch.setattr(P, "run_jobs", fake_run_jobs)

    def runs(self) -> list[tuple]:
        """Distinct (path, offset, n) server runs, in order."""
        return list(dict.fromkeys((c[0], c[3], c[4]) for c in self.calls if c[1] == "reasoning"))


@pytest.fixture
def env(monkeypatch, tmp_path):
    fakes = Fakes(monkeypatch)
    src = FakeSource(tmp_path)
    return fakes, src, tmp_path


def run(src, tmp: Path, plan, capsys=None, fakes: Fakes | None = None, engines=None,
        results: str = "r.jsonl", **kw) -> int:
    probes = kw.pop("probes", "reasoning:20")
    suite = sweep.Suite.resolve(probes, kw.get("split", "dev"), kw.get("limit"))
    opts = sweep.RunOptions(model=src.paths[0], results=tmp / results, plan=plan,
                            probes=probes, quiet=True, **kw)
    return sweep.Sweep(opts, src, suite, engines or FakeEngine(fakes or _FAKES[-1], src)).run()


_FAKES: list[Fakes] = []


@pytest.fixture(autouse=True)
def _remember(env):
    _FAKES.append(env[0])
    yield
    _FAKES.remove(env[0])


def records(tmp: Path) -> list[dict]:
    return R.read_jsonl(tmp / "r.jsonl").objects


def blocks(*ij, times=1):
    return [plans.block_config(i, j, N, times) for i, j in ij]


def test_order_records_and_leaderboard(env):
    fakes, src, tmp = env
    plan = blocks((0, 3), (6, 9), (3, 6))
    assert run(src, tmp, plan) == 0
    recs = records(tmp)
    assert [r["kind"] for r in recs] == ["baseline", "identity", "block", "block", "block"]
    assert [r["block"]["i"] for r in recs[2:]] == [0, 6, 3]
    summ = json.loads((tmp / "r.summary.json").read_text())
    assert summ["leaderboard"][0]["path"] == layer_path.format(layer_path.duplicate(6, 9, N))
    assert summ["leaderboard"][0]["beyond_noise"] is True
    assert summ["counts"] == {"planned": 5, "ran": 5, "resumed": 0, "ok": 5, "error": 0}
    # the baseline ran on the unmodified model, the rest through the engine's path serving
    assert fakes.runs()[0][0] == tuple(range(N))
    assert fakes.served == {}  # every serving was cleaned up


def test_interrupt_then_resume_loses_and_duplicates_nothing(env):
    fakes, src, tmp = env
    plan = blocks((0, 3), (3, 6), (6, 9), (9, 12))
    fakes.interrupt_at = 4  # during the 2nd block config
    assert run(src, tmp, plan) == sweep.EXIT_INTERRUPTED
    assert len(records(tmp)) == 3  # the interrupted config is not recorded
    summ = json.loads((tmp / "r.summary.json").read_text())
    assert summ["interrupted"] is True
    fakes.interrupt_at = None
    fakes.calls.clear()
    assert run(src, tmp, plan) == 0
    recs = records(tmp)
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 6
    assert len(fakes.runs()) == 3  # only what was missing ran again
    assert fakes.served == {}


def test_crash_is_an_error_record_and_retry_errors_reruns_it(env):
    fakes, src, tmp = env
    plan = blocks((0, 3), (3, 6), (6, 9))
    crashing = tuple(layer_path.duplicate(3, 6, N))
    fakes.crash_paths = {crashing}
    assert run(src, tmp, plan) == 0
    recs = records(tmp)
    bad = [r for r in recs if r["status"] == "error"]
    assert len(bad) == 1 and "-9" in bad[0]["error"] and bad[0]["probes"] == {}
    assert recs[-1]["status"] == "ok"  # the sweep went on
    fakes.crash_paths = set()
    fakes.calls.clear()
    assert run(src, tmp, plan) == 0  # errors are done unless --retry-errors
    assert fakes.runs() == []
    assert run(src, tmp, plan, retry_errors=True) == 0
    assert [r[0] for r in fakes.runs()] == [crashing]
    latest = R.latest_by_key(R.read_records(tmp / "r.jsonl").records)
    assert all(r.ok for r in latest.values())


def test_weights_change_reranks_without_rerunning(env):
    fakes, src, tmp = env
    plan = blocks((0, 3), (6, 9))
    assert run(src, tmp, plan, probes="reasoning:6,eq:4") == 0
    fakes.calls.clear()
    assert run(src, tmp, plan, probes="reasoning:6,eq:4", weights="eq=0") == 0
    assert fakes.calls == []
    summ = json.loads((tmp / "r.summary.json").read_text())
    assert summ["settings"]["weights"] == {"reasoning": 1.0, "eq": 0.0}
    top = summ["leaderboard"][0]
    assert top["combined_delta"]["delta"] == pytest.approx(top["delta"]["reasoning"]["delta"])


def test_halving_keeps_the_winner_and_merges_items(env, monkeypatch):
    fakes, src, tmp = env
    # a winner as clear as a sweep's real winner must be to matter (the statistics of halving
    # itself are tested on a synthetic table in test_sweep_unit.py)
    monkeypatch.setitem(SKILL, tuple(layer_path.duplicate(6, 9, N)), 1.0)
    plan = blocks(*[(i, i + 3) for i in range(0, 10)])  # 10 configs; (6, 9) is the winner
    assert run(src, tmp, plan, probes="reasoning:27", halving=3, halving_min_items=3) == 0
    recs = records(tmp)
    final = [r for r in recs if r["stage"] == "sweep" and r["kind"] == "block"]
    assert len(final) == 2 and 6 in [r["block"]["i"] for r in final]
    win = next(r for r in final if r["block"]["i"] == 6)
    summ = json.loads((tmp / "r.summary.json").read_text())
    assert summ["leaderboard"][0]["key"] == win["key"]
    assert win["probes"]["reasoning"]["n"] == 27 and win["settings"]["limit"] is None
    # every run after rung 0 only scored the items it had not scored yet
    by_path: dict = {}
    for path, n, offset in fakes.runs():
        by_path.setdefault(path, []).append((offset, n))
    for path, spans in by_path.items():
        covered = [k for off, n in spans for k in range(off, off + n)]
        assert len(covered) == len(set(covered)), spans
    # merged items of the winner: all 27 distinct ids, in the sidecar
    items = {x["key"]: x for x in R.read_jsonl(tmp / "r.items.jsonl").objects}
    ids = [it["id"] for it in items[win["key"]]["probes"]["reasoning"]]
    assert len(ids) == 27 == len(set(ids))
    h = json.loads((tmp / "r.summary.json").read_text())["halving"]
    assert [r["configs"] for r in h["rungs"]] == [10, 4, 2] and \
        [r["limit"] for r in h["rungs"]] == [3, 9, 27]
    assert h["evaluations"] == 10 * 3 + 4 * 6 + 2 * 18 and h["full_evaluations"] == 270
    # resuming a finished halving sweep runs nothing
    fakes.calls.clear()
    assert run(src, tmp, plan, probes="reasoning:27", halving=3, halving_min_items=3) == 0
    assert fakes.calls == []


def test_halving_resumes_mid_rung(env, monkeypatch):
    fakes, src, tmp = env
    monkeypatch.setitem(SKILL, tuple(layer_path.duplicate(6, 9, N)), 1.0)
    plan = blocks(*[(i, i + 3) for i in range(0, 10)])
    opts = dict(probes="reasoning:27", halving=3, halving_min_items=3)
    fakes.interrupt_at = 13  # in rung 1 (2 essentials + 10 rung-0 runs come first)
    assert run(src, tmp, plan, **opts) == sweep.EXIT_INTERRUPTED
    fakes.interrupt_at = None
    assert run(src, tmp, plan, **opts) == 0
    latest = R.latest_by_key(R.read_records(tmp / "r.jsonl").records)
    assert len(latest) == len(records(tmp))
    final = [r for r in latest.values() if r.stage == "sweep" and r.kind == "block"]
    assert len(final) == 2 and 6 in [r.block.i for r in final]
    assert all(r.probes["reasoning"].n == 27 for r in final)


def test_refine_finds_the_better_neighbour(env):
    fakes, src, tmp = env
    plan = blocks((0, 3), (3, 6), (6, 9), (9, 12))  # coarse: the best is (6, 9)
    assert run(src, tmp, plan, refine=1, refine_rounds=2) == 0
    recs = records(tmp)
    refined = [(r["block"]["i"], r["block"]["j"]) for r in recs if r["kind"] == "refine"]
    assert (7, 9) in refined and (6, 9) not in refined
    assert len(refined) == len(set(refined))
    summ = json.loads((tmp / "r.summary.json").read_text())
    assert summ["leaderboard"][0]["block"] == {"i": 7, "j": 9, "times": 1}


def test_confirm_rescores_top_k_and_baseline_on_test(env):
    fakes, src, tmp = env
    plan = blocks((0, 3), (6, 9), (3, 6))
    assert run(src, tmp, plan, confirm=1) == 0
    recs = records(tmp)
    conf = [r for r in recs if r["kind"] == "confirm"]
    assert [r["confirm"]["kind"] for r in conf] == ["baseline", "block"]
    assert all(r["settings"]["split"] == "test" and r["stage"] == "confirm" for r in conf)
    assert conf[1]["block"] == {"i": 6, "j": 9, "times": 1}
    dev = next(r for r in recs if r["kind"] == "block" and r["block"]["i"] == 6)
    assert conf[1]["confirm"]["of"] == dev["key"]
    assert conf[0]["delta"] == {} and "reasoning" in conf[1]["delta"]
    summ = json.loads((tmp / "r.summary.json").read_text())
    (row,) = summ["confirm"]
    assert row["key"] == dev["key"] and row["holds"] is True  # a real gain holds on test
    assert {c[2] for c in fakes.calls[-2:]} == {"test"}


def test_other_model_refused_unless_forced(env):
    fakes, src, tmp = env
    plan = blocks((0, 3))
    assert run(src, tmp, plan) == 0
    src.fingerprint = "e" * 32
    with pytest.raises(sweep.SweepError, match="another model"):
        run(src, tmp, plan)
    assert run(src, tmp, plan, force=True) == 0


# --------------------------------------------------------------------------- several workers


def _by_key(tmp: Path, name: str = "r.jsonl") -> dict:
    return {r["key"]: r for r in R.read_jsonl(tmp / name).objects}


def test_two_workers_record_every_config_once_and_agree_with_one(env):
    fakes, src, tmp = env
    plan = blocks(*[(i, i + 3) for i in range(0, 10)])
    assert run(src, tmp, plan, results="one.jsonl", confirm=2, refine=1) == 0
    two = [FakeEngine(fakes, src, "w1"), FakeEngine(fakes, src, "w2")]
    assert run(src, tmp, plan, results="two.jsonl", confirm=2, refine=1, engines=two) == 0
    one_recs, two_recs = records_of(tmp, "one.jsonl"), records_of(tmp, "two.jsonl")
    assert len(two_recs) == len({r["key"] for r in two_recs})  # each config once
    assert {r["key"] for r in one_recs} == {r["key"] for r in two_recs}
    # the baseline first, alone; then the identity and the plan; confirm's baseline before its top
    assert two_recs[0]["kind"] == "baseline"
    conf = [r["confirm"]["kind"] for r in two_recs if r["kind"] == "confirm"]
    assert conf[0] == "baseline"
    s1 = json.loads((tmp / "one.summary.json").read_text())
    s2 = json.loads((tmp / "two.summary.json").read_text())
    assert [e["key"] for e in s1["leaderboard"]] == [e["key"] for e in s2["leaderboard"]]
    assert all(w["configs"] > 0 for w in s2["workers"])  # both did work
    assert sum(w["configs"] for w in s2["workers"]) == len(two_recs)
    assert fakes.served == {}


def records_of(tmp: Path, name: str) -> list[dict]:
    return R.read_jsonl(tmp / name).objects


def test_halving_with_two_workers_matches_one(env, monkeypatch):
    fakes, src, tmp = env
    monkeypatch.setitem(SKILL, tuple(layer_path.duplicate(6, 9, N)), 1.0)
    plan = blocks(*[(i, i + 3) for i in range(0, 10)])
    opts = dict(probes="reasoning:27", halving=3, halving_min_items=3)
    assert run(src, tmp, plan, results="one.jsonl", **opts) == 0
    two = [FakeEngine(fakes, src, "w1"), FakeEngine(fakes, src, "w2")]
    assert run(src, tmp, plan, results="two.jsonl", engines=two, **opts) == 0
    assert set(_by_key(tmp, "one.jsonl")) == set(_by_key(tmp, "two.jsonl"))
    s1 = json.loads((tmp / "one.summary.json").read_text())
    s2 = json.loads((tmp / "two.summary.json").read_text())
    assert s1["halving"] == s2["halving"]
    assert [e["key"] for e in s1["leaderboard"]] == [e["key"] for e in s2["leaderboard"]]


def test_a_worker_whose_server_never_starts_is_stopped_and_the_others_finish(env):
    fakes, src, tmp = env
    plan = blocks(*[(i, i + 3) for i in range(0, 8)])
    broken = FakeEngine(fakes, src, "w1@CUDA0", fail_start=True)
    good = FakeEngine(fakes, src, "w2@CUDA1")
    assert run(src, tmp, plan, engines=[broken, good]) == 0
    recs = records(tmp)
    assert len(recs) == 10 and all(r["status"] == "ok" for r in recs)  # nothing lost to it
    assert broken.started == sweep.MAX_START_FAILURES  # then it was taken out
    summ = json.loads((tmp / "r.summary.json").read_text())
    w1, w2 = summ["workers"]
    assert w1["stopped"] and "failed to start 2 times" in w1["stopped"] and w1["configs"] == 0
    assert w2["stopped"] is None and w2["configs"] == 10


def test_a_config_that_fails_everywhere_is_one_error_record(env):
    """A failed start is tried once more on another worker; failing there too, it is the
    config's fault: one error record, and no worker is blamed for it alone."""
    fakes, src, tmp = env

    class Picky(FakeEngine):
        def serve(self, path, log_path):
            if path is not None and tuple(path) == tuple(layer_path.duplicate(3, 6, N)):
                self.fail_start = True
            else:
                self.fail_start = False
            return super().serve(path, log_path)

    plan = blocks((0, 3), (3, 6), (6, 9))
    ws = [Picky(fakes, src, "w1"), Picky(fakes, src, "w2")]
    assert run(src, tmp, plan, engines=ws) == 0
    recs = records(tmp)
    bad = [r for r in recs if r["status"] == "error"]
    assert len(recs) == 5 and len(bad) == 1 and bad[0]["block"]["i"] == 3
    assert "while loading" in bad[0]["error"]
    summ = json.loads((tmp / "r.summary.json").read_text())
    assert all(w["stopped"] is None for w in summ["workers"])


def test_interrupt_with_two_workers_then_resume(env):
    fakes, src, tmp = env
    plan = blocks(*[(i, i + 3) for i in range(0, 10)])
    fakes.interrupt_at = 6
    two = [FakeEngine(fakes, src, "w1"), FakeEngine(fakes, src, "w2")]
    assert run(src, tmp, plan, engines=two) == sweep.EXIT_INTERRUPTED
    assert fakes.served == {}  # every worker's serving was cleaned up
    fakes.interrupt_at = None
    two = [FakeEngine(fakes, src, "w1"), FakeEngine(fakes, src, "w2")]
    assert run(src, tmp, plan, engines=two) == 0
    keys = [r["key"] for r in records(tmp)]
    assert len(keys) == len(set(keys)) == 12


def test_shards_split_the_plan_by_key_and_cover_it(env):
    fakes, src, tmp = env
    plan = blocks(*[(i, i + 3) for i in range(0, 10)])
    for k in (1, 2):
        assert run(src, tmp, plan, results=f"s{k}.jsonl", shard=(k, 2)) == 0
    s1, s2 = _by_key(tmp, "s1.jsonl"), _by_key(tmp, "s2.jsonl")
    plan1 = {k for k, r in s1.items() if r["kind"] == "block"}
    plan2 = {k for k, r in s2.items() if r["kind"] == "block"}
    assert plan1 and plan2 and not plan1 & plan2
    assert run(src, tmp, plan, results="all.jsonl") == 0
    full = {k for k, r in _by_key(tmp, "all.jsonl").items() if r["kind"] == "block"}
    assert plan1 | plan2 == full
    # each shard measured its own baseline and identity (same keys: one model, one setting)
    assert {r["kind"] for r in s1.values()} >= {"baseline", "identity"}
    assert all(sweep.shard_of(k, 2) == 1 for k in plan1)


def test_rys_plot_merges_shards_into_the_full_plan(env):
    from rys import visualize

    fakes, src, tmp = env
    plan = blocks(*[(i, i + 3) for i in range(0, 10)])
    for k in (1, 2):
        assert run(src, tmp, plan, results=f"s{k}.jsonl", shard=(k, 2)) == 0
    (merged,) = visualize.load_sweeps([tmp / "s1.jsonl", tmp / "s2.jsonl"])
    got = {c.path for c in merged.configs if c.kind == "block"}
    assert got == {c.spec for c in plan}
    assert merged.noise_source == "largest of 2 summaries"
    floors = [json.loads((tmp / f"s{k}.summary.json").read_text())["noise_floor"] for k in (1, 2)]
    assert merged.noise_floor["combined"] == max(f["combined"] for f in floors)


def test_resume_warns_once_about_a_bad_line_and_names_it(env, caplog):
    fakes, src, tmp = env
    plan = blocks((0, 3), (3, 6), (6, 9))
    assert run(src, tmp, plan) == 0
    lines = (tmp / "r.jsonl").read_text().splitlines(keepends=True)
    lines[2] = lines[2][:40] + "\n"  # a corrupt line in the middle (the dup(0,3) record)
    (tmp / "r.jsonl").write_text("".join(lines) + lines[3][:30])  # and a cut-off last line
    fakes.calls.clear()
    with caplog.at_level(logging.WARNING):
        assert run(src, tmp, plan) == 0
    bad = [r.getMessage() for r in caplog.records if "line 3 is not a JSON object" in r.getMessage()]
    cut = [r.getMessage() for r in caplog.records if "cut-off last line 6" in r.getMessage()]
    assert len(bad) == 1 and len(cut) == 1
    assert [r[0] for r in fakes.runs()] == [tuple(layer_path.duplicate(0, 3, N))]  # re-measured
