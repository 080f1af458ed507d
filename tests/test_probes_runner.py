"""The runner against a tiny fake llama-server, used only for what a real server cannot be made
to do on demand: replies in shuffled order, timeouts, HTTP 500s, thinking that runs out of tokens.
Each item's prompt carries the fake server's instruction for it ("[reply: ...]", "[SLOW]", ...)."""

from __future__ import annotations

import json
import random
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rys.probes import (ItemResult, ProbeJob, ProbeResult, allocate_streams, item_costs,
                    measured_costs, next_probe, paired_delta, run_jobs, run_probe, run_suite)
from rys.probes.loader import probe_from_dict
from rys.probes.runner import chat_messages, completion_prompt


class FakeState:
    def __init__(self, slots=4, single_tokens=(" A", " yes", " 7"), jitter=0.03):
        self.slots = slots
        self.single_tokens = set(single_tokens)
        self.jitter = jitter
        self.bodies: list[tuple[str, dict]] = []
        self.inflight = 0
        self.max_inflight = 0
        self.lock = threading.Lock()
        self.rng = random.Random(0)


def _last_question(text: str) -> str:
    return text.rsplit("Question:", 1)[-1]


class Handler(BaseHTTPRequestHandler):
    state: FakeState

    def log_message(self, *a):  # quiet
        pass

    def _send(self, code: int, obj) -> None:
        data = json.dumps(obj).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (the timeout test)

    def do_GET(self):
        if self.path == "/props":
            self._send(200, {"total_slots": self.state.slots})
        else:
            self._send(404, {"error": "nope"})

    def do_POST(self):
        st = self.state
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with st.lock:
            st.bodies.append((self.path, body))
            st.inflight += 1
            st.max_inflight = max(st.max_inflight, st.inflight)
            delay = st.rng.random() * st.jitter
        try:
            code, obj = self._handle(body, delay)
        finally:  # before the reply goes out: the client may send its next request at once
            with st.lock:
                st.inflight -= 1
        self._send(code, obj)

    def _handle(self, body, delay):
        st = self.state
        if self.path == "/tokenize":
            n = 1 if body["content"] in st.single_tokens else 2
            return (200, {"tokens": list(range(n))})
        if self.path == "/apply-template":
            last = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
            return (200, {"prompt": f"<user>Question: {last}<model>"})
        if self.path == "/completion":
            text = _last_question(body["prompt"])
        elif self.path == "/v1/chat/completions":
            text = [m for m in body["messages"] if m["role"] == "user"][-1]["content"]
        else:
            return (404, {"error": "nope"})
        time.sleep(delay)
        if "[SLOW]" in text:
            time.sleep(2.0)
        if "[FAIL]" in text:
            return (500, {"error": {"code": 500, "message": "boom"}})
        reply = re.search(r"\[reply: (.*?)\]", text, re.DOTALL)
        reply = reply.group(1) if reply else ""
        if self.path == "/completion":
            if body.get("n_probs"):
                key = "probs1" if body["prompt"].endswith("1") else "probs"
                probs = json.loads(re.search(r"\[" + key + r": (\{.*?\})\]", text).group(1))
                top = [{"id": i, "token": t, "logprob": __import__("math").log(p)}
                       for i, (t, p) in enumerate(probs.items())]
                return (200, {"content": "x", "tokens_predicted": 1,
                                        "completion_probabilities": [{"top_logprobs": top}]})
            limit = "[LIMIT]" in text
            return (200, {"content": reply, "tokens_predicted": 5,
                                    "stop_type": "limit" if limit else "eos"})
        reasoning = "hmm, let me think" if "[THINK]" in text else ""
        finish = "length" if "[LIMIT]" in text else "stop"
        return (200, {
            "choices": [{"message": {"content": reply, "reasoning_content": reasoning},
                         "finish_reason": finish}],
            "usage": {"completion_tokens": 7},
        })


@pytest.fixture
def fake():
    servers = []

    def start(**kw):
        state = FakeState(**kw)
        handler = type("H", (Handler,), {"state": state})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}", state

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def make_probe(items, scorer="choice", name="fake", **settings):
    header = {"name": name, "version": 1, "scorer": scorer,
              "settings": {"max_tokens": 16, "stop": ["\n"], **settings}}
    return probe_from_dict(header, items, source="<test>")


