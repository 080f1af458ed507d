"""sweep_record: the one definition of the results record, its JSONL files, labels, the noise floor
and significance. Includes the round trip between the sweep's writer and rys-plot's reader (no
server), the schema table of docs/records.md against the dataclasses, and a results file written before the
restructuring (tests/data/legacy_sweep/) read, resumed and plotted."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from pathlib import Path

import pytest

import repo_text
from rys import plans

from rys import sweep
from rys import sweep_record as R
from rys import visualize
from rys.sweep_record import Block, Delta, Kind

ROOT = Path(__file__).resolve().parent.parent
LEGACY = ROOT / "tests" / "data" / "legacy_sweep"


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("kind, block, label, path, of_kind, want", [
    ("block", Block(4, 7, 1), None, "0..6,4..17", None, "dup(4,7)"),
    ("grid", Block(4, 7, 2), None, "p", None, "dup(4,7)x3"),
    ("refine", Block(4, 7), None, "p", None, "dup(4,7)"),
    ("ablate", Block(skip=6), None, "p", None, "skip(6)"),
    ("baseline", None, "baseline", "0..17", None, "baseline"),
    ("identity", None, None, "0..17", None, "identity"),
    ("custom", None, "my pick", "0..8,6..17", None, "my pick"),
    ("custom", None, None, "0..8,6..17", None, "0..8,6..17"),
    ("custom", None, None, "0..3," * 10, None, ("0..3," * 10)[:25] + "..."),
    ("confirm", Block(4, 7, 1), None, "p", "block", "confirm dup(4,7)"),
    ("confirm", None, "baseline", "p", "baseline", "confirm baseline"),
    ("prune", Block(3, 5, 1), None, "", None, "del(3,5)"),
])
def test_one_label_per_config(kind, block, label, path, of_kind, want):
    assert R.config_label(kind, block, label, path, of_kind) == want


def test_sweep_and_plot_name_a_config_the_same_way():
    cfg = plans.plan_blocks(18, [3], start_min=4, start_max=4, times=2)[0]
    rec = R.SweepRecord(key="k", path=cfg.spec, kind=cfg.kind, block=cfg.block)
    view = visualize.config_from_rys(rec)
    assert cfg.config_label == rec.config_label == view.label == "dup(4,7)x3"


# --------------------------------------------------------------------------- numbers


def test_combined_score_and_delta():
    w = {"a": 1.0, "b": 3.0, "z": 0.0}
    assert R.combined_score({"a": 0.2, "b": 0.6}, w) == pytest.approx((0.2 + 1.8) / 4)
    assert R.combined_score({"a": 0.2}, w) is None
    cd = R.combined_delta({"a": Delta(0.4, 0.1), "b": Delta(0.0, 0.2)}, w)
    assert cd.delta == pytest.approx(0.1)
    assert cd.stderr == pytest.approx(math.sqrt((0.25 * 0.1) ** 2 + (0.75 * 0.2) ** 2))
    assert R.combined_delta({"a": Delta(0.4, 0.1)}, w) is None


def test_noise_floor_definition():
    nf = R.noise_floor({"a": Delta(-0.05, 0.01), "b": Delta(0.01, 0.03)}, Delta(0.0, 0.02))
    assert nf == {"a": pytest.approx(0.05), "b": pytest.approx(0.06),
                  "combined": pytest.approx(0.04)}
    assert R.noise_floor({"a": Delta(None, None)}) == {}


def test_significance_uses_floor_and_own_stderr():
    assert R.significance(0.1, 0.01, 0.05) == "+"
    assert R.significance(-0.1, 0.01, 0.05) == "-"
    assert R.significance(0.04, 0.01, 0.05) == "~"
    assert R.significance(0.1, 0.06, 0.0) == "~"  # a zero floor: the own stderr still guards
    assert R.significance(0.1, None, None) == "?" and R.significance(None, 0.1, 0.1) == "?"
    assert R.beats_noise(Delta(0.1, 0.01), 0.05) and not R.beats_noise(Delta(0.004, 0.07), 0.0)


# --------------------------------------------------------------------------- the record


def _record(**kw) -> R.SweepRecord:
    base = dict(
        key="0123456789abcdef", path="0..6,4..17", kind=Kind.BLOCK, block=Block(4, 7, 1),
        n_layers=21, probes={"math": R.ProbeScore(0.5, 0.05, 10, 1, 1, "h", "dev", {"x": 1.0},
                                                  "generate", False, 0, 3.2)},
        delta={"math": Delta(0.1, 0.02)}, combined=0.5, combined_delta=Delta(0.1, 0.02),
        timings=R.Timings(0.2, 1.5, 3.0, 4.9), server=R.ServerInfo(["--model", "m"], "v", "l"),
        model=R.ModelInfo("m.gguf", 10, "gemma3", 18, "fp", "/abs/m.gguf"),
        settings=R.Settings(weights={"math": 1.0}, probes={"math": "h"}, suite="math:10"),
        started_at="2026-01-01T00:00:00Z", ended_at="2026-01-01T00:00:05Z")
    base.update(kw)
    return R.SweepRecord(**base)


def test_record_json_round_trip():
    rec = _record()
    j = rec.to_json()
    assert list(j)[:4] == ["schema", "key", "path", "kind"] and j["kind"] == "block"
    assert json.loads(json.dumps(j)) == j
    assert R.SweepRecord.from_json(j) == rec
    conf = _record(kind=Kind.CONFIRM, stage=R.Stage.CONFIRM,
                   confirm=R.ConfirmRef("abc", Kind.BLOCK))
    assert conf.to_json()["confirm"] == {"of": "abc", "kind": "block"}
    assert R.SweepRecord.from_json(conf.to_json()) == conf
    ablate = _record(kind=Kind.ABLATE, block=Block(skip=3))
    assert ablate.to_json()["block"] == {"skip": 3}
    assert R.SweepRecord.from_json(ablate.to_json()) == ablate


@pytest.mark.parametrize("mutate, needle", [
    (lambda j: j.pop("key"), "key"),
    (lambda j: j.update(kind="blok"), "kind: unknown value"),
    (lambda j: j["probes"]["math"].update(n="many"), "record.probes.math.n must be an integer"),
    (lambda j: j.update(timings=[1, 2]), "record.timings must be an object"),
])
def test_a_bad_record_names_the_field(mutate, needle):
    j = _record().to_json()
    mutate(j)
    with pytest.raises(R.RecordError, match=re.escape(needle)):
        R.SweepRecord.from_json(j)


def test_unknown_keys_are_ignored_and_missing_ones_default():
    j = _record().to_json()
    j["from_the_future"] = 1
    del j["label"], j["stage"]
    rec = R.SweepRecord.from_json(j)
    assert rec.label is None and rec.stage == R.Stage.SWEEP


def test_sweep_writer_and_plot_reader_agree(tmp_path):
    """The round trip the sweep and rys-plot depend on, without a server: records written by the
    sweep's store are read by rys-plot with the same numbers, labels and noise floor."""
    store = sweep.ResultsStore(tmp_path / "r.jsonl")
    store.create()
    settings = R.Settings(weights={"math": 1.0}, probes={"math": "h"}, suite="math:10")
    base = _record(key="b" * 16, path="0..17", kind=Kind.BASELINE, block=None, delta={},
                   combined_delta=None, label="baseline", n_layers=18)
    ident = _record(key="i" * 16, path="0..17", kind=Kind.IDENTITY, block=None, label="identity",
                    delta={"math": Delta(0.01, 0.02)}, combined_delta=Delta(0.01, 0.02),
                    n_layers=18)
    win = _record(delta={"math": Delta(0.3, 0.02)}, combined_delta=Delta(0.3, 0.02))
    for r in (base, ident, win):
        store.append(r, {"math": [{"id": "1", "score": 1.0}]})
    (s,) = visualize.load_sweeps([store.path])
    assert [c.key for c in s.configs] == [base.key, ident.key, win.key]
    assert s.noise_floor == pytest.approx(R.noise_floor(ident.delta, ident.combined_delta))
    top = s.leaderboard()[0]
    assert top.key == win.key and top.label == win.config_label == "dup(4,7)"
    assert top.value("math") == (0.3, 0.02) and top.value("combined") == (0.3, 0.02)
    assert s.model == win.model and settings.key_part() == win.settings.key_part()


