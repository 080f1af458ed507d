"""The adaptive search: find the best RYS block with a fraction of a full pass's item-evaluations.

A config costs its probes (with the virtual engine, nearly nothing else), so the currency of a sweep
is the item-evaluation: one probe item scored on one config. Instead of scoring every config of a plan
on every item, the adaptive search (``rys-sweep --search adaptive``) runs on Optuna:

* **propose** (ask-and-tell): Optuna's TPE sampler proposes a block as two integers, its start and its
  size (and optionally its repeat count), from what was measured so far; the proposal is mapped to the
  nearest config of the plan's space not measured yet, so every trial buys new information and the
  search ends by itself when the space is exhausted;
* **race**: every config is scored on the items in one shuffled order (one seed: all configs are
  paired on the same items), a chunk at a time; after each chunk Optuna's ``WilcoxonPruner`` compares
  the per-item values with the incumbent's on the same items (a paired, one-sided Wilcoxon signed-rank
  test) and stops the config as soon as it is worse; what it did not spend goes to the next proposals;
* **budget**: item-evaluations (a number, or a fraction of a full pass over the space) and a wall-clock
  limit; the search never spends more than its budget.

A per-item value is the item's paired difference to the baseline, scaled so that the mean over all
items is the combined delta (``item_scale``): the racing test and the ranking measure the same thing.
The search state is the Optuna study (its storage: an SQLite file beside the results by default, or a
shared ``--study URL``): trials, their per-item values (``Trial.report``) and the items of each chunk
(trial user attributes), so an interrupted search resumes without scoring an item twice. Records stay
the sweep's (``sweep_record``): a finished config is an ordinary full record, a stopped one a
``stage: "search"`` record of the items it got, never a full score.

``random`` is the baseline strategy of the same machinery: Optuna's random sampler, no racing.
"""

from __future__ import annotations

import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import optuna
from optuna.trial import FrozenTrial, TrialState

from rys import plans
from rys import study as ST
from rys import probes as P
from rys import sweep_record as R
from rys.plans import Config

log = logging.getLogger("rys.search")


ADAPTIVE, RANDOM = "adaptive", "random"
STRATEGIES = (ADAPTIVE, RANDOM)
DEFAULT_CHUNK = 8
DEFAULT_P = 0.1  # Optuna's WilcoxonPruner default
DEFAULT_STARTUP = 8  # random proposals before TPE models the space
TEST_NAME = "Wilcoxon signed-rank, one-sided, paired per item vs the incumbent (Optuna WilcoxonPruner)"
STOP_PRUNED, STOP_BUDGET, STOP_TIME = "worse than the incumbent", "budget spent", "time limit"
STOP_HANDED = "handed to another process"  # declared dead while the study store was away


class SearchError(ValueError):
    """Search options that cannot work (bad input: one line, exit 2)."""


# =========================================================================== budget and time


@dataclass(frozen=True)
class Budget:
    """Item-evaluations the search may spend on candidate configs: a count, or a fraction of a
    full pass (every config of the space on every item)."""

    items: int | None = None
    fraction: float | None = None

    def resolve(self, full: int) -> int:
        if self.items is not None:
            return self.items
        return max(1, math.floor((self.fraction if self.fraction is not None else 1.0) * full))

    def describe(self, full: int) -> str:
        n = self.resolve(full)
        return f"{n} item-evaluations ({100 * n / max(full, 1):.0f}% of a full pass of {full})"


