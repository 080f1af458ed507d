"""Probe files: loading JSON and JSONL, clear errors, content hashes, built-ins, suites, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rys import probes
from rys.probes import ProbeError, SuiteEntry, get_probe, list_probes, load_probe, parse_suite
from rys.probes.__main__ import main as cli_main
from rys.probes.mathgen import MathSpec, generate_item

DATA = Path(__file__).parent / "data" / "probes"
ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, obj, name="p.json") -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(obj) if not isinstance(obj, str) else obj)
    return p


def base_probe(**over):
    d = json.loads((DATA / "tiny_choice.json").read_text())
    d.update(over)
    return d


# --- loading --------------------------------------------------------------------------------


def test_load_json_fixture():
    p = load_probe(DATA / "tiny_choice.json")
    assert p.name == "tiny_choice" and p.version == 3 and p.scorer == "choice"
    assert p.counts() == {"dev": 3, "test": 1}
    assert p.modes == ("generate", "logprob")
    assert p.settings.max_tokens == 8 and p.settings.stop == ("\n",)
    assert [it.id for it in p.select("dev")] == ["q1", "q2", "q3"]
    assert len(p.hash) == 16 and int(p.hash, 16) >= 0


def test_load_jsonl_fixture_with_blank_lines_and_defaults():
    p = load_probe(DATA / "tiny_eq.jsonl")
    assert p.name == "tiny_eq" and p.scorer == "eq"
    assert p.counts() == {"dev": 1, "test": 1}
    assert p.modes == ("generate", "logprob")  # default: every mode the scorer supports
    assert p.settings.answer_prefix == "Answer:"  # default
    assert p.select("test")[0].reference["Joy"] == 9


def test_get_probe_by_path_and_by_name():
    assert get_probe(str(DATA / "tiny_eq.jsonl")).name == "tiny_eq"
    assert get_probe("math").name == "math"


@pytest.mark.parametrize("mutate,msg", [
    (lambda d: d.pop("scorer"), "missing field 'scorer'"),
    (lambda d: d.pop("name"), "missing field 'name'"),
    (lambda d: d.update(scorer="bleu"), "unknown scorer 'bleu'"),
    (lambda d: d["items"][1].pop("reference"), "item 1 (id 'q2'): missing field 'reference'"),
    (lambda d: d["items"][0].pop("id"), "item 0: missing field 'id'"),
    (lambda d: d["items"][2].pop("prompt"), "missing field 'prompt'"),
    (lambda d: d["items"][2].update(id="q1"), "duplicate id 'q1'"),
    (lambda d: d["items"][0].update(split="train"), "split must be 'dev' or 'test'"),
    (lambda d: d.update(modes=["stream"]), "'modes'"),
    (lambda d: d["settings"].update(max_tokens=0), "max_tokens"),
    (lambda d: d["items"][0]["reference"].update(answer="Z"), "letter A-F"),
    (lambda d: d.update(items=[]), "no items"),
])
def test_bad_probe_files_give_one_clear_line(tmp_path, mutate, msg):
    d = base_probe()
    mutate(d)
    path = write(tmp_path, d)
    with pytest.raises(ProbeError) as ei:
        load_probe(path)
    text = str(ei.value)
    assert msg in text
    assert "\n" not in text and str(path) in text


def test_instruction_logprob_mode_rejected(tmp_path):
    d = {"name": "x", "scorer": "instruction", "modes": ["logprob"],
         "items": [{"id": "a", "prompt": "p", "reference": {"constraints": [{"type": "no_commas"}]}}]}
    with pytest.raises(ProbeError, match="does not support logprob"):
        load_probe(write(tmp_path, d))


def test_bad_jsonl_line(tmp_path):
    path = write(tmp_path, '{"name": "x", "scorer": "choice"}\n{"id": "a", oops}\n', "p.jsonl")
    with pytest.raises(ProbeError, match="line 2: invalid JSON"):
        load_probe(path)


def test_unknown_probe_and_missing_file():
    with pytest.raises(ProbeError, match="unknown probe 'nope'"):
        get_probe("nope")
    with pytest.raises(ProbeError, match="no such probe file"):
        get_probe("missing/probe.json")


# --- hashing --------------------------------------------------------------------------------


def test_hash_changes_when_an_item_changes(tmp_path):
    d = base_probe()
    h0 = load_probe(write(tmp_path, d, "a.json")).hash
    d["items"][0]["prompt"] += " "
    h1 = load_probe(write(tmp_path, d, "b.json")).hash
    assert h0 != h1


def test_hash_changes_with_settings_and_scorer_but_not_description_or_version(tmp_path):
    d = base_probe()
    h0 = load_probe(write(tmp_path, d, "a.json")).hash
    assert load_probe(write(tmp_path, base_probe(description="other", version=9), "b.json")).hash == h0
    d2 = base_probe()
    d2["settings"]["max_tokens"] = 9
    assert load_probe(write(tmp_path, d2, "c.json")).hash != h0


def test_hash_same_for_json_and_jsonl_of_same_content(tmp_path):
    d = base_probe()
    items = d.pop("items")
    jsonl = "\n".join(json.dumps(x) for x in [d, *items])
    a = load_probe(write(tmp_path, {**d, "items": items}, "a.json"))
    b = load_probe(write(tmp_path, jsonl, "a.jsonl"))
    assert a.hash == b.hash


def test_math_hash_follows_seed(tmp_path):
    hdr = json.loads((ROOT / "probes" / "data" / "math.json").read_text())
    a = load_probe(write(tmp_path, hdr, "m1.json"))
    hdr["generator"]["seed"] += 1
    b = load_probe(write(tmp_path, hdr, "m2.json"))
    assert a.hash != b.hash
    assert a.select("dev", n=3)[0].prompt != b.select("dev", n=3)[0].prompt


# --- math generator -------------------------------------------------------------------------


def test_math_items_are_exact_and_prefix_stable():
    spec = MathSpec(seed=5)
    for i in range(60):
        it = generate_item(spec, "dev", i)
        q, a = it["prompt"], it["reference"]["answer"]
        nums = [int(x) for x in q.rstrip("?").replace(",", " ").split() if x.isdigit()]
        kind = it["meta"]["category"]
        if kind == "sqrt":
            assert a * a == nums[0]
        elif kind == "cbrt":
            assert a**3 == nums[0]
        elif kind == "product":
            assert a == nums[0] * nums[1]
        else:
            assert round(nums[0] ** (1 / 3)) * nums[1] == a
    assert generate_item(spec, "dev", 7) == generate_item(spec, "dev", 7)
    assert generate_item(spec, "dev", 7)["prompt"] != generate_item(spec, "test", 7)["prompt"]


def test_math_probe_gives_any_number_of_items():
    p = get_probe("math")
    assert p.counts()["dev"] > 0 and p.counts()["test"] > 0
    n = p.counts()["dev"] + 25
    items = p.select("dev", n=n)
    assert len(items) == n and len({it.id for it in items}) == n
    assert items[:5] == p.select("dev", n=5)
    assert not {it.prompt for it in p.select("dev")} & {it.prompt for it in p.select("test")}


# --- built-ins --------------------------------------------------------------------------------


def test_builtin_probes_load_and_have_both_splits():
    ps = list_probes()
    names = [p.name for p in ps]
    assert "math" in names and names == sorted(names)
    for p in ps:
        assert p.builtin
        c = p.counts()
        assert c["dev"] > 0 and c["test"] > 0, p.name
        assert p.version >= 1 and len(p.hash) == 16


# --- suites ---------------------------------------------------------------------------------


def test_parse_suite():
    s = parse_suite("math:16,eq:8@test, reasoning ,my/probe.jsonl:20")
    assert s == [SuiteEntry("math", "dev", 16), SuiteEntry("eq", "test", 8),
                 SuiteEntry("reasoning", "dev", None), SuiteEntry("my/probe.jsonl", "dev", 20)]
    assert str(s[1]) == "eq:8@test"


@pytest.mark.parametrize("spec,msg", [
    ("", "empty"),
    ("math:x", None),
    ("math:-3", "positive"),
    ("math:0", "positive"),
    ("math@train", "unknown split"),
    ("math,math:3", "more than once"),
])
def test_parse_suite_errors(spec, msg):
    if msg is None:  # "x" is not a count, so "math:x" is a name; it only fails at lookup
        assert parse_suite(spec)[0].probe == "math:x"
        return
    with pytest.raises(ProbeError, match=msg):
        parse_suite(spec)


def test_default_suite_names_builtin_probes():
    suite = probes.default_suite()
    assert suite and all(isinstance(e, SuiteEntry) and e.n for e in suite)
    assert parse_suite("default") == suite
    for e in suite:
        p = get_probe(e.probe)
        assert len(p.select(e.split, n=e.n)) == e.n


# --- CLI ------------------------------------------------------------------------------------


def test_cli_lists_probes(capsys):
    assert cli_main([]) == 0
    out = capsys.readouterr().out
    for p in list_probes():
        assert p.name in out and p.hash in out


def test_cli_json_and_show(capsys):
    assert cli_main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {"name", "version", "hash", "n_dev", "n_test", "modes"} <= set(rows[0])
    assert cli_main(["--show", str(DATA / "tiny_choice.json"), "--limit", "2", "--prompt"]) == 0
    out = capsys.readouterr().out
    # the prompt as text, exactly as sent (no JSON escapes to read through)
    assert "--- q1" in out and "\nQuestion: Which is a colour?\n" in out and "q3" not in out
    assert "\\n" not in out.split("--- q1", 1)[1]
    assert cli_main(["--show", str(DATA / "tiny_choice.json"), "--limit", "2", "--prompt",
                     "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)  # one document
    assert [it["id"] for it in doc["items"]] == ["q1", "q2"]
    assert "Question: Which is a colour?" in doc["items"][0]["rendered"]


def test_cli_run_with_no_server_is_an_error(capsys):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert cli_main(["--run", "math:2", "--url", f"http://127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nothing answers at" in err[0] and "connection refused" in err[0]
    assert cli_main(["--run", "math:2"]) == 2  # neither --url nor --model


def test_cli_validate_reports_errors_with_exit_2(tmp_path, capsys):
    bad = write(tmp_path, base_probe(scorer="bleu"))
    assert cli_main(["--validate", str(DATA / "tiny_eq.jsonl")]) == 0
    assert cli_main(["--validate", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown scorer 'bleu'" in err[0]


def test_cli_as_module_unknown_probe():
    r = subprocess.run([sys.executable, "-m", "rys.probes", "--show", "nope"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip().startswith("rys-probes: error: unknown probe 'nope'")
    assert r.stdout == ""