# --------------------------------------------------------------------------- the schema table


def test_docs_schema_table_lists_exactly_the_record_fields():
    section = repo_text.section(repo_text.DOCS / "records.md", "## The record (`RESULTS.jsonl`)")
    table = section.split("| field | type | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = {m.group(1): line for line in table.splitlines()
            for m in re.finditer(r"^\| `([a-z_]+)`(?:, `([a-z_]+)`)? \|", line)}
    names = set()
    for line in table.splitlines():
        names.update(re.findall(r"^\| `([a-z_]+)`", line))
        names.update(re.findall(r"^\| `[a-z_]+`, `([a-z_]+)`", line))
    fields = R.record_fields()
    assert names == set(fields["SweepRecord"])
    # every field of the nested objects is named in its row
    for field_name, cls in (("probes", "ProbeScore"), ("timings", "Timings"),
                            ("server", "ServerInfo"), ("model", "ModelInfo"),
                            ("settings", "Settings"), ("confirm", "ConfirmRef"),
                            ("delta", "Delta"), ("search", "SearchInfo")):
        row = rows[field_name]
        for f in fields[cls]:
            assert f'"{f}"' in row or f"`{f}`" in row, (field_name, f)


# --------------------------------------------------------------------------- files


def test_truncated_last_line_is_ignored_and_repaired(tmp_path, caplog):
    p = tmp_path / "r.jsonl"
    lines = [json.dumps({"key": f"k{i}", "n": i}) for i in range(3)]
    p.write_text("\n".join(lines) + "\n" + lines[0][:17])
    got = R.read_jsonl(p, repair=True)
    assert [r["key"] for r in got.objects] == ["k0", "k1", "k2"] and got.truncated
    assert caplog.text.count("cut-off last line 4") == 1  # one warning, naming the line
    assert p.read_text() == "\n".join(lines) + "\n"  # complete lines untouched
    R.append_jsonl(p, {"key": "k3"})
    assert [r["key"] for r in R.read_jsonl(p).objects] == ["k0", "k1", "k2", "k3"]


