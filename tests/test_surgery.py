"""gguf_surgery on tiny synthetic GGUFs: renumbering, data, metadata remapping, index-derived
rules, provenance, sharded input, safety, and the CLIs' bad-input handling."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import gguf
import pytest

import gguf_fixtures as F
from rys import gguf_surgery as S
from rys import layer_path as L
from gguf_fixtures import ModelSpec
from rys.gguf_surgery import SourceModel, SurgeryError
from rys.layer_path import LayerPathError

ROOT = Path(__file__).resolve().parent.parent

PER_LAYER = {
    "{arch}.attention.head_count": [1, 2, 3, 4, 5, 6],
    "{arch}.feed_forward_length": [10, 20, 30, 40, 50, 60],
}


@pytest.fixture
def tiny(tmp_path) -> Path:
    return F.write_model(tmp_path / "tiny.gguf", ModelSpec(kv=PER_LAYER))


def _files(d: Path) -> set[str]:
    return {p.name for p in d.iterdir()}


def _check_layers(src_path: Path, out_path: Path, path: list[int]) -> None:
    """Every blk.p.* of the output holds exactly the bytes of blk.path[p].* of the source."""
    src = F.tensor_bytes(F.read(src_path))
    out_r = F.read(out_path)
    out = F.tensor_bytes(out_r)
    assert [n for n in F.tensor_names(out_r) if n.startswith("blk.")] == F.expected_layer_names(path)
    for p, orig in enumerate(path):
        for suffix, _, _ in F.LAYER_TENSORS:
            assert out[f"blk.{p}.{suffix}"] == src[f"blk.{orig}.{suffix}"], (p, orig, suffix)
    for name in ("token_embd.weight", "output_norm.weight"):
        assert out[name] == src[name]


# ------------------------------------------------------------------------------------------
# SourceModel


def test_source_model_attributes(tiny, tmp_path):
    src = SourceModel.open(tiny)
    assert src.arch == "llama"
    assert src.n_layers == 6
    assert src.paths == [tiny]
    assert src.file_size == tiny.stat().st_size
    assert src.name == "tiny"
    assert src.has_chat_template is False
    assert src.metadata("{arch}.context_length") == 64
    assert src.metadata("llama.attention.head_count") == [1, 2, 3, 4, 5, 6]
    assert src.metadata("no.such.key", "dflt") == "dflt"
    assert sorted(src.per_layer_keys()) == ["llama.attention.head_count", "llama.feed_forward_length"]
    per_layer = sum(t.nbytes for t in src.tensors if t.name.startswith("blk.0."))
    assert [src.layer_bytes(i) for i in range(6)] == [per_layer] * 6
    assert per_layer == 8 * 4 + 64 * 2 + 15 * 4 + 2 * 34
    with pytest.raises(LayerPathError):
        src.layer_bytes(6)
    # fingerprint: stable for the same bytes, different for a different file
    assert SourceModel.open(tiny).fingerprint == src.fingerprint
    other = F.write_model(tmp_path / "other.gguf", ModelSpec(kv=PER_LAYER, name="other"))
    assert SourceModel.open(other).fingerprint != src.fingerprint
    templ = F.write_model(tmp_path / "chat.gguf", ModelSpec(chat_template="{{ x }}"))
    assert SourceModel.open(templ).has_chat_template is True


def test_per_layer_keys_ignore_non_layer_arrays(tmp_path):
    p = F.write_model(tmp_path / "m.gguf", ModelSpec(n_layers=4, kv={
        "{arch}.rope.dimension_sections": [1, 2, 3, 4],  # length 4 by coincidence
        "{arch}.attention.head_count": [4, 4, 2, 2],
        "{arch}.short": [1, 2, 3],
    }))
    assert SourceModel.open(p).per_layer_keys() == ["llama.attention.head_count"]


# ------------------------------------------------------------------------------------------
# rewriting


def test_identity_rewrite_keeps_everything(tiny, tmp_path):
    out = S.rewrite(tiny, tmp_path / "id.gguf", L.identity(6))
    a, b = F.read(tiny), F.read(out)
    assert F.tensor_names(a) == F.tensor_names(b)
    assert F.tensor_bytes(a) == F.tensor_bytes(b)
    assert [(t.tensor_type, list(t.shape)) for t in a.tensors] == [(t.tensor_type, list(t.shape)) for t in b.tensors]
    new_keys = {S.K_RYS_PATH, S.K_RYS_SOURCE, S.K_RYS_SOURCE_BLOCKS}
    assert [k for k in F.kv_keys(b) if k not in new_keys] == F.kv_keys(a)
    for key in F.kv_keys(a):
        if key != "general.name":
            assert F.field_value(a, key) == F.field_value(b, key), key
    assert F.field_value(b, "general.name") == "tiny [rys 0..5]"
    assert F.field_value(b, S.K_RYS_PATH) == "0..5"


@pytest.mark.parametrize(
    "path",
    [L.duplicate(1, 3, 6), L.duplicate(0, 6, 6, times=2), L.ablate([0, 5], 6), [5, 4, 3, 2, 1, 0],
     [2], [3, 3, 3, 1]],
)
def test_rewrite_renumbers_and_copies_layers(tiny, tmp_path, path):
    out = S.rewrite(tiny, tmp_path / "out.gguf", path)
    _check_layers(tiny, out, path)
    r = F.read(out)
    names = F.tensor_names(r)
    assert names[0] == "token_embd.weight" and names[-1] == "output_norm.weight"
    assert F.field_value(r, "llama.block_count") == len(path)
    assert F.field_value(r, "llama.attention.head_count") == [PER_LAYER["{arch}.attention.head_count"][x] for x in path]
    assert F.field_value(r, "llama.feed_forward_length") == [PER_LAYER["{arch}.feed_forward_length"][x] for x in path]
    assert F.field_value(r, S.K_RYS_PATH) == L.format(path)
    assert F.field_value(r, S.K_RYS_SOURCE) == "tiny.gguf"
    assert F.field_value(r, S.K_RYS_SOURCE_BLOCKS) == 6
    assert F.field_value(r, "general.name") == f"tiny [rys {L.format(path)}]"
    # the vocabulary (raw entries re-emitted) is intact
    assert F.field_value(r, "tokenizer.ggml.tokens") == [f"tok{i}" for i in range(16)]
    assert F.field_value(r, "tokenizer.ggml.scores") == [float(-i) for i in range(16)]
    assert out.stat().st_size == SourceModel.open(tiny).estimate_size(path)
    assert not [n for n in _files(tmp_path) if "partial" in n]


def test_tensor_offsets_respect_custom_alignment(tmp_path):
    p = F.write_model(tmp_path / "a64.gguf", ModelSpec(alignment=64))
    out = S.rewrite(p, tmp_path / "o.gguf", L.duplicate(2, 4, 6))
    r = F.read(out)
    assert F.field_value(r, "general.alignment") == 64
    assert all(t.data_offset % 64 == 0 for t in r.tensors)
    _check_layers(p, out, L.duplicate(2, 4, 6))


def test_default_alignment_and_contiguous_order(tiny, tmp_path):
    out = S.rewrite(tiny, tmp_path / "o.gguf", L.duplicate(1, 4, 6))
    r = F.read(out)
    offs = [t.data_offset for t in r.tensors]
    assert offs == sorted(offs)
    assert all(o % gguf.GGUF_DEFAULT_ALIGNMENT == 0 for o in offs)


def test_source_model_is_reusable(tiny, tmp_path):
    src = SourceModel.open(tiny)
    for k, path in enumerate([L.duplicate(0, 2, 6), L.ablate(3, 6), L.identity(6)]):
        out = S.rewrite(src, tmp_path / f"o{k}.gguf", path)
        _check_layers(tiny, out, path)


def test_rewrite_of_a_rewrite_composes_provenance(tiny, tmp_path):
    first_path = L.duplicate(1, 3, 6)  # 0,1,2,1,2,3,4,5
    first = S.rewrite(tiny, tmp_path / "first.gguf", first_path)
    second_path = [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 7]
    second = S.rewrite(first, tmp_path / "second.gguf", second_path)
    r = F.read(second)
    composed = [0, 1, 2, 1, 2, 2, 1, 2, 3, 4, 5]
    assert composed == [first_path[x] for x in second_path]
    assert F.field_value(r, S.K_RYS_PATH) == L.format(composed)
    assert F.field_value(r, S.K_RYS_SOURCE) == "tiny.gguf"
    assert F.field_value(r, S.K_RYS_SOURCE_BLOCKS) == 6
    assert F.field_value(r, "general.name") == f"tiny [rys {L.format(composed)}]"
    _check_layers(tiny, second, composed)


def test_nameless_model_gets_a_name(tmp_path):
    p = F.write_model(tmp_path / "anon.gguf", ModelSpec(name=None))
    out = S.rewrite(p, tmp_path / "o.gguf", [0, 0, 1])
    assert F.field_value(F.read(out), "general.name") == "anon [rys 0,0,1]"


# ------------------------------------------------------------------------------------------
# sharded input


def test_split_model_is_read_as_one(tmp_path):
    shards = F.write_split_model(tmp_path, n_layers=4)
    whole = F.write_model(tmp_path / "whole.gguf", ModelSpec(n_layers=4, name="split-tiny"))
    for opened in shards:  # either shard's name finds both
        src = SourceModel.open(opened)
        assert src.paths == shards
        assert src.n_layers == 4
        assert len(src.tensors) == 2 + 4 * len(F.LAYER_TENSORS)
    path = L.duplicate(1, 3, 4)
    out = S.rewrite(shards[0], tmp_path / "joined.gguf", path)
    r = F.read(out)
    assert not [k for k in F.kv_keys(r) if k.startswith("split.")]
    _check_layers(whole, out, path)


def test_split_model_with_a_missing_shard(tmp_path):
    shards = F.write_split_model(tmp_path, n_layers=4)
    shards[1].unlink()
    with pytest.raises(SurgeryError, match="missing shard"):
        SourceModel.open(shards[0])


# ------------------------------------------------------------------------------------------
# index-derived structure


def gemma3(tmp_path, n_layers=12, **kv) -> Path:
    return F.write_model(tmp_path / "g3.gguf", ModelSpec(
        arch="gemma3", n_layers=n_layers, kv={"{arch}.attention.sliding_window": 512, **kv}))


def _swa(out: Path, arch: str = "gemma3") -> list[bool]:
    return [bool(x) for x in F.field_value(F.read(out), f"{arch}.attention.sliding_window_pattern")]


def test_gemma3_sliding_window_array_follows_the_layers(tmp_path):
    src = gemma3(tmp_path)
    path = [0, 1, 2, 3, 4, 5, 5, 5, 6, 7, 8, 9, 10, 11]  # layer 5 (global) three times
    out = S.rewrite(src, tmp_path / "o.gguf", path)
    swa = _swa(out)
    assert len(swa) == len(path)
    # llama.cpp: set_swa_pattern(6) -> layers 5 and 11 are global (not sliding-window)
    assert [pos for pos, s in enumerate(swa) if not s] == [5, 6, 7, 13]
    assert all(swa[pos] == (path[pos] % 6 != 5) for pos in range(len(path)))


def test_gemma3_identity_gets_the_equivalent_array(tmp_path):
    out = S.rewrite(gemma3(tmp_path), tmp_path / "o.gguf", L.identity(12))
    assert _swa(out) == [il % 6 < 5 for il in range(12)]


def test_gemma3_period_from_metadata(tmp_path):
    src = gemma3(tmp_path, **{"{arch}.attention.sliding_window_pattern": 3})
    out = S.rewrite(src, tmp_path / "o.gguf", [2, 2, 0])
    assert _swa(out) == [False, False, True]


def test_existing_per_layer_pattern_is_remapped(tmp_path):
    pattern = [True, False, True, True, False, True]
    p = F.write_model(tmp_path / "g4like.gguf", ModelSpec(
        arch="gemma2", kv={"{arch}.attention.sliding_window_pattern": pattern}))
    out = S.rewrite(p, tmp_path / "o.gguf", [1, 1, 4, 0])
    assert _swa(out, "gemma2") == [False, False, False, True]


def test_gemma3_without_sliding_window_writes_no_pattern(tmp_path):
    p = F.write_model(tmp_path / "g.gguf", ModelSpec(arch="gemma3", n_layers=6))
    out = S.rewrite(p, tmp_path / "o.gguf", [0, 5, 5])
    assert F.field_value(F.read(out), "gemma3.attention.sliding_window_pattern") is None


def test_gemma3_27b_block_count_is_kept(tmp_path):
    src = gemma3(tmp_path, n_layers=62)
    with pytest.raises(SurgeryError, match="62"):
        S.rewrite(src, tmp_path / "o.gguf", L.duplicate(10, 12, 62))
    # same count, different layers: allowed
    path = L.ablate(3, 62)
    path.insert(10, 10)
    out = S.rewrite(src, tmp_path / "o.gguf", path)
    assert F.field_value(F.read(out), "gemma3.block_count") == 62
    # and a smaller model may not grow into the 27B count
    small = F.write_model(tmp_path / "g26.gguf", ModelSpec(
        arch="gemma3", n_layers=26, kv={"{arch}.attention.sliding_window": 512}))
    with pytest.raises(SurgeryError, match="62"):
        S.rewrite(small, tmp_path / "o3.gguf", L.duplicate(0, 26, 26) + list(range(10)))
    assert not (tmp_path / "o3.gguf").exists()


def test_hybrid_recurrent_layers_are_written(tmp_path):
    p = F.write_model(tmp_path / "q3n.gguf", ModelSpec(
        arch="qwen3next", n_layers=8, kv={"{arch}.full_attention_interval": 4}))
    path = [0, 1, 2, 3, 3, 4, 5, 6, 7]
    out = S.rewrite(p, tmp_path / "o.gguf", path)
    rec = [bool(x) for x in F.field_value(F.read(out), "qwen3next.attention.recurrent_layers")]
    # (il + 1) % 4 != 0 is recurrent: layers 3 and 7 are full attention
    assert rec == [path[pos] % 4 != 3 for pos in range(len(path))]
    assert rec.count(False) == 3


def test_unknown_hybrid_stride_refused_unless_respected(tmp_path):
    p = F.write_model(tmp_path / "hy.gguf", ModelSpec(
        arch="somehybrid", n_layers=8, kv={"{arch}.full_attention_interval": 4}))
    with pytest.raises(SurgeryError, match="full_attention_interval"):
        S.rewrite(p, tmp_path / "o.gguf", L.duplicate(3, 5, 8))
    assert not (tmp_path / "o.gguf").exists()
    # repeating a whole 4-layer period keeps every position's class
    path = L.duplicate(4, 8, 8)
    out = S.rewrite(p, tmp_path / "o.gguf", path)
    _check_layers(p, out, path)


def test_moe_stride_key(tmp_path):
    p = F.write_model(tmp_path / "l4.gguf", ModelSpec(
        arch="llama4", n_layers=8, kv={"{arch}.interleave_moe_layer_step": 2,
                                       "{arch}.attention.sliding_window": 0}))
    with pytest.raises(SurgeryError, match="MoE layers"):
        S.rewrite(p, tmp_path / "o.gguf", L.duplicate(3, 4, 8))
    # llama4 without SWA: the last layer is NoPE by index (step = n_layer) -> it must stay last
    with pytest.raises(SurgeryError, match="NoPE last layer"):
        S.rewrite(p, tmp_path / "o.gguf", L.ablate(7, 8) + [7, 7])
    out = S.rewrite(p, tmp_path / "o.gguf", [0, 1, 2, 3, 2, 3, 4, 5, 6, 7])
    _check_layers(p, out, [0, 1, 2, 3, 2, 3, 4, 5, 6, 7])


def test_smollm3_nope_layers(tmp_path):
    p = F.write_model(tmp_path / "s.gguf", ModelSpec(arch="smollm3", n_layers=8))
    with pytest.raises(SurgeryError, match="NoPE"):
        S.rewrite(p, tmp_path / "o.gguf", L.duplicate(1, 2, 8))
    S.rewrite(p, tmp_path / "o.gguf", L.duplicate(0, 4, 8))


def test_leading_dense_layers_and_nextn(tmp_path):
    p = F.write_model(tmp_path / "moe.gguf", ModelSpec(
        arch="glm4moe", n_layers=6,
        kv={"{arch}.leading_dense_block_count": 2, "{arch}.nextn_predict_layers": 1,
            "{arch}.attention.head_count": [8, 8, 8, 8, 8, 4],
            "{arch}.expert_feed_forward_length": [0, 0, 7, 7, 9]}))  # main layers only
    # repeat a dense layer within the dense prefix: count rewritten
    out = S.rewrite(p, tmp_path / "a.gguf", [0, 0, 1, 2, 3, 4, 5])
    r = F.read(out)
    assert F.field_value(r, "glm4moe.leading_dense_block_count") == 3
    assert F.field_value(r, "glm4moe.nextn_predict_layers") == 1
    assert F.field_value(r, "glm4moe.attention.head_count") == [8, 8, 8, 8, 8, 8, 4]
    assert F.field_value(r, "glm4moe.expert_feed_forward_length") == [0, 0, 0, 7, 7, 9]
    # repeat MoE layers: allowed, NextN layer stays last
    path = L.duplicate(2, 5, 6)
    assert path[-1] == 5
    S.rewrite(p, tmp_path / "b.gguf", path)
    # dense after MoE: refused
    with pytest.raises(SurgeryError, match="leading_dense_block_count"):
        S.rewrite(p, tmp_path / "c.gguf", [0, 1, 2, 1, 3, 4, 5])
    # NextN layer repeated, moved or dropped: refused
    for bad in ([0, 1, 2, 3, 4, 5, 5], [0, 1, 2, 5, 3, 4], [0, 1, 2, 3, 4], L.duplicate(3, 6, 6)):
        with pytest.raises(SurgeryError, match="nextn_predict_layers"):
            S.rewrite(p, tmp_path / "d.gguf", bad)
    assert not (tmp_path / "c.gguf").exists() and not (tmp_path / "d.gguf").exists()


def test_fixed_structure_allows_identity_only(tmp_path):
    p = F.write_model(tmp_path / "g3n.gguf", ModelSpec(arch="gemma3n", n_layers=4))
    with pytest.raises(SurgeryError, match="only the identity path"):
        S.rewrite(p, tmp_path / "o.gguf", [0, 1, 1, 2, 3])
    S.rewrite(p, tmp_path / "o.gguf", L.identity(4))
    q = F.write_model(tmp_path / "kv.gguf", ModelSpec(
        arch="newarch", n_layers=4, kv={"{arch}.attention.shared_kv_layers": 2}))
    with pytest.raises(SurgeryError, match="shared_kv_layers"):
        S.rewrite(q, tmp_path / "o2.gguf", [0, 0, 1, 2, 3])
    # a sliding-window period on an architecture whose pattern rule we do not know
    u = F.write_model(tmp_path / "u.gguf", ModelSpec(
        arch="newarch", n_layers=4, kv={"{arch}.attention.sliding_window_pattern": 2}))
    with pytest.raises(SurgeryError, match="sliding_window_pattern"):
        S.rewrite(u, tmp_path / "o3.gguf", [0, 0, 1, 2, 3])
    assert not any((tmp_path / n).exists() for n in ("o2.gguf", "o3.gguf"))


def test_rules_table_is_data():
    # every rule condition and stride period is one the checker understands
    for arch, rules in S.ARCH_RULES.items():
        conds = [r.when for r in rules.strides] + ([rules.swa.when] if rules.swa else [])
        for c in conds:
            assert c in ("always", "sliding_window>0", "sliding_window!=0", "sliding_window==0") \
                or c.startswith("block_count=="), (arch, c)
        for r in rules.strides:
            assert isinstance(r.period, int) or r.period == "n_layer" or "{arch}" in r.period


# ------------------------------------------------------------------------------------------
# bad input and safety


def test_not_a_gguf(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"hello world, this is not a model at all")
    with pytest.raises(SurgeryError, match="not a GGUF"):
        SourceModel.open(p)
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(SurgeryError, match="not a GGUF"):
        SourceModel.open(tmp_path / "empty.gguf")
    with pytest.raises(SurgeryError, match="no such file"):
        SourceModel.open(tmp_path / "missing.gguf")


def test_truncated_gguf(tiny, tmp_path):
    data = tiny.read_bytes()
    head = tmp_path / "head.gguf"
    head.write_bytes(data[:200])  # inside the metadata
    with pytest.raises(SurgeryError, match="truncated GGUF header"):
        SourceModel.open(head)
    body = tmp_path / "body.gguf"
    body.write_bytes(data[:-100])  # inside the tensor data
    with pytest.raises(SurgeryError, match="truncated GGUF: tensor"):
        SourceModel.open(body)


def test_out_of_range_and_empty_paths(tiny, tmp_path):
    with pytest.raises(LayerPathError, match="layer 6 out of range 0..5"):
        S.rewrite(tiny, tmp_path / "o.gguf", [0, 6])
    with pytest.raises(LayerPathError, match="empty"):
        S.rewrite(tiny, tmp_path / "o.gguf", [])
    assert _files(tmp_path) == {"tiny.gguf"}


def test_target_is_the_source(tiny, tmp_path):
    before = tiny.read_bytes()
    with pytest.raises(SurgeryError, match="is the source model"):
        S.rewrite(tiny, tiny, L.duplicate(0, 2, 6))
    link = tmp_path / "link.gguf"
    link.symlink_to(tiny)
    with pytest.raises(SurgeryError, match="is the source model"):
        S.rewrite(tiny, link, L.duplicate(0, 2, 6))
    hard = tmp_path / "hard.gguf"
    os.link(tiny, hard)
    with pytest.raises(SurgeryError, match="is the source model"):
        S.rewrite(tiny, hard, L.duplicate(0, 2, 6))
    assert tiny.read_bytes() == before
    assert _files(tmp_path) == {"tiny.gguf", "link.gguf", "hard.gguf"}


def test_no_room(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(S, "free_bytes", lambda d: 1000)
    with pytest.raises(SurgeryError, match=r"not enough space .* need \d+ bytes .* 1000 free"):
        S.rewrite(tiny, tmp_path / "o.gguf", L.duplicate(0, 2, 6))
    assert _files(tmp_path) == {"tiny.gguf"}


@pytest.mark.parametrize("exc", [KeyboardInterrupt, OSError(28, "No space left on device")])
def test_failure_mid_copy_leaves_nothing(tiny, tmp_path, monkeypatch, exc):
    def boom(self, *a, **k):
        raise exc

    monkeypatch.setattr(S._Copier, "copy", boom)
    with pytest.raises(type(exc) if isinstance(exc, BaseException) else exc):
        S.rewrite(tiny, tmp_path / "o.gguf", L.duplicate(0, 2, 6))
    assert _files(tmp_path) == {"tiny.gguf"}


def test_existing_target_is_replaced_atomically(tiny, tmp_path):
    target = tmp_path / "o.gguf"
    target.write_bytes(b"old")
    S.rewrite(tiny, target, L.identity(6))
    assert target.read_bytes()[:4] == b"GGUF"
    with pytest.raises(SurgeryError, match="exists"):
        S.rewrite(tiny, target, L.identity(6), overwrite=False)


@pytest.mark.parametrize("mode", ["sendfile", "readwrite"])
def test_copy_fallbacks_give_the_same_file(tiny, tmp_path, monkeypatch, mode):
    ref = S.rewrite(tiny, tmp_path / "ref.gguf", L.duplicate(1, 3, 6)).read_bytes()
    orig_init = S._Copier.__init__

    def init(self):
        orig_init(self)
        self.mode = mode

    monkeypatch.setattr(S._Copier, "__init__", init)
    assert S.rewrite(tiny, tmp_path / "alt.gguf", L.duplicate(1, 3, 6)).read_bytes() == ref


def test_copy_file_range_unsupported_falls_back(tiny, tmp_path, monkeypatch):
    ref = S.rewrite(tiny, tmp_path / "ref.gguf", L.duplicate(1, 3, 6)).read_bytes()

    def exdev(*a, **k):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "copy_file_range", exdev, raising=False)
    assert S.rewrite(tiny, tmp_path / "alt.gguf", L.duplicate(1, 3, 6)).read_bytes() == ref


def test_temporary_rewrite_cleans_up(tiny, tmp_path):
    with S.temporary_rewrite(tiny, L.duplicate(1, 3, 6), tmp_dir=tmp_path) as p:
        assert p.parent == tmp_path and p.exists()
        _check_layers(tiny, p, L.duplicate(1, 3, 6))
    assert not p.exists()
    with pytest.raises(RuntimeError):
        with S.temporary_rewrite(tiny, L.identity(6), tmp_dir=tmp_path) as p2:
            raise RuntimeError("probe failed")
    assert not p2.exists()
    assert _files(tmp_path) == {"tiny.gguf"}


def test_temporary_files_are_recognised_with_their_writer_pid(tiny, tmp_path, monkeypatch):
    """The names this module writes are the ones sweep's stale-file cleanup can attribute."""
    seen = []
    real_open = os.open

    def spy(path, *a, **kw):
        seen.append(Path(path).name)
        return real_open(path, *a, **kw)

    monkeypatch.setattr(os, "open", spy)
    with S.temporary_rewrite(tiny, L.duplicate(1, 3, 6), tmp_dir=tmp_path) as p:
        assert S.temp_owner_pid(p.name) == os.getpid()
    partial = [n for n in seen if n.startswith(".") and "partial" in n]
    assert partial and all(S.temp_owner_pid(n) == os.getpid() for n in partial)
    assert S.temp_owner_pid("tiny.gguf") is None
    assert S.temp_owner_pid("model.Q4_K_M.gguf") is None


