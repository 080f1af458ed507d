"""Unit tests for neuro.py (rys-neuro): the pure core on constructed data, the files it reads and
writes, figures and HTML from synthetic results, and the report command. No server here; the
views against the real patched llama-server are in test_neuro_server.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rys import cli
from rys import layer_path
from rys import neuro as N
from rys import plans
from rys import probes as P
from rys.sweep_record import Delta

DATA = Path(__file__).resolve().parent / "data"
SENTIMENT = DATA / "neuro" / "sentiment.jsonl"


# =========================================================================== depths and lens


def test_depths_default_to_every_layer_and_parse_like_paths():
    assert N.parse_depths(None, 5) == [0, 1, 2, 3, 4]
    assert N.parse_depths("3,0..1,-1,3", 5) == [0, 1, 3, 4]
    with pytest.raises(cli.UsageError, match="--depths '9'"):
        N.parse_depths("9", 5)


def test_the_lens_path_at_depth_k_runs_layers_0_to_k():
    assert N.depth_path(0) == [0]
    assert layer_path.format(N.depth_path(7)) == "0..7"


def test_answer_rank_is_its_place_in_the_top_k_or_none_beyond():
    top = [(5, "a", -0.1), (9, "b", -1.0), (2, "c", -3.0)]
    assert N.answer_rank(5, top) == 1
    assert N.answer_rank(2, top) == 3
    assert N.answer_rank(7, top) is None


def test_the_answer_emerges_where_it_ranks_first_for_good():
    depths = [0, 3, 6, 9, 12]
    assert N.emergence(depths, [None, 4, 1, 1, 1]) == 6
    assert N.emergence(depths, [1, 1, None, 1, 1]) == 9  # lost again at 6: emerges at 9
    assert N.emergence(depths, [1, 1, 1, 1, 2]) is None  # not first at the last depth
    assert N.emergence(depths, [1, 1, 1, 1, 2], within=2) == 0
    assert N.emergence(depths, [None] * 5) is None


def test_lens_summary_means_and_emergence():
    rows = [N.LensRow("p", "a", "", " A", 1, logprob=[-5.0, -1.0], rank=[None, 1],
                      top=["x", " A"], emerges_at=1),
            N.LensRow("p", "b", "", " B", 2, logprob=[-3.0, -2.0], rank=[3, 2], top=["x", "y"])]
    s = N.lens_summary(rows, 2)
    assert s["mean_logprob"] == [-4.0, -1.5]
    assert s["top1_rate"] == [0.0, 0.5]
    assert (s["n"], s["emerged"], s["median_emergence"]) == (2, 1, 1.0)


def test_each_scorer_names_the_answer_the_lens_follows():
    reasoning = P.get_probe("reasoning")
    for item in reasoning.items:
        q = P.SCORERS["choice"].logprob_queries(item)[0]
        got = P.SCORERS["choice"].logprob_answer(item, q)
        ref = item.reference["answer"]
        assert got == (str(ref) if isinstance(ref, int) else ref.strip().lower()
                       if ref.strip().lower() in ("yes", "no") else ref.strip())
    math_item = P.get_probe("math").items[0]
    assert P.SCORERS["math"].logprob_answer(math_item, P.SCORERS["math"].logprob_queries(
        math_item)[0]) == str(math_item.reference["answer"])
    eq_item = P.get_probe("eq").items[0]
    for q in P.SCORERS["eq"].logprob_queries(eq_item):
        assert P.SCORERS["eq"].logprob_answer(eq_item, q) == str(round(eq_item.reference[q.label]))


# =========================================================================== states


def test_influence_is_one_minus_cosine_and_zero_for_the_same_state():
    a = np.array([0.1, 0.7, -3.3])
    assert N.influence(a, a.copy()) == 0.0  # exactly, whatever the rounding of the cosine
    assert N.cosine(a, 3 * a) == pytest.approx(1.0) and N.cosine(a, 0 * a) == 0.0
    assert N.influence(np.array([1.0, 0.0]), np.array([0.0, 5.0])) == pytest.approx(1.0)
    assert N.influence(np.array([1.0, 1.0]), np.array([-2.0, -2.0])) == pytest.approx(2.0)
    # per-token states: the mean over tokens (ShortGPT)
    x = np.array([[1.0, 0.0], [1.0, 0.0]])
    y = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert N.influence(x, y) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes"):
        N.influence(x, np.ones((3, 2)))


def test_influence_profile_pairs_consecutive_depths_per_item_subset():
    e = np.eye(3)
    states = {0: [e[0], e[0]], 4: [e[0], e[1]], 9: [e[1], e[1]]}
    prof = N.influence_profile([0, 4, 9], states)
    assert [(x.prev, x.layer) for x in prof] == [(0, 4), (4, 9)]
    assert [x.value for x in prof] == [0.5, 0.5]
    only_first = N.influence_profile([0, 4, 9], states, items=[0])
    assert [x.value for x in only_first] == [0.0, 1.0]
    assert only_first[0].stderr is None and prof[0].stderr == pytest.approx(0.5)


def test_similarity_matrix_is_the_mean_cosine_between_depths():
    states = {0: [np.array([1.0, 0.0])], 1: [np.array([1.0, 1.0])], 2: [np.array([0.0, 1.0])]}
    S = N.similarity_matrix([0, 1, 2], states)
    assert np.allclose(np.diag(S), 1.0) and np.allclose(S, S.T)
    assert S[0, 1] == pytest.approx(math.sqrt(0.5)) and S[0, 2] == pytest.approx(0.0)


# =========================================================================== linear probes


def _planted(n: int = 60, dim: int = 20, seed: int = 1) -> tuple[dict, list[N.Labelled]]:
    """States at depths 0, 1, 2: class information planted in one direction at depth 2 only."""
    rng = np.random.default_rng(seed)
    labels = ["pos" if k % 2 else "neg" for k in range(n)]
    states = {d: [rng.normal(size=dim) for _ in range(n)] for d in (0, 1, 2)}
    for k, lab in enumerate(labels):
        states[2][k][3] += 3.0 if lab == "pos" else -3.0
    return states, [N.Labelled(f"p{k}", lab) for k, lab in enumerate(labels)]


def test_a_planted_property_beats_chance_where_planted_and_the_shuffled_control_does_not():
    states, data = _planted()
    layers, chance = N.probe_layers([0, 1, 2], states, data, folds=5, seed=0)
    assert chance == 0.5
    by = {x.layer: x for x in layers}
    assert by[2].beats_chance and by[2].accuracy > 0.9
    assert not by[0].beats_chance and not by[1].beats_chance
    assert not any(x.control_beats_chance for x in layers)
    assert all(x.n == 60 for x in layers)  # cross-validation holds every prompt out once


def test_a_fixed_train_test_split_is_used_as_given():
    states, data = _planted()
    data = [N.Labelled(d.prompt, d.label, "test" if k >= 40 else "train")
            for k, d in enumerate(data)]
    layers, _ = N.probe_layers([2], states, data)
    assert layers[0].n == 20 and layers[0].beats_chance


def test_binomial_p_and_chance_level():
    assert N.chance_level(["a", "a", "b", "a"]) == 0.75
    assert N.binomial_p(10, 10, 0.5) == pytest.approx(0.5 ** 10)
    assert N.binomial_p(0, 10, 0.5) == 1.0


def test_labelled_file_reads_jsonl_and_json(tmp_path):
    data = N.read_labelled(SENTIMENT)
    assert len(data) == 40 and {d.label for d in data} == {"positive", "negative"}
    N.check_labelled(data, 5, "sentiment.jsonl")
    js = tmp_path / "x.json"
    js.write_text(json.dumps([{"prompt": "a", "label": True}, {"prompt": "b", "label": 0}]))
    assert [(d.prompt, d.label) for d in N.read_labelled(js)] == [("a", "true"), ("b", "0")]


@pytest.mark.parametrize("lines, message", [
    (['{"label": "a"}'], "line 1: needs a non-empty string 'prompt'"),
    (['{"prompt": "x", "label": "a"}', "not json"], "line 2: not JSON"),
    (['{"prompt": "x", "label": {"k": 1}}'], "line 1: needs a 'label'"),
    (['{"prompt": "x", "label": "a", "split": "dev"}'], "'split' must be 'train' or 'test'"),
])
def test_a_bad_labelled_file_is_one_line_naming_the_place(tmp_path, lines, message):
    f = tmp_path / "d.jsonl"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(cli.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        N.read_labelled(f)


def test_labelled_sets_that_cannot_be_probed_are_refused():
    one = [N.Labelled("a", "x"), N.Labelled("b", "x")]
    with pytest.raises(cli.UsageError, match="two classes"):
        N.check_labelled(one, 2, "f")
    few = [N.Labelled(str(k), "x" if k < 6 else "y") for k in range(8)]
    with pytest.raises(cli.UsageError, match="'y' has 2"):
        N.check_labelled(few, 5, "f")
    mixed = [N.Labelled("a", "x", "train"), N.Labelled("b", "y")]
    with pytest.raises(cli.UsageError, match="on every prompt or on none"):
        N.check_labelled(mixed, 2, "f")
    lopsided = [N.Labelled("a", "x", "train"), N.Labelled("b", "y", "train"),
                N.Labelled("c", "x", "test")]
    with pytest.raises(cli.UsageError, match="the test split needs every class"):
        N.check_labelled(lopsided, 2, "f")


# =========================================================================== pairs


def _items(scores: dict[str, float | None]) -> list[P.ItemResult]:
    return [P.ItemResult(i, s, error=None if s is not None else "failed")
            for i, s in scores.items()]


def test_interaction_is_the_joint_effect_minus_the_single_effects_item_by_item():
    base = _items({"a": 0.8, "b": 0.6, "c": 0.7})
    one = _items({"a": 0.7, "b": 0.5, "c": 0.7})     # effects -0.1, -0.1, 0
    two = _items({"a": 0.6, "b": 0.6, "c": 0.5})     # effects -0.2, 0, -0.2
    both = _items({"a": 0.1, "b": 0.3, "c": 0.5})    # effects -0.7, -0.3, -0.2
    got = N.interaction(base, one, two, both)
    want = [-0.7 - (-0.1 - 0.2), -0.3 - (-0.1 + 0.0), -0.2 - (0.0 - 0.2)]  # -0.4, -0.2, 0
    assert got.delta == pytest.approx(np.mean(want))
    assert got.stderr == pytest.approx(np.std(want, ddof=1) / math.sqrt(3))
    # an item one of the four runs did not score is left out
    as_results = N.interaction(*(P.aggregate(P.get_probe("reasoning"), "dev", "logprob", False,
                                             x) for x in (base, one, two, both)))
    assert as_results == got  # ProbeResults read the same as their items
    gap = N.interaction(base, one, _items({"a": 0.6, "b": None, "c": 0.5}), both)
    assert gap.delta == pytest.approx(np.mean([want[0], want[2]]))


def test_pair_types_follow_the_sign_of_a_significant_interaction():
    assert N.pair_type(Delta(-0.3, 0.05)) == "synergistic"  # both together cost more
    assert N.pair_type(Delta(0.3, 0.05)) == "redundant"
    assert N.pair_type(Delta(0.05, 0.05)) == "independent"
    assert N.pair_type(None) == "independent"


def test_most_sensitive_layers_by_absolute_effect():
    eff = {0: Delta(-0.01, 0.0), 3: Delta(-0.4, 0.0), 5: Delta(0.2, 0.0), 7: None,
           9: Delta(-0.3, 0.0)}
    assert N.most_sensitive(eff, 2) == [3, 9]
    assert N.most_sensitive(eff, 3) == [3, 5, 9]


# =========================================================================== predict


def _similarity(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    h = np.cumsum(rng.normal(size=(n, 16)), axis=0)  # a drifting state, layer by layer
    return N.similarity_matrix(list(range(n)), {k: [h[k]] for k in range(n)})


def test_reentry_is_the_similarity_of_what_the_block_receives_on_each_pass():
    S = _similarity(8)
    sc = N.block_scores(S, 8, 1, 3, statistic="reentry")
    assert sc[(3, 6, 1)] == pytest.approx(S[2, 5])
    assert math.isnan(sc[(0, 2, 1)])  # the input embedding is not observable
    assert set(sc) == {(i, j, 1) for i in range(8) for j in range(i + 1, 9) if j - i <= 3}


def test_stability_is_minus_the_mean_change_of_influence_over_the_block():
    S = _similarity(8)
    c = [math.nan] + [1 - S[k - 1, k] for k in range(1, 8)]
    sc = N.block_scores(S, 8, 1, 4, times=2, statistic="stability")
    assert sc[(3, 6, 2)] == pytest.approx(-np.mean([abs(c[k] - c[k - 1]) for k in (3, 4, 5)]))
    assert sc[(1, 3, 2)] == pytest.approx(-abs(c[2] - c[1]))  # layer 1 has no change yet
    assert math.isnan(sc[(0, 2, 2)])


def test_combined_averages_the_percentile_ranks_and_bad_input_raises():
    S = _similarity(10)
    comb = N.block_scores(S, 10, 2, 4)
    finite = [v for v in comb.values() if not math.isnan(v)]
    assert finite and all(0.0 <= v <= 1.0 for v in finite)
    assert not math.isnan(comb[(0, 3, 1)])  # stability alone where reentry is undefined
    with pytest.raises(ValueError, match="unknown statistic"):
        N.block_scores(S, 10, statistic="magic")
    with pytest.raises(ValueError, match="every layer"):
        N.block_scores(S[:5, :5], 10)


def test_agreement_of_a_perfect_and_a_reversed_prediction():
    truth = {(i, i + 2, 1): float(i) for i in range(20)}
    good = N.agreement(truth, truth, k=5, n_perm=200)
    assert good.spearman == pytest.approx(1.0) and good.overlap == 5
    assert good.best_distance == 0 and good.perm_spearman_p < 0.01
    assert good.chance_overlap == pytest.approx(25 / 20)
    bad = N.agreement({b: -v for b, v in truth.items()}, truth, k=5, n_perm=200)
    assert bad.spearman == pytest.approx(-1.0) and bad.overlap == 0
    assert bad.best_distance == 19 and bad.perm_overlap_p == 1.0
    with_nan = {**truth, (0, 2, 1): math.nan}
    assert N.agreement(with_nan, truth, n_perm=10).n == 19  # no prediction: left out


def test_the_plan_is_a_paths_file_rys_sweep_reads_back():
    scores = {(3, 6, 1): 0.9, (4, 5, 2): 0.5}
    text = N.paths_file_text([(3, 6, 1), (4, 5, 2)], scores, 18, "combined")
    cfgs = plans.parse_paths_text(text, 18)
    assert [list(c.path) for c in cfgs] == [layer_path.duplicate(3, 6, 18),
                                           layer_path.duplicate(4, 5, 18, 2)]
    assert cfgs[0].label.startswith("predicted #1 dup(3,6)")


def test_states_default_to_the_question_alone():
    probe = P.get_probe("reasoning")
    item = probe.items[0]
    short = P.completion_prompt(N.question_only(probe), item)
    assert short == f"Question: {item.prompt}\nAnswer:"
    assert P.completion_prompt(probe, item).endswith(short) and probe.settings.fewshot


# =========================================================================== repeat


def test_prompt_repetition_writes_the_question_n_times_and_keeps_ids():
    probe = P.get_probe("reasoning")
    two = N.repeat_probe(probe, 2)
    assert N.repeat_probe(probe, 1) is probe
    assert two.hash == f"{probe.hash}x2" and two.name == probe.name
    a, b = probe.items[0], two.items[0]
    assert b.id == a.id and b.prompt == f"{a.prompt}\n\n{a.prompt}"
    text = P.completion_prompt(two, b)
    assert text.count(a.prompt) == 2 and text.endswith("Answer:")
    with pytest.raises(ValueError):
        N.repeat_probe(probe, 0)


# =========================================================================== files, figures, HTML


MODEL = {"file": "m.gguf", "size": 1, "arch": "gemma3", "n_layers": 6, "fingerprint": "f" * 16,
         "path": "/x/m.gguf"}
SERVER = {"binary": "/x/llama-server", "version": "version: 1", "args": []}


def _doc(view: str, **kw) -> dict:
    d = {"schema": N.SCHEMA, "view": view, "model": dict(MODEL), "server": SERVER,
         "settings": {"probes": "reasoning:2"}, "started_at": "2026-01-01T00:00:00Z",
         "elapsed_s": 1.0}
    d.update(kw)
    return d


def synthetic_docs(file: str = "m.gguf") -> list[dict]:
    depths = list(range(6))
    rows = [N.LensRow("reasoning", f"i{k}", "", " A", 1, " A",
                      logprob=[-9.0 + k, -5.0, -3.0, -1.0, -0.5, -0.1],
                      rank=[None, 9, 3, 1, 1, 1], top=["x"] * 6, emerges_at=3) for k in range(3)]
    lens = _doc("lens", depths=depths, rows=[N.R.to_json(r) for r in rows],
                probes={"reasoning": N.lens_summary(rows, 6)},
                settings={"emerge_rank": 1, "top_k": 100})
    rng = np.random.default_rng(0)
    states = {d: [rng.normal(size=8) for _ in range(4)] for d in depths}
    infl = _doc("influence", depths=depths,
                **N.influence_doc_part(depths, states, ["reasoning", "reasoning", "eq", "eq"]))
    probe = _doc("probe", depths=depths, chance=0.5, best_layer=3,
                 settings={"data_name": "d.jsonl", "alpha": 0.05},
                 layers=[{"layer": d, "accuracy": 0.5 + 0.08 * d, "correct": 0, "n": 40,
                          "p": 0.01, "beats_chance": d == 3, "control_accuracy": 0.5,
                          "control_p": 0.5, "control_beats_chance": False} for d in depths])
    single = {"combined": {"delta": -0.1, "stderr": 0.02}, "probes": {}}
    pairs = _doc("pairs", layers=[1, 4], baseline={"reasoning": 0.6},
                 settings={"chosen_by": "--layers"},
                 singles={str(k): single for k in range(6)},
                 pairs=[{"layers": [1, 4], "joint": {"delta": -0.5, "stderr": 0.02},
                         "interaction": {"delta": -0.3, "stderr": 0.03},
                         "interaction_probes": {}, "type": "synergistic"}])
    S = _similarity(6)
    sc = N.block_scores(S, 6, 1, 3)
    top = [b for b in N.ranked(sc) if not math.isnan(sc[b])][:3]
    predict = _doc("predict", depths=depths, similarity=S.tolist(), settings={
        "statistic": "combined"}, paths_file="/x/predict.paths",
        blocks=[{"i": i, "j": j, "times": t, "score": None if math.isnan(v) else v}
                for (i, j, t), v in sc.items()],
        top=[{"i": i, "j": j, "times": t, "score": sc[(i, j, t)], "label": f"dup({i},{j})",
              "path": "p"} for i, j, t in top])
    repeat = _doc("repeat", probe_names=["reasoning"], conditions=[
        {"label": f"unmodified, prompt x{r}", "path": "0..5", "repeat": r,
         "scores": {"reasoning": 0.5}, "combined": 0.5,
         "delta": {"reasoning": {"delta": 0.01 * r, "stderr": 0.01},
                   "combined": {"delta": 0.01 * r, "stderr": 0.01}}} for r in (1, 2)])
    docs = [lens, infl, probe, pairs, predict, repeat]
    for d in docs:
        d["model"]["file"] = file
    return docs


def test_every_view_draws_its_figures_and_says_what_it_found():
    for doc in synthetic_docs():
        plots = N.FIGURES[doc["view"]](doc)
        assert plots and all(p.png.startswith(b"\x89PNG") for p in plots), doc["view"]
        assert {p.name for p in plots} <= set(N.view_files(doc["view"]))
        assert N.summary_lines(doc), doc["view"]


def test_summaries_are_honest_about_no_result():
    probe = synthetic_docs()[2]
    probe["best_layer"] = None
    assert "no layer's probe beats chance" in N.summary_lines(probe)[0]
    lens = synthetic_docs()[0]
    assert lens["probes"]["reasoning"]["emerged"] == 3
    assert "3/3 answers emerge" in N.summary_lines(lens)[0]


def test_the_html_page_is_self_contained_with_runs_side_by_side():
    docs = synthetic_docs("a.gguf") + synthetic_docs("b.gguf")
    page = N.html_page(docs, [N.FIGURES[d["view"]](d) for d in docs], "t")
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert page.count("data:image/png;base64,") == 2 * 7
    for title in N.VIEW_TITLES.values():
        assert page.count(f"<h2>{title}</h2>") == 1  # one section per view, both runs in it
    assert page.count("<h3>a.gguf</h3>") == 6 and page.count("<h3>b.gguf</h3>") == 6


def test_write_view_writes_json_png_and_html_and_check_out_guards_them(tmp_path):
    doc = synthetic_docs()[4]
    N.check_out(tmp_path, "predict", force=False)
    written = N.write_view(tmp_path, doc, {"predict.paths": "0..5\n"})
    assert sorted(p.name for p in written) == sorted(N.view_files("predict"))
    assert json.loads((tmp_path / "predict.json").read_text())["view"] == "predict"
    with pytest.raises(cli.UsageError, match="exists .an earlier predict run.; pass --force"):
        N.check_out(tmp_path, "predict", force=False)
    N.check_out(tmp_path, "predict", force=True)
    N.check_out(tmp_path, "lens", force=False)  # another view's files do not count
    with pytest.raises(cli.UsageError, match="does not exist"):
        N.check_out(tmp_path / "no" / "such", "lens", force=False)


# =========================================================================== commands


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rys.neuro", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd)


def test_report_puts_two_models_side_by_side(tmp_path):
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        for doc in synthetic_docs(f"{name}.gguf"):
            N.write_view(d, doc)
    r = _run("report", "a", "b/lens.json", "--html", "both.html", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "both.html").read_text()
    assert "<h3>a.gguf</h3>" in page and "<h3>b.gguf</h3>" in page
    again = _run("report", "a", "--html", "both.html", cwd=tmp_path)
    assert again.returncode == 2 and "pass --force" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["report", "nothing.json", "--html", "o.html"], "nothing.json: file not found"),
    (["report", "empty", "--html", "o.html"], "no rys-neuro results in it"),
    (["report", "other.json", "--html", "o.html"], "not a rys-neuro result"),
    (["report", "empty", "--html", "missing/o.html"], "does not exist"),
    (["lens", "--no-such-option"], "unrecognized arguments"),
    (["lens", "--top-k", "0"], "--top-k must be >= 1"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.json").write_text('{"schema": "rys.sweep/1"}')
    before = sorted(p.name for p in tmp_path.iterdir())
    r = _run(*args, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and message in lines[0], r.stderr
    assert lines[0].startswith("rys-neuro: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def _influence_file(tmp_path: Path, source_fp: str, n: int) -> Path:
    doc = _doc("influence", depths=list(range(n)), similarity=_similarity(n).tolist(),
               probes={}, all={"n": 1, "influence": []})
    doc["model"].update(fingerprint=source_fp, n_layers=n)
    f = tmp_path / "influence.json"
    f.write_text(json.dumps(doc))
    return f


def test_predict_from_an_influence_file_needs_no_server_and_writes_a_plan(tmp_path, demo_model):
    """The demo model's header only (no server): a plan from an earlier influence run."""
    from rys import gguf_surgery

    model = demo_model
    src = gguf_surgery.SourceModel.open(model)
    f = _influence_file(tmp_path, src.fingerprint, src.n_layers)
    r = _run("predict", str(model), "--influence", str(f), "-o", "out", "--top", "3",
             "--llama-server", "/nonexistent", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    cfgs = plans.parse_paths_text((tmp_path / "out" / "predict.paths").read_text(), 18)
    doc = json.loads((tmp_path / "out" / "predict.json").read_text())
    assert [c.label.split()[2] for c in cfgs] == [b["label"] for b in doc["top"]]
    assert len(cfgs) == 3 and "top predicted blocks" in r.stdout
    wrong = _influence_file(tmp_path, "0" * 16, src.n_layers)
    r = _run("predict", str(model), "--influence", str(wrong), "-o", "out2", cwd=tmp_path)
    assert r.returncode == 2 and "not on gemma" in r.stderr
    assert not (tmp_path / "out2").exists()
