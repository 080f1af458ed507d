"""Probe files: loading, validation, content hashing, built-in lookup, suites.

A probe file is JSON (one object with "items") or JSONL (first line the header, each further
line one item). Built-in probes are files in probes/data/ loaded by exactly this code, like a
user's custom file. Schema: docs/probes.md, "Probe file schema".
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from . import mathgen
from .scorers import SCORERS, get_scorer

log = logging.getLogger(__name__)

__all__ = [
    "ProbeError",
    "Item",
    "Settings",
    "Probe",
    "load_probe",
    "get_probe",
    "list_probes",
    "builtin_names",
    "content_hash",
    "SuiteEntry",
    "parse_suite",
    "default_suite",
    "DATA_DIR",
    "MODES",
    "SPLITS",
]

DATA_DIR = Path(__file__).resolve().parent / "data"
MODES = ("generate", "logprob")
SPLITS = ("dev", "test")
# Bump when the prompt construction in runner.py changes: it is part of every probe's hash.
PROMPT_FORMAT_VERSION = 1
HASH_CHARS = 16


class ProbeError(ValueError):
    """A bad probe file, unknown probe or scorer, or bad suite spec; str() is one clear line."""


@dataclass(frozen=True)
class Item:
    """One probe item. `prompt` is None for chat-only items, which carry `messages`."""

    id: str
    split: str
    prompt: str | None
    reference: dict
    meta: dict = field(default_factory=dict)
    messages: list[dict] | None = None

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"id": self.id, "split": self.split}
        if self.prompt is not None:
            d["prompt"] = self.prompt
        if self.messages is not None:
            d["messages"] = self.messages
        d["reference"] = self.reference
        d["meta"] = self.meta
        return d


@dataclass(frozen=True)
class Settings:
    """Request settings of a probe. Unknown keys in the file are kept in `extra` (and hashed)."""

    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    instruction: str = ""
    fewshot: tuple[dict, ...] = ()
    answer_prefix: str = "Answer:"
    question_prefix: str = "Question:"
    n_probs: int = 40
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {
            "max_tokens": self.max_tokens,
            "stop": list(self.stop),
            "instruction": self.instruction,
            "fewshot": [dict(s) for s in self.fewshot],
            "answer_prefix": self.answer_prefix,
            "question_prefix": self.question_prefix,
            "n_probs": self.n_probs,
        }
        d.update(self.extra)
        return d


@dataclass
class Probe:
    """A loaded probe: data plus a named scorer. `hash` identifies its content (see docs)."""

    name: str
    version: int
    description: str
    scorer: str
    modes: tuple[str, ...]
    settings: Settings
    items: list[Item]
    source: str
    generator: dict | None = None
    hash: str = ""
    builtin: bool = False

    def split_items(self, split: str) -> list[Item]:
        return [it for it in self.items if it.split == split]

    def counts(self) -> dict[str, int]:
        return {s: len(self.split_items(s)) for s in SPLITS}

    def select(self, split: str = "dev", n: int | None = None, offset: int = 0,
               item_ids: Iterable[str] | None = None) -> list[Item]:
        """Items to run: by ids (in the given order), or `n` items of `split` from `offset`.

        A generated probe (math) produces more items on demand when n exceeds the stored count;
        they come from the same seed and generator version the hash covers.
        """
        if split not in SPLITS:
            raise ProbeError(f"probe {self.name!r}: unknown split {split!r} (use dev or test)")
        if item_ids is not None:
            by_id = {it.id: it for it in self.items}
            ids = list(item_ids)
            missing = [i for i in ids if i not in by_id]
            if missing:
                raise ProbeError(f"probe {self.name!r}: unknown item ids {missing[:5]}")
            return [by_id[i] for i in ids]
        pool = self.split_items(split)
        if n is not None and n < 0:
            raise ProbeError(f"probe {self.name!r}: n must be >= 0, got {n}")
        end = len(pool) if n is None else offset + n
        if end > len(pool) and self.generator is not None:
            spec = mathgen.MathSpec.from_dict(self.generator)
            start = spec.n_dev if split == "dev" else spec.n_test
            extra = mathgen.generate_items(spec, split, end - len(pool), start=start)
            pool = pool + [_parse_item(d, self.name, i) for i, d in enumerate(extra, len(pool))]
        if not pool:
            raise ProbeError(f"probe {self.name!r} has no {split} items")
        return pool[offset:end]

    def summary(self) -> dict:
        """One listing row: name, version, hash, item counts, modes, scorer, source."""
        return {
            "name": self.name,
            "version": self.version,
            "hash": self.hash,
            "scorer": self.scorer,
            "modes": list(self.modes),
            "n_dev": self.counts()["dev"],
            "n_test": self.counts()["test"],
            "generated": self.generator is not None,
            "description": self.description,
            "source": self.source,
        }


# --------------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------------


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(scorer: str, settings: Settings, items: list[Item],
                 generator: dict | None = None) -> str:
    """sha256 (first 16 hex) of canonical JSON over scorer name + version, the prompt format
    version, settings with defaults filled in, every item, and the generator spec if any."""
    payload = {
        "prompt_format": PROMPT_FORMAT_VERSION,
        "scorer": scorer,
        "scorer_version": get_scorer(scorer).version,
        "settings": settings.to_dict(),
        "items": [it.to_dict() for it in items],
        "generator": generator,
    }
    return hashlib.sha256(canonical_json(payload)).hexdigest()[:HASH_CHARS]


# --------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_settings(raw: Any, where: str) -> Settings:
    if raw is None:
        return Settings()
    if not isinstance(raw, dict):
        raise ProbeError(f"{where}: 'settings' must be an object")
    s = dict(raw)
    kw: dict[str, Any] = {}
    if "max_tokens" in s:
        v = s.pop("max_tokens")
        if not _is_int(v) or v < 1:
            raise ProbeError(f"{where}: settings.max_tokens must be a positive integer")
        kw["max_tokens"] = v
    if "stop" in s:
        v = s.pop("stop")
        if isinstance(v, str):
            v = [v]
        if not isinstance(v, list) or not all(isinstance(x, str) and x for x in v):
            raise ProbeError(f"{where}: settings.stop must be a list of non-empty strings")
        kw["stop"] = tuple(v)
    for key in ("instruction", "answer_prefix", "question_prefix"):
        if key in s:
            v = s.pop(key)
            if not isinstance(v, str):
                raise ProbeError(f"{where}: settings.{key} must be a string")
            kw[key] = v
    if "fewshot" in s:
        v = s.pop("fewshot")
        if not isinstance(v, list):
            raise ProbeError(f"{where}: settings.fewshot must be a list")
        shots = []
        for i, shot in enumerate(v):
            if not isinstance(shot, dict) or not isinstance(shot.get("prompt"), str) or \
                    not isinstance(shot.get("answer"), (str, int, float)):
                raise ProbeError(f"{where}: settings.fewshot[{i}] needs 'prompt' and 'answer'")
            shots.append({"prompt": shot["prompt"], "answer": str(shot["answer"])})
        kw["fewshot"] = tuple(shots)
    if "n_probs" in s:
        v = s.pop("n_probs")
        if not _is_int(v) or not 1 <= v <= 1000:
            raise ProbeError(f"{where}: settings.n_probs must be an integer 1-1000")
        kw["n_probs"] = v
    return Settings(extra=s, **kw)


def _parse_item(raw: Any, where: str, index: int) -> Item:
    if not isinstance(raw, dict):
        raise ProbeError(f"{where}: item {index} is not an object")
    iid = raw.get("id")
    label = f"{where}: item {index}" + (f" (id {iid!r})" if iid is not None else "")
    if iid is None:
        raise ProbeError(f"{label}: missing field 'id'")
    if not isinstance(iid, (str, int)) or isinstance(iid, bool):
        raise ProbeError(f"{label}: 'id' must be a string")
    split = raw.get("split", "dev")
    if split not in SPLITS:
        raise ProbeError(f"{label}: split must be 'dev' or 'test', got {split!r}")
    prompt, messages = raw.get("prompt"), raw.get("messages")
    if prompt is None and messages is None:
        raise ProbeError(f"{label}: missing field 'prompt' (or 'messages')")
    if prompt is not None and not isinstance(prompt, str):
        raise ProbeError(f"{label}: 'prompt' must be a string")
    if messages is not None:
        if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise ProbeError(f"{label}: 'messages' must be a list of {{role, content}} objects")
    if "reference" not in raw:
        raise ProbeError(f"{label}: missing field 'reference'")
    ref = raw["reference"]
    if not isinstance(ref, dict):
        ref = {"answer": ref}  # lenient: a bare answer value
    meta = raw.get("meta") or {}
    if not isinstance(meta, dict):
        raise ProbeError(f"{label}: 'meta' must be an object")
    return Item(id=str(iid), split=split, prompt=prompt, reference=ref, meta=meta,
                messages=messages)


def _read_file(path: Path) -> tuple[dict, list]:
    """(header, raw items) from a JSON or JSONL file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ProbeError(f"{path}: cannot read: {exc.strerror or exc}") from None
    stripped = text.lstrip()
    if not stripped:
        raise ProbeError(f"{path}: empty file")
    is_jsonl = path.suffix.lower() == ".jsonl"
    if not is_jsonl:
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            # A .json file holding JSON lines is accepted too.
            first = stripped.splitlines()[0]
            try:
                json.loads(first)
                is_jsonl = True
            except json.JSONDecodeError:
                raise ProbeError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        else:
            if not isinstance(obj, dict):
                raise ProbeError(f"{path}: top level must be an object (the probe header)")
            items = obj.get("items", [])
            header = {k: v for k, v in obj.items() if k != "items"}
            if not isinstance(items, list):
                raise ProbeError(f"{path}: 'items' must be a list")
            return header, items
    header: dict | None = None
    items: list = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ProbeError(f"{path}: line {lineno}: invalid JSON: {exc.msg}") from None
        if header is None:
            if not isinstance(obj, dict):
                raise ProbeError(f"{path}: line {lineno}: the first line must be the header object")
            header = {k: v for k, v in obj.items() if k != "items"}
            items.extend(obj.get("items") or [])
        else:
            items.append(obj)
    assert header is not None
    return header, items


