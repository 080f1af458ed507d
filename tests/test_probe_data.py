"""Validation of the built-in probe data files (probes/data/{eq,reasoning,instruction}.json).

Pure JSON checks, no server and no import of the probes package: the files must follow
docs/probes.md ("Probe file schema"), and every reasoning answer that can be recomputed mechanically
(dates, orderings, walks, arithmetic) is recomputed here from the structured fields in `meta`, so a
typo in a hand-written reference fails the suite instead of silently mis-scoring models.
"""

from __future__ import annotations

import ast
import datetime as dt
import itertools
import json
import operator
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

DATA = Path(__file__).resolve().parent.parent / "probes" / "data"
FILES = ["eq", "reasoning", "instruction"]
LETTERS = "ABCDEF"
MAX_PROMPT_WORDS = 120


def load(name: str) -> dict[str, Any]:
    with open(DATA / f"{name}.json", encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module", params=FILES)
def probe(request: pytest.FixtureRequest) -> dict[str, Any]:
    return load(request.param)


def n_words(text: str) -> int:
    return len(text.split())


# ------------------------------------------------------------------------------------------------
# Common structure
# ------------------------------------------------------------------------------------------------

EXPECTED = {
    "eq": ("eq", ["generate", "logprob"]),
    "reasoning": ("choice", ["generate", "logprob"]),
    "instruction": ("instruction", ["generate"]),
}


def test_header(probe: dict[str, Any]) -> None:
    name = probe["name"]
    assert name in EXPECTED
    scorer, modes = EXPECTED[name]
    assert probe["scorer"] == scorer
    assert probe["modes"] == modes
    assert isinstance(probe["version"], int) and not isinstance(probe["version"], bool)
    assert probe["version"] >= 1
    assert isinstance(probe["description"], str) and probe["description"].strip()
    assert "generator" not in probe


def test_settings(probe: dict[str, Any]) -> None:
    s = probe["settings"]
    assert isinstance(s["max_tokens"], int) and 1 <= s["max_tokens"] <= 256
    assert isinstance(s["stop"], list) and s["stop"]
    assert all(isinstance(x, str) and x for x in s["stop"])
    assert s["answer_prefix"] == "Answer:"
    assert isinstance(s["instruction"], str) and s["instruction"].strip()
    shots = s["fewshot"]
    assert 2 <= len(shots) <= 3
    for shot in shots:
        assert set(shot) == {"prompt", "answer"}
        assert isinstance(shot["prompt"], str) and shot["prompt"].strip()
        assert isinstance(shot["answer"], str) and shot["answer"].strip()
        # a shot's answer must not contain a stop string, or the model would learn to stop early
        # (single-line stops like "\n" are for one-line answers, checked per probe below)
        assert not any(stop in shot["answer"] for stop in s["stop"] if stop.strip())


def test_items_structure(probe: dict[str, Any]) -> None:
    items = probe["items"]
    ids = [it["id"] for it in items]
    assert len(ids) == len(set(ids)), [k for k, v in Counter(ids).items() if v > 1]
    prompts = [it["prompt"] for it in items]
    assert len(prompts) == len(set(prompts)), "duplicate prompts"
    for it in items:
        assert set(it) == {"id", "split", "prompt", "reference", "meta"}, it["id"]
        assert re.fullmatch(r"[a-z]+(-[a-z]+)*-\d{3}", it["id"]), it["id"]
        assert it["split"] in ("dev", "test"), it["id"]
        assert isinstance(it["prompt"], str) and it["prompt"] == it["prompt"].strip()
        assert n_words(it["prompt"]) < MAX_PROMPT_WORDS, it["id"]
        assert isinstance(it["meta"].get("category"), str) and it["meta"]["category"], it["id"]
        assert isinstance(it["reference"], dict) and it["reference"], it["id"]
    splits = Counter(it["split"] for it in items)
    assert splits["dev"] > 0 and splits["test"] > 0
    # roughly two thirds dev, one third test
    assert 0.55 <= splits["dev"] / len(items) <= 0.75, splits


def test_fewshot_not_items(probe: dict[str, Any]) -> None:
    """Exemplars are original and never repeat (or start like) a scored item."""
    heads = {it["prompt"][:60] for it in probe["items"]}
    for shot in probe["settings"]["fewshot"]:
        assert shot["prompt"] not in {it["prompt"] for it in probe["items"]}
        assert shot["prompt"][:60] not in heads


def test_split_ids_consistent(probe: dict[str, Any]) -> None:
    """Ids that name a split (eq-dev-001) must agree with the split field."""
    for it in probe["items"]:
        for split in ("dev", "test"):
            if f"-{split}-" in it["id"]:
                assert it["split"] == split, it["id"]


# ------------------------------------------------------------------------------------------------
# EQ
# ------------------------------------------------------------------------------------------------

EQ_QUESTION = "At the end of this scene, how strongly does {c} feel each emotion? Rate 0-10."


def eq_lines(answer: str) -> list[tuple[str, int]]:
    out = []
    for line in answer.split("\n"):
        m = re.fullmatch(r"([A-Z][a-z]+): (\d+)", line)
        assert m, f"bad rating line {line!r}"
        out.append((m.group(1), int(m.group(2))))
    return out


def test_eq_counts() -> None:
    items = load("eq")["items"]
    splits = Counter(it["split"] for it in items)
    assert len(items) >= 40
    assert splits["dev"] >= 24 and splits["test"] >= 12


def test_eq_references() -> None:
    p = load("eq")
    for it in p["items"]:
        ref, meta = it["reference"], it["meta"]
        emos = meta["emotions"]
        assert len(emos) == 4 and len(set(emos)) == 4, it["id"]
        assert all(re.fullmatch(r"[A-Z][a-z]+", e) for e in emos), it["id"]
        assert list(ref) == emos, it["id"]  # same names, same order as asked
        for v in ref.values():
            assert isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 10, it["id"]
        # defensible references: each scene has a clearly felt emotion and a clearly absent one
        assert max(ref.values()) >= 6 and min(ref.values()) <= 1, it["id"]
        char = meta["character"]
        scene, question, listing = it["prompt"].split("\n")
        assert char in scene, it["id"]
        assert 2 <= len(re.findall(r"[.!?](?:\"|\u201d)?(?:\s|$)", scene)) <= 5, it["id"]
        assert question == EQ_QUESTION.format(c=char), it["id"]
        assert listing == "Emotions: " + ", ".join(emos), it["id"]


def test_eq_range_used() -> None:
    values = [v for it in load("eq")["items"] for v in it["reference"].values()]
    assert 0 in values and 10 in values
    assert len(set(values)) >= 9
    assert sum(v >= 8 for v in values) >= 20 and sum(v == 0 for v in values) >= 20


def test_eq_fewshot_format() -> None:
    p = load("eq")
    for shot in p["settings"]["fewshot"]:
        listing = shot["prompt"].split("\n")[-1]
        assert listing.startswith("Emotions: ")
        names = listing[len("Emotions: "):].split(", ")
        lines = eq_lines(shot["answer"])
        assert [n for n, _ in lines] == names
        assert all(0 <= v <= 10 for _, v in lines)
    s = p["settings"]
    assert "Question:" in s["stop"] and "\n\nQuestion:" in s["stop"]
    assert s["max_tokens"] >= 32  # four "Name: N" lines fit


# ------------------------------------------------------------------------------------------------
# Reasoning
# ------------------------------------------------------------------------------------------------

CATEGORIES = ["causal_judgement", "date_arithmetic", "logical_deduction", "navigation", "word_problems"]
ASK_LETTER = "Answer with the letter only."
ASK_YN = "Answer yes or no."
ASK_NUM = "Answer with a number only."


def reasoning_items(category: str | None = None) -> list[dict[str, Any]]:
    items = load("reasoning")["items"]
    return [it for it in items if category is None or it["meta"]["category"] == category]


def answer_kind(answer: Any) -> str:
    if isinstance(answer, bool):
        raise AssertionError("bool answer")
    if isinstance(answer, int):
        return "int"
    if answer in ("yes", "no"):
        return "yesno"
    if isinstance(answer, str) and re.fullmatch(r"[A-F]", answer):
        return "letter"
    raise AssertionError(f"bad answer {answer!r}")


def test_reasoning_counts() -> None:
    items = reasoning_items()
    assert len(items) >= 70
    cats = Counter(it["meta"]["category"] for it in items)
    assert set(cats) == set(CATEGORIES)
    for cat in CATEGORIES:
        splits = Counter(it["split"] for it in reasoning_items(cat))
        assert splits["dev"] + splits["test"] >= 14, cat
        assert splits["test"] >= 4 and splits["dev"] >= 2 * splits["test"] - 1, (cat, splits)


def test_reasoning_answer_forms() -> None:
    for it in reasoning_items():
        assert set(it["reference"]) == {"answer"}, it["id"]
        kind = answer_kind(it["reference"]["answer"])
        prompt = it["prompt"]
        if kind == "letter":
            choices = it["meta"]["choices"]
            assert 3 <= len(choices) <= 6 and len(set(choices)) == len(choices), it["id"]
            assert it["reference"]["answer"] in LETTERS[: len(choices)], it["id"]
            opts = "Options:\n" + "\n".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
            assert prompt.endswith(opts + "\n" + ASK_LETTER), it["id"]
        else:
            assert "choices" not in it["meta"], it["id"]
            assert "Options:" not in prompt, it["id"]
            assert prompt.endswith(ASK_YN if kind == "yesno" else ASK_NUM), it["id"]


def test_reasoning_balance() -> None:
    items = reasoning_items()
    yn = Counter(it["reference"]["answer"] for it in items if answer_kind(it["reference"]["answer"]) == "yesno")
    assert abs(yn["yes"] - yn["no"]) <= 2, yn
    for split in ("dev", "test"):
        s = Counter(it["reference"]["answer"] for it in items
                    if it["split"] == split and answer_kind(it["reference"]["answer"]) == "yesno")
        assert s["yes"] >= 3 and s["no"] >= 3, (split, s)
    letters = Counter(it["reference"]["answer"] for it in items if answer_kind(it["reference"]["answer"]) == "letter")
    n = sum(letters.values())
    assert max(letters.values()) <= 0.4 * n, letters
    assert set("ABCD") <= set(letters), letters


def test_reasoning_category_forms() -> None:
    for it in reasoning_items("causal_judgement"):
        assert answer_kind(it["reference"]["answer"]) == "yesno", it["id"]
        assert re.search(r"\bDid\b.+\bcause\b.+\?", it["prompt"]), it["id"]
    for cat in ("date_arithmetic", "logical_deduction"):
        for it in reasoning_items(cat):
            assert answer_kind(it["reference"]["answer"]) == "letter", it["id"]
    for it in reasoning_items("word_problems"):
        assert answer_kind(it["reference"]["answer"]) == "int", it["id"]


# -- dates ---------------------------------------------------------------------------------------

DATE_RE = re.compile(r"\d{2}/\d{2}/\d{4}")


def parse_date(s: str) -> dt.date:
    assert DATE_RE.fullmatch(s), s
    return dt.datetime.strptime(s, "%m/%d/%Y").date()


def add_months(d: dt.date, months: int) -> dt.date:
    total = d.year * 12 + (d.month - 1) + months
    return d.replace(year=total // 12, month=total % 12 + 1)  # raises if the day does not exist


def test_date_answers_recomputed() -> None:
    items = reasoning_items("date_arithmetic")
    assert items
    for it in items:
        meta = it["meta"]
        anchor = parse_date(meta["anchor"])
        assert meta["anchor"] in it["prompt"], it["id"]
        offsets = {k: v for k, v in meta.items() if k.startswith("offset_")}
        assert len(offsets) == 1, it["id"]
        (kind, off), = offsets.items()
        if kind == "offset_days":
            target = anchor + dt.timedelta(days=off)
        else:
            assert kind == "offset_months", it["id"]
            target = add_months(anchor, off)
        want = target.strftime("%m/%d/%Y")
        choices = meta["choices"]
        for c in choices:
            parse_date(c)  # every option is a real MM/DD/YYYY date
        assert choices.count(want) == 1, (it["id"], want, choices)
        assert LETTERS[choices.index(want)] == it["reference"]["answer"], (it["id"], want)


# -- logical deduction ---------------------------------------------------------------------------


def clue_holds(clue: list[Any], order: tuple[str, ...]) -> bool:
    pos = {o: i + 1 for i, o in enumerate(order)}  # 1-based from the left / front / cheapest
    n = len(order)
    kind, a, *rest = clue
    if kind == "pos":
        return pos[a] == rest[0]
    if kind == "pos_right":
        return pos[a] == n + 1 - rest[0]
    if kind == "not_pos":
        return pos[a] != rest[0]
    b = rest[0]
    if kind == "left_of":
        return pos[a] < pos[b]
    if kind == "right_of":
        return pos[a] > pos[b]
    if kind == "immediately_left":
        return pos[b] - pos[a] == 1
    if kind == "adjacent":
        return abs(pos[a] - pos[b]) == 1
    if kind == "not_adjacent":
        return abs(pos[a] - pos[b]) != 1
    raise AssertionError(f"unknown clue {clue}")


def test_logic_unique_solution() -> None:
    items = reasoning_items("logical_deduction")
    sizes = Counter()
    for it in items:
        meta = it["meta"]
        objs = meta["choice_objects"]
        assert len(objs) == len(meta["choices"]) and len(set(objs)) == len(objs), it["id"]
        for obj, text in zip(objs, meta["choices"]):
            assert obj in text and obj in it["prompt"], (it["id"], obj)
        sols = [p for p in itertools.permutations(objs)
                if all(clue_holds(c, p) for c in meta["clues"])]
        assert len(sols) == 1, (it["id"], sols)
        kind, k = meta["ask"]
        idx = k - 1 if kind == "pos" else len(objs) - k
        assert kind in ("pos", "pos_right"), it["id"]
        want = sols[0][idx]
        assert LETTERS[objs.index(want)] == it["reference"]["answer"], (it["id"], want)
        sizes[len(objs)] += 1
    assert set(sizes) == {3, 4, 5}, sizes


# -- navigation ----------------------------------------------------------------------------------

HEADINGS = {"N": (0, 1), "E": (1, 0), "S": (0, -1), "W": (-1, 0)}
ORDER = "NESW"


def walk(moves: list[list[Any]], facing: str | None) -> tuple[int, int]:
    x = y = 0
    for mv in moves:
        op = mv[0]
        if op in ("L", "R", "U"):
            assert facing is not None, "turn without a facing"
            assert len(mv) == 1
            turn = {"L": -1, "R": 1, "U": 2}[op]
            facing = ORDER[(ORDER.index(facing) + turn) % 4]
            continue
        n = mv[1]
        assert isinstance(n, int) and n > 0
        if op in HEADINGS:
            dx, dy = HEADINGS[op]
        else:
            assert op in ("F", "B") and facing is not None, mv
            dx, dy = HEADINGS[facing]
            if op == "B":
                dx, dy = -dx, -dy
        x, y = x + dx * n, y + dy * n
    return x, y


def test_navigation_recomputed() -> None:
    items = reasoning_items("navigation")
    asks = Counter()
    for it in items:
        meta = it["meta"]
        facing = meta.get("start_facing")
        if facing is not None:
            word = {"N": "north", "E": "east", "S": "south", "W": "west"}[facing]
            assert it["prompt"].startswith(f"You face {word}."), it["id"]
        x, y = walk(meta["moves"], facing)
        ask = meta["ask"]
        asks[ask] += 1
        answer = it["reference"]["answer"]
        if ask == "return":
            assert "starting point?" in it["prompt"], it["id"]
            assert answer == ("yes" if (x, y) == (0, 0) else "no"), (it["id"], x, y)
        else:
            value = {"north": y, "south": -y, "east": x, "west": -x}[ask]
            assert f"steps {ask} of the starting point" in it["prompt"], it["id"]
            assert value >= 0 and answer == value, (it["id"], value)
        # the prose mentions one "steps"/"step" per movement
        n_moves = sum(1 for mv in meta["moves"] if len(mv) == 2)
        assert len(re.findall(r"\bsteps?\b(?! (?:north|south|east|west) of the)", it["prompt"])) == n_moves, it["id"]
    assert asks["return"] >= 6 and sum(v for k, v in asks.items() if k != "return") >= 3, asks


# -- word problems -------------------------------------------------------------------------------

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.FloorDiv: operator.floordiv}


def safe_eval(expr: str) -> int:
    """Integer arithmetic only (+ - * //), with exact division enforced for //."""

    def ev(node: ast.AST) -> int:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            a, b = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.FloorDiv):
                assert b != 0 and a % b == 0, f"inexact division in {expr}"
            return _OPS[type(node.op)](a, b)
        raise AssertionError(f"disallowed syntax in {expr!r}")

    return ev(ast.parse(expr, mode="eval"))


