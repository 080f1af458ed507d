"""The adaptive search live on the demo model (#19): the patched llama-server, the virtual engine,
every block of 1-6 layers; kill -9 in the middle, resume, and what the summary says."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import optuna
import pytest

from rys import search as S
from rys import study as ST
from rys import sweep_record as R


@pytest.mark.server
def test_adaptive_search_on_the_demo_resumes_after_kill_9(tmp_path, demo_model,
                                                          patched_server_bin):
    out = tmp_path / "search.jsonl"
    cmd = [sys.executable, "-m", "rys.sweep", str(demo_model), "--llama-server",
           patched_server_bin, "--search", "adaptive", "--grid", "--max-block", "6",
           "--probes", "reasoning:8,eq:6", "--mode", "logprob", "--budget", "0.1", "--chunk", "4",
           "--confirm", "3", "--parallel", "1", "--server-args", "-t 1 --swa-full", "-o",
           str(out)]
    first = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    db = R.results_paths(out)["study"]
    storage = f"sqlite:///{db}"
    deadline, caught = time.monotonic() + 600, False
    try:  # kill -9 while a config is half scored
        while time.monotonic() < deadline and not caught:
            time.sleep(0.2)
            if not db.exists() or not ST.study_names(storage):
                continue
            study = optuna.load_study(study_name=ST.study_names(storage)[0],
                                      storage=ST.storage(storage, True))
            caught = any(t.intermediate_values and t.state.name == "RUNNING"
                         for t in study.get_trials())
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert caught, "the search never got into a config"
    spent_before = S.spent_in(study.get_trials())
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(R.results_paths(out)["summary"].read_text())
    s = summary["search"]
    # within its budget, and nothing scored twice: what the killed run had scored counts once
    assert s["spent"] <= s["budget"] == int(0.1 * 93 * 14)
    assert s["spent"] == spent_before + s["scored_this_run"]
    recs = R.read_records(out).records
    full = [x for x in recs if x.search is not None and not x.search.stopped]
    best = max(full, key=lambda x: x.combined_delta.delta)
    assert summary["leaderboard"][0]["path"] == best.path  # its winner ranks first
    # the summary names the racing test, the correction and the shrinkage
    assert "Wilcoxon" in s["test"] and summary["heldout"]["correction_name"] == "Holm"
    assert summary["heldout"]["test"] == R.HELDOUT_TEST
    verdict = summary["heldout"]["verdict"]
    assert ("shrank by" in verdict or "grew by" in verdict) and best.config_label in verdict
    assert "Holm-corrected" in r.stdout and "Wilcoxon" in r.stdout