_HEADER_KEYS = {"name", "version", "description", "scorer", "modes", "settings", "generator", "items"}


def probe_from_dict(header: dict, raw_items: list, source: str = "<dict>",
                    builtin: bool = False) -> Probe:
    """Validate and build a Probe from a parsed header and raw item list."""
    where = source
    for key in ("name", "scorer"):
        if key not in header:
            raise ProbeError(f"{where}: missing field {key!r} in the probe header")
    name = header["name"]
    if not isinstance(name, str) or not name or any(c in name for c in ",:@/\\ "):
        raise ProbeError(f"{where}: 'name' must be a non-empty string without , : @ / or spaces")
    where = f"{source} (probe {name!r})"
    version = header.get("version", 1)
    if not _is_int(version):
        raise ProbeError(f"{where}: 'version' must be an integer")
    scorer_name = header["scorer"]
    if scorer_name not in SCORERS:
        raise ProbeError(f"{where}: unknown scorer {scorer_name!r} (known: {', '.join(sorted(SCORERS))})")
    scorer = SCORERS[scorer_name]
    default_modes = ["generate", "logprob"] if scorer.logprob else ["generate"]
    modes = header.get("modes", default_modes)
    if isinstance(modes, str):
        modes = [modes]
    if not isinstance(modes, list) or not modes or any(m not in MODES for m in modes):
        raise ProbeError(f"{where}: 'modes' must be a non-empty list of {list(MODES)}")
    if "logprob" in modes and not scorer.logprob:
        raise ProbeError(f"{where}: scorer {scorer_name!r} does not support logprob mode")
    settings = _parse_settings(header.get("settings"), where)
    description = header.get("description", "")
    if not isinstance(description, str):
        raise ProbeError(f"{where}: 'description' must be a string")

    unknown = sorted(set(header) - _HEADER_KEYS)
    if unknown:
        log.debug("%s: ignoring unknown header fields %s", where, unknown)

    generator = header.get("generator")
    items_raw = list(raw_items)
    gen_dict = None
    if generator is not None:
        if not isinstance(generator, dict) or generator.get("kind") != "math":
            raise ProbeError(f"{where}: unknown generator (only {{\"kind\": \"math\", ...}} exists)")
        try:
            spec = mathgen.MathSpec.from_dict(generator)
        except ValueError as exc:
            raise ProbeError(f"{where}: generator: {exc}") from None
        gen_dict = spec.to_dict()
        items_raw = (mathgen.generate_items(spec, "dev", spec.n_dev)
                     + mathgen.generate_items(spec, "test", spec.n_test) + items_raw)
    if not items_raw:
        raise ProbeError(f"{where}: no items (give 'items' or a 'generator')")

    items = [_parse_item(r, where, i) for i, r in enumerate(items_raw)]
    seen: set[str] = set()
    for i, it in enumerate(items):
        if it.id in seen:
            raise ProbeError(f"{where}: item {i}: duplicate id {it.id!r}")
        seen.add(it.id)
        if it.prompt is None and "logprob" in modes:
            raise ProbeError(f"{where}: item {i} (id {it.id!r}): chat-only 'messages' items "
                             "cannot be used in logprob mode; give a 'prompt'")
        try:
            scorer.validate_item(it)
        except ValueError as exc:
            raise ProbeError(f"{where}: item {i} (id {it.id!r}): {exc}") from None

    probe = Probe(name=name, version=version, description=description, scorer=scorer_name,
                  modes=tuple(modes), settings=settings, items=items, source=source,
                  generator=gen_dict, builtin=builtin)
    probe.hash = content_hash(scorer_name, settings, items, gen_dict)
    return probe