@pytest.fixture
def scratch_base(tmp_path, monkeypatch):
    """A private stand-in for /dev/shm, so the scratch dir's life can be watched exactly."""
    base = tmp_path / "shm"
    base.mkdir()
    monkeypatch.setattr(S, "_scratch_bases", lambda: (base,))
    return base


def test_default_tmp_dir_is_private_and_lives_only_while_used(tiny, scratch_base):
    d = S.default_tmp_dir()
    assert d == scratch_base / f"rys-{os.getuid()}"
    assert not d.exists()  # named, not created
    with S.temporary_rewrite(tiny, L.duplicate(1, 3, 6)) as p:
        assert p.parent == d
        st = os.lstat(d)
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
        assert stat.S_IMODE(st.st_mode) == 0o700
        with S.temporary_rewrite(tiny, L.identity(6)) as p2:
            assert p2.parent == d
        assert d.is_dir() and p.exists()  # still holding the first model
    assert list(scratch_base.iterdir()) == []
    with S.scratch_dir() as d2:
        assert d2 == d and stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    assert list(scratch_base.iterdir()) == []


def test_scratch_dir_stays_while_another_process_has_files(tiny, scratch_base):
    d = scratch_base / f"rys-{os.getuid()}"
    d.mkdir(mode=0o755)
    other = d / "tiny.other.gguf"
    other.write_bytes(b"x")
    with S.temporary_rewrite(tiny, L.identity(6)):
        assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700  # made private
    assert list(d.iterdir()) == [other]


