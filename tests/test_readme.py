"""README's two quick-start commands are what CI runs, verbatim, and every command is documented."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def quick_start_commands() -> list[str]:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_readme_commands_verbatim():
    install_and_run, tests = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_run in ci
    assert tests in ci
    assert "rys-sweep" in install_and_run and "pytest" in tests
    assert any("RYS_REQUIRE_SERVER=1" in line for line in ci)


def test_every_console_script_is_documented():
    pyproject = (ROOT / "pyproject.toml").read_text()
    table = pyproject.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    scripts = re.findall(r"^([\w-]+)\s*=", table, flags=re.M)
    assert {"rys-sweep", "rys-path", "rys-surgery", "rys-eval", "rys-plot"} <= set(scripts)
    for name in scripts:
        assert f"`{name}" in README or f"{name} " in README, name
    assert "scripts/build_llama_server.sh" in README
    assert "rys-probes" in README
