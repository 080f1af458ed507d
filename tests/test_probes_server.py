"""Probes against the real llama-server with the demo model (Gemma 3 270M base, no chat template).

A small slice of the default suite keeps CI fast; the full default suite is measured by
`rys-probes --run default --url ...` (timings in docs/probes.md, "Suites and the default suite"), not asserted here.
"""

from __future__ import annotations

import pytest

from rys.probes import default_suite, get_probe, has_chat_template, run_probe, run_suite
from rys.probes.loader import SuiteEntry

pytestmark = pytest.mark.server

# A few items of every default-suite probe.
N_SMALL = 3
SMALL = [SuiteEntry(e.probe, e.split, min(e.n or N_SMALL, N_SMALL)) for e in default_suite()]


def _check(results, mode):
    assert set(results) == {e.probe for e in SMALL}
    for name, r in results.items():
        assert r.n_errors == 0, (name, [i.error for i in r.items if i.error])
        assert r.n == N_SMALL and len(r.items) == N_SMALL
        assert 0.0 <= r.score <= 1.0
        assert r.stderr is not None and r.stderr >= 0.0
        assert all(0.0 <= i.score <= 1.0 for i in r.items)
        assert r.hash == get_probe(name).hash and r.split == "dev"
        if mode == "logprob" and name != "instruction":
            assert r.mode == "logprob"
            assert all(i.coverage is not None and 0.0 <= i.coverage <= 1.0 + 1e-6 for i in r.items)
        else:
            assert r.mode == "generate"
            assert all(i.tokens > 0 for i in r.items)


def test_default_suite_slice_generate(demo_server):
    # a generous item timeout: this checks behaviour, and a loaded 2-core machine is slow
    _check(run_suite(demo_server.url, SMALL, mode="generate", timeout=300), "generate")


def test_default_suite_slice_logprob(demo_server):
    res = run_suite(demo_server.url, SMALL, mode="logprob")
    _check(res, "logprob")
    # the few-shot prompt leads the base model to answer in the expected token space
    assert res["reasoning"].metrics["coverage"] > 0.2
    assert res["eq"].metrics["coverage"] > 0.2


def test_one_slot_runs_are_identical(server_factory, demo_model):
    # What a sweep does per config: a fresh one-slot server, the same probes in the same order.
    # (A rerun on the same warm server can differ in the last digits of the probabilities: a
    # cached prefix changes the batch shapes of the computation.)
    plan = (("generate", "math", 2), ("logprob", "eq", 1), ("logprob", "reasoning", 2))

    def run_all():
        srv = server_factory(demo_model, parallel=1)
        out = [run_probe(srv.url, probe, n=n, mode=mode) for mode, probe, n in plan]
        srv.stop()
        return out

    first, second = run_all(), run_all()
    for a, b in zip(first, second):
        assert a.n_errors == 0 and b.n_errors == 0
        assert [(i.id, i.score, i.response, i.extracted, i.coverage) for i in a.items] == \
               [(i.id, i.score, i.response, i.extracted, i.coverage) for i in b.items]
        assert a.score == b.score and a.stderr == b.stderr


def test_chat_endpoint_runs_on_a_base_model(demo_server):
    # the demo model has no chat template; the server's fallback template must still yield
    # scored items through /v1/chat/completions, not errors
    r = run_probe(demo_server.url, "reasoning", n=2, mode="generate", chat=True)
    assert r.n_errors == 0 and r.chat is True and 0.0 <= r.score <= 1.0


def test_demo_model_has_no_chat_template(demo_model):
    assert has_chat_template(demo_model) is False
