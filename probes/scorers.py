"""Scorers: turn a model reply (generate mode) or next-token distributions (logprob mode) into a
score in [0, 1] for one item.

Pure functions, no I/O. A probe names its scorer; the registry maps the name to an instance.
Each scorer has a `version` that goes into the probe content hash, so changing a formula here
changes every affected probe's hash and old results never mix with new ones.

Formulas (documented with worked examples in docs/probes.md, "Scorers and formulas"):
  math        partial credit = digits * length (see `math_partial`), plus exact_match
  eq          per emotion penalty p(d) = d^2/4 for d <= 4, 4 + 2(d-4) beyond (max 16 at d = 10);
              score = 1 - sum(p) / (16 * n_emotions)
  choice      1 if the extracted letter / yes-no / integer equals the reference, else 0
  instruction fraction of constraints satisfied; metric strict = all satisfied
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from . import extract as ex

if TYPE_CHECKING:  # pragma: no cover
    from .loader import Item

__all__ = [
    "Scored",
    "LogprobQuery",
    "Scorer",
    "SCORERS",
    "get_scorer",
    "math_partial",
    "eq_penalty",
    "eq_score",
    "check_constraint",
    "CONSTRAINT_TYPES",
    "candidate_mass",
]


@dataclass
class Scored:
    """One item's score and what it was computed from."""

    score: float
    extracted: Any = None
    metrics: dict[str, float] = field(default_factory=dict)
    coverage: float | None = None


@dataclass(frozen=True)
class LogprobQuery:
    """One next-token question: base prompt + `suffix`, scored over the tokens of `kind`.

    kind: "letters" (A-F), "yesno", "digits". `label` names the query in records (e.g. the
    emotion of an EQ item). `expand_ten`: ratings 0-10 on a tokenizer that splits digits start
    "10" with the token "1"; the runner then asks once more after "1" and splits that token's mass
    into "1" and "10" by the probability that "0" follows.
    """

    kind: str
    suffix: str = ""
    label: str = ""
    expand_ten: bool = False


# --------------------------------------------------------------------------------------------
# Candidate tokens in a next-token distribution
# --------------------------------------------------------------------------------------------


def candidate_mass(dist: dict[str, float], kind: str, letters: str = "ABCDEF") -> dict[Any, float]:
    """Probability mass per candidate answer in a token -> prob map.

    Tokens are matched leniently: surrounding whitespace is stripped (" A" and "A" are both A);
    yes/no ignore case; digit tokens map to their integer value ("7" -> 7, "10" -> 10 for
    tokenizers that have multi-digit tokens). Several tokens mapping to one candidate add up.
    """
    out: dict[Any, float] = {}
    for tok, p in dist.items():
        t = tok.strip()
        if not t:
            continue
        key: Any = None
        if kind == "letters":
            if len(t) == 1 and t in letters:
                key = t
        elif kind == "yesno":
            if t.lower() in ("yes", "no"):
                key = t.lower()
        elif kind == "digits":
            if t.isascii() and t.isdigit():
                key = int(t)
        else:
            raise ValueError(f"unknown candidate kind {kind!r}")
        if key is not None:
            out[key] = out.get(key, 0.0) + p
    return out


def _first_digit_mass(dist: dict[str, float]) -> dict[str, float]:
    """Mass per leading digit character ("770" counts for "7")."""
    out: dict[str, float] = {}
    for value, p in candidate_mass(dist, "digits").items():
        d = str(value)[0]
        out[d] = out.get(d, 0.0) + p
    return out


def _choice_from_mass(mass: dict[Any, float], ref: Any) -> Scored:
    """Renormalised mass on the reference among candidates; coverage = total candidate mass."""
    total = sum(mass.values())
    if total <= 0:
        return Scored(0.0, None, {"accuracy": 0.0, "ref_mass": 0.0}, coverage=0.0)
    top = max(mass, key=lambda k: mass[k])
    return Scored(
        mass.get(ref, 0.0) / total,
        top,
        {"accuracy": float(top == ref), "ref_mass": mass.get(ref, 0.0)},
        coverage=total,
    )


# --------------------------------------------------------------------------------------------
# Formulas
# --------------------------------------------------------------------------------------------


