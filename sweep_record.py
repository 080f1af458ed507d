"""The sweep record (schema ``rys.sweep/1``): its one typed definition, its files and its numbers.

rys-sweep writes these records, rys-plot, bench and the tests read them; both sides use this module,
so a field exists in one place (a dataclass field here, plus the schema table in docs/records.md, which a test
checks against these classes). Also here, because they define what a record's numbers mean:

* the config key (what a measurement depends on; resume matches on it) and the settings it hashes;
* the combined score and combined delta (weighted means), the noise floor (what the identity control
  moves) and significance (when a delta clears the noise);
* the held-out check: a gain's one-sided p-value, the corrections across the configs checked
  (Holm, Benjamini-Hochberg), whether a gain holds, how much it shrank, and the verdict sentences;
* the one human label of a config: ``dup(4,7)``, ``dup(4,7)x3``, ``skip(6)``, ``identity``, ...;
* the JSONL files: read (one warning per bad line, naming it), append (flushed, fsync'd, never half
  a line), tail repair (a kill mid-write), the items sidecar line, the companion file names, and the
  summary's noise floor.

Serialisation is generic over the dataclasses (field name = JSON key, nested dataclasses, enums,
optional and container types), so adding a field is one line here; ``from_json`` accepts records
written before a field existed (its default) and ignores keys it does not know.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import hashlib
import json
import logging
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

log = logging.getLogger("rys.record")

SCHEMA = "rys.sweep/1"
SUMMARY_SCHEMA = "rys.sweep.summary/1"
COMBINED = "combined"


class RecordError(ValueError):
    """A line that claims to be a sweep record but is not a valid one."""


class Kind(str, enum.Enum):
    """What a config is; ``block``/``grid``/``refine`` are RYS blocks (i, j)."""

    BASELINE = "baseline"
    IDENTITY = "identity"
    BLOCK = "block"
    GRID = "grid"
    ABLATE = "ablate"
    CUSTOM = "custom"
    REFINE = "refine"
    CONFIRM = "confirm"

    def __str__(self) -> str:
        return self.value


BLOCK_KINDS = (Kind.BLOCK, Kind.GRID, Kind.REFINE)
REFERENCE_KINDS = (Kind.BASELINE, Kind.IDENTITY)  # measured to compare against, never candidates


class Stage(str, enum.Enum):
    """``sweep``: a full measurement; ``halving``: an early successive-halving rung (a slice of the
    items); ``search``: a config the adaptive search stopped early (a prefix of its shuffled item
    order, never a full score); ``confirm``: a held-out rescore."""

    SWEEP = "sweep"
    HALVING = "halving"
    SEARCH = "search"
    CONFIRM = "confirm"

    @property
    def partial(self) -> bool:
        """Scored on part of the items only: never ranked as a full measurement."""
        return self in (Stage.HALVING, Stage.SEARCH)

    def __str__(self) -> str:
        return self.value


OK, ERROR = "ok", "error"
ENGINE_PHYSICAL = "physical"


# =========================================================================== the record


@dataclass(frozen=True)
class Block:
    """``{"i", "j", "times"}`` for RYS blocks (layers i..j-1 run times+1 times, j exclusive), or
    ``{"skip": L}`` for an ablation: one JSON object, whichever it is."""

    i: int | None = None
    j: int | None = None
    times: int | None = None
    skip: int | None = None

    def to_json(self) -> dict:
        if self.skip is not None:
            return {"skip": self.skip}
        return {"i": self.i, "j": self.j, "times": 1 if self.times is None else self.times}

    @classmethod
    def from_json(cls, obj: Any) -> "Block":
        if not isinstance(obj, Mapping):
            raise RecordError(f"block must be an object, got {obj!r}")
        if "skip" in obj:
            return cls(skip=_as_int(obj["skip"], "block.skip"))
        return cls(i=_as_int(obj.get("i"), "block.i"), j=_as_int(obj.get("j"), "block.j"),
                   times=_as_int(obj.get("times", 1), "block.times"))

    @property
    def is_block(self) -> bool:
        return self.i is not None and self.j is not None


@dataclass(frozen=True)
class ProbeScore:
    """One probe's result for one config (the items themselves go to the sidecar)."""

    score: float | None = None
    stderr: float | None = None
    n: int = 0
    n_errors: int = 0
    version: int | None = None
    hash: str | None = None
    split: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    mode: str | None = None
    chat: bool | None = None
    n_truncated: int = 0
    elapsed_s: float | None = None