_CACHE: dict[tuple[str, int, int], Probe] = {}


def load_probe(path: str | os.PathLike) -> Probe:
    """Load and validate a probe file (.json or .jsonl). Raises ProbeError with one clear line."""
    p = Path(path)
    if not p.is_file():
        raise ProbeError(f"{p}: no such probe file")
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _CACHE:
        builtin = p.resolve().parent == DATA_DIR
        header, items = _read_file(p)
        _CACHE[key] = probe_from_dict(header, items, source=str(p), builtin=builtin)
    return copy.copy(_CACHE[key])


def _builtin_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    if DATA_DIR.is_dir():
        for f in sorted(DATA_DIR.iterdir()):
            if f.suffix in (".json", ".jsonl") and f.is_file():
                out.setdefault(f.stem, f)
    return out


def builtin_names() -> list[str]:
    return sorted(_builtin_files())


def get_probe(name_or_path: str | os.PathLike) -> Probe:
    """A built-in probe by name ("math") or a probe file by path."""
    s = str(name_or_path)
    files = _builtin_files()
    if s in files:
        return load_probe(files[s])
    p = Path(s)
    if p.suffix.lower() in (".json", ".jsonl") or os.sep in s or "/" in s:
        if not p.is_file():
            raise ProbeError(f"{s}: no such probe file")
        return load_probe(p)
    raise ProbeError(f"unknown probe {s!r} (built-in: {', '.join(files) or 'none'}; "
                     "or give a .json/.jsonl file path)")


