"""The shape of the code: one home per module, no import cycles, one exit protocol.

Imports are read from the source (every ``import`` statement, also those inside functions), so a
cycle cannot hide behind a lazy import.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in ROOT.glob("*.py") if p.stem != "__init__") + ["probes"]
COMMANDS = {"rys-sweep": "rys.sweep", "rys-plot": "rys.visualize", "rys-eval": "rys.compare_eval",
            "rys-surgery": "rys.gguf_surgery", "rys-path": "rys.gguf_surgery path",
            "rys-probes": "rys.probes", "rys-neuro": "rys.neuro"}


def _sources(module: str) -> list[Path]:
    if module == "probes":
        return sorted((ROOT / "probes").glob("*.py"))
    return [ROOT / f"{module}.py"]


def imports_of(module: str) -> set[str]:
    """The project's modules that ``module`` imports anywhere in its source."""
    out: set[str] = set()
    for src in _sources(module):
        for node in ast.walk(ast.parse(src.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[1] for a in node.names if a.name.startswith("rys.")]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "rys":
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.startswith("rys."):
                names = [node.module.split(".")[1]]
            else:
                continue
            out.update(n for n in names if n in MODULES and n != module)
    return out


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle():
    graph = {m: imports_of(m) for m in MODULES}
    assert find_cycle(graph) is None, graph


def test_the_path_language_depends_on_nothing_of_ours():
    assert imports_of("layer_path") == set()


def test_records_are_read_through_one_module():
    """rys-plot, bench and the sweep share sweep_record; rys-plot never imports the runner."""
    assert "sweep_record" in imports_of("visualize") and "sweep" not in imports_of("visualize")
    assert "sweep_record" in imports_of("sweep")
    bench = ast.parse((ROOT / "bench" / "sweep.py").read_text())
    assert any(isinstance(n, ast.ImportFrom) and n.module == "rys"
               and any(a.name == "sweep_record" for a in n.names) for n in ast.walk(bench))


def test_servers_are_started_through_the_engine():
    """Serving a circuit is written once: sweep, rys-eval and bench use engine, not LlamaServer."""
    for path in ("sweep.py", "compare_eval.py"):
        assert "LlamaServer(" not in (ROOT / path).read_text(), path
    assert "engine" in imports_of("sweep") and "engine" in imports_of("compare_eval")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_shares_the_exit_protocol(command, tmp_path):
    module, *sub = COMMANDS[command].split()
    base = [sys.executable, "-m", module, *sub]
    version = subprocess.run([*base, "--version"], capture_output=True, text=True, timeout=120)
    assert version.returncode == 0 and version.stdout.startswith("rys "), version.stderr
    bad = subprocess.run([*base, "--no-such-option"], capture_output=True, text=True,
                         timeout=120, cwd=tmp_path)
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in bad.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["rys-sweep", "rys-plot", "rys-eval"])
def test_options_are_never_abbreviated(command, tmp_path):
    """`--probe math` must not quietly become `--probes math` (layer-scan's habit)."""
    module, *sub = COMMANDS[command].split()
    abbrev = {"rys-sweep": ["--probe", "math", "--dry-run"],
              "rys-plot": ["x.jsonl", "--for", "json"],
              "rys-eval": ["compare", "a", "b", "--form", "csv"]}[command]
    r = subprocess.run([sys.executable, "-m", module, *sub, *abbrev], capture_output=True,
                       text=True, timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr, r.stderr


def test_a_closed_pipe_ends_quietly_even_where_os_errors_are_bad_input(capsys):
    """rys-path counts OSError as bad input; a reader gone (`| head`) is still no error line."""
    from rys import cli

    def main(argv):
        raise BrokenPipeError(32, "Broken pipe")

    assert cli.run("rys-path", main, [], usage_errors=(OSError,)) == cli.EXIT_FAILURE
    assert capsys.readouterr().err == ""
