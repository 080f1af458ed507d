"""rys-sweep: plan layer-path configs, then rewrite / serve / probe / record each one, resumably.

The sweep is plan-then-execute: every config is plain data (`Config`) built by pure planner
functions before anything runs, so ``--dry-run`` prints exactly what would run and a rerun can skip
what is already recorded. Execution is one config at a time: rewrite the GGUF into a tmpfs dir,
start llama-server on it (``llama_server.LlamaServer``), run the probe suite over HTTP, append one
JSON line to the results file (flushed + fsync'd), stop the server, delete the file.

Records follow README.md, "Results JSONL schema" (``rys.sweep/1``). The first two configs are always
the baseline (the original file, no surgery) and the identity control (path 0..N-1 through the
surgery): their difference plus the probes' standard errors is the noise floor every other delta
should be read against.

Layout of this module: pure core (configs, planners, halving, keys, scores, records, JSONL
repair), then the I/O edge (results store, temp-file hygiene, the runner), then the CLI.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import errno
import hashlib
import json
import logging
import math
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Iterator, Mapping, Sequence, TypeVar

SCHEMA = "rys.sweep/1"
SUMMARY_SCHEMA = "rys.sweep.summary/1"

log = logging.getLogger("rys.sweep")

KINDS = ("baseline", "identity", "block", "grid", "ablate", "custom", "refine", "confirm")
BLOCK_KINDS = ("block", "grid", "refine")
DEFAULT_BLOCK_SIZES = (3, 4, 5)
DEFAULT_PARALLEL = 4
DEFAULT_CTX_PER_SLOT = 4096
EXIT_BAD_ARGS = 2
EXIT_INTERRUPTED = 130


class SweepError(RuntimeError):
    """A problem that stops the sweep with one clear line (bad input: exit 2)."""


class PlanError(SweepError):
    """Plan options that cannot produce a valid plan for this model."""


# =========================================================================== configs and planning


@dataclass(frozen=True)
class Config:
    """One thing to measure: a layer path plus what it means.

    ``block`` is ``(i, j, times)`` for block/grid/refine configs (layers i..j-1 run times+1 times,
    j exclusive); ``skip`` the removed layer for ablations. ``of_kind`` is set on confirm configs
    (the kind of the dev config being rescored). The baseline (and its confirm rescore) runs the
    original file without surgery; everything else goes through gguf_surgery.
    """

    path: tuple[int, ...]
    kind: str
    block: tuple[int, int, int] | None = None
    skip: int | None = None
    label: str = ""
    of_kind: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown config kind {self.kind!r}")
        object.__setattr__(self, "path", tuple(int(x) for x in self.path))

    @property
    def surgery(self) -> bool:
        """False for the original file: the baseline and the baseline's confirm rescore."""
        return not (self.kind == "baseline" or self.of_kind == "baseline")

    @property
    def spec(self) -> str:
        import layer_path

        return layer_path.format(self.path)

    def block_dict(self) -> dict | None:
        if self.block is not None:
            i, j, times = self.block
            return {"i": i, "j": j, "times": times}
        if self.skip is not None:
            return {"skip": self.skip}
        return None

    def describe(self) -> str:
        """Short human label: ``(4,7)x2``, ``-6``, ``baseline``, or the label/path."""
        base = self.of_kind or self.kind
        if base in ("baseline", "identity"):
            text = base
        elif self.block is not None:
            i, j, times = self.block
            text = f"({i},{j})" + (f"x{times + 1}" if times != 1 else "")
        elif self.skip is not None:
            text = f"skip {self.skip}"
        else:
            text = self.label or self.spec
        return f"confirm {text}" if self.kind == "confirm" else text


def baseline_config(n_layers: int) -> Config:
    import layer_path

    return Config(tuple(layer_path.identity(n_layers)), "baseline", label="baseline")


def identity_config(n_layers: int) -> Config:
    import layer_path

    return Config(tuple(layer_path.identity(n_layers)), "identity", label="identity")


def confirm_config(cfg: Config) -> Config:
    """The held-out rescore of a dev config (same path, kind "confirm")."""
    return dataclasses.replace(cfg, kind="confirm", of_kind=cfg.kind)


def _block_config(i: int, j: int, n_layers: int, times: int, kind: str) -> Config:
    import layer_path

    return Config(tuple(layer_path.duplicate(i, j, n_layers, times)), kind, block=(i, j, times))


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
            out.append(_block_config(i, i + size, n_layers, times, "block"))
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
                out.append(_block_config(i, j, n_layers, times, "grid"))
    return out


def plan_ablate(n_layers: int) -> list[Config]:
    """Skip one layer at a time."""
    import layer_path

    if n_layers < 2:
        raise PlanError("--ablate needs a model with at least 2 layers")
    return [Config(tuple(layer_path.ablate(k, n_layers)), "ablate", skip=k) for k in range(n_layers)]


def parse_paths_text(text: str, n_layers: int, source: str = "paths file") -> list[Config]:
    """One layer-path spec per line; ``#`` starts a comment; blank lines ignored.

    An optional label may follow the spec after whitespace+``#`` (it is the comment). Errors name
    the line number.
    """
    import layer_path

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
        out.append(Config(tuple(path), "custom", label=comment.strip()))
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
    ranked = sorted((c for c in scored if c[0].block is not None and c[0].kind in BLOCK_KINDS),
                    key=lambda cs: -cs[1])
    out: list[Config] = []
    for cfg, _ in ranked[:top_k]:
        i0, j0, t0 = cfg.block  # type: ignore[misc]
        t = t0 if times is None else times
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                i, j = i0 + di, j0 + dj
                if (di, dj) == (0, 0) and t == t0:
                    continue
                if not 0 <= i < j <= n_layers:
                    continue
                c = _block_config(i, j, n_layers, t, "refine")
                if c.path in seen:
                    continue
                seen.add(c.path)
                out.append(c)
    return out


def config_from_record(rec: Mapping[str, Any], n_layers: int) -> Config | None:
    """Rebuild the Config of a results record (None if it cannot be parsed)."""
    import layer_path

    try:
        path = tuple(layer_path.parse(str(rec["path"]), n_layers))
        kind = rec.get("kind", "custom")
        block = rec.get("block") or {}
        if "i" in block:
            return Config(path, kind, block=(int(block["i"]), int(block["j"]),
                                             int(block.get("times", 1))), label=rec.get("label") or "")
        if "skip" in block:
            return Config(path, kind, skip=int(block["skip"]), label=rec.get("label") or "")
        return Config(path, kind, label=rec.get("label") or "")
    except (KeyError, ValueError, TypeError):
        return None


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


def select_top(scores: Mapping[T, float], keep: int) -> list[T]:
    """The ``keep`` best by score (NaN last), ties broken by the mapping's order (plan order)."""
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
    evaluations: int  # config-item evaluations spent
    full_evaluations: int  # what a full pass costs
    runs: int  # config runs (server starts) spent

    @property
    def saved(self) -> int:
        return self.full_evaluations - self.evaluations


def successive_halving(configs: Sequence[T], score: Callable[[T, int], float], n_items: int,
                       eta: int = 3, min_items: int = 4, min_keep: int = 1) -> HalvingResult:
    """Score all configs on a slice, keep the best 1/eta, score those on more items, ... to all.

    ``score(config, n)`` returns the config's score on the first ``n`` items. Each rung only
    *adds* items to a surviving config (the sweep re-runs it on the extra items and merges), so
    the cost counted is the items scored, not the cumulative limit per rung.
    """
    rungs = halving_rungs(len(configs), n_items, eta, min_items, min_keep)
    alive: list[T] = list(configs)
    scored_items: dict[T, int] = {}
    evaluations = runs = 0
    survivors: list[list] = []
    for rung in rungs:
        alive = alive[: rung.keep]
        survivors.append(list(alive))
        scores: dict[T, float] = {}
        for c in alive:
            scores[c] = score(c, rung.limit)
            evaluations += rung.limit - scored_items.get(c, 0)
            scored_items[c] = rung.limit
            runs += 1
        alive = select_top(scores, len(scores))
    return HalvingResult(alive, rungs, survivors, evaluations, len(configs) * n_items, runs)