@dataclass(frozen=True)
class Delta:
    """A difference to the baseline with its (paired) standard error."""

    delta: float | None = None
    stderr: float | None = None


@dataclass(frozen=True)
class Timings:
    """Seconds; ``load_s`` is the server start (physical engine) or the path switch (virtual);
    ``total_s`` also covers stopping and deleting."""

    surgery_s: float = 0.0
    load_s: float = 0.0
    probe_s: float = 0.0
    total_s: float = 0.0

    def to_json(self) -> dict:
        return {f.name: round(float(getattr(self, f.name)), 3) for f in dataclasses.fields(self)}


@dataclass(frozen=True)
class ServerInfo:
    """How the config was served: the full argument list after the binary, ``--version``, the log
    (relative to the results file) and the engine."""

    args: list[str] = field(default_factory=list)
    version: str = ""
    log: str = ""
    engine: str = ENGINE_PHYSICAL


@dataclass(frozen=True)
class ModelInfo:
    """The source model: ``file`` (name, for display), ``path`` (absolute, for build commands),
    size, architecture, layer count and the cheap header fingerprint (for matching)."""

    file: str = ""
    size: int = 0
    arch: str = ""
    n_layers: int = 0
    fingerprint: str = ""
    path: str | None = None


@dataclass(frozen=True)
class Settings:
    """What, besides model and path, decides a measurement.

    ``weights`` only affect the combined score, so they are not part of the key (changing them
    re-ranks, it does not re-run). ``probes`` maps probe name -> content hash; ``suite`` is what
    ran (``math:12,...``). ``engine`` enters the key only when it is not the physical one, so keys
    of results written before engines existed stay valid.
    """

    split: str = "dev"
    limit: int | None = None
    mode: str = "auto"
    weights: dict[str, float] = field(default_factory=dict)
    no_think: bool = False
    probes: dict[str, str] = field(default_factory=dict)
    suite: str = ""
    engine: str = ENGINE_PHYSICAL
    order_seed: int | None = None
    items: int | None = None

    def key_part(self) -> dict:
        part = {"split": self.split, "limit": self.limit, "mode": self.mode,
                "no_think": self.no_think, "probes": dict(sorted(self.probes.items())),
                "suite": self.suite}
        if self.engine != ENGINE_PHYSICAL:
            part["engine"] = self.engine
        if self.items is not None:
            # a config stopped early was scored on the first `items` items of the order that
            # `order_seed` shuffles; a full measurement does not depend on the order
            part["order_seed"] = self.order_seed
            part["items"] = self.items
        return part

    def to_json(self) -> dict:
        out = _dump_fields(self)
        if self.engine == ENGINE_PHYSICAL:
            out.pop("engine")  # as records were before engines existed
        for name in ("order_seed", "items"):
            if out[name] is None:
                out.pop(name)  # as records were before the adaptive search existed
        return out


@dataclass(frozen=True)
class ConfirmRef:
    """On confirm records: the key and kind of the dev record rescored."""

    of: str
    kind: Kind


@dataclass(frozen=True)
class SearchInfo:
    """On configs measured by the adaptive search: the trial, how many items of the shuffled order
    were scored (``items`` of ``of``), and, when it was stopped early, why (``reason``) and, when a
    paired test stopped it, the test, its threshold and the incumbent it lost to (``against``)."""

    strategy: str = "adaptive"
    trial: int | None = None
    seed: int = 0
    items: int = 0
    of: int = 0
    stopped: bool = False
    reason: str | None = None
    test: str | None = None
    p_threshold: float | None = None
    against: str | None = None