def test_word_problems_recomputed() -> None:
    for it in reasoning_items("word_problems"):
        value = safe_eval(it["meta"]["expr"])
        assert value > 0 and it["reference"]["answer"] == value, (it["id"], value)


def test_reasoning_fewshot() -> None:
    s = load("reasoning")["settings"]
    kinds = sorted(answer_kind(int(a) if a.isdigit() else a) for a in (sh["answer"] for sh in s["fewshot"]))
    assert kinds == ["int", "letter", "yesno"]
    for shot in s["fewshot"]:
        assert "\n" not in shot["answer"]  # stop is "\n"
        assert shot["prompt"].endswith((ASK_LETTER, ASK_YN, ASK_NUM))
    assert s["stop"] == ["\n"]


# ------------------------------------------------------------------------------------------------
# Instruction
# ------------------------------------------------------------------------------------------------

TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list}
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven",
                8: "eight", 9: "nine", 10: "ten", 12: "twelve"}
FIELDS = {
    "json": ({"keys"}, {"types"}),
    "json_list": ({"length", "item_type"}, set()),
    "word_count": (set(), {"min", "max", "exact"}),
    "bullet_count": ({"exact"}, set()),
    "line_count": ({"exact"}, set()),
    "sentence_count": ({"exact"}, set()),
    "forbidden_words": ({"words"}, set()),
    "required_words": ({"words"}, set()),
    "case": ({"value"}, set()),
    "prefix": ({"value"}, set()),
    "suffix": ({"value"}, set()),
    "no_commas": (set(), set()),
    "max_chars": ({"value"}, set()),
    "one_word": (set(), set()),
}