def list_probes() -> list[Probe]:
    """All built-in probes, sorted by name. A broken data file raises ProbeError."""
    return [load_probe(f) for f in _builtin_files().values()]


# --------------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SuiteEntry:
    """One probe of a suite: which probe (built-in name or file path), split, how many items
    (None = all items of the split)."""

    probe: str
    split: str = "dev"
    n: int | None = None

    def __str__(self) -> str:
        s = self.probe + (f":{self.n}" if self.n is not None else "")
        return s + (f"@{self.split}" if self.split != "dev" else "")


# Measured on the demo model (Gemma 3 270M base, 2 CPU cores, 4 slots); see docs/probes.md, "Suites and
# the default suite".
DEFAULT_SUITE_SPEC = "math:12,reasoning:16,eq:8,instruction:8"


def parse_suite(spec: str) -> list[SuiteEntry]:
    """Parse "math:16,eq:8@test,reasoning,my_probe.jsonl:20" into suite entries.

    Each comma-separated part is NAME[:N][@SPLIT]; NAME is a built-in probe or a file path;
    without N the whole split is used; "default" expands to the default suite.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ProbeError("empty probe suite spec")
    out: list[SuiteEntry] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if part == "default":
            out.extend(default_suite())
            continue
        split = "dev"
        if "@" in part:
            part, split = part.rsplit("@", 1)
            if split not in SPLITS:
                raise ProbeError(f"suite entry {part!r}: unknown split {split!r} (use dev or test)")
        n: int | None = None
        if ":" in part:
            head, tail = part.rsplit(":", 1)
            if tail.isdigit():
                part, n = head, int(tail)
                if n == 0:
                    raise ProbeError(f"suite entry {part!r}: item count must be positive")
            elif not tail or tail.lstrip("-").isdigit():
                raise ProbeError(f"suite entry {part}:{tail}: item count must be a positive integer")
        if not part:
            raise ProbeError(f"bad suite entry in {spec!r}")
        out.append(SuiteEntry(part, split, n))
    if not out:
        raise ProbeError("empty probe suite spec")
    names = [e.probe for e in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ProbeError(f"probe suite lists {', '.join(dup)} more than once")
    return out


def default_suite() -> list[SuiteEntry]:
    """The default sweep suite: small enough for well under a minute per config on the demo
    model on 2 CPU cores (see docs/probes.md, "Suites and the default suite", for the measurement)."""
    return parse_suite(DEFAULT_SUITE_SPEC)
