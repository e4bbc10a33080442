"""The documentation follows the tree: every `docs/DESIGN.md §…` the code cites exists, and every path the
README, docs/ and infra/README.md name is in the repository."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "infra" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GENERATED = ("infra/rendered",)  # written by `visor infra render`, not kept in the repository


def design_sections() -> set[str]:
    headings = re.findall(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", (ROOT / "docs/DESIGN.md").read_text(), re.M)
    return set(headings)


def test_every_design_reference_in_the_code_points_at_a_section() -> None:
    sections = design_sections()
    assert {"2", "3", "3.3", "3.5", "3.7"} <= sections
    cited = []
    for folder in ("visor_model", "pipelines", "jobs", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"(?<!docs/)DESIGN(\.md)? §", text), f"{path}: cite docs/DESIGN.md §…"
            cited += [(path, s) for s in re.findall(r"docs/DESIGN\.md §(\d+(?:\.\d+)?)", text)]
    assert cited
    assert [c for c in cited if c[1] not in sections] == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_paths_named_in_the_docs_exist(doc: Path) -> None:
    named = set(re.findall(r"\b((?:visor_model|pipelines|jobs|bench|infra|docs|tests)/[\w./-]*\w)", doc.read_text()))
    missing = [p for p in named if not (ROOT / p).exists() and not p.startswith(GENERATED)
               and not re.search(r"[*<]", p)]
    assert missing == [], f"{doc.name} names paths that are not in the tree"
