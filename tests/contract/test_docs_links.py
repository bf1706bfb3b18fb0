"""Every relative link of the project's Markdown resolves to a file inside the repository: the
README and the docs must never send a reader (or a clean checkout) outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = sorted(
    path
    for path in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("deploy/**/*.md")]
    if path.is_file()
)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_targets(document: Path) -> list[str]:
    targets = [m.group(1) for m in _LINK.finditer(document.read_text(encoding="utf-8"))]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def test_the_documents_are_found():
    assert ROOT / "README.md" in DOCUMENTS
    assert ROOT / "docs" / "architecture.md" in DOCUMENTS


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_stay_inside_the_repository_and_resolve(document):
    for target in _relative_targets(document):
        resolved = (document.parent / target.split("#", 1)[0]).resolve()
        assert resolved.is_relative_to(ROOT), f"{target} leaves the repository"
        assert resolved.exists(), f"{target} does not exist"
