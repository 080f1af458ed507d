"""A recorded full scan, and the replay engine that serves it instead of a server.

A *scan* is every config of a sweep scored item by item, on the search (dev) items and the held-out
(test) items: what a search strategy could ever ask for. It is made once from rys-sweep results files
(records plus their items sidecars) and kept as one gzipped JSON document (``rys.scan/1``)::

    {"schema": "rys.scan/1", "model": {...ModelInfo}, "made_with": "...",
     "settings": {"mode": "logprob", "engine": "virtual", "probes": {name: content hash}, ...},
     "items": {"dev": {probe: [item id, ...]}, "test": {...}},
     "configs": {"original": {"kind": "baseline", "block": null,
                              "scores": {"dev": {probe: [score or null, ...]}, "test": {...}}},
                 "0..5,3..17": {"kind": "grid", "block": {"i": 3, "j": 6, "times": 1}, ...}}}

``configs`` is keyed like a record's key path (``original`` for the unmodified model, the canonical
layer path otherwise); ``scores`` are aligned with ``items`` (null: the item failed or was not run).

The :class:`ReplayEngine` serves a scan through the engine interface: ``serve(path)`` "switches" to a
recorded config and its probe jobs are answered from the recorded item scores, so rys-sweep's whole
machinery (plans, halving, the adaptive search, records, summaries, rys-plot) runs offline,
deterministically, in seconds (``rys-sweep --replay SCAN``). Deltas, noise floor and significance are
computed by the same code as for a live sweep (``probes.paired_delta``, ``sweep_record``).

``python -m rys.replay make -o SCAN.json.gz DEV.jsonl TEST.jsonl`` builds a scan from finished sweeps.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from rys import cli, layer_path
from rys import engine as E
from rys import probes as P
from rys import sweep_record as R
from rys.sweep_record import Block, Delta

log = logging.getLogger("rys.replay")

SCHEMA = "rys.scan/1"
ENGINE_REPLAY = "replay"
ORIGINAL = "original"  # the key path of the unmodified model (sweep.Config.key_path)
PROG = "python -m rys.replay"


class ScanError(ValueError):
    """A scan file that cannot be read or built (bad input: one line)."""


@dataclass
class ScanConfig:
    """One recorded config: what it is and its item scores per split and probe."""

    kind: str
    block: Block | None
    scores: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)


@dataclass
class Scan:
    """A full scan (see the module docstring)."""

    model: R.ModelInfo
    settings: dict[str, Any]
    items: dict[str, dict[str, list[str]]]
    configs: dict[str, ScanConfig]
    made_with: str = ""

    # ------------------------------------------------------------------ files
    @classmethod
    def load(cls, path: str | os.PathLike) -> "Scan":
        """Read a scan file (gzipped or plain JSON); ScanError names what is wrong."""
        p = Path(path)
        try:
            raw = p.read_bytes()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            obj = json.loads(raw)
        except FileNotFoundError:
            raise ScanError(f"scan file not found: {p}") from None
        except (OSError, ValueError, EOFError) as exc:
            raise ScanError(f"cannot read {p} as a scan: {exc}") from None
        if not isinstance(obj, dict) or obj.get("schema") != SCHEMA:
            raise ScanError(f"{p} is not a rys scan (schema {SCHEMA})")
        try:
            configs = {k: ScanConfig(str(v["kind"]),
                                     Block.from_json(v["block"]) if v.get("block") else None,
                                     {s: {n: list(xs) for n, xs in by.items()}
                                      for s, by in v["scores"].items()})
                       for k, v in obj["configs"].items()}
            model = R._load_dataclass(R.ModelInfo, obj["model"], "model")
            items = {s: {n: [str(i) for i in ids] for n, ids in by.items()}
                     for s, by in obj["items"].items()}
        except (KeyError, TypeError, AttributeError, R.RecordError) as exc:
            raise ScanError(f"{p}: malformed scan ({exc})") from None
        scan = cls(model, dict(obj.get("settings") or {}), items, configs,
                   str(obj.get("made_with") or ""))
        scan._check(str(p))
        return scan

    def _check(self, where: str) -> None:
        if ORIGINAL not in self.configs:
            raise ScanError(f"{where}: the scan has no baseline (config {ORIGINAL!r})")
        for key, cfg in self.configs.items():
            for split, by in cfg.scores.items():
                for probe, xs in by.items():
                    ids = self.items.get(split, {}).get(probe)
                    if ids is None or len(ids) != len(xs):
                        raise ScanError(f"{where}: config {key}: {split}/{probe} scores do not "
                                        f"match the scan's items")

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "model": R.to_json(self.model), "made_with": self.made_with,
                "settings": self.settings, "items": self.items,
                "configs": {k: {"kind": c.kind, "block": R.to_json(c.block), "scores": c.scores}
                            for k, c in self.configs.items()}}

    def save(self, path: str | os.PathLike) -> None:
        """Write gzipped JSON (mtime 0: the same scan gives the same bytes), atomically."""
        p = Path(path)
        data = json.dumps(self.to_json(), separators=(",", ":"), allow_nan=False).encode()
        tmp = p.with_name(p.name + ".partial")
        with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            f.write(data)
        os.replace(tmp, p)

    # ------------------------------------------------------------------ reading
    @property
    def splits(self) -> list[str]:
        return list(self.items)

    @property
    def probe_names(self) -> list[str]:
        return list(next(iter(self.items.values()), {}))

    @property
    def paths(self) -> list[str]:
        """Key paths of the candidate configs (everything but the baseline)."""
        return [k for k in self.configs if k != ORIGINAL]

    def item_results(self, key_path: str, split: str, probe: str) -> list[P.ItemResult]:
        """The recorded items of one config as ItemResults (failed items as errors)."""
        ids = self.items[split][probe]
        scores = self.configs[key_path].scores[split][probe]
        return [P.ItemResult(i, s) if s is not None else
                P.ItemResult(i, None, error="failed in the recorded scan")
                for i, s in zip(ids, scores)]

    def delta(self, key_path: str, split: str,
              weights: Mapping[str, float] | None = None) -> Delta | None:
        """Combined delta of a config against the baseline on all items of a split."""
        return self.paired(ORIGINAL, key_path, split, weights)

    def paired(self, a: str, b: str, split: str,
               weights: Mapping[str, float] | None = None) -> Delta | None:
        """Combined delta of config ``b`` against config ``a`` on all items of a split: per probe
        paired over items (probes.paired_delta), combined with the sweep's weights."""
        deltas = {}
        for probe in self.items[split]:
            d, se = P.paired_delta(self.item_results(a, split, probe),
                                   self.item_results(b, split, probe))
            deltas[probe] = Delta(d, se)
        w = dict(weights) if weights else {p: 1.0 for p in self.items[split]}
        return R.combined_delta(deltas, w)

    def block_deltas(self, split: str, weights: Mapping[str, float] | None = None
                     ) -> dict[tuple[int, int, int], Delta]:
        """``{(i, j, times): combined delta}`` of every RYS block in the scan, on a split."""
        out = {}
        for key, cfg in self.configs.items():
            b = cfg.block
            if key != ORIGINAL and b is not None and b.is_block and cfg.kind != "identity":
                d = self.delta(key, split, weights)
                if d is not None:
                    out[(int(b.i), int(b.j), int(b.times or 1))] = d  # type: ignore[arg-type]
        return out

    # ------------------------------------------------------------------ building
    @classmethod
    def from_results(cls, results: Sequence[str | os.PathLike], made_with: str = "") -> "Scan":
        """A scan from finished sweeps: every full (stage ``sweep``) OK record of the files, with
        its items sidecar; one file per split (e.g. a dev sweep and a ``--split test`` sweep of
        the same plan). The same config must have every probe's every item on every split."""
        items: dict[str, dict[str, list[str]]] = {}
        configs: dict[str, ScanConfig] = {}
        model: R.ModelInfo | None = None
        settings: dict[str, Any] = {}
        for path in results:
            store = R.results_paths(path)
            recs = [r for r in R.latest_by_key(R.read_records(path).records).values()
                    if r.ok and r.stage == R.Stage.SWEEP and r.kind != R.Kind.CONFIRM]
            if not recs:
                raise ScanError(f"{path}: no finished sweep records")
            sidecar = _read_sidecar(store["items"])
            for rec in recs:
                if model is None:
                    model = rec.model
                    settings = {"mode": rec.settings.mode, "engine": rec.settings.engine,
                                "probes": dict(rec.settings.probes), "no_think":
                                rec.settings.no_think, "server": rec.server.version}
                elif rec.model.fingerprint != model.fingerprint:
                    raise ScanError(f"{path}: records of two models")
                if dict(rec.settings.probes) != settings["probes"]:
                    raise ScanError(f"{path}: records made with other probe versions")
                split = rec.settings.split
                got = sidecar.get(rec.key)
                if got is None:
                    raise ScanError(f"{path}: no items for record {rec.key} ({rec.path})")
                key = ORIGINAL if rec.kind == R.Kind.BASELINE else rec.path
                cfg = configs.setdefault(key, ScanConfig(str(rec.kind), rec.block))
                by_probe = items.setdefault(split, {})
                for probe, its in got.items():
                    ids = by_probe.setdefault(probe, [str(it["id"]) for it in its])
                    score = {str(it["id"]): it.get("score") for it in its}
                    if set(score) != set(ids):
                        raise ScanError(f"{path}: record {rec.key} scored other {split} items of "
                                        f"{probe} than the others")
                    cfg.scores.setdefault(split, {})[probe] = [score[i] for i in ids]
        if model is None:
            raise ScanError("no results files given")
        complete = {k: c for k, c in configs.items()
                    if all(set(c.scores.get(s, {})) == set(items[s]) for s in items)}
        dropped = len(configs) - len(complete)
        if dropped:
            log.warning("%d config(s) lack a split or a probe and are left out of the scan", dropped)
        scan = cls(model, settings, items, complete, made_with)
        scan._check("the new scan")
        return scan


