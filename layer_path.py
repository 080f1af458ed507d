"""The layer-path language: which original layers a rewritten model runs, in which order.

A layer path is a list of original layer indices; position p of the new model runs original
layer path[p]. Repeats (RYS duplication), omissions (ablation) and reorders are all allowed.

Grammar (whitespace is ignored everywhere)::

    path  := item ("," item)*
    item  := atom ("x" COUNT)?           # repeat the atom COUNT times in a row (COUNT >= 1)
    atom  := INDEX | INDEX ".." INDEX    # single layer, or inclusive range (descending allowed)
           | "(" path ")"                # group, usually followed by xCOUNT
    INDEX := "-"? DIGITS                 # negative counts from the end (-1 = last layer)

Examples: ``0..14,12,13,14,15..39`` (= ``0..14,12..39``), ``0..11,(12..14)x3,15..39``, ``5x2``,
``0..-1`` (identity), ``0..5,7..-1`` (skip layer 6).

`format` gives the shortest string that parses back to the same path (ties broken
lexicographically), so it doubles as the canonical form used in file names and records; `slug`
gives a filesystem-safe version of it.

This module depends on nothing else of rys: the ``rys-path`` command that writes a GGUF following a
path lives with the writer, in gguf_surgery. Manual: docs/layer-paths.md.
"""

from __future__ import annotations

import hashlib
import json
import operator
import re
from collections import Counter
from collections.abc import Sequence

__all__ = [
    "LayerPathError",
    "parse",
    "format",
    "slug",
    "identity",
    "duplicate",
    "ablate",
    "describe",
    "validate",
    "mergekit_slices",
    "mergekit_yaml",
]

class LayerPathError(ValueError):
    """A layer path that does not parse or does not fit the model."""


# --------------------------------------------------------------------------------------------
# parsing


_INT_RE = re.compile(r"-?\d+")


class _Parser:
    """Recursive-descent parser over the whitespace-free spec; errors name the offending item."""

    def __init__(self, spec: str, n_layers: int | None) -> None:
        self.s = "".join(spec.split())
        self.n = n_layers

    # -- error helpers --
    def _item_text(self, start: int) -> str:
        """The item beginning at `start`: up to the next comma/closing paren at the same depth."""
        depth = 0
        i = start
        s = self.s
        while i < len(s):
            c = s[i]
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            elif c == "," and depth == 0:
                break
            i += 1
        return s[start:i]

    def _fail(self, start: int, why: str) -> LayerPathError:
        return LayerPathError(f"bad layer path item {self._item_text(start)!r}: {why}")

    # -- grammar --
    def parse(self) -> list[int]:
        if not self.s:
            raise LayerPathError("empty layer path")
        out, pos = self._seq(0)
        if pos != len(self.s):
            # only an unmatched ')' can stop the top-level sequence early
            raise LayerPathError(f"bad layer path: unmatched ')' at character {pos + 1} of {self.s!r}")
        return out

    def _seq(self, pos: int) -> tuple[list[int], int]:
        out: list[int] = []
        while True:
            vals, pos = self._item(pos)
            out.extend(vals)
            if pos < len(self.s) and self.s[pos] == ",":
                pos += 1
                continue
            return out, pos

    def _item(self, pos: int) -> tuple[list[int], int]:
        start = pos
        s = self.s
        if pos >= len(s) or s[pos] in ",)":
            raise LayerPathError(
                f"bad layer path item '': empty item in {s!r}" if s else "empty layer path"
            )
        if s[pos] == "(":
            vals, pos = self._seq(pos + 1)
            if pos >= len(s) or s[pos] != ")":
                raise self._fail(start, "missing ')'")
            pos += 1
        else:
            m = _INT_RE.match(s, pos)
            if not m:
                raise self._fail(start, f"expected a layer index at {s[pos]!r}")
            a = self._index(int(m.group()), start)
            pos = m.end()
            if s.startswith("..", pos):
                m2 = _INT_RE.match(s, pos + 2)
                if not m2:
                    raise self._fail(start, "expected a layer index after '..'")
                b = self._index(int(m2.group()), start)
                pos = m2.end()
                step = 1 if b >= a else -1
                vals = list(range(a, b + step, step))
            else:
                vals = [a]
        if pos < len(s) and s[pos] == "x":
            m = re.compile(r"\d+").match(s, pos + 1)
            if not m:
                raise self._fail(start, "expected a repeat count after 'x'")
            count = int(m.group())
            if count < 1:
                raise self._fail(start, "repeat count must be at least 1")
            vals = vals * count
            pos = m.end()
        if pos < len(s) and s[pos] not in ",)":
            raise self._fail(start, f"unexpected {s[pos]!r}")
        return vals, pos

    def _index(self, i: int, start: int) -> int:
        if i < 0:
            if self.n is None:
                raise self._fail(start, f"negative layer index {i} needs the model's layer count")
            i += self.n
            if i < 0:
                raise LayerPathError(f"layer {i - self.n} out of range -{self.n}..-1")
        if self.n is not None and i >= self.n:
            raise LayerPathError(f"layer {i} out of range 0..{self.n - 1}")
        return i


