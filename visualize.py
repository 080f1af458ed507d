"""Tables, ASCII views, PNG heatmaps and an HTML report for rys sweep results (rys-plot).

Reads the JSONL written by rys-sweep (schema ``rys.sweep/1``, see docs/records.md)
and the reference project's sweep JSONL (``dup_start``/``dup_end``/``*_score``/``is_baseline``), so
old sweeps can be looked at with the same tools. Both are normalised into :class:`Config` records,
grouped per model into :class:`Sweep` objects; everything below works on those.

Plots use matplotlib's Agg canvas directly (no pyplot, no global backend switch), so importing this
module from a notebook or a headless sweep does not change anyone's backend.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import html
import io
import json
import logging
import math
import os
import re
import shlex
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Hashable, Iterable, Sequence

from rys import cli
from rys import layer_path
from rys import sweep_record as R
from rys.sweep_record import COMBINED, SweepRecord, significance

log = logging.getLogger("rys.visualize")

PROG = "rys-plot"
BLOCK_KINDS = tuple(str(k) for k in R.BLOCK_KINDS)

# Fixed figure geometry: PNG pixel size = inches * DPI exactly (figures are saved without
# bbox_inches="tight", so sizes are predictable for reports and tests).
DPI = 100
HEATMAP_PANEL_IN = (5.5, 5.0)
ABLATION_WIDTH_IN = 10.0
ABLATION_PANEL_H_IN = 2.6
ABLATION_EXTRA_H_IN = 0.8
PARETO_IN = (7.0, 6.0)

# ASCII shade ramps, weakest to strongest; "." = within noise, "x" = error, " " = not run.
ASCII_POS = "+oO@"
ASCII_NEG = "-=%#"
ASCII_NOISE = "."
ASCII_ERROR = "x"


class InputError(cli.UsageError):
    """Bad user input: reported as one line on stderr with exit code 2."""


# --------------------------------------------------------------------------------------------
# Data model
# --------------------------------------------------------------------------------------------

@dataclass
class ProbeResult:
    """One probe's numbers for one config; None means unknown (not measured / not in the format)."""
    score: float | None = None
    stderr: float | None = None
    delta: float | None = None
    delta_stderr: float | None = None


@dataclass
class Config:
    """One sweep record, normalised from either input format."""
    key: str
    path: str
    kind: str
    status: str = "ok"
    i: int | None = None          # block start (inclusive)
    j: int | None = None          # block end (exclusive)
    times: int | None = None      # extra repeats of the block (1 = block runs twice)
    skip: int | None = None       # ablation: the skipped layer
    probes: dict[str, ProbeResult] = field(default_factory=dict)
    combined: float | None = None
    combined_delta: float | None = None
    combined_delta_stderr: float | None = None
    error: str | None = None
    n_layers: int | None = None   # layers in the rewritten model
    source: str = ""
    fmt: str = "rys"              # "rys" or "reference"
    stage: str = "sweep"          # "sweep", "halving"/"search" (partial: a slice of the items), "confirm"
    limit: int | None = None      # halving: items per probe cap; search: items scored; None = all
    items_of: int | None = None   # search: items of a full pass
    stop_reason: str | None = None  # search: why it was stopped early
    name: str | None = None       # the record's label (paths-file comment of custom configs)
    confirm_of: str | None = None # confirm records: key of the dev record they rescore
    of_kind: str | None = None    # confirm records: kind of that dev record

    @property
    def partial(self) -> bool:
        """Scored on a slice of the items only (an eliminated successive-halving config, or one
        the adaptive search stopped early)."""
        return self.stage in (R.Stage.HALVING.value, R.Stage.SEARCH.value)

    @property
    def label(self) -> str:
        """The config's one human name (sweep_record.config_label)."""
        block = R.Block(self.i, self.j, self.times, self.skip) if (
            self.skip is not None or (self.i is not None and self.j is not None)) else None
        return R.config_label(self.kind, block, self.name, self.path, self.of_kind)

    @property
    def rank_value(self) -> float | None:
        """What the leaderboard sorts on: the combined delta (mean probe delta as a fallback)."""
        if self.combined_delta is not None:
            return self.combined_delta
        deltas = [p.delta for p in self.probes.values()]
        if deltas and all(d is not None for d in deltas):
            return sum(deltas) / len(deltas)  # type: ignore[arg-type]
        return None

    def value(self, probe: str) -> tuple[float | None, float | None]:
        """(delta, delta stderr) for a probe name or 'combined'."""
        if probe == COMBINED:
            return self.rank_value, self.combined_delta_stderr
        p = self.probes.get(probe)
        return (p.delta, p.delta_stderr) if p else (None, None)

    def score(self, probe: str) -> float | None:
        if probe == COMBINED:
            return self.combined
        p = self.probes.get(probe)
        return p.score if p else None


@dataclass
class Sweep:
    """All configs of one model (one or more files), with baseline and noise floor resolved."""
    label: str
    files: list[str]
    fmt: str
    configs: list[Config]                      # deduplicated by key, last record wins
    probe_names: list[str]
    noise_floor: dict[str, float] = field(default_factory=dict)   # empty = unknown
    noise_source: str = "unknown"              # "summary", "identity", "summary+identity", "unknown"
    n_records: int = 0
    n_errors: int = 0
    n_bad_lines: int = 0
    n_truncated: int = 0
    n_skipped: int = 0                         # records in neither format
    n_summaries: int = 0                       # sweep summaries the noise floor came from
    baselines: list[float | None] = field(default_factory=list)  # each file's combined
    source_n_layers: int | None = None
    model: R.ModelInfo = field(default_factory=R.ModelInfo)
    run: dict[str, Any] = field(default_factory=dict)  # how it was measured (rys files): run_info
    correction: str = "holm"                   # of the held-out check (from the summary)
    search: "SearchView | None" = None         # what an adaptive/random search measured


    @property
    def baseline(self) -> Config | None:
        return next((c for c in self.configs if c.kind == "baseline" and c.status == "ok"), None)

    @property
    def identity(self) -> Config | None:
        return next((c for c in self.configs if c.kind == "identity" and c.status == "ok"), None)

    @property
    def ok(self) -> list[Config]:
        return [c for c in self.configs if c.status == "ok"]

    @property
    def ranked_pool(self) -> list[Config]:
        """The candidates: OK dev-split configs except the reference rows (baseline, identity
        control) and confirm rescores. The identity is what an unchanged model scores again,
        never a config to build."""
        return [c for c in self.ok if c.kind not in ("baseline", "identity", "confirm")]

    def leaderboard(self) -> list[Config]:
        """The candidates, best combined delta first (unknown deltas last), every full
        measurement above every partial one (a score on a slice of the items is never ranked over
        a full one); rank 1 here is rank 1 in rys-sweep's leaderboard."""
        rows = self.ranked_pool
        return sorted(rows, key=lambda c: (c.partial, c.rank_value is None,
                                           -(c.rank_value or 0.0)))

    def verdict(self) -> str:
        """sweep_record.verdict for this sweep's top candidate (full measurements only)."""
        board = [c for c in self.leaderboard() if not c.partial]
        if not board:
            return R.verdict(None, None, None)
        d, se = board[0].value(COMBINED)
        return R.verdict(board[0].label, None if d is None else R.Delta(d, se),
                         self.floor(COMBINED))

    def floor(self, probe: str) -> float | None:
        return self.noise_floor.get(probe)


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------