@dataclass(frozen=True)
class SweepRecord:
    """One results line; docs/records.md documents every field."""

    schema: str = SCHEMA
    key: str = ""
    path: str = ""
    kind: Kind = Kind.CUSTOM
    block: Block | None = None
    n_layers: int = 0
    status: str = OK
    error: str | None = None
    probes: dict[str, ProbeScore] = field(default_factory=dict)
    delta: dict[str, Delta] = field(default_factory=dict)
    combined: float | None = None
    combined_delta: Delta | None = None
    timings: Timings = field(default_factory=Timings)
    server: ServerInfo = field(default_factory=ServerInfo)
    model: ModelInfo = field(default_factory=ModelInfo)
    settings: Settings = field(default_factory=Settings)
    started_at: str = ""
    ended_at: str = ""
    label: str | None = None
    stage: Stage = Stage.SWEEP
    confirm: ConfirmRef | None = None
    search: SearchInfo | None = None

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def config_label(self) -> str:
        return config_label(self.kind, self.block, self.label, self.path,
                            self.confirm.kind if self.confirm else None)

    def scores(self) -> dict[str, float | None]:
        return {name: p.score for name, p in self.probes.items()}

    def to_json(self) -> dict:
        out = _dump_fields(self)
        if out["search"] is None:
            out.pop("search")  # as records were before the adaptive search existed
        return out

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> "SweepRecord":
        if not isinstance(obj, Mapping) or not is_record(obj):
            raise RecordError("not a rys.sweep record")
        for name in ("key", "path", "kind"):
            if not isinstance(obj.get(name), str):
                raise RecordError(f"record without a {name!r}")
        return _load_dataclass(cls, obj, "record")


def is_record(obj: Mapping[str, Any]) -> bool:
    """Whether a JSON object claims to be a rys sweep record (any version of the schema)."""
    return str(obj.get("schema", "")).startswith(SCHEMA.split("/")[0] + "/")


# --------------------------------------------------------------------------- generic (de)serialising


def to_json(value: Any) -> Any:
    """Any record part (dataclass, enum, containers of them) as plain JSON data."""
    return _dump(value)


def _dump(value: Any) -> Any:
    if hasattr(value, "to_json") and dataclasses.is_dataclass(value):
        return value.to_json()
    if dataclasses.is_dataclass(value):
        return _dump_fields(value)
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): _dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    return value


