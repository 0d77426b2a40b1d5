"""Every link in README.md and docs/*.md points at a file or folder of the repository, and every #anchor at a
heading of the page it names (GitHub's heading ids)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from benchmarks.readme_blocks import ROOT, documents

# Pages other branches are writing now (faults, GPU, MMCI / CaMIB): a link to one of them is accepted
# while the file is absent; once it exists, its links and anchors are checked like every other page's.

LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~)")
CODE_SPAN = re.compile(r"`[^`]*`")


def prose_lines(text: str) -> list[str]:
    """The lines of a Markdown page outside fenced code blocks, with inline code spans removed."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line.strip()):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's id of a heading: lower case, every character but letters, digits, '_', '-' and spaces dropped,
    spaces to '-'."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The heading ids of a page (a repeated heading gets -1, -2, ... as on GitHub)."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(path: Path) -> list[str]:
    """The link targets of a page's prose (inline code and fenced blocks excluded)."""
    out = []
    for line in prose_lines(path.read_text(encoding="utf-8")):
        out += LINK.findall(CODE_SPAN.sub("", line))
    return out


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """``target: why`` for every link of ``page`` (inside repository ``root``) that does not resolve."""
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (page.parent / file_part).resolve() if file_part else page
        relative = resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else str(resolved)
        if not resolved.exists():
            broken.append(f"{target}: no such file or folder")
            continue
        if anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with id {anchor!r} in {relative}")
    return broken


@pytest.mark.parametrize("page", documents(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_link_resolves(page: Path) -> None:
    assert links(page), f"{page} has no links at all: is the link pattern still right?"
    assert broken_links(page) == []


def test_the_checker_finds_broken_links_and_anchors(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "design.md").write_text("# Design\n\n## The house\n", encoding="utf-8")
    page = docs / "probe.md"
    page.write_text(
        "# Probe: one `code` heading\n\n[ok](#probe-one-code-heading) [bad anchor](#nowhere) "
        "[file](design.md#the-house) [other anchor](design.md#the-garden) [gone](missing.md)"
        "`[in code](nothing.md)`\n```\n[fenced](nothing.md)\n```\n[web](https://example.org/x)\n",
        encoding="utf-8",
    )
    assert broken_links(page, root=tmp_path.resolve()) == [
        "#nowhere: no heading with id 'nowhere' in docs/probe.md",
        "design.md#the-garden: no heading with id 'the-garden' in docs/design.md",
        "missing.md: no such file or folder",
    ]


def test_readme_fits_on_a_few_screens() -> None:
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 200