def _read_sidecar(path: Path) -> dict[str, dict[str, list[dict]]]:
    """Items per record key (the last sidecar line per key wins, as for records)."""
    out = {}
    for obj in R.read_jsonl(path).objects:
        if "key" in obj and isinstance(obj.get("probes"), dict):
            out[str(obj["key"])] = obj["probes"]
    return out


# =========================================================================== the replay engine


@dataclass
class ScanSource:
    """What the runner needs of a source model, taken from a scan (no GGUF file is read)."""

    scan_file: Path
    model: R.ModelInfo
    has_chat_template: bool = False

    @property
    def paths(self) -> list[str]:
        return [self.model.path or self.model.file or str(self.scan_file)]

    @property
    def n_layers(self) -> int:
        return int(self.model.n_layers)

    @property
    def arch(self) -> str:
        return self.model.arch

    @property
    def fingerprint(self) -> str:
        return self.model.fingerprint

    @property
    def file_size(self) -> int:
        return int(self.model.size)

    def estimate_size(self, path: Sequence[int]) -> int:
        return self.file_size * len(path) // max(1, self.n_layers)


class _ReplayServed(E.Served):
    """A recorded config answering probe jobs from its item scores."""

    def __init__(self, scan: Scan, key_path: str) -> None:
        super().__init__(url=f"replay:{key_path}", slots=1, server=None,  # type: ignore[arg-type]
                         answers=self.answer)
        self.scan, self.key_path = scan, key_path

    def check_alive(self, grace: float = 0.0) -> None:
        return None

    def answer(self, jobs: Mapping[str, P.ProbeJob], **kw: Any) -> dict[str, P.ProbeResult]:
        out = {}
        for name, job in jobs.items():
            if job.split not in self.scan.items or name not in self.scan.items[job.split]:
                raise E.EngineError(f"the scan has no {job.split} items of probe {name}")
            recorded = {r.id: r for r in self.scan.item_results(self.key_path, job.split, name)}
            missing = [it.id for it in job.items if it.id not in recorded]
            if missing:
                raise E.EngineError(f"the scan has no {job.split} item {missing[0]} of {name}")
            out[name] = P.aggregate(job.probe, job.split, job.mode, bool(kw.get("chat")),
                                    [recorded[it.id] for it in job.items])
        return out


