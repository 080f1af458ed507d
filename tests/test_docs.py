"""The README and docs/ hold together: links and anchors resolve, every page is reachable from the
README, the README stays short, and docs/api.md names every module, each of which has a docstring."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import repo_text as T
from repo_text import DOCS, DOCS_INDEX, README, ROOT

README_MAX_LINES = 260


def package_modules() -> dict[str, Path]:
    """Every module of the installed package ``rys``: dotted name -> source file."""
    out = {"rys": ROOT / "__init__.py", "rys.probes": ROOT / "probes" / "__init__.py"}
    for src in sorted(ROOT.glob("*.py")):
        if src.stem != "__init__":
            out[f"rys.{src.stem}"] = src
    for src in sorted((ROOT / "probes").glob("*.py")):
        if src.stem != "__init__":
            out[f"rys.probes.{src.stem}"] = src
    return out


# --------------------------------------------------------------------------- the checker itself


@pytest.mark.parametrize("heading, slug", [
    ("Quick start", "quick-start"),
    ("`rys-path`: build a GGUF (or a mergekit config) from a path",
     "rys-path-build-a-gguf-or-a-mergekit-config-from-a-path"),
    ("Successive halving (`--halving [ETA]`, default ETA 3)",
     "successive-halving---halving-eta-default-eta-3"),
    ("GPU builds: `scripts/build_llama_server.sh`", "gpu-builds-scriptsbuild_llama_serversh"),
    ("Python API (`from rys import gguf_surgery`)", "python-api-from-rys-import-gguf_surgery"),
    ("rys — find and build", "rys--find-and-build"),
])
def test_github_slugs(heading, slug):
    assert T.github_slug(heading) == slug


def test_the_checker_finds_broken_links_and_ignores_code(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## Same\n\n## Same\n")
    page.write_text(
        "# Page\n\n[ok](other.md#same-1) [ok](#page) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#same-2) [not md](page.md#page/x)\n"
        "`[code](nowhere.md)`\n\n```sh\n# not a heading [x](nowhere.md)\n```\n")
    found = T.links(page)
    assert [link.target for link in found] == [
        "other.md#same-1", "#page", "missing.md", "other.md#same-2", "page.md#page/x"]
    problems = [T.broken(link) for link in found]
    assert problems[:2] == [None, None] and all(problems[2:])
    assert T.anchors(page) == {"page"}


# --------------------------------------------------------------------------- the docs


def test_every_relative_link_and_anchor_resolves():
    problems = [p for page in T.markdown_pages() for link in T.links(page)
                if (p := T.broken(link))]
    assert not problems, "\n".join(problems)


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [README]
    while todo:
        page = todo.pop()
        if page in reached:
            continue
        reached.add(page)
        for link in T.links(page):
            file = link.target.partition("#")[0]
            dest = (page.parent / file).resolve() if file else page
            if dest.suffix == ".md" and dest.is_file():
                todo.append(dest)
    assert DOCS_INDEX in reached
    assert set(DOCS.glob("*.md")) <= reached, sorted(p.name for p in set(DOCS.glob("*.md")) - reached)
    index_links = {(DOCS / link.target.partition("#")[0]).resolve() for link in T.links(DOCS_INDEX)}
    assert set(DOCS.glob("*.md")) - {DOCS_INDEX} <= index_links, "a page is missing from docs/README.md"


def test_the_readme_is_short():
    n = len(README.read_text().splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; move detail into docs/"


def test_api_page_names_every_module_and_every_module_has_a_docstring():
    api = (DOCS / "api.md").read_text()
    for name, src in package_modules().items():
        assert re.search(rf"`{re.escape(name)}`", api), f"docs/api.md does not name {name}"
        assert ast.get_docstring(ast.parse(src.read_text())), f"{src.relative_to(ROOT)} has no docstring"
