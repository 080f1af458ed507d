"""Answer extraction: every rule the scorers rely on, one case per rule."""

from __future__ import annotations

import pytest

from rys.probes.extract import (
    extract_choice,
    extract_number,
    extract_ratings,
    extract_yes_no,
    parse_number,
    strip_code_fence,
    strip_thinking,
)

# --- numbers --------------------------------------------------------------------------------


def test_answer_is_without_final_period():
    assert extract_number("The answer is 6") == 6
    assert extract_number("The final answer is: **6**") == 6


def test_float_with_zero_fraction_equals_integer():
    assert extract_number("18.0") == 18
    assert isinstance(extract_number("18.0"), int)


def test_thousands_commas():
    assert extract_number("It comes to 1,234 apples.") == 1234
    assert parse_number("5,938,696,321") == 5938696321


def test_echoed_question_number_is_not_the_answer():
    prompt = "What is the square root of 5938696321?"
    assert extract_number("The square root of 5938696321 is 77061.", prompt) == 77061
    # the echo written with commas is still an echo
    assert extract_number("sqrt(5,938,696,321) = 77061", prompt) == 77061


def test_echo_after_answer_still_gives_the_answer():
    prompt = "What is the square root of 5938696321?"
    assert extract_number("77061, because 77061 * 77061 = 5938696321", prompt) == 77061


def test_only_number_is_kept_even_if_it_is_in_the_prompt():
    assert extract_number("1", "What is the cube root of 1?") == 1


def test_explicit_answer_beats_later_numbers():
    assert extract_number("Answer: 42. (I used 6 and 7.)", "What is 6 times 7?") == 42


def test_equals_sign_answer():
    assert extract_number("3217 * 4421 = 14222357", "What is 3217 times 4421?") == 14222357


def test_no_number():
    assert extract_number("I don't know.") is None
    assert extract_number("") is None


def test_non_integer_number_kept_as_float():
    assert extract_number("The answer is 2.5") == 2.5


# --- choice letters -------------------------------------------------------------------------


def test_answer_is_parenthesised_letter_followed_by_date():
    assert extract_choice("the answer is (D) 12/14/1937.") == "D"


def test_leading_letter_paren():
    assert extract_choice("B) Eli finished last.") == "B"


@pytest.mark.parametrize("reply", ["C", "C.", "(C)", " **C** ", "C: the third one"])
def test_letter_in_answer_position(reply):
    assert extract_choice(reply) == "C"


@pytest.mark.parametrize("reply", [
    "I think Eli finished last.",
    "A man walked in.",
    "Because Bob came before Eli, we know.",
    "DNA is a molecule.",
])
def test_capital_letters_elsewhere_are_not_answers(reply):
    assert extract_choice(reply) is None


def test_letter_outside_the_choices_is_ignored():
    assert extract_choice("The answer is E", valid="ABCD") is None


def test_parenthesised_letter_inside_text():
    assert extract_choice("I would pick (B) here.") == "B"


def test_last_answer_statement_wins():
    assert extract_choice("The answer is A. Wait, no: the answer is C.") == "C"


# --- yes / no -------------------------------------------------------------------------------


def test_yes_reply_to_a_no_question_is_yes():
    assert extract_yes_no("Yes, I know.") == "yes"


@pytest.mark.parametrize("reply", ["Nobody knows.", "Her eyes were blue.", "Nope", "notable"])
def test_yes_no_are_whole_words(reply):
    assert extract_yes_no(reply) is None


def test_no_with_punctuation_and_case():
    assert extract_yes_no("NO.") == "no"
    assert extract_yes_no("**No**, it did not.") == "no"


def test_answer_statement_wins_for_yes_no():
    assert extract_yes_no("There is no doubt; the answer is yes") == "yes"


# --- EQ ratings -----------------------------------------------------------------------------


def test_ratings_matched_by_emotion_name():
    reply = "1. Anger: 7\n2. Betrayal: 9\n3. Relief: 0\n4. Pride: 2"
    assert extract_ratings(reply, ["Anger", "Betrayal", "Relief", "Pride"]) == [7, 9, 0, 2]


def test_ratings_follow_item_order_not_reply_order():
    reply = "Pride: 2\nAnger: 7\nRelief: 0\nBetrayal: 9"
    assert extract_ratings(reply, ["Anger", "Betrayal", "Relief", "Pride"]) == [7, 9, 0, 2]


def test_missing_emotion_is_unparsed():
    reply = "Anger: 7, Relief: 3 and 4 more numbers 5 6"
    assert extract_ratings(reply, ["Anger", "Betrayal", "Relief", "Pride"]) == [7, None, 3, None]


def test_ratings_ignore_case_markdown_and_out_of_range():
    reply = "**anger**: 7/10\nPRIDE: 12"
    assert extract_ratings(reply, ["Anger", "Pride"]) == [7, None]


# --- thinking and fences --------------------------------------------------------------------


def test_strip_closed_and_unclosed_thinking():
    assert strip_thinking("<think>hmm 5</think>The answer is 6").text == "The answer is 6"
    s = strip_thinking("<think>let me compute 12 * 4 = 48 and")
    assert s.text == "" and s.unclosed
    s = strip_thinking("reasoning without an opening tag</think> 7")
    assert s.text == "7" and not s.unclosed


def test_thinking_numbers_are_not_answers():
    assert extract_number("<think>maybe 5, maybe 9</think>The answer is 6") == 6
    assert extract_number("<think>maybe 5, maybe 9") is None


def test_code_fence():
    assert strip_code_fence('```json\n{"a": 1}\n```') == '{"a": 1}'
    assert strip_code_fence("plain") == "plain"