def parse(spec: str, n_layers: int | None = None) -> list[int]:
    """Parse a layer-path spec into the list of original layer indices it runs.

    With `n_layers`, negative indices are resolved and every index is range-checked.
    """
    if not isinstance(spec, str):
        raise LayerPathError(f"layer path must be a string, got {type(spec).__name__}")
    return _Parser(spec, n_layers).parse()


def validate(path: Sequence[int], n_layers: int | None = None) -> list[int]:
    """Check a path given as integers: non-empty, all ints in range. Returns it as a list."""
    out = list(path)
    if not out:
        raise LayerPathError("empty layer path")
    for k, x in enumerate(out):
        if isinstance(x, bool):
            raise LayerPathError(f"layer index {x!r} is not an integer")
        try:
            x = out[k] = operator.index(x)
        except TypeError:
            raise LayerPathError(f"layer index {x!r} is not an integer") from None
        if x < 0:
            raise LayerPathError(f"layer {x} is negative")
        if n_layers is not None and x >= n_layers:
            raise LayerPathError(f"layer {x} out of range 0..{n_layers - 1}")
    return out


# --------------------------------------------------------------------------------------------
# canonical formatting


def _run_end(path: Sequence[int], i: int, step: int) -> int:
    """Index one past the end of the arithmetic run (given step) starting at i."""
    j = i + 1
    while j < len(path) and path[j] == path[j - 1] + step:
        j += 1
    return j


