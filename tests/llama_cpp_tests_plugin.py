"""pytest plugin: llama.cpp's own server tests (tools/server/tests/unit of the patched source tree)
on rys's demo model, offline. Loaded by tests/test_llama_cpp_server_tests.py in a child pytest
run with ``--noconftest -p llama_cpp_tests_plugin``: it replaces the upstream conftest, which
downloads every preset model, and points the preset the patch series' tests use at the demo model
($RYS_DEMO_MODEL). The server binary comes from $LLAMA_SERVER_BIN_PATH (upstream's own variable).
"""

from __future__ import annotations

import os
import sys
import types

import pytest

# utils imports wget for model downloads; these tests download nothing
sys.modules.setdefault("wget", types.ModuleType("wget"))

import utils  # noqa: E402  (tools/server/tests/utils.py, on PYTHONPATH)


def _demo() -> utils.ServerProcess:
    """tinyllama2's settings on the demo model."""
    server = utils.ServerProcess()
    server.offline = True
    server.model_hf_repo = None
    server.model_hf_file = None
    server.model_file = os.environ["RYS_DEMO_MODEL"]
    server.model_alias = "tinyllama-2"
    server.n_ctx = 512
    server.n_batch = 32
    server.n_slots = 2
    server.n_predict = 64
    server.seed = 42
    return server


utils.ServerPreset.tinyllama2 = staticmethod(_demo)


@pytest.fixture(autouse=True)
def stop_server_after_each_test():
    """What upstream's conftest does: no server outlives its test."""
    yield
    for server in set(utils.server_instances):
        server.stop()
