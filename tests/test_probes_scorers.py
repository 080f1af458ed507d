"""Scorers against hand-computed values (worked examples in docs/probes.md, "Scorers and formulas")."""

from __future__ import annotations

import math

import pytest

from rys.probes.loader import Item
from rys.probes.scorers import (
    SCORERS,
    candidate_mass,
    check_constraint,
    eq_penalty,
    eq_score,
    math_partial,
    validate_constraint,
)


def item(reference, prompt="q", meta=None):
    return Item(id="x", split="dev", prompt=prompt, reference=reference, meta=meta or {})


# --- math partial credit --------------------------------------------------------------------

# Hand computation for true = 77061 (5 digits, log10(77061) = 4.886835):
#   77000: e = 61/77061, -log10 e = 4.886835 - 1.785330 = 3.101505 -> /5 = 0.620301
#   7706:  aligned 77060, e = 1/77061, 4.886835/5 = 0.977367, length 4/5 -> 0.781894
#   80000: e = 2939/77061, -log10 e = 4.886835 - 3.468200 = 1.418635 -> /5 = 0.283727
#   770610: aligned 77061 exactly, digits 1, length 5/6 -> 0.833333
@pytest.mark.parametrize("pred,expected", [
    (77061, 1.0),
    (77000, 0.620301),
    (7706, 0.781894),
    (80000, 0.283727),
    (770610, 0.833333),
    (0, 0.0),
    (-77061, 0.0),
])
def test_math_partial_worked_examples(pred, expected):
    assert math_partial(pred, 77061) == pytest.approx(expected, abs=1e-5)


def test_math_partial_far_off_is_zero_and_float_prediction():
    assert math_partial(99999, 10) == 0.0  # aligned 99.999 vs 10: error 9 > 1
    assert math_partial(18.0, 18) == 1.0
    # a non-integer near miss earns what an off-by-one integer earns: log10(18)/2
    assert math_partial(17.9, 18) == pytest.approx(math.log10(18) / 2)
    assert math_partial(17, 18) == pytest.approx(math.log10(18) / 2)


def test_math_scorer_generate_uses_extraction_and_exact_match():
    s = SCORERS["math"]
    it = item({"answer": 77061}, prompt="What is the square root of 5938696321?")
    r = s.score_text(it, "The square root of 5938696321 is 77,061.")
    assert r.score == 1.0 and r.extracted == 77061 and r.metrics["exact_match"] == 1.0
    r = s.score_text(it, "77000")
    assert r.score == pytest.approx(0.620301, abs=1e-5) and r.metrics["exact_match"] == 0.0
    r = s.score_text(it, "no idea")
    assert r.score == 0.0 and r.extracted is None and r.metrics["parsed"] == 0.0


def test_math_logprob_first_digit_mass():
    s = SCORERS["math"]
    it = item({"answer": 77061})
    r = s.score_logprobs(it, [{" 7": 0.3, " 8": 0.1, "7": 0.1, " The": 0.5}])
    assert r.coverage == pytest.approx(0.5)
    assert r.score == pytest.approx(0.4 / 0.5)
    assert r.extracted == "7" and r.metrics["first_digit_accuracy"] == 1.0


def test_multi_digit_tokens_count_for_their_first_digit():
    s = SCORERS["math"]
    r = s.score_logprobs(item({"answer": 77061}), [{"770": 0.6, "81": 0.2}])
    assert r.score == pytest.approx(0.75)


# --- EQ -------------------------------------------------------------------------------------


@pytest.mark.parametrize("d,p", [(0, 0), (1, 0.25), (2, 1), (4, 4), (5, 6), (10, 16), (-3, 2.25)])
def test_eq_penalty_values(d, p):
    assert eq_penalty(d) == pytest.approx(p)


def test_eq_penalty_is_continuous_and_smooth_at_4():
    eps = 1e-6
    assert eq_penalty(4 + eps) - eq_penalty(4 - eps) == pytest.approx(4 * eps, rel=1e-3)


def test_eq_score_hand_computed():
    # d = 1, 0, 0, 2 -> penalties 0.25 + 0 + 0 + 1 = 1.25; 1 - 1.25/64
    assert eq_score([7, 9, 0, 2], [6, 9, 0, 0]) == pytest.approx(1 - 1.25 / 64)
    # unparsed emotion costs the maximum 16
    assert eq_score([None, 9, 0, 0], [6, 9, 0, 0]) == pytest.approx(1 - 16 / 64)
    assert eq_score([10, 10, 10, 10], [0, 0, 0, 0]) == 0.0


def test_eq_scorer_generate():
    s = SCORERS["eq"]
    ref = {"Anger": 6, "Betrayal": 9, "Relief": 0, "Pride": 0}
    r = s.score_text(item(ref), "1. Anger: 7\n2. Betrayal: 9\n3. Relief: 0\n4. Pride: 2")
    assert r.extracted == [7, 9, 0, 2]
    assert r.score == pytest.approx(1 - 1.25 / 64)
    assert r.metrics["parsed"] == 1.0


def test_eq_scorer_logprob_expected_value_and_coverage():
    s = SCORERS["eq"]
    ref = {"Anger": 7, "Joy": 0}
    dists = [
        {" 7": 0.5, " 8": 0.3, " the": 0.2},  # E = (3.5 + 2.4) / 0.8 = 7.375, d = 0.375
        {"0": 0.9, "1": 0.1},                 # E = 0.1, d = 0.1
    ]
    r = s.score_logprobs(item(ref), dists)
    expected = 1 - (0.375**2 / 4 + 0.1**2 / 4) / 32
    assert r.score == pytest.approx(expected)
    assert r.coverage == pytest.approx((0.8 + 1.0) / 2)
    assert r.extracted == [7.375, 0.1]