def math_partial(pred: float, true: int) -> float:
    """Digit-aligned partial credit for a numeric answer, in [0, 1].

    Align the prediction's leading digit with the true answer's (scale it by
    10^(len_true - len_pred)), take the relative error e of the aligned value, and count the
    correct significant digits -log10(e), clipped to [0, log10(true)] and divided by len_true
    (exact answers: 1).
    Multiply by the length penalty min(len_pred, len_true) / max(len_pred, len_true).
    Example, true 77061: 77061 -> 1; 77000 -> e = 61/77061, -log10 e = 3.10, score 0.620;
    7706 -> aligned 77060, e = 1/77061, 4.89/5 = 0.977, times 4/5 = 0.782.
    """
    if true == 0:
        return 1.0 if pred == 0 else 0.0
    if pred == 0 or (pred < 0) != (true < 0):
        return 0.0
    p, t = abs(pred), abs(true)
    lp, lt = len(str(int(p))), len(str(int(t)))
    aligned = p * 10.0 ** (lt - lp)
    err = abs(aligned - t) / t
    # Cap at log10(t), the most an off-by-one integer can get, so a non-exact answer (even a
    # non-integer one like 17.9 for 18) never earns full credit.
    digits = 1.0 if err == 0 else min(max(-math.log10(err), 0.0), math.log10(t)) / lt
    return digits * min(lp, lt) / max(lp, lt)


EQ_MAX_PENALTY = 16.0


def eq_penalty(d: float) -> float:
    """Penalty for one emotion off by d: d^2/4 up to d = 4 (reaching 4), then linear with slope 2
    (the quadratic's slope at 4, so the curve is smooth); 16 at d = 10."""
    d = abs(d)
    return d * d / 4.0 if d <= 4 else 4.0 + 2.0 * (d - 4.0)


def eq_score(pred: list[float | None], ref: list[float]) -> float:
    """1 - sum of penalties / (16 * n); an unparsed emotion costs the maximum 16."""
    total = sum(EQ_MAX_PENALTY if p is None else eq_penalty(p - r) for p, r in zip(pred, ref))
    return 1.0 - total / (EQ_MAX_PENALTY * len(ref))