def parse_budget(text: str) -> Budget:
    """``0.2`` or ``20%``: a fraction of a full pass; ``1500``: item-evaluations."""
    t = text.strip()
    try:
        if t.endswith("%"):
            f = float(t[:-1]) / 100
            if not 0 < f <= 1:
                raise ValueError
            return Budget(fraction=f)
        if re.fullmatch(r"\d+", t):
            n = int(t)
            if n < 1:
                raise ValueError
            return Budget(items=n)
        f = float(t)
        if not 0 < f <= 1:
            raise ValueError
        return Budget(fraction=f)
    except ValueError:
        raise SearchError(f"--budget must be a fraction of a full pass (0 < F <= 1, e.g. 0.2 or "
                          f"20%) or a number of item-evaluations (e.g. 1500), got {text!r}") from None


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``45m``, ``8h``, ``1h30m`` -> seconds (> 0)."""
    t = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", t):
        secs = float(t)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", t)
        if not parts or "".join(a + b for a, b in parts) != t:
            raise SearchError(f"--time-limit must be a duration like 90m, 8h or 1h30m, got {text!r}")
        secs = sum(float(a) * _UNITS[b] for a, b in parts)
    if secs <= 0:
        raise SearchError(f"--time-limit must be positive, got {text!r}")
    return secs


# =========================================================================== items and values


@dataclass(frozen=True)
class ItemRef:
    """One probe item: a position of the search's item order."""

    probe: str
    id: str


def item_order(items: Mapping[str, Sequence[str]], seed: int) -> list[ItemRef]:
    """Every item once, each probe's items shuffled with ``seed`` and the probes interleaved in
    proportion (any prefix holds each probe's share, so a stopped config's partial combined score
    weighs the probes as the full one would). Deterministic: the same seed gives the same order on
    every machine."""
    rng = random.Random(seed)
    shuffled = {p: rng.sample(list(ids), len(ids)) for p, ids in sorted(items.items())}
    total = sum(len(v) for v in shuffled.values())
    taken = {p: 0 for p in shuffled}
    out: list[ItemRef] = []
    for k in range(total):
        left = [q for q in shuffled if taken[q] < len(shuffled[q])]
        # the probe furthest behind its share of the first k+1 positions (ties: by name)
        p = max(left, key=lambda q: ((k + 1) * len(shuffled[q]) / total - taken[q], q))
        out.append(ItemRef(p, shuffled[p][taken[p]]))
        taken[p] += 1
    return out


def item_scale(counts: Mapping[str, int], weights: Mapping[str, float]) -> dict[str, float]:
    """Per probe, the factor that makes the mean over all items of ``scale * (score - baseline)``
    the combined delta: ``(w_p / W) * (N / n_p)`` (N items in all, W the weights' sum)."""
    total_w = sum(w for p, w in weights.items() if w > 0 and counts.get(p))
    n = sum(counts.values())
    return {p: (weights.get(p, 0.0) / total_w) * (n / c) if total_w > 0 and c else 0.0
            for p, c in counts.items()}


# =========================================================================== the space


@dataclass(frozen=True)
class Space:
    """The configs the search may measure: the plan's RYS blocks."""

    configs: tuple[Config, ...]

    @classmethod
    def from_plan(cls, plan: Iterable[Config]) -> "Space":
        blocks = tuple(c for c in plans.dedupe(plan)
                       if c.kind in R.BLOCK_KINDS and c.block is not None and c.block.is_block)
        if not blocks:
            raise SearchError("the adaptive search explores RYS blocks: give it a plan of blocks "
                              "(e.g. --grid --max-block 6, or --block-sizes 2 3 4)")
        return cls(blocks)

    def __len__(self) -> int:
        return len(self.configs)

    @property
    def starts(self) -> tuple[int, int]:
        return min(c.block.i for c in self.configs), max(c.block.i for c in self.configs)  # type: ignore[union-attr,type-var]

    @property
    def sizes(self) -> tuple[int, int]:
        s = [c.block.j - c.block.i for c in self.configs]  # type: ignore[union-attr,operator]
        return min(s), max(s)

    @property
    def times(self) -> tuple[int, ...]:
        return tuple(sorted({int(c.block.times or 1) for c in self.configs}))  # type: ignore[union-attr]

    def nearest(self, start: int, size: int, times: int, exclude: set[tuple[int, ...]]
                ) -> Config | None:
        """The config closest to (start, size, times) not in ``exclude`` (ties: the smaller
        start, then the smaller size): a proposal always buys a config not measured yet."""
        best, best_key = None, None
        for c in self.configs:
            if c.path in exclude:
                continue
            b = c.block
            assert b is not None and b.i is not None and b.j is not None
            k = (abs(b.i - start) + abs((b.j - b.i) - size) + 2 * abs(int(b.times or 1) - times),
                 b.i, b.j - b.i, int(b.times or 1))
            if best_key is None or k < best_key:
                best, best_key = c, k
        return best

    def by_path(self) -> dict[tuple[int, ...], Config]:
        return {c.path: c for c in self.configs}