def test_a_bad_line_in_the_middle_is_named_once(tmp_path, caplog):
    p = tmp_path / "r.jsonl"
    p.write_text('{"key": "a"}\n{"key": \n{"key": "c"}\n')
    got = R.read_jsonl(p)
    assert [r["key"] for r in got.objects] == ["a", "c"] and got.bad_lines == [2]
    assert caplog.text.count("line 2 is not a JSON object") == 1


def test_complete_last_line_without_newline_is_kept(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_text('{"key": "a"}\n{"key": "b"}')
    assert [r["key"] for r in R.read_jsonl(p, repair=True).objects] == ["a", "b"]
    assert p.read_text() == '{"key": "a"}\n{"key": "b"}\n'


def test_repair_tail_on_the_sidecar(tmp_path):
    p = tmp_path / "r.items.jsonl"
    good = json.dumps({"key": "a", "probes": {"m": [{"id": "1"}] * 5000}}) + "\n"
    p.write_text(good + good[: len(good) // 2])
    assert R.repair_tail(p)
    assert p.read_text() == good
    assert not R.repair_tail(p)


def test_append_cuts_back_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "r.jsonl"
    R.append_jsonl(p, {"key": "a"})
    real_fsync = os.fsync

    def boom(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError):
        R.append_jsonl(p, {"key": "b"})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert p.read_text() == '{"key": "a"}\n'


def test_latest_by_key_last_wins():
    a1, b, a2 = (_record(key="a", status="error"), _record(key="b"), _record(key="a"))
    out = R.latest_by_key([a1, b, a2])
    assert out["a"].ok and list(out) == ["b", "a"]


def test_results_paths():
    p = R.results_paths("out/run.jsonl")
    assert str(p["items"]) == "out/run.items.jsonl"
    assert str(p["logs"]) == "out/run.logs"
    assert str(p["summary"]) == "out/run.summary.json"
    assert str(p["plots"]) == "out/run.plots"


# --------------------------------------------------------------------------- an older file


def test_a_results_file_from_before_reads_and_writes_back_unchanged():
    raw = R.read_jsonl(LEGACY / "r.jsonl").objects
    recs = R.read_records(LEGACY / "r.jsonl").records
    assert len(recs) == len(raw) == 7
    for obj, rec in zip(raw, recs):
        out = rec.to_json()
        # fields added since (the engine, the model's full path) come with their defaults
        assert out["server"].pop("engine") == "physical" and out["model"].pop("path") is None
        assert out == obj


def test_a_results_file_from_before_plots_as_it_did():
    (s,) = visualize.load_sweeps([LEGACY / "r.jsonl"])
    assert s.noise_source == "summary" and s.noise_floor["combined"] == 0.0
    by_label = {c.label: c for c in s.configs}
    assert set(by_label) >= {"baseline", "identity", "dup(4,7)", "dup(8,11)", "dup 6-8 (custom)"}
    assert by_label["dup(8,11)"].combined_delta == pytest.approx(0.0041034, abs=1e-6)
    cands = [c.label for c in s.leaderboard()]
    assert cands[0] == "dup(8,11)"
    assert visualize.confirm_rows(s)[0]["label"] == "dup(8,11)"


@pytest.mark.server
def test_a_results_file_from_before_resumes_without_rerunning(demo_model, llama_server_bin,
                                                             tmp_path):
    for f in ("r.jsonl", "r.items.jsonl", "r.summary.json"):
        shutil.copy(LEGACY / f, tmp_path / f)
    before = (tmp_path / "r.jsonl").read_text()
    rc = sweep.main([str(demo_model), "-o", str(tmp_path / "r.jsonl"), "--block-sizes", "3",
                     "--start-min", "4", "--start-max", "8", "--stride", "4", "--paths-file",
                     str(LEGACY / "paths.txt"), "--probes", "reasoning:4,math:3", "--mode",
                     "logprob", "--parallel", "2", "--ctx-size", "2048", "--confirm", "1",
                     "--quiet", "--engine", "physical", "--llama-server", llama_server_bin,
                     "--", "--swa-full"])
    assert rc == 0
    assert (tmp_path / "r.jsonl").read_text() == before  # every config was already there
    summary = json.loads((tmp_path / "r.summary.json").read_text())
    assert summary["counts"]["ran"] == 0 and summary["counts"]["resumed"] == 7