def int_items(n, extra=lambda i: ""):
    return [{"id": f"i{i}", "prompt": f"Item {i} [reply: The answer is {i}]{extra(i)}",
             "reference": {"answer": i}} for i in range(n)]


# --- concurrency and order ------------------------------------------------------------------


def test_concurrent_results_come_back_in_item_order(fake):
    url, st = fake(slots=4, jitter=0.05)
    probe = make_probe(int_items(16))
    res = run_probe(url, probe)
    assert [r.id for r in res.items] == [f"i{i}" for i in range(16)]
    assert [r.extracted for r in res.items] == list(range(16))
    assert res.score == 1.0 and res.n == 16 and res.n_errors == 0
    assert 1 < st.max_inflight <= 4  # concurrency taken from /props total_slots


def test_concurrency_one_sends_one_at_a_time(fake):
    url, st = fake(slots=4)
    run_probe(url, make_probe(int_items(6)), concurrency=1)
    assert st.max_inflight == 1


def test_request_settings_sent(fake):
    url, st = fake()
    probe = make_probe(int_items(2), instruction="Be brief.",
                       fewshot=[{"prompt": "2+2?", "answer": "4"}])
    run_probe(url, probe, concurrency=1)
    path, body = st.bodies[-1]
    assert path == "/completion"
    assert body["temperature"] == 0 and body["cache_prompt"] is True and "seed" in body
    assert body["n_predict"] == 16 and "\n" in body["stop"]
    assert body["prompt"] == ("Be brief.\n\nQuestion: 2+2?\nAnswer: 4\n\n"
                              "Question: Item 1 [reply: The answer is 1]\nAnswer:")


# --- scheduling: probes side by side, slots pinned ---------------------------------------------


def test_allocate_streams_gives_slots_to_the_most_work_first():
    # equal costs: work = items; each slot goes where the work per slot is largest
    assert allocate_streams({"a": 12, "b": 16, "c": 8, "d": 8}, 4) == {"a": 1, "b": 2, "c": 1}
    s = allocate_streams({"a": 12, "b": 16, "c": 8, "d": 8}, 8)
    assert sum(s.values()) == 8 and s["b"] >= s["a"] >= s["c"] and min(s.values()) >= 1
    assert allocate_streams({"a": 30}, 4) == {"a": 4}
    assert allocate_streams({"a": 2}, 8) == {"a": 2}  # never more slots than items
    assert allocate_streams({"a": 5, "b": 0}, 4) == {"a": 4}
    assert sum(allocate_streams({str(k): 3 for k in range(6)}, 4).values()) == 4
    # a probe of long generations is spread from the start; cheap probes wait for a free slot
    costs = {"math": 16, "reasoning": 12, "eq": 48, "instruction": 80}
    assert allocate_streams({"math": 12, "reasoning": 16, "eq": 8, "instruction": 8}, 4,
                            costs) == {"instruction": 3, "eq": 1}
    assert allocate_streams({"math": 12, "instruction": 8}, 4,
                            {"math": 0.1, "instruction": 3.0}) == {"instruction": 4}


def test_next_probe_joins_only_where_waiting_items_outnumber_its_slots():
    assert next_probe({"a": 0, "b": 0}, {"a": 0, "b": 1}) is None  # all taken: stop
    assert next_probe({"a": 1}, {"a": 1}) is None  # its own slot takes the last item next
    assert next_probe({"a": 2}, {"a": 1}) == "a"
    assert next_probe({"a": 6, "b": 9}, {"a": 1, "b": 2}) == "a"  # 6/2 > 9/3
    assert next_probe({"a": 6, "b": 9}, {"a": 1, "b": 1}) == "b"
    assert next_probe({"a": 6, "b": 9}, {"a": 1, "b": 1}, {"a": 2.0, "b": 1.0}) == "a"  # by work
    assert next_probe({"a": 1, "b": 5}, {"a": 0, "b": 4}) == "a"  # a waiting probe, no slot yet


def test_item_costs_prefer_measured_latency():
    jobs = _two_probes()
    assert item_costs(jobs) == {"short": 16.0, "long": 16.0}  # max_tokens of make_probe
    assert item_costs(jobs, {"short": 0.5, "long": 0.0}) == {"short": 0.5, "long": 16.0}