def is_type(v: Any, name: str) -> bool:
    if name == "int":
        return type(v) is int
    if name == "float":
        return type(v) is float
    return isinstance(v, TYPES[name])


def mentions_number(prompt: str, n: int) -> bool:
    return bool(re.search(rf"\b{n}\b", prompt)) or (
        n in NUMBER_WORDS and re.search(rf"\b{NUMBER_WORDS[n]}\b", prompt, re.IGNORECASE) is not None
    )


def check_well_formed(c: dict[str, Any], prompt: str) -> None:
    t = c["type"]
    required, optional = FIELDS[t]
    keys = set(c) - {"type"}
    assert required <= keys <= required | optional, c
    if t == "json":
        assert c["keys"] and all(isinstance(k, str) for k in c["keys"]), c
        assert set(c.get("types", {})) <= set(c["keys"]), c
        assert set(c.get("types", {}).values()) <= set(TYPES), c
        for k in c["keys"]:
            assert f'"{k}"' in prompt, (k, prompt)
        assert "JSON" in prompt
    elif t == "json_list":
        assert type(c["length"]) is int and c["length"] > 0 and c["item_type"] in TYPES, c
        assert "JSON array" in prompt and mentions_number(prompt, c["length"])
    elif t == "word_count":
        assert keys and all(type(c[k]) is int and c[k] > 0 for k in keys), c
        assert "exact" not in keys or len(keys) == 1, c
        if "min" in c and "max" in c:
            assert c["min"] <= c["max"], c
        for k in keys:
            assert mentions_number(prompt, c[k]), (c, prompt)
        assert "word" in prompt
    elif t in ("bullet_count", "line_count", "sentence_count"):
        assert type(c["exact"]) is int and c["exact"] > 0, c
        assert mentions_number(prompt, c["exact"]), (c, prompt)
    elif t in ("forbidden_words", "required_words"):
        assert c["words"], c
        for w in c["words"]:
            assert re.fullmatch(r"[a-z]+", w), c
            assert f'"{w}"' in prompt, (w, prompt)
    elif t == "case":
        assert c["value"] in ("upper", "lower"), c
        assert ("capital" if c["value"] == "upper" else "lowercase") in prompt, prompt
    elif t in ("prefix", "suffix"):
        assert isinstance(c["value"], str) and c["value"] == c["value"].strip() and c["value"], c
        assert f'"{c["value"]}"' in prompt, (c, prompt)
        assert c["value"] != "Answer:"  # would collide with the completion answer prefix
    elif t == "max_chars":
        assert type(c["value"]) is int and c["value"] > 0 and str(c["value"]) in prompt, c
    elif t == "no_commas":
        assert "commas" in prompt, prompt
    elif t == "one_word":
        assert "one word" in prompt or "single word" in prompt, prompt