# --------------------------------------------------------------------------------------------
# Instruction constraints
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9\u00C0-\uFFFF]+(?:['\u2019-][A-Za-z0-9\u00C0-\uFFFF]+)*")
_BULLET = re.compile(r"^\s*[-*\u2022]\s+\S")


def _words(text: str) -> list[str]:
    return _WORD.findall(text)


def _sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text.strip())
    return [p for p in parts if re.search(r"\w", p)]


def _count_ok(c: dict, n: int) -> bool:
    if "exact" in c and n != c["exact"]:
        return False
    if "min" in c and n < c["min"]:
        return False
    if "max" in c and n > c["max"]:
        return False
    return True


_TYPES: dict[str, Callable[[Any], bool]] = {
    "str": lambda v: isinstance(v, str),
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "list": lambda v: isinstance(v, list),
    "dict": lambda v: isinstance(v, dict),
}


def _json_value(text: str) -> Any:
    try:
        return json.loads(ex.strip_code_fence(text))
    except (ValueError, TypeError):
        return _NOJSON


_NOJSON = object()


def _has_word(text: str, word: str) -> bool:
    return re.search(r"(?<![\w])" + re.escape(word) + r"(?![\w])", text, re.IGNORECASE) is not None


def _check_json(c: dict, text: str) -> bool:
    obj = _json_value(text)
    if not isinstance(obj, dict):
        return False
    if "keys" in c and set(obj) != set(c["keys"]):
        return False
    return all(k in obj and _TYPES[t](obj[k]) for k, t in c.get("types", {}).items())


def _check_json_list(c: dict, text: str) -> bool:
    obj = _json_value(text)
    if not isinstance(obj, list):
        return False
    if "length" in c and len(obj) != c["length"]:
        return False
    if "item_type" in c and not all(_TYPES[c["item_type"]](v) for v in obj):
        return False
    return True


def _check_case(c: dict, text: str) -> bool:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return False
    if c["value"] == "upper":
        return all(ch.isupper() for ch in letters)
    return all(ch.islower() for ch in letters)


def _check_one_word(c: dict, text: str) -> bool:
    core = text.strip().strip(".!?,;:\"'*`")
    return bool(core) and len(core.split()) == 1 and len(_words(core)) == 1


_CHECKS: dict[str, Callable[[dict, str], bool]] = {
    "json": _check_json,
    "json_list": _check_json_list,
    "word_count": lambda c, t: _count_ok(c, len(_words(t))),
    "bullet_count": lambda c, t: _count_ok(c, sum(bool(_BULLET.match(ln)) for ln in t.splitlines())),
    "line_count": lambda c, t: _count_ok(c, sum(bool(ln.strip()) for ln in t.splitlines())),
    "sentence_count": lambda c, t: _count_ok(c, len(_sentences(t))),
    "forbidden_words": lambda c, t: not any(_has_word(t, w) for w in c["words"]),
    "required_words": lambda c, t: all(_has_word(t, w) for w in c["words"]),
    "case": _check_case,
    "prefix": lambda c, t: t.startswith(c["value"]),
    "suffix": lambda c, t: t.endswith(c["value"]),
    "no_commas": lambda c, t: "," not in t and "\uff0c" not in t,
    "max_chars": lambda c, t: len(t) <= c["value"],
    "one_word": _check_one_word,
}
CONSTRAINT_TYPES = tuple(_CHECKS)

# Required parameters per constraint type; counts need at least one of exact/min/max.
_COUNTED = {"word_count", "bullet_count", "line_count", "sentence_count"}
_REQUIRED = {
    "forbidden_words": ("words",),
    "required_words": ("words",),
    "case": ("value",),
    "prefix": ("value",),
    "suffix": ("value",),
    "max_chars": ("value",),
}


def validate_constraint(c: Any) -> None:
    """Raise ValueError with a short reason if a constraint object is malformed."""
    if not isinstance(c, dict) or "type" not in c:
        raise ValueError(f"constraint {c!r} needs a 'type'")
    t = c["type"]
    if t not in _CHECKS:
        raise ValueError(f"unknown constraint type {t!r} (known: {', '.join(CONSTRAINT_TYPES)})")
    for k in _REQUIRED.get(t, ()):
        if k not in c:
            raise ValueError(f"constraint {t!r} needs {k!r}")
    if t in _COUNTED:
        if not any(k in c for k in ("exact", "min", "max")):
            raise ValueError(f"constraint {t!r} needs one of 'exact', 'min', 'max'")
        for k in ("exact", "min", "max"):
            if k in c and (not isinstance(c[k], int) or isinstance(c[k], bool)):
                raise ValueError(f"constraint {t!r}: {k!r} must be an integer")
    if t == "case" and c["value"] not in ("upper", "lower"):
        raise ValueError("constraint 'case': value must be 'upper' or 'lower'")
    if t in ("forbidden_words", "required_words") and not (
        isinstance(c["words"], list) and all(isinstance(w, str) for w in c["words"])
    ):
        raise ValueError(f"constraint {t!r}: 'words' must be a list of strings")
    if t == "max_chars" and not isinstance(c["value"], int):
        raise ValueError("constraint 'max_chars': value must be an integer")
    for key in ("item_type",):
        if key in c and c[key] not in _TYPES:
            raise ValueError(f"constraint {t!r}: unknown type {c[key]!r}")
    for v in c.get("types", {}).values() if t == "json" else ():
        if v not in _TYPES:
            raise ValueError(f"constraint 'json': unknown type {v!r} (known: {', '.join(_TYPES)})")


def check_constraint(c: dict, text: str) -> bool:
    """Whether the reply (already stripped of thinking and surrounding whitespace) satisfies c.

    An empty reply satisfies nothing, so silence never earns credit for "no commas" and the like.
    """
    text = text.strip()
    if not text:
        return False
    return bool(_CHECKS[c["type"]](c, text))


# --------------------------------------------------------------------------------------------
# Scorers
# --------------------------------------------------------------------------------------------


class Scorer:
    """Base class. Subclasses set name/version/logprob and implement the methods."""

    name = ""
    version = 1
    logprob = False  # supports logprob mode

    def validate_item(self, item: "Item") -> None:
        """Raise ValueError with a short reason if the item's reference is unusable."""

    def score_text(self, item: "Item", text: str) -> Scored:
        raise NotImplementedError

    def logprob_queries(self, item: "Item") -> list[LogprobQuery]:
        raise NotImplementedError

    def score_logprobs(self, item: "Item", dists: list[dict[str, float]]) -> Scored:
        raise NotImplementedError

    def logprob_answer(self, item: "Item", query: LogprobQuery) -> str:
        """The reference answer to one logprob query, as the model would write it (``B``,
        ``yes``, ``77061``, the rating ``7``): what rys-neuro's logit lens follows."""
        raise NotImplementedError


def _answer(item: "Item") -> Any:
    if "answer" not in item.reference:
        raise ValueError("reference needs 'answer'")
    return item.reference["answer"]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _choice_letters(item: "Item") -> str:
    choices = item.meta.get("choices")
    if isinstance(choices, list) and choices:
        return "ABCDEF"[: len(choices)]
    return "ABCDEF"


def _first_digit_score(dists: list[dict[str, float]], answer: int) -> Scored:
    return _choice_from_mass(_first_digit_mass(dists[0]), str(abs(answer))[0])


class ChoiceScorer(Scorer):
    """Exact answer: a multiple-choice letter, yes/no, or an integer."""

    name = "choice"
    version = 1
    logprob = True

    def _kind(self, item: "Item") -> str:
        a = _answer(item)
        if _is_int(a):
            return "integer"
        if isinstance(a, str) and a.strip().lower() in ("yes", "no"):
            return "yesno"
        if isinstance(a, str) and len(a.strip()) == 1 and a.strip() in "ABCDEF":
            return "letter"
        raise ValueError(f"choice answer must be a letter A-F, 'yes'/'no' or an integer, got {a!r}")

    def validate_item(self, item: "Item") -> None:
        kind = self._kind(item)
        choices = item.meta.get("choices")
        if choices is not None and (not isinstance(choices, list) or not 2 <= len(choices) <= 6):
            raise ValueError("meta.choices must be a list of 2 to 6 options")
        if kind == "letter" and item.reference["answer"].strip() not in _choice_letters(item):
            raise ValueError(f"answer {item.reference['answer']!r} is not among the choices")

    def score_text(self, item: "Item", text: str) -> Scored:
        kind = self._kind(item)
        a = _answer(item)
        if kind == "letter":
            got: Any = ex.extract_choice(text, _choice_letters(item))
            ok = got == a.strip()
        elif kind == "yesno":
            got = ex.extract_yes_no(text)
            ok = got == a.strip().lower()
        else:
            got = ex.extract_number(text, item.prompt or "")
            ok = got is not None and got == a
        return Scored(float(ok), got, {"accuracy": float(ok), "parsed": float(got is not None)})

    def logprob_queries(self, item: "Item") -> list[LogprobQuery]:
        kind = self._kind(item)
        return [LogprobQuery({"letter": "letters", "yesno": "yesno", "integer": "digits"}[kind])]

    def score_logprobs(self, item: "Item", dists: list[dict[str, float]]) -> Scored:
        kind = self._kind(item)
        a = _answer(item)
        if kind == "letter":
            letters = _choice_letters(item)
            return _choice_from_mass(candidate_mass(dists[0], "letters", letters), a.strip())
        if kind == "yesno":
            return _choice_from_mass(candidate_mass(dists[0], "yesno"), a.strip().lower())
        return _first_digit_score(dists, a)

    def logprob_answer(self, item: "Item", query: LogprobQuery) -> str:
        kind, a = self._kind(item), _answer(item)
        if kind == "integer":
            return str(a)
        return a.strip().lower() if kind == "yesno" else a.strip()


class MathScorer(Scorer):
    """Numeric answer with digit-aligned partial credit (`math_partial`)."""

    name = "math"
    version = 1
    logprob = True

    def validate_item(self, item: "Item") -> None:
        if not _is_int(_answer(item)):
            raise ValueError("math answer must be an integer")

    def score_text(self, item: "Item", text: str) -> Scored:
        a = _answer(item)
        got = ex.extract_number(text, item.prompt or "")
        if got is None:
            return Scored(0.0, None, {"exact_match": 0.0, "parsed": 0.0})
        return Scored(math_partial(got, a), got, {"exact_match": float(got == a), "parsed": 1.0})

    def logprob_queries(self, item: "Item") -> list[LogprobQuery]:
        return [LogprobQuery("digits")]

    def score_logprobs(self, item: "Item", dists: list[dict[str, float]]) -> Scored:
        s = _first_digit_score(dists, _answer(item))
        s.metrics = {"first_digit_accuracy": s.metrics["accuracy"], "ref_mass": s.metrics["ref_mass"]}
        return s

    def logprob_answer(self, item: "Item", query: LogprobQuery) -> str:
        return str(_answer(item))


def eq_emotions(item: "Item") -> list[str]:
    """Emotion order: meta.emotions if given, else the reference's key order."""
    order = item.meta.get("emotions")
    if isinstance(order, list) and order:
        return [str(e) for e in order]
    return list(item.reference)


class EqScorer(Scorer):
    """EQ-Bench-style emotion intensity ratings, 0-10, scored by distance (`eq_penalty`)."""

    name = "eq"
    version = 1
    logprob = True

    def validate_item(self, item: "Item") -> None:
        ref = item.reference
        if not ref:
            raise ValueError("eq reference needs emotion ratings, e.g. {\"Anger\": 7, ...}")
        for emo, v in ref.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10:
                raise ValueError(f"eq rating for {emo!r} must be a number 0-10, got {v!r}")
        emos = eq_emotions(item)
        if sorted(emos) != sorted(ref):
            raise ValueError("meta.emotions must list exactly the reference's emotions")

    def _ref(self, item: "Item") -> tuple[list[str], list[float]]:
        emos = eq_emotions(item)
        return emos, [float(item.reference[e]) for e in emos]

    def score_text(self, item: "Item", text: str) -> Scored:
        emos, ref = self._ref(item)
        got = ex.extract_ratings(text, emos)
        parsed = [g for g in got if g is not None]
        diffs = [abs(g - r) for g, r in zip(got, ref) if g is not None]
        metrics = {"parsed": len(parsed) / len(emos)}
        if diffs:
            metrics["mean_abs_diff"] = sum(diffs) / len(diffs)
        return Scored(eq_score(got, ref), got, metrics)

    def logprob_queries(self, item: "Item") -> list[LogprobQuery]:
        return [LogprobQuery("digits", suffix=f"{e}:", label=e, expand_ten=True)
                for e in eq_emotions(item)]

    def score_logprobs(self, item: "Item", dists: list[dict[str, float]]) -> Scored:
        """Expected rating over digit tokens 0-10 (renormalised), scored by distance to the
        reference with the same penalty as generate mode; no digit mass -> maximum penalty."""
        emos, ref = self._ref(item)
        expected: list[float | None] = []
        coverages = []
        for dist in dists:
            mass = {v: p for v, p in candidate_mass(dist, "digits").items() if 0 <= v <= 10}
            total = sum(mass.values())
            coverages.append(total)
            expected.append(sum(v * p for v, p in mass.items()) / total if total > 0 else None)
        diffs = [abs(e - r) for e, r in zip(expected, ref) if e is not None]
        metrics = {"parsed": sum(e is not None for e in expected) / len(emos)}
        if diffs:
            metrics["mean_abs_diff"] = sum(diffs) / len(diffs)
        extracted = [None if e is None else round(e, 3) for e in expected]
        return Scored(eq_score(expected, ref), extracted, metrics,
                      coverage=sum(coverages) / len(coverages))

    def logprob_answer(self, item: "Item", query: LogprobQuery) -> str:
        return str(round(float(item.reference[query.label])))


class InstructionScorer(Scorer):
    """Programmatically checked format constraints; generate mode only."""

    name = "instruction"
    version = 1
    logprob = False

    def validate_item(self, item: "Item") -> None:
        cons = item.reference.get("constraints")
        if not isinstance(cons, list) or not cons:
            raise ValueError("instruction reference needs a non-empty 'constraints' list")
        for c in cons:
            validate_constraint(c)

    def score_text(self, item: "Item", text: str) -> Scored:
        reply = ex.strip_thinking(text).text
        cons = item.reference["constraints"]
        ok = [check_constraint(c, reply) for c in cons]
        failed = [c["type"] for c, good in zip(cons, ok) if not good]
        frac = sum(ok) / len(ok)
        return Scored(frac, failed, {"strict": float(all(ok)), "loose": frac})


SCORERS: dict[str, Scorer] = {s.name: s for s in (ChoiceScorer(), MathScorer(), EqScorer(),
                                                   InstructionScorer())}


def get_scorer(name: str) -> Scorer:
    try:
        return SCORERS[name]
    except KeyError:
        raise KeyError(f"unknown scorer {name!r} (known: {', '.join(sorted(SCORERS))})") from None