def test_measured_costs_average_answered_items_only():
    res = ProbeResult("a", 1.0, None, 2, 1, 1, "h", "dev", "generate", False, items=[
        ItemResult("i0", 1.0, latency_s=1.0), ItemResult("i1", 0.0, latency_s=3.0),
        ItemResult("i2", None, error="timeout", latency_s=60.0)])
    failed = ProbeResult("b", None, None, 0, 1, 1, "h", "dev", "generate", False,
                         items=[ItemResult("x", None, error="boom", latency_s=5.0)])
    assert measured_costs({"a": res, "b": failed}) == {"a": 2.0}


def test_a_job_without_items_gets_an_empty_result_without_requests():
    empty = ProbeJob(make_probe(int_items(2)), ())
    out = run_jobs("http://127.0.0.1:9", {"fake": empty})  # nothing listens there
    assert out["fake"].n == 0 and out["fake"].n_errors == 0 and out["fake"].score is None


def _slots_by_probe(bodies):
    out: dict[str, set] = {}
    for path, body in bodies:
        if path == "/completion":
            name = "short" if "Short" in body["prompt"] else "long"
            out.setdefault(name, set()).add(body.get("id_slot"))
    return out


def _two_probes():
    short = make_probe([{"id": f"s{i}", "prompt": f"Short {i} [reply: {i}]",
                         "reference": {"answer": i}} for i in range(2)], name="short")
    long_ = make_probe([{"id": f"l{i}", "prompt": f"Long {i} [reply: {i}]",
                         "reference": {"answer": i}} for i in range(12)], name="long")
    return {"short": ProbeJob.select(short), "long": ProbeJob.select(long_)}


def test_run_jobs_side_by_side_pins_slots_and_moves_to_the_longest_probe(fake):
    url, st = fake(slots=2, jitter=0.02)
    out = run_jobs(url, _two_probes())
    assert {k: (r.n, r.score) for k, r in out.items()} == {"short": (2, 1.0), "long": (12, 1.0)}
    assert [r.id for r in out["long"].items] == [f"l{i}" for i in range(12)]  # item order
    assert st.max_inflight <= 2
    used = _slots_by_probe(st.bodies)
    assert used["short"] == {0} or used["short"] == {1}  # one slot keeps the short probe
    assert used["long"] == {0, 1}  # the freed slot joined the long probe


def test_more_probes_than_slots_all_run(fake):
    url, st = fake(slots=2)
    jobs = {f"p{k}": ProbeJob.select(make_probe(int_items(3), name=f"p{k}")) for k in range(5)}
    out = run_jobs(url, jobs)
    assert {k: r.n for k, r in out.items()} == {f"p{k}": 3 for k in range(5)}
    assert st.max_inflight <= 2
    assert {b.get("id_slot") for _, b in st.bodies} == {0, 1}


def test_timeout_unpins_the_slot(fake):
    url, st = fake(slots=1)
    items = int_items(3)
    items[0]["prompt"] += " [SLOW]"
    res = run_probe(url, make_probe(items), timeout=0.5)
    assert res.n_errors == 1 and res.n == 2
    sent = [b.get("id_slot") for path, b in st.bodies if path == "/completion"]
    assert sent == [0, None, None]  # after the timeout the server chooses the slot


# --- faults ---------------------------------------------------------------------------------


def test_timeout_and_http_500_are_errors_not_zero(fake):
    url, _ = fake()
    items = int_items(6)
    items[1]["prompt"] += " [SLOW]"
    items[4]["prompt"] += " [FAIL]"
    res = run_probe(url, make_probe(items), timeout=0.5)
    by_id = {r.id: r for r in res.items}
    assert by_id["i1"].score is None and "timeout" in by_id["i1"].error
    assert by_id["i4"].score is None and "HTTP 500" in by_id["i4"].error
    assert res.n_errors == 2 and res.n == 4
    assert res.score == 1.0  # mean over scored items only


def test_server_down_gives_errors(fake):
    res = run_probe("http://127.0.0.1:9", make_probe(int_items(3)), concurrency=2, timeout=2)
    assert res.n_errors == 3 and res.n == 0 and res.score is None and res.stderr is None


