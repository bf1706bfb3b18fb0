"""The HTTP contract only grows: each server's OpenAPI document keeps every promise of its snapshot.

A path, method, parameter, status, schema member or constraint that a client may rely on cannot
disappear or change by accident; additions and wording are free. A deliberate change (a new major
version) refreshes the snapshot: `python -m tests.contract.test_openapi_stability`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from api_server.openapi import build_document as api_document
from data_server.openapi import build_document as data_document
from tests.support.openapi_contract import broken_promises

SNAPSHOTS = Path(__file__).parent / "openapi_snapshots"
DOCUMENTS = {"api_server": api_document, "data_server": data_document}


@pytest.mark.parametrize("server", sorted(DOCUMENTS))
def test_the_document_keeps_every_promise_of_its_snapshot(server):
    before = json.loads((SNAPSHOTS / f"{server}.json").read_text())
    assert broken_promises(before, DOCUMENTS[server]()) == []


def test_the_comparison_sees_a_removed_or_changed_promise():
    before = json.loads((SNAPSHOTS / "api_server.json").read_text())
    after = json.loads(json.dumps(before))
    after["paths"]["/sql_snippets"].pop("post")
    after["components"]["schemas"]["SqlSnippetCreateAttributes"]["properties"]["name"][
        "maxLength"
    ] = 64
    after["paths"]["/sql_snippets"]["get"]["description"] = "Reworded."
    broken = broken_promises(before, after)
    assert any(line.startswith("paths//sql_snippets/post/") for line in broken)
    assert any("SqlSnippetCreateAttributes/properties/name/maxLength" in line for line in broken)
    assert not any(line.startswith("paths//sql_snippets/get/") for line in broken)  # reworded only


if __name__ == "__main__":
    for name, build in DOCUMENTS.items():
        text = json.dumps(build(), indent=1, sort_keys=True) + "\n"
        (SNAPSHOTS / f"{name}.json").write_text(text)
        print(f"wrote {SNAPSHOTS / f'{name}.json'}")
