"""compare_eval without lm-eval or a server: results loading/merging/diffing, output formats,
output-type resolution on a synthetic task index, the lm-eval command line, CLI input errors."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rys import compare_eval as ce

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data" / "lm_eval_results"
RUN_A, RUN_B = DATA / "run_a", DATA / "run_b"
BOOL = "bbh_cot_fewshot_boolean_expressions"
LOGIC = "bbh_cot_fewshot_logical_deduction_three_objects"


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


def _row(cmp: ce.Comparison, task: str, metric: str, filt: str) -> ce.Row:
    (row,) = [r for r in cmp.rows if (r.task, r.metric, r.filter) == (task, metric, filt)]
    return row


# --------------------------------------------------------------------------- parse


def test_parse_results_reads_values_stderr_and_na():
    data = {
        "results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1,
                          "f1,strict": 0.25, "f1_stderr,strict": "N/A", "sample_len": 40,
                          "name": "t", "bad,none": "text"}},
        "n-samples": {"t": {"original": 100, "effective": 40}},
        "higher_is_better": {"t": {"acc": True, "f1": True}},
        "config": {"limit": 40.0},
        "date": 123.5,
    }
    rf = ce.parse_results(data, "x.json", mtime=99.0)
    assert rf.tasks == {"t": {("acc", "none"): ce.Metric(0.5, 0.1), ("f1", "strict"): ce.Metric(0.25, None)}}
    assert rf.n == {"t": 40}
    assert rf.date == 123.5 and rf.limit == 40.0
    assert rf.higher_is_better == {"t": {"acc": True, "f1": True}}


def test_parse_results_falls_back_to_mtime_and_handles_nan_and_groups():
    data = {"results": {"g": {"acc,none": 0.4, "acc_stderr,none": float("nan")},
                        "g_sub": {"acc,none": 0.4, "acc_stderr,none": 0.05}},
            "groups": {"g": {"acc,none": 0.4}}, "group_subtasks": {"g": ["g_sub"], "g_sub": []}}
    rf = ce.parse_results(data, "x.json", mtime=42.0)
    assert rf.date == 42.0
    assert rf.tasks["g"][("acc", "none")] == ce.Metric(0.4, None)
    assert rf.groups == {"g"}


def test_parse_results_rejects_non_results():
    with pytest.raises(ValueError, match="not an lm-eval results file"):
        ce.parse_results({"schema": "x"}, "x.json")


# --------------------------------------------------------------------------- merge


def _rf(path: str, date: float, tasks: dict, n: dict | None = None) -> ce.ResultsFile:
    return ce.ResultsFile(path=path, date=date, tasks=tasks, n=n or {})


def test_merge_keeps_every_task_and_takes_newest_per_task_by_date():
    old = _rf("b_old.json", 1.0, {"x": {("acc", "none"): ce.Metric(0.1, 0.01)},
                                  "y": {("acc", "none"): ce.Metric(0.7, 0.02)}}, {"x": 10})
    new = _rf("a_new.json", 2.0, {"x": {("acc", "none"): ce.Metric(0.3, 0.01)}}, {"x": 500})
    run, notes = ce.merge_results("r", [new, old])  # input order must not matter
    assert run.tasks["x"][("acc", "none")].value == 0.3
    assert run.tasks["y"][("acc", "none")].value == 0.7  # a task run separately is not dropped
    assert run.sources == {"x": "a_new.json", "y": "b_old.json"}
    assert run.n == {"x": 500}
    assert len(notes) == 1 and "task x" in notes[0] and "a_new.json" in notes[0] and "b_old.json" in notes[0]


def test_load_run_recursive_skips_non_results_files_and_logs_newest(caplog):
    caplog.set_level("INFO", logger="rys.eval")
    run_a, notes = ce.load_run(RUN_A)
    assert set(run_a.tasks) == {"gsm8k", "ifeval", "bbh_cot_fewshot", BOOL, LOGIC}
    assert run_a.tasks["gsm8k"][("exact_match", "strict-match")] == ce.Metric(0.40, 0.02)
    assert run_a.sources["ifeval"].endswith(os.path.join("older", "results_2026-01-01T00-00-00.000000.json"))
    assert run_a.groups == {"bbh_cot_fewshot"}
    assert any("gsm8k" in n for n in notes)
    run_b, notes_b = ce.load_run(RUN_B, "b")  # other.json, rys_eval_run.json, samples: skipped
    assert run_b.name == "b" and notes_b == []
    assert "arc_challenge_chat" in run_b.tasks


def test_load_run_errors(tmp_path):
    with pytest.raises(ce.UsageError, match="no lm-eval results"):
        ce.load_run(tmp_path)
    with pytest.raises(ce.UsageError, match="not a directory"):
        ce.load_run(tmp_path / "nope")


# --------------------------------------------------------------------------- compare


def _runs() -> list[ce.RunResults]:
    return [ce.load_run(RUN_A, "A")[0], ce.load_run(RUN_B, "B")[0]]


def test_compare_rows_deltas_flags_and_missing():
    cmp = ce.compare_runs(_runs())
    strict = _row(cmp, "gsm8k", "exact_match", "strict-match")
    assert strict.delta == pytest.approx(0.10)
    assert strict.delta_stderr == pytest.approx(math.sqrt(0.02**2 + 0.02**2))
    assert strict.significant and strict.direction == "better"
    small = _row(cmp, BOOL, "exact_match", "get-answer")
    assert small.delta == pytest.approx(0.02) and not small.significant
    # stderr "N/A" on both ends: a delta but no stderr, never flagged
    group = _row(cmp, "bbh_cot_fewshot", "exact_match", "get-answer")
    assert group.delta == pytest.approx(0.04) and group.delta_stderr is None and not group.significant
    # metric missing from one run / task missing from one run: rows kept, cells None
    flex = _row(cmp, "gsm8k", "exact_match", "flexible-extract")
    assert flex.cells[1] is None and flex.delta is None
    assert _row(cmp, "ifeval", "prompt_level_strict_acc", "none").cells[1] is None
    assert _row(cmp, "arc_challenge_chat", "exact_match", "remove_whitespace").cells[0] is None
    assert any("B: missing task(s) ifeval" in n for n in cmp.notes)
    assert any("A: missing task(s) arc_challenge_chat" in n for n in cmp.notes)
    assert any("arc_challenge_chat n=25" in n for n in cmp.notes)


def test_average_is_unweighted_over_rows_in_every_run_without_groups():
    cmp = ce.compare_runs(_runs())
    assert cmp.average is not None and cmp.average_count == 3
    a = (0.40 + 0.60 + 0.22) / 3
    b = (0.50 + 0.62 + 0.20) / 3
    assert cmp.average.cells[0].value == pytest.approx(a)
    assert cmp.average.cells[1].value == pytest.approx(b)
    assert cmp.average.delta == pytest.approx(b - a)
    se = math.sqrt(0.02**2 + 0.05**2 + 0.06**2) / 3
    assert cmp.average.cells[0].stderr == pytest.approx(se)


def test_flag_direction_follows_higher_is_better():
    lower = ce.Row("t", "perplexity", "none", [ce.Metric(10.0, 0.1), ce.Metric(12.0, 0.1)], False)
    assert lower.significant and lower.direction == "worse"
    zero = ce.Row("t", "acc", "none", [ce.Metric(0.0, 0.0), ce.Metric(1.0, 0.0)], True)
    assert zero.significant  # both stderr 0 (all items agree): any change is beyond 2 se
    single = ce.Row("t", "acc", "none", [ce.Metric(0.5, 0.1)], True)
    assert single.delta is None and not single.significant


def test_three_runs_delta_is_last_minus_first():
    mk = lambda name, v: ce.RunResults(name, {"t": {("acc", "none"): ce.Metric(v, 0.01)}}, {"t": name})
    cmp = ce.compare_runs([mk("a", 0.2), mk("b", 0.9), mk("c", 0.5)])
    assert cmp.rows[0].delta == pytest.approx(0.3)


# --------------------------------------------------------------------------- formats


def test_format_table_markdown_csv():
    cmp = ce.compare_runs(_runs())
    table = ce.format_comparison(cmp, "table")
    line = next(ln for ln in table.splitlines() if ln.startswith("gsm8k") and "strict-match" in ln)
    assert "0.4000 ± 0.0200" in line and "0.5000 ± 0.0200" in line and "+0.1000" in line and "* better" in line
    assert "missing" in next(ln for ln in table.splitlines() if "flexible-extract" in ln)
    assert table.splitlines()[0].split()[:5] == ["task", "metric", "filter", "A", "B"]
    assert any(ln.startswith("average") for ln in table.splitlines())

    md = ce.format_comparison(cmp, "markdown")
    assert md.splitlines()[0].startswith("| task | metric | filter | A | B |")
    assert md.splitlines()[1].startswith("|---|")

    rows = _csv(ce.format_comparison(cmp, "csv"))
    strict = next(r for r in rows if r["task"] == "gsm8k" and r["filter"] == "strict-match")
    assert float(strict["A"]) == 0.4 and float(strict["B_stderr"]) == 0.02
    assert float(strict["delta"]) == pytest.approx(0.1) and strict["significant"] == "1"
    group = next(r for r in rows if r["task"] == "bbh_cot_fewshot")
    assert group["A_stderr"] == "N/A" and group["delta_stderr"] == "" and group["significant"] == "0"
    flex = next(r for r in rows if r["filter"] == "flexible-extract")
    assert flex["B"] == "missing" and flex["delta"] == ""
    assert rows[-1]["task"] == "average"


def test_single_run_has_no_delta_columns():
    cmp = ce.compare_runs([ce.load_run(RUN_A, "A")[0]])
    header = ce.format_comparison(cmp, "table").splitlines()[0]
    assert "delta" not in header and "flag" not in header


# --------------------------------------------------------------------------- compare CLI


def test_compare_cli(capsys, caplog):
    caplog.set_level("INFO", logger="rys.eval")
    assert ce.main(["compare", str(RUN_A), str(RUN_B), "--names", "base,circuit", "--format", "csv"]) == 0
    rows = _csv(capsys.readouterr().out)
    assert {"base", "circuit"} <= set(rows[0])
    assert any("using the newest" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("argv, msg", [
    (["compare", str(RUN_A), str(RUN_B), "--names", "x"], "--names gives 1 name"),
    (["compare", str(RUN_A), str(RUN_A)], "run names must be distinct"),
    (["compare", str(RUN_A), "/nonexistent/dir"], "not a directory"),
    (["compare", str(RUN_A), "--format", "xml"], "invalid choice"),
    (["compare"], "the following arguments are required"),
    (["run", "/nonexistent.gguf", "--tasks", "gsm8k"], "model file not found"),
])
def test_cli_bad_input_is_one_line_exit_2(argv, msg, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def _exit_code(argv: list[str]) -> int:
    try:
        return ce.main(argv)
    except SystemExit as exc:  # argparse errors
        return int(exc.code)


def test_runs_as_script():
    out = subprocess.run([sys.executable, "-m", "rys.compare_eval", "compare", str(RUN_A), str(RUN_B),
                          "--format", "markdown"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "| gsm8k | exact_match | strict-match |" in out.stdout
    bad = subprocess.run([sys.executable, "-m", "rys.compare_eval", "compare", "/nonexistent"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1


# --------------------------------------------------------------------------- task output types


def _index() -> dict[str, ce.IndexEntry]:
    E = ce.IndexEntry
    return {
        "gen": E("task", {"task": "gen", "output_type": "generate_until"}),
        "default": E("task", {"task": "default"}),  # lm-eval's default output type: generate_until
        "mc": E("task", {"task": "mc", "output_type": "multiple_choice"}),
        "ll": E("task", {"task": "ll", "output_type": "loglikelihood"}),
        "py": E("py_task", {"task": "py", "class": "/x/y.Cls"}),
        "tag_mixed": E("tag", None, ("gen", "mc")),
        "grp": E("group", {"group": "grp", "task": ["gen", {"task": "ll"}, "tag_mixed"]}),
        "grp_forced": E("group", {"group": "grp_forced", "output_type": "multiple_choice", "task": ["gen"]}),
        "grp_inline": E("group", {"group": "grp_inline", "task": [
            {"task": "inline_one", "output_type": "generate_until"},
            {"group": "sub", "task": [{"task": "gen", "output_type": "multiple_choice"}]}]}),
        "outer": E("group", {"group": "outer", "task": ["grp_forced", "default"]}),
        "grp_member_wins": E("group", {"group": "grp_member_wins", "output_type": "multiple_choice",
                                       "task": [{"task": "gen", "output_type": "generate_until"}, "default"]}),
        "bench": E("group", {"group": "bench", "task": ["mc"]}),
        "bench_generative": E("group", {"group": "bench_generative", "task": ["gen", "default"]}),
        "bench_cot_sub": E("task", {"task": "bench_cot_sub", "output_type": "generate_until"}),
        "bench_gen_mc": E("group", {"group": "bench_gen_mc", "task": ["mc"]}),
    }


def test_resolve_output_types():
    idx = _index()
    assert ce.resolve_output_types("gen", idx) == {"gen": "generate_until"}
    assert ce.resolve_output_types("default", idx) == {"default": "generate_until"}
    assert ce.resolve_output_types("py", idx) == {"py": None}
    assert ce.resolve_output_types("tag_mixed", idx) == {"gen": "generate_until", "mc": "multiple_choice"}
    assert ce.resolve_output_types("grp", idx) == {"gen": "generate_until", "ll": "loglikelihood",
                                                    "mc": "multiple_choice"}
    assert ce.resolve_output_types("outer", idx) == {"gen": "multiple_choice", "default": "generate_until"}
    assert ce.resolve_output_types("grp_inline", idx) == {"grp_inline::inline_one": "generate_until",
                                                          "gen": "multiple_choice"}
    assert ce.resolve_output_types("grp_member_wins", idx) == {"gen": "generate_until", "default": "multiple_choice"}
    # a glob over several groups; a leaf met as generative and as multiple_choice counts as the latter
    globbed = ce.resolve_output_types("grp*", idx)
    assert set(globbed) == {"gen", "ll", "mc", "default", "grp_inline::inline_one"}
    assert globbed["gen"] == "multiple_choice"
    with pytest.raises(KeyError):
        ce.resolve_output_types("nope", idx)


def test_check_tasks_and_refusal_message():
    idx = _index()
    check = ce.check_tasks(["gen", "bench", "grp", "py", "nope"], idx)
    assert check.unknown == ["nope"]
    assert set(check.refused) == {"bench", "grp"}
    assert check.refused["grp"] == {"ll": "loglikelihood", "mc": "multiple_choice"}
    assert check.unsure == ["py"]
    msg = ce.refusal_message(check, idx)
    assert "\n" not in msg
    assert "bench (multiple_choice: 1 subtask(s): mc)" in msg
    assert "grp (loglikelihood, multiple_choice: 2 subtask(s)" in msg
    # related generative names only (bench_gen_mc contains "gen" but is multiple_choice)
    assert "for bench: bench_cot_sub, bench_generative" in msg
    assert "bench_gen_mc" not in msg


def test_suggestions_skip_members_of_named_groups():
    idx = _index()
    idx["bench_generative_x"] = ce.IndexEntry("task", {"task": "bench_generative_x"})
    assert ce.suggest_generative("bench", idx) == ["bench_cot_sub", "bench_generative"]


# --------------------------------------------------------------------------- run helpers (pure)


def test_limit_warning():
    assert ce.limit_warning(None) is None
    assert ce.limit_warning(500) is None
    w = ce.limit_warning(50)
    assert "50 items" in w and "0.22 -> 0.76" in w and "0.744 -> 0.732" in w
    assert "fraction" in ce.limit_warning(0.5)
    assert ce.limit_arg(5.0) == "5" and ce.limit_arg(0.25) == "0.25"


def test_lm_eval_command_completions_and_chat(tmp_path):
    cmd = ce.lm_eval_command(name="base", server_url="http://127.0.0.1:9", tasks=["a", "b"], chat=False,
                             output_dir=tmp_path, num_concurrent=3, limit=5.0, include_path="/tasks",
                             extra=["--num_fewshot", "2"], python="py")
    assert cmd[:3] == ["py", "-m", "lm_eval"]
    assert cmd[cmd.index("--model") + 1] == "local-completions"
    args = dict(kv.split("=", 1) for kv in cmd[cmd.index("--model_args") + 1].split(","))
    assert args["base_url"] == "http://127.0.0.1:9/v1/completions"
    assert args["model"] == "base" and args["num_concurrent"] == "3"
    assert args["tokenized_requests"] == "False" and args["tokenizer_backend"] == "None"
    assert cmd[cmd.index("--tasks") + 1] == "a,b"
    assert cmd[cmd.index("--limit") + 1] == "5"
    assert cmd[cmd.index("--output_path") + 1] == str(tmp_path / "results.json")
    assert cmd[cmd.index("--include_path") + 1] == "/tasks"
    assert "--log_samples" in cmd and "--apply_chat_template" not in cmd
    assert cmd[-2:] == ["--num_fewshot", "2"]
    chat = ce.lm_eval_command(name="c", server_url="http://h:1", tasks=["a"], chat=True,
                              output_dir=tmp_path, num_concurrent=1)
    assert chat[chat.index("--model") + 1] == "local-chat-completions"
    assert "base_url=http://h:1/v1/chat/completions" in chat[chat.index("--model_args") + 1]
    assert "--apply_chat_template" in chat and "--limit" not in chat


def test_run_names():
    assert ce.run_name_for(None) == "baseline"
    assert ce.run_name_for([0, 1, 2, 1, 2, 3]) == "0-2_1-3"
    assert ce.run_name_for([0, 1], "mine") == "mine"


def test_run_lm_eval_logs_output_shows_progress_and_returns_exit_code(tmp_path):
    class Bar:
        shown: list[str] = []

        def set_postfix_str(self, text, refresh=True):
            self.shown.append(text)

    script = "import sys; print('loading'); sys.stdout.write('Requesting API: 40%\\r'); sys.stdout.flush(); sys.exit(3)"
    log_path = tmp_path / "lm_eval.log"
    bar = Bar()
    assert ce.run_lm_eval([sys.executable, "-c", script], log_path, dict(os.environ), bar) == 3
    text = log_path.read_text()
    assert "### rys-eval:" in text and "loading" in text and "Requesting API: 40%" in text
    assert bar.shown[-1] == "Requesting API: 40%"


@pytest.mark.parametrize("engine", ["physical", "virtual"])
def test_run_refuses_a_path_the_architecture_refuses_before_anything_runs(tmp_path, capsys,
                                                                          engine):
    """Both engines: one line and exit 2 at once, not a failed rewrite after a baseline run."""
    import gguf_fixtures as F

    model = F.write_model(tmp_path / "g.gguf", F.ModelSpec(
        arch="gemma3", n_layers=62, kv={"{arch}.attention.sliding_window": 512}))
    server = tmp_path / "llama-server"  # never started: the path is refused first
    server.write_text("#!/bin/sh\necho '--layer-path SPEC'\n")
    server.chmod(0o755)
    out = tmp_path / "out"
    code = ce.main(["run", str(model), "--path", "0..61,61", "--baseline", "--tasks", "gsm8k",
                    "--engine", engine, "--llama-server", str(server), "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("rys-eval: error: --path:")
    assert "62" in err[0] and not out.exists()