def _num(x: Any) -> float | None:
    """A finite float, or None for anything else (None, NaN, strings, bools)."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _int(x: Any) -> int | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return x
    if isinstance(x, float) and x.is_integer():
        return int(x)
    return None


def pareto_front(points: dict[Hashable, Sequence[float]]) -> set:
    """Keys of the non-dominated points, every coordinate maximised.

    A point is dominated when another is >= in every coordinate and > in at least one, so exact
    duplicates do not remove each other (both stay on the front). Points with a None/NaN coordinate
    are left out. All tuples must have the same length.
    """
    clean: dict[Hashable, tuple[float, ...]] = {}
    dims: int | None = None
    for k, v in points.items():
        t = tuple(v)
        if dims is None:
            dims = len(t)
        elif len(t) != dims:
            raise ValueError(f"point {k!r} has {len(t)} coordinates, expected {dims}")
        if all(_num(x) is not None for x in t):
            clean[k] = tuple(float(x) for x in t)
    front = set()
    items = list(clean.items())
    for k, a in items:
        dominated = False
        for k2, b in items:
            if k2 == k:
                continue
            if all(bb >= aa for aa, bb in zip(a, b)) and any(bb > aa for aa, bb in zip(a, b)):
                dominated = True
                break
        if not dominated:
            front.add(k)
    return front


SIG_WORDS = {"+": "+sig", "-": "-sig", "~": "noise", "?": "?"}


def _fmt_delta(d: float | None, se: float | None) -> str:
    if d is None:
        return "-"
    if abs(d) < 5e-4:
        d = 0.0  # no "-0.000"
    return f"{d:+.3f}" + (f"±{se:.3f}" if se is not None else "")


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", s).strip("_") or "sweep"


def summary_path_for(jsonl: Path) -> Path:
    """RESULTS.jsonl -> RESULTS.summary.json (the sweep's end-of-run summary)."""
    return R.results_paths(jsonl)["summary"]


def default_out_dir(jsonl: Path) -> Path:
    """RESULTS.jsonl -> RESULTS.plots/ next to it."""
    return R.results_paths(jsonl)["plots"]


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

@dataclass
class RawFile:
    path: Path
    records: list[SweepRecord]          # rys.sweep records, valid, in file order
    reference: list[dict[str, Any]]     # objects of any other shape (the reference format)
    bad_lines: int = 0
    truncated: bool = False


def read_jsonl(path: Path) -> RawFile:
    """Parse a results file (sweep_record's reader: one warning per unreadable line, naming it; a
    cut-off last line ignored with one warning).

    Raises InputError for a missing file or one whose first line is not a JSON object.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 20)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not a results file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    lines = head.split(b"\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        complete = n < len(lines)  # a first line that is also a cut-off last line is no verdict
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if not ok and complete:
            raise InputError(f"{path}: not JSONL (line {n} is not a JSON object)")
        break
    parsed = R.read_records(path)
    return RawFile(path, parsed.records, parsed.others, len(parsed.bad_lines), parsed.truncated)


def _is_reference(rec: dict[str, Any]) -> bool:
    return ("is_baseline" in rec or "dup_start" in rec or "prune_start" in rec
            or any(k.endswith("_score") for k in rec))


def config_from_rys(rec: SweepRecord, source: str = "") -> Config:
    """The view of one rys.sweep record."""
    probes: dict[str, ProbeResult] = {}
    for name in list(rec.probes) + [n for n in rec.delta if n not in rec.probes]:
        p = rec.probes.get(name) or R.ProbeScore()
        d = rec.delta.get(name) or R.Delta()
        probes[name] = ProbeResult(score=_num(p.score), stderr=_num(p.stderr),
                                   delta=_num(d.delta), delta_stderr=_num(d.stderr))
    cd = rec.combined_delta or R.Delta()
    b = rec.block or R.Block()
    return Config(
        key=rec.key, path=rec.path, kind=str(rec.kind), status="ok" if rec.ok else "error",
        i=b.i, j=b.j, times=b.times if b.is_block else None, skip=b.skip,
        probes=probes, combined=_num(rec.combined), combined_delta=_num(cd.delta),
        combined_delta_stderr=_num(cd.stderr), error=None if rec.ok else rec.error,
        n_layers=rec.n_layers or None, source=source, fmt="rys", stage=str(rec.stage),
        limit=rec.settings.items if rec.stage == R.Stage.SEARCH else rec.settings.limit,
        items_of=rec.search.of if rec.search else None,
        stop_reason=rec.search.reason if rec.search and rec.search.stopped else None,
        name=rec.label if rec.label and rec.kind == R.Kind.CUSTOM else None,
        confirm_of=rec.confirm.of if rec.confirm else None,
        of_kind=str(rec.confirm.kind) if rec.confirm else None,
    )


def _ref_block(rec: dict[str, Any]) -> tuple[str, int, int] | None:
    """(mode, start, end) of a reference record, or None (baseline / unknown shape)."""
    if "mode" in rec and _int(rec.get("start")) is not None and _int(rec.get("end")) is not None:
        return str(rec["mode"]), int(rec["start"]), int(rec["end"])
    for mode, a, b in (("dup", "dup_start", "dup_end"), ("prune", "prune_start", "prune_end")):
        s, e = _int(rec.get(a)), _int(rec.get(b))
        if s is not None and e is not None and s >= 0:
            return mode, s, e
    return None


def _ref_scale(name: str, values: Iterable[float]) -> float:
    """Divisor that puts a reference score on 0-1: eq is 0-100; other scores above 1 are too."""
    if name == "eq":
        return 100.0
    if any(v > 1.0 for v in values):
        log.info("reference score %r goes above 1; treating it as 0-100", name)
        return 100.0
    return 1.0


def configs_from_reference(records: list[dict[str, Any]], source: str,
                           n_layers: int | None = None) -> tuple[list[Config], int]:
    """Normalise a reference-format file; deltas are against its is_baseline row.

    Returns (configs, number of records that were neither baseline nor a recognisable config).
    The reference format has no stderr, so every stderr stays None (no significance claims).
    """
    baselines = [r for r in records if r.get("is_baseline")]
    if not baselines:
        raise InputError(f"{source}: reference-format file has no is_baseline row to compute deltas")
    if len(baselines) > 1:
        log.warning("%s: %d baseline rows; using the first", source, len(baselines))
    base = baselines[0]
    names = [k[:-len("_score")] for k in base if k.endswith("_score") and _num(base[k]) is not None]
    scales = {n: _ref_scale(n, [v for r in records if (v := _num(r.get(f"{n}_score"))) is not None])
              for n in names}
    n_src = n_layers or _int(base.get("n_layers"))

    def scores(rec: dict[str, Any]) -> dict[str, float | None]:
        out = {}
        for n in names:
            v = _num(rec.get(f"{n}_score"))
            out[n] = None if v is None else v / scales[n]
        return out

    def mean(vals: Iterable[float | None]) -> float | None:
        vals = list(vals)
        return None if not vals or any(v is None for v in vals) else sum(vals) / len(vals)  # type: ignore

    bscores = scores(base)
    bcomb = mean(bscores.values())
    out = [Config(key="ref:baseline", path="", kind="baseline", fmt="reference", source=source,
                  probes={n: ProbeResult(score=s) for n, s in bscores.items()}, combined=bcomb,
                  n_layers=n_src)]
    skipped = 0
    for idx, rec in enumerate(records):
        if rec is base or rec.get("is_baseline"):
            continue
        blk = _ref_block(rec)
        if blk is None:
            skipped += 1
            continue
        mode, s, e = blk
        sc = scores(rec)
        err = rec.get("error")
        status = "error" if err or all(v is None for v in sc.values()) else "ok"
        probes = {n: ProbeResult(score=v, delta=None if v is None or bscores[n] is None
                                 else v - bscores[n]) for n, v in sc.items()}
        comb = mean(sc.values())
        nl = _int(rec.get("n_layers")) or n_src
        if mode == "prune" and e - s == 1:
            cfg = Config(key=f"ref:skip{s}", path="", kind="ablate", skip=s)
        elif mode == "prune":
            cfg = Config(key=f"ref:prune{s}-{e}", path="", kind="prune", i=s, j=e)
        else:
            cfg = Config(key=f"ref:dup{s}-{e}", path="", kind="block", i=s, j=e, times=1)
        cfg.status, cfg.error, cfg.probes, cfg.fmt, cfg.source = status, err, probes, "reference", source
        cfg.combined = comb
        cfg.combined_delta = None if comb is None or bcomb is None else comb - bcomb
        cfg.n_layers = None  # the reference format does not record the rewritten size
        cfg.path = _reference_path_text(cfg, nl)
        out.append(cfg)
    return out, skipped


def _reference_path_text(cfg: Config, n_layers: int | None) -> str:
    """Canonical path of a reference config when the layer count is known, else its label."""
    if n_layers:
        try:
            return layer_path.format(_reference_layers(cfg, n_layers))
        except (layer_path.LayerPathError, InputError) as e:
            log.warning("%s: %s", cfg.label, e)
    return cfg.label


def _noise_from_identity(ident: Config | None) -> dict[str, float]:
    """The noise floor (sweep_record.noise_floor) from the identity record, where known."""
    if ident is None:
        return {}
    deltas = {n: R.Delta(p.delta, p.delta_stderr) for n, p in ident.probes.items()}
    combined = R.Delta(ident.combined_delta, ident.combined_delta_stderr) \
        if ident.combined_delta is not None else None
    return R.noise_floor(deltas, combined)


def run_info(records: Sequence[SweepRecord]) -> dict[str, Any]:
    """How a sweep was measured, for report headers: suite (probes with item counts), split, mode,
    engine(s), llama-server version(s), configs, compute time (sum of per-config totals) and the
    wall-clock span from the first record's start to the last one's end."""
    if not records:
        return {}
    dev = [r for r in records if r.stage != R.Stage.CONFIRM] or list(records)
    last = dev[-1]
    starts = sorted(r.started_at for r in records if r.started_at)
    ends = sorted(r.ended_at for r in records if r.ended_at)
    span = None
    if starts and ends:
        with contextlib.suppress(ValueError):
            t0 = datetime.fromisoformat(starts[0].replace("Z", "+00:00"))
            t1 = datetime.fromisoformat(ends[-1].replace("Z", "+00:00"))
            span = (t1 - t0).total_seconds()
    return {
        "suite": last.settings.suite, "split": last.settings.split, "mode": last.settings.mode,
        "engines": sorted({r.server.engine for r in records}),
        "server_versions": sorted({r.server.version for r in records if r.server.version}),
        "records": len(records),
        "compute_s": round(sum(r.timings.total_s for r in records), 1),
        "wall_s": None if span is None else round(span, 1),
        "started_at": starts[0] if starts else None, "ended_at": ends[-1] if ends else None,
    }


@dataclass
class SearchView:
    """What a search (rys-sweep --search) measured, from its records in file order: per block the
    items scored (of a full pass) and whether it was stopped early, and the best full config's
    combined delta after each config (best-so-far against item-evaluations spent)."""

    strategy: str
    of: int                                              # items of a full pass per config
    cells: dict[tuple[int, int, int], tuple[int, bool]]  # (i, j, times) -> (items, stopped)
    trace: list[tuple[int, float | None, float | None, bool]]  # (spent, this delta, best, stopped)

    @property
    def spent(self) -> int:
        return self.trace[-1][0] if self.trace else 0

    @property
    def stopped(self) -> int:
        return sum(1 for _, st in self.cells.values() if st)


def search_view(records: Sequence[SweepRecord]) -> SearchView | None:
    """The search part of a sweep's records (None when no search ran)."""
    recs = [r for r in records if r.search is not None and r.ok]
    if not recs:
        return None
    cells: dict[tuple[int, int, int], tuple[int, bool]] = {}
    trace: list[tuple[int, float | None, float | None, bool]] = []
    spent, best = 0, None
    for r in recs:
        info = r.search
        assert info is not None
        spent += info.items
        d = r.combined_delta.delta if r.combined_delta else None
        if not info.stopped and d is not None:
            best = d if best is None else max(best, d)
        trace.append((spent, d, best, info.stopped))
        if r.block is not None and r.block.is_block:
            cells[(int(r.block.i), int(r.block.j), int(r.block.times or 1))] = (  # type: ignore[arg-type]
                info.items, info.stopped)
    return SearchView(recs[-1].search.strategy, recs[-1].search.of, cells,  # type: ignore[union-attr]
                      trace)


def format_search(sweep: Sweep) -> str:
    """Text lines about a search: configs measured, stopped early, item-evaluations spent."""
    v = sweep.search
    if v is None:
        return ""
    n = len(v.cells)
    full = sum(1 for _, st in v.cells.values() if not st)
    best = next((b for *_, b, _ in reversed(v.trace) if b is not None), None)
    return (f"search ({v.strategy}): {n} configs measured, {full} on all {v.of} items, "
            f"{v.stopped} stopped early; {v.spent} item-evaluations spent"
            + (f"; best combined delta on the search items {best:+.3f}" if best is not None
               else ""))


def _dedupe(configs: list[Config]) -> list[Config]:
    """One config per key: the last OK record wins, else the last record (a retried error)."""
    best: dict[str, Config] = {}
    for c in configs:
        prev = best.get(c.key)
        if prev is None or c.status == "ok" or prev.status != "ok":
            best.pop(c.key, None)  # keep insertion order = order of the winning record
            best[c.key] = c
    return list(best.values())


def _prefer_full(configs: list[Config]) -> list[Config]:
    """Drop partial successive-halving records of a path that also has a fuller record.

    Early halving rungs score a config on a slice of the items under another key; the last rung
    (or a plain sweep) re-records the same path in full. Per (kind, path) keep: a full record over
    a partial one, then more items, then an OK record over an error, then the later one.
    """
    def rank(c: Config) -> tuple:
        return (not c.partial, math.inf if c.limit is None else c.limit, c.status == "ok")

    best: dict[tuple[str, str], int] = {}
    for n, c in enumerate(configs):
        if c.kind == "confirm" or not c.path:
            continue
        k = (c.kind, c.path)
        if k not in best or rank(c) >= rank(configs[best[k]]):
            best[k] = n
    keep = set(best.values())
    return [c for n, c in enumerate(configs)
            if n in keep or c.kind == "confirm" or not c.path]


def load_sweeps(paths: Sequence[Path], n_layers: int | None = None,
                allow_empty: bool = False) -> list[Sweep]:
    """Read every file, normalise, and group by model (rys fingerprint) or by file (reference).

    Raises InputError for a missing/non-JSONL file or one without usable records (unless
    allow_empty, used by --watch while a sweep has not written its first record yet).
    """
    groups: dict[str, Sweep] = {}
    run_records: dict[str, list[SweepRecord]] = {}
    for path in paths:
        raw = read_jsonl(path)
        rys = raw.records
        ref = [r for r in raw.reference if _is_reference(r)]
        other = len(raw.reference) - len(ref)
        if rys and ref:
            log.warning("%s: mixes rys and reference records; reading the rys ones", path)
            other += len(ref)
            ref = []
        if not rys and not ref:
            if allow_empty:
                continue
            raise InputError(f"{path}: no usable sweep records (neither rys.sweep/1 nor reference format)")
        if rys:
            model = rys[0].model
            gkey = "rys:" + (model.fingerprint or model.file or str(path))
            label = Path(model.file).stem if model.file else path.stem
            configs = [config_from_rys(r, str(path)) for r in rys]
            fmt = "rys"
            run_records.setdefault(gkey, []).extend(rys)
        else:
            configs, skipped = configs_from_reference(ref, str(path), n_layers)
            other += skipped
            model, gkey, label, fmt = R.ModelInfo(), f"ref:{path}", path.stem, "reference"
        g = groups.get(gkey)
        if g is None:
            g = groups[gkey] = Sweep(label=label, files=[], fmt=fmt, configs=[], probe_names=[],
                                     model=model)
        g.files.append(str(path))
        g.configs.extend(configs)
        g.n_records += len(configs) - (1 if fmt == "reference" else 0)
        g.n_bad_lines += raw.bad_lines
        g.n_truncated += int(raw.truncated)
        g.n_skipped += other
        if other:
            log.warning("%s: %d record(s) in neither format skipped", path, other)
        if fmt == "rys":
            # several files of one model (shards of one sweep, or a sweep plus an ablation):
            # each measured its own noise; the merged view takes the largest floor per probe
            whole = R.read_summary(summary_path_for(path))
            summ = R.summary_noise(whole)
            corr = (whole.get("heldout") or {}).get("correction")
            if corr in R.CORRECTIONS:
                g.correction = corr
            if summ:
                for k, v in summ.items():
                    g.noise_floor[k] = max(v, g.noise_floor.get(k, 0.0))
                g.n_summaries += 1
                g.noise_source = "summary" if g.n_summaries == 1 else \
                    f"largest of {g.n_summaries} summaries"
            base = next((r for r in rys if r.kind == R.Kind.BASELINE and r.ok), None)
            if base is not None:
                g.baselines.append(base.combined)
    # labels must be unique: they name output files
    seen: dict[str, int] = {}
    out = []
    for gkey, g in groups.items():
        g.run = run_info(run_records.get(gkey, []))
        g.search = search_view(run_records.get(gkey, []))
        g.configs = _prefer_full(_dedupe(g.configs))
        g.n_errors = sum(1 for c in g.configs if c.status == "error")
        names: list[str] = []
        base = g.baseline
        for c in ([base] if base else []) + g.configs:
            for n in c.probes:
                if n not in names:
                    names.append(n)
        g.probe_names = names
        combined = {round(c, 9) for c in g.baselines if c is not None}
        if len(combined) > 1:
            log.warning("%s: the files measured different baselines (combined %s): each config's "
                        "delta is against its own file's baseline; the table shows the last one",
                        g.label, ", ".join(f"{c:.4f}" for c in sorted(combined)))
        ident = _noise_from_identity(g.identity)
        if g.n_summaries:
            extra = {k: v for k, v in ident.items() if k not in g.noise_floor}
            if extra:
                g.noise_floor.update(extra)
                g.noise_source = "summary+identity"
        elif ident:
            g.noise_floor, g.noise_source = ident, "identity"
        # only recorded counts: guessing from the largest j would build wrong export paths
        g.source_n_layers = (g.model.n_layers or n_layers
                             or next((c.n_layers for c in g.configs
                                      if c.kind in ("baseline", "identity") and c.n_layers), None))
        k = seen.get(g.label, 0)
        seen[g.label] = k + 1
        if k:
            g.label = f"{g.label}-{k + 1}"
        out.append(g)
    if not out and not allow_empty:
        raise InputError("no usable sweep records in " + ", ".join(map(str, paths)))
    return out


# --------------------------------------------------------------------------------------------
# Text output
# --------------------------------------------------------------------------------------------

def _block_configs(sweep: Sweep, times: int | None = None) -> list[Config]:
    return [c for c in sweep.configs if c.kind in BLOCK_KINDS and c.i is not None and c.j is not None
            and (times is None or (c.times or 1) == times)]


def _ablate_configs(sweep: Sweep) -> list[Config]:
    return [c for c in sweep.configs if c.kind == "ablate" and c.skip is not None]


def summary_lines(sweep: Sweep, probes: Sequence[str]) -> list[str]:
    """Header lines: files, counts, baseline, noise floor."""
    lines = [f"== {sweep.label}  ({sweep.fmt} format; {', '.join(sweep.files)})"]
    n_ok = len(sweep.ok)
    extra = []
    if sweep.n_truncated:
        extra.append(f"{sweep.n_truncated} truncated last line(s) ignored")
    if sweep.n_bad_lines:
        extra.append(f"{sweep.n_bad_lines} unreadable line(s)")
    if sweep.n_skipped:
        extra.append(f"{sweep.n_skipped} unrecognised record(s)")
    lines.append(f"configs: {len(sweep.configs)} ({n_ok} ok, {sweep.n_errors} error)"
                 + (f"; model layers: {sweep.source_n_layers}" if sweep.source_n_layers else "")
                 + ("; " + "; ".join(extra) if extra else ""))
    base = sweep.baseline
    if base:
        parts = [f"{p}={s:.4f}" for p in probes if (s := base.score(p)) is not None]
        if base.combined is not None:
            parts.append(f"combined={base.combined:.4f}")
        lines.append("baseline: " + (" ".join(parts) or "(no scores)"))
    else:
        lines.append("baseline: not in the results (yet)")
    ident = sweep.identity
    if ident is not None:
        d, se = ident.value(COMBINED)
        lines.append(f"identity control (a reference row, not a candidate): combined Δ "
                     f"{_fmt_delta(d, se)}")
    if sweep.noise_floor:
        nf = " ".join(f"{p} ±{sweep.noise_floor[p]:.4f}" for p in list(probes) + [COMBINED]
                      if p in sweep.noise_floor)
        lines.append(f"noise floor ({sweep.noise_source}): {nf}")
        note = R.noise_note(sweep.noise_floor)
        if note:
            lines.append(f"note: {note}")
    else:
        why = "reference format has no stderr" if sweep.fmt == "reference" else \
            "no summary and no identity record"
        lines.append(f"noise floor: unknown ({why}); no significance claims")
    return lines


def leaderboard_rows(sweep: Sweep, probes: Sequence[str]) -> list[dict[str, Any]]:
    """Leaderboard as plain dicts (rank, label, path, per-probe delta/stderr/sig, combined)."""
    rows = []
    for rank, c in enumerate(sweep.leaderboard(), 1):
        d, se = c.value(COMBINED)
        row: dict[str, Any] = {"rank": rank, "key": c.key, "label": c.label, "path": c.path,
                               "kind": c.kind, "stage": c.stage, "partial": c.partial,
                               "limit": c.limit, "probes": {}, "combined": c.combined,
                               "combined_delta": d, "combined_delta_stderr": se,
                               "sig": significance(d, se, sweep.floor(COMBINED))}
        for p in probes:
            pd, pse = c.value(p)
            row["probes"][p] = {"score": c.score(p), "delta": pd, "delta_stderr": pse,
                                "sig": significance(pd, pse, sweep.floor(p))}
        rows.append(row)
    return rows


def _kind_text(row: dict[str, Any]) -> str:
    return row["kind"] + (" (partial)" if row["partial"] else "")


def confirm_rows(sweep: Sweep) -> list[dict[str, Any]]:
    """Held-out rescoring (kind "confirm", test split) of top dev configs: dev vs test combined
    delta and the held-out check of sweep_record.heldout (corrected across the K rescored; holds =
    adjusted p below alpha and beyond the noise floor), as rys-sweep's summary has it."""
    by_key = {c.key: c for c in sweep.configs}
    rows = []
    for c in sweep.configs:
        if c.kind != "confirm" or c.of_kind == "baseline":
            continue
        dev = by_key.get(c.confirm_of or "")
        td, tse = c.value(COMBINED)
        dd, dse = dev.value(COMBINED) if dev else (None, None)
        rows.append({"key": c.key, "of": c.confirm_of, "label": dev.label if dev else c.label,
                     "path": c.path, "status": c.status, "dev_delta": dd, "dev_stderr": dse,
                     "test_delta": td, "test_stderr": tse,
                     "added_layers": (c.n_layers - sweep.source_n_layers
                                      if c.n_layers and sweep.source_n_layers else None),
                     "sig": significance(td, tse, None) if c.status == "ok" else "?"})
    rows.sort(key=lambda r: (r["dev_delta"] is None, -(r["dev_delta"] or 0.0)))
    checks = R.heldout([(None if r["dev_delta"] is None else R.Delta(r["dev_delta"],
                                                                     r["dev_stderr"]),
                         None if r["test_delta"] is None or r["status"] != "ok" else
                         R.Delta(r["test_delta"], r["test_stderr"])) for r in rows],
                       sweep.floor(COMBINED), sweep.correction)
    for r, h in zip(rows, checks):
        r.update(p=h.p, p_adjusted=h.p_adjusted, holds=h.holds, shrinkage=h.shrinkage)
    return rows


def _confirm_verdict(r: dict[str, Any]) -> str:
    return "error" if r["status"] != "ok" else "holds" if r["holds"] else "does not hold"


def _fmt_p(p: float | None) -> str:
    return "n/a" if p is None else f"{p:.3g}"


def format_confirm(sweep: Sweep) -> str:
    rows = confirm_rows(sweep)
    if not rows:
        return ""
    name = R.CORRECTIONS[sweep.correction][0]
    out = [f"held-out confirmation (test split; {R.HELDOUT_TEST}, {name}-corrected across the "
           f"{len(rows)}; holds = adjusted p < {R.ALPHA} and beyond the noise floor):"]
    w = max(len(r["label"]) for r in rows)
    for r in rows:
        out.append(f"  {r['label']:<{w}}  dev {_fmt_delta(r['dev_delta'], r['dev_stderr']):>14}"
                   f"  test {_fmt_delta(r['test_delta'], r['test_stderr']):>14}  adjusted p "
                   f"{_fmt_p(r['p_adjusted']):>8}  {_confirm_verdict(r)}")
    verdict = R.heldout_verdict([r["label"] for r in rows], [_check(r) for r in rows],
                                sweep.correction)
    if verdict:
        out.append(verdict)
    front = gain_size_front(sweep)
    if front:
        out.append("gain-versus-size front (held-out combined delta against added layers):")
        for r in front:
            out.append(f"  +{r['added_layers']} layers  {r['label']:<{w}}  test "
                       f"{_fmt_delta(r['test_delta'], r['test_stderr'])}  {r['command']}")
    return "\n".join(out)


def _check(r: dict[str, Any]) -> R.HeldOut:
    return R.HeldOut(None if r["dev_delta"] is None else R.Delta(r["dev_delta"], r["dev_stderr"]),
                     None if r["test_delta"] is None else R.Delta(r["test_delta"],
                                                                  r["test_stderr"]),
                     r["p"], r["p_adjusted"], r["holds"])


def gain_size_front(sweep: Sweep) -> list[dict[str, Any]]:
    """The held-out configs on the Pareto front of (held-out combined delta: more is better,
    added layers: fewer is better), fewest layers first, each with its rys-path command."""
    rows = [r for r in confirm_rows(sweep) if r["status"] == "ok" and r["test_delta"] is not None
            and r["added_layers"] is not None]
    front = pareto_front({n: (r["test_delta"], -r["added_layers"]) for n, r in enumerate(rows)})
    out = []
    for n in sorted(front, key=lambda n: (rows[n]["added_layers"], -rows[n]["test_delta"])):
        r = dict(rows[n])
        dev = next((c for c in sweep.configs if c.key == r["of"]), None)
        try:
            r["command"] = export_command(sweep, dev) if dev else ""
        except Exception as exc:  # a report renders even without a layer count
            log.debug("no export command for %s: %s", r["label"], exc)
            r["command"] = ""
        out.append(r)
    return out


def format_table(sweep: Sweep, probes: Sequence[str], top: int) -> str:
    """Ranked text table; `top` rows (0 = all)."""
    rows = leaderboard_rows(sweep, probes)
    shown = rows if top <= 0 else rows[:top]
    head = ["#", "config", "kind", "path"] + [f"{p} Δ" for p in probes] + ["combined Δ", "sig"]
    body = []
    for r in shown:
        cells = [str(r["rank"]), r["label"], _kind_text(r),
                 r["path"] if len(r["path"]) <= 32 else r["path"][:29] + "..."]
        for p in probes:
            pp = r["probes"][p]
            mark = "*" if pp["sig"] in "+-" else ""
            cells.append(_fmt_delta(pp["delta"], pp["delta_stderr"]) + mark)
        cells.append(_fmt_delta(r["combined_delta"], r["combined_delta_stderr"]))
        cells.append(SIG_WORDS[r["sig"]])
        body.append(cells)
    widths = [max(len(h), *(len(b[k]) for b in body)) if body else len(h) for k, h in enumerate(head)]
    numeric = set(range(4, len(head) - 1)) | {0}

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if k in numeric else c.ljust(w)
                         for k, (c, w) in enumerate(zip(cells, widths))).rstrip()

    out = summary_lines(sweep, probes) + [sweep.verdict(), "", line(head),
                                          line(["-" * w for w in widths])]
    out += [line(b) for b in body]
    if not rows:
        out.append("(no finished configs yet)")
    elif len(shown) < len(rows):
        out.append(f"... {len(rows) - len(shown)} more (--top 0 shows all)")
    out.append("* = per-probe delta beyond the noise threshold; sig: +sig/-sig beyond, noise = within,"
               " ? = unknown")
    if any(r["partial"] for r in rows):
        out.append("partial = scored on a slice of the items only (dropped by successive halving, "
                   "or stopped early by the search); ranked below every full measurement")
    srch = format_search(sweep)
    if srch:
        out.append(srch)
    conf = format_confirm(sweep)
    if conf:
        out.append(conf)
    errs = [c for c in sweep.configs if c.status == "error"]
    if errs:
        out.append(f"errors ({len(errs)}): " + ", ".join(c.label for c in errs[:12])
                   + (" ..." if len(errs) > 12 else ""))
    return "\n".join(out)