# =========================================================================== keys, scores, records


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Settings:
    """What, besides model and path, decides a measurement; part of every record.

    ``weights`` only affect the combined score, so they are not part of the key (changing them
    re-ranks, it does not re-run). ``probes`` maps probe name -> content hash.
    """

    split: str = "dev"
    limit: int | None = None
    mode: str = "auto"
    no_think: bool = False
    weights: Mapping[str, float] = field(default_factory=dict)
    probes: Mapping[str, str] = field(default_factory=dict)
    suite: str = ""

    def key_part(self) -> dict:
        return {"split": self.split, "limit": self.limit, "mode": self.mode,
                "no_think": self.no_think, "probes": dict(sorted(self.probes.items())),
                "suite": self.suite}

    def to_dict(self) -> dict:
        return {"split": self.split, "limit": self.limit, "mode": self.mode,
                "weights": dict(self.weights), "no_think": self.no_think,
                "probes": dict(self.probes), "suite": self.suite}


def config_key(fingerprint: str, cfg: Config, settings: Settings) -> str:
    """16 hex chars of sha256 over (model fingerprint, canonical path, probe hashes, settings).

    The baseline hashes the path as ``"original"`` (no surgery), so it never collides with the
    identity control; any other two configs with the same path share a key (measured once).
    """
    path = "original" if not cfg.surgery else cfg.spec
    payload = json.dumps([fingerprint, path, settings.key_part()], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


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


def combined_delta(deltas: Mapping[str, Mapping[str, float]],
                   weights: Mapping[str, float]) -> dict | None:
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
        if not entry or entry.get("delta") is None:
            return None
        d += w / total * entry["delta"]
        se = entry.get("stderr") or 0.0
        var += (w / total) ** 2 * se * se
    return {"delta": d, "stderr": math.sqrt(var)}


def noise_floor(identity_delta: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Per probe: ``max(|identity delta|, 2 * stderr)`` (the schema's definition)."""
    out = {}
    for name, entry in identity_delta.items():
        d = entry.get("delta")
        se = entry.get("stderr") or 0.0
        if d is not None:
            out[name] = max(abs(d), 2 * se)
    return out


def strip_items(probe_dict: Mapping[str, Any]) -> dict:
    """A ProbeResult dict without its per-item list (that goes to the sidecar)."""
    keep = ("score", "stderr", "n", "n_errors", "version", "hash", "split", "metrics",
            "mode", "chat", "n_truncated", "elapsed_s")
    out = {k: probe_dict.get(k) for k in keep}
    if out.get("metrics") is None:
        out["metrics"] = {}
    return out


def make_record(*, key: str, cfg: Config, status: str, error: str | None,
                probes: Mapping[str, Mapping[str, Any]], delta: Mapping[str, Mapping[str, float]],
                settings: Settings, timings: Mapping[str, float], server: Mapping[str, Any],
                model: Mapping[str, Any], started_at: str, ended_at: str,
                confirm_of: str | None = None, stage: str = "sweep") -> dict:
    """One results line (schema rys.sweep/1). Pure: everything measured is passed in."""
    scores = {name: p.get("score") for name, p in probes.items()}
    combined = combined_score(scores, settings.weights) if status == "ok" else None
    cdelta = combined_delta(delta, settings.weights) if (status == "ok" and delta) else None
    rec = {
        "schema": SCHEMA,
        "key": key,
        "path": cfg.spec,
        "kind": cfg.kind,
        "block": cfg.block_dict(),
        "n_layers": len(cfg.path),
        "status": status,
        "error": error,
        "probes": {name: strip_items(p) for name, p in probes.items()},
        "delta": {name: dict(d) for name, d in delta.items()},
        "combined": combined,
        "combined_delta": cdelta,
        "timings": {k: round(float(timings.get(k, 0.0)), 3)
                    for k in ("surgery_s", "load_s", "probe_s", "total_s")},
        "server": dict(server),
        "model": dict(model),
        "settings": settings.to_dict(),
        "started_at": started_at,
        "ended_at": ended_at,
        "label": cfg.label or None,
        "stage": stage,
        "confirm": ({"of": confirm_of, "kind": cfg.of_kind} if cfg.kind == "confirm" else None),
    }
    return rec


def fmt_delta(d: Mapping[str, float] | None, digits: int = 3) -> str:
    if not d or d.get("delta") is None:
        return "n/a"
    return f"{d['delta']:+.{digits}f}±{(d.get('stderr') or 0.0):.{digits}f}"


def record_line(rec: Mapping[str, Any], index: int | None = None, total: int | None = None) -> str:
    """The one line printed per finished config."""
    head = f"[{index}/{total}] " if index is not None and total else ""
    what = f"{rec.get('kind')} {rec.get('path')}"
    if rec.get("block") and "i" in (rec.get("block") or {}):
        b = rec["block"]
        what = f"{rec.get('kind')} ({b['i']},{b['j']})" + (f"x{b['times'] + 1}" if b["times"] != 1 else "")
    elif rec.get("block") and "skip" in (rec.get("block") or {}):
        what = f"ablate -{rec['block']['skip']}"
    secs = (rec.get("timings") or {}).get("total_s", 0.0)
    if rec.get("status") != "ok":
        err = (rec.get("error") or "").splitlines()[0][:160] if rec.get("error") else ""
        return f"{head}{what}  ERROR {err}  {secs:.1f}s"
    parts = []
    if rec.get("delta"):
        parts += [f"{name} {fmt_delta(d)}" for name, d in rec["delta"].items()]
        parts.append(f"combined {fmt_delta(rec.get('combined_delta'))}")
    else:
        parts += [f"{name} {p.get('score'):.3f}" for name, p in rec.get("probes", {}).items()
                  if p.get("score") is not None]
        if rec.get("combined") is not None:
            parts.append(f"combined {rec['combined']:.3f}")
    return f"{head}{what}  " + "  ".join(parts) + f"  {secs:.1f}s"


# =========================================================================== JSONL files


def read_jsonl(path: str | os.PathLike, repair: bool = True) -> list[dict]:
    """All complete JSON lines of a file; a truncated last line is dropped with a warning.

    With ``repair``, that partial last line is cut off the file (truncate to the end of the last
    complete line) so the next append starts on a fresh line; complete lines are never touched.
    A last line that parses but lacks its newline (killed between the two) is kept and the newline
    added. Unparsable lines in the middle are skipped with a warning and left in place.
    """
    p = Path(path)
    if not p.exists():
        return []
    data = p.read_bytes()
    out: list[dict] = []
    end = data.rfind(b"\n") + 1  # bytes up to and including the last newline
    for n, line in enumerate(data[:end].splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            log.warning("%s line %d is not valid JSON; skipped", p, n)
            continue
        if isinstance(obj, dict):
            out.append(obj)
    tail = data[end:]
    if tail.strip():
        try:
            obj = json.loads(tail)
            if not isinstance(obj, dict):
                raise ValueError
        except ValueError:
            log.warning("%s: ignoring a truncated last line (%d bytes, from an interrupted "
                        "write)%s", p, len(tail), "; removed it" if repair else "")
            if repair:
                with open(p, "r+b") as f:
                    f.truncate(end)
                    f.flush()
                    os.fsync(f.fileno())
        else:
            out.append(obj)
            if repair:
                with open(p, "ab") as f:
                    f.write(b"\n")
                    f.flush()
                    os.fsync(f.fileno())
    elif tail and repair:  # only whitespace after the last newline
        with open(p, "r+b") as f:
            f.truncate(end)
    return out


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


def latest_by_key(records: Iterable[Mapping[str, Any]]) -> dict[str, dict]:
    """The last record per key wins (a retried error is superseded by its rerun)."""
    out: dict[str, dict] = {}
    for r in records:
        k = r.get("key")
        if isinstance(k, str):
            out.pop(k, None)
            out[k] = dict(r)
    return out


def check_compatible(records: Iterable[Mapping[str, Any]], fingerprint: str,
                     probes: Mapping[str, str]) -> str | None:
    """Why an existing results file belongs to another model or probe set (None if it doesn't).

    Only records of this schema count; a probe set differs when any probe name present in both
    has a different hash, or the names differ.
    """
    for r in records:
        if r.get("schema") != SCHEMA:
            continue
        fp = (r.get("model") or {}).get("fingerprint")
        if fp and fp != fingerprint:
            name = (r.get("model") or {}).get("file", "?")
            return f"it holds results for another model ({name}, fingerprint {fp[:12]})"
        theirs = (r.get("settings") or {}).get("probes")
        if isinstance(theirs, dict) and theirs:
            if set(theirs) != set(probes):
                return (f"it was made with probes {','.join(sorted(theirs))}, not "
                        f"{','.join(sorted(probes))}")
            changed = [n for n in theirs if theirs[n] != probes[n]]
            if changed:
                return f"probe {changed[0]!r} changed since (content hash differs)"
    return None


def results_paths(results: str | os.PathLike) -> dict[str, Path]:
    """The results file and its companions: items sidecar, logs dir, summary."""
    p = Path(results)
    stem = p.name[: -len(".jsonl")] if p.name.endswith(".jsonl") else p.name
    return {
        "results": p,
        "items": p.with_name(stem + ".items.jsonl"),
        "logs": p.with_name(stem + ".logs"),
        "summary": p.with_name(stem + ".summary.json"),
    }


def repair_tail(path: str | os.PathLike) -> bool:
    """Cut a partial last line off a JSONL file without reading all of it (the items sidecar can
    be large). Returns True when something was cut."""
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
        pos, chunk = size, 1 << 16
        while pos > 0:  # find the last newline, scanning backwards
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            k = buf.rfind(b"\n")
            if k >= 0:
                cut = start + k + 1
                break
            pos = start
        else:
            cut = 0
        f.seek(cut)
        tail = f.read()
        try:
            json.loads(tail)
        except ValueError:
            log.warning("%s: removing a truncated last line (%d bytes)", p, len(tail))
            f.truncate(cut)
        else:
            f.seek(0, os.SEEK_END)
            f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())
    return True


# =========================================================================== temp-file hygiene

def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temp_files(tmp_dir: str | os.PathLike) -> list[Path]:
    """Rewritten models (or partial writes) in ``tmp_dir`` left by a sweep that died: named like
    gguf_surgery's temporary files, owned by us, and the pid in the name is not a live process
    (nor us)."""
    import gguf_surgery

    out = []
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return []
    for e in entries:
        pid = gguf_surgery.temp_owner_pid(e.name)
        if pid is None or not e.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if e.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if pid != os.getpid() and not pid_alive(pid):
                out.append(Path(e.path))
    return sorted(out)


def clean_stale_temp(tmp_dir: str | os.PathLike) -> list[Path]:
    removed = []
    for p in stale_temp_files(tmp_dir):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
            log.warning("removed stale temp model %s (its sweep is gone)", p)
    return removed


# =========================================================================== signals


class SignalGuard:
    """Turn SIGINT/SIGTERM/SIGHUP into one KeyboardInterrupt, so every ``with``/``finally``
    (server stop, temp model delete) runs. Later signals during cleanup are ignored; inside
    ``deferred()`` (appending a record) the interrupt waits until the block ends."""

    SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")

    def __init__(self) -> None:
        self.received: int | None = None
        self._raised = False
        self._defer = 0
        self._old: dict[int, Any] = {}
        self.on_signal: Callable[[], None] | None = None  # e.g. kill the current server

    def _handler(self, signum: int, frame: Any) -> None:
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
        import threading

        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name, None)
                if sig is not None:
                    self._old[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._defer += 1
        try:
            yield
        finally:
            self._defer -= 1
            if not self._defer and self.received is not None and not self._raised:
                self._raised = True
                raise KeyboardInterrupt(signal.Signals(self.received).name)


def _terminate_group(server: Any) -> None:
    """SIGKILL a LlamaServer's process group now (from a signal handler; stop() reaps it later).

    Not SIGTERM: llama-server shutting down gracefully leaves in-flight HTTP requests hanging
    until their timeout (seen here), so the sweep would not exit promptly."""
    proc = getattr(server, "proc", None)
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)


# =========================================================================== results store


class ResultsStore:
    """The results JSONL plus its companions; appends are atomic per line (see append_jsonl)."""

    def __init__(self, results: str | os.PathLike):
        paths = results_paths(results)
        self.path: Path = paths["results"]
        self.items_path: Path = paths["items"]
        self.logs_dir: Path = paths["logs"]
        self.summary_path: Path = paths["summary"]
        self._items_cache: dict[str, dict[str, list[dict]]] = {}

    def check_writable(self) -> None:
        """Fail now (SweepError) rather than after the first config if we cannot write here."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.is_dir():
                raise SweepError(f"results path {self.path} is a directory")
            with open(self.path, "ab"):
                pass
            with open(self.items_path, "ab"):
                pass
            self.logs_dir.mkdir(exist_ok=True)
        except OSError as exc:
            raise SweepError(f"cannot write results to {self.path}: {exc.strerror or exc}") from None

    def load(self) -> list[dict]:
        records = read_jsonl(self.path, repair=True)
        repair_tail(self.items_path)
        return records

    def append(self, record: Mapping[str, Any], items: Mapping[str, list[dict]]) -> None:
        """Sidecar line first, then the record: a record on disk always has its items."""
        append_jsonl(self.items_path, {"key": record["key"], "path": record["path"],
                                       "kind": record["kind"], "probes": dict(items)})
        append_jsonl(self.path, record)
        self._items_cache[record["key"]] = dict(items)

    def items_for(self, key: str) -> dict[str, list[dict]] | None:
        """Per-item results of a record (the last sidecar line with that key)."""
        if key in self._items_cache:
            return self._items_cache[key]
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
        import fcntl

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

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        tmp = self.summary_path.with_name(self.summary_path.name + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n")
        os.replace(tmp, self.summary_path)


# =========================================================================== probes adapter


@dataclass
class Suite:
    """The probe suite resolved once per sweep: probe objects, item counts, hashes."""

    entries: list  # probes.SuiteEntry
    probes: dict  # name -> probes.Probe
    counts: dict[str, int]  # name -> items per config (after --limit)

    @classmethod
    def resolve(cls, spec: str | None, split: str, limit: int | None) -> "Suite":
        import probes as P

        entries = P.parse_suite(spec) if spec else P.default_suite()
        objs: dict[str, Any] = {}
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


def _item_from_dict(d: Mapping[str, Any]) -> Any:
    import probes as P

    names = {f.name for f in dataclasses.fields(P.ItemResult)}
    return P.ItemResult(**{k: v for k, v in d.items() if k in names})


def merge_probe_results(probe: Any, split: str, parts: Sequence[Any]) -> Any:
    """One ProbeResult over the items of several runs of the same probe (halving rungs).

    Aggregation is the probes package's own (mean, stderr, metrics) so merged and single-run
    results are computed identically.
    """
    import probes as P

    items = [it for part in parts for it in part.items]
    mode, chat = parts[-1].mode, parts[-1].chat
    elapsed = sum(p.elapsed_s for p in parts)
    return P.aggregate(probe, split, mode, chat, items, elapsed)


def probe_result_from_dicts(probe: Any, split: str, rec_probe: Mapping[str, Any],
                            items: Sequence[Mapping[str, Any]]) -> Any:
    """Rebuild a ProbeResult from a record's probe entry and its sidecar items (for resume)."""
    import probes as P

    objs = [_item_from_dict(d) for d in items]
    return P.aggregate(probe, split, rec_probe.get("mode") or "generate",
                       bool(rec_probe.get("chat")), objs, float(rec_probe.get("elapsed_s") or 0))


# =========================================================================== the runner


class AllItemsFailed(SweepError):
    """Every request of a probe failed while the server stayed up (timeouts, HTTP errors)."""


class DiskFull(SweepError):
    """The tmp dir cannot hold the next rewritten model: stop before writing anything."""


@dataclass
class ServerOptions:
    binary: str
    extra_args: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    parallel: int = DEFAULT_PARALLEL
    ctx_size: int | None = None
    load_timeout: float = 600.0
    stop_grace: float = 10.0


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
    server: ServerOptions | None = None
    tmp_dir: Path | None = None
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


@dataclass
class Outcome:
    record: dict
    results: dict  # name -> ProbeResult (empty for errors / resumed records without items)
    ran: bool  # False when the record came from the results file


class Sweep:
    """Executes a plan. One rewritten model and one server exist at a time."""

    def __init__(self, opts: RunOptions, source: Any, suite: Suite, server_opts: ServerOptions):
        import gguf_surgery

        self.o = opts
        self.src = source
        self.suite = suite
        self.srv = server_opts
        self.store = ResultsStore(opts.results)
        self.tmp_dir = Path(opts.tmp_dir) if opts.tmp_dir else gguf_surgery.default_tmp_dir()
        self.weights = parse_weights(opts.weights, suite.names)
        self.chat = source.has_chat_template if opts.chat is None else opts.chat
        self.model_info = {
            "file": Path(source.paths[0]).name, "size": int(source.file_size),
            "arch": source.arch, "n_layers": int(source.n_layers),
            "fingerprint": source.fingerprint,
        }
        self.records: dict[str, dict] = {}
        self.guard = SignalGuard()
        self.bar: Any = None
        self.started_at = utc_now()
        self.t0 = time.monotonic()
        self.counts = {"planned": 0, "ran": 0, "resumed": 0, "ok": 0, "error": 0}
        self.timing_sums = {"surgery_s": 0.0, "load_s": 0.0, "probe_s": 0.0, "total_s": 0.0}
        # Mean item latency per probe in the last config: how the next config spreads its slots
        # over the probes (probes.allocate_streams); configs of one sweep cost about the same.
        self.item_cost: dict[str, float] = {}
        self.full: dict[str, tuple[Config, dict]] = {}  # key -> (config, record) of full dev runs
        self.halving_stats: dict | None = None
        self.confirm_rows: list[dict] | None = None
        self.baseline: Outcome | None = None
        self.identity: Outcome | None = None
        self.test_baseline: Outcome | None = None
        self.interrupted = False
        self._base_results: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------ settings / keys
    def settings(self, split: str | None = None, limit: int | None = None) -> Settings:
        split = split or self.o.split
        return Settings(split=split, limit=limit if limit is not None else self.o.limit,
                        mode=self.o.mode, no_think=self.o.no_think, weights=dict(self.weights),
                        probes=self.suite.hashes, suite=self.suite.spec())

    def key(self, cfg: Config, settings: Settings) -> str:
        return config_key(self.src.fingerprint, cfg, settings)

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

    def _grow(self, n: int) -> None:
        self.counts["planned"] += n
        if self.bar is not None:
            self.bar.total = (self.bar.total or 0) + n
            self.bar.refresh()

    # ------------------------------------------------------------------ one config
    def ensure(self, cfg: Config, settings: Settings, *, stage: str = "sweep",
               slices: Mapping[str, tuple[int, int]] | None = None,
               prior: Mapping[str, Any] | None = None, confirm_of: str | None = None) -> Outcome:
        """The record for (cfg, settings): from the results file if done, else measured now."""
        key = self.key(cfg, settings)
        old = self.records.get(key)
        if old is not None and not (old.get("status") != "ok" and self.o.retry_errors):
            self.counts["resumed"] += 1
            self._progress()
            return Outcome(old, {}, ran=False)
        out = self.measure(cfg, settings, key, stage=stage, slices=slices, prior=prior,
                           confirm_of=confirm_of)
        self._progress()
        return out

    def _baseline_items(self, split: str) -> dict[str, Any]:
        """The baseline's ProbeResults for a split (for paired deltas), from memory or sidecar."""
        if split in self._base_results:
            return self._base_results[split]
        base = self.baseline if split == self.o.split else self.test_baseline
        if base is None or base.record.get("status") != "ok":
            return {}
        res = dict(base.results)
        if not res:
            res = self._load_results(base.record)
        self._base_results[split] = res
        return res

    def _load_results(self, rec: Mapping[str, Any]) -> dict[str, Any]:
        items = self.store.items_for(rec["key"]) or {}
        out = {}
        split = (rec.get("settings") or {}).get("split", self.o.split)
        for name, p in (rec.get("probes") or {}).items():
            if name in items and name in self.suite.probes:
                out[name] = probe_result_from_dicts(self.suite.probes[name], split, p, items[name])
        return out

    def measure(self, cfg: Config, settings: Settings, key: str, *, stage: str,
                slices: Mapping[str, tuple[int, int]] | None, prior: Mapping[str, Any] | None,
                confirm_of: str | None) -> Outcome:
        import gguf_surgery
        import llama_server as LS
        import probes as P

        started = utc_now()
        t0 = time.monotonic()
        timings = {"surgery_s": 0.0, "load_s": 0.0, "probe_s": 0.0, "total_s": 0.0}
        log_path = self.store.logs_dir / f"{key}.log"
        status, error = "ok", None
        results: dict[str, Any] = {}
        server_info: dict[str, Any] = {"args": [], "version": LS.server_version(self.srv.binary),
                                       "log": os.path.relpath(log_path, self.store.path.parent)}
        with contextlib.ExitStack() as stack:
            try:
                if cfg.surgery:
                    need = self.src.estimate_size(list(cfg.path))
                    free = shutil.disk_usage(self.tmp_dir).free
                    if free < need + (16 << 20):
                        raise DiskFull(
                            f"not enough space in {self.tmp_dir} for the next model ({cfg.describe()}):"
                            f" need {need / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free; free some "
                            f"space or pass --tmp-dir on a bigger disk")
                    ts = time.monotonic()
                    model_file = stack.enter_context(
                        gguf_surgery.temporary_rewrite(self.src, list(cfg.path), self.tmp_dir))
                    timings["surgery_s"] = time.monotonic() - ts
                else:
                    model_file = Path(self.src.paths[0])
                server = LS.LlamaServer(
                    model_file, binary=self.srv.binary, extra_args=list(self.srv.extra_args),
                    host=self.srv.host, parallel=self.srv.parallel, ctx_size=self.srv.ctx_size,
                    log_path=log_path, ready_timeout=self.srv.load_timeout,
                    stop_grace=self.srv.stop_grace)
                stack.callback(self._stop, server)  # LIFO: the server stops before the file goes
                self.guard.on_signal = lambda: _terminate_group(server)
                stack.callback(setattr, self.guard, "on_signal", None)
                try:
                    server.start()
                finally:
                    server_info["args"] = server.command[1:] if server.port else []
                timings["load_s"] = server.load_s
                tp = time.monotonic()
                results = self._probe(server, cfg, settings, slices, prior)
                timings["probe_s"] = time.monotonic() - tp
                # a server that died mid-probe leaves item errors behind: say why, loudly
                failed = any(r.n_errors for r in results.values())
                server.check_alive(grace=3.0 if failed else 0.0)
                for name, r in results.items():
                    if r.n == 0:
                        first = next((it.error for it in r.items if it.error), "no items")
                        raise AllItemsFailed(f"probe {name}: all {r.n_errors} requests failed "
                                             f"(first: {first})")
            except (DiskFull, KeyboardInterrupt):
                raise
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    raise DiskFull(f"disk full while writing the model for {cfg.describe()} "
                                   f"into {self.tmp_dir}: {exc}") from None
                status, error = "error", f"{type(exc).__name__}: {exc}"
            except LS.ServerExited as exc:
                status = "error"
                error = (f"llama-server exited with code {exc.returncode}"
                         f"{' during probes' if timings['load_s'] else ' while loading'}; "
                         f"log tail: {exc.log_tail}")
            except (LS.ServerError, P.ProbeError, gguf_surgery.SurgeryError,
                    AllItemsFailed) as exc:
                status, error = "error", f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a bug or an unexpected reply: record it, keep sweeping
                log.debug("config %s failed", cfg.describe(), exc_info=True)
                status, error = "error", f"{type(exc).__name__}: {exc}"
        timings["total_s"] = time.monotonic() - t0
        if status != "ok":
            results = {}
        delta: dict[str, dict] = {}
        if status == "ok" and cfg.kind != "baseline" and cfg.of_kind != "baseline":
            base = self._baseline_items(settings.split)
            for name, res in results.items():
                if name in base:
                    d, se = P.paired_delta(base[name], res)
                    delta[name] = {"delta": d, "stderr": se}
        rec = make_record(
            key=key, cfg=cfg, status=status, error=error,
            probes={n: r.to_dict(items=False) for n, r in results.items()}, delta=delta,
            settings=settings, timings=timings, server=server_info, model=self.model_info,
            started_at=started, ended_at=utc_now(), confirm_of=confirm_of, stage=stage)
        items = {n: [it.to_dict() for it in r.items] for n, r in results.items()}
        with self.guard.deferred():
            try:
                self.store.append(rec, items)
            except OSError as exc:
                raise SweepError(f"cannot append to {self.store.path}: {exc.strerror or exc} "
                                 f"(the file still ends with a complete line)") from None
            self.records[key] = rec
        self.counts["ran"] += 1
        self.counts[status] += 1
        for k in self.timing_sums:
            self.timing_sums[k] += timings[k]
        self.say(record_line(rec, self.counts["ran"] + self.counts["resumed"],
                             self.counts["planned"]))
        return Outcome(rec, results, ran=True)

    def _stop(self, server: Any) -> None:
        """Stop a server without letting a signal cut the stop short (it is raised after)."""
        with self.guard.deferred():
            server.stop()

    def _probe(self, server: Any, cfg: Config, settings: Settings,
               slices: Mapping[str, tuple[int, int]] | None,
               prior: Mapping[str, Any] | None) -> dict[str, Any]:
        """Run every probe (or only each probe's slice of new items, merged with ``prior``)."""
        import probes as P

        jobs = {}
        for name, probe in self.suite.probes.items():
            offset, n = (0, self.suite.counts[name]) if slices is None else slices[name]
            if n > 0:
                jobs[name] = P.ProbeJob.select(probe, split=settings.split, n=n, offset=offset,
                                               mode=self.o.mode)
        # Probes side by side, each server slot pinned to one worker (see probes.run_jobs).
        parts = P.run_jobs(server.url, jobs, slots=server.total_slots, chat=self.chat,
                           no_think=self.o.no_think, timeout=self.o.item_timeout,
                           costs=self.item_cost)
        self.item_cost.update(P.measured_costs(parts))
        out: dict[str, Any] = {}
        for name, probe in self.suite.probes.items():
            part, before = parts.get(name), (prior or {}).get(name)
            if before is not None and part is not None:
                out[name] = merge_probe_results(probe, settings.split, [before, part])
            else:
                out[name] = part if part is not None else before
            if out[name] is None:
                raise SweepError(f"probe {name}: no items to run")
            if part is not None and part.n == 0 and part.n_errors:
                server.check_alive(grace=3.0)  # every request failed: a dead server explains it
        return out

    # ------------------------------------------------------------------ ranking
    def rank_value(self, rec: Mapping[str, Any]) -> float | None:
        """Combined delta under the current weights (records may predate a --weights change)."""
        if rec.get("status") != "ok" or not rec.get("delta"):
            return None
        cd = combined_delta(rec["delta"], self.weights)
        return None if cd is None or cd["delta"] is None else cd["delta"]

    def combined_now(self, rec: Mapping[str, Any]) -> float | None:
        if rec.get("status") != "ok":
            return None
        return combined_score({n: p.get("score") for n, p in (rec.get("probes") or {}).items()},
                              self.weights)

    def ranked(self) -> list[tuple[Config, dict]]:
        rows = [(c, r) for c, r in self.full.values()
                if r.get("status") == "ok" and c.kind not in ("baseline", "identity")]
        return sorted(rows, key=lambda cr: (self.rank_value(cr[1]) is None,
                                            -(self.rank_value(cr[1]) or 0.0)))

    def _note_full(self, cfg: Config, out: Outcome) -> None:
        self.full[out.record["key"]] = (cfg, out.record)

    # ------------------------------------------------------------------ flow
    def run(self) -> int:
        from tqdm import tqdm

        self.store.check_writable()
        existing = self.store.load()
        if existing and not self.o.force:
            why = check_compatible(existing, self.src.fingerprint, self.suite.hashes)
            if why:
                raise SweepError(f"{self.store.path} cannot be resumed: {why}; write to another "
                                 f"file with -o, or pass --force to append anyway")
        self.records = latest_by_key(existing)
        self._adopt_existing()
        clean_stale_temp(self.tmp_dir)
        plan = dedupe(self.o.plan)
        with self.store.locked(), self.guard:
            # no bar when stderr is not a terminal (tqdm's None), none at all with --quiet
            self.bar = tqdm(total=0, desc="rys-sweep", unit="config", file=sys.stderr,
                            disable=True if self.o.quiet else None, dynamic_ncols=True)
            try:
                self._run_all(plan)
            except KeyboardInterrupt:
                self.interrupted = True
            finally:
                self.bar.close()
                self.bar = None
            summary = self.summary()
            with contextlib.suppress(OSError):
                self.store.write_summary(summary)
            self.report(summary)
        return EXIT_INTERRUPTED if self.interrupted else 0

    def _adopt_existing(self) -> None:
        """Full dev records already in the file under the current settings join the leaderboard
        (and seed --refine), whichever plan produced them."""
        want = self.settings().key_part()
        for rec in self.records.values():
            st = rec.get("settings") or {}
            if (rec.get("stage", "sweep") != "sweep" or rec.get("kind") == "confirm"
                    or (rec.get("model") or {}).get("fingerprint") != self.src.fingerprint):
                continue
            mine = {k: st.get(k) for k in want}
            if mine != want:
                continue
            cfg = config_from_record(rec, self.src.n_layers)
            if cfg is not None:
                self.full[rec["key"]] = (cfg, rec)

    def _run_all(self, plan: list[Config]) -> None:
        n = self.src.n_layers
        halving = self.o.halving is not None and len(plan) > 1
        rungs = self._rungs(len(plan)) if halving else []
        self._grow(2 + (sum(r.keep for r in rungs) if halving else len(plan)))
        dev = self.settings()
        # the baseline and identity are essential: an old error record is always retried
        self.baseline = self._essential(baseline_config(n), dev)
        if self.baseline.record.get("status") != "ok":
            raise SweepError(f"the baseline (original model) failed, so nothing can be compared: "
                             f"{self.baseline.record.get('error')}")
        self._note_full(baseline_config(n), self.baseline)
        self.identity = self._essential(identity_config(n), dev)
        self._note_full(identity_config(n), self.identity)
        if self.identity.record.get("status") != "ok":
            log.warning("identity control failed (%s): no noise floor",
                        self.identity.record.get("error"))
        if halving:
            self._run_halving(plan, rungs)
        else:
            for cfg in plan:
                self._note_full(cfg, self.ensure(cfg, dev))
        if self.o.refine:
            self._run_refine(plan)
        if self.o.confirm:
            self._run_confirm()

    def _essential(self, cfg: Config, settings: Settings) -> Outcome:
        """Baseline/identity: an old error record is retried, and so is a record whose items
        are missing from the sidecar (deltas are paired over those items)."""
        key = self.key(cfg, settings)
        old = self.records.get(key)
        if old is not None:
            items = self.store.items_for(key) or {}
            if old.get("status") != "ok" or not set(self.suite.names) <= set(items):
                self.records.pop(key)
        return self.ensure(cfg, settings)

    # ------------------------------------------------------------------ halving
    def _rungs(self, n_configs: int) -> list[Rung]:
        return halving_rungs(n_configs, self.suite.max_items, int(self.o.halving or 3),
                             self.o.halving_min_items, min_keep=max(1, self.o.confirm))

    def _slices(self, limit: int, prev: int | None) -> dict[str, tuple[int, int]]:
        out = {}
        for name, count in self.suite.counts.items():
            cur = min(limit, count)
            start = 0 if prev is None else min(prev, count)
            out[name] = (start, cur - start)
        return out

    def _run_halving(self, plan: list[Config], rungs: list[Rung]) -> None:
        alive = list(plan)
        prior: dict[Config, tuple[int, dict[str, Any]]] = {}
        for r, rung in enumerate(rungs):
            last = r == len(rungs) - 1
            alive = alive[: rung.keep]
            settings = self.settings(limit=None if last else rung.limit)
            scores: dict[Config, float | None] = {}
            for cfg in alive:
                before = prior.get(cfg)
                slices = self._slices(rung.limit, before[0] if before else None)
                out = self.ensure(cfg, settings, stage="sweep" if last else "halving",
                                  slices=slices, prior=before[1] if before else None)
                if out.record.get("status") == "ok":
                    res = out.results or self._load_results(out.record)
                    if set(res) == set(self.suite.names):
                        prior[cfg] = (rung.limit, res)
                    else:
                        prior.pop(cfg, None)
                else:
                    prior.pop(cfg, None)
                scores[cfg] = self.combined_now(out.record)
                if last:
                    self._note_full(cfg, out)
            if not last:
                kept = rungs[r + 1].keep
                self.say(f"halving rung {r + 1}/{len(rungs)}: {len(alive)} configs on "
                         f"{rung.limit} items per probe; keeping the best {kept}")
            alive = select_top(scores, len(scores))
        self.halving_stats = self._halving_cost(len(plan), rungs)

    def _halving_cost(self, n_configs: int, rungs: list[Rung]) -> dict:
        spent, prev = 0, None
        for rung in rungs:
            spent += rung.keep * sum(n for _, n in self._slices(rung.limit, prev).values())
            prev = rung.limit
        full = n_configs * sum(self.suite.counts.values())
        return {"eta": int(self.o.halving or 3),
                "rungs": [{"configs": r.keep, "limit": r.limit} for r in rungs],
                "evaluations": spent, "full_evaluations": full, "saved": full - spent,
                "saved_fraction": round(1 - spent / full, 4) if full else 0.0,
                "runs": sum(r.keep for r in rungs), "full_runs": n_configs}

    # ------------------------------------------------------------------ refine
    def _run_refine(self, plan: list[Config]) -> None:
        import gguf_surgery

        done = [c.path for c in plan] + [c.path for c, _ in self.full.values()]
        for rnd in range(max(1, self.o.refine_rounds)):
            scored = [(c, v) for c, r in self.ranked() if (v := self.rank_value(r)) is not None]
            new = plan_refine(scored, self.src.n_layers, self.o.refine, done, self.o.refine_times)
            ok = []
            for c in new:
                try:
                    gguf_surgery.check_path(self.src, list(c.path))
                    ok.append(c)
                except Exception as exc:  # refused by the architecture's rules
                    log.info("refine: skipping %s: %s", c.describe(), exc)
            done += [c.path for c in new]
            if not ok:
                break
            self.say(f"refine round {rnd + 1}: {len(ok)} neighbours of the top {self.o.refine}")
            self._grow(len(ok))
            for c in ok:
                self._note_full(c, self.ensure(c, self.settings()))

    # ------------------------------------------------------------------ confirm
    def _run_confirm(self) -> None:
        top = [(c, r) for c, r in self.ranked()][: self.o.confirm]
        test = self.settings(split="test")
        self._grow(1 + len(top))
        assert self.baseline is not None
        self.test_baseline = self.ensure(confirm_config(baseline_config(self.src.n_layers)), test,
                                         stage="confirm", confirm_of=self.baseline.record["key"])
        rows = []
        for cfg, rec in top:
            out = self.ensure(confirm_config(cfg), test, stage="confirm", confirm_of=rec["key"])
            cd = (combined_delta(out.record.get("delta") or {}, self.weights)
                  if out.record.get("status") == "ok" else None)
            dev_cd = combined_delta(rec.get("delta") or {}, self.weights)
            holds = bool(cd and cd["delta"] is not None and cd["delta"] > 2 * (cd["stderr"] or 0))
            rows.append({"key": rec["key"], "confirm_key": out.record["key"], "path": rec["path"],
                         "config": cfg.describe(), "dev": dev_cd, "test": cd,
                         "status": out.record.get("status"), "holds": holds})
        self.confirm_rows = rows

    # ------------------------------------------------------------------ summary and report
    def noise(self) -> tuple[dict[str, float], float | None]:
        ident = self.identity.record if self.identity else None
        if not ident or ident.get("status") != "ok":
            return {}, None
        nf = noise_floor(ident.get("delta") or {})
        cd = combined_delta(ident.get("delta") or {}, self.weights)
        comb = None
        if cd is not None and cd["delta"] is not None:
            comb = max(abs(cd["delta"]), 2 * (cd["stderr"] or 0.0))
        return nf, comb

    def summary(self) -> dict:
        nf, nf_comb = self.noise()
        board = []
        for rank, (cfg, rec) in enumerate(self.ranked()[: max(self.o.top, 1)], 1):
            cd = combined_delta(rec.get("delta") or {}, self.weights)
            board.append({
                "rank": rank, "key": rec["key"], "path": rec["path"], "kind": rec["kind"],
                "block": rec.get("block"), "label": rec.get("label"), "config": cfg.describe(),
                "combined": self.combined_now(rec), "combined_delta": cd,
                "delta": rec.get("delta"),
                "beyond_noise": bool(cd and nf_comb is not None and cd["delta"] is not None
                                     and cd["delta"] > nf_comb),
            })
        base = self.baseline.record if self.baseline else None
        wall = time.monotonic() - self.t0
        sums = {k: round(v, 3) for k, v in self.timing_sums.items()}
        sums["other_s"] = round(sums["total_s"] - sums["surgery_s"] - sums["load_s"]
                                - sums["probe_s"], 3)
        sums["wall_s"] = round(wall, 3)
        ran = max(self.counts["ran"], 1)
        return {
            "schema": SUMMARY_SCHEMA,
            "results": self.store.path.name,
            "model": self.model_info,
            "settings": self.settings().to_dict(),
            "baseline": None if not base else {
                "key": base["key"], "status": base.get("status"),
                "scores": {n: p.get("score") for n, p in (base.get("probes") or {}).items()},
                "combined": self.combined_now(base)},
            "identity": None if not self.identity else {
                "key": self.identity.record["key"], "status": self.identity.record.get("status"),
                "delta": self.identity.record.get("delta"),
                "combined_delta": combined_delta(self.identity.record.get("delta") or {},
                                                 self.weights)},
            "noise_floor": {**nf, **({"combined": nf_comb} if nf_comb is not None else {})},
            "leaderboard": board,
            "counts": dict(self.counts),
            "timings": sums,
            "timings_per_config": {k: round(v / ran, 3) for k, v in sums.items()
                                   if k != "wall_s"},
            "halving": self.halving_stats,
            "confirm": self.confirm_rows,
            "interrupted": self.interrupted,
            "started_at": self.started_at,
            "ended_at": utc_now(),
        }

    def report(self, summary: Mapping[str, Any]) -> None:
        out = []
        if self.interrupted:
            out.append("interrupted: the server was stopped and the temp model deleted; "
                       "the unfinished config was not recorded (rerun to resume)")
        nf = summary["noise_floor"]
        if nf:
            out.append("noise floor (identity vs baseline, max(|delta|, 2*stderr)): "
                       + "  ".join(f"{k} {v:.3f}" for k, v in nf.items()))
        board = summary["leaderboard"]
        if board:
            out.append(f"top {len(board)} by combined delta:")
            out += leaderboard_lines(board, self.suite.names)
        if self.halving_stats:
            h = self.halving_stats
            out.append(f"halving: {h['evaluations']} config-item evaluations instead of "
                       f"{h['full_evaluations']} for a full pass (saved {h['saved']}, "
                       f"{100 * h['saved_fraction']:.0f}%); {h['runs']} config runs instead of "
                       f"{h['full_runs']}")
        if self.confirm_rows is not None:
            out.append("confirm on the held-out test split (holds = test delta > 2 stderr):")
            for row in self.confirm_rows:
                verdict = "holds" if row["holds"] else (
                    "error" if row["status"] != "ok" else "noise")
                out.append(f"  {row['config']:<16} {row['path']:<24} dev {fmt_delta(row['dev'])}"
                           f"  test {fmt_delta(row['test'])}  {verdict}")
        c, t = summary["counts"], summary["timings_per_config"]
        out.append(f"{c['ran']} configs run ({c['ok']} ok, {c['error']} errors), {c['resumed']} "
                   f"already done; per config: surgery {t['surgery_s']:.1f}s, load "
                   f"{t['load_s']:.1f}s, probes {t['probe_s']:.1f}s, total {t['total_s']:.1f}s")
        out.append(f"results: {self.store.path}  (items: {self.store.items_path.name}, logs: "
                   f"{self.store.logs_dir.name}/, summary: {self.store.summary_path.name})")
        out.append(f"next: rys-plot {shlex.quote(str(self.store.path))}")
        for line in out:
            print(line, flush=True)


def leaderboard_lines(board: Sequence[Mapping[str, Any]], probe_names: Sequence[str]) -> list[str]:
    rows = [["#", "config", "path"] + list(probe_names) + ["combined", ""]]
    for e in board:
        rows.append([str(e["rank"]), str(e.get("config") or e["kind"]), str(e["path"])]
                    + [fmt_delta((e.get("delta") or {}).get(n)) for n in probe_names]
                    + [fmt_delta(e.get("combined_delta")), "*" if e.get("beyond_noise") else ""])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.append("  (* = combined delta beyond the noise floor)")
    return lines


# =========================================================================== CLI

DEMO_PLAN = {"block_sizes": [3, 5], "stride": 4, "start_min": 4, "start_max": 12}
DEMO_SERVER_ARGS = ("--swa-full",)


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad arguments as one line (and exit 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_ARGS, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog="rys-sweep",
        description="Sweep layer paths of a GGUF model: for each config rewrite the model into "
        "tmpfs, serve it with llama-server, run the probes, append one JSON line; resumable. "
        "Without MODEL, runs a small demo on the bundled demo model.",
        epilog="Everything after `--` is passed to llama-server untouched. "
        "Docs: README.md, sections rys-sweep and Results JSONL schema.",
    )
    ap.add_argument("model", nargs="?", metavar="MODEL", help="source GGUF (default: the demo model)")
    ap.add_argument("-o", "--output", metavar="RESULTS.jsonl",
                    help="results file (default: rys-results/<model-stem>.jsonl)")
    g = ap.add_argument_group("plan (combine freely; default: --block-sizes 3 4 5)")
    g.add_argument("--block-sizes", type=int, nargs="+", metavar="N",
                   help="RYS blocks of these sizes (layers i..i+N-1 run again)")
    g.add_argument("--stride", type=int, default=1, help="step between block starts (default 1)")
    g.add_argument("--start-min", type=int, default=0, help="first block start (default 0)")
    g.add_argument("--start-max", type=int, help="last block start (default: last that fits)")
    g.add_argument("--times", type=int, default=1,
                   help="extra passes of each block: layers i..j-1 run TIMES+1 times (default 1)")
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
    s.add_argument("--llama-server", metavar="PATH", help="llama-server binary")
    s.add_argument("--server-args", default="", metavar="ARGS",
                   help="extra llama-server arguments, one shell-quoted string "
                   "(e.g. \"-ngl 99 --device Vulkan1\")")
    s.add_argument("--parallel", type=int, default=DEFAULT_PARALLEL,
                   help=f"server slots = concurrent probe requests (default {DEFAULT_PARALLEL})")
    s.add_argument("--ctx-size", type=int,
                   help=f"total context (default {DEFAULT_CTX_PER_SLOT} per slot)")
    s.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    s.add_argument("--load-timeout", type=float, default=600.0,
                   help="seconds to wait for a healthy server (default 600)")
    s.add_argument("--tmp-dir", metavar="DIR",
                   help="where rewritten models go (default: /dev/shm/rys-<uid>)")
    o = ap.add_argument_group("run")
    o.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    o.add_argument("--top", type=int, default=10, help="leaderboard size (default 10)")
    o.add_argument("--confirm", type=int, default=0, metavar="K",
                   help="rescore the top K and the baseline on the held-out test split")
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
    if args.block_sizes or not explicit:
        if explicit or not demo:
            sizes = args.block_sizes or list(DEFAULT_BLOCK_SIZES)
            plan += plan_blocks(n_layers, sizes, args.stride, args.start_min, args.start_max,
                                args.times)
        else:
            d = DEMO_PLAN
            plan += plan_blocks(n_layers, d["block_sizes"], d["stride"], d["start_min"],
                                min(d["start_max"], n_layers - 1), args.times)
    if args.grid:
        plan += plan_grid(n_layers, args.min_block, args.skip_early, args.skip_late, args.times,
                          args.max_block)
    if args.ablate:
        plan += plan_ablate(n_layers)
    if args.paths_file:
        try:
            text = Path(args.paths_file).read_text()
        except OSError as exc:
            raise PlanError(f"--paths-file {args.paths_file}: {exc.strerror or exc}") from None
        plan += parse_paths_text(text, n_layers, f"--paths-file {args.paths_file}")
    import layer_path

    ident = tuple(layer_path.identity(n_layers))
    return dedupe(plan, done=[ident])  # the identity control always runs anyway


def filter_refused(plan: list[Config], source: Any) -> tuple[list[Config], list[tuple[Config, str]]]:
    """Split off configs the surgery refuses for this architecture (with the reason)."""
    import gguf_surgery

    ok, refused = [], []
    for c in plan:
        try:
            gguf_surgery.check_path(source, list(c.path))
            ok.append(c)
        except Exception as exc:  # SurgeryError / LayerPathError
            refused.append((c, str(exc)))
    return ok, refused


def print_plan(plan: Sequence[Config], source: Any, suite: Suite, args: argparse.Namespace,
               refused: Sequence[tuple[Config, str]]) -> None:
    print(f"model: {source.paths[0]} ({source.arch}, {source.n_layers} layers, "
          f"{source.file_size / 2**20:.0f} MiB)")
    print(f"probes: {suite.spec()} (split {args.split}, mode {args.mode})")
    print(f"plan: baseline + identity + {len(plan)} configs")
    print(f"  {'baseline':<14} original file, no surgery")
    print(f"  {'identity':<14} {Config(tuple(range(source.n_layers)), 'identity').spec}")
    for c in plan:
        size = source.estimate_size(list(c.path))
        print(f"  {c.describe():<14} {c.spec:<28} {len(c.path):>4} layers  {size / 2**20:8.0f} MiB"
              + (f"  # {c.label}" if c.label and c.kind == "custom" else ""))
    for c, why in refused:
        print(f"  refused: {c.spec}: {why}")
    if args.halving is not None and len(plan) > 1:
        rungs = halving_rungs(len(plan), suite.max_items, args.halving, args.halving_min_items,
                              max(1, args.confirm))
        desc = ", ".join(f"{r.keep} configs x {r.limit} items" for r in rungs)
        print(f"halving (eta {args.halving}): {desc}")
    if args.refine:
        print(f"refine: up to {args.refine_rounds} rounds around the top {args.refine} blocks")
    if args.confirm:
        print(f"confirm: the top {args.confirm} and the baseline on the test split")


def _fail(msg: str) -> int:
    print(f"rys-sweep: error: {msg}", file=sys.stderr)
    return EXIT_BAD_ARGS


def main(argv: Sequence[str] | None = None) -> int:
    """rys-sweep. Bad input: one line on stderr and exit 2 before any server starts."""
    ours, passthrough = split_passthrough(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(ours)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        import gguf_surgery
        import layer_path
        import llama_server as LS
        import probes as P
    except ImportError as exc:  # broken install
        return _fail(f"cannot import a rys module: {exc}")
    if args.list_probes:
        for probe in P.list_probes():
            s = probe.summary()
            print(f"{s['name']:<14} v{s['version']:<3} {s['hash']:<18} dev {s['n_dev']:>4}  "
                  f"test {s['n_test']:>4}  {','.join(s['modes']):<17} {s['description']}")
        print(f"default suite: {','.join(str(e) for e in P.default_suite())}")
        return 0
    try:
        return _main(args, passthrough, gguf_surgery, layer_path, LS, P)
    except KeyboardInterrupt:
        print("rys-sweep: interrupted before the sweep started; nothing recorded", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(args: argparse.Namespace, passthrough: list[str], gguf_surgery: Any, layer_path: Any,
          LS: Any, P: Any) -> int:
    for name in ("stride", "parallel", "top", "halving_min_items", "refine_rounds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("limit", "ctx_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            return _fail(f"--{name.replace('_', '-')} must be >= 1")
    if args.confirm < 0 or args.refine < 0:
        return _fail("--confirm/--refine must be >= 0")
    if args.halving is not None and args.halving < 2:
        return _fail(f"--halving ETA must be >= 2, got {args.halving}")
    if args.confirm and args.split == "test":
        return _fail("--confirm rescores on the test split, so the sweep itself must use --split dev")
    if args.load_timeout <= 0 or args.item_timeout <= 0:
        return _fail("--load-timeout/--item-timeout must be positive")
    try:
        extra = shlex.split(args.server_args) + passthrough
    except ValueError as exc:
        return _fail(f"--server-args: {exc}")
    demo = args.model is None
    if demo and not extra:
        # Gemma 3 uses sliding-window attention: without a full-size SWA cache llama-server
        # cannot reuse the cached few-shot prefix between requests, and the demo's probes take
        # about twice as long (a tiny model, so the bigger cache costs nothing here).
        extra = list(DEMO_SERVER_ARGS)
    try:
        model = Path(args.model) if args.model else LS.demo_model_path()
    except LS.ServerError as exc:
        return _fail(f"no MODEL given and the demo model is unavailable: {exc}")
    if not model.is_file():
        return _fail(f"model file not found: {model}")
    try:
        source = gguf_surgery.SourceModel.open(model)
    except (gguf_surgery.SurgeryError, OSError, ValueError) as exc:
        return _fail(f"cannot read {model} as a GGUF model: {exc}")
    try:
        suite = Suite.resolve(args.probes, args.split, args.limit)
        parse_weights(args.weights, suite.names)
        plan = build_plan(args, source.n_layers, demo=demo)
    except (P.ProbeError, SweepError) as exc:
        return _fail(str(exc))
    except layer_path.LayerPathError as exc:
        return _fail(str(exc))
    plan, refused = filter_refused(plan, source)
    for c, why in refused:
        log.warning("skipping %s: the surgery refuses it: %s", c.spec, why)
    if not plan:
        return _fail("the plan is empty" + (f" (all {len(refused)} configs refused by the "
                                            f"surgery: {refused[0][1]})" if refused else ""))
    if args.dry_run:
        print_plan(plan, source, suite, args, refused)
        return 0
    results = Path(args.output) if args.output else Path("rys-results") / f"{model.stem}.jsonl"
    store = ResultsStore(results)
    try:
        store.check_writable()
    except SweepError as exc:
        return _fail(str(exc))
    try:
        binary = LS.find_llama_server(args.llama_server)
    except LS.ServerError as exc:
        return _fail(str(exc))
    try:
        tmp_dir = Path(args.tmp_dir) if args.tmp_dir else gguf_surgery.default_tmp_dir()
        if args.tmp_dir:
            tmp_dir.mkdir(parents=True, exist_ok=True)
        if not os.access(tmp_dir, os.W_OK):
            raise OSError(f"{tmp_dir} is not writable")
    except (OSError, gguf_surgery.SurgeryError) as exc:
        return _fail(f"--tmp-dir: {exc}")
    clean_stale_temp(tmp_dir)
    biggest = max(source.estimate_size(list(c.path)) for c in plan)
    free = shutil.disk_usage(tmp_dir).free
    if free < biggest + (16 << 20):
        return _fail(f"not enough space in {tmp_dir}: the largest config needs "
                     f"{biggest / 2**20:.0f} MiB, {free / 2**20:.0f} MiB free (use --tmp-dir)")
    ctx = args.ctx_size or (None if _sets_ctx(extra) else DEFAULT_CTX_PER_SLOT * args.parallel)
    server_opts = ServerOptions(binary=binary, extra_args=extra, host=args.host,
                                parallel=args.parallel, ctx_size=ctx,
                                load_timeout=args.load_timeout)
    opts = RunOptions(
        model=model, results=results, plan=plan, probes=args.probes, split=args.split,
        mode=args.mode, no_think=args.no_think, weights=args.weights, limit=args.limit,
        server=server_opts, tmp_dir=tmp_dir, item_timeout=args.item_timeout, top=args.top,
        quiet=args.quiet, force=args.force, retry_errors=args.retry_errors, confirm=args.confirm,
        halving=args.halving, halving_min_items=args.halving_min_items, refine=args.refine,
        refine_rounds=args.refine_rounds,
    )
    sweep = Sweep(opts, source, suite, server_opts)
    existing = read_jsonl(store.path, repair=False)
    if existing and not args.force:
        why = check_compatible(existing, source.fingerprint, suite.hashes)
        if why:
            return _fail(f"{store.path} cannot be resumed: {why}; write to another file with -o, "
                         f"or pass --force to append anyway")
    if not args.quiet:
        print(f"rys-sweep: {model.name} ({source.arch}, {source.n_layers} layers), "
              f"{len(plan)} configs + baseline + identity, probes {suite.spec()}, "
              f"results {store.path}", flush=True)
    try:
        return sweep.run()
    except SweepError as exc:
        print(f"rys-sweep: error: {exc}", file=sys.stderr)
        return 1


def _sets_ctx(args: Sequence[str]) -> bool:
    return any(a in ("-c", "--ctx-size") or a.startswith("--ctx-size=") for a in args)


if __name__ == "__main__":
    sys.exit(main())