def test_temporary_rewrite_remakes_a_scratch_dir_removed_under_it(tiny, scratch_base, monkeypatch):
    """Another rys process emptied and removed the dir between our mkdir and our first file."""
    real, calls = S.rewrite, []

    def racing_rewrite(src, target, path):
        calls.append(target)
        if len(calls) == 1:
            target.parent.rmdir()
        return real(src, target, path)

    monkeypatch.setattr(S, "rewrite", racing_rewrite)
    with S.temporary_rewrite(tiny, L.identity(6)) as p:
        assert p.exists()
    assert len(calls) == 2 and list(scratch_base.iterdir()) == []


def test_removing_stale_temporaries_drops_the_emptied_scratch_dir(scratch_base):
    d = scratch_base / f"rys-{os.getuid()}"
    d.mkdir(mode=0o700)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = proc.pid
    (d / f"tiny.x.{dead}-0.gguf").write_bytes(b"x")
    assert [p.name for p in S.remove_stale_temporaries(d)] == [f"tiny.x.{dead}-0.gguf"]
    assert not d.exists()


def test_verify(tiny, tmp_path):
    out = S.rewrite(tiny, tmp_path / "o.gguf", L.duplicate(1, 3, 6))
    assert "8 layers" in S.verify(out, expect_path=L.duplicate(1, 3, 6))
    with pytest.raises(SurgeryError):
        S.verify(out, expect_path=L.identity(6))