def _shade(d: float | None, sig: str, vmax: float) -> str:
    if d is None:
        return "?"
    if sig == "~":
        return ASCII_NOISE
    if d == 0:
        return "0"
    ramp = ASCII_POS if d >= 0 else ASCII_NEG
    frac = abs(d) / vmax if vmax > 0 else 0.0
    return ramp[min(len(ramp) - 1, int(frac * len(ramp)))]


def ascii_grid(sweep: Sweep, probe: str = COMBINED, times: int = 1) -> str:
    """i (rows) vs j (columns, exclusive) character grid of one probe's delta for block configs."""
    cells = _block_configs(sweep, times)
    if not cells:
        return ""
    floor = sweep.floor(probe)
    vals = [abs(d) for c in cells if c.status == "ok" and (d := c.value(probe)[0]) is not None]
    vmax = max(vals) if vals else 0.0
    imin, imax = min(c.i for c in cells), max(c.i for c in cells)  # type: ignore[type-var]
    jmin, jmax = min(c.j for c in cells), max(c.j for c in cells)  # type: ignore[type-var]
    grid = {(c.i, c.j): c for c in cells}
    js = list(range(jmin, jmax + 1))
    sep = " " if len(js) <= 40 else ""   # wide sweeps: one character per cell
    pad = len(f"i={imax}") + 1
    title = f"{probe} delta, block start i (rows) x end j (columns, exclusive)" + \
        (f", block run {times + 1}x" if times != 1 else "")
    lines = [title]
    if jmax >= 10:
        lines.append(" " * (pad + 3) + sep.join(str(j // 10) if j >= 10 else " " for j in js).rstrip())
    lines.append(" " * (pad + 3) + sep.join(str(j % 10) for j in js))
    for i in range(imin, imax + 1):
        row = []
        for j in js:
            c = grid.get((i, j))
            if c is None:
                row.append(" ")
            elif c.status != "ok":
                row.append(ASCII_ERROR)
            else:
                d, se = c.value(probe)
                row.append(_shade(d, significance(d, se, floor), vmax))
        lines.append((f"{'i=' + str(i):>{pad}} | " + sep.join(row)).rstrip())
    q = [f"{vmax * k / 4:.3f}" for k in range(1, 5)]
    lines.append(f"legend: {ASCII_POS} better, {ASCII_NEG} worse (steps of {q[0]} up to {q[-1]});"
                 f" '{ASCII_NOISE}' within noise; '0' no change; '{ASCII_ERROR}' error;"
                 f" blank not run; '?' no delta")
    return "\n".join(lines)


def ascii_bars(sweep: Sweep, probe: str = COMBINED, half: int = 20) -> str:
    """One row per skipped layer: a horizontal bar of the delta (ablation sweeps)."""
    cells = sorted(_ablate_configs(sweep), key=lambda c: c.skip or 0)
    if not cells:
        return ""
    floor = sweep.floor(probe)
    vals = [abs(d) for c in cells if (d := c.value(probe)[0]) is not None]
    vmax = max(vals) if vals else 0.0
    lines = [f"{probe} delta when one layer is skipped (bar = delta, '|' = baseline)"]
    for c in cells:
        d, se = c.value(probe)
        name = f"skip {c.skip:>3}"
        if c.status != "ok":
            lines.append(f"{name} {' ' * half}|{' ' * half} error")
            continue
        if d is None:
            lines.append(f"{name} {' ' * half}|{' ' * half} ?")
            continue
        n = int(round(abs(d) / vmax * half)) if vmax > 0 else 0
        sig = significance(d, se, floor)
        ch = "~" if sig == "~" else "#"
        bar = (" " * half + "|" + ch * n).ljust(2 * half + 1) if d >= 0 else \
            " " * (half - n) + ch * n + "|" + " " * half
        lines.append(f"{name} {bar} {d:+.4f} {SIG_WORDS[sig]}")
    lines.append("'#' beyond the noise threshold, '~' within it")
    return "\n".join(lines)


def format_ascii(sweep: Sweep, probes: Sequence[str]) -> str:
    parts = []
    show = [COMBINED] if len(probes) > 1 else list(probes)
    times_values = sorted({c.times or 1 for c in _block_configs(sweep)})
    for t in times_values:
        for p in show:
            parts.append(ascii_grid(sweep, p, t))
    for p in show:
        s = ascii_bars(sweep, p)
        if s:
            parts.append(s)
    return "\n\n".join(x for x in parts if x)


def sweep_json(sweep: Sweep, probes: Sequence[str], front: Sequence[Config]) -> dict[str, Any]:
    return {
        "label": sweep.label, "files": sweep.files, "format": sweep.fmt,
        "n_configs": len(sweep.configs), "n_ok": len(sweep.ok), "n_errors": sweep.n_errors,
        "n_truncated": sweep.n_truncated, "n_bad_lines": sweep.n_bad_lines,
        "source_n_layers": sweep.source_n_layers, "probes": list(probes),
        "baseline": asdict(sweep.baseline) if sweep.baseline else None,
        "noise_floor": sweep.noise_floor or None, "noise_source": sweep.noise_source,
        "verdict": sweep.verdict(),
        "identity": asdict(sweep.identity) if sweep.identity else None,
        "leaderboard": leaderboard_rows(sweep, probes),
        "pareto_front": [c.key for c in front],
        "confirm": confirm_rows(sweep),
        "errors": [{"key": c.key, "label": c.label, "path": c.path, "error": c.error}
                   for c in sweep.configs if c.status == "error"],
    }


# --------------------------------------------------------------------------------------------
# Pareto
# --------------------------------------------------------------------------------------------

def pareto_configs(sweep: Sweep, probes: Sequence[str]) -> list[Config]:
    """Non-dominated configs over the given probes' deltas (baseline and identity excluded)."""
    pts = {}
    by_key = {}
    for c in sweep.ranked_pool:
        vals = tuple(c.value(p)[0] for p in probes)
        if all(v is not None for v in vals):
            pts[c.key] = vals
            by_key[c.key] = c
    front = pareto_front(pts) if pts else set()  # type: ignore[arg-type]
    return sorted((by_key[k] for k in front),
                  key=lambda c: (c.rank_value is None, -(c.rank_value or 0.0)))


# --------------------------------------------------------------------------------------------
# Figures (matplotlib Agg canvas, no pyplot)
# --------------------------------------------------------------------------------------------

def new_figure(w_in: float, h_in: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(w_in, h_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def figure_png(fig) -> bytes:
    """PNG bytes of a figure at exactly figsize * DPI pixels."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def heatmap_grid_shape(n_panels: int) -> tuple[int, int]:
    """(rows, cols) for n heatmap panels: 1 -> 1x1, 2 -> 1x2, 3 -> 1x3, 4 -> 2x2, else 3 wide."""
    cols = {1: 1, 2: 2, 4: 2}.get(n_panels, 3)
    return math.ceil(n_panels / cols), cols


def heatmap_figsize(n_panels: int) -> tuple[float, float]:
    rows, cols = heatmap_grid_shape(n_panels)
    return cols * HEATMAP_PANEL_IN[0], rows * HEATMAP_PANEL_IN[1]


def ablation_figsize(n_panels: int) -> tuple[float, float]:
    return ABLATION_WIDTH_IN, ABLATION_EXTRA_H_IN + n_panels * ABLATION_PANEL_H_IN


def _tick_step(n: int) -> int:
    for step in (1, 2, 4, 5, 10, 20):
        if n / step <= 20:
            return step
    return 50


def _panels(sweep: Sweep, probes: Sequence[str]) -> list[str]:
    return list(probes) + ([COMBINED] if len(probes) > 1 else [])


def _panel_title(sweep: Sweep, probe: str) -> str:
    base = sweep.baseline
    b = base.score(probe) if base else None
    floor = sweep.floor(probe)
    first = f"{probe}: baseline {b:.3f}" if b is not None else f"{probe}: baseline unknown"
    second = f"Δ vs baseline; noise ±{floor:.3f}" if floor is not None else \
        "Δ vs baseline; noise floor unknown"
    return first + "\n" + second


def heatmap_figure(sweep: Sweep, probes: Sequence[str], top: int = 5, times: int = 1):
    """i (y, start) vs j (x, end exclusive) delta heatmaps: one panel per probe plus combined.

    Diverging colormap with symmetric limits (0 = white), one colour scale shared by every panel
    of the sweep (a colour means the same delta everywhere); cells not run stay blank; cells
    within the noise threshold are faded and hatched; the leaderboard's top-k configs are boxed
    on every panel and numbered with their leaderboard rank; error cells carry a small grey 'x'.
    """
    import numpy as np
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    cells = _block_configs(sweep, times)
    panels = _panels(sweep, probes)
    fig = new_figure(*heatmap_figsize(len(panels)))
    rows, cols = heatmap_grid_shape(len(panels))
    imin = min(c.i for c in cells)  # type: ignore[type-var]
    imax = max(c.i for c in cells)  # type: ignore[type-var]
    jmin = min(c.j for c in cells)  # type: ignore[type-var]
    jmax = max(c.j for c in cells)  # type: ignore[type-var]
    ni, nj = imax - imin + 1, jmax - jmin + 1
    xedges = np.arange(jmin - 0.5, jmax + 1.0, 1.0)
    yedges = np.arange(imin - 0.5, imax + 1.0, 1.0)
    ok = [c for c in cells if c.status == "ok"]
    errs = [c for c in cells if c.status != "ok"]
    every = [abs(d) for probe in panels for c in ok if (d := c.value(probe)[0]) is not None]
    vmax = max(every) if every and max(every) > 0 else 1.0
    cell_keys = {c.key for c in cells}
    ranks = [(n, c) for n, c in enumerate(sweep.leaderboard(), 1) if c.key in cell_keys]
    boxed = [(n, c) for n, c in ranks if n <= max(top, 0)]
    n_fig = 0
    for k, probe in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        strong = np.full((ni, nj), np.nan)
        weak = np.full((ni, nj), np.nan)
        floor = sweep.floor(probe)
        muted: list[tuple[int, int]] = []
        for c in ok:
            d, se = c.value(probe)
            if d is None:
                continue
            r, q = c.i - imin, c.j - jmin  # type: ignore[operator]
            if significance(d, se, floor) == "~":
                weak[r, q] = d
                muted.append((c.i, c.j))  # type: ignore[arg-type]
            else:
                strong[r, q] = d
        norm = Normalize(vmin=-vmax, vmax=vmax)
        cmap = "RdBu"
        ax.set_facecolor("white")
        # j <= i is not a block: shade it so that white means "possible but not run"
        ii, jj = np.meshgrid(np.arange(imin, imax + 1), np.arange(jmin, jmax + 1), indexing="ij")
        impossible = np.where(jj <= ii, 1.0, np.nan)
        if np.isfinite(impossible).any():
            ax.pcolormesh(xedges, yedges, np.ma.masked_invalid(impossible),
                          cmap=ListedColormap(["#dddddd"]), edgecolors="none", zorder=0)
        mesh = ax.pcolormesh(xedges, yedges, np.ma.masked_invalid(strong), cmap=cmap, norm=norm,
                             edgecolors="none")
        faded = ax.pcolormesh(xedges, yedges, np.ma.masked_invalid(weak), cmap=cmap, norm=norm,
                              alpha=0.35, edgecolors="none")
        mesh.set_gid("cells")           # gids let tests find the layers
        faded.set_gid("cells-within-noise")
        if muted:
            ax.add_collection(PatchCollection(
                [Rectangle((j - 0.5, i - 0.5), 1, 1) for i, j in muted],
                facecolor="none", edgecolor="0.55", hatch="////", linewidth=0.0))
        for c in errs:
            ax.text(c.j, c.i, "x", ha="center", va="center", color="0.45", fontsize=8)
        big = max(ni, nj) > 30           # cells too small for rank numbers: boxes only
        if sweep.search is not None and not big:
            # how many items the search scored on each config it stopped early
            for (i, j, t), (n_items, stopped) in sweep.search.cells.items():
                if stopped and t == times and imin <= i <= imax and jmin <= j <= jmax:
                    ax.text(j, i, str(n_items), ha="center", va="center", fontsize=6,
                            color="0.25", style="italic", gid=f"items-{i}-{j}")
        for n, c in boxed:
            d = c.value(probe)[0] or 0.0
            for color, lw in (("black", 1.4 if big else 2.2), ("white", 0.5 if big else 0.7)):
                ax.add_patch(Rectangle((c.j - 0.5, c.i - 0.5), 1, 1, fill=False,  # type: ignore[operator]
                                       edgecolor=color, linewidth=lw))
            if not big:
                dark = abs(d) / vmax > 0.6 and (c.i, c.j) not in muted
                ax.text(c.j, c.i, str(n), ha="center", va="center", fontsize=7,
                        color="white" if dark else "black", fontweight="bold", gid=f"rank-{n}")
        ax.set_xlim(jmin - 0.5, jmax + 0.5)
        ax.set_ylim(imax + 0.5, imin - 0.5)   # i grows downwards, like a matrix
        step = _tick_step(max(ni, nj))
        ax.set_xticks([j for j in range(jmin, jmax + 1) if j % step == 0])
        ax.set_yticks([i for i in range(imin, imax + 1) if i % step == 0])
        ax.tick_params(labelsize=8)
        ax.set_xlabel("end layer j (exclusive)", fontsize=9)
        ax.set_ylabel("start layer i", fontsize=9)
        ax.set_aspect("equal")
        ax.set_title(_panel_title(sweep, probe), fontsize=9)
        cb = fig.colorbar(mesh, ax=ax, fraction=0.046, pad=0.03)
        cb.ax.tick_params(labelsize=7)
        cb.set_label("Δ score (+ = better)", fontsize=8)
        n_fig += 1
    reps = f", block run {times + 1}x" if times != 1 else ""
    searched = ""
    if sweep.search is not None:
        searched = (f"\n{sweep.search.strategy} search: {len(sweep.search.cells)} of the blocks "
                    f"measured; italic numbers = items scored before a config was stopped early "
                    f"(of {sweep.search.of}); its colour is its delta on those items")
    fig.suptitle(f"{sweep.label}: RYS block sweep{reps} ({len(ok)} ok, {len(errs)} error)\n"
                 f"one colour scale for all panels (±{vmax:.3f}); boxed = leaderboard top {top} "
                 f"(numbers = ranks); faded+hatched = within noise; white = not run; grey = j <= i;"
                 " x = error" + searched, fontsize=10)
    return fig


def search_figure(sweep: Sweep):
    """Best-so-far against item-evaluations: each config's combined delta on the items it got
    (dots: every item; crosses: stopped early) and the best full config so far (the line)."""
    v = sweep.search
    assert v is not None
    fig = new_figure(*PARETO_IN)
    ax = fig.add_subplot(1, 1, 1)
    full = [(x, d) for x, d, _, st in v.trace if not st and d is not None]
    stop = [(x, d) for x, d, _, st in v.trace if st and d is not None]
    if full:
        ax.scatter(*zip(*full), s=18, color="#1a5fa8", zorder=3, label="measured on every item")
    if stop:
        ax.scatter(*zip(*stop), s=18, marker="x", color="0.55", zorder=2,
                   label="stopped early (delta on its items)")
    steps = [(x, b) for x, _, b, _ in v.trace if b is not None]
    if steps:
        xs, ys = zip(*steps)
        ax.step(xs, ys, where="post", color="#d95f02", linewidth=1.6, zorder=4,
                label="best full config so far")
    _delta_axes(ax, sweep, "item-evaluations spent", "combined Δ on the search items",
                f"{sweep.label}: {v.strategy} search, {len(v.cells)} configs, "
                f"{v.spent} item-evaluations")
    return fig


def _delta_axes(ax: Any, sweep: Sweep, xlabel: str, ylabel: str, title: str) -> None:
    """The frame of a combined-delta plot: the noise band around 0, labels, legend, title."""
    floor = sweep.floor(COMBINED)
    if floor is not None:
        ax.axhspan(-floor, floor, color="0.92", zorder=0, label="noise floor")
    ax.axhline(0, color="0.5", linewidth=0.7, zorder=1)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(title, fontsize=10)


def front_figure(sweep: Sweep):
    """Held-out combined delta against added layers for the configs rescored on held-out items;
    the gain-versus-size Pareto front joined and labelled."""
    rows = [r for r in confirm_rows(sweep) if r["status"] == "ok" and r["test_delta"] is not None
            and r["added_layers"] is not None]
    front = gain_size_front(sweep)
    fig = new_figure(*PARETO_IN)
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar([r["added_layers"] for r in rows], [r["test_delta"] for r in rows],
                yerr=[2 * (r["test_stderr"] or 0) for r in rows], fmt="o", color="0.6",
                markersize=4, capsize=2, zorder=2, label="held-out Δ ± 2 stderr")
    if front:
        ax.plot([r["added_layers"] for r in front], [r["test_delta"] for r in front],
                color="#d95f02", marker="o", zorder=3, label="front")
        for r in front:
            ax.annotate(r["label"], (r["added_layers"], r["test_delta"]),
                        textcoords="offset points", xytext=(5, 5), fontsize=7)
    ax.margins(0.2)
    _delta_axes(ax, sweep, "added layers", "combined Δ on held-out items",
                f"{sweep.label}: gain against size, {len(rows)} configs checked on held-out "
                f"items")
    return fig


def ablation_figure(sweep: Sweep, probes: Sequence[str]):
    """Bar chart of the delta when each layer is skipped; one panel per probe plus combined."""

    cells = sorted(_ablate_configs(sweep), key=lambda c: c.skip or 0)
    panels = _panels(sweep, probes)
    fig = new_figure(*ablation_figsize(len(panels)))
    n_layers = sweep.source_n_layers or (max(c.skip for c in cells) + 1)  # type: ignore[type-var]
    errs = [c for c in cells if c.status != "ok"]
    for k, probe in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, k + 1)
        floor = sweep.floor(probe)
        if floor is not None:
            ax.axhspan(-floor, floor, color="0.9", zorder=0)
        xs, ds, ses, colors, alphas, hatches = [], [], [], [], [], []
        for c in cells:
            if c.status != "ok":
                continue
            d, se = c.value(probe)
            if d is None:
                continue
            sig = significance(d, se, floor)
            xs.append(c.skip)
            ds.append(d)
            ses.append(se if se is not None else 0.0)
            colors.append("#2166ac" if d >= 0 else "#b2182b")
            alphas.append(0.35 if sig == "~" else 1.0)
            hatches.append("////" if sig == "~" else "")
        bars = ax.bar(xs, ds, color=colors, edgecolor="0.3", linewidth=0.4, zorder=2)
        for b, a, h in zip(bars, alphas, hatches):
            b.set_alpha(a)
            b.set_hatch(h)
        if any(s > 0 for s in ses):
            ax.errorbar(xs, ds, yerr=ses, fmt="none", ecolor="0.2", elinewidth=0.7, capsize=2,
                        zorder=3)
        for c in errs:
            ax.text(c.skip, 0, "x", ha="center", va="center", color="0.45", fontsize=9, zorder=4)
        ax.axhline(0, color="black", linewidth=0.7, zorder=1)
        ax.set_xlim(-0.7, n_layers - 0.3)
        step = _tick_step(n_layers)
        ax.set_xticks(list(range(0, n_layers, step)))
        ax.tick_params(labelsize=8)
        ax.set_ylabel("Δ score", fontsize=9)
        ax.set_title(_panel_title(sweep, probe).replace("\n", "  |  "), fontsize=9)
        if k == len(panels) - 1:
            ax.set_xlabel("skipped layer", fontsize=9)
    fig.suptitle(f"{sweep.label}: layer ablation, Δ when one layer is skipped\n"
                 "grey band = noise floor; faded+hatched = within noise; x = error", fontsize=10)
    return fig


def pareto_figure(sweep: Sweep, x: str, y: str, all_front: Sequence[Config]):
    """Scatter of two probes' deltas; the 2-D front is highlighted and joined, configs on the
    front over all probes are ringed, and the noise box around the baseline is shaded."""
    from matplotlib.patches import Rectangle

    fig = new_figure(*PARETO_IN)
    ax = fig.add_subplot(1, 1, 1)
    pts = {}
    for c in sweep.ranked_pool + ([sweep.identity] if sweep.identity else []):
        dx, dy = c.value(x)[0], c.value(y)[0]
        if dx is not None and dy is not None:
            pts[c.key] = (c, dx, dy)
    fx, fy = sweep.floor(x), sweep.floor(y)
    if fx is not None and fy is not None:
        ax.add_patch(Rectangle((-fx, -fy), 2 * fx, 2 * fy, color="0.9", zorder=0,
                               label="noise floor box"))
    ax.axhline(0, color="0.5", linewidth=0.7, zorder=1)
    ax.axvline(0, color="0.5", linewidth=0.7, zorder=1)
    cand = {k: (dx, dy) for k, (c, dx, dy) in pts.items() if c.kind != "identity"}
    front2 = pareto_front(cand) if cand else set()  # type: ignore[arg-type]
    others = [v for k, v in pts.items() if k not in front2 and v[0].kind != "identity"]
    for kinds, marker, name in ((BLOCK_KINDS, "o", "block configs"), (("ablate",), "v", "ablations")):
        sel = [v for v in others if v[0].kind in kinds]
        if sel:
            ax.scatter([v[1] for v in sel], [v[2] for v in sel], s=18, marker=marker, color="0.6",
                       zorder=2, label=name)
    rest = [v for v in others if v[0].kind not in BLOCK_KINDS + ("ablate",)]
    if rest:
        ax.scatter([v[1] for v in rest], [v[2] for v in rest], s=18, marker="D", color="0.6",
                   zorder=2, label="other configs")
    ident = [v for v in pts.values() if v[0].kind == "identity"]
    if ident:
        ax.scatter([v[1] for v in ident], [v[2] for v in ident], marker="s", s=40, color="black",
                   zorder=3, label="identity")
    fr = sorted((pts[k] for k in front2), key=lambda v: v[1])
    if fr:
        ax.plot([v[1] for v in fr], [v[2] for v in fr], color="#d95f02", linewidth=1.0, zorder=3)
        ax.scatter([v[1] for v in fr], [v[2] for v in fr], s=40, color="#d95f02", zorder=4,
                   label=f"front on {x},{y}")
    allk = {c.key for c in all_front}
    ring = [v for k, v in pts.items() if k in allk]
    for v in {id(v): v for v in fr + ring}.values():
        ax.annotate(v[0].label, (v[1], v[2]), textcoords="offset points", xytext=(5, 5),
                    fontsize=7)
    ax.margins(0.15)   # room for the labels of the extreme (front) points
    if ring:
        ax.scatter([v[1] for v in ring], [v[2] for v in ring], s=110, facecolors="none",
                   edgecolors="#1b9e77", linewidths=1.4, zorder=5, label="front over all probes")
    ax.set_xlabel(f"Δ {x}", fontsize=9)
    ax.set_ylabel(f"Δ {y}", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{sweep.label}: Pareto front, Δ {x} vs Δ {y} ({len(pts)} configs)", fontsize=10)
    return fig


@dataclass
class Plot:
    name: str       # file name
    title: str
    png: bytes
    kind: str = ""  # "heatmap", "ablation", "pareto"


def render_plots(sweep: Sweep, probes: Sequence[str], top: int,
                 pareto_axes: tuple[str, str] | None, prefix: str = "") -> list[Plot]:
    """All figures for one sweep as PNG bytes (nothing written here)."""
    from tqdm import tqdm

    jobs: list[tuple[str, str, str, Callable[[], Any]]] = []
    times_values = sorted({c.times or 1 for c in _block_configs(sweep)})
    for t in times_values:
        name = "heatmap.png" if t == 1 else f"heatmap_x{t + 1}.png"
        title = "Block sweep heatmap" + (f" (block run {t + 1}x)" if t != 1 else "")
        jobs.append((name, title, "heatmap", lambda t=t: heatmap_figure(sweep, probes, top, t)))
    if _ablate_configs(sweep):
        jobs.append(("ablation.png", "Layer ablation", "ablation",
                     lambda: ablation_figure(sweep, probes)))
    if sweep.search is not None:
        jobs.append(("search.png", "Search: best so far against item-evaluations", "search",
                     lambda: search_figure(sweep)))
    if any(r["status"] == "ok" and r["added_layers"] is not None for r in confirm_rows(sweep)):
        jobs.append(("front.png", "Held-out gain against size", "front",
                     lambda: front_figure(sweep)))
    x, y = pareto_axes or ("", "")
    if pareto_axes and any(c.kind != "identity" and c.value(x)[0] is not None
                           and c.value(y)[0] is not None for c in sweep.ranked_pool):
        front = pareto_configs(sweep, probes)
        jobs.append((f"pareto_{_slug(x)}_{_slug(y)}.png", f"Pareto front ({x} vs {y})", "pareto",
                     lambda: pareto_figure(sweep, x, y, front)))
    out = []
    for name, title, kind, make in tqdm(jobs, desc=f"plots {sweep.label}", unit="fig", disable=None,
                                  leave=False):
        out.append(Plot(prefix + name, title, figure_png(make()), kind))
    return out


def atomic_write(path: Path, data: bytes) -> None:
    """Write via a temp file + rename, so a reader (browser, --watch) never sees half a file.
    The directory was checked (check_output_*); only a plots dir whose parent exists is made."""
    path.parent.mkdir(exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)   # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1700px;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;margin-top:2em}
h3{font-size:1.05em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:right;white-space:nowrap}
th{background:#f3f3f3}td.l,th.l{text-align:left}
table.info td,table.info th{white-space:normal;text-align:left}
tr.sig-pos td{background:#e8f0fa}tr.sig-neg td{background:#fbeaea}tr.sig-noise td{color:#666}
tr.top td.rank{font-weight:700;border-left:4px solid #1a5fa8}
td.pos{color:#1a5fa8;font-weight:600}td.neg{color:#b2182b;font-weight:600}td.noise{color:#888}
img{max-width:100%;height:auto;border:1px solid #eee;margin:.5em 0}
.meta{color:#555;font-size:.9em}code{background:#f5f5f5;padding:1px 4px;word-break:break-all}
.best{background:#e8f0fa;border-left:4px solid #1a5fa8;padding:.6em 1em;margin:1em 0}
.none{background:#f6f6f6;border-left:4px solid #888;padding:.6em 1em;margin:1em 0}
@media (max-width:900px){body{margin:.5em;padding:0 .4em}table{font-size:.78em}}
"""


def _td(text: str, cls: str = "") -> str:
    return f'<td class="{cls}">{html.escape(text)}</td>' if cls else f"<td>{html.escape(text)}</td>"


_SIG_CLASS = {"+": "pos", "-": "neg", "~": "noise", "?": ""}
_ROW_CLASS = {"+": "sig-pos", "-": "sig-neg", "~": "sig-noise", "?": ""}


def html_img(p: Plot) -> str:
    b64 = base64.b64encode(p.png).decode("ascii")
    return (f"<h3>{html.escape(p.title)}</h3>"
            f'<img alt="{html.escape(p.title)}" src="data:image/png;base64,{b64}">')


def _html_best(s: Sweep) -> str:
    """The morning answer: the best candidate and how to build it, or, when nothing clears the
    noise, that plainly (the identity and the baseline are never candidates)."""
    board = s.leaderboard()
    if not board:
        return '<p class="meta">No candidate config has finished yet.</p>'
    c = board[0]
    d, se = c.value(COMBINED)
    sig = significance(d, se, s.floor(COMBINED))
    try:
        cmd = export_command(s, c)
    except Exception as e:  # export needs a layer count; the report must render anyway
        log.debug("no export command for %s: %s", c.label, e)
        cmd = None
    if sig == "+":
        out = (f'<div class="best"><b>Best config: {html.escape(c.label)}</b> '
               f"(path <code>{html.escape(c.path)}</code>), combined Δ "
               f"{html.escape(_fmt_delta(d, se))}, beyond the noise floor.")
        if cmd:
            out += f"<br>Build it: <code>{html.escape(cmd)}</code>"
        return out + "</div>"
    why = ("its significance is unknown (no noise floor and no stderr)" if sig == "?" else
           "within the noise floor" if sig == "~" else "worse than the baseline")
    out = ('<div class="none"><b>No config beats the baseline beyond the noise floor.</b> '
           f"The top candidate, {html.escape(c.label)} (path <code>{html.escape(c.path)}</code>), "
           f"is at combined Δ {html.escape(_fmt_delta(d, se))}: {why}.")
    if cmd:
        out += f"<br>To try it anyway: <code>{html.escape(cmd)}</code>"
    return out + "</div>"


def _html_info(s: Sweep, probes: Sequence[str]) -> str:
    """What was measured and how, as a small table (not terminal text)."""
    r = s.run
    rows = [("model", f"{s.model.file or s.label}" + (f" ({s.model.arch}, {s.source_n_layers} "
                                                      f"layers)" if s.source_n_layers else "")),
            ("files", ", ".join(s.files))]
    if r:
        rows += [("probes (items each)", r["suite"]), ("split, mode", f"{r['split']}, {r['mode']}"),
                 ("engine", ", ".join(r["engines"])),
                 ("llama-server", "; ".join(r["server_versions"]) or "?"),
                 ("run time", f"{r['records']} configs measured, {_duration(r['compute_s'])} of "
                              f"serving and probing" + (f", {_duration(r['wall_s'])} from first "
                                                        f"to last" if r["wall_s"] else ""))]
    else:
        rows.append(("probes", ", ".join(probes)))
    rows.append(("configs", f"{len(s.configs)} ({len(s.ok)} ok, {s.n_errors} error)"))
    base = s.baseline
    if base:
        parts = [f"{p} {sc:.4f}" for p in probes if (sc := base.score(p)) is not None]
        if base.combined is not None:
            parts.append(f"combined {base.combined:.4f}")
        rows.append(("baseline scores", ", ".join(parts)))
    if s.identity:
        d, se = s.identity.value(COMBINED)
        rows.append(("identity control", f"combined Δ {_fmt_delta(d, se)} (a reference row, "
                                         f"not a candidate)"))
    extra = []
    if s.n_truncated:
        extra.append(f"{s.n_truncated} cut-off last line(s) ignored")
    if s.n_bad_lines:
        extra.append(f"{s.n_bad_lines} unreadable line(s) skipped")
    if extra:
        rows.append(("warnings", "; ".join(extra)))
    return ('<table class="info">' + "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
        + "</table>")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, sec = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m" if h else f"{m}m {sec:02d}s" if m else f"{sec}s"


def _html_noise(s: Sweep, probes: Sequence[str]) -> str:
    if not s.noise_floor:
        why = "the reference format has no stderr" if s.fmt == "reference" else \
            "no RESULTS.summary.json and no identity record"
        return f'<h3>Noise floor</h3><p class="meta">Unknown ({why}): no significance claims.</p>'
    h = ['<h3>Noise floor</h3><table><tr><th class="l">probe</th><th>floor (±)</th></tr>']
    for p in list(probes) + [COMBINED]:
        if p in s.noise_floor:
            h.append(f"<tr>{_td(p, 'l')}{_td(f'{s.noise_floor[p]:.4f}')}</tr>")
    h.append(f'</table><p class="meta">source: {html.escape(s.noise_source)}; a delta is'
             " significant when |Δ| exceeds max(noise floor, 2·its own stderr).</p>")
    note = R.noise_note(s.noise_floor)
    if note:
        h.append(f'<p class="meta"><b>Note:</b> {html.escape(note)}.</p>')
    return "\n".join(h)


def _html_leaderboard(s: Sweep, probes: Sequence[str], top: int, max_rows: int) -> str:
    rows = leaderboard_rows(s, probes)
    h = [f"<h3>Leaderboard ({len(rows)} candidates; the top {top} marked)</h3>"
         '<p class="meta">Rows are shaded by the combined delta: blue = better than the baseline '
         "beyond noise, red = worse beyond noise, grey text = within noise.</p>"
         '<table><tr>'
         '<th>#</th><th class="l">config</th><th class="l">kind</th><th class="l">path</th>'
         + "".join(f"<th>{html.escape(p)} Δ</th>" for p in probes)
         + '<th>combined</th><th>combined Δ</th><th class="l">sig</th></tr>']
    for r in rows[:max_rows]:
        classes = [_ROW_CLASS[r["sig"]]] + (["top"] if r["rank"] <= top else [])
        cls = f' class="{" ".join(c for c in classes if c)}"'
        tds = [_td(str(r["rank"]), "rank"), _td(r["label"], "l"), _td(_kind_text(r), "l"),
               _td(r["path"], "l")]
        for p in probes:
            pp = r["probes"][p]
            tds.append(_td(_fmt_delta(pp["delta"], pp["delta_stderr"]), _SIG_CLASS[pp["sig"]]))
        comb = r["combined"]
        tds.append(_td("-" if comb is None else f"{comb:.4f}"))
        tds.append(_td(_fmt_delta(r["combined_delta"], r["combined_delta_stderr"]),
                       _SIG_CLASS[r["sig"]]))
        tds.append(_td(SIG_WORDS[r["sig"]], "l"))
        h.append(f"<tr{cls}>" + "".join(tds) + "</tr>")
    h.append("</table>")
    if len(rows) > max_rows:
        h.append(f'<p class="meta">{len(rows) - max_rows} more rows not shown '
                 "(rys-plot --format json has them all).</p>")
    return "\n".join(h)


def _html_pareto(s: Sweep, probes: Sequence[str]) -> str:
    front = pareto_configs(s, probes)
    h = [f"<h3>Pareto front over {html.escape(', '.join(probes))}</h3>"
         f'<p class="meta">{len(front)} non-dominated config(s) (no other config is at least as'
         ' good on every probe and better on one):</p><table><tr><th class="l">config</th>'
         '<th class="l">path</th>' + "".join(f"<th>{html.escape(p)} Δ</th>" for p in probes)
         + "</tr>"]
    for c in front:
        h.append("<tr>" + _td(c.label, "l") + _td(c.path, "l")
                 + "".join(_td(_fmt_delta(*c.value(p))) for p in probes) + "</tr>")
    h.append("</table>")
    return "\n".join(h)


def _html_confirm(s: Sweep) -> str:
    rows = confirm_rows(s)
    if not rows:
        return ""
    name = R.CORRECTIONS[s.correction][0]
    h = ['<h3>Held-out confirmation (test split)</h3><table><tr><th class="l">config</th>'
         '<th class="l">path</th><th>dev combined Δ</th><th>test combined Δ</th>'
         '<th>shrinkage</th><th>adjusted p</th><th class="l">verdict</th></tr>']
    for r in rows:
        shrink = "-" if r["shrinkage"] is None else f"{r['shrinkage']:+.3f}"
        h.append("<tr>" + _td(r["label"], "l") + _td(r["path"], "l")
                 + _td(_fmt_delta(r["dev_delta"], r["dev_stderr"]))
                 + _td(_fmt_delta(r["test_delta"], r["test_stderr"]), _SIG_CLASS[r["sig"]])
                 + _td(shrink) + _td(_fmt_p(r["p_adjusted"]))
                 + _td(_confirm_verdict(r), "l") + "</tr>")
    verdict = R.heldout_verdict([r["label"] for r in rows], [_check(r) for r in rows],
                                s.correction)
    h.append(f'</table><p class="meta">{html.escape(R.HELDOUT_TEST)}, {name}-corrected across '
             f"the {len(rows)} configs; holds = adjusted p &lt; {R.ALPHA} and beyond the noise "
             f"floor; shrinkage = dev Δ - test Δ (how much of the search-item gain was selection)."
             f"</p>" + (f"<p><b>{html.escape(verdict)}</b></p>" if verdict else ""))
    front = gain_size_front(s)
    if front:
        h.append('<h3>Gain against size (held-out)</h3><table><tr><th>added layers</th>'
                 '<th class="l">config</th><th>test combined Δ</th><th class="l">build it</th>'
                 "</tr>")
        for r in front:
            h.append("<tr>" + _td(f"+{r['added_layers']}") + _td(r["label"], "l")
                     + _td(_fmt_delta(r["test_delta"], r["test_stderr"]))
                     + _td(r["command"] or "-", "l") + "</tr>")
        h.append("</table>")
    return "\n".join(h)


def _html_search(s: Sweep) -> str:
    text = format_search(s)
    return f'<p class="meta">{html.escape(text)}</p>' if text else ""


def _html_errors(s: Sweep) -> str:
    errs = [c for c in s.configs if c.status == "error"]
    if not errs:
        return ""
    h = [f'<h3>Errors ({len(errs)})</h3><table><tr><th class="l">config</th>'
         '<th class="l">path</th><th class="l">error</th></tr>']
    for c in errs:
        msg = (c.error or "").strip()
        first = msg.splitlines()[0][:200] if msg else "(no error text)"
        if len(msg) > 4000:
            msg = msg[:1000] + "\n...\n" + msg[-3000:]
        h.append("<tr>" + _td(c.label, "l") + _td(c.path, "l")
                 + '<td class="l"><details><summary>' + html.escape(first) + "</summary><pre>"
                 + html.escape(msg) + "</pre></details></td></tr>")
    h.append("</table>")
    return "\n".join(h)


def html_report(sweeps: Sequence[Sweep], probes_by: dict[str, list[str]],
                plots_by: dict[str, list[Plot]], top: int, refresh_s: int | None = None,
                max_rows: int = 300) -> str:
    """One self-contained HTML page (inline CSS, base64 PNGs, no scripts, no external links):
    per model the summary, best config, noise floor, plots, leaderboard, Pareto front, errors."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    h = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">']
    if refresh_s:
        h.append(f'<meta http-equiv="refresh" content="{int(refresh_s)}">')
    h.append(f"<title>rys sweep report: {html.escape(', '.join(s.label for s in sweeps))}</title>")
    h.append(f"<style>{CSS}</style></head><body>")
    h.append(f'<h1>rys sweep report</h1><p class="meta">generated {now} by {PROG}'
             + (" (auto-refreshing while --watch runs)" if refresh_s else "") + "</p>")
    for s in sweeps:
        probes = probes_by[s.label]
        plots = plots_by.get(s.label, [])
        h.append(f"<h2>{html.escape(s.label)}</h2>")
        h.append(_html_best(s))
        h.append(_html_info(s, probes))
        h.append(_html_noise(s, probes))
        h.extend(html_img(p) for p in plots if p.kind not in ("pareto", "search", "front"))
        h.append(_html_search(s))
        h.extend(html_img(p) for p in plots if p.kind == "search")
        h.append(_html_leaderboard(s, probes, top, max_rows))
        h.append(_html_confirm(s))
        h.extend(html_img(p) for p in plots if p.kind == "front")
        if len(probes) > 1:
            h.append(_html_pareto(s, probes))
        h.extend(html_img(p) for p in plots if p.kind == "pareto")
        h.append(_html_errors(s))
    h.append("</body></html>")
    page = "\n".join(x for x in h if x)
    # wide tables scroll inside the page instead of widening it (readable at 800 px)
    return page.replace("<table", '<div class="scroll"><table').replace("</table>",
                                                                        "</table></div>")


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------

def _reference_layers(cfg: Config, n: int) -> list[int]:
    """Layer list of a reference-format config via layer_path's constructors."""
    if cfg.kind == "block" and cfg.i is not None and cfg.j is not None:
        return layer_path.duplicate(cfg.i, cfg.j, n, cfg.times or 1)
    if cfg.kind == "ablate" and cfg.skip is not None:
        return layer_path.ablate(cfg.skip, n)
    if cfg.kind == "prune" and cfg.i is not None and cfg.j is not None:
        return layer_path.ablate(list(range(cfg.i, cfg.j)), n)
    raise InputError(f"{cfg.label}: cannot build a layer path for kind {cfg.kind!r}")


def config_layer_path(sweep: Sweep, cfg: Config) -> list[int]:
    """The layer list of a config, via layer_path (the one owner of the path language)."""
    n = sweep.source_n_layers
    if not n:
        hint = "; pass --n-layers N" if cfg.fmt == "reference" else ""
        raise InputError(f"{cfg.label}: the source model's layer count is unknown{hint}")
    try:
        if cfg.fmt == "rys" and cfg.path:
            return list(layer_path.parse(cfg.path, n))
        return _reference_layers(cfg, n)
    except layer_path.LayerPathError as e:
        raise InputError(f"{cfg.label}: {e}") from None


def path_spec(sweep: Sweep, cfg: Config) -> str:
    """The spec string to give rys-path -p: the record's canonical path, else layer_path.format."""
    if cfg.fmt == "rys" and cfg.path:
        return cfg.path
    return layer_path.format(config_layer_path(sweep, cfg))


def export_command(sweep: Sweep, cfg: Config, model: str | None = None) -> str:
    """`rys-path MODEL OUT -p SPEC` that builds this config's GGUF."""
    src = model or sweep.model.path or sweep.model.file or "MODEL.gguf"
    stem = Path(src).name
    stem = stem[:-5] if stem.endswith(".gguf") else stem
    tag = _slug(cfg.label.replace("(", "").replace(")", "").replace(",", "-").replace("*", "x"))
    out = f"{stem}-{tag}.gguf"
    return f"rys-path {shlex.quote(src)} {shlex.quote(out)} -p {shlex.quote(path_spec(sweep, cfg))}"


def mergekit_config(sweep: Sweep, cfg: Config, hf_model: str) -> str:
    """mergekit passthrough YAML for a config (generated by layer_path.mergekit_yaml)."""
    fn = getattr(layer_path, "mergekit_yaml", None)
    if fn is None:
        raise InputError("layer_path.mergekit_yaml is not available in this install")
    return fn(config_layer_path(sweep, cfg), hf_model)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        prog=PROG,
        description="Tables, ASCII views, PNG heatmaps and an HTML report for rys sweep results "
                    "(rys.sweep/1 JSONL, or the reference project's sweep JSONL).")
    p.add_argument("results", nargs="+", metavar="RESULTS.jsonl",
                   help="sweep results; several files of one model are merged; a study URL "
                   "(rys-sweep --study) draws the whole shared sweep from its store")
    p.add_argument("--study-name", metavar="NAME",
                   help="which study of a store given as a URL (needed when it holds several)")
    p.add_argument("-o", "--out", type=Path, metavar="DIR",
                   help="where PNGs go (default: RESULTS.plots/ next to the first file)")
    p.add_argument("--no-plots", action="store_true", help="do not write PNG files")
    p.add_argument("--html", type=Path, metavar="OUT.html",
                   help="write one self-contained HTML report (plots embedded)")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="rows in the text table and cells marked in heatmaps (default 10; "
                        "0 = all rows, no marks)")
    p.add_argument("--probes", metavar="a,b", help="only these probes (default: all)")
    p.add_argument("--pareto", metavar="X,Y",
                   help="probes on the Pareto scatter axes (default: the first two probes)")
    p.add_argument("--format", choices=("table", "ascii", "json"), default=None,
                   help="stdout: table, ascii, or json (default: table then ascii)")
    p.add_argument("--watch", action="store_true",
                   help="re-render whenever the results grow; Ctrl-C stops (exit 0)")
    p.add_argument("--watch-interval", type=float, default=5.0, metavar="S",
                   help="seconds between file checks in --watch (default 5)")
    p.add_argument("--export", type=int, nargs="+", metavar="RANK",
                   help="print the rys-path command building the config ranked RANK (1 = best)")
    p.add_argument("--mergekit-yaml", type=Path, metavar="OUT.yaml",
                   help="with --export: also write a mergekit passthrough config "
                        "(several ranks: OUT-rankN.yaml)")
    p.add_argument("--model", metavar="HF_ID",
                   help="with --mergekit-yaml: the Hugging Face model id the slices come from")
    p.add_argument("--gguf", metavar="MODEL.gguf",
                   help="with --export: source GGUF for the command (default: the one the sweep "
                        "recorded)")
    p.add_argument("--n-layers", type=int, metavar="N",
                   help="source model layer count, for reference-format files that lack it")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


@dataclass
class Options:
    paths: list[Path]
    out_dir: Path | None
    html: Path | None
    top: int
    probes: list[str] | None
    pareto: tuple[str, str] | None
    fmt: str | None
    n_layers: int | None


def _split(s: str | None) -> list[str] | None:
    if s is None:
        return None
    items = [x.strip() for x in s.split(",") if x.strip()]
    return items or None


def _select_probes(sweep: Sweep, wanted: list[str] | None) -> list[str]:
    if not wanted:
        return list(sweep.probe_names)
    missing = [p for p in wanted if p not in sweep.probe_names]
    if missing:
        raise InputError(f"{sweep.label}: unknown probe(s) {', '.join(missing)}; have "
                         f"{', '.join(sweep.probe_names) or 'none'}")
    return list(wanted)


def _pareto_axes(probes: list[str], wanted: list[str] | None) -> tuple[str, str] | None:
    if wanted:
        if len(wanted) != 2:
            raise InputError("--pareto needs exactly two probe names, e.g. --pareto math,eq")
        bad = [p for p in wanted if p not in probes and p != COMBINED]
        if bad:
            raise InputError(f"--pareto: unknown probe(s) {', '.join(bad)}; have {', '.join(probes)}")
        return wanted[0], wanted[1]
    return (probes[0], probes[1]) if len(probes) >= 2 else None


def _say(text: str, stream: Any = None) -> None:
    """print() that survives a closed pipe (`rys-plot ... | head`): files still get written."""
    stream = stream or sys.stdout
    try:
        print(text, file=stream)
        stream.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())


def render(opts: Options, sweeps: list[Sweep], write_plots: bool,
           refresh_s: int | None = None) -> list[str]:
    """Print text views and write PNGs / HTML; returns lines describing written files."""
    info_stream = sys.stderr if opts.fmt == "json" else sys.stdout
    probes_by = {s.label: _select_probes(s, opts.probes) for s in sweeps}
    axes_by = {s.label: _pareto_axes(probes_by[s.label], list(opts.pareto) if opts.pareto else None)
               for s in sweeps}
    texts, docs = [], []
    for s in sweeps:
        probes = probes_by[s.label]
        if opts.fmt == "json":
            docs.append(sweep_json(s, probes, pareto_configs(s, probes) if len(probes) > 1 else []))
            continue
        if opts.fmt in (None, "table"):
            texts.append(format_table(s, probes, opts.top))
            if len(probes) > 1:
                front = pareto_configs(s, probes)
                names = [c.label for c in front[:15]] + ([f"... ({len(front)} in all)"]
                                                        if len(front) > 15 else [])
                texts.append(f"Pareto front over {','.join(probes)}: "
                             + (", ".join(names) or "(none)"))
        if opts.fmt in (None, "ascii"):
            a = format_ascii(s, probes)
            if a:
                texts.append(a)
    _say(json.dumps({"sweeps": docs}, indent=1) if opts.fmt == "json" else "\n\n".join(texts))
    written: list[str] = []
    need_png = write_plots or opts.html is not None
    plots_by: dict[str, list[Plot]] = {}
    if need_png:
        multi = len(sweeps) > 1
        for s in sweeps:
            plots_by[s.label] = render_plots(s, probes_by[s.label], opts.top, axes_by[s.label],
                                             prefix=f"{_slug(s.label)}_" if multi else "")
    if write_plots:
        out_dir = opts.out_dir or default_out_dir(opts.paths[0])
        for plots in plots_by.values():
            for p in plots:
                atomic_write(out_dir / p.name, p.png)
                written.append(str(out_dir / p.name))
    if opts.html is not None:
        page = html_report(sweeps, probes_by, plots_by, opts.top, refresh_s)
        atomic_write(opts.html, page.encode("utf-8"))
        written.append(str(opts.html))
    if written:
        _say("wrote: " + ", ".join(written), info_stream)
    return written


def check_output_file(path: Path, option: str) -> None:
    """InputError unless ``path`` can be written as a file, without creating anything: its
    directory must exist (as rys-path requires; a typo must not create /nonexistent/)."""
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory; name a file")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"{option} {path}: the directory {parent} does not exist")
    why = cli.unwritable(parent)
    if why or (path.exists() and not os.access(path, os.W_OK)):
        raise InputError(f"{option} {path} cannot be written: {why or 'permission denied'}")


def check_output_dir(path: Path, option: str) -> None:
    """InputError unless plots can be written into ``path`` (it may be created, its parent
    must exist)."""
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is not a directory")
    where = path if path.exists() else path.parent if str(path.parent) else Path(".")
    if not where.is_dir():
        raise InputError(f"{option} {path}: the directory {where} does not exist")
    why = cli.unwritable(where)
    if why:
        raise InputError(f"{option} {path} cannot be written: {why}")


def _export(args: argparse.Namespace, sweeps: list[Sweep]) -> None:
    if len(sweeps) != 1:
        raise InputError("--export needs the results of one model (got "
                         f"{len(sweeps)}: {', '.join(s.label for s in sweeps)})")
    s = sweeps[0]
    board = s.leaderboard()
    if args.mergekit_yaml and not args.model:
        raise InputError("--mergekit-yaml needs --model HF_ID (the Hugging Face model id)")
    for rank in args.export:
        if not 1 <= rank <= len(board):
            raise InputError(f"--export {rank}: ranks go from 1 to {len(board)}")
    jobs = []
    for rank in args.export:
        cfg = board[rank - 1]
        cmd = export_command(s, cfg, args.gguf)
        yaml_path = None
        text = None
        if args.mergekit_yaml:
            yaml_path = args.mergekit_yaml if len(args.export) == 1 else \
                args.mergekit_yaml.with_name(f"{args.mergekit_yaml.stem}-rank{rank}"
                                             f"{args.mergekit_yaml.suffix or '.yaml'}")
            text = mergekit_config(s, cfg, args.model)
        jobs.append((rank, cfg, cmd, yaml_path, text))
    for rank, cfg, cmd, yaml_path, text in jobs:  # everything validated: now write
        d = cfg.rank_value
        print(f"# rank {rank}: {cfg.label}  combined Δ "
              f"{'?' if d is None else f'{d:+.4f}'}  path {cfg.path}")
        print(cmd)
        if yaml_path is not None and text is not None:
            atomic_write(yaml_path, text.encode("utf-8"))
            print(f"# wrote mergekit config {yaml_path}")


def _watch(opts: Options, args: argparse.Namespace) -> int:
    """Re-render whenever an input (or its summary) changes size or mtime; Ctrl-C exits 0."""
    watched = list(opts.paths) + [summary_path_for(p) for p in opts.paths]
    interval = max(0.05, args.watch_interval)
    refresh = max(2, int(round(interval * 2)))

    def stamp() -> list[tuple[int, int] | None]:
        out = []
        for p in watched:
            try:
                st = p.stat()
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return out

    last = None
    try:
        while True:
            cur = stamp()
            if cur != last:
                last = cur
                try:
                    sweeps = load_sweeps(opts.paths, opts.n_layers, allow_empty=True)
                    if sweeps:
                        print(f"\n--- {datetime.now().strftime('%H:%M:%S')} ---",
                              file=sys.stderr if opts.fmt == "json" else sys.stdout)
                        render(opts, sweeps, not args.no_plots, refresh)
                    else:
                        print("waiting for the first record ...", file=sys.stderr)
                    sys.stdout.flush()
                except InputError as e:
                    print(f"{PROG}: {e} (still watching)", file=sys.stderr)
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def main(argv: Sequence[str] | None = None) -> int:
    """rys-plot. Bad input: one line on stderr, exit 2, nothing written."""
    return cli.run(PROG, _main, argv)


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format=f"{PROG}: %(levelname)s: %(message)s")
    if args.top < 0:
        raise InputError("--top must be >= 0")
    if args.watch_interval <= 0:
        raise InputError("--watch-interval must be > 0")
    if (args.mergekit_yaml or args.model) and not args.export:
        raise InputError("--mergekit-yaml/--model go with --export RANK")
    with contextlib.ExitStack() as stack:
        return _main_on(args, _inputs(args, stack))


def _inputs(args: argparse.Namespace, stack: contextlib.ExitStack) -> list[Path]:
    """The results files; a study URL is exported (whole sweep, every process) to a temporary
    results file, and its plots go to ./<study>.plots unless --out says otherwise."""
    out = []
    for text in args.results:
        if "://" in text:
            from rys import study as ST  # optuna loads only for a store

            try:
                ST.check_url(text)
                name = ST.resolve_study(text, args.study_name)
                tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rys-plot-")))
                path = ST.export(text, name, tmp / f"{name}.jsonl")
            except ST.StudyError as exc:
                raise InputError(str(exc)) from None
            if args.out is None and not args.export:
                args.out = Path(f"{path.stem}.plots")
            out.append(path)
        else:
            p = Path(text)
            if not p.is_file():
                raise InputError(f"{p}: no such file")
            out.append(p)
    return out


def _main_on(args: argparse.Namespace, paths: list[Path]) -> int:
    opts = Options(paths=paths, out_dir=args.out, html=args.html, top=args.top,
                   probes=_split(args.probes),
                   pareto=tuple(_split(args.pareto) or ()) or None,  # type: ignore[arg-type]
                   fmt=args.format, n_layers=args.n_layers)
    if opts.pareto is not None and len(opts.pareto) != 2:
        raise InputError("--pareto needs exactly two probe names, e.g. --pareto math,eq")
    # every output is checked before anything is printed or written
    if opts.html is not None and not args.export:
        check_output_file(opts.html, "--html")
    if not args.no_plots and not args.export:
        check_output_dir(opts.out_dir or default_out_dir(opts.paths[0]),
                         "--out" if opts.out_dir else "the plots directory (--out)")
    if args.mergekit_yaml is not None:
        check_output_file(args.mergekit_yaml, "--mergekit-yaml")
    if args.watch:
        if args.export:
            raise InputError("--watch and --export do not go together")
        return _watch(opts, args)
    sweeps = load_sweeps(opts.paths, opts.n_layers)
    if args.export:
        _export(args, sweeps)
        return 0
    render(opts, sweeps, not args.no_plots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
