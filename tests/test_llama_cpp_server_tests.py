"""The patch series' own llama.cpp server tests (tools/server/tests/unit/test_layer_path.py and
test_prompt_logprobs.py in the patched source tree), run on the built patched llama-server and the
demo model, offline, so they cannot rot while only rys's tests run.

The source tree is the one the binary was built from (its CMake cache says which); upstream's
conftest (which downloads its preset models) is replaced by tests/llama_cpp_tests_plugin.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rys import llama_server as LS

pytestmark = pytest.mark.server

HERE = Path(__file__).resolve().parent
SERIES_TESTS = ["unit/test_layer_path.py", "unit/test_prompt_logprobs.py"]


def source_tree(binary: str) -> Path:
    """The llama.cpp source a CMake-built binary came from (bin/ -> its build dir's cache)."""
    cache = Path(binary).resolve().parent.parent / "CMakeCache.txt"
    m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.+)$", cache.read_text(), re.M)
    assert m, f"no source directory in {cache}"
    return Path(m.group(1))


def test_the_series_own_server_tests_pass_on_the_demo_model(patched_server_bin, demo_model,
                                                            tmp_path):
    tests = source_tree(patched_server_bin) / "tools" / "server" / "tests"
    missing = [t for t in SERIES_TESTS if not (tests / t).is_file()]
    assert not missing, f"{tests} lacks {missing}: the binary was not built from this series"
    env = {**os.environ, "LLAMA_SERVER_BIN_PATH": patched_server_bin,
           "RYS_DEMO_MODEL": str(demo_model), "PORT": str(LS.free_port()),
           "LLAMA_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(tests), str(HERE)])}
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--noconftest", "-p", "llama_cpp_tests_plugin", "-q",
         "-p", "no:cacheprovider", "--rootdir", str(tmp_path), *(str(tests / t) for t in SERIES_TESTS)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert re.search(r"\d+ passed", r.stdout) and "failed" not in r.stdout.splitlines()[-1]