# A small independent oracle, used only to prove that each item is satisfiable (meta.example) and
# that its constraints are mutually consistent; the real scorer lives in the probes package.


def strip_fence(text: str) -> str:
    m = re.fullmatch(r"```[\w-]*\s*\n?(.*?)\n?```", text.strip(), re.DOTALL)
    return m.group(1).strip() if m else text.strip()


def satisfied(c: dict[str, Any], reply: str) -> bool:
    text = reply.strip()
    words = text.split()
    lines = [ln for ln in text.split("\n") if ln.strip()]
    t = c["type"]
    if t == "json":
        try:
            obj = json.loads(strip_fence(text))
        except ValueError:
            return False
        return (isinstance(obj, dict) and set(obj) == set(c["keys"])
                and all(is_type(obj[k], v) for k, v in c.get("types", {}).items()))
    if t == "json_list":
        try:
            arr = json.loads(strip_fence(text))
        except ValueError:
            return False
        return isinstance(arr, list) and len(arr) == c["length"] and all(is_type(v, c["item_type"]) for v in arr)
    if t == "word_count":
        n = len(words)
        return (n == c.get("exact", n)) and n >= c.get("min", 0) and n <= c.get("max", n)
    if t == "bullet_count":
        return sum(ln.lstrip().startswith(("- ", "* ")) for ln in lines) == c["exact"]
    if t == "line_count":
        return len(lines) == c["exact"]
    if t == "sentence_count":
        return len([s for s in re.split(r"[.!?]+(?:\s+|$)", text) if s.strip()]) == c["exact"]
    if t in ("forbidden_words", "required_words"):
        found = [re.search(rf"\b{re.escape(w)}\b", text, re.IGNORECASE) is not None for w in c["words"]]
        return not any(found) if t == "forbidden_words" else all(found)
    if t == "case":
        letters = [ch for ch in text if ch.isalpha()]
        return bool(letters) and all(ch.isupper() if c["value"] == "upper" else ch.islower() for ch in letters)
    if t == "prefix":
        return text.startswith(c["value"])
    if t == "suffix":
        return text.endswith(c["value"])
    if t == "no_commas":
        return "," not in text
    if t == "max_chars":
        return len(text) <= c["value"]
    if t == "one_word":
        return len(words) == 1 and re.fullmatch(r"[A-Za-z'-]+", words[0]) is not None
    raise AssertionError(t)


