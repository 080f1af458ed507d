"""README's two quick-start commands are what CI runs, verbatim, and every command is documented."""

from __future__ import annotations

import re

from repo_text import DOCS, README, ROOT, console_scripts, markdown_pages, section


def quick_start_commands() -> list[str]:
    blocks = re.findall(r"```sh\n(.*?)```", section(README, "## Quick start"), flags=re.S)
    return [b.strip() for b in blocks[:2]]


def test_ci_runs_readme_commands_verbatim():
    install_and_run, tests = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install_and_run in ci
    assert tests in ci
    assert "rys-sweep" in install_and_run and "pytest" in tests
    assert any("RYS_REQUIRE_SERVER=1" in line for line in ci)


def test_every_console_script_is_documented():
    """Each command is in the README's command table and has a page under docs/ that shows it."""
    scripts = console_scripts()
    assert {"rys-sweep", "rys-path", "rys-surgery", "rys-eval", "rys-plot", "rys-probes"} <= set(scripts)
    commands = section(README, "## Commands")
    docs = {page.name: page.read_text() for page in markdown_pages() if page.parent == DOCS}
    for name in [*scripts, "scripts/build_llama_server.sh"]:
        assert f"| `{name}` |" in commands, f"{name} is not in README's command table"
        assert any(f"`{name}" in text or f"{name} " in text for text in docs.values()), name
