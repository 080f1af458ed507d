"""The repository's own text, read the same way by every test that checks it: pyproject's console
scripts, README.md and the docs/ pages, their sections, links and GitHub heading anchors."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
DOCS_INDEX = DOCS / "README.md"


def console_scripts() -> dict[str, str]:
    """pyproject's ``[project.scripts]``: command name -> entry point."""
    text = (ROOT / "pyproject.toml").read_text()
    table = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]
    return dict(re.findall(r'^([\w-]+)\s*=\s*"([^"]+)"', table, flags=re.M))


def markdown_pages() -> list[Path]:
    """README.md and every page under docs/."""
    return [README, *sorted(DOCS.glob("*.md"))]


def section(page: Path, heading: str) -> str:
    """The text under ``heading`` (a whole line, e.g. ``## Quick start``) up to the next heading of
    the same or a higher level."""
    text = page.read_text()
    level = heading.split(" ", 1)[0]
    match = re.search(rf"^{re.escape(heading)}[ \t]*$", text, flags=re.M)
    assert match, f"{page.name}: no heading {heading!r}"
    rest = text[match.end():]
    end = re.search(rf"^#{{1,{len(level)}}} ", strip_code(rest), flags=re.M)
    return rest[:end.start()] if end else rest


def strip_code(text: str) -> str:
    """``text`` with fenced code blocks blanked (same length, so offsets still match): a ``# comment``
    in a shell block is no heading and a ``[x](y)`` in one is no link."""
    return re.sub(r"^[ \t]*(```|~~~).*?^[ \t]*\1[^\n]*$", lambda m: re.sub(r"[^\n]", " ", m.group(0)),
                  text, flags=re.M | re.S)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: inline markup dropped, lower case, every character that is
    not a letter, digit, space, ``-`` or ``_`` removed, spaces turned into ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links keep their text
    text = re.sub(r"[`*]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``; a repeated slug gets ``-1``, ``-2``, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", strip_code(page.read_text()), flags=re.M):
        slug = github_slug(heading)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


@dataclass(frozen=True)
class Link:
    page: Path
    line: int
    target: str

    def __str__(self) -> str:
        page = self.page.relative_to(ROOT) if self.page.is_relative_to(ROOT) else self.page
        return f"{page}:{self.line}: {self.target}"


def links(page: Path) -> list[Link]:
    """The relative links of ``page`` (``[text](target)``, outside code), web links left out."""
    text = strip_code(page.read_text())
    text = re.sub(r"`[^`\n]*`", lambda m: " " * len(m.group(0)), text)  # inline code
    out = []
    for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        out.append(Link(page, text.count("\n", 0, m.start()) + 1, target))
    return out


def broken(link: Link) -> str | None:
    """Why ``link`` does not resolve, or None when it does: the file must exist and an ``#anchor``
    must be a heading of the Markdown page it points into."""
    file, _, anchor = link.target.partition("#")
    dest = (link.page.parent / file).resolve() if file else link.page
    if not dest.exists():
        return f"{link}: no such file"
    if anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
        return f"{link}: no heading with anchor #{anchor} in {dest.name}"
    return None