def _dump_fields(obj: Any) -> dict:
    return {f.name: _dump(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


_HINTS: dict[type, dict[str, Any]] = {}


def _load(tp: Any, value: Any, where: str) -> Any:
    """``value`` (parsed JSON) as type ``tp``; RecordError names the field when it cannot be."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _load(inner[0], value, where)
    if dataclasses.is_dataclass(tp):
        if "from_json" in tp.__dict__:  # a class with its own JSON shape (Block)
            return tp.from_json(value)
        return _load_dataclass(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            raise RecordError(f"{where}: unknown value {value!r}") from None
    if origin is dict:
        if not isinstance(value, Mapping):
            raise RecordError(f"{where} must be an object, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _load(vt, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        if not isinstance(value, list):
            raise RecordError(f"{where} must be a list, got {value!r}")
        (vt,) = typing.get_args(tp)
        return [_load(vt, v, where) for v in value]
    if tp is Any:
        return value
    if tp is float:
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RecordError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        return _as_int(value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise RecordError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise RecordError(f"{where} must be a string, got {value!r}")
        return value
    return value


def _load_dataclass(tp: Any, value: Any, where: str) -> Any:
    if not isinstance(value, Mapping):
        raise RecordError(f"{where} must be an object, got {value!r}")
    hints = _hints(tp)
    kwargs = {f.name: _load(hints[f.name], value[f.name], f"{where}.{f.name}")
              for f in dataclasses.fields(tp) if f.name in value}
    try:
        return tp(**kwargs)
    except TypeError as exc:
        raise RecordError(f"{where}: {exc}") from None


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not value.is_integer()):
        raise RecordError(f"{where} must be an integer, got {value!r}")
    return int(value)


# =========================================================================== what the numbers mean


def config_label(kind: Kind | str, block: Block | None = None, label: str | None = None,
                 path: str = "", of_kind: Kind | str | None = None) -> str:
    """The one human name of a config, used by every table, line, plot and report.

    ``dup(4,7)`` (layers 4..6 run twice), ``dup(4,7)x3`` (three times), ``skip(6)``, ``baseline``,
    ``identity``, a custom config's label or its path; ``confirm dup(4,7)`` for a held-out rescore.
    (``del(i,j)``: a pruned block of the reference project's files.)
    """
    kind = str(kind)
    base = str(of_kind) if kind == Kind.CONFIRM.value and of_kind else kind
    if base in (Kind.BASELINE.value, Kind.IDENTITY.value):
        text = base
    elif block is not None and block.is_block:
        times = 1 if block.times is None else block.times
        text = f"{'del' if base == 'prune' else 'dup'}({block.i},{block.j})" + \
            (f"x{times + 1}" if times != 1 else "")
    elif block is not None and block.skip is not None:
        text = f"skip({block.skip})"
    elif label:
        text = label
    else:
        text = path if len(path) <= 28 else path[:25] + "..."
    return f"confirm {text}" if kind == Kind.CONFIRM.value else text


def config_key(fingerprint: str, path_spec: str, settings: Settings) -> str:
    """16 hex chars of sha256 over (model fingerprint, canonical path, settings' key part).

    The baseline passes ``"original"`` as its path (no surgery), so it never collides with the
    identity control; any two configs with the same path share a key (measured once).
    """
    return short_hash([fingerprint, path_spec, settings.key_part()])


def short_hash(obj: Any) -> str:
    """16 hex chars of sha256 over canonical JSON (sorted keys): the same on every machine."""
    payload = json.dumps(obj, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def combined_score(scores: Mapping[str, float | None], weights: Mapping[str, float]) -> float | None:
    """Weighted mean ``sum(w_p * s_p) / sum(w_p)`` over probes with weight > 0; None if any
    weighted probe has no score."""
    num = den = 0.0
    for name, w in weights.items():
        if w <= 0:
            continue
        s = scores.get(name)
        if s is None or not math.isfinite(s):
            return None
        num += w * s
        den += w
    return num / den if den > 0 else None


def combined_delta(deltas: Mapping[str, Delta], weights: Mapping[str, float]) -> Delta | None:
    """The weighted mean of per-probe deltas; its stderr assumes independent probes:
    ``sqrt(sum((w_p/W)^2 * se_p^2))``."""
    total = sum(w for w in weights.values() if w > 0)
    if total <= 0:
        return None
    d = var = 0.0
    for name, w in weights.items():
        if w <= 0:
            continue
        entry = deltas.get(name)
        if entry is None or entry.delta is None:
            return None
        d += w / total * entry.delta
        se = entry.stderr or 0.0
        var += (w / total) ** 2 * se * se
    return Delta(d, math.sqrt(var))


def noise_floor(deltas: Mapping[str, Delta], combined: Delta | None = None) -> dict[str, float]:
    """What the identity control moves: per probe (and ``combined``) ``max(|delta|, 2 * stderr)``.

    Gains below it are indistinguishable from rewriting (or re-serving) an unchanged model.
    """
    out = {}
    items = list(deltas.items()) + ([(COMBINED, combined)] if combined is not None else [])
    for name, entry in items:
        if entry is None or entry.delta is None:
            continue
        out[name] = max(abs(entry.delta), 2 * (entry.stderr or 0.0))
    return out


def significance(delta: float | None, stderr: float | None, floor: float | None) -> str:
    """``+``/``-`` when |delta| clears the noise threshold, ``~`` within noise, ``?`` unknown.

    Threshold = max(noise floor, 2 * the config's own paired stderr), using whichever is known;
    with neither known (e.g. the reference format) no claim is made.
    """
    if delta is None:
        return "?"
    parts = [x for x in (floor, None if stderr is None else 2.0 * stderr) if x is not None]
    if not parts:
        return "?"
    if abs(delta) <= max(parts):
        return "~"
    return "+" if delta > 0 else "-"


def p_gain(delta: Delta | None) -> float | None:
    """One-sided p-value that a paired delta is > 0: ``P(Z >= delta / stderr)`` (the normal
    approximation of a paired mean over items, the same z that ``significance`` thresholds at 2)."""
    if delta is None or delta.delta is None or not delta.stderr or delta.stderr <= 0:
        return None
    return 0.5 * math.erfc(delta.delta / delta.stderr / math.sqrt(2))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (family-wise error over the tests given; None stays
    None and is not counted)."""
    known = sorted((p, k) for k, p in enumerate(pvalues) if p is not None)
    m, out, running = len(known), [None] * len(pvalues), 0.0
    for rank, (p, k) in enumerate(known):
        running = max(running, min(1.0, (m - rank) * p))
        out[k] = running
    return out  # type: ignore[return-value]


def benjamini_hochberg(pvalues: Sequence[float | None]) -> list[float | None]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate over the tests given)."""
    known = sorted((p, k) for k, p in enumerate(pvalues) if p is not None)
    m, out, running = len(known), [None] * len(pvalues), 1.0
    for rank in range(m - 1, -1, -1):
        p, k = known[rank]
        running = min(running, p * m / (rank + 1))
        out[k] = min(1.0, running)
    return out  # type: ignore[return-value]


CORRECTIONS = {"holm": ("Holm", holm), "bh": ("Benjamini-Hochberg", benjamini_hochberg)}
HELDOUT_TEST = "one-sided paired z-test of the combined delta (per-item paired stderr)"
ALPHA = 0.05


@dataclass(frozen=True)
class HeldOut:
    """A top config rescored on held-out items: its search-item (dev) and held-out (test)
    deltas, the held-out gain's p-value before and after the correction across the K rescored,
    and whether the gain holds: corrected p below alpha and beyond the noise floor."""

    dev: Delta | None
    test: Delta | None
    p: float | None
    p_adjusted: float | None
    holds: bool

    @property
    def shrinkage(self) -> float | None:
        """How much the delta fell from the search items to the held-out items."""
        if self.dev is None or self.test is None or self.dev.delta is None \
                or self.test.delta is None:
            return None
        return self.dev.delta - self.test.delta


def heldout(pairs: Sequence[tuple[Delta | None, Delta | None]], floor: float | None,
            correction: str = "holm", alpha: float = ALPHA) -> list[HeldOut]:
    """The held-out check of K configs, ``(dev delta, test delta)`` each, corrected across the K
    (``CORRECTIONS``): the one computation rys-sweep, rys-plot and bench share."""
    ps = [p_gain(t) for _, t in pairs]
    adj = CORRECTIONS[correction][1](ps)
    return [HeldOut(d, t, p, pa, pa is not None and pa < alpha and beats_noise(t, floor))
            for (d, t), p, pa in zip(pairs, ps, adj)]


def heldout_verdict(labels: Sequence[str], checks: Sequence[HeldOut],
                    correction: str = "holm") -> str | None:
    """The held-out sentence: does the top config's gain hold, how much it shrank, and which of
    the K (if any) hold after the correction."""
    if not checks:
        return None
    name = CORRECTIONS[correction][0]
    top, label = checks[0], labels[0]
    shrink = top.shrinkage
    head = (f"held-out check ({len(checks)} configs, {name}-corrected): the top config on the "
            f"search items, {label}, {'holds' if top.holds else 'does not hold'}: test delta "
            f"{fmt_delta(top.test)} (search items {fmt_delta(top.dev)}"
            + (f", shrank by {shrink:.3f}" if shrink is not None and shrink >= 0 else
               f", grew by {-shrink:.3f}" if shrink is not None else "")
            + ("" if top.p_adjusted is None else f"; adjusted p {top.p_adjusted:.3g}") + ")")
    others = [lab for lab, c in zip(labels[1:], checks[1:]) if c.holds]
    if others:
        head += f"; also holding: {', '.join(others)}"
    elif not top.holds:
        head += "; none of the others holds either"
    return head


def beats_noise(delta: Delta | None, floor: float | None) -> bool:
    """A candidate worth naming: its combined delta is significantly positive."""
    return delta is not None and significance(delta.delta, delta.stderr, floor) == "+"


def fmt_delta(d: Delta | None, digits: int = 3) -> str:
    """``+0.012±0.004`` (``n/a`` when unknown): how rys-sweep prints a delta."""
    if d is None or d.delta is None:
        return "n/a"
    return f"{d.delta:+.{digits}f}±{(d.stderr or 0.0):.{digits}f}"


def verdict(best_label: str | None, delta: Delta | None, floor: float | None) -> str:
    """The sentence a user reads first: which config is best, or that none beats the baseline.

    Only a candidate whose combined delta clears the noise (significance ``+``) is called best;
    otherwise the sentence says so plainly and names the top candidate as within noise."""
    if best_label is None:
        return "no candidate config has finished yet"
    d = fmt_delta(delta)
    sig = "?" if delta is None else significance(delta.delta, delta.stderr, floor)
    if sig == "+":
        return f"best config: {best_label} (combined delta {d}, beyond the noise floor)"
    if sig == "?":
        return (f"top config: {best_label} (combined delta {d}); its significance is unknown "
                f"(no noise floor and no stderr)")
    if sig == "-":
        return (f"no config beats the baseline; even the top one, {best_label}, is at combined "
                f"delta {d}, significantly worse than the baseline")
    return (f"no config beats the baseline beyond the noise floor; the top one, {best_label}, "
            f"is at combined delta {d}, within noise")


def noise_note(floor: Mapping[str, float]) -> str | None:
    """What a zero noise floor means (it reads like a bug otherwise), or None."""
    if floor and all(v == 0 for v in floor.values()):
        return ("the noise floor is 0: the identity control reproduced the baseline exactly, so "
                "rewriting (or re-serving) the model changed nothing measurable; each config's "
                "own paired stderr is then the guard (a delta must exceed 2 stderr)")
    return None


# =========================================================================== files


def results_paths(results: str | os.PathLike) -> dict[str, Path]:
    """The results file and its companions: items sidecar, logs dir, summary, plots dir."""
    p = Path(results)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return {
        "results": p,
        "items": p.with_name(stem + ".items.jsonl"),
        "logs": p.with_name(stem + ".logs"),
        "summary": p.with_name(stem + ".summary.json"),
        "study": p.with_name(stem + ".study.db"),
        "plots": p.with_name(stem + ".plots"),
    }


@dataclass
class JsonlFile:
    """What a JSONL file held: its objects, the numbers of lines that were not objects, and
    whether the last line was cut off (an interrupted write)."""

    path: Path
    objects: list[dict] = field(default_factory=list)
    line_numbers: list[int] = field(default_factory=list)  # of each object, 1-based
    bad_lines: list[int] = field(default_factory=list)
    truncated: bool = False


def read_jsonl(path: str | os.PathLike, repair: bool = False, warn: bool = True) -> JsonlFile:
    """All complete JSON objects of a file, one warning per line that is not one (naming it).

    A cut-off last line (no newline, not valid JSON: a kill during a write) is ignored with one
    warning; with ``repair`` it is cut off the file so the next append starts on a fresh line
    (complete lines are never touched). A last line that parses but lacks its newline is kept and,
    with ``repair``, the newline added. A missing file reads as empty. ``warn=False`` for a file
    already read (and warned about) once.
    """
    say = log.warning if warn else log.debug
    p = Path(path)
    out = JsonlFile(p)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        return out
    end = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    for n, line in enumerate(data[:end].split(b"\n")[:-1], 1):
        if not line.strip():
            continue
        obj = _json_object(line)
        if obj is None:
            out.bad_lines.append(n)
            say("%s line %d is not a JSON object; skipped", p, n)
        else:
            out.objects.append(obj)
            out.line_numbers.append(n)
    tail = data[end:]
    last = data[:end].count(b"\n") + 1
    if tail.strip():
        obj = _json_object(tail)
        if obj is None:
            out.truncated = True
            say("%s: ignoring the cut-off last line %d (%d bytes, from an interrupted write)%s",
                p, last, len(tail), "; removed it" if repair else "")
            if repair:
                _truncate(p, end)
        else:
            out.objects.append(obj)
            out.line_numbers.append(last)
            if repair:
                with open(p, "ab") as f:
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())
    elif tail and repair:  # only whitespace after the last newline
        _truncate(p, end)
    return out


def _json_object(line: bytes) -> dict | None:
    try:
        obj = json.loads(line)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def _truncate(p: Path, size: int) -> None:
    with open(p, "r+b") as f:
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: str | os.PathLike, obj: Mapping[str, Any]) -> None:
    """Append one line, flushed and fsync'd; on failure (disk full) cut back what was written,
    so the file never keeps half a line."""
    line = (json.dumps(obj, separators=(", ", ": "), allow_nan=False) + "\n").encode()
    with open(path, "ab") as f:
        start = f.tell()
        try:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        except BaseException:
            with contextlib.suppress(OSError):
                f.truncate(start)
            raise


def repair_tail(path: str | os.PathLike) -> bool:
    """Cut a partial last line off a JSONL file without reading all of it (the items sidecar can
    be large). Returns True when something was changed."""
    p = Path(path)
    try:
        size = p.stat().st_size
    except FileNotFoundError:
        return False
    if size == 0:
        return False
    with open(p, "r+b") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        pos, chunk, cut = size, 1 << 16, 0
        while pos > 0:  # find the last newline, scanning backwards
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            k = buf.rfind(b"\n")
            if k >= 0:
                cut = start + k + 1
                break
            pos = start
        f.seek(cut)
        tail = f.read()
        if _json_object(tail) is None:
            log.warning("%s: removing a cut-off last line (%d bytes)", p, len(tail))
            f.truncate(cut)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return True


@dataclass
class RecordsFile:
    """A results file read as records: the valid ones in file order, the objects that are not
    sweep records (another format), and what could not be read."""

    path: Path
    records: list[SweepRecord]
    others: list[dict]
    bad_lines: list[int]
    truncated: bool


def read_records(path: str | os.PathLike, repair: bool = False, warn: bool = True) -> RecordsFile:
    """Parse a results file; an invalid record is a bad line (warned about once, by number)."""
    raw = read_jsonl(path, repair=repair, warn=warn)
    recs: list[SweepRecord] = []
    others: list[dict] = []
    bad = list(raw.bad_lines)
    for n, obj in zip(raw.line_numbers, raw.objects):
        if not is_record(obj):
            others.append(obj)
            continue
        try:
            recs.append(SweepRecord.from_json(obj))
        except RecordError as exc:
            bad.append(n)
            (log.warning if warn else log.debug)(
                "%s line %d is not a valid sweep record (%s); skipped", raw.path, n, exc)
    return RecordsFile(raw.path, recs, others, sorted(bad), raw.truncated)


def latest_by_key(records: Iterable[SweepRecord]) -> dict[str, SweepRecord]:
    """The last record per key wins (a retried error is superseded by its rerun), in the order
    the winners were written."""
    out: dict[str, SweepRecord] = {}
    for r in records:
        out.pop(r.key, None)
        out[r.key] = r
    return out


def items_line(record: SweepRecord, items: Mapping[str, list[dict]]) -> dict:
    """The sidecar line written (just before) each record: its per-item results."""
    return {"key": record.key, "path": record.path, "kind": str(record.kind),
            "probes": {name: list(v) for name, v in items.items()}}


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A sweep summary file as an object (empty when absent; unreadable: one warning, empty)."""
    try:
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        log.warning("%s: unreadable summary (%s); noise floor taken from the identity record",
                    path, exc)
        return {}
    return obj if isinstance(obj, dict) else {}


def summary_noise(summary: Mapping[str, Any]) -> dict[str, float]:
    """The ``noise_floor`` object of a sweep summary (empty when absent or malformed)."""
    nf = summary.get("noise_floor")
    if not isinstance(nf, dict):
        return {}
    return {str(k): abs(float(v)) for k, v in nf.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def record_fields() -> dict[str, list[str]]:
    """Field names per JSON object of the schema (docs/records.md's table is checked against
    these)."""
    return {cls.__name__: [f.name for f in dataclasses.fields(cls)]
            for cls in (SweepRecord, ProbeScore, Delta, Timings, ServerInfo, ModelInfo, Settings,
                        ConfirmRef, SearchInfo)}