# =========================================================================== the study


@dataclass(frozen=True)
class SearchSettings:
    """How the search runs (from the CLI)."""

    strategy: str = ADAPTIVE
    budget: Budget = field(default_factory=lambda: Budget(fraction=0.2))
    seed: int = 0
    chunk: int = DEFAULT_CHUNK
    p_threshold: float = DEFAULT_P
    startup: int = DEFAULT_STARTUP
    time_limit: float | None = None  # seconds

    def describe(self) -> str:
        if self.strategy == RANDOM:
            return f"random (Optuna RandomSampler, seed {self.seed}, no racing)"
        return (f"adaptive (Optuna TPE, {self.startup} random start-up proposals, seed {self.seed}; "
                f"racing in chunks of {self.chunk} items, WilcoxonPruner p < {self.p_threshold})")


def make_sampler(s: SearchSettings, trial_number: int = 0) -> optuna.samplers.BaseSampler:
    """The sampler for the next proposal, seeded by (seed, trial number): a resumed search
    proposes what an uninterrupted one would have, given the same trials."""
    seed = s.seed * 1_000_003 + trial_number
    if s.strategy == RANDOM:
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.startup, multivariate=True,
                                      constant_liar=True)


def make_pruner(s: SearchSettings) -> optuna.pruners.BasePruner:
    if s.strategy == RANDOM:
        return optuna.pruners.NopPruner()
    # no decision before the first chunk is in: a few items say little
    with ST.experimental():
        return optuna.pruners.WilcoxonPruner(p_threshold=s.p_threshold,
                                             n_startup_steps=max(2, s.chunk))


def open_search_study(url: str, name: str, own: bool, s: SearchSettings,
                      heartbeat: int = ST.HEARTBEAT_S, patience: float = ST.PATIENCE_S) -> ST.Link:
    """Create or load the search's study (the sampler is replaced before every proposal:
    make_sampler)."""
    return ST.open_link(url, name, own, heartbeat=heartbeat, patience=patience,
                        sampler=make_sampler(s), pruner=make_pruner(s))


# =========================================================================== proposals and races

ATTR_PATH = ST.ATTR_PATH  # trial user attribute: the config a trial measures
ATTR_ITEMS = ST.ATTR_ITEMS  # user attributes "items.<chunk>": {probe: [item dicts]} per chunk


@dataclass
class Proposal:
    """A trial and the config it measures (``prior``: items already scored by an earlier,
    interrupted attempt of the same trial)."""

    trial: optuna.Trial
    cfg: Config
    prior: dict[str, list[dict]] = field(default_factory=dict)

    @property
    def number(self) -> int:
        return self.trial.number


def chunk_items(trial: FrozenTrial | optuna.Trial) -> dict[str, list[dict]]:
    """The items a trial has scored so far (its chunks, in order), per probe."""
    attrs = trial.user_attrs
    out: dict[str, list[dict]] = {}
    for k in sorted((k for k in attrs if k.startswith(ATTR_ITEMS + ".")),
                    key=lambda k: int(k.split(".")[1])):
        for probe, its in attrs[k].items():
            out.setdefault(probe, []).extend(its)
    return out


