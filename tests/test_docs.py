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
        for needle in ("../shared", "/work/shared", "METHOD.md", "CLI.md"):  # (files a clone does not have)
            assert needle not in text, f"{path.relative_to(REPO)} mentions {needle}"


def test_the_link_pattern_sees_links():  # the checks above are not vacuous
    page = REPO / "README.md"
    assert "docs/study.md" in relative_links(page)


@pytest.mark.parametrize("name", ["config.md", "cli.md"])
def test_generated_references_are_current(name):
    from mixedae import docgen

    assert (REPO / "docs" / name).read_text() == docgen.DOCS[name]() + "\n", \
        f"docs/{name} is stale: run `python -m mixedae.docgen` and commit the result"


def test_the_config_reference_documents_every_key():
    """Each key's description comes from the comment where the key is declared; a key added without one fails."""
    from mixedae import docgen

    undocumented = [row.split("|")[1].strip() for row in docgen.render_config().splitlines()
                    if row.startswith("| `") and row.rstrip().endswith("|  |")]
    assert not undocumented, f"config keys without a comment where they are declared: {undocumented}"


def test_field_docs_read_comments_above_and_after():  # the generator's parser, on a known dataclass
    from mixedae.config import ModelConfig
    from mixedae.docgen import field_docs

    docs = field_docs(ModelConfig)
    assert docs["mix_ratio"] == ("float", "r = 1/G; MAE keeps r·L patches visible (mask ratio 1 − r)")
    assert docs["grad_checkpointing"][1].startswith("Activation checkpointing per encoder block")
    assert docs["name"][1].startswith("A model preset")
