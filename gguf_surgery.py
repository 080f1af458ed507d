"""Read a GGUF once, write it following a layer path: the project's only GGUF writer.

`rewrite(source, target, path)` writes a model whose forward pass runs original layer
``path[p]`` at position ``p``: ``blk.N.*`` tensors are renumbered (duplicated layers are physical
copies, since llama.cpp wants tensor data contiguous and in order), ``{arch}.block_count`` and
every per-layer metadata array follow the path, and structure that llama.cpp derives from a
layer's *index* is either written out per layer (sliding-window and recurrent-layer arrays) or,
where no per-layer key exists, checked: a path that would change it is refused. Those rules
live in the tables `ARCH_RULES`, `STRIDE_KEYS`, `PREFIX_KEYS` and `FIXED_KEYS` (researched
against llama.cpp b11434, ``src/models/*.cpp`` and ``llama_model_base::load_swa_pattern``).

Parsing is our own: the header is walked with `struct` over an mmap, each metadata entry keeps
its raw encoded bytes (re-emitted verbatim unless changed), and only what is needed is decoded,
so a 262k-token vocabulary costs milliseconds instead of GGUFReader's seconds. Tensor data is
copied with ``os.copy_file_range`` (falling back to ``sendfile``, then buffered copies), merging
runs of tensors that stay adjacent, so an identity rewrite is one kernel-side copy.

Safety: the source is never overwritten, output goes to ``.NAME.partial-PID`` in the target
directory and is renamed into place only when complete, free space is checked first (tmpfs
fills silently), and on any error or Ctrl-C no partial file is left.

Commands: ``rys-path`` (`path_main`) and ``rys-surgery`` (`main`). Manual: docs/layer-paths.md.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import hashlib
import itertools
import json
import logging
import math
import mmap
import os
import re
import shlex
import stat
import struct
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf
from gguf import (
    GGML_QUANT_SIZES,
    GGUF_DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    GGUF_VERSION,
    GGMLQuantizationType,
    GGUFValueType,
    Keys,
)

from rys import cli
from rys import layer_path
from rys.layer_path import LayerPathError

log = logging.getLogger("rys.gguf_surgery")

__all__ = [
    "SurgeryError",
    "SourceModel",
    "rewrite",
    "check_path",
    "verify",
    "default_tmp_dir",
    "scratch_dir",
    "temporary_rewrite",
    "ARCH_RULES",
    "main",
]


class SurgeryError(Exception):
    """A model or target we cannot (or must not) rewrite; the message is one line."""


def _k(section: type, attr: str, fallback: str) -> str:
    """A gguf key template from gguf-py's constants, with the spelling used by llama.cpp
    b11434 as fallback for older gguf-py releases that lack it."""
    return getattr(section, attr, fallback)


# key templates ("{arch}" filled per model)
K_ARCH = Keys.General.ARCHITECTURE
K_NAME = Keys.General.NAME
K_TYPE = _k(Keys.General, "TYPE", "general.type")
K_ALIGNMENT = Keys.General.ALIGNMENT
K_CHAT_TEMPLATE = Keys.Tokenizer.CHAT_TEMPLATE
K_BLOCK_COUNT = Keys.LLM.BLOCK_COUNT
K_SWA = Keys.Attention.SLIDING_WINDOW
K_SWA_PATTERN = _k(Keys.Attention, "SLIDING_WINDOW_PATTERN", "{arch}.attention.sliding_window_pattern")
K_RECURRENT = _k(Keys.Attention, "RECURRENT_LAYERS", "{arch}.attention.recurrent_layers")
K_FULL_ATTN_INTERVAL = _k(Keys.LLM, "FULL_ATTENTION_INTERVAL", "{arch}.full_attention_interval")
K_NEXTN = _k(Keys.LLM, "NEXTN_PREDICT_LAYERS", "{arch}.nextn_predict_layers")
K_DENSE_LEAD = _k(Keys.LLM, "LEADING_DENSE_BLOCK_COUNT", "{arch}.leading_dense_block_count")
K_HASH_LAYERS = _k(Keys.LLM, "HASH_LAYER_COUNT", "{arch}.hash_layer_count")
K_MOE_STEP = _k(Keys.LLM, "INTERLEAVE_MOE_LAYER_STEP", "{arch}.interleave_moe_layer_step")
K_MOE_EVERY = _k(Keys.LLM, "MOE_EVERY_N_LAYERS", "{arch}.moe_every_n_layers")
K_RESCALE_EVERY = _k(Keys.LLM, "RESCALE_EVERY_N_LAYERS", "{arch}.rescale_every_n_layers")
K_ROPE_SECTIONS = _k(Keys.Rope, "DIMENSION_SECTIONS", "{arch}.rope.dimension_sections")
SPLIT_PREFIX = "split."

# provenance keys written into every output
K_RYS_PATH = "rys.layer_path"
K_RYS_SOURCE = "rys.source"
K_RYS_SOURCE_BLOCKS = "rys.source_block_count"

VT = GGUFValueType
_SCALAR_FMT: dict[int, str] = {
    VT.UINT8: "B", VT.INT8: "b", VT.UINT16: "H", VT.INT16: "h", VT.UINT32: "I", VT.INT32: "i",
    VT.FLOAT32: "f", VT.BOOL: "?", VT.UINT64: "Q", VT.INT64: "q", VT.FLOAT64: "d",
}
_SCALAR_SIZE: dict[int, int] = {t: struct.calcsize("<" + f) for t, f in _SCALAR_FMT.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MAX_DIMS = getattr(gguf, "GGML_MAX_DIMS", 4)
_BLK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
_SHARD_RE = re.compile(r"^(?P<stem>.*)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
_RYS_NAME_RE = re.compile(r" \[rys [^\]]*\]$")
_COPY_CHUNK = 64 << 20
_AUTO_PROGRESS_BYTES = 1 << 30


# ============================================================================================
# index-derived structure: the rules, as data


@dataclass(frozen=True)
class SwaRule:
    """llama.cpp picks sliding-window layers by index: ``load_swa_pattern(ml, period,
    dense_first)`` reads ``{arch}.attention.sliding_window_pattern`` as a per-layer array
    (true = sliding window) or else as a period, else uses `period`. We always write the array.

    `when`: the loader only consults the pattern under this condition (see `_condition`)."""

    period: int
    dense_first: bool = False
    when: str = "always"


@dataclass(frozen=True)
class StrideRule:
    """A layer class llama.cpp derives from the index with no per-layer key: layer ``il`` is
    special iff ``il % period == residue % period``. `period` is the int, or the metadata key
    holding it (template), or ``"n_layer"`` (the model's own layer count)."""

    what: str
    period: int | str
    residue: int
    when: str = "always"


@dataclass(frozen=True)
class ArchRules:
    swa: SwaRule | None = None
    #: default ``full_attention_interval``; recurrent/attention kinds are then written as the
    #: per-layer ``{arch}.attention.recurrent_layers`` array (llama.cpp prefers it when present)
    recurrent_interval: int | None = None
    strides: tuple[StrideRule, ...] = ()
    #: block counts on which llama.cpp switches hyperparameters (e.g. the 27B attention scale):
    #: a path may not move the model into or out of one of them
    count_sensitive: frozenset[int] = frozenset()
    #: layer structure baked in beyond per-layer metadata: only the identity path is allowed
    fixed: str | None = None


_NOPE4 = StrideRule("NoPE (no RoPE) layers, every 4th from index 3", 4, -1)
ARCH_RULES: dict[str, ArchRules] = {
    # sliding-window patterns (llama.cpp default period, dense_first, condition)
    "gemma2": ArchRules(swa=SwaRule(2), count_sensitive=frozenset({46})),
    "gemma3": ArchRules(swa=SwaRule(6, when="sliding_window>0"), count_sensitive=frozenset({62})),
    "gemma-embedding": ArchRules(swa=SwaRule(6)),
    "cohere2": ArchRules(swa=SwaRule(4)),
    "cohere2moe": ArchRules(swa=SwaRule(4, dense_first=True)),
    "exaone4": ArchRules(swa=SwaRule(4, when="block_count==64"), count_sensitive=frozenset({64})),
    "exaone-moe": ArchRules(swa=SwaRule(4)),
    "mellum": ArchRules(swa=SwaRule(4, when="sliding_window>0")),
    "modern-bert": ArchRules(swa=SwaRule(3, dense_first=True, when="sliding_window>0")),
    "muse-glimmer": ArchRules(swa=SwaRule(4)),
    "olmo2": ArchRules(swa=SwaRule(4, when="sliding_window>0")),
    "gpt-oss": ArchRules(swa=SwaRule(2)),
    "plamo3": ArchRules(swa=SwaRule(8, when="sliding_window>0")),
    "laguna": ArchRules(swa=SwaRule(4, dense_first=True, when="sliding_window>0")),
    "afmoe": ArchRules(swa=SwaRule(4, when="sliding_window>0"), strides=(_NOPE4,)),
    "smallthinker": ArchRules(
        swa=SwaRule(4, dense_first=True, when="sliding_window>0"),
        strides=(StrideRule("NoPE layers, every 4th from index 0", 4, 0, when="sliding_window>0"),),
    ),
    "llama4": ArchRules(
        swa=SwaRule(4, when="sliding_window!=0"),
        strides=(
            dataclasses.replace(_NOPE4, when="sliding_window!=0"),
            StrideRule("the NoPE last layer", "n_layer", -1, when="sliding_window==0"),
        ),
    ),
    "smollm3": ArchRules(strides=(_NOPE4,)),
    # hybrid recurrent/attention: kinds written as {arch}.attention.recurrent_layers
    "qwen3next": ArchRules(recurrent_interval=4),
    "qwen35": ArchRules(recurrent_interval=4),
    "qwen35moe": ArchRules(recurrent_interval=4),
    "qwen4exp": ArchRules(recurrent_interval=4),
    "minimax-01": ArchRules(recurrent_interval=8),
    # block counts that switch behaviour
    "baichuan": ArchRules(count_sensitive=frozenset({32, 40})),  # 7B RoPE vs 13B ALiBi
    "deepseek2": ArchRules(count_sensitive=frozenset({26, 27, 47, 48})),  # "lite" variants
    # structure tied to the layer count or to index lists
    "gemma3n": ArchRules(fixed="per-layer embedding tensors are sized by the layer count and "
                         "layers from index 20 share KV caches by index"),
    "gemma4": ArchRules(fixed="per-layer embeddings and shared-KV layers are tied to layer indices"),
    "gemma4-assistant": ArchRules(fixed="a draft model tied to its target's layers"),
    "t5": ArchRules(fixed="encoder/decoder blocks (enc.blk/dec.blk) are not supported"),
    "t5encoder": ArchRules(fixed="encoder blocks (enc.blk) are not supported"),
    "wavtokenizer-dec": ArchRules(fixed="posnet/convnext blocks are indexed separately"),
    "hrm-text": ArchRules(fixed="layers are grouped in stacks by index"),
    "eagle3": ArchRules(fixed="a draft model tied to its target's layers"),
    "dflash": ArchRules(fixed="a draft model tied to its target's layers"),
}

#: metadata keys (any arch) that define a layer class by stride: (residue, what). llama.cpp
#: b11434: interleave_moe_layer_step and rescale_every_n_layers mark (il+1) % n == 0,
#: moe_every_n_layers marks il % n == 1; full_attention_interval marks (il+1) % n == 0 as
#: attention (for archs without a recurrent_layers reader).
STRIDE_KEYS: dict[str, tuple[int, str]] = {
    K_MOE_STEP: (-1, "MoE layers (interleave_moe_layer_step)"),
    K_MOE_EVERY: (1, "MoE layers (moe_every_n_layers)"),
    K_RESCALE_EVERY: (-1, "rescaled layers (rescale_every_n_layers)"),
    K_FULL_ATTN_INTERVAL: (-1, "full-attention layers (full_attention_interval)"),
}

#: keys giving a count of leading layers of a different kind: the path's layers of that kind
#: must come first; the count is rewritten.
PREFIX_KEYS: dict[str, str] = {
    K_DENSE_LEAD: "dense FFN layers (leading_dense_block_count)",
    K_HASH_LAYERS: "hash-routed layers (hash_layer_count)",
}

#: keys that tie structure to layer indices in ways we do not rewrite: when present (and
#: non-zero) only the identity path is allowed.
FIXED_KEYS: tuple[str, ...] = (
    _k(Keys.LLM, "DECODER_BLOCK_COUNT", "{arch}.decoder_block_count"),
    _k(Keys.Attention, "SHARED_KV_LAYERS", "{arch}.attention.shared_kv_layers"),
    "{arch}.ple.layers",
    "{arch}.hrm.layers_per_stack",
    "{arch}.posnet.block_count",
    "{arch}.convnext.block_count",
    "{arch}.decision.block_count",
    "{arch}.decision.routing_block_count",
    "{arch}.embedding_length_per_layer_input",
)

#: arrays under {arch}. that are never per-layer even when their length equals the layer count
NOT_PER_LAYER: tuple[str, ...] = (
    K_ROPE_SECTIONS,
    _k(Keys.LLM, "TARGET_LAYERS", "{arch}.target_layers"),
    "{arch}.ple.layers",
)


# ============================================================================================
# parsing


@dataclass
class KVEntry:
    """One metadata entry: its raw encoded bytes (key, type and value) and lazy decoding."""

    key: str
    vtype: int
    raw: bytes
    value_off: int  # offset of the value inside `raw`
    array_type: int | None = None
    array_len: int | None = None
    _value: Any = field(default=None, repr=False)
    _decoded: bool = field(default=False, repr=False)

    @property
    def value(self) -> Any:
        if not self._decoded:
            self._value, _ = _decode_value(self.raw, self.value_off, self.vtype)
            self._decoded = True
        return self._value


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order (ne[0] first)
    ggml_type: int
    offset: int  # relative to its shard's data section
    nbytes: int
    shard: int

    @property
    def type_name(self) -> str:
        try:
            return GGMLQuantizationType(self.ggml_type).name
        except ValueError:
            return str(self.ggml_type)


class _Truncated(Exception):
    pass


def _string(buf: Any, pos: int) -> tuple[str, int]:
    (n,) = _U64.unpack_from(buf, pos)
    pos += 8
    end = pos + n
    if end > len(buf):
        raise _Truncated
    return bytes(buf[pos:end]).decode("utf-8", errors="replace"), end


def _skip_value(buf: Any, pos: int, vtype: int) -> int:
    """Position just past a value of type `vtype` at `pos` (lengths walked, nothing decoded)."""
    size = _SCALAR_SIZE.get(vtype)
    if size is not None:
        return pos + size
    if vtype == VT.STRING:
        (n,) = _U64.unpack_from(buf, pos)
        return pos + 8 + n
    if vtype == VT.ARRAY:
        (etype,) = _U32.unpack_from(buf, pos)
        (count,) = _U64.unpack_from(buf, pos + 4)
        pos += 12
        esize = _SCALAR_SIZE.get(etype)
        if esize is not None:
            return pos + count * esize
        if etype == VT.STRING:
            unpack = _U64.unpack_from
            for _ in range(count):
                pos += 8 + unpack(buf, pos)[0]
            return pos
        if etype == VT.ARRAY:
            for _ in range(count):
                pos = _skip_value(buf, pos, VT.ARRAY)
            return pos
        raise SurgeryError(f"unknown GGUF array element type {etype}")
    raise SurgeryError(f"unknown GGUF value type {vtype}")


def _decode_value(buf: Any, pos: int, vtype: int) -> tuple[Any, int]:
    fmt = _SCALAR_FMT.get(vtype)
    if fmt is not None:
        return struct.unpack_from("<" + fmt, buf, pos)[0], pos + _SCALAR_SIZE[vtype]
    if vtype == VT.STRING:
        return _string(buf, pos)
    if vtype == VT.ARRAY:
        (etype,) = _U32.unpack_from(buf, pos)
        (count,) = _U64.unpack_from(buf, pos + 4)
        pos += 12
        efmt = _SCALAR_FMT.get(etype)
        if efmt is not None:
            vals = list(struct.unpack_from(f"<{count}{efmt}", buf, pos))
            return vals, pos + count * _SCALAR_SIZE[etype]
        out = []
        for _ in range(count):
            v, pos = _decode_value(buf, pos, etype)
            out.append(v)
        return out, pos
    raise SurgeryError(f"unknown GGUF value type {vtype}")


def _encode_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return _U64.pack(len(b)) + b


def _encode_value(vtype: int, value: Any, array_type: int | None = None) -> bytes:
    fmt = _SCALAR_FMT.get(vtype)
    if fmt is not None:
        return struct.pack("<" + fmt, value)
    if vtype == VT.STRING:
        return _encode_string(value)
    if vtype == VT.ARRAY:
        assert array_type is not None
        head = _U32.pack(array_type) + _U64.pack(len(value))
        efmt = _SCALAR_FMT.get(array_type)
        if efmt is not None:
            return head + struct.pack(f"<{len(value)}{efmt}", *value)
        return head + b"".join(_encode_value(array_type, v) for v in value)
    raise SurgeryError(f"cannot encode GGUF value type {vtype}")


def _make_kv(key: str, vtype: int, value: Any, array_type: int | None = None) -> KVEntry:
    head = _encode_string(key) + _U32.pack(vtype)
    raw = head + _encode_value(vtype, value, array_type)
    return KVEntry(key, vtype, raw, len(head), array_type,
                   len(value) if vtype == VT.ARRAY else None, value, True)


@dataclass
class _ParsedFile:
    path: Path
    size: int
    version: int
    kv: list[KVEntry]
    tensors: list[TensorInfo]
    alignment: int
    data_start: int
    header_digest: bytes


def _tensor_nbytes(name: str, shape: tuple[int, ...], ggml_type: int, where: str) -> int:
    try:
        qtype = GGMLQuantizationType(ggml_type)
        block, tsize = GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise SurgeryError(f"{where}: tensor {name!r} has unknown ggml type {ggml_type}") from None
    if shape and shape[0] % block:
        raise SurgeryError(f"{where}: tensor {name!r} row of {shape[0]} is not a multiple of "
                           f"the {qtype.name} block size {block}")
    return math.prod(shape) // block * tsize


def _parse_file(path: Path, shard: int) -> _ParsedFile:
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 24:
                raise SurgeryError(f"{path}: not a GGUF file (only {size} bytes)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                return _parse_buffer(mm, path, size, shard)
    except IsADirectoryError:
        raise SurgeryError(f"{path}: is a directory, not a GGUF file") from None
    except FileNotFoundError:
        raise SurgeryError(f"{path}: no such file") from None
    except PermissionError:
        raise SurgeryError(f"{path}: permission denied") from None


def _parse_buffer(buf: Any, path: Path, size: int, shard: int) -> _ParsedFile:
    (magic,) = _U32.unpack_from(buf, 0)
    if magic != GGUF_MAGIC:
        raise SurgeryError(f"{path}: not a GGUF file (bad magic {bytes(buf[0:4])!r})")
    (version,) = _U32.unpack_from(buf, 4)
    if version not in (2, 3):
        if version & 0xFFFF == 0 and version >> 16 in (2, 3):
            raise SurgeryError(f"{path}: big-endian GGUF is not supported")
        raise SurgeryError(f"{path}: unsupported GGUF version {version} (need 2 or 3)")
    (n_tensors,) = _U64.unpack_from(buf, 8)
    (n_kv,) = _U64.unpack_from(buf, 16)
    pos = 24
    kvs: list[KVEntry] = []
    tensors: list[TensorInfo] = []
    alignment = GGUF_DEFAULT_ALIGNMENT
    try:
        for _ in range(n_kv):
            start = pos
            key, pos = _string(buf, pos)
            (vtype,) = _U32.unpack_from(buf, pos)
            pos += 4
            voff = pos - start
            atype = alen = None
            if vtype == VT.ARRAY:
                (atype,) = _U32.unpack_from(buf, pos)
                (alen,) = _U64.unpack_from(buf, pos + 4)
            pos = _skip_value(buf, pos, vtype)
            if pos > size:
                raise _Truncated
            kvs.append(KVEntry(key, vtype, bytes(buf[start:pos]), voff, atype, alen))
            if key == K_ALIGNMENT:
                alignment = int(kvs[-1].value)
                if alignment <= 0 or alignment & (alignment - 1):
                    raise SurgeryError(f"{path}: bad {K_ALIGNMENT} {alignment}")
        for _ in range(n_tensors):
            name, pos = _string(buf, pos)
            (n_dims,) = _U32.unpack_from(buf, pos)
            pos += 4
            if n_dims > _MAX_DIMS:
                raise SurgeryError(f"{path}: tensor {name!r} has {n_dims} dimensions")
            shape = struct.unpack_from(f"<{n_dims}Q", buf, pos)
            pos += 8 * n_dims
            (ttype,) = _U32.unpack_from(buf, pos)
            (offset,) = _U64.unpack_from(buf, pos + 4)
            pos += 12
            nbytes = _tensor_nbytes(name, shape, ttype, str(path))
            tensors.append(TensorInfo(name, tuple(shape), ttype, offset, nbytes, shard))
    except (struct.error, _Truncated):
        raise SurgeryError(f"{path}: truncated GGUF header") from None
    except SurgeryError as e:
        if str(e).startswith(str(path)):
            raise
        raise SurgeryError(f"{path}: {e}") from None
    if pos > size:
        raise SurgeryError(f"{path}: truncated GGUF header")
    data_start = _align(pos, alignment)
    for t in tensors:
        end = data_start + t.offset + t.nbytes
        if end > size:
            raise SurgeryError(f"{path}: truncated GGUF: tensor {t.name!r} data ends at byte "
                               f"{end} but the file has {size}")
    digest = hashlib.sha256(buf[:pos]).digest()
    return _ParsedFile(path, size, version, kvs, tensors, alignment, data_start, digest)


def _align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def _find_shards(path: Path) -> list[Path]:
    m = _SHARD_RE.match(path.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    stem = m.group("stem")
    shards = [path.with_name(f"{stem}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    missing = [s.name for s in shards if not s.exists()]
    if missing:
        raise SurgeryError(f"{path}: split model is missing shard(s) {', '.join(missing)}")
    return shards


# ============================================================================================
# the source model


@dataclass(repr=False)
class SourceModel:
    """A parsed GGUF (all shards of a split model): parse once, rewrite many times."""

    paths: list[Path]
    arch: str
    n_layers: int
    file_size: int
    name: str | None
    has_chat_template: bool
    fingerprint: str
    alignment: int
    kv: list[KVEntry]
    tensors: list[TensorInfo]
    data_starts: list[int]
    layer_tensors: dict[int, list[int]]  # layer -> indices into `tensors`, original order

    # -------------------------------------------------------------------- construction
    @classmethod
    def open_arg(cls, path: str | os.PathLike[str]) -> SourceModel:
        """``open`` for a command's MODEL argument: a missing or unreadable file is bad input
        (cli.UsageError, one line), the same words in every command."""
        p = Path(path)
        if not p.is_file():
            raise cli.UsageError(f"model file not found: {p}")
        try:
            return cls.open(p)
        except (SurgeryError, OSError, ValueError) as exc:
            raise cli.UsageError(f"cannot read {p} as a GGUF model: {exc}") from None

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> SourceModel:
        p = Path(path)
        shards = _find_shards(p)
        parsed = [_parse_file(s, i) for i, s in enumerate(shards)]
        first = parsed[0]
        kv_map = {e.key: e for e in first.kv}
        split_count = kv_map.get(Keys.Split.LLM_KV_SPLIT_COUNT)
        if split_count is not None and int(split_count.value) != len(shards):
            raise SurgeryError(f"{p}: {Keys.Split.LLM_KV_SPLIT_COUNT}={split_count.value} but "
                               f"{len(shards)} shard file(s) found (name it *-00001-of-0000N.gguf)")
        if len({pf.alignment for pf in parsed}) > 1:
            raise SurgeryError(f"{p}: shards disagree on {K_ALIGNMENT}")
        kv = [e for e in first.kv if not e.key.startswith(SPLIT_PREFIX)]
        kv_map = {e.key: e for e in kv}
        arch_e = kv_map.get(K_ARCH)
        if arch_e is None or arch_e.vtype != VT.STRING:
            raise SurgeryError(f"{p}: no {K_ARCH} (not a model GGUF)")
        arch = arch_e.value
        gtype = kv_map.get(K_TYPE)
        if gtype is not None and gtype.vtype == VT.STRING and gtype.value not in ("model", ""):
            raise SurgeryError(f"{p}: {K_TYPE} is {gtype.value!r}, not a model")
        bc_key = K_BLOCK_COUNT.format(arch=arch)
        bc = kv_map.get(bc_key)
        if bc is None or bc.vtype not in _SCALAR_FMT:
            raise SurgeryError(f"{p}: no {bc_key} (not a layered language model)")
        n_layers = int(bc.value)
        if n_layers < 1:
            raise SurgeryError(f"{p}: {bc_key} is {n_layers}")
        tensors = [t for pf in parsed for t in pf.tensors]
        names = set()
        layer_tensors: dict[int, list[int]] = {}
        for idx, t in enumerate(tensors):
            if t.name in names:
                raise SurgeryError(f"{p}: duplicate tensor {t.name!r}")
            names.add(t.name)
            m = _BLK_RE.match(t.name)
            if m:
                layer = int(m.group(1))
                if layer >= n_layers:
                    raise SurgeryError(f"{p}: tensor {t.name!r} is beyond {bc_key}={n_layers}")
                layer_tensors.setdefault(layer, []).append(idx)
        name_e = kv_map.get(K_NAME)
        h = hashlib.sha256()
        for pf in parsed:
            h.update(pf.header_digest)
            h.update(pf.size.to_bytes(8, "little"))
        return cls(
            paths=[pf.path for pf in parsed],
            arch=arch,
            n_layers=n_layers,
            file_size=sum(pf.size for pf in parsed),
            name=name_e.value if name_e is not None and name_e.vtype == VT.STRING else None,
            has_chat_template=K_CHAT_TEMPLATE in kv_map,
            fingerprint=h.hexdigest()[:32],
            alignment=first.alignment,
            kv=kv,
            tensors=tensors,
            data_starts=[pf.data_start for pf in parsed],
            layer_tensors=layer_tensors,
        )

    def __repr__(self) -> str:
        more = f" +{len(self.paths) - 1} shards" if len(self.paths) > 1 else ""
        return f"SourceModel({str(self.paths[0])!r}{more}, arch={self.arch!r}, n_layers={self.n_layers})"

    # -------------------------------------------------------------------- queries
    def _kv(self, key: str) -> KVEntry | None:
        for e in self.kv:
            if e.key == key:
                return e
        return None

    def metadata(self, key: str, default: Any = None) -> Any:
        """Decoded value of a metadata key ("{arch}" is filled in), or `default`."""
        e = self._kv(key.format(arch=self.arch))
        return default if e is None else e.value

    def layer_bytes(self, i: int) -> int:
        """Bytes of tensor data in layer i."""
        if not 0 <= i < self.n_layers:
            raise LayerPathError(f"layer {i} out of range 0..{self.n_layers - 1}")
        return sum(self.tensors[k].nbytes for k in self.layer_tensors.get(i, []))

    @property
    def n_nextn(self) -> int:
        return int(self.metadata(K_NEXTN, 0) or 0)

    def per_layer_keys(self) -> list[str]:
        """Numeric/bool arrays under ``{arch}.`` with one entry per layer (all layers, or the
        main layers without trailing NextN/MTP ones): these are remapped through the path."""
        prefix = self.arch + "."
        skip = {k.format(arch=self.arch) for k in NOT_PER_LAYER}
        lengths = {self.n_layers, self.n_layers - self.n_nextn}
        return [
            e.key for e in self.kv
            if e.vtype == VT.ARRAY and e.key.startswith(prefix) and e.key not in skip
            and e.array_type in _SCALAR_FMT and e.array_len in lengths
        ]

    def rules(self) -> ArchRules:
        return ARCH_RULES.get(self.arch, ArchRules())

    def estimate_size(self, layer_path: Sequence[int]) -> int:
        """Exact size in bytes of the file `rewrite` would write for this path."""
        return _plan(self, layer_path).total_size

    def kinds(self) -> dict[str, list[bool]]:
        """Index-derived per-layer kinds of the source (for inspect): name -> flag per layer."""
        out: dict[str, list[bool]] = {}
        swa = _source_swa(self)
        if swa is not None:
            out["sliding_window"] = swa
        rec = _source_recurrent(self)
        if rec is not None:
            out["recurrent"] = rec
        for rule in _active_strides(self):
            period = _stride_period(self, rule.period, self.n_layers - self.n_nextn)
            if period:
                out[rule.what] = [i % period == rule.residue % period
                                  for i in range(self.n_layers)]
        return out


# ============================================================================================
# rules -> checks and metadata changes


def _condition(src: SourceModel, when: str) -> bool:
    if when == "always":
        return True
    swa = src.metadata(K_SWA)
    if when == "sliding_window>0":
        return swa is not None and swa > 0
    if when == "sliding_window!=0":
        return swa is None or swa != 0
    if when == "sliding_window==0":
        return swa is not None and swa == 0
    m = re.fullmatch(r"block_count==(\d+)", when)
    if m:
        return src.n_layers - src.n_nextn == int(m.group(1))
    raise AssertionError(f"unknown rule condition {when!r}")


def _source_swa(src: SourceModel) -> list[bool] | None:
    """Sliding-window flag per source layer as llama.cpp computes it, or None when the arch
    has no index-derived pattern (or it is not in use)."""
    rule = src.rules().swa
    if rule is None or not _condition(src, rule.when):
        return None
    e = src._kv(K_SWA_PATTERN.format(arch=src.arch))
    if e is not None and e.vtype == VT.ARRAY:
        return None  # already per-layer: remapped like any per-layer array
    period = int(e.value) if e is not None else rule.period
    n_main = src.n_layers - src.n_nextn
    out = []
    for il in range(src.n_layers):
        if il >= n_main:
            out.append(False)
        elif rule.dense_first:
            out.append(period == 0 or il % period != 0)
        else:
            out.append(period == 0 or il % period < period - 1)
    return out


def _source_recurrent(src: SourceModel) -> list[bool] | None:
    interval = src.rules().recurrent_interval
    if interval is None or src._kv(K_RECURRENT.format(arch=src.arch)) is not None:
        return None
    interval = int(src.metadata(K_FULL_ATTN_INTERVAL, interval))
    if interval <= 0:
        raise SurgeryError(f"{src.paths[0]}: {K_FULL_ATTN_INTERVAL.format(arch=src.arch)} is "
                           f"{interval}")
    n_main = src.n_layers - src.n_nextn
    return [il < n_main and (il + 1) % interval != 0 for il in range(src.n_layers)]


def _active_strides(src: SourceModel) -> list[StrideRule]:
    rules = [r for r in src.rules().strides if _condition(src, r.when)]
    for key, (residue, what) in STRIDE_KEYS.items():
        if key == K_FULL_ATTN_INTERVAL and src.rules().recurrent_interval is not None:
            continue  # written per layer instead
        v = src.metadata(key)
        if v:
            rules.append(StrideRule(what, key, residue))
    return rules


def _stride_period(src: SourceModel, period: int | str, n_main: int) -> int:
    if isinstance(period, int):
        return period
    if period == "n_layer":
        return n_main
    return int(src.metadata(period, 0) or 0)


@dataclass
class _Changes:
    """Metadata to write: replacements by key (kept in place) and appended entries."""

    replace: dict[str, KVEntry] = field(default_factory=dict)
    append: list[KVEntry] = field(default_factory=list)

    def set(self, src: SourceModel, key: str, vtype: int, value: Any,
            array_type: int | None = None) -> None:
        e = _make_kv(key, vtype, value, array_type)
        if src._kv(key) is not None:
            self.replace[key] = e
        else:
            self.append = [a for a in self.append if a.key != key] + [e]


def _fail(src: SourceModel, constraint: str, detail: str) -> SurgeryError:
    return SurgeryError(f"{src.arch}: path breaks {constraint}: {detail}")


def check_path(src: SourceModel, path: Sequence[int], counts: bool = True) -> list[int]:
    """Validate `path` for this model: ranges, and every index-derived constraint that cannot
    be written per layer. ``counts=False`` skips the block counts on which llama.cpp switches
    hyperparameters at load: a server that runs a path in place keeps the model type it loaded
    (the virtual engine). Raises LayerPathError / SurgeryError; returns the path as a list."""
    p = layer_path.validate(path, src.n_layers)
    _metadata_changes(src, p, counts)
    return p


def _metadata_changes(src: SourceModel, p: list[int], counts: bool = True) -> _Changes:
    arch = src.arch
    n = src.n_layers
    ident = p == list(range(n))
    rules = src.rules()
    ch = _Changes()

    # -- structure we cannot rewrite: identity only
    if not ident:
        if rules.fixed:
            raise SurgeryError(f"{arch}: only the identity path is supported: {rules.fixed}")
        for key in FIXED_KEYS:
            k = key.format(arch=arch)
            v = src.metadata(k)
            if v:
                raise SurgeryError(f"{arch}: only the identity path is supported: {k}={v!r} ties "
                                   "structure to layer indices")
        pattern = src._kv(K_SWA_PATTERN.format(arch=arch))
        if rules.swa is None and pattern is not None and pattern.vtype != VT.ARRAY:
            raise SurgeryError(f"{arch}: only the identity path is supported: {pattern.key} is a "
                               "period whose per-layer meaning is unknown for this architecture")
        odd = [t.name for t in src.tensors if t.name.startswith(("enc.blk.", "dec.blk."))]
        if odd:
            raise SurgeryError(f"{arch}: only the identity path is supported: encoder/decoder "
                               f"blocks such as {odd[0]!r} are not renumbered")

    # -- block counts that switch llama.cpp hyperparameters
    n_nextn = src.n_nextn
    n_main, new_main = n - n_nextn, len(p) - n_nextn
    for special in sorted(rules.count_sensitive) if counts else ():
        if (n_main == special) != (new_main == special):
            raise _fail(src, f"the block count {special}",
                        f"llama.cpp switches {arch} hyperparameters on exactly {special} layers; "
                        f"{n_main} -> {new_main} would change them (keep the count "
                        f"{'at' if n_main == special else 'off'} {special})")

    # -- trailing NextN/MTP layers: last, in order, unrepeated
    if n_nextn:
        tail = list(range(n - n_nextn, n))
        if p[-n_nextn:] != tail or any(x >= n - n_nextn for x in p[:-n_nextn]) or len(p) <= n_nextn:
            raise _fail(src, f"{K_NEXTN.format(arch=arch)}={n_nextn}",
                        f"the NextN/MTP layer(s) {layer_path.format(tail)} must end the path, "
                        "once each and in order")
    main = p[:-n_nextn] if n_nextn else p

    # -- leading layers of another kind (dense FFN, hash routing): a prefix; count rewritten
    for key, what in PREFIX_KEYS.items():
        k = key.format(arch=arch)
        lead = src.metadata(k)
        if not lead:
            continue
        lead = int(lead)
        new_lead = 0
        while new_lead < len(main) and main[new_lead] < lead:
            new_lead += 1
        late = [pos for pos in range(new_lead, len(main)) if main[pos] < lead]
        if late:
            raise _fail(src, f"{k}={lead}",
                        f"{what} must come first; position {late[0]} runs layer {main[late[0]]} "
                        f"after layer {main[late[0] - 1]}")
        if new_lead != lead:
            e = src._kv(k)
            assert e is not None
            ch.set(src, k, e.vtype, new_lead)

    # -- stride classes without a per-layer key: each position keeps its source's class
    for rule in _active_strides(src):
        sp = _stride_period(src, rule.period, n_main)
        dp = _stride_period(src, rule.period, len(main))
        if not sp or not dp:
            continue
        for pos, orig in enumerate(main):
            if (orig % sp == rule.residue % sp) != (pos % dp == rule.residue % dp):
                label = rule.period if isinstance(rule.period, int) else (
                    "layer count" if rule.period == "n_layer" else f"{rule.period.format(arch=arch)}={sp}")
                raise _fail(src, f"{rule.what} (every {label})",
                            f"position {pos} would run layer {orig}, which is "
                            f"{'' if orig % sp == rule.residue % sp else 'not '}one of them")

    # -- block count and per-layer arrays
    bc_key = K_BLOCK_COUNT.format(arch=arch)
    bc = src._kv(bc_key)
    assert bc is not None
    ch.set(src, bc_key, bc.vtype, len(p))
    for key in src.per_layer_keys():
        e = src._kv(key)
        assert e is not None and e.array_type is not None
        vals = e.value
        mapped = [vals[x] for x in p] if len(vals) == n else [vals[x] for x in main]
        if mapped != vals:
            ch.set(src, key, VT.ARRAY, mapped, e.array_type)

    # -- index-derived kinds written per layer
    swa = _source_swa(src)
    if swa is not None:
        ch.set(src, K_SWA_PATTERN.format(arch=arch), VT.ARRAY, [swa[x] for x in p], VT.BOOL)
    rec = _source_recurrent(src)
    if rec is not None:
        ch.set(src, K_RECURRENT.format(arch=arch), VT.ARRAY, [rec[x] for x in p], VT.BOOL)

    # -- provenance (composed with the source's own rys path, if it is a rewrite itself)
    prev = src.metadata(K_RYS_PATH)
    base: list[int] | None = None
    if isinstance(prev, str):
        try:
            base = layer_path.parse(prev)
        except LayerPathError:
            base = None
        if base is not None and len(base) != n:
            base = None
    composed = [base[x] for x in p] if base is not None else p
    canon = layer_path.format(composed)
    ch.set(src, K_RYS_PATH, VT.STRING, canon)
    source_name = src.metadata(K_RYS_SOURCE) if base is not None else None
    ch.set(src, K_RYS_SOURCE, VT.STRING, source_name or src.paths[0].name)
    orig_blocks = src.metadata(K_RYS_SOURCE_BLOCKS) if base is not None else None
    ch.set(src, K_RYS_SOURCE_BLOCKS, VT.UINT32, int(orig_blocks or n))
    base_name = _RYS_NAME_RE.sub("", src.name) if src.name else _stem(src.paths[0])
    ch.set(src, K_NAME, VT.STRING, f"{base_name} [rys {canon}]")
    return ch


def _stem(p: Path) -> str:
    m = _SHARD_RE.match(p.name)
    return m.group("stem") if m else p.stem


# ============================================================================================
# planning the output file


@dataclass(frozen=True)
class _Segment:
    shard: int
    src: int  # absolute offset in the shard file
    dst: int  # absolute offset in the output
    length: int


@dataclass
class _Plan:
    header: bytes
    data_start: int
    total_size: int
    segments: list[_Segment]
    n_tensors: int


def _output_tensors(src: SourceModel, p: list[int]) -> list[tuple[str, int]]:
    """(new name, source tensor index) in output order: non-layer tensors in original order,
    the layer block (renumbered, following the path) where the first blk tensor was."""
    out: list[tuple[str, int]] = []
    placed = False
    for idx, t in enumerate(src.tensors):
        if _BLK_RE.match(t.name):
            if not placed:
                placed = True
                for new, orig in enumerate(p):
                    for k in src.layer_tensors.get(orig, []):
                        rest = _BLK_RE.match(src.tensors[k].name).group(2)  # type: ignore[union-attr]
                        out.append((f"blk.{new}.{rest}", k))
            continue
        out.append((t.name, idx))
    return out


def _plan(src: SourceModel, layer_path_: Sequence[int]) -> _Plan:
    p = layer_path.validate(layer_path_, src.n_layers)
    ch = _metadata_changes(src, p)
    kv_raw = [ch.replace.get(e.key, e).raw for e in src.kv] + [e.raw for e in ch.append]
    outs = _output_tensors(src, p)
    align = src.alignment
    infos: list[bytes] = []
    offsets: list[int] = []
    off = 0
    for name, k in outs:
        t = src.tensors[k]
        offsets.append(off)
        infos.append(_encode_string(name) + _U32.pack(len(t.shape))
                     + struct.pack(f"<{len(t.shape)}Q", *t.shape) + _U32.pack(t.ggml_type)
                     + _U64.pack(off))
        off = _align(off + t.nbytes, align)
    head = (_U32.pack(GGUF_MAGIC) + _U32.pack(GGUF_VERSION) + _U64.pack(len(outs))
            + _U64.pack(len(kv_raw)))
    header = b"".join([head, *kv_raw, *infos])
    data_start = _align(len(header), align)
    header += b"\0" * (data_start - len(header))
    segments: list[_Segment] = []
    for (name, k), o in zip(outs, offsets):
        t = src.tensors[k]
        seg = _Segment(t.shard, src.data_starts[t.shard] + t.offset, data_start + o, t.nbytes)
        if segments:
            last = segments[-1]
            if (last.shard == seg.shard and seg.src - last.src == seg.dst - last.dst
                    and seg.src >= last.src + last.length):
                segments[-1] = _Segment(last.shard, last.src, last.dst, seg.src + seg.length - last.src)
                continue
        if seg.length:
            segments.append(seg)
    return _Plan(header, data_start, data_start + off, segments, len(outs))


# ============================================================================================
# writing


def nearest_existing(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists: where a directory not made yet will live."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(directory: str | os.PathLike[str]) -> int:
    """Free bytes for writing in `directory`, or on the disk where it will be created."""
    st = os.statvfs(nearest_existing(Path(directory)))
    return st.f_bavail * st.f_frsize


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return a.resolve() == b.resolve()


class _Copier:
    """Kernel-side file-to-file copies: copy_file_range, else sendfile, else read/write."""

    def __init__(self) -> None:
        self.mode = "copy_file_range" if hasattr(os, "copy_file_range") else "sendfile"

    def copy(self, fin: int, fout: int, src: int, dst: int, length: int) -> int:
        while True:
            try:
                if self.mode == "copy_file_range":
                    n = os.copy_file_range(fin, fout, length, src, dst)
                elif self.mode == "sendfile":
                    os.lseek(fout, dst, os.SEEK_SET)
                    n = os.sendfile(fout, fin, src, length)
                else:
                    os.lseek(fout, dst, os.SEEK_SET)
                    data = os.pread(fin, min(length, 16 << 20), src)
                    n = os.write(fout, data) if data else 0
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL,
                               errno.EBADF, errno.EPERM) and self.mode != "readwrite":
                    self.mode = "sendfile" if self.mode == "copy_file_range" else "readwrite"
                    log.debug("falling back to %s: %s", self.mode, e)
                    continue
                raise
            if n == 0:
                raise SurgeryError(f"source ended early while copying (offset {src})")
            return n


def _progress_bar(total: int, progress: bool | None, label: str) -> Any:
    if progress is None:
        progress = total > _AUTO_PROGRESS_BYTES
    if not progress:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
                leave=False, file=sys.stderr)


def rewrite(source: str | os.PathLike[str] | SourceModel, target: str | os.PathLike[str],
            layer_path: Sequence[int], *, progress: bool | None = None,
            overwrite: bool = True) -> Path:
    """Write `target`: the source model running its layers in the order of `layer_path`.

    Returns the target path. Raises SurgeryError (bad model, no room, target is the source,
    refused path) or LayerPathError (indices); leaves no partial file on any failure.
    """
    src = source if isinstance(source, SourceModel) else SourceModel.open(source)
    target = Path(target)
    plan = _plan(src, layer_path)
    tdir = target.parent if str(target.parent) else Path(".")
    if not tdir.is_dir():
        raise SurgeryError(f"target directory {tdir} does not exist")
    if target.exists():
        if any(_same_file(target, s) for s in src.paths):
            raise SurgeryError(f"target {target} is the source model; refusing to overwrite it")
        if target.is_dir():
            raise SurgeryError(f"target {target} is a directory")
        if not overwrite:
            raise SurgeryError(f"target {target} exists")
    elif any(target.resolve() == s.resolve() for s in src.paths):
        raise SurgeryError(f"target {target} is the source model; refusing to overwrite it")
    free = free_bytes(tdir)
    if free < plan.total_size:
        raise SurgeryError(f"not enough space in {tdir}: need {plan.total_size} bytes "
                           f"({plan.total_size / 2**20:.1f} MiB), {free} free "
                           f"({free / 2**20:.1f} MiB)")
    tmp = tdir / _partial_name(target.name)
    bar = _progress_bar(plan.total_size, progress, target.name)
    fds: dict[int, int] = {}
    fout = -1
    try:
        fout = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
        _write_all(fout, plan.header)
        if bar is not None:
            bar.update(len(plan.header))
        copier = _Copier()
        for seg in plan.segments:
            fin = fds.get(seg.shard)
            if fin is None:
                fin = fds[seg.shard] = os.open(src.paths[seg.shard], os.O_RDONLY)
            done = 0
            while done < seg.length:
                want = min(_COPY_CHUNK, seg.length - done)
                n = copier.copy(fin, fout, seg.src + done, seg.dst + done, want)
                done += n
                if bar is not None:
                    bar.update(n)
        os.ftruncate(fout, plan.total_size)  # trailing padding (and any holes) read as zeros
        os.fsync(fout)
        os.close(fout)
        fout = -1
        os.replace(tmp, target)
        log.info("wrote %s (%d bytes, %d tensors)", target, plan.total_size, plan.n_tensors)
        return target
    except BaseException:
        if fout >= 0:
            os.close(fout)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    finally:
        for fd in fds.values():
            os.close(fd)
        if bar is not None:
            bar.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def verify(path: str | os.PathLike[str], expect_path: Sequence[int] | None = None) -> str:
    """Re-read a written file and check its structure (header, tensor bounds, block count,
    contiguous layer numbering, recorded path). Returns a one-line summary."""
    m = SourceModel.open(path)
    if expect_path is not None and m.n_layers != len(expect_path):
        raise SurgeryError(f"{path}: block_count {m.n_layers}, expected {len(expect_path)}")
    missing = [i for i in range(m.n_layers) if i not in m.layer_tensors]
    if missing:
        raise SurgeryError(f"{path}: no tensors for layer(s) {layer_path.format(missing)}")
    rec = m.metadata(K_RYS_PATH)
    return f"{m.arch}, {m.n_layers} layers, {len(m.tensors)} tensors, rys path {rec}"


# ============================================================================================
# temporary outputs


def _scratch_bases() -> tuple[Path, ...]:
    return (Path("/dev/shm"), Path(tempfile.gettempdir()))


def default_tmp_dir() -> Path:
    """Per-user scratch dir for rewritten models: /dev/shm/rys-<uid>, falling back to
    <tempdir>/rys-<uid> when /dev/shm is unusable. Named and checked here, not created: it exists
    only while a rys process has a model in it (`scratch_dir`, `temporary_rewrite`), so no empty
    dir outlives a run."""
    uid = os.getuid()
    problems = []
    for base in _scratch_bases():
        if not base.is_dir():
            continue
        d = base / f"rys-{uid}"
        try:
            st = os.lstat(d)
        except FileNotFoundError:
            if os.access(base, os.W_OK | os.X_OK):
                return d
            problems.append(f"{base} is not writable")
            continue
        except OSError as e:
            problems.append(f"{d}: {e.strerror}")
            continue
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != uid:
            problems.append(f"{d} is not a directory owned by uid {uid}")
            continue
        return d
    raise SurgeryError("no usable temporary directory: " + "; ".join(problems))


def _is_scratch(d: Path) -> bool:
    """Whether `d` is a per-user scratch dir (ours to create and remove), not a user's --tmp-dir."""
    return d.name == f"rys-{os.getuid()}" and d.parent in _scratch_bases()


def _make_scratch(d: Path) -> None:
    """Create the scratch dir `d` private to us (mode 0700); refuse one someone else planted."""
    try:
        d.mkdir(mode=0o700, exist_ok=True)
        st = os.lstat(d)
    except OSError as e:
        raise SurgeryError(f"{d}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SurgeryError(f"{d} is not a directory owned by uid {os.getuid()}")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(d, 0o700)


def _drop_scratch(d: Path) -> None:
    """Remove the scratch dir if it is empty (another rys process may still have files in it)."""
    with contextlib.suppress(OSError):
        d.rmdir()


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """`default_tmp_dir()`, created for the duration and removed on exit if left empty."""
    d = default_tmp_dir()
    _make_scratch(d)
    try:
        yield d
    finally:
        _drop_scratch(d)


_tmp_counter = itertools.count()

# The names of files this module writes and may leave behind if its process dies: rewrites in
# progress (".<target>.partial-<pid>") and temporary_rewrite's models
# ("<stem>.<slug>.<pid>-<n>.gguf"). Both carry the writer's pid, so a cleaner can tell a dead
# writer's leftovers from a live sweep's files (`temp_owner_pid`).
_PARTIAL_RE = re.compile(r"^\..+\.partial-(?P<pid>\d+)$")
_TEMP_RE = re.compile(r"\.(?P<pid>\d+)-\d+\.gguf$")


def _partial_name(target_name: str) -> str:
    return f".{target_name}.partial-{os.getpid()}"


def _temp_name(stem: str, slug: str) -> str:
    return f"{stem}.{slug}.{os.getpid()}-{next(_tmp_counter)}.gguf"


def temp_owner_pid(name: str) -> int | None:
    """The pid of the process that wrote `name` if it is one of this module's temporary files
    (a partial rewrite or a temporary_rewrite model), else None."""
    m = _PARTIAL_RE.match(name) or _TEMP_RE.search(name)
    return int(m.group("pid")) if m else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temporaries(tmp_dir: str | os.PathLike[str]) -> list[Path]:
    """This module's temporary files in ``tmp_dir`` left by a process that died (a killed sweep):
    named like ours, owned by us, and the pid in the name is not a live process (nor us)."""
    out = []
    try:
        entries = list(os.scandir(tmp_dir))
    except FileNotFoundError:
        return []
    for e in entries:
        pid = temp_owner_pid(e.name)
        if pid is None or not e.is_file(follow_symlinks=False):
            continue
        with contextlib.suppress(OSError):
            if e.stat(follow_symlinks=False).st_uid != os.getuid():
                continue
            if pid != os.getpid() and not _pid_alive(pid):
                out.append(Path(e.path))
    return sorted(out)


def remove_stale_temporaries(tmp_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete `stale_temporaries` (with a warning each); returns what was removed."""
    removed = []
    for p in stale_temporaries(tmp_dir):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            removed.append(p)
            log.warning("removed stale temp model %s (its writer is gone)", p)
    if removed and _is_scratch(Path(tmp_dir)):
        _drop_scratch(Path(tmp_dir))
    return removed


@contextlib.contextmanager
def temporary_rewrite(source: str | os.PathLike[str] | SourceModel, layer_path_: Sequence[int],
                      tmp_dir: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """Write the rewritten model into `tmp_dir` (default: `default_tmp_dir()`), yield its path,
    and delete it on exit, whatever happens. The scratch dir is created for the model and removed
    with the last one in it."""
    src = source if isinstance(source, SourceModel) else SourceModel.open(source)
    d = Path(tmp_dir) if tmp_dir is not None else default_tmp_dir()
    scratch = _is_scratch(d)
    target = d / _temp_name(_stem(src.paths[0]), layer_path.slug(layer_path_, 60))
    try:
        yield _write_temporary(src, target, layer_path_, scratch)
    finally:
        with contextlib.suppress(FileNotFoundError):
            target.unlink()
        if scratch:
            _drop_scratch(d)


def _write_temporary(src: SourceModel, target: Path, layer_path_: Sequence[int],
                     scratch: bool) -> Path:
    """`rewrite` into the temporary `target`. Whoever empties the scratch dir removes it, so
    another rys process can remove it between our mkdir and our first file: then make it again,
    once (a file of ours in it keeps it from then on)."""
    if scratch:
        _make_scratch(target.parent)
    try:
        return rewrite(src, target, layer_path_)
    except (SurgeryError, OSError):
        if not scratch or target.parent.exists():
            raise
    _make_scratch(target.parent)
    return rewrite(src, target, layer_path_)


# ============================================================================================
# inspect + CLI


def _compact(vals: list[Any]) -> str:
    """Run-length text for a per-layer array: '1x5,0,1x5,0,...'."""
    parts = []
    for v, grp in itertools.groupby(vals):
        c = len(list(grp))
        sv = str(int(v)) if isinstance(v, bool) else str(v)
        parts.append(sv if c == 1 else f"{sv}x{c}")
    return ",".join(parts)


def inspect_data(src: SourceModel) -> dict[str, Any]:
    """What `rys-surgery inspect` reports, as plain data."""
    layer_bytes = [src.layer_bytes(i) for i in range(src.n_layers)]
    other = sum(t.nbytes for t in src.tensors if not _BLK_RE.match(t.name))
    rules = src.rules()
    constraints = []
    if rules.fixed:
        constraints.append(f"identity only: {rules.fixed}")
    for s in sorted(rules.count_sensitive):
        constraints.append(f"block count {s} switches hyperparameters")
    if src.n_nextn:
        constraints.append(f"last {src.n_nextn} NextN/MTP layer(s) stay last, unrepeated")
    for key, what in PREFIX_KEYS.items():
        v = src.metadata(key)
        if v:
            constraints.append(f"{what}: first {v} layers stay first")
    for r in _active_strides(src):
        constraints.append(f"{r.what}: index class kept")
    return {
        "files": [str(p) for p in src.paths],
        "arch": src.arch,
        "name": src.name,
        "block_count": src.n_layers,
        "file_size": src.file_size,
        "alignment": src.alignment,
        "n_tensors": len(src.tensors),
        "n_kv": len(src.kv),
        "fingerprint": src.fingerprint,
        "has_chat_template": src.has_chat_template,
        "layer_bytes": layer_bytes,
        "non_layer_bytes": other,
        "per_layer_metadata": {k: src.metadata(k) for k in src.per_layer_keys()},
        "index_derived_kinds": src.kinds(),
        "constraints": constraints,
        "rys": {k: src.metadata(k) for k in (K_RYS_PATH, K_RYS_SOURCE, K_RYS_SOURCE_BLOCKS)
                if src.metadata(k) is not None},
    }


def inspect_text(src: SourceModel) -> str:
    d = inspect_data(src)
    lines = [
        f"file:          {', '.join(d['files'])}",
        f"architecture:  {d['arch']}",
        f"name:          {d['name']}",
        f"block count:   {d['block_count']}",
        f"size:          {d['file_size']} bytes ({d['file_size'] / 2**20:.1f} MiB), "
        f"{d['n_tensors']} tensors, {d['n_kv']} metadata keys, alignment {d['alignment']}",
        f"fingerprint:   {d['fingerprint']}",
        f"chat template: {'yes' if d['has_chat_template'] else 'no'}",
        f"non-layer tensor bytes: {d['non_layer_bytes']}",
        "per-layer tensor bytes:",
    ]
    for i, b in enumerate(d["layer_bytes"]):
        lines.append(f"  {i:4d}  {b}")
    lines.append("per-layer metadata arrays:" if d["per_layer_metadata"] else
                 "per-layer metadata arrays: none")
    for k, v in d["per_layer_metadata"].items():
        lines.append(f"  {k} = {_compact(v)}")
    for k, v in d["index_derived_kinds"].items():
        lines.append(f"index-derived {k}: {_compact(v)}")
    for c in d["constraints"]:
        lines.append(f"constraint: {c}")
    if d["rys"]:
        lines.append("rys provenance: " + ", ".join(f"{k}={v}" for k, v in d["rys"].items()))
    else:
        lines.append("rys provenance: none (not a rewritten model)")
    return "\n".join(lines)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return str(n)


def _main_inspect(argv: Sequence[str]) -> int:
    ap = cli.ArgumentParser(prog="rys-surgery inspect",
                            description="Describe a GGUF's layers and layer metadata.")
    ap.add_argument("model")
    ap.add_argument("--json", action="store_true", help="machine-readable output (one JSON object)")
    args = ap.parse_args(argv)
    src = SourceModel.open(args.model)
    if args.json:
        print(json.dumps(inspect_data(src), indent=1))
    else:
        print(inspect_text(src))
    return 0


def _surgery_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(
        prog="rys-surgery",
        usage="rys-surgery inspect MODEL [--json]\n       rys-surgery MODEL OUT -i I -j J "
              "[--times K] [--force]",
        description="`inspect MODEL` describes a model's layers, per-layer metadata, the layer "
        "kinds llama.cpp derives from indices and the path constraints that follow. "
        "`MODEL OUT -i I -j J` writes the RYS (i, j) circuit: layers i..j-1 (j exclusive) run "
        "TIMES extra times. rys-path takes arbitrary paths.",
    )
    ap.add_argument("model")
    ap.add_argument("out", help="output GGUF")
    ap.add_argument("-i", type=int, required=True, help="first layer of the repeated block")
    ap.add_argument("-j", type=int, required=True, help="end of the block (exclusive)")
    ap.add_argument("--times", type=int, default=1, help="extra passes over the block (default 1)")
    ap.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    return ap


def _main_rewrite(argv: Sequence[str]) -> int:
    args = _surgery_parser().parse_args(argv)
    src = SourceModel.open(args.model)
    path = layer_path.duplicate(args.i, args.j, src.n_layers, args.times)
    out = Path(args.out)
    _check_out(out, src, args.force)
    rewrite(src, out, path)
    print(f"wrote {out} ({len(path)} layers, path {layer_path.format(path)})")
    return 0


def _check_out(out: Path, src: SourceModel, force: bool) -> None:
    """Refuse an existing OUT without --force, and a missing parent directory (nothing is
    created behind the user's back)."""
    if out.exists() and not force and not any(_same_file(out, s) for s in src.paths):
        raise SurgeryError(f"{out} exists (use --force to overwrite)")
    if not out.parent.is_dir():
        raise SurgeryError(f"the directory of {out} does not exist")


def _surgery_main(argv: Sequence[str]) -> int:
    cli.setup_logging()
    if argv[:1] == ["inspect"]:
        return _main_inspect(argv[1:])
    if argv[:1] == ["path"]:  # `python -m rys.gguf_surgery path ...` is rys-path
        return _path_main(argv[1:])
    return _main_rewrite(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """rys-surgery entry point. Bad input: one line on stderr, exit 2, no file left."""
    return cli.run("rys-surgery", _surgery_main, argv, usage_errors=(SurgeryError, LayerPathError,
                                                                    OSError),
                   interrupted="interrupted; no file left")


# ============================================================================================
# rys-path


def _path_parser() -> argparse.ArgumentParser:
    ap = cli.ArgumentParser(
        prog="rys-path",
        description="Write a GGUF that runs the original layers in the order of a layer path "
        "(repeats, skips, reorders), or a mergekit passthrough config for the same path.",
        epilog="Path examples: '0..14,12..39'  '0..11,(12..14)x3,15..39'  '0..5,7..-1'",
    )
    ap.add_argument("model", nargs="?", help="source GGUF (first shard of a split model is fine)")
    ap.add_argument("out", nargs="?", help="output GGUF (or, with --mergekit-yaml, unused)")
    ap.add_argument("-p", "--path", required=True, dest="spec", help="layer path spec")
    ap.add_argument("-v", "--verbose", action="store_true", help="describe the path")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the mapping, layer count and output size; write nothing")
    ap.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    ap.add_argument("--tmp-check", action="store_true",
                    help="write into the per-user tmpfs dir, re-read and verify, then delete "
                    "(OUT not needed)")
    ap.add_argument("--mergekit-yaml", metavar="OUT_YAML",
                    help="write a mergekit passthrough config instead of a GGUF")
    ap.add_argument("--model", dest="hf_model", metavar="HF_ID",
                    help="model name/path written into the mergekit config")
    ap.add_argument("--n-layers", type=int, help="layer count (for --mergekit-yaml without MODEL)")
    ap.add_argument("--dtype", default="bfloat16", help="mergekit dtype (default bfloat16)")
    return ap


def _mergekit_main(args: argparse.Namespace) -> int:
    if not args.hf_model:
        raise LayerPathError("--mergekit-yaml needs --model HF_ID")
    n = args.n_layers
    if n is None:
        if not args.model:
            raise LayerPathError("--mergekit-yaml needs --n-layers N or a MODEL GGUF to read it from")
        n = SourceModel.open(args.model).n_layers
    if n < 1:
        raise LayerPathError(f"--n-layers must be positive, got {n}")
    path = layer_path.parse(args.spec, n)
    out = Path(args.mergekit_yaml)
    if not out.parent.is_dir():
        raise SurgeryError(f"the directory of {out} does not exist")
    out.write_text(layer_path.mergekit_yaml(path, args.hf_model, args.dtype))
    print(f"wrote {out} ({len(layer_path.mergekit_slices(path))} slices, {len(path)} layers)")
    if args.verbose:
        print(layer_path.describe(path, n))
    src = str(Path(args.model).resolve()) if args.model else "MODEL.gguf"
    print("build the same stack from a GGUF with:")
    print(f"  rys-path {shlex.quote(src)} OUT.gguf -p {shlex.quote(layer_path.format(path))}")
    return 0


def _path_main(argv: Sequence[str]) -> int:
    args = _path_parser().parse_args(argv)
    cli.setup_logging()
    if args.mergekit_yaml:
        return _mergekit_main(args)
    if not args.model:
        raise LayerPathError("MODEL is required")
    if not (args.out or args.dry_run or args.tmp_check):
        raise LayerPathError("OUT is required (or use --dry-run / --tmp-check)")
    src = SourceModel.open(args.model)
    path = layer_path.parse(args.spec, src.n_layers)
    check_path(src, path)
    if args.verbose:
        print(layer_path.describe(path, src.n_layers))
    if args.dry_run:
        print(f"model: {src.paths[0]} ({src.arch}, {src.n_layers} layers)")
        print(f"path: {layer_path.format(path)}")
        print("mapping (new -> original):")
        for new, orig in enumerate(path):
            print(f"  {new:4d} -> {orig}")
        size = src.estimate_size(path)
        print(f"new layer count: {len(path)}")
        print(f"output size: {size} bytes ({_human(size)})")
        return 0
    out = Path(args.out) if args.out else None
    if out is not None:
        _check_out(out, src, args.force)
    if args.tmp_check:
        with temporary_rewrite(src, path) as tmp:
            info = verify(tmp, expect_path=path)
            print(f"ok: {tmp} written and verified ({info}); deleted")
        if out is None:
            return 0
    assert out is not None
    written = rewrite(src, out, path)
    print(f"wrote {written} ({len(path)} layers, path {layer_path.format(path)})")
    return 0


def path_main(argv: Sequence[str] | None = None) -> int:
    """rys-path entry point. Bad input: one line on stderr, exit 2, nothing written."""
    return cli.run("rys-path", _path_main, argv,
                   usage_errors=(LayerPathError, SurgeryError, OSError),
                   interrupted="interrupted; nothing written")


if __name__ == "__main__":
    sys.exit(main())
