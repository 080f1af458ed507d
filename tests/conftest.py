"""Shared fixtures: the real llama-server binary, the demo model, and servers started on them.

Integration tests take these fixtures. On a laptop without llama-server or the demo model they
skip; with RYS_REQUIRE_SERVER=1 (CI) the same situation is a failure, so CI cannot go green by
skipping the tests that matter.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rys import llama_server

REQUIRE_SERVER = os.environ.get("RYS_REQUIRE_SERVER") == "1"
DEMO_CTX = 8192


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} unavailable: {exc}"
    if REQUIRE_SERVER:
        pytest.fail(f"RYS_REQUIRE_SERVER=1 but {msg}", pytrace=False)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def llama_server_bin() -> str:
    try:  # the stock build: rys's own patched one is the patched_server_bin fixture
        return llama_server.locate_llama_server(own_patched=False)[0]
    except llama_server.ServerError as exc:
        _unavailable("llama-server", exc)
        raise  # unreachable


@pytest.fixture(scope="session")
def demo_model() -> Path:
    try:
        return llama_server.demo_model_path()
    except llama_server.ServerError as exc:
        _unavailable("demo model", exc)
        raise  # unreachable


@pytest.fixture
def server_factory(llama_server_bin):
    """Start llama-servers for one test; every one is stopped afterwards, pass or fail."""
    started: list[llama_server.LlamaServer] = []

    def start(model, parallel: int = 1, extra_args=(), ctx_size: int | None = None, **kw):
        srv = llama_server.LlamaServer(
            model, binary=llama_server_bin, parallel=parallel, extra_args=list(extra_args),
            ctx_size=ctx_size or 2048 * max(1, parallel), **kw,
        )
        started.append(srv)
        return srv.start()

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="session")
def demo_server(llama_server_bin, demo_model):
    """One demo-model server with 4 slots, shared by the tests that only read from it."""
    with llama_server.LlamaServer(
        demo_model, binary=llama_server_bin, parallel=4, ctx_size=DEMO_CTX
    ) as srv:
        yield srv


@pytest.fixture(scope="session")
def patched_server_bin() -> str:
    """The --rys-patches llama-server; missing: skip, or fail under RYS_REQUIRE_SERVER=1 (CI
    builds it before the tests: README's second command)."""
    path = llama_server.patched_build_path()
    if path is None:
        _unavailable("the --rys-patches llama-server",
                     FileNotFoundError("not built: scripts/build_llama_server.sh --rys-patches "
                                       f"(or set ${llama_server.ENV_PATCHED})"))
    return str(path)