def test_instruction_counts() -> None:
    items = load("instruction")["items"]
    splits = Counter(it["split"] for it in items)
    assert len(items) >= 36 and splits["test"] >= 12
    types = Counter(c["type"] for it in items for c in it["reference"]["constraints"])
    assert set(types) == set(FIELDS), set(FIELDS) - set(types)  # every constraint type is exercised
    json_items = [it for it in items if it["meta"]["category"] == "json"]
    assert len(json_items) >= 6 and any(it["split"] == "test" for it in json_items)


def test_instruction_constraints() -> None:
    for it in load("instruction")["items"]:
        cons = it["reference"]["constraints"]
        assert set(it["reference"]) == {"constraints"}, it["id"]
        assert 1 <= len(cons) <= 3, it["id"]
        assert len({c["type"] for c in cons}) == len(cons), it["id"]
        assert it["meta"]["constraint_types"] == [c["type"] for c in cons], it["id"]
        for c in cons:
            assert c["type"] in FIELDS, (it["id"], c)
            check_well_formed(c, it["prompt"])


def test_instruction_examples_satisfy() -> None:
    """Every item is satisfiable within the token budget: its hand-written example passes."""
    p = load("instruction")
    for it in p["items"]:
        example = it["meta"]["example"]
        assert n_words(example) <= 40, it["id"]  # well under max_tokens
        for c in it["reference"]["constraints"]:
            assert satisfied(c, example), (it["id"], c, example)


def test_instruction_oracle_rejects() -> None:
    """The oracle above can fail: swapped examples break their constraints."""
    items = load("instruction")["items"]
    failures = 0
    for a, b in zip(items, items[1:]):
        if not all(satisfied(c, b["meta"]["example"]) for c in a["reference"]["constraints"]):
            failures += 1
    assert failures >= len(items) // 2


def test_instruction_settings() -> None:
    p = load("instruction")
    s = p["settings"]
    assert s["max_tokens"] >= 60
    assert "\n\nQuestion:" in s["stop"]
    for shot in s["fewshot"]:
        if "JSON" in shot["prompt"]:
            assert isinstance(json.loads(shot["answer"]), (dict, list))
        if "bullet" in shot["prompt"]:
            assert all(ln.startswith("- ") for ln in shot["answer"].split("\n"))
        assert "\n\n" not in shot["answer"]
