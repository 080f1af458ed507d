"""Plans: what a sweep measures, as plain data built before anything runs.

A plan is a list of `Config` (a layer path plus what it means) made by pure planners: RYS blocks
(`plan_blocks`), every block (`plan_grid`), single-layer ablations (`plan_ablate`), explicit paths
(`parse_paths_text`) and the neighbours of the best blocks (`plan_refine`). Successive halving's
pure core lives here too (`successive_halving`, `halving_rungs`): the runner drives it with a scoring
callback. The adaptive search (``rys.search``) proposes configs from the same constructors, so a
config means the same thing whichever strategy chose it; ``--dry-run`` prints exactly what a plan
would run, and a rerun can skip what is already recorded.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable, Mapping, Sequence, TypeVar

from rys import layer_path
from rys import sweep_record as R
from rys.sweep_record import Block, Kind, SweepRecord


class PlanError(ValueError):
    """Plan options that cannot produce a valid plan for this model (bad input: exit 2)."""


# =========================================================================== configs and planning


@dataclass(frozen=True)
class Config:
    """One thing to measure: a layer path plus what it means.

    ``block`` is a RYS block ``(i, j, times)`` for block/grid/refine configs (layers i..j-1 run
    times+1 times, j exclusive) or ``skip`` for ablations. ``of_kind`` is set on confirm configs
    (the kind of the dev config being rescored). The baseline (and its confirm rescore) serves the
    unmodified model; everything else goes through the engine's path serving.
    """

    path: tuple[int, ...]
    kind: Kind
    block: Block | None = None
    label: str = ""
    of_kind: Kind | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", Kind(self.kind))
        if self.of_kind is not None:
            object.__setattr__(self, "of_kind", Kind(self.of_kind))
        object.__setattr__(self, "path", tuple(int(x) for x in self.path))

    @property
    def original(self) -> bool:
        """True for the unmodified model: the baseline and the baseline's confirm rescore."""
        return self.kind == Kind.BASELINE or self.of_kind == Kind.BASELINE

    @property
    def spec(self) -> str:
        return layer_path.format(self.path)

    @property
    def key_path(self) -> str:
        """What the config key hashes as the path (``original`` for the unmodified model)."""
        return "original" if self.original else self.spec

    @property
    def config_label(self) -> str:
        return R.config_label(self.kind, self.block, self.label, self.spec, self.of_kind)


def baseline_config(n_layers: int) -> Config:
    return Config(tuple(layer_path.identity(n_layers)), Kind.BASELINE, label="baseline")


def identity_config(n_layers: int) -> Config:
    return Config(tuple(layer_path.identity(n_layers)), Kind.IDENTITY, label="identity")


def confirm_config(cfg: Config) -> Config:
    """The held-out rescore of a dev config (same path, kind "confirm")."""
    return dataclasses.replace(cfg, kind=Kind.CONFIRM, of_kind=cfg.kind)


def block_config(i: int, j: int, n_layers: int, times: int = 1,
                 kind: Kind = Kind.BLOCK) -> Config:
    return Config(tuple(layer_path.duplicate(i, j, n_layers, times)), kind,
                  block=Block(i=i, j=j, times=times))


def plan_blocks(n_layers: int, sizes: Sequence[int], stride: int = 1, start_min: int = 0,
                start_max: int | None = None, times: int = 1) -> list[Config]:
    """RYS blocks: for each size, blocks (i, i+size) for i = start_min, start_min+stride, ...

    ``start_max`` (inclusive, default the last possible start) caps i; blocks past the last layer
    are not planned. Errors name the option that cannot work for this model.
    """
    if stride < 1:
        raise PlanError(f"--stride must be >= 1, got {stride}")
    if times < 1:
        raise PlanError(f"--times must be >= 1, got {times}")
    for size in sizes:
        if size < 1:
            raise PlanError(f"--block-sizes: block size must be >= 1, got {size}")
        if size > n_layers:
            raise PlanError(f"--block-sizes: block size {size} is larger than the model's "
                            f"{n_layers} layers")
    if not 0 <= start_min < n_layers:
        raise PlanError(f"--start-min {start_min} is outside the model's layers 0..{n_layers - 1}")
    last = n_layers - 1 if start_max is None else start_max
    if last < start_min:
        raise PlanError(f"--start-max {last} is below --start-min {start_min}")
    out: list[Config] = []
    for size in sizes:
        for i in range(start_min, min(last, n_layers - size) + 1, stride):
            out.append(block_config(i, i + size, n_layers, times))
    return out


