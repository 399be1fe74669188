"""The documentation stands alone: every relative link in README.md and docs/ resolves inside the repository,
and nothing a user clones points at files outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # links inside code blocks are examples
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve_inside_the_repository(page):
    for target in relative_links(page):
        path = (page.parent / target.split("#", 1)[0]).resolve()
        assert path.exists(), f"{page.relative_to(REPO)} links {target}, which does not exist"
        assert REPO in path.parents or path == REPO, f"{page.relative_to(REPO)} links {target}, outside the repository"


def test_nothing_points_outside_the_repository():
    files = [*PAGES, *(REPO / "configs").rglob("*.yaml"), *(REPO / "mixedae").rglob("*.py"),
             *(REPO / "benchmarks").rglob("*.py"), REPO / "Makefile"]
    for path in files:
        text = path.read_text()
        for needle in ("../shared", "/work/shared"):
            assert needle not in text, f"{path.relative_to(REPO)} mentions {needle}"


def test_the_link_pattern_sees_links():  # the checks above are not vacuous
    page = REPO / "README.md"
    assert "docs/study.md" in relative_links(page)