def spent_in(trials: Iterable[FrozenTrial]) -> int:
    """Item-evaluations a search spent: distinct (config, probe, item) its trials' chunks hold,
    failed items included (a retried trial inherits its predecessor's chunks, so they count once)."""
    seen: set[tuple[str, str, str]] = set()
    for t in trials:
        path = t.user_attrs.get(ATTR_PATH)
        if path is not None:
            seen.update((path, probe, str(it["id"])) for probe, its in chunk_items(t).items()
                        for it in its)
    return len(seen)


class Search:
    """The running search: proposes configs (ask), races them (Race), records outcomes (tell).

    ``ask``/``tell`` run in the sweep's main thread; a Race runs in a worker thread (reports and
    prune checks go to the study, which is thread-safe)."""

    def __init__(self, link: ST.Link, space: Space, settings: SearchSettings,
                 order: Sequence[ItemRef]) -> None:
        self.link, self.space, self.s, self.order = link, space, settings, list(order)
        self.study = link.study
        self.full = len(space) * len(self.order)
        self.budget = settings.budget.resolve(self.full)
        self._lock = threading.Lock()
        self._reserved = 0
        self.scored_now = 0  # item-evaluations this process made (a resumed run: only the new)
        self.t0 = time.monotonic()
        self.exhausted = False
        self.best_so_far: list[tuple[int, float]] = []  # (item-evaluations spent, best delta)
        # trials left RUNNING by a process that died are queued again with their items
        link.recover()
        self._spent = self._count_spent()

    # ------------------------------------------------------------------ state
    def _count_spent(self) -> int:
        return spent_in(self.link.trials())

    @property
    def spent(self) -> int:
        with self._lock:
            return self._spent

    def remaining(self) -> int:
        with self._lock:
            return max(0, self.budget - self._spent - self._reserved)

    def out_of_time(self) -> bool:
        return self.s.time_limit is not None and time.monotonic() - self.t0 >= self.s.time_limit

    def measured_paths(self) -> set[tuple[int, ...]]:
        """Configs any trial has measured, is measuring or failed on: never proposed again."""
        by = {c.spec: c.path for c in self.space.configs}
        return {by[spec] for t in self.link.trials()
                if (spec := t.user_attrs.get(ATTR_PATH)) in by}

    def done(self) -> bool:
        return self.exhausted or self.remaining() <= 0 or self.out_of_time()

    # ------------------------------------------------------------------ ask / tell
    def ask(self) -> Proposal | None:
        """The next config to measure: a queued retry first (Optuna serves waiting trials
        first), else a new proposal mapped to the nearest unmeasured config."""
        waiting = False
        if not self.link.own:  # what the other processes spent, and their dead trials
            self.link.recover()
            with self._lock:
                self._spent = self._count_spent()
            # a dead process's config, queued again, is finished even when the budget is spent
            waiting = bool(self.link.trials((TrialState.WAITING,)))
        if self.done() and not waiting:
            return None
        n = len(self.link.trials())
        self.study.sampler = make_sampler(self.s, n)
        trial = self.link.call(self.study.ask)
        lo_s, hi_s = self.space.starts
        lo_z, hi_z = self.space.sizes
        start = trial.suggest_int("start", lo_s, hi_s)
        size = trial.suggest_int("size", lo_z, hi_z)
        ts = self.space.times
        times = trial.suggest_int("times", ts[0], ts[-1]) if len(ts) > 1 else ts[0]
        spec = trial.user_attrs.get(ATTR_PATH)
        by_spec = {c.spec: c for c in self.space.configs}
        if spec is not None and spec in by_spec:  # a retried trial keeps its config
            return Proposal(trial, by_spec[spec], chunk_items(trial))
        cfg = self.space.nearest(start, size, times, self.measured_paths())
        if cfg is None:
            self.exhausted = True
            self.link.call(trial.set_user_attr, "reason", "every config of the space is measured")
            self.link.call(self.study.tell, trial, state=TrialState.FAIL)
            return None
        b = cfg.block
        assert b is not None
        self.link.call(trial.set_user_attr, ATTR_PATH, cfg.spec)
        self.link.call(trial.set_user_attr, "block", [b.i, b.j, int(b.times or 1)])
        self.link.call(trial.set_user_attr, ST.ATTR_BOX, ST.box_id())
        return Proposal(trial, cfg)

    def tell(self, prop: Proposal, value: float | None, complete: bool) -> None:
        """Finish a trial: COMPLETE with its combined delta when every item was scored (it can
        become the incumbent), PRUNED when stopped early, FAIL when it could not be measured."""
        if value is None or not math.isfinite(value):
            self.link.call(self.study.tell, prop.trial, state=TrialState.FAIL,
                           skip_if_finished=True)
        elif complete:
            self.link.call(self.study.tell, prop.trial, value, skip_if_finished=True)
        else:
            self.link.call(self.study.tell, prop.trial, state=TrialState.PRUNED,
                           skip_if_finished=True)
        best = self.best_value()
        if best is not None:
            self.best_so_far.append((self.spent, best))

    def best_value(self) -> float | None:
        best = self._best()
        return None if best is None else float(best.value)  # type: ignore[arg-type]

    def best_path(self) -> str | None:
        best = self._best()
        return None if best is None else best.user_attrs.get(ATTR_PATH)

    def _best(self) -> FrozenTrial | None:
        try:
            return self.link.call(lambda: self.study.best_trial)
        except ValueError:  # no complete trial yet
            return None

    # ------------------------------------------------------------------ budget
    def take(self, n: int) -> int:
        """Reserve up to ``n`` item-evaluations; the number granted (0: budget spent). In a shared
        study the other processes' spending counts too (a budget may then be passed by at most one
        chunk per other process, whose reservations are not seen)."""
        if not self.link.own:
            spent = self._count_spent()
            with self._lock:
                self._spent = max(self._spent, spent)
        with self._lock:
            k = max(0, min(n, self.budget - self._spent - self._reserved))
            self._reserved += k
            return k

    def settle(self, reserved: int, used: int, scored: int = 0) -> None:
        """Release a reservation; ``used`` items are now spent, ``scored`` of them were scored by
        this process (the rest were recorded earlier)."""
        with self._lock:
            self._reserved -= reserved
            self._spent += used
            self.scored_now += scored

    def race(self, prop: Proposal, baseline: Mapping[tuple[str, str], float | None],
             scale: Mapping[str, float]) -> "Race":
        return Race(self, prop, baseline, scale)


