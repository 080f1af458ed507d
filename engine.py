"""Serve a layer path of a source model: from (model, path, server settings) to a running, verified
llama-server with its timings, cleaned up on every exit path.

rys-sweep, rys-eval run and bench all serve circuits through an :class:`Engine`, so how a path gets
served is decided in one place and a new way plugs in without touching plans, stores or probes:

* :class:`PhysicalEngine` (works with any llama-server): rewrite the GGUF following the path into
  the tmp dir (gguf_surgery), start a fresh llama-server on it (llama_server: free port, /props
  verification, crash fallback), and stop it and delete the file afterwards;
* :class:`VirtualEngine` (a llama-server built with ``scripts/build_llama_server.sh --rys-patches``):
  one server on the unchanged model that switches its layer path in place (``POST /layer-path``):
  no copy, no extra weight memory, no reload per config.

``engine.serve(path, log_path)`` returns a :class:`Serving`: a context manager whose ``__enter__``
gives a :class:`Served` (url, slots, timings) and whose ``__exit__`` cleans up; after it, even when
the start failed, ``server_args`` says what the server was started with (records keep it).
``path=None`` means the unmodified model (the baseline).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import logging
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Sequence

import requests

from rys import gguf_surgery
from rys import layer_path
from rys import llama_server as LS
from rys.sweep_record import ENGINE_PHYSICAL

log = logging.getLogger("rys.engine")

ENGINE_VIRTUAL = "virtual"
ENGINES = (ENGINE_PHYSICAL, ENGINE_VIRTUAL)
DEFAULT_CTX_PER_SLOT = 4096  # context per slot rys asks for unless told otherwise
SPACE_MARGIN = 16 << 20  # a rewrite needs its exact size plus a little for the filesystem
LAYER_PATH_FLAG = "--layer-path"
SWITCH_ENDPOINT = "/layer-path"
SWITCH_FLAG = "--layer-path-switch"  # the server's opt-in for SWITCH_ENDPOINT


class NoSpace(RuntimeError):
    """The tmp dir cannot hold the next rewritten model: nothing was written."""


class EngineError(RuntimeError):
    """Serving a path failed in a way the engine explains (one line)."""


@dataclass
class ServerSettings:
    """How servers are started: binary, pass-through arguments, the settings rys adds, and (for
    one of several sweep workers) its own device arguments or environment."""

    binary: str
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    parallel: int | None = 4
    ctx_size: int | None = None
    load_timeout: float = 600.0
    stop_grace: float = 10.0
    env: dict[str, str] = field(default_factory=dict)
    name: str = ""  # the worker this is, for messages ("" with one worker)

    def server(self, model: str | os.PathLike, log_path: str | os.PathLike | None,
               extra: Sequence[str] = ()) -> LS.LlamaServer:
        return LS.LlamaServer(model, binary=self.binary, extra_args=[*extra, *self.extra_args],
                              host=self.host, parallel=self.parallel, ctx_size=self.ctx_size,
                              log_path=log_path, ready_timeout=self.load_timeout,
                              stop_grace=self.stop_grace, env=dict(self.env) or None)


def worker_settings(base: ServerSettings, devices: Sequence[str] = (), workers: int | None = None,
                    device_env: str | None = None) -> list[ServerSettings]:
    """One ServerSettings per sweep worker.

    * nothing: one worker, ``base`` as it is;
    * ``devices=[CUDA0, CUDA1]``: one worker per device, each server started with
      ``--device DEV`` (or, with ``device_env="CUDA_VISIBLE_DEVICES"``, with that variable set to
      the device: ``devices=["0", "1"]``);
    * ``workers=N``: N workers with the same arguments (several servers on one GPU: one loads the
      next config while another is probed);
    * both: N workers spread over the devices in turn.
    """
    if workers is not None and workers < 1:
        raise EngineError(f"--workers must be >= 1, got {workers}")
    devices = [d.strip() for d in devices if d.strip()]
    if len(set(devices)) != len(devices):
        raise EngineError(f"--devices lists a device twice: {','.join(devices)}")
    n = workers or max(1, len(devices))
    if devices and device_env is None and LS._has_flag(base.extra_args, "-dev", "--device"):
        raise EngineError("--devices gives each worker its --device; remove --device from the "
                          "server arguments")
    if n > 1 and LS._flag_value(base.extra_args, "--port") is not None:
        raise EngineError("several workers need one port each: remove --port from the server "
                          "arguments (rys picks a free port per server)")
    out = []
    for k in range(n):
        extra, env = list(base.extra_args), dict(base.env)
        if devices:
            dev = devices[k % len(devices)]
            if device_env:
                env[device_env] = dev
            else:
                extra = ["--device", dev, *extra]
        name = "" if n == 1 else f"w{k + 1}" + (f"@{devices[k % len(devices)]}" if devices else "")
        out.append(dataclasses.replace(base, extra_args=extra, env=env, name=name))
    return out


@dataclass
class Served:
    """A server answering for one path, ready to be probed."""

    url: str
    slots: int
    server: LS.LlamaServer
    surgery_s: float = 0.0
    load_s: float = 0.0

    # A server is probed over HTTP (probes.run_jobs on url); an engine without one (a replay)
    # answers probe jobs itself: ``answers(jobs, **run_jobs options) -> {probe: ProbeResult}``.
    answers: Callable[..., dict] | None = None

    def check_alive(self, grace: float = 0.0) -> None:
        """Raise llama_server.ServerExited if the server died (e.g. during probes)."""
        self.server.check_alive(grace)


class Serving(abc.ABC):
    """One use of an engine for one path (see the module docstring)."""

    def __init__(self, log_path: Path) -> None:
        self.server_args: list[str] = []
        self.log_path = log_path  # where the server's log for this config actually is
        self.started = False  # False after __enter__ failed: the server never answered
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Served:
        try:
            served = self._enter(self._stack)
        except BaseException:
            self._stack.close()
            raise
        self.started = True
        return served

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    @abc.abstractmethod
    def _enter(self, stack: contextlib.ExitStack) -> Served:
        """Start serving; register every cleanup on ``stack`` as soon as there is one."""


class Engine(abc.ABC):
    """Turns a layer path of ``source`` into a served model."""

    name: str = ""

    def __init__(self, source: gguf_surgery.SourceModel, settings: ServerSettings, *,
                 shield: Callable[[], ContextManager] = contextlib.nullcontext,
                 stage: Callable[[str], None] | None = None) -> None:
        self.source = source
        self.settings = settings
        # cleanup (stopping a server) must not be cut short by a signal: the sweep passes its
        # signal guard's deferral here
        self.shield = shield
        self.stage = stage or (lambda text: None)
        self._live: dict[int, LS.LlamaServer] = {}  # by id(): servers are unhashable

    def check(self, path: Sequence[int]) -> None:
        """Raise (SurgeryError / LayerPathError / EngineError) if this engine cannot serve path."""
        gguf_surgery.check_path(self.source, list(path))

    def space_needed(self, path: Sequence[int] | None) -> int:
        """Bytes of tmp space serving ``path`` writes (0 when nothing is written)."""
        return 0

    def version(self) -> str:
        """What serves the paths, for records (the server's ``--version``)."""
        return LS.server_version(self.settings.binary)

    @abc.abstractmethod
    def serve(self, path: Sequence[int] | None, log_path: str | os.PathLike) -> Serving:
        """A Serving for ``path`` (None: the unmodified model)."""

    def kill(self) -> None:
        """SIGKILL every server of this engine now (from a signal handler; ``stop`` reaps)."""
        for server in list(self._live.values()):
            server.kill()

    def close(self) -> None:
        """Stop whatever the engine keeps running between configs."""

    def _stop(self, server: LS.LlamaServer) -> None:
        with self.shield():
            server.stop()
        self._live.pop(id(server), None)

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# =========================================================================== physical


class PhysicalEngine(Engine):
    """A rewritten GGUF in the tmp dir and a fresh server per path."""

    name = ENGINE_PHYSICAL

    def __init__(self, source: gguf_surgery.SourceModel, settings: ServerSettings,
                 tmp_dir: str | os.PathLike | None = None, **kw) -> None:
        super().__init__(source, settings, **kw)
        self.tmp_dir = Path(tmp_dir) if tmp_dir else gguf_surgery.default_tmp_dir()

    def space_needed(self, path: Sequence[int] | None) -> int:
        return 0 if path is None else self.source.estimate_size(list(path)) + SPACE_MARGIN

    def check_space(self, paths: Sequence[Sequence[int] | None], copies: int = 1) -> None:
        """NoSpace unless the tmp dir holds ``copies`` of the largest of ``paths`` at once."""
        need = max((self.space_needed(p) for p in paths), default=0) * copies
        free = gguf_surgery.free_bytes(self.tmp_dir)
        if need and free < need:
            raise NoSpace(f"not enough space in {self.tmp_dir}: the largest config needs "
                          f"{_mib(need)}{f' ({copies} at once)' if copies > 1 else ''}, "
                          f"{_mib(free)} free; free some space or pass --tmp-dir on a bigger disk")

    def serve(self, path: Sequence[int] | None, log_path: str | os.PathLike) -> Serving:
        return _PhysicalServing(self, None if path is None else list(path), Path(log_path))


class _PhysicalServing(Serving):
    def __init__(self, engine: PhysicalEngine, path: list[int] | None, log_path: Path) -> None:
        super().__init__(log_path)
        self.engine, self.path = engine, path

    def _enter(self, stack: contextlib.ExitStack) -> Served:
        e = self.engine
        surgery_s = 0.0
        model_file = Path(e.source.paths[0])
        if self.path is not None:
            e.check_space([self.path])
            e.stage("building GGUF")
            t0 = time.monotonic()
            model_file = stack.enter_context(
                gguf_surgery.temporary_rewrite(e.source, self.path, e.tmp_dir))
            surgery_s = time.monotonic() - t0
        e.stage("loading llama-server")
        server = e.settings.server(model_file, self.log_path)
        e._live[id(server)] = server
        stack.callback(e._stop, server)  # LIFO: the server stops before the file goes
        try:
            server.start()
        finally:
            self.server_args = server.command[1:] if server.port else []
        return Served(server.url, server.total_slots, server, surgery_s, server.load_s)


def _mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


# =========================================================================== virtual


def supports_layer_paths(binary: str) -> bool:
    """Whether a llama-server binary runs layer paths in place (built with --rys-patches): its
    ``--help`` lists ``--layer-path``. Asked once per binary."""
    return has_option(binary, LAYER_PATH_FLAG)


def has_option(binary: str, flag: str) -> bool:
    """Whether ``binary --help`` lists the option ``flag`` (``--layer-path`` is not
    ``--layer-path-switch``)."""
    return re.search(re.escape(flag) + r"(?=[ ,=\n])", _help_text(binary)) is not None


def switch_args(binary: str) -> list[str]:
    """The option that turns ``POST /layer-path`` on, where the binary has it (the series gates
    the endpoint behind it; a build of the earlier series, always on, gets nothing)."""
    return [SWITCH_FLAG] if has_option(binary, SWITCH_FLAG) else []


@functools.lru_cache(maxsize=None)
def _help_text(binary: str) -> str:
    try:
        out = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s --help failed: %s", binary, exc)
        return ""
    return out.stdout + out.stderr


def resolve_engine(name: str, binary: str) -> str:
    """``auto`` -> virtual when the binary supports layer paths, else physical; an explicit
    ``virtual`` on a binary without them is an EngineError naming the build to use."""
    if name not in (*ENGINES, "auto"):
        raise EngineError(f"unknown engine {name!r} (choose physical, virtual or auto)")
    if name == ENGINE_PHYSICAL:
        return name
    ok = supports_layer_paths(binary)
    if name == "auto":
        return ENGINE_VIRTUAL if ok else ENGINE_PHYSICAL
    if not ok:
        raise EngineError(
            f"--engine virtual needs a llama-server that runs layer paths in place; {binary} has "
            f"no {LAYER_PATH_FLAG} option: build one with scripts/build_llama_server.sh "
            f"--rys-patches and pass it with --llama-server")
    return name


class VirtualEngine(Engine):
    """One patched llama-server on the unchanged model; each path is a switch in place.

    Every serve switches (``POST /layer-path``), which rebuilds the server's context, KV cache,
    slots and prompt caches, so each config starts as fresh as on a new server. When the path asked
    for is the one already live, the engine switches away and back, so the identity control still
    measures what re-serving an unchanged model moves. A server that died is started again.
    """

    name = ENGINE_VIRTUAL

    def __init__(self, source: gguf_surgery.SourceModel, settings: ServerSettings,
                 switch_timeout: float = 600.0, server_log: str | os.PathLike | None = None,
                 **kw) -> None:
        super().__init__(source, settings, **kw)
        self.switch_timeout = switch_timeout
        self.server_log = Path(server_log) if server_log else None
        self.server: LS.LlamaServer | None = None
        self.live_path: list[int] | None = None
        self.identity = layer_path.identity(source.n_layers)

    def check(self, path: Sequence[int]) -> None:
        """The surgery's rules hold here too (the layer kinds are the same; the server checks
        the architecture itself and answers 400 with the reason), but not the block counts on
        which llama.cpp switches hyperparameters at load: the server keeps the model type it
        loaded, so e.g. a truncated path (a logit lens) on Gemma 3 27B is fine."""
        gguf_surgery.check_path(self.source, list(path), counts=False)

    def serve(self, path: Sequence[int] | None, log_path: str | os.PathLike) -> Serving:
        return _VirtualServing(self, self.identity if path is None else list(path), Path(log_path))

    def ensure_server(self, log_path: Path) -> LS.LlamaServer:
        """The running server (started on the unchanged model if there is none)."""
        if self.server is not None and self.server.proc is not None \
                and self.server.proc.poll() is None:
            return self.server
        if self.server is not None:
            self._stop(self.server)
        self.stage("loading llama-server")
        server = self.settings.server(self.source.paths[0], log_path,
                                      switch_args(self.settings.binary))
        self._live[id(server)] = server
        try:
            server.start()
        except BaseException:
            self._stop(server)
            raise
        self.server = server
        self.live_path = list(self.identity)
        return server

    def switch(self, path: Sequence[int]) -> float:
        """Switch the live server to ``path``; seconds until it answered ready."""
        assert self.server is not None
        spec = layer_path.format(path)
        t0 = time.monotonic()
        try:
            r = requests.post(self.server.url + SWITCH_ENDPOINT, json={"layer_path": spec},
                              timeout=self.switch_timeout)
        except requests.RequestException as exc:
            self.server.check_alive(grace=3.0)
            raise EngineError(f"switching the layer path to {spec} failed: {exc}") from None
        if r.status_code != 200:
            raise EngineError(f"the server refused layer path {spec}: {LS.error_message(r) or f'HTTP {r.status_code}: {r.text[:200]}'}")
        live = r.json().get("layer_path")
        if live != list(path):
            raise EngineError(f"the server reports layer path {live}, not {spec}")
        self.live_path = list(path)
        return time.monotonic() - t0

    def close(self) -> None:
        if self.server is not None:
            self._stop(self.server)
            self.server = None
            self.live_path = None


class _VirtualServing(Serving):
    def __init__(self, engine: VirtualEngine, path: list[int], log_path: Path) -> None:
        # one server serves every path: its log is the engine's, not this config's
        super().__init__(engine.server_log or log_path)
        self.engine, self.path = engine, path

    def _enter(self, stack: contextlib.ExitStack) -> Served:
        e = self.engine
        t0 = time.monotonic()
        before = e.server
        server = e.ensure_server(self.log_path)
        started = server is not before
        self.server_args = server.command[1:]
        e.stage("switching layer path")
        if e.live_path == self.path:
            # away and back: every config gets a freshly built context, the identity included
            away = self.path[:-1] if len(self.path) > 1 else self.path * 2
            e.switch(away)
        switch_s = e.switch(self.path)
        load_s = (time.monotonic() - t0) if started else switch_s
        return Served(server.url, server.total_slots, server, 0.0, load_s)


def make_engine(name: str, source: gguf_surgery.SourceModel, settings: ServerSettings,
                tmp_dir: str | os.PathLike | None = None,
                server_log: str | os.PathLike | None = None, **kw) -> Engine:
    """The engine called ``name`` (already resolved: physical or virtual). ``tmp_dir`` is where a
    physical engine rewrites; ``server_log`` the one log of a virtual engine's lasting server."""
    if name == ENGINE_VIRTUAL:
        return VirtualEngine(source, settings, server_log=server_log, **kw)
    return PhysicalEngine(source, settings, tmp_dir, **kw)


__all__ = ["Engine", "PhysicalEngine", "VirtualEngine", "ServerSettings", "Served", "Serving",
           "NoSpace", "EngineError", "ENGINES", "ENGINE_PHYSICAL", "ENGINE_VIRTUAL",
           "resolve_engine", "supports_layer_paths", "has_option", "switch_args", "make_engine",
           "worker_settings"]