class _ReplayServing(E.Serving):
    def __init__(self, engine: "ReplayEngine", key_path: str, log_path: Path) -> None:
        super().__init__(log_path)
        self.engine, self.key_path = engine, key_path

    def _enter(self, stack: contextlib.ExitStack) -> E.Served:
        self.server_args = ["--replay", str(self.engine.scan_file)]
        if self.key_path not in self.engine.scan.configs:
            raise E.EngineError(f"config {self.key_path} is not in the recorded scan "
                                f"{self.engine.scan_file.name}")
        return _ReplayServed(self.engine.scan, self.key_path)


class ReplayEngine(E.Engine):
    """Serves the configs of a recorded scan (see the module docstring)."""

    name = ENGINE_REPLAY

    def __init__(self, scan: Scan, scan_file: str | os.PathLike, **kw: Any) -> None:
        self.scan, self.scan_file = scan, Path(scan_file)
        settings = E.ServerSettings(binary=f"replay:{self.scan_file}", parallel=1)
        super().__init__(ScanSource(self.scan_file, scan.model), settings,  # type: ignore[arg-type]
                         **kw)

    def version(self) -> str:
        return f"replay of {self.scan_file.name} (recorded with {self.scan.settings.get('server', '?')})"

    def check(self, path: Sequence[int]) -> None:
        spec = layer_path.format(path)
        if spec not in self.scan.configs and list(path) != layer_path.identity(
                self.source.n_layers):
            raise E.EngineError(f"{spec} is not in the recorded scan")

    def serve(self, path: Sequence[int] | None, log_path: str | os.PathLike) -> E.Serving:
        key = ORIGINAL if path is None else layer_path.format(path)
        if path is not None and list(path) == layer_path.identity(self.source.n_layers) \
                and key not in self.scan.configs:
            key = ORIGINAL  # a scan without an identity record: re-serving = the same scores
        return _ReplayServing(self, key, Path(log_path))