def test_eq_logprob_ranks_by_closeness_not_raw_digit():
    s = SCORERS["eq"]
    near = s.score_logprobs(item({"Anger": 3}), [{"3": 1.0}]).score
    far_high = s.score_logprobs(item({"Anger": 3}), [{"9": 1.0}]).score
    assert near > far_high


def test_eq_logprob_no_digit_mass_is_max_penalty():
    r = SCORERS["eq"].score_logprobs(item({"Anger": 3}), [{" very": 1.0}])
    assert r.score == 0.0 and r.coverage == 0.0


# --- choice ---------------------------------------------------------------------------------


def test_choice_letter_yes_no_integer():
    s = SCORERS["choice"]
    mc = item({"answer": "D"}, meta={"choices": ["a", "b", "c", "d"]})
    assert s.score_text(mc, "the answer is (D) 12/14/1937.").score == 1.0
    assert s.score_text(mc, "I think Bob is right.").score == 0.0
    no_q = item({"answer": "no"})
    r = s.score_text(no_q, "Yes, I know.")
    assert r.score == 0.0 and r.extracted == "yes"
    assert s.score_text(item({"answer": 18}), "18.0").score == 1.0


def test_choice_logprob_renormalises_over_candidates():
    s = SCORERS["choice"]
    mc = item({"answer": "B"}, meta={"choices": ["x", "y", "z"]})
    dist = {" B": 0.5, "B": 0.1, " A": 0.2, " D": 0.1, " the": 0.1}  # D is not a choice
    r = s.score_logprobs(mc, [dist])
    assert r.coverage == pytest.approx(0.8)
    assert r.score == pytest.approx(0.6 / 0.8)
    assert r.metrics["accuracy"] == 1.0


def test_candidate_mass_yes_no_case_and_whitespace():
    m = candidate_mass({" Yes": 0.2, "yes": 0.1, " NO": 0.3, " Nobody": 0.4}, "yesno")
    assert m == pytest.approx({"yes": 0.3, "no": 0.3})


def test_choice_validation_rejects_answer_outside_choices():
    with pytest.raises(ValueError, match="not among the choices"):
        SCORERS["choice"].validate_item(item({"answer": "E"}, meta={"choices": ["a", "b"]}))
    with pytest.raises(ValueError, match="letter A-F"):
        SCORERS["choice"].validate_item(item({"answer": "maybe"}))


# --- instruction ----------------------------------------------------------------------------

CASES = [
    ({"type": "json", "keys": ["name", "age"], "types": {"age": "int"}},
     '```json\n{"name": "Al", "age": 3}\n```', '{"name": "Al", "age": "3"}'),
    ({"type": "json_list", "length": 3, "item_type": "str"}, '["a", "b", "c"]', '["a", "b"]'),
    ({"type": "word_count", "min": 3, "max": 4}, "one two three", "one two three four five"),
    ({"type": "word_count", "exact": 2}, "don't stop", "do not stop"),
    ({"type": "bullet_count", "exact": 2}, "- a\n* b", "- a\n- b\n- c"),
    ({"type": "line_count", "exact": 2}, "a\n\nb", "a\nb\nc"),
    ({"type": "sentence_count", "exact": 2}, "It rains. We stay in!", "It rains."),
    ({"type": "forbidden_words", "words": ["very"]}, "Everything is fine", "It is Very good"),
    ({"type": "required_words", "words": ["ocean"]}, "The Ocean is wide", "oceanic views"),
    ({"type": "case", "value": "upper"}, "HELLO, WORLD 42", "Hello"),
    ({"type": "case", "value": "lower"}, "hello world", "hello World"),
    ({"type": "prefix", "value": "Answer:"}, "  Answer: yes", "My Answer: yes"),
    ({"type": "suffix", "value": "Done."}, "All good. Done.", "Done. All good."),
    ({"type": "no_commas"}, "a b c", "a, b"),
    ({"type": "max_chars", "value": 5}, "abcde", "abcdef"),
    ({"type": "one_word"}, "Mars.", "Mars rocks"),
]


@pytest.mark.parametrize("c,good,bad", CASES, ids=[c[0]["type"] for c in CASES])
def test_constraints(c, good, bad):
    validate_constraint(c)
    assert check_constraint(c, good) is True
    assert check_constraint(c, bad) is False


def test_empty_reply_satisfies_nothing():
    assert check_constraint({"type": "no_commas"}, "   ") is False


def test_instruction_score_fraction_and_strict():
    s = SCORERS["instruction"]
    it = item({"constraints": [{"type": "one_word"}, {"type": "case", "value": "lower"},
                               {"type": "max_chars", "value": 3}]})
    r = s.score_text(it, "Mars")
    assert r.score == pytest.approx(1 / 3)
    assert r.metrics["strict"] == 0.0
    assert r.extracted == ["case", "max_chars"]
    assert s.score_text(it, "sun").metrics["strict"] == 1.0


@pytest.mark.parametrize("c,msg", [
    ({"type": "shout"}, "unknown constraint type"),
    ({"type": "word_count"}, "one of 'exact', 'min', 'max'"),
    ({"type": "case", "value": "title"}, "upper"),
    ({"type": "json", "types": {"a": "complex"}}, "unknown type"),
])
def test_bad_constraints(c, msg):
    with pytest.raises(ValueError, match=msg):
        validate_constraint(c)


def test_every_scorer_has_a_version():
    assert all(isinstance(s.version, int) and s.version >= 1 for s in SCORERS.values())
    assert not math.isnan(eq_penalty(0))