class Race:
    """Scores one proposal chunk by chunk on the shared item order, reporting every item's value
    to its trial and asking the pruner after each chunk (see the module docstring)."""

    def __init__(self, search: Search, prop: Proposal,
                 baseline: Mapping[tuple[str, str], float | None], scale: Mapping[str, float]):
        self.search, self.prop, self.baseline, self.scale = search, prop, baseline, scale
        self.pos = {(r.probe, r.id): k for k, r in enumerate(search.order)}
        done = {(p, str(it["id"])) for p, its in prop.prior.items() for it in its}
        self.todo = [r for r in search.order if (r.probe, r.id) not in done]
        self.scored = len(done)
        self.chunks = sum(1 for k in prop.trial.user_attrs if k.startswith(ATTR_ITEMS + "."))
        self.stopped: str | None = None
        self.checked_prior = not prop.prior
        self._reserved = 0
        self.measured_now = 0  # items scored in this attempt

    @property
    def of(self) -> int:
        return len(self.search.order)

    def next_chunk(self) -> list[ItemRef] | None:
        """The next items to score, or None when the race is over (all scored, or stopped)."""
        if not self.checked_prior:  # an interrupted attempt may already have lost
            self.checked_prior = True
            if self._pruned():
                return None
        if self.stopped or not self.todo:
            return None
        if self.search.out_of_time():
            self.stopped = STOP_TIME
            return None
        want = min(self.search.s.chunk, len(self.todo))
        got = self.search.take(want)
        if got == 0:
            self.stopped = STOP_BUDGET
            return None
        chunk, self.todo = self.todo[:got], self.todo[got:]
        self._reserved = got
        return chunk

    def report(self, chunk: Sequence[ItemRef], results: Mapping[str, P.ProbeResult]) -> None:
        """Report each scored item's value (its step: its position in the order) and keep the
        chunk's items on the trial, then ask the pruner. A trial another process declared dead
        (the store was away longer than the grace) went back to the queue with what it had: this
        race stops, and its items are recorded as its own, partial."""
        try:
            self._report(chunk, results)
        except optuna.exceptions.UpdateFinishedTrialError:
            self.stopped = STOP_HANDED
        self.measured_now += len(chunk)
        self.search.settle(self._reserved, len(chunk), scored=len(chunk))
        self._reserved = 0
        if self.todo:
            self._pruned()

    def adopt(self, results: Mapping[str, P.ProbeResult]) -> None:
        """Give the trial the items of a config recorded earlier (found in the results file, not
        measured now), so the pruner can compare later configs against it."""
        have = {(name, it.id) for name, res in results.items() for it in res.items}
        refs = [r for r in self.todo if (r.probe, r.id) in have]
        self._report(refs, results)
        self.todo = [r for r in self.todo if (r.probe, r.id) not in have]
        self.search.settle(0, len(refs))

    def _report(self, refs: Sequence[ItemRef], results: Mapping[str, P.ProbeResult]) -> None:
        trial = self.prop.trial
        scored = {(name, it.id): it for name, res in results.items() for it in res.items}
        for ref in refs:
            it = scored.get((ref.probe, ref.id))
            base = self.baseline.get((ref.probe, ref.id))
            if it is None or it.score is None or base is None:
                continue
            value = self.scale.get(ref.probe, 0.0) * (it.score - base)
            self.search.link.call(trial.report, value, self.pos[(ref.probe, ref.id)])
        keep = {(r.probe, r.id) for r in refs}
        self.search.link.call(trial.set_user_attr, f"{ATTR_ITEMS}.{self.chunks}",
                              {name: [it.to_dict() for it in res.items if (name, it.id) in keep]
                               for name, res in results.items()
                               if any((name, it.id) in keep for it in res.items)})
        self.chunks += 1
        self.scored += len(refs)

    def abandon(self) -> None:
        """Give back a reservation that was not used (the chunk failed)."""
        if self._reserved:
            self.search.settle(self._reserved, 0)
            self._reserved = 0

    def _pruned(self) -> bool:
        if self.stopped:
            return True
        if self.search.link.call(self.prop.trial.should_prune):
            self.stopped = STOP_PRUNED
            return True
        return False

    @property
    def complete(self) -> bool:
        return not self.todo and self.stopped is None

    def info(self, against: str | None) -> R.SearchInfo:
        """What the record says about this race."""
        s = self.search.s
        return R.SearchInfo(
            strategy=s.strategy, trial=self.prop.number, seed=s.seed, items=self.scored,
            of=self.of, stopped=not self.complete, reason=self.stopped,
            test=TEST_NAME if self.stopped == STOP_PRUNED else None,
            p_threshold=s.p_threshold if self.stopped == STOP_PRUNED else None,
            against=against if self.stopped == STOP_PRUNED else None)



def race_items(refs: Sequence[ItemRef]) -> dict[str, list[str]]:
    """Item ids per probe of a chunk (what each probe job selects)."""
    out: dict[str, list[str]] = {}
    for r in refs:
        out.setdefault(r.probe, []).append(r.id)
    return out


def describe_trials(link: ST.Link) -> dict[str, int]:
    """How many trials ended how (for summaries)."""
    counts = {"complete": 0, "stopped": 0, "failed": 0, "running": 0}
    for t in link.trials():
        if t.state == TrialState.COMPLETE:
            counts["complete"] += 1
        elif t.state == TrialState.PRUNED:
            counts["stopped"] += 1
        elif t.state == TrialState.FAIL:
            counts["failed"] += 1
        elif t.state == TrialState.RUNNING:
            counts["running"] += 1
    return counts