def test_wrong_answer_scores_zero_not_error(fake):
    url, _ = fake()
    items = [{"id": "a", "prompt": "[reply: no idea]", "reference": {"answer": 5}},
             {"id": "b", "prompt": "[reply: 5]", "reference": {"answer": 5}}]
    res = run_probe(url, make_probe(items))
    assert [r.score for r in res.items] == [0.0, 1.0]
    assert res.n_errors == 0 and res.score == 0.5
    assert res.stderr == pytest.approx(0.5)  # std([0,1]) = 0.7071 / sqrt(2)


# --- thinking -------------------------------------------------------------------------------


def test_truncated_in_thinking_is_flagged_chat(fake):
    url, st = fake()
    items = [{"id": "t", "prompt": "[THINK] [LIMIT] [reply: ]", "reference": {"answer": 3}},
             {"id": "ok", "prompt": "[THINK] [reply: 3]", "reference": {"answer": 3}}]
    res = run_probe(url, make_probe(items), chat=True, no_think=True)
    t, ok = res.items
    assert t.truncated and t.error is None and t.score == 0.0
    assert not ok.truncated and ok.score == 1.0
    assert res.n_truncated == 1 and res.n_errors == 0
    path, body = st.bodies[-1]
    assert path == "/v1/chat/completions"
    assert body["chat_template_kwargs"] == {"enable_thinking": False}


def test_truncated_in_thinking_completion_mode(fake):
    url, _ = fake()
    items = [{"id": "t", "prompt": "[LIMIT] [reply: <think>4 times 3 is]", "reference": {"answer": 12}},
             {"id": "d", "prompt": "[reply: <think>4 times 3</think> 12]", "reference": {"answer": 12}},
             {"id": "l", "prompt": "[LIMIT] [reply: 11 is my]", "reference": {"answer": 12}}]
    res = run_probe(url, make_probe(items))
    t, d, l = res.items
    assert t.truncated and t.score == 0.0 and t.response == ""
    assert not d.truncated and d.score == 1.0 and d.response == "12"
    assert not l.truncated  # ran out of tokens, but not while thinking


# --- logprob mode ---------------------------------------------------------------------------


def test_logprob_mode_prompt_ending_follows_tokenizer(fake):
    probs = '[probs: {" B": 0.6, " A": 0.2, " the": 0.2}]'
    items = [{"id": "m", "prompt": f"Pick one {probs}", "reference": {"answer": "B"},
              "meta": {"choices": ["x", "y"]}}]
    url, st = fake(single_tokens=(" A",))
    res = run_probe(url, make_probe(items), mode="logprob")
    r = res.items[0]
    assert r.score == pytest.approx(0.75) and r.coverage == pytest.approx(0.8)
    assert res.mode == "logprob" and res.metrics["coverage"] == pytest.approx(0.8)
    body = [b for p, b in st.bodies if p == "/completion"][-1]
    assert body["prompt"].endswith("Answer:") and body["n_predict"] == 1 and body["n_probs"] >= 20
    url, st = fake(single_tokens=())  # " A" splits into space + letter
    run_probe(url, make_probe(items), mode="logprob")
    body = [b for p, b in st.bodies if p == "/completion"][-1]
    assert body["prompt"].endswith("Answer: ")


def test_logprob_eq_one_request_per_emotion(fake):
    probs = '[probs: {" 7": 0.5, " 3": 0.5}]'
    items = [{"id": "e", "prompt": f"Scene {probs}", "reference": {"Anger": 5, "Joy": 0}}]
    url, st = fake()
    res = run_probe(url, make_probe(items, scorer="eq"), mode="logprob")
    prompts = [b["prompt"] for p, b in st.bodies if p == "/completion"]
    assert [p.rsplit("\n", 1)[-1] for p in prompts] == ["Answer: Anger:", "Answer: Joy:"]
    # E = 5 on both: Anger d = 0, Joy d = 5 -> penalty 6 of 32
    assert res.items[0].score == pytest.approx(1 - 6 / 32)


