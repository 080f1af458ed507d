"""Output types from the installed lm-eval's real task index (built-in YAMLs + our offline test
tasks): on a llama-server without prompt logprobs, log-likelihood tasks are refused up front,
before anything is built or lm-eval started (the server is asked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rys import compare_eval as ce

TASKS_DIR = Path(__file__).resolve().parent / "data" / "lm_eval_tasks"


@pytest.fixture(scope="module")
def index() -> dict[str, ce.IndexEntry]:
    return ce.load_task_index(str(TASKS_DIR))


def test_test_tasks_are_indexed_with_their_output_types(index):
    assert ce.resolve_output_types("rys_capitals", index) == {"rys_capitals": "generate_until"}
    assert ce.resolve_output_types("rys_capitals_mc", index) == {"rys_capitals_mc": "multiple_choice"}
    assert ce.resolve_output_types("rys_capitals_mixed", index) == {
        "rys_capitals": "generate_until", "rys_capitals_mc": "multiple_choice"}


def test_builtin_generative_tasks_pass(index):
    check = ce.check_tasks(["gsm8k", "bbh_cot_fewshot", "rys_capitals"], index)
    assert not check.unknown and not check.refused
    assert len(check.leaves["bbh_cot_fewshot"]) > 1  # a group, expanded to its subtasks


def test_builtin_loglikelihood_tasks_are_refused_with_generative_alternatives(index):
    check = ce.check_tasks(["mmlu", "hellaswag", "gsm8k"], index)
    assert set(check.refused) == {"mmlu", "hellaswag"}
    msg = ce.refusal_message(check, index)
    assert "\n" not in msg and "multiple_choice" in msg
    named = msg.split("instead: ", 1)[1]
    alternatives = [a.strip() for part in named.split("; ")
                    for a in part.split(": ", 1)[-1].removeprefix("or ").split(",")]
    assert alternatives
    for alt in alternatives:  # every name offered exists and is fully generative
        types = ce.resolve_output_types(alt, index)
        assert types and set(types.values()) == {"generate_until"}, alt
    mmlu_part = next(p for p in named.split("; ") if p.startswith("for mmlu: "))
    assert all(a.strip().startswith("mmlu") for a in mmlu_part.removeprefix("for mmlu: ").split(","))


@pytest.mark.server
@pytest.mark.parametrize("tasks, named", [
    ("rys_capitals_mc", "rys_capitals_mc (multiple_choice)"),
    ("rys_capitals,rys_capitals_mixed", "rys_capitals_mixed (multiple_choice: 1 subtask(s): rys_capitals_mc)"),
])
def test_run_refuses_loglikelihood_tasks_before_building_anything(
        tasks, named, demo_model, llama_server_bin, tmp_path, capsys):
    out, gguf_tmp = tmp_path / "out", tmp_path / "gguf"
    gguf_tmp.mkdir()
    code = ce.main(["run", str(demo_model), "--path", "0..8,6..17", "--baseline", "--tasks", tasks,
                    "--include-path", str(TASKS_DIR), "--out", str(out), "--tmp-dir", str(gguf_tmp),
                    "--llama-server", llama_server_bin])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and named in err[0] and "generate_until" in err[0]
    # the server was asked (not guessed from its version), and the line says what to build
    assert "asked for echo logprobs, it answered: a completion without prompt logprobs" in err[0]
    assert "scripts/build_llama_server.sh --rys-patches" in err[0]
    assert not out.exists() and list(gguf_tmp.iterdir()) == []


@pytest.mark.server
def test_run_rejects_unknown_tasks_and_bad_paths(demo_model, llama_server_bin, tmp_path, capsys):
    base = ["run", str(demo_model), "--out", str(tmp_path / "out"), "--llama-server", llama_server_bin,
            "--include-path", str(TASKS_DIR)]
    assert ce.main(base + ["--tasks", "no_such_task_xyz"]) == 2
    assert "unknown lm-eval task(s): no_such_task_xyz" in capsys.readouterr().err
    assert ce.main(base + ["--tasks", "gsm8k", "--path", "0..99"]) == 2
    assert "--path" in capsys.readouterr().err
    assert ce.main(base + ["--tasks", "gsm8k", "--chat"]) == 2  # the demo model has no template
    assert "no chat template" in capsys.readouterr().err
    assert ce.main(base + ["--tasks", "gsm8k", "--limit", "0"]) == 2
    assert not (tmp_path / "out").exists()