def _shortest(path: tuple[int, ...], memo: dict[tuple[int, ...], str]) -> str:
    """Shortest spec for `path` (min by length, then lexicographically); dynamic programming
    over suffixes, trying single indices, ranges and repeated groups at each position.

    A range token may end only at its run's end, one before it, or where a repeated group
    starts: ending anywhere else leaves the next token continuing the same run, and merging
    the two would be strictly shorter, so no optimum is lost."""
    hit = memo.get(path)
    if hit is not None:
        return hit
    n = len(path)
    if len(set(path)) == n:
        # no value twice: nothing repeats and a run cannot turn around, so the maximal runs
        # (split where consecutive values differ by more than one) are the optimal tokens
        memo[path] = _distinct_spec(path)
        return memo[path]
    # repeats[i]: (block length, max count >= 2) of blocks repeating back-to-back from i
    repeats: list[list[tuple[int, int]]] = [[] for _ in range(n)]
    for i in range(n):
        a = path[i]
        for length in range(1, (n - i) // 2 + 1):
            if path[i + length] != a:
                continue
            block = path[i:i + length]
            k = 1
            while path[i + k * length:i + (k + 1) * length] == block:
                k += 1
            if k >= 2:
                repeats[i].append((length, k))
    best: list[str] = [""] * (n + 1)

    def consider(cands: list[str], token: str, j: int) -> None:
        cands.append(token if j == n else token + "," + best[j])

    for i in range(n - 1, -1, -1):
        cands: list[str] = []
        a = path[i]
        consider(cands, str(a), i + 1)
        for step in (1, -1):
            end = _run_end(path, i, step)
            if end - i < 3:
                continue
            ends = {end, end - 1}
            ends.update(j for j in range(i + 3, end - 1) if repeats[j])
            for j in ends:
                if j >= i + 3:  # a 2-long range is never shorter than "a,b"
                    consider(cands, f"{a}..{path[j - 1]}", j)
        for length, k in repeats[i]:
            block = path[i:i + length]
            inner = _run_spec(block) or _shortest(block, memo)
            atom = inner if _is_atom(inner) else f"({inner})"
            for kk in range(2, k + 1):
                consider(cands, f"{atom}x{kk}", i + kk * length)
        best[i] = min(cands, key=lambda c: (len(c), c))
    memo[path] = best[0]
    return best[0]


def _distinct_spec(path: tuple[int, ...]) -> str:
    tokens: list[str] = []
    i = 0
    n = len(path)
    while i < n:
        j = i + 1
        if j < n and abs(path[j] - path[i]) == 1:
            step = path[j] - path[i]
            j = _run_end(path, i, step)
        tokens.append(_run_spec(path[i:j]) or "")
        i = j
    return ",".join(tokens)


def _run_spec(block: tuple[int, ...]) -> str | None:
    """Shortest spec of a block that is one consecutive run (up or down), else None."""
    if len(block) == 1:
        return str(block[0])
    step = block[1] - block[0]
    if step not in (1, -1) or any(block[k + 1] - block[k] != step for k in range(len(block) - 1)):
        return None
    if len(block) == 2:
        return f"{block[0]},{block[1]}"
    return f"{block[0]}..{block[-1]}"


def _is_atom(spec: str) -> bool:
    """True when `spec` can take an xCOUNT suffix without parentheses (one index or range)."""
    return re.fullmatch(r"\d+(\.\.\d+)?", spec) is not None


def format(path: Sequence[int]) -> str:  # noqa: A001 - public API name by design
    """The canonical (shortest) spec string for a path; ``parse(format(p)) == p``."""
    p = tuple(validate(path))
    return _shortest(p, {})


_SLUG_MAP = str.maketrans({",": "_", "(": "L", ")": "R"})


def slug(path: Sequence[int], max_len: int = 80) -> str:
    """A filesystem-safe name for a path (only ``[0-9x_LR.-]`` and hex); injective up to
    `max_len`, beyond which it is a prefix plus 16 hex digits of the canonical form's sha256."""
    canon = format(path)
    s = canon.replace("..", "-").translate(_SLUG_MAP)
    if len(s) <= max_len:
        return s
    digest = hashlib.sha256(canon.encode()).hexdigest()[:16]
    return f"{s[:max(1, max_len - 17)]}.{digest}"


# --------------------------------------------------------------------------------------------
# constructors


def identity(n_layers: int) -> list[int]:
    """The unchanged model: 0..n-1."""
    if n_layers < 1:
        raise LayerPathError(f"layer count must be positive, got {n_layers}")
    return list(range(n_layers))


def duplicate(i: int, j: int, n_layers: int, times: int = 1) -> list[int]:
    """RYS (i, j): layers i..j-1 (j exclusive) run `times` extra times after their first pass:
    0..j-1, then i..j-1 `times` more times, then j..n-1."""
    if n_layers < 1:
        raise LayerPathError(f"layer count must be positive, got {n_layers}")
    if not 0 <= i < j <= n_layers:
        raise LayerPathError(f"bad block ({i}, {j}): need 0 <= i < j <= {n_layers} (j exclusive)")
    if times < 0:
        raise LayerPathError(f"times must be >= 0, got {times}")
    return list(range(j)) + list(range(i, j)) * times + list(range(j, n_layers))


def compose(blocks: Sequence[tuple[int, int, int]], n_layers: int) -> list[int]:
    """Several RYS blocks in one path: each ``(i, j, times)`` runs layers i..j-1 ``times`` extra
    times right after layer j-1, as `duplicate` does for one block. Blocks must end at different
    layers (the order of two repeats after the same layer would be ambiguous)."""
    ends = [j for _, j, _ in blocks]
    if len(set(ends)) != len(ends):
        raise LayerPathError(f"blocks {list(blocks)} end at the same layer; compose needs "
                             f"different ends")
    after: dict[int, list[int]] = {}
    for i, j, times in blocks:
        after[j - 1] = duplicate(i, j, n_layers, times)[j: j + (j - i) * times]
    out: list[int] = []
    for k in range(n_layers):
        out.append(k)
        out += after.get(k, [])
    return out


def ablate(layers: int | Sequence[int], n_layers: int) -> list[int]:
    """The model without the given layers."""
    skip = {layers} if isinstance(layers, int) else set(layers)
    for x in skip:
        if not 0 <= x < n_layers:
            raise LayerPathError(f"layer {x} out of range 0..{n_layers - 1}")
    out = [x for x in range(n_layers) if x not in skip]
    if not out:
        raise LayerPathError("ablating every layer leaves an empty path")
    return out


# --------------------------------------------------------------------------------------------
# description


def _ranges(xs: Sequence[int]) -> str:
    """Compact 'a..b,c' text for a sorted set of ints."""
    xs = sorted(set(xs))
    parts: list[str] = []
    i = 0
    while i < len(xs):
        j = i
        while j + 1 < len(xs) and xs[j + 1] == xs[j] + 1:
            j += 1
        parts.append(str(xs[i]) if i == j else f"{xs[i]}..{xs[j]}")
        i = j + 1
    return ",".join(parts)


def describe(path: Sequence[int], n_layers: int) -> str:
    """Human-readable summary: what is repeated, skipped, reordered."""
    p = validate(path, n_layers)
    counts = Counter(p)
    lines = [f"path {format(p)}: {len(p)} layers from {n_layers}"]
    if p == identity(n_layers):
        lines.append("  identity: every layer once, in order")
        return "\n".join(lines)
    by_count: dict[int, list[int]] = {}
    for layer, c in counts.items():
        if c > 1:
            by_count.setdefault(c, []).append(layer)
    if by_count:
        rep = "; ".join(f"{_ranges(ls)} run {c} times" for c, ls in sorted(by_count.items()))
        lines.append(f"  repeated: {rep}")
    else:
        lines.append("  repeated: none")
    skipped = [x for x in range(n_layers) if x not in counts]
    lines.append(f"  skipped: {_ranges(skipped) if skipped else 'none'}")
    firsts = list(dict.fromkeys(p))
    reordered = firsts != sorted(firsts)
    jumps = [(p[k - 1], p[k]) for k in range(1, len(p)) if p[k] <= p[k - 1]]
    if jumps:
        shown = ", ".join(f"{a}->{b}" for a, b in jumps[:8]) + (" ..." if len(jumps) > 8 else "")
        lines.append(f"  backward jumps: {len(jumps)} ({shown})")
    lines.append(f"  reordered: {'yes (first visits out of order)' if reordered else 'no'}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# mergekit export


def mergekit_slices(path: Sequence[int]) -> list[tuple[int, int]]:
    """mergekit passthrough slices: end-exclusive [start, end) ranges of consecutive layers."""
    p = validate(path)
    out: list[tuple[int, int]] = []
    start = prev = p[0]
    for x in p[1:]:
        if x == prev + 1:
            prev = x
            continue
        out.append((start, prev + 1))
        start = prev = x
    out.append((start, prev + 1))
    return out


def mergekit_yaml(path: Sequence[int], model: str, dtype: str = "bfloat16") -> str:
    """A mergekit passthrough config building the same layer stack from a HF model."""
    q = json.dumps  # a JSON string is a valid YAML double-quoted scalar
    lines = [
        f"# rys layer path {format(path)} ({len(list(path))} layers)",
        "slices:",
    ]
    for a, b in mergekit_slices(path):
        lines += [
            "  - sources:",
            f"      - model: {q(model)}",
            f"        layer_range: [{a}, {b}]",
        ]
    lines += ["merge_method: passthrough", f"dtype: {dtype}", ""]
    return "\n".join(lines)