def test_logprob_eq_splits_one_into_one_and_ten(fake):
    # digit-splitting tokenizer: "10" is "1" then "0"; after "1", p("0") = 0.75
    probs = '[probs: {"1": 0.8, "5": 0.2}] [probs1: {"0": 0.75, "\\n": 0.25}]'
    items = [{"id": "e", "prompt": f"Scene {probs}", "reference": {"Anger": 10}}]
    url, st = fake(single_tokens=())
    res = run_probe(url, make_probe(items, scorer="eq"), mode="logprob")
    prompts = [b["prompt"] for p, b in st.bodies if p == "/completion"]
    assert prompts[-1] == prompts[-2] + "1"
    # p(10) = 0.6, p(1) = 0.2, p(5) = 0.2 -> E = 6 + 0.2 + 1 = 7.2, d = 2.8
    assert res.items[0].extracted == [pytest.approx(7.2)]
    assert res.items[0].score == pytest.approx(1 - 2.8**2 / 4 / 16)


def test_logprob_chat_uses_template_and_answer_prefix(fake):
    probs = '[probs: {" yes": 0.9, " no": 0.1}]'
    items = [{"id": "y", "prompt": f"Q {probs}", "reference": {"answer": "no"}}]
    url, st = fake()
    res = run_probe(url, make_probe(items), mode="logprob", chat=True)
    assert res.items[0].score == pytest.approx(0.1)
    body = [b for p, b in st.bodies if p == "/completion"][-1]
    assert body["prompt"].startswith("<user>") and body["prompt"].endswith("<model>Answer:")


def test_generate_only_probe_falls_back_in_logprob_sweep(fake):
    url, _ = fake()
    items = [{"id": "w", "prompt": "[reply: Mars]",
              "reference": {"constraints": [{"type": "one_word"}]}}]
    res = run_probe(url, make_probe(items, scorer="instruction"), mode="logprob")
    assert res.mode == "generate" and res.score == 1.0


# --- prompts --------------------------------------------------------------------------------


def test_chat_messages_put_instruction_and_shots_in_turns():
    probe = make_probe(int_items(1), instruction="Be brief.",
                       fewshot=[{"prompt": "2+2?", "answer": "4"}])
    msgs = chat_messages(probe, probe.items[0])
    assert msgs == [
        {"role": "user", "content": "Be brief.\n\n2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": probe.items[0].prompt},
    ]
    assert completion_prompt(probe, probe.items[0]).endswith("\nAnswer:")


# --- suites and results ---------------------------------------------------------------------


def test_run_suite_with_custom_file_and_split_override(fake, tmp_path):
    items = int_items(3) + [{"id": "t0", "split": "test", "prompt": "[reply: 7]",
                             "reference": {"answer": 7}}]
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({"name": "custom", "version": 2, "scorer": "choice",
                                "items": items}))
    url, _ = fake()
    out = run_suite(url, f"{path}:2", concurrency=2)
    assert list(out) == ["custom"] and out["custom"].n == 2 and out["custom"].split == "dev"
    out = run_suite(url, f"{path}", split="test")
    assert out["custom"].n == 1 and out["custom"].split == "test"
    d = out["custom"].to_dict()
    assert {"score", "stderr", "n", "n_errors", "version", "hash", "split", "metrics"} <= set(d)
    assert d["version"] == 2 and d["items"][0]["id"] == "t0"
    assert "items" not in out["custom"].to_dict(items=False)
    json.dumps(d)  # serialisable


def test_paired_delta_hand_computed():
    a = [ItemResult("x", 0.0), ItemResult("y", 1.0), ItemResult("z", 0.5), ItemResult("e", None)]
    b = [{"id": "x", "score": 1.0}, {"id": "y", "score": 1.0}, {"id": "z", "score": 0.0},
         {"id": "e", "score": 1.0}, {"id": "new", "score": 1.0}]
    delta, se = paired_delta(a, b)
    # diffs over x, y, z: +1, 0, -0.5 -> mean 1/6; sample var = (25/36 + 1/36 + 16/36)/2 = 7/12
    assert delta == pytest.approx(1 / 6)
    assert se == pytest.approx((7 / 12 / 3) ** 0.5)
    assert paired_delta([], b) == (None, None)


def test_paired_delta_accepts_probe_results():
    def pr(scores):
        return ProbeResult("p", None, None, 0, 0, 1, "h", "dev", "generate", False,
                           items=[ItemResult(f"i{k}", s) for k, s in enumerate(scores)])
    delta, se = paired_delta(pr([0.0, 0.0]), pr([1.0, 0.0]))
    assert delta == pytest.approx(0.5) and se == pytest.approx(0.5)
