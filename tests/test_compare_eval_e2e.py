"""End to end: `rys-eval run DEMO --path <dup> --baseline` with lm-eval against the real
llama-server on the offline test task, then `rys-eval compare` on the directories it wrote."""

from __future__ import annotations

import csv
import io
import json
import logging
import socket
from pathlib import Path

import pytest

from rys import compare_eval as ce
from rys import layer_path

TASKS_DIR = Path(__file__).resolve().parent / "data" / "lm_eval_tasks"
PATH = "0..8,6..17"  # layers 6..8 run twice
METRIC = "exact_match,strip"


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def e2e(tmp_path_factory, demo_model, llama_server_bin):
    """One real run shared by the tests below (it takes a couple of minutes on 2 CPU cores)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_DATASETS_OFFLINE", "1")  # CI has no Hugging Face access; the task is local
    mp.setenv("HF_HUB_OFFLINE", "1")
    root = tmp_path_factory.mktemp("e2e")
    out, gguf_tmp = root / "out", root / "gguf"
    gguf_tmp.mkdir()
    stdout, stderr = io.StringIO(), io.StringIO()
    mp.setattr("sys.stdout", stdout)
    mp.setattr("sys.stderr", stderr)
    handler = logging.StreamHandler(stderr)  # pytest owns the root logger's handlers
    logging.getLogger("rys.eval").addHandler(handler)
    try:
        code = ce.main(["run", str(demo_model), "--path", PATH, "--baseline", "--tasks", "rys_capitals",
                        "--limit", "5", "--include-path", str(TASKS_DIR), "--out", str(out),
                        "--tmp-dir", str(gguf_tmp), "--llama-server", llama_server_bin,
                        "--parallel", "2"])
    finally:
        logging.getLogger("rys.eval").removeHandler(handler)
        mp.undo()
    return {"code": code, "out": out, "gguf_tmp": gguf_tmp, "stdout": stdout.getvalue(),
            "stderr": stderr.getvalue(), "slug": layer_path.slug(layer_path.parse(PATH, 18))}


def _results(run_dir: Path) -> dict:
    (f,) = run_dir.glob("results_*.json")
    return json.loads(f.read_text())


def _samples(run_dir: Path) -> list[dict]:
    (f,) = run_dir.glob("samples_rys_capitals_*.jsonl")
    return [json.loads(line) for line in f.read_text().splitlines() if line.strip()]


@pytest.mark.server
def test_run_writes_lm_eval_outputs_per_run(e2e):
    assert e2e["code"] == 0, e2e["stderr"][-3000:]
    for name in ("baseline", e2e["slug"]):
        run_dir = e2e["out"] / name
        names = {p.name for p in run_dir.iterdir()}
        assert {"server.log", "lm_eval.log", ce.RUN_META} <= names
        res = _results(run_dir)
        assert res["n-samples"]["rys_capitals"]["effective"] == 5
        score = res["results"]["rys_capitals"][METRIC]
        samples = _samples(run_dir)
        assert len(samples) == 5
        # lm-eval scored what the server generated: the aggregate is the mean of the items
        assert score == pytest.approx(sum(s["exact_match"] for s in samples) / 5)
        for s in samples:  # our 3-shot prompt from the YAML, with greedy short generations
            assert s["arguments"]["gen_args_0"]["arg_0"].startswith("Q: What is the capital of France?\nA: Paris")
            assert s["exact_match"] == float(s["filtered_resps"][0].lower() == s["target"].lower())


@pytest.mark.server
def test_run_metadata_and_cleanup(e2e):
    assert e2e["code"] == 0
    base = json.loads((e2e["out"] / "baseline" / ce.RUN_META).read_text())
    circ = json.loads((e2e["out"] / e2e["slug"] / ce.RUN_META).read_text())
    assert base["path"] is None and base["n_layers"] == 18
    assert circ["path"] == layer_path.format(layer_path.parse(PATH, 18)) and circ["n_layers"] == 21
    assert circ["lm_eval"]["returncode"] == 0 and circ["lm_eval"]["num_concurrent"] == 2
    assert "local-completions" in circ["lm_eval"]["command"]  # the demo model has no chat template
    # the rewritten model was served, then deleted; no server is left listening
    served = circ["server"]["args"][circ["server"]["args"].index("--model") + 1]
    assert Path(served).parent == e2e["gguf_tmp"]
    assert list(e2e["gguf_tmp"].iterdir()) == []
    for meta in (base, circ):
        port = int(meta["server"]["args"][meta["server"]["args"].index("--port") + 1])
        assert not _port_open(port)


@pytest.mark.server
def test_run_prints_comparison_and_limit_warning(e2e):
    assert e2e["code"] == 0
    assert "0.744 -> 0.732" in e2e["stderr"]  # --limit 5 is warned about
    lines = e2e["stdout"].splitlines()
    assert lines[0].split()[:5] == ["task", "metric", "filter", "baseline", e2e["slug"]]
    row = next(ln for ln in lines if ln.startswith("rys_capitals"))
    base = _results(e2e["out"] / "baseline")["results"]["rys_capitals"][METRIC]
    circ = _results(e2e["out"] / e2e["slug"])["results"]["rys_capitals"][METRIC]
    assert f"{base:.4f}" in row and f"{circ:.4f}" in row and f"{circ - base:+.4f}" in row


@pytest.mark.server
def test_compare_on_the_real_output_directories(e2e, capsys):
    assert e2e["code"] == 0
    dirs = [str(e2e["out"] / "baseline"), str(e2e["out"] / e2e["slug"])]
    assert ce.main(["compare", *dirs, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    row = next(r for r in rows if r["task"] == "rys_capitals")
    base = _results(e2e["out"] / "baseline")["results"]["rys_capitals"]
    circ = _results(e2e["out"] / e2e["slug"])["results"]["rys_capitals"]
    assert (row["metric"], row["filter"]) == ("exact_match", "strip")
    assert float(row["baseline"]) == base[METRIC] and float(row[e2e["slug"]]) == circ[METRIC]
    assert float(row["baseline_stderr"]) == base["exact_match_stderr,strip"]
    assert float(row["delta"]) == pytest.approx(circ[METRIC] - base[METRIC])
    # the whole output tree as one run: the same task in two files, the newest wins
    assert ce.main(["compare", str(e2e["out"]), "--format", "csv"]) == 0
    (merged,) = [r for r in csv.DictReader(io.StringIO(capsys.readouterr().out)) if r["task"] == "rys_capitals"]
    assert float(merged["out"]) == circ[METRIC]  # the path run ran after the baseline


@pytest.mark.server
def test_failed_lm_eval_run_is_one_line_exit_1_and_cleans_up(demo_model, llama_server_bin, tmp_path, capsys):
    out, gguf_tmp = tmp_path / "out", tmp_path / "gguf"
    gguf_tmp.mkdir()
    code = ce.main(["run", str(demo_model), "--path", PATH, "--tasks", "rys_capitals",
                    "--include-path", str(TASKS_DIR), "--out", str(out), "--tmp-dir", str(gguf_tmp),
                    "--llama-server", llama_server_bin, "--lm-eval-args=--no_such_lm_eval_flag"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("rys-eval: error")]
    assert code == 1
    assert len(err) == 1 and "lm-eval exited with code 2" in err[0] and "no_such_lm_eval_flag" in err[0]
    slug = layer_path.slug(layer_path.parse(PATH, 18))
    meta = json.loads((out / slug / ce.RUN_META).read_text())
    assert meta["status"] == "error" and "lm-eval exited" in meta["error"]
    assert list(gguf_tmp.iterdir()) == []
    port = int(meta["server"]["args"][meta["server"]["args"].index("--port") + 1])
    assert not _port_open(port)