# ------------------------------------------------------------------------------------------
# CLIs


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_cli_inspect(tiny, tmp_path, capsys):
    assert S.main(["inspect", str(tiny)]) == 0
    out = capsys.readouterr().out
    assert "architecture:  llama" in out and "block count:   6" in out
    assert "llama.attention.head_count = 1,2,3,4,5,6" in out
    assert "rys provenance: none" in out
    rewritten = S.rewrite(tiny, tmp_path / "o.gguf", L.duplicate(1, 3, 6))
    assert S.main(["inspect", str(rewritten)]) == 0
    assert "rys.layer_path=0..2,1..5" in capsys.readouterr().out
    g = gemma3(tmp_path)
    assert S.main(["inspect", "--json", str(g)]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["index_derived_kinds"]["sliding_window"] == [il % 6 < 5 for il in range(12)]
    assert data["constraints"]


def test_cli_rys_shortcut(tiny, tmp_path, capsys):
    out = tmp_path / "dup.gguf"
    assert S.main([str(tiny), str(out), "-i", "1", "-j", "3"]) == 0
    _check_layers(tiny, out, L.duplicate(1, 3, 6))
    assert S.main([str(tiny), str(tmp_path / "dup2.gguf"), "-i", "1", "-j", "3", "--times", "2"]) == 0
    _check_layers(tiny, tmp_path / "dup2.gguf", L.duplicate(1, 3, 6, 2))
    # existing OUT needs --force
    assert S.main([str(tiny), str(out), "-i", "0", "-j", "1"]) == 2
    assert "--force" in _one_line_error(capsys)
    assert S.main([str(tiny), str(out), "-i", "0", "-j", "1", "--force"]) == 0


@pytest.mark.parametrize("case", ["not_gguf", "truncated", "out_of_range", "target_is_source",
                                  "no_room", "missing_dir"])
def test_cli_bad_input(tiny, tmp_path, capsys, monkeypatch, case):
    src, out = tiny, tmp_path / "out.gguf"
    args = ["-i", "1", "-j", "3"]
    expect = ""
    if case == "not_gguf":
        src = tmp_path / "junk.gguf"
        src.write_bytes(b"\0" * 100)
        expect = "not a GGUF"
    elif case == "truncated":
        src = tmp_path / "cut.gguf"
        src.write_bytes(tiny.read_bytes()[:300])
        expect = "truncated"
    elif case == "out_of_range":
        args = ["-i", "2", "-j", "9"]
        expect = "bad block (2, 9)"
    elif case == "target_is_source":
        out = tiny
        expect = "is the source model"
    elif case == "no_room":
        monkeypatch.setattr(S, "free_bytes", lambda d: 10)
        expect = "not enough space"
    elif case == "missing_dir":
        out = tmp_path / "nope" / "out.gguf"
        expect = "does not exist"
    before = _files(tmp_path)
    assert S.main([str(src), str(out), *args]) == 2
    err = _one_line_error(capsys)
    assert err.startswith("rys-surgery: error:") and expect in err
    assert _files(tmp_path) == before


@pytest.mark.parametrize("spec, expect", [("", "empty layer path"), ("0..6", "layer 6 out of range 0..5"),
                                          ("1..", "bad layer path item '1..'")])
def test_rys_path_cli_bad_paths(tiny, tmp_path, capsys, spec, expect):
    assert S.path_main([str(tiny), str(tmp_path / "o.gguf"), "-p", spec]) == 2
    err = _one_line_error(capsys)
    assert expect in err
    assert _files(tmp_path) == {"tiny.gguf"}


def test_rys_path_cli(tiny, tmp_path, capsys):
    out = tmp_path / "o.gguf"
    assert S.path_main([str(tiny), str(out), "-p", "0..2,1..-1", "-v"]) == 0
    printed = capsys.readouterr().out
    assert "repeated: 1..2 run 2 times" in printed
    _check_layers(tiny, out, L.duplicate(1, 3, 6))
    # dry run: mapping, count, size; nothing written
    assert S.path_main([str(tiny), str(tmp_path / "dry.gguf"), "-p", "(0..1)x2,2..5", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "   2 -> 0" in printed and "new layer count: 8" in printed
    size = SourceModel.open(tiny).estimate_size([0, 1, 0, 1, 2, 3, 4, 5])
    assert f"output size: {size} bytes" in printed
    assert not (tmp_path / "dry.gguf").exists()
    # existing output needs --force; refused index-derived paths exit 2 too
    assert S.path_main([str(tiny), str(out), "-p", "0..5"]) == 2
    assert "--force" in _one_line_error(capsys)
    g = gemma3(tmp_path, n_layers=62)
    assert S.path_main([str(g), str(tmp_path / "g.gguf"), "-p", "0..61,61"]) == 2
    assert "62" in _one_line_error(capsys)


def test_rys_path_tmp_check(tiny, capsys):
    assert S.path_main([str(tiny), "-p", "0..3,2..5", "--tmp-check"]) == 0
    printed = capsys.readouterr().out
    assert "verified" in printed and "8 layers" in printed
    d = S.default_tmp_dir()
    leftover = [p for p in d.iterdir() if p.name.startswith("tiny.")] if d.exists() else []
    assert leftover == []


def test_rys_path_mergekit_from_model(tiny, tmp_path, capsys):
    y = tmp_path / "m.yaml"
    assert S.path_main([str(tiny), "--mergekit-yaml", str(y), "--model", "org/x", "-p", "0..2,1..-1"]) == 0
    assert "layer_range: [1, 6]" in y.read_text()
    assert "rys-path" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["rys-surgery", "rys-path"])
def test_scripts_run_directly(tiny, tmp_path, command):
    """`python -m rys.gguf_surgery ...` is rys-surgery; `... path ...` is rys-path."""
    script = [sys.executable, "-m", "rys.gguf_surgery"] + \
        (["path"] if command == "rys-path" else [])
    args = ["inspect", str(tiny)] if command == "rys-surgery" else [str(tiny), "-p", "0..5", "--dry-run"]
    ok = subprocess.run([*script, *args], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([*script, str(tmp_path / "missing.gguf"), str(tmp_path / "o.gguf"),
                          *(["-i", "0", "-j", "1"] if command == "rys-surgery" else ["-p", "0"])],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert len(bad.stderr.strip().splitlines()) == 1 and "no such file" in bad.stderr
    assert not (tmp_path / "o.gguf").exists()


def test_copy_uses_few_kernel_copies(tiny, tmp_path, monkeypatch):
    """Tensors adjacent in both files are merged into one copy: identity is a single copy; a
    duplicated block two (up to the block's end, then from the repeat's start to the end)."""
    calls = []
    orig = S._Copier.copy

    def spy(self, fin, fout, src, dst, length):
        calls.append(length)
        return orig(self, fin, fout, src, dst, length)

    monkeypatch.setattr(S._Copier, "copy", spy)
    S.rewrite(tiny, tmp_path / "i.gguf", L.identity(6))
    assert len(calls) == 1
    calls.clear()
    S.rewrite(tiny, tmp_path / "d.gguf", L.duplicate(1, 3, 6))
    assert len(calls) == 2


def test_a_server_that_keeps_its_model_type_ignores_block_counts(tmp_path):
    """The virtual engine runs paths in a server that keeps the model type it loaded: a
    truncated path (a logit lens) on Gemma 3 27B is fine there, not in a rewritten file."""
    from rys import engine as E

    src = S.SourceModel.open(gemma3(tmp_path, n_layers=62))
    lens = list(range(20))
    with pytest.raises(SurgeryError, match="62"):
        S.check_path(src, lens)
    assert S.check_path(src, lens, counts=False) == lens
    settings = E.ServerSettings(binary="/bin/true")
    E.VirtualEngine(src, settings).check(lens)
    with pytest.raises(SurgeryError, match="62"):
        E.PhysicalEngine(src, settings, tmp_path).check(lens)
