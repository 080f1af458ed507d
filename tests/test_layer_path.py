"""The layer-path language: parse, canonical format, constructors, describe, mergekit export,
and the input errors of the rys-path CLI (which lives in gguf_surgery, the writer)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rys import gguf_surgery as S
from rys import layer_path as L
from rys.layer_path import LayerPathError

# ------------------------------------------------------------------------------------------
# parse


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("0..14,12,13,14,15..39", 40, list(range(15)) + [12, 13, 14] + list(range(15, 40))),
        ("0..14,12..39", 40, list(range(15)) + list(range(12, 40))),
        ("(12..14)x3", None, [12, 13, 14] * 3),
        ("12..14x2", None, [12, 13, 14] * 2),
        ("5x2", None, [5, 5]),
        ("5x1", None, [5]),
        (" 0 .. 2 , 7 ", None, [0, 1, 2, 7]),
        ("3..0", None, [3, 2, 1, 0]),
        ("0..-1", 4, [0, 1, 2, 3]),
        ("-2,-1", 5, [3, 4]),
        ("-3..-1", 5, [2, 3, 4]),
        ("0,(1,(2x2))x2,3", None, [0, 1, 2, 2, 1, 2, 2, 3]),
        ("7", 8, [7]),
    ],
)
def test_parse(spec, n, expected):
    assert L.parse(spec, n) == expected


@pytest.mark.parametrize(
    "spec, n, message",
    [
        ("1..", 40, "bad layer path item '1..': expected a layer index after '..'"),
        ("0..3,1..,5", 40, "bad layer path item '1..'"),
        ("40", 40, "layer 40 out of range 0..39"),
        ("0..40", 40, "layer 40 out of range 0..39"),
        ("", 40, "empty layer path"),
        ("   ", 40, "empty layer path"),
        ("1,,2", 40, "bad layer path item ''"),
        ("1,2,", 40, "bad layer path item ''"),
        ("(1,2", 40, "bad layer path item '(1,2': missing ')'"),
        ("1,2)", 40, "unmatched ')'"),
        ("a", 40, "bad layer path item 'a'"),
        ("3x0", 40, "bad layer path item '3x0': repeat count must be at least 1"),
        ("3x", 40, "bad layer path item '3x': expected a repeat count"),
        ("1-3", 40, "bad layer path item '1-3'"),
        ("-1", None, "negative layer index -1 needs the model's layer count"),
        ("-41", 40, "layer -41 out of range -40..-1"),
        ("1.5", 40, "bad layer path item '1.5'"),
    ],
)
def test_parse_errors_name_the_item(spec, n, message):
    with pytest.raises(LayerPathError) as ei:
        L.parse(spec, n)
    assert message in str(ei.value)
    assert "\n" not in str(ei.value)


def test_layer_path_error_is_value_error():
    assert issubclass(LayerPathError, ValueError)


# ------------------------------------------------------------------------------------------
# format


@pytest.mark.parametrize(
    "path, expected",
    [
        (list(range(40)), "0..39"),
        (L.duplicate(12, 15, 40), "0..14,12..39"),
        ([5, 5], "5,5"),
        ([3, 4], "3,4"),
        ([3, 4, 5], "3..5"),
        ([9, 8, 7, 6], "9..6"),
        ([1, 2, 1, 2, 1, 2], "(1,2)x3"),
        ([7], "7"),
        ([0, 2, 4], "0,2,4"),
        ([0, 1, 2] * 3, "0..2x3"),
    ],
)
def test_format_hand_cases(path, expected):
    assert L.format(path) == expected
    assert L.parse(expected) == path


def test_format_uses_repeat_groups_when_shorter():
    path = L.duplicate(12, 15, 40, times=3)
    s = L.format(path)
    assert L.parse(s) == path
    assert len(s) < len("0..14,12..14,12..14,12..14,15..39")
    assert "x" in s


def _naive(path):
    return ",".join(map(str, path))


def _runs(path):
    """Spec from maximal ascending runs only (what a simple formatter would produce)."""
    parts, i = [], 0
    while i < len(path):
        j = i
        while j + 1 < len(path) and path[j + 1] == path[j] + 1:
            j += 1
        parts.append(str(path[i]) if i == j else f"{path[i]}..{path[j]}")
        i = j + 1
    return ",".join(parts)


paths = st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=80)


@settings(max_examples=300, deadline=None)
@given(paths)
def test_format_roundtrip_and_shortness(path):
    s = L.format(path)
    assert L.parse(s) == path
    assert len(s) <= len(_naive(path))
    assert len(s) <= len(_runs(path))
    assert re.fullmatch(r"[0-9.,()x]+", s)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=5), min_size=1, max_size=6).flatmap(
    lambda block: st.tuples(st.just(block), st.integers(min_value=2, max_value=5))))
def test_format_compresses_repeats(block_k):
    block, k = block_k
    path = block * k
    s = L.format(path)
    assert L.parse(s) == path
    # never longer than writing the block once and repeating it
    once = L.format(block)
    wrapped = once if re.fullmatch(r"\d+(\.\.\d+)?", once) else f"({once})"
    assert len(s) <= len(f"{wrapped}x{k}")


def test_format_is_canonical_for_equal_paths():
    a = L.parse("0..14,12,13,14,15..39")
    b = L.parse("0..11,12..14x2,15..39")
    assert a == b
    assert L.format(a) == L.format(b)


def test_format_rejects_bad_paths():
    with pytest.raises(LayerPathError):
        L.format([])
    with pytest.raises(LayerPathError):
        L.format([1, -2])
    with pytest.raises(LayerPathError):
        L.format([1, True])


def test_format_is_fast_enough_for_big_paths():
    # a 512-layer model with a 200-layer block repeated: must stay interactive (no timing
    # assertion, but an exponential blow-up would hang the suite)
    path = L.duplicate(100, 300, 512, times=3)
    assert L.parse(L.format(path)) == path


# ------------------------------------------------------------------------------------------
# slug


@settings(max_examples=200, deadline=None)
@given(paths)
def test_slug_is_filesystem_safe(path):
    s = L.slug(path)
    assert re.fullmatch(r"[0-9A-Za-z._-]+", s)
    assert len(s) <= 80


def test_slug_is_injective_on_distinct_paths():
    cands = [
        [0, 1, 2], [0, 1, 2, 2], [0, 2], [0, 1, 2, 0, 1, 2], [0, 12], [1, 2] * 2,
        L.duplicate(12, 15, 40), L.duplicate(12, 15, 40, 2), L.duplicate(1, 4, 40),
        list(range(40)), L.ablate(5, 40),
    ]
    slugs = [L.slug(p) for p in cands]
    assert len(set(slugs)) == len(cands)


def test_slug_long_paths_fall_back_to_a_hash():
    a = list(range(0, 200, 2))
    b = list(range(0, 200, 2)) + [1]
    sa, sb = L.slug(a), L.slug(b)
    assert len(sa) <= 80 and len(sb) <= 80
    assert sa != sb
    assert re.search(r"\.[0-9a-f]{16}$", sa)


# ------------------------------------------------------------------------------------------
# constructors and describe


def test_constructors():
    assert L.identity(4) == [0, 1, 2, 3]
    assert L.duplicate(1, 3, 5) == [0, 1, 2, 1, 2, 3, 4]
    assert L.duplicate(1, 3, 5, times=2) == [0, 1, 2, 1, 2, 1, 2, 3, 4]
    assert L.duplicate(1, 3, 5, times=0) == [0, 1, 2, 3, 4]
    assert L.duplicate(0, 5, 5) == list(range(5)) * 2
    assert L.ablate(2, 5) == [0, 1, 3, 4]
    assert L.ablate([0, 4], 5) == [1, 2, 3]


@pytest.mark.parametrize("args", [(3, 3, 5), (4, 2, 5), (-1, 2, 5), (0, 6, 5)])
def test_duplicate_rejects_bad_blocks(args):
    with pytest.raises(LayerPathError):
        L.duplicate(*args)


def test_ablate_rejects_bad_input():
    with pytest.raises(LayerPathError):
        L.ablate(5, 5)
    with pytest.raises(LayerPathError):
        L.ablate(range(3), 3)
    with pytest.raises(LayerPathError):
        L.identity(0)


def test_describe():
    assert "identity" in L.describe(L.identity(6), 6)
    d = L.describe(L.duplicate(12, 15, 40), 40)
    assert "43 layers from 40" in d
    assert "repeated: 12..14 run 2 times" in d
    assert "skipped: none" in d
    assert "reordered: no" in d
    d = L.describe([0, 2, 1, 3, 3], 5)
    assert "3 run 2 times" in d
    assert "skipped: 4" in d
    assert "reordered: yes" in d
    with pytest.raises(LayerPathError):
        L.describe([0, 9], 5)


# ------------------------------------------------------------------------------------------
# mergekit


def test_mergekit_slices():
    assert L.mergekit_slices(L.duplicate(12, 15, 40)) == [(0, 15), (12, 40)]
    assert L.mergekit_slices(L.identity(40)) == [(0, 40)]
    assert L.mergekit_slices([0, 1, 2, 2, 3]) == [(0, 3), (2, 4)]
    assert L.mergekit_slices([3, 2, 1]) == [(3, 4), (2, 3), (1, 2)]
    assert L.mergekit_slices(L.ablate(5, 10)) == [(0, 5), (6, 10)]


def test_mergekit_yaml():
    y = L.mergekit_yaml(L.duplicate(12, 15, 40), "org/Model-7B")
    assert "merge_method: passthrough" in y
    assert "dtype: bfloat16" in y
    assert y.count("  - sources:") == 2
    ranges = re.findall(r"layer_range: \[(\d+), (\d+)\]", y)
    assert ranges == [("0", "15"), ("12", "40")]
    assert y.count('model: "org/Model-7B"') == 2
    # a model name needing quotes stays one valid double-quoted scalar
    y2 = L.mergekit_yaml([0], 'we"ird: name')
    assert 'model: "we\\"ird: name"' in y2


# ------------------------------------------------------------------------------------------
# CLI (the parts that need no GGUF; GGUF-writing CLI paths are in test_surgery.py)


def test_cli_mergekit_yaml_without_a_model(tmp_path, capsys):
    out = tmp_path / "m.yaml"
    rc = S.path_main(["--mergekit-yaml", str(out), "--model", "org/M", "-p", "0..14,12..39",
                 "--n-layers", "40"])
    assert rc == 0
    text = out.read_text()
    assert re.findall(r"layer_range: \[(\d+), (\d+)\]", text) == [("0", "15"), ("12", "40")]
    printed = capsys.readouterr().out
    assert "rys-path" in printed and "-p 0..14,12..39" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--mergekit-yaml", "{out}", "--model", "m", "-p", "0..40", "--n-layers", "40"],
         "layer 40 out of range 0..39"),
        (["--mergekit-yaml", "{out}", "--model", "m", "-p", "", "--n-layers", "40"],
         "empty layer path"),
        (["--mergekit-yaml", "{out}", "--model", "m", "-p", "1..", "--n-layers", "40"],
         "bad layer path item '1..'"),
        (["--mergekit-yaml", "{out}", "-p", "0..3", "--n-layers", "40"], "--model"),
        (["--mergekit-yaml", "{out}", "--model", "m", "-p", "0..3"], "--n-layers"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, capsys, argv, message):
    out = tmp_path / "m.yaml"
    rc = S.path_main([a.replace("{out}", str(out)) for a in argv])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1
    assert not out.exists()


def test_compose_puts_each_blocks_repeat_after_its_last_layer():
    from rys import layer_path as LP

    assert LP.compose([(3, 6, 1)], 18) == LP.duplicate(3, 6, 18)
    assert LP.compose([(10, 12, 1), (3, 6, 2)], 18) == (
        list(range(6)) + [3, 4, 5] * 2 + list(range(6, 12)) + [10, 11] + list(range(12, 18)))
    with pytest.raises(LP.LayerPathError, match="same layer"):
        LP.compose([(3, 6, 1), (4, 6, 1)], 18)