def plan_grid(n_layers: int, min_block: int = 1, skip_early: int = 0, skip_late: int = 0,
              times: int = 1, max_block: int | None = None) -> list[Config]:
    """Every (i, j) with skip_early <= i < j <= n - skip_late and min_block <= j-i <= max_block."""
    if min_block < 1:
        raise PlanError(f"--min-block must be >= 1, got {min_block}")
    if skip_early < 0 or skip_late < 0:
        raise PlanError("--skip-early/--skip-late must be >= 0")
    if times < 1:
        raise PlanError(f"--times must be >= 1, got {times}")
    hi = n_layers - skip_late
    if hi - skip_early < min_block:
        raise PlanError(f"--grid: no block of >= {min_block} layers fits between layer "
                        f"{skip_early} and {hi} of the model's {n_layers}")
    out = []
    for i in range(skip_early, hi):
        for j in range(i + min_block, hi + 1):
            if max_block is None or j - i <= max_block:
                out.append(block_config(i, j, n_layers, times, Kind.GRID))
    return out


def plan_ablate(n_layers: int) -> list[Config]:
    """Skip one layer at a time."""
    if n_layers < 2:
        raise PlanError("--ablate needs a model with at least 2 layers")
    return [Config(tuple(layer_path.ablate(k, n_layers)), Kind.ABLATE, block=Block(skip=k))
            for k in range(n_layers)]


def parse_paths_text(text: str, n_layers: int, source: str = "paths file") -> list[Config]:
    """One layer-path spec per line; ``#`` starts a comment; blank lines ignored.

    An optional label may follow the spec after whitespace+``#`` (it is the comment). Errors name
    the line number.
    """
    out = []
    for lineno, raw in enumerate(text.splitlines(), 1):
        spec, _, comment = raw.partition("#")
        spec = spec.strip()
        if not spec:
            continue
        try:
            path = layer_path.parse(spec, n_layers)
        except layer_path.LayerPathError as exc:
            raise PlanError(f"{source} line {lineno}: {exc}") from None
        out.append(Config(tuple(path), Kind.CUSTOM, label=comment.strip()))
    if not out:
        raise PlanError(f"{source} has no layer paths")
    return out


def plan_refine(scored: Sequence[tuple[Config, float]], n_layers: int, top_k: int,
                done: Iterable[Sequence[int]], times: int | None = None) -> list[Config]:
    """Sparse-then-dense: every neighbour (i±1, j±1) of the top-k block configs not yet run.

    ``scored`` pairs configs with the number to maximise (combined delta); only block-like configs
    (block/grid/refine) have neighbours. ``done`` holds the paths already measured. Neighbours keep
    the block's ``times`` unless given. Order: by parent rank, then (i, j).
    """
    seen = {tuple(p) for p in done}
    ranked = sorted((c for c in scored if c[0].kind in R.BLOCK_KINDS and c[0].block is not None
                     and c[0].block.is_block), key=lambda cs: -cs[1])
    out: list[Config] = []
    for cfg, _ in ranked[:top_k]:
        b = cfg.block
        assert b is not None and b.i is not None and b.j is not None
        t0 = b.times or 1
        t = t0 if times is None else times
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                i, j = b.i + di, b.j + dj
                if (di, dj) == (0, 0) and t == t0:
                    continue
                if not 0 <= i < j <= n_layers:
                    continue
                c = block_config(i, j, n_layers, t, Kind.REFINE)
                if c.path in seen:
                    continue
                seen.add(c.path)
                out.append(c)
    return out


def config_from_record(rec: SweepRecord, n_layers: int) -> Config | None:
    """Rebuild the Config of a results record (None if its path does not parse)."""
    try:
        path = tuple(layer_path.parse(rec.path, n_layers))
    except layer_path.LayerPathError:
        return None
    of_kind = rec.confirm.kind if rec.confirm else None
    return Config(path, rec.kind, block=rec.block, label=rec.label or "", of_kind=of_kind)


def dedupe(configs: Iterable[Config], done: Iterable[Sequence[int]] = ()) -> list[Config]:
    """Drop configs whose path was planned earlier (first one wins) or is in ``done``."""
    seen = {tuple(p) for p in done}
    out = []
    for c in configs:
        if c.path not in seen:
            seen.add(c.path)
            out.append(c)
    return out


