"""Tests for visualize.py (rys-plot): reading both formats, tables, figures, HTML, Pareto, export.

Sweep results are synthesised here (a block sweep and an ablation sweep over an 18-layer model,
written to the rys.sweep/1 schema) so the tests do not depend on a real sweep having run.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rys import layer_path
from rys import sweep_record as R
from rys import visualize as viz

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
REFERENCE = DATA / "reference_sweep.jsonl"

N_LAYERS = 18
PROBES = ("math", "eq")
BASE = {"math": 0.40, "eq": 0.55}
SE = {"math": 0.010, "eq": 0.012}       # stderr of every synthetic delta
IDENTITY_DELTA = {"math": 0.005, "eq": -0.030}
FINGERPRINT = "f" * 16


# --------------------------------------------------------------------------------------------
# synthetic rys.sweep/1 records


def _key(path: str, kind: str, extra: str = "") -> str:
    return hashlib.sha256(f"{FINGERPRINT}|{path}|{kind}|{extra}".encode()).hexdigest()[:16]


def make_record(kind: str, path: list[int], block: dict | None, deltas: dict[str, float] | None,
                status: str = "ok", n_src: int = N_LAYERS, base: dict | None = None,
                stage: str = "sweep", limit: int | None = None, split: str = "dev",
                confirm: dict | None = None) -> dict:
    """One record, built by sweep_record (the one definition of the format) and written as the
    sweep writes it."""
    base = base or BASE
    spec = layer_path.format(path)
    ok = status == "ok"
    probes, delta = {}, {}
    if ok:
        for p, b in base.items():
            d = 0.0 if deltas is None else deltas[p]
            probes[p] = R.ProbeScore(score=b + d, stderr=0.03, n=200, version=1, hash="abc",
                                     split="dev")
            if deltas is not None:
                delta[p] = R.Delta(d, SE[p])
    combined = (sum(b + (0.0 if deltas is None else deltas[p]) for p, b in base.items())
                / len(base)) if ok else None
    rec = R.SweepRecord(
        key=_key(spec, kind, f"{limit}|{split}"), path=spec, kind=R.Kind(kind),
        stage=R.Stage(stage), confirm=(R.ConfirmRef(confirm["of"], R.Kind(confirm["kind"]))
                                       if confirm else None),
        block=R.Block.from_json(block) if block else None, n_layers=len(path), status=status,
        error=None if ok else "llama-server exited with code 134\nGGML_ASSERT failed",
        probes=probes, delta=delta, combined=combined,
        combined_delta=(R.Delta(sum(deltas.values()) / len(deltas), 0.008)
                        if ok and deltas is not None else None),
        timings=R.Timings(0.4, 1.2, 30.0, 31.6),
        server=R.ServerInfo(["-c", "8192"], "b11434", f"RESULTS.logs/{kind}.log"),
        model=R.ModelInfo("demo-18L.gguf", 123, "gemma3", n_src, FINGERPRINT,
                          "/models/demo-18L.gguf"),
        settings=R.Settings(split=split, limit=limit, mode="logprob",
                            weights={p: 1.0 for p in base}, suite="math:200,eq:200"),
        started_at="2025-06-01T00:00:00Z", ended_at="2025-06-01T00:01:00Z")
    return rec.to_json()


def block_sweep_records(seed: int = 7) -> tuple[list[dict], dict]:
    """baseline + identity + 22 block configs (2 of them errors) over an 18-layer model."""
    rng = random.Random(seed)
    recs = [make_record("baseline", layer_path.identity(N_LAYERS), None, None),
            make_record("identity", layer_path.identity(N_LAYERS), None, IDENTITY_DELTA)]
    blocks = [(i, j) for i in range(2, 14, 2) for j in (i + 1, i + 3, i + 5) if j <= N_LAYERS]
    blocks = blocks[:20] + [(3, 6), (9, 12)]
    errors = {(4, 9), (12, 13)}
    truth = {}
    for i, j in blocks:
        path = layer_path.duplicate(i, j, N_LAYERS)
        if (i, j) in errors:
            recs.append(make_record("block", path, {"i": i, "j": j, "times": 1}, None, "error"))
            continue
        bump = math.exp(-((i - 6) ** 2 + (j - 9) ** 2) / 8.0)
        d = {"math": round(0.12 * bump - 0.03 + rng.uniform(-0.01, 0.01), 4),
             "eq": round(0.06 * bump - 0.02 * (j - i) / 5 + rng.uniform(-0.01, 0.01), 4)}
        truth[(i, j)] = d
        recs.append(make_record("block", path, {"i": i, "j": j, "times": 1}, d))
    return recs, truth


def ablation_records(seed: int = 11) -> tuple[list[dict], dict]:
    rng = random.Random(seed)
    recs, truth = [], {}
    for layer in range(N_LAYERS):
        path = layer_path.ablate(layer, N_LAYERS)
        if layer == 9:
            recs.append(make_record("ablate", path, {"skip": layer}, None, "error"))
            continue
        hurt = -0.25 if layer in (0, N_LAYERS - 1) else -0.02 * rng.random() - 0.01 * (layer % 3)
        d = {"math": round(hurt, 4), "eq": round(hurt / 2 + rng.uniform(-0.01, 0.01), 4)}
        truth[layer] = d
        recs.append(make_record("ablate", path, {"skip": layer}, d))
    return recs, truth


def write_jsonl(path: Path, recs: list[dict], tail: str = "") -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)
    return path


@pytest.fixture
def sweep_files(tmp_path):
    brecs, btruth = block_sweep_records()
    arecs, atruth = ablation_records()
    bfile = write_jsonl(tmp_path / "RESULTS.jsonl", brecs)
    afile = write_jsonl(tmp_path / "ABLATE.jsonl", arecs)
    return bfile, afile, btruth, atruth


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def expected_floor(p: str) -> float:
    return max(abs(IDENTITY_DELTA[p]), 2 * SE[p])


# --------------------------------------------------------------------------------------------
# Pareto front


def test_pareto_single_point():
    assert viz.pareto_front({"a": (0.1, -0.2)}) == {"a"}


def test_pareto_empty():
    assert viz.pareto_front({}) == set()


def test_pareto_domination_and_tradeoffs():
    pts = {"best_math": (3.0, 0.0), "best_eq": (0.0, 3.0), "balanced": (2.0, 2.0),
           "dominated": (1.0, 1.0), "weak": (2.0, 1.0)}
    assert viz.pareto_front(pts) == {"best_math", "best_eq", "balanced"}


def test_pareto_ties_in_one_coordinate():
    # equal on x, better on y: the better one dominates; equal on both: neither dominates
    pts = {"a": (1.0, 1.0), "b": (1.0, 2.0), "c": (0.5, 2.0)}
    assert viz.pareto_front(pts) == {"b"}


def test_pareto_duplicates_both_kept():
    pts = {"a": (1.0, 2.0), "b": (1.0, 2.0), "c": (0.0, 0.0)}
    assert viz.pareto_front(pts) == {"a", "b"}


def test_pareto_three_dims_and_missing_values():
    pts = {"a": (1, 0, 0), "b": (0, 1, 0), "c": (0, 0, 1), "d": (0, 0, 0),
           "nan": (float("nan"), 9, 9), "none": (None, 9, 9)}
    assert viz.pareto_front(pts) == {"a", "b", "c"}


def test_pareto_rejects_mixed_lengths():
    with pytest.raises(ValueError):
        viz.pareto_front({"a": (1, 2), "b": (1, 2, 3)})


# --------------------------------------------------------------------------------------------
# reading and normalising


def test_reads_rys_records_and_identity_noise_floor(sweep_files):
    bfile, afile, btruth, atruth = sweep_files
    [s] = viz.load_sweeps([bfile, afile])         # one model fingerprint -> one group
    assert s.fmt == "rys" and s.label == "demo-18L" and s.source_n_layers == N_LAYERS
    assert s.n_errors == 3
    assert len(s.ok) == 2 + len(btruth) + len(atruth)
    assert s.baseline is not None and s.baseline.score("math") == pytest.approx(BASE["math"])
    assert s.noise_source == "identity"
    for p in PROBES:
        assert s.floor(p) == pytest.approx(expected_floor(p))
    assert s.floor("combined") == pytest.approx(max(abs(sum(IDENTITY_DELTA.values()) / 2), 0.016))
    board = s.leaderboard()
    vals = [c.rank_value for c in board]
    assert vals == sorted(vals, reverse=True)
    assert all(c.kind != "baseline" and c.status == "ok" for c in board)
    best = max(btruth.items(), key=lambda kv: sum(kv[1].values()))
    assert (board[0].i, board[0].j) == best[0]
    c = next(c for c in s.configs if (c.i, c.j) == (6, 9))
    assert c.probes["eq"].delta == pytest.approx(btruth[(6, 9)]["eq"])
    assert c.probes["eq"].delta_stderr == pytest.approx(SE["eq"])


def test_summary_json_noise_floor_wins(sweep_files):
    bfile, *_ = sweep_files
    (bfile.parent / "RESULTS.summary.json").write_text(
        json.dumps({"noise_floor": {"math": 0.05, "eq": 0.07}, "leaderboard": []}))
    [s] = viz.load_sweeps([bfile])
    assert s.noise_source.startswith("summary")
    assert s.floor("math") == 0.05 and s.floor("eq") == 0.07
    assert s.floor("combined") is not None   # filled in from the identity record


def test_no_identity_no_summary_means_unknown_floor(tmp_path):
    recs, _ = block_sweep_records()
    f = write_jsonl(tmp_path / "r.jsonl", [r for r in recs if r["kind"] != "identity"])
    [s] = viz.load_sweeps([f])
    assert s.noise_floor == {} and s.noise_source == "unknown"


def test_truncated_last_line_ignored_with_warning(tmp_path, caplog):
    recs, truth = block_sweep_records()
    f = write_jsonl(tmp_path / "r.jsonl", recs, tail=json.dumps(recs[-1])[:57])
    with caplog.at_level(logging.WARNING):
        [s] = viz.load_sweeps([f])
    assert s.n_truncated == 1
    assert len(s.configs) == len(recs)
    warned = [r.getMessage() for r in caplog.records if "cut-off last line" in r.getMessage()]
    assert len(warned) == 1 and f"line {len(recs) + 1}" in warned[0]


def test_retried_error_replaced_by_later_ok(tmp_path):
    recs, _ = block_sweep_records()
    failed = next(r for r in recs if r["status"] == "error")
    retry = make_record("block", layer_path.parse(failed["path"], N_LAYERS), failed["block"],
                        {"math": 0.01, "eq": 0.0})
    assert retry["key"] == failed["key"]
    [s] = viz.load_sweeps([write_jsonl(tmp_path / "r.jsonl", recs + [retry])])
    [c] = [c for c in s.configs if c.key == failed["key"]]
    assert c.status == "ok" and c.probes["math"].delta == 0.01


def test_significance_rule():
    assert viz.significance(0.05, 0.01, 0.02) == "+"
    assert viz.significance(-0.05, 0.01, 0.02) == "-"
    assert viz.significance(0.015, 0.01, 0.02) == "~"    # inside the floor
    assert viz.significance(0.03, 0.02, 0.02) == "~"     # inside 2*own stderr
    assert viz.significance(0.03, None, None) == "?"
    assert viz.significance(None, 0.01, 0.02) == "?"


def test_reference_format_normalised():
    [s] = viz.load_sweeps([REFERENCE])
    assert s.fmt == "reference" and s.probe_names == ["math", "eq", "reasoning"]
    base = s.baseline
    assert base is not None and base.score("eq") == pytest.approx(0.615)   # 61.5 of 100
    rows = [json.loads(l) for l in REFERENCE.read_text().splitlines()]
    b = rows[0]
    by = {(c.i, c.j): c for c in s.configs if c.kind == "block"}
    assert len(by) == len(rows) - 1
    for r in rows[1:]:
        c = by[(r["dup_start"], r["dup_end"])]
        assert c.probes["math"].delta == pytest.approx(r["math_score"] - b["math_score"])
        assert c.probes["eq"].delta == pytest.approx((r["eq_score"] - b["eq_score"]) / 100)
        assert c.probes["reasoning"].stderr is None and c.probes["reasoning"].delta_stderr is None
    board = s.leaderboard()
    assert (board[0].i, board[0].j) == (5, 8)       # +0.06 math, +0.045 eq, +0.05 reasoning
    assert (board[-1].i, board[-1].j) == (10, 12)
    # no stderr, no identity: no significance claims anywhere
    assert s.noise_floor == {}
    rows_out = viz.leaderboard_rows(s, s.probe_names)
    assert {r["sig"] for r in rows_out} == {"?"}
    assert {pp["sig"] for r in rows_out for pp in r["probes"].values()} == {"?"}
    front = {c.label for c in viz.pareto_configs(s, s.probe_names)}
    assert front == {"dup(5,8)", "dup(7,11)"}


def test_reference_text_says_no_claims(capsys):
    assert viz.main([str(REFERENCE), "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "noise floor: unknown" in out
    sig_col = re.findall(r"^\s*\d+\s+dup\(.*\s(\S+)$", out, re.M)
    assert len(sig_col) == 8 and set(sig_col) == {"?"}
    assert re.search(r"^\s*1\s+dup\(5,8\)", out, re.M)


# --------------------------------------------------------------------------------------------
# figures


def test_default_run_writes_pngs_of_fixed_size(sweep_files, capsys):
    bfile, afile, *_ = sweep_files
    assert viz.main([str(bfile), str(afile)]) == 0
    out_dir = bfile.parent / "RESULTS.plots"          # default: next to the first JSONL
    out = capsys.readouterr().out
    assert str(out_dir) in out
    # 2 probes + combined = 3 panels side by side of 5.5x5 in at 100 dpi
    assert png_size(out_dir / "heatmap.png") == (1650, 500)
    # 3 stacked panels: 10 in wide, 0.8 + 3 * 2.6 in high
    assert png_size(out_dir / "ablation.png") == (1000, 860)
    assert png_size(out_dir / "pareto_math_eq.png") == (700, 600)
    for f in out_dir.iterdir():
        assert f.stat().st_size > 5000
    assert not list(out_dir.glob(".*tmp"))


def test_heatmap_cells_blank_muted_and_oriented(sweep_files):
    bfile, _, btruth, _ = sweep_files
    [s] = viz.load_sweeps([bfile])
    fig = viz.heatmap_figure(s, ["math", "eq"], top=3)
    ax = fig.axes[0]                                   # the math panel
    assert "end layer j" in ax.get_xlabel() and "start layer i" in ax.get_ylabel()
    lo, hi = ax.get_ylim()
    assert lo > hi                                     # i grows downwards
    assert "baseline 0.400" in ax.get_title()
    by_gid = {c.get_gid(): c for c in ax.collections}
    strong, weak = by_gid["cells"].get_array(), by_gid["cells-within-noise"].get_array()
    n_strong = int((~strong.mask).sum())
    n_weak = int((~weak.mask).sum())
    floor = expected_floor("math")
    quiet = sum(1 for d in btruth.values() if abs(d["math"]) <= max(floor, 2 * SE["math"]))
    assert n_strong + n_weak == len(btruth)            # errors and not-run cells are blank
    assert n_weak == quiet and 0 < quiet < len(btruth)
    assert weak.mask.size - n_weak - n_strong > 0      # some cells of the box were not run
    # the three best math cells are numbered 1..3
    labels = [t.get_text() for t in ax.texts]
    assert {"1", "2", "3"} <= set(labels) and labels.count("x") == 2


def test_single_probe_heatmap_size(tmp_path):
    base = {"math": 0.4}
    recs = [make_record("baseline", layer_path.identity(12), None, None, n_src=12, base=base)]
    for i, j in [(2, 4), (3, 6), (5, 7)]:
        recs.append(make_record("block", layer_path.duplicate(i, j, 12),
                                {"i": i, "j": j, "times": 1}, {"math": 0.01 * i}, n_src=12,
                                base=base))
    f = write_jsonl(tmp_path / "one.jsonl", recs)
    assert viz.main([str(f), "--out", str(tmp_path / "p")]) == 0
    assert png_size(tmp_path / "p" / "heatmap.png") == (550, 500)
    assert not (tmp_path / "p" / "ablation.png").exists()


def test_reference_heatmap_written(tmp_path):
    assert viz.main([str(REFERENCE), "--out", str(tmp_path)]) == 0
    # 3 probes + combined = 2x2 panels
    assert png_size(tmp_path / "heatmap.png") == (1100, 1000)
    assert png_size(tmp_path / "pareto_math_eq.png") == (700, 600)


# --------------------------------------------------------------------------------------------
# text, json, html


def test_table_and_ascii(sweep_files, capsys):
    bfile, afile, btruth, _ = sweep_files
    assert viz.main([str(bfile), str(afile), "--no-plots", "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "noise floor (identity): math ±0.0200 eq ±0.0300" in out
    assert "configs: " in out and "3 error" in out
    ranks = [int(m) for m in re.findall(r"^\s*(\d+)\s+(?:dup|skip|identity)", out, re.M)]
    assert ranks == [1, 2, 3, 4, 5]
    assert "more (--top 0 shows all)" in out
    grid_rows = [int(m) for m in re.findall(r"^\s*i=(\d+) \|", out, re.M)]
    assert grid_rows == sorted(grid_rows) and grid_rows[0] == 2
    assert re.search(r"^skip\s+9\s.*error$", out, re.M)
    assert "Pareto front over math,eq:" in out


def test_probe_selection_and_unknown_probe(sweep_files, capsys):
    bfile, *_ = sweep_files
    assert viz.main([str(bfile), "--no-plots", "--probes", "eq", "--format", "table"]) == 0
    out = capsys.readouterr().out
    assert "eq Δ" in out and "math Δ" not in out
    assert viz.main([str(bfile), "--no-plots", "--probes", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1


def test_json_format(sweep_files, capsys):
    bfile, afile, btruth, atruth = sweep_files
    assert viz.main([str(bfile), str(afile), "--format", "json", "--no-plots"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [g] = doc["sweeps"]
    # candidates only: the identity control is a reference row, reported on its own
    assert g["n_errors"] == 3 and len(g["leaderboard"]) == len(btruth) + len(atruth)
    assert all(r["kind"] != "identity" for r in g["leaderboard"])
    assert g["identity"]["kind"] == "identity" and g["verdict"]
    assert g["noise_floor"]["math"] == pytest.approx(expected_floor("math"))
    assert g["pareto_front"]


def test_html_report_self_contained(sweep_files, tmp_path):
    bfile, afile, btruth, _ = sweep_files
    out = tmp_path / "report" / "morning.html"
    out.parent.mkdir()
    assert viz.main([str(bfile), str(afile), "--html", str(out), "--no-plots"]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["morning.html"]
    page = out.read_text()
    for bad in ('src="http', "href=\"http", "<link", "@import url(http", "<script src"):
        assert bad not in page
    assert "http://" not in page and "https://" not in page
    assert page.count('src="data:image/png;base64,') == 3      # heatmap, ablation, pareto
    assert "Noise floor" in page and "Leaderboard" in page and "Pareto front" in page
    assert "GGML_ASSERT" in page                                # error table
    best = max(btruth.items(), key=lambda kv: sum(kv[1].values()))[0]
    assert f"dup({best[0]},{best[1]})" in page
    assert not (bfile.parent / "RESULTS.plots").exists()        # --no-plots honoured


# --------------------------------------------------------------------------------------------
# bad input


@pytest.mark.parametrize("content", [None, "this is not json\n", '{"foo": 1}\n{"bar": 2}\n', ""])
def test_bad_input_exit_2(tmp_path, capsys, content):
    f = tmp_path / "x.jsonl"
    if content is not None:
        f.write_text(content)
    assert viz.main([str(f), "--html", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.jsonl" in err[0]
    assert not (tmp_path / "r.html").exists() and not (tmp_path / "x.plots").exists()


def test_reference_without_baseline_exit_2(tmp_path, capsys):
    f = tmp_path / "ref.jsonl"
    f.write_text('{"dup_start": 1, "dup_end": 3, "math_score": 0.5}\n')
    assert viz.main([str(f)]) == 2
    assert "is_baseline" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# export


def _forty_layer_sweep(tmp_path: Path) -> Path:
    base = {"math": 0.5, "eq": 0.5}
    recs = [make_record("baseline", layer_path.identity(40), None, None, n_src=40, base=base)]
    for (i, j), d in {(12, 15): 0.08, (20, 23): 0.02, (30, 31): -0.05}.items():
        recs.append(make_record("block", layer_path.duplicate(i, j, 40),
                                {"i": i, "j": j, "times": 1}, {"math": d, "eq": d / 2},
                                n_src=40, base=base))
    return write_jsonl(tmp_path / "forty.jsonl", recs)


def test_export_prints_rys_path_command(tmp_path, capsys):
    f = _forty_layer_sweep(tmp_path)
    assert viz.main([str(f), "--export", "1", "3"]) == 0
    out = capsys.readouterr().out
    assert "rys-path /models/demo-18L.gguf demo-18L-dup12-15.gguf -p 0..14,12..39" in out
    assert "-p 0..30,30..39" in out
    assert not (tmp_path / "forty.plots").exists()


def test_export_mergekit_yaml(tmp_path, capsys):
    f = _forty_layer_sweep(tmp_path)
    y = tmp_path / "merge.yaml"
    assert viz.main([str(f), "--export", "1", "--mergekit-yaml", str(y),
                     "--model", "org/model-40L"]) == 0
    text = y.read_text()
    assert re.findall(r"layer_range: \[(\d+), (\d+)\]", text) == [("0", "15"), ("12", "40")]
    assert '"org/model-40L"' in text and "passthrough" in text


def test_export_reference_needs_layer_count(capsys, tmp_path):
    assert viz.main([str(REFERENCE), "--export", "1"]) == 2
    assert "--n-layers" in capsys.readouterr().err
    y = tmp_path / "m.yaml"
    assert viz.main([str(REFERENCE), "--export", "1", "--n-layers", "24",
                     "--mergekit-yaml", str(y), "--model", "old/model"]) == 0
    out = capsys.readouterr().out
    assert "-p 0..7,5..23" in out
    assert re.findall(r"layer_range: \[(\d+), (\d+)\]", y.read_text()) == [("0", "8"), ("5", "24")]


def test_export_bad_rank_writes_nothing(tmp_path, capsys):
    f = _forty_layer_sweep(tmp_path)
    y = tmp_path / "m.yaml"
    assert viz.main([str(f), "--export", "1", "9", "--mergekit-yaml", str(y),
                     "--model", "x/y"]) == 2
    assert "ranks go from 1 to 3" in capsys.readouterr().err
    assert not y.exists() and not list(tmp_path.glob("m-rank*"))


# --------------------------------------------------------------------------------------------
# --watch (as `python -m rys.visualize`, stopped with Ctrl-C)


def _wait_for(cond, timeout: float = 60.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_watch_rerenders_and_ctrl_c_exits_0(tmp_path):
    recs, truth = block_sweep_records()
    f = write_jsonl(tmp_path / "live.jsonl", recs[:6])
    page = tmp_path / "live.html"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rys.visualize", str(f), "--watch", "--watch-interval", "0.2",
         "--html", str(page), "--no-plots", "--format", "table"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # a shell's background job inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt: give the child the default disposition, as a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert _wait_for(page.exists), "first render never happened"
        first = page.read_text()
        assert 'http-equiv="refresh"' in first
        new = [r for r in recs[6:] if r["status"] == "ok"][-1]
        new_label = f"dup({new['block']['i']},{new['block']['j']})"
        assert new_label not in first
        with f.open("a") as fh:                      # the sweep appends, the last line half-written
            fh.write("".join(json.dumps(r) + "\n" for r in recs[6:]) + '{"schema": "rys.sw')
        assert _wait_for(lambda: new_label in page.read_text()), "no re-render after growth"
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "cut-off last line" in err


def test_two_models_get_separate_prefixed_outputs(sweep_files, tmp_path, capsys):
    bfile, *_ = sweep_files
    out = tmp_path / "plots"
    assert viz.main([str(bfile), str(REFERENCE), "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["demo-18L_heatmap.png", "demo-18L_pareto_math_eq.png",
                     "reference_sweep_heatmap.png", "reference_sweep_pareto_math_eq.png"]
    text = capsys.readouterr().out
    assert "== demo-18L" in text and "== reference_sweep" in text
    assert viz.main([str(bfile), str(REFERENCE), "--export", "1"]) == 2   # ranks of which model?


def test_repeated_block_gets_its_own_heatmap(tmp_path):
    recs, _ = block_sweep_records()
    for i, j in [(6, 9), (8, 11)]:
        recs.append(make_record("grid", layer_path.duplicate(i, j, N_LAYERS, 2),
                                {"i": i, "j": j, "times": 2}, {"math": 0.05, "eq": 0.01}))
    f = write_jsonl(tmp_path / "g.jsonl", recs)
    assert viz.main([str(f), "--out", str(tmp_path / "p"), "--format", "ascii"]) == 0
    assert png_size(tmp_path / "p" / "heatmap_x3.png") == (1650, 500)
    assert png_size(tmp_path / "p" / "heatmap.png") == (1650, 500)


def test_export_of_repeated_block(tmp_path, capsys):
    base = {"math": 0.5}
    recs = [make_record("baseline", layer_path.identity(40), None, None, n_src=40, base=base),
            make_record("grid", layer_path.duplicate(12, 15, 40, 2), {"i": 12, "j": 15, "times": 2},
                        {"math": 0.1}, n_src=40, base=base)]
    f = write_jsonl(tmp_path / "g.jsonl", recs)
    y = tmp_path / "g.yaml"
    assert viz.main([str(f), "--export", "1", "--mergekit-yaml", str(y), "--model", "a/b"]) == 0
    assert "dup12-15x3.gguf" in capsys.readouterr().out
    assert re.findall(r"layer_range: \[(\d+), (\d+)\]", y.read_text()) == [
        ("0", "15"), ("12", "15"), ("12", "40")]


def test_partial_halving_records_give_way_to_full_ones(tmp_path, capsys):
    recs, truth = block_sweep_records()
    survivor, dropped = (6, 9), (5, 8)
    extra = []
    for (i, j) in (survivor, dropped):
        extra.append(make_record("block", layer_path.duplicate(i, j, N_LAYERS),
                                 {"i": i, "j": j, "times": 1}, {"math": 0.5, "eq": 0.5},
                                 stage="halving", limit=4))
    # the survivor's full record (from the block sweep) comes first in the file on purpose
    f = write_jsonl(tmp_path / "h.jsonl", recs + extra)
    [s] = viz.load_sweeps([f])
    rows = [c for c in s.configs if (c.i, c.j) == survivor]
    assert len(rows) == 1 and not rows[0].partial
    assert rows[0].probes["math"].delta == pytest.approx(truth[survivor]["math"])
    rows = [c for c in s.configs if (c.i, c.j) == dropped]
    assert len(rows) == 1 and rows[0].partial and rows[0].limit == 4
    assert viz.main([str(f), "--no-plots", "--format", "table", "--top", "0"]) == 0
    out = capsys.readouterr().out
    # its partial score (0.5 on 4 items) beats every full one, yet it ranks below all of them
    rank = int(re.search(r"^\s*(\d+)\s+dup\(5,8\)\s+block \(partial\)", out, re.M).group(1))
    assert rank == len([c for c in s.leaderboard() if not c.partial]) + 1 > 1
    assert "partial = scored on a slice of the items only" in out
    assert "dup(5,8)" not in s.verdict()


def test_confirm_records_kept_out_of_the_ranking(tmp_path, capsys):
    recs, truth = block_sweep_records()
    best = next(r for r in recs if r.get("block") == {"i": 6, "j": 9, "times": 1})
    ident = layer_path.identity(N_LAYERS)
    recs.append(make_record("confirm", ident, None, None, split="test", stage="confirm",
                            confirm={"of": recs[0]["key"], "kind": "baseline"}))
    recs.append(make_record("confirm", layer_path.duplicate(6, 9, N_LAYERS),
                            {"i": 6, "j": 9, "times": 1}, {"math": 0.06, "eq": 0.03},
                            split="test", stage="confirm", confirm={"of": best["key"],
                                                                    "kind": "block"}))
    f = write_jsonl(tmp_path / "c.jsonl", recs)
    [s] = viz.load_sweeps([f])
    assert all(c.kind != "confirm" for c in s.leaderboard())
    assert len(s.leaderboard()) == len(truth)
    [row] = viz.confirm_rows(s)
    assert row["label"] == "dup(6,9)" and row["of"] == best["key"]
    assert row["dev_delta"] == pytest.approx(sum(truth[(6, 9)].values()) / 2)
    assert row["test_delta"] == pytest.approx(0.045) and row["sig"] == "+"
    assert viz.main([str(f), "--no-plots", "--format", "table"]) == 0
    assert re.search(r"dup\(6,9\)\s+dev\s+\+0\.071±0\.008\s+test\s+\+0\.045±0\.008\s+"
                     r"adjusted p\s+[0-9.e-]+\s+holds", capsys.readouterr().out)
    html_out = tmp_path / "c.html"
    assert viz.main([str(f), "--no-plots", "--html", str(html_out)]) == 0
    assert "Held-out confirmation" in html_out.read_text()


@pytest.mark.server
def test_plots_from_a_real_small_sweep(demo_model, llama_server_bin, tmp_path):
    """The sweep's real records (not our synthetic ones) render: table, heatmap, report."""
    from rys import sweep

    out = tmp_path / "real.jsonl"
    argv = [str(demo_model), "-o", str(out), "--block-sizes", "3", "--start-min", "4",
            "--start-max", "4", "--probes", "math:2,reasoning:3", "--parallel", "2",
            "--tmp-dir", str(tmp_path / "shm"), "--llama-server", llama_server_bin, "--quiet"]
    assert sweep.main(argv) == 0
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds == ["baseline", "identity", "block"]
    page = tmp_path / "report.html"
    assert viz.main([str(out), "--out", str(tmp_path / "plots"), "--html", str(page)]) == 0
    # two probes + combined: one row of three panels
    assert png_size(tmp_path / "plots" / "heatmap.png") == (1650, 500)
    html = page.read_text()
    assert "dup(4,7)" in html and "data:image/png;base64," in html
    assert not re.search(r"""(src|href)=["']https?:""", html)