# =========================================================================== command


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rys.replay make -o SCAN RESULTS...``: build a scan from finished sweeps."""
    return cli.run(PROG, _main, argv, usage_errors=(ScanError,))


def _main(argv: Sequence[str]) -> int:
    ap = cli.ArgumentParser(prog=PROG, description="Build a replayable scan from finished "
                            "rys-sweep results (one file per split: a dev and a test sweep).")
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="build a scan", allow_abbrev=False)
    mk.add_argument("results", nargs="+", metavar="RESULTS.jsonl")
    mk.add_argument("-o", "--out", required=True, metavar="SCAN.json.gz")
    mk.add_argument("--made-with", default="", help="how the sweeps were run (kept in the scan)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        raise ScanError(f"{out} exists; a scan is never overwritten (remove it or pick another -o)")
    scan = Scan.from_results(args.results, args.made_with)
    scan.save(out)
    n = {s: sum(len(v) for v in by.values()) for s, by in scan.items.items()}
    print(f"{out}: {len(scan.paths)} configs + baseline, items {n}, "
          f"{out.stat().st_size / 1024:.0f} KiB")
    return 0


def iter_block_rows(scan: Scan, split: str) -> Iterable[tuple[tuple[int, int, int], Delta]]:
    """Blocks of a scan, best combined delta first (for tables and benches)."""
    rows = scan.block_deltas(split)
    return sorted(rows.items(), key=lambda kv: -(kv[1].delta or 0.0))


if __name__ == "__main__":
    sys.exit(main())