# =========================================================================== successive halving

T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True)
class Rung:
    """One halving rung: ``keep`` configs are scored on the first ``limit`` items (cumulative)."""

    keep: int
    limit: int


def halving_rungs(n_configs: int, n_items: int, eta: int = 3, min_items: int = 4,
                  min_keep: int = 1) -> list[Rung]:
    """Rungs of successive halving: item budget grows by ``eta`` while configs shrink by ``eta``.

    The last rung always scores its survivors on all ``n_items``; the first rung uses about
    ``n_items / eta**(R-1)`` items (never fewer than ``min_items``), and there are no more rungs
    than it takes to get down to ``min_keep`` configs.
    """
    if eta < 2:
        raise ValueError(f"halving eta must be >= 2, got {eta}")
    if n_configs < 1 or n_items < 1:
        return [Rung(max(n_configs, 0), max(n_items, 0))]
    min_keep = max(1, min(min_keep, n_configs))
    by_items = 1
    while n_items / eta ** by_items >= max(1, min_items):
        by_items += 1
    by_configs = 1
    while math.ceil(n_configs / eta ** (by_configs - 1)) > min_keep:
        by_configs += 1
    n_rungs = max(1, min(by_items, by_configs))
    rungs = []
    for r in range(n_rungs):
        keep = max(min_keep, math.ceil(n_configs / eta ** r))
        limit = math.ceil(n_items / eta ** (n_rungs - 1 - r))
        rungs.append(Rung(min(keep, n_configs), min(limit, n_items)))
    return rungs


def select_top(scores: Mapping[T, float | None], keep: int) -> list[T]:
    """The ``keep`` best by score (None/NaN last), ties broken by the mapping's order (plan
    order)."""
    order = {c: k for k, c in enumerate(scores)}

    def rank(c: T) -> tuple[int, float, int]:
        s = scores[c]
        return (1, 0.0, order[c]) if s is None or s != s else (0, -s, order[c])

    return sorted(scores, key=rank)[:keep]


@dataclass
class HalvingResult:
    ranking: list  # final-rung survivors, best first
    rungs: list[Rung]
    survivors: list[list]  # configs evaluated at each rung, in evaluation order
    runs: int  # config runs (server starts / switches) spent


def successive_halving(configs: Sequence[T],
                       score_rung: Callable[[int, Rung, list[T]], Mapping[T, float | None]],
                       rungs: Sequence[Rung]) -> HalvingResult:
    """Score all configs on a slice, keep the best 1/eta, score those on more items, ... to all.

    ``score_rung(r, rung, alive)`` scores every alive config on the first ``rung.limit`` items and
    returns ``{config: score}`` (the sweep measures a whole rung as one batch, so several servers
    can share it). A surviving config is only scored on the items it lacks; see `halving_cost`.
    """
    alive: list[T] = list(configs)
    survivors: list[list] = []
    runs = 0
    for r, rung in enumerate(rungs):
        alive = alive[: rung.keep]
        survivors.append(list(alive))
        scores = score_rung(r, rung, alive)
        runs += len(alive)
        alive = select_top({c: scores.get(c) for c in alive}, len(alive))
    return HalvingResult(alive, list(rungs), survivors, runs)


def halving_slices(counts: Mapping[str, int], limit: int,
                   prev: int | None) -> dict[str, tuple[int, int]]:
    """Per probe ``(offset, n)``: the items a config scored on ``prev`` items still lacks to have
    ``limit`` (every item once, no item twice)."""
    out = {}
    for name, count in counts.items():
        cur = min(limit, count)
        start = 0 if prev is None else min(prev, count)
        out[name] = (start, cur - start)
    return out


def halving_cost(n_configs: int, rungs: Sequence[Rung], counts: Mapping[str, int],
                 eta: int) -> dict:
    """Config-item evaluations and config runs of a halving plan against a full pass."""
    spent, prev = 0, None
    for rung in rungs:
        spent += rung.keep * sum(n for _, n in halving_slices(counts, rung.limit, prev).values())
        prev = rung.limit
    full = n_configs * sum(counts.values())
    return {"eta": eta, "rungs": [{"configs": r.keep, "limit": r.limit} for r in rungs],
            "evaluations": spent, "full_evaluations": full, "saved": full - spent,
            "saved_fraction": round(1 - spent / full, 4) if full else 0.0,
            "runs": sum(r.keep for r in rungs), "full_runs": n_configs}
