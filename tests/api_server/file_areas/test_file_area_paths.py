"""The path rules as text: how a datasource's path is stored normalised, which paths are refused
because they could be read another way, and that an area is named by an organisation id only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.datapaths import (
    PathEmpty,
    PathInvalidCharacter,
    PathNotRelative,
    PathTraversal,
    ensure_organization_area,
    normalize_datasource_path,
)
from tests.support.file_areas import FORMS


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        ("a.duckdb", "a.duckdb"),
        ("./sub//a.duckdb/", "sub/a.duckdb"),
        ("%2e%2e", "%2e%2e"),  # never percent-decoded
        ("e\u0301t\u00e9.csv", "\u00e9t\u00e9.csv"),  # NFC: decomposed é is stored composed
        ("日本/データ (1).csv", "日本/データ (1).csv"),
        ("...", "..."),  # three dots are a name, not a parent
    ],
)
def test_paths_are_stored_normalised(value, stored):
    assert normalize_datasource_path(value) == stored


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("", PathEmpty),
        ("./.", PathEmpty),
        ("/a", PathNotRelative),
        ("a/..", PathTraversal),
        ("a\\b", PathInvalidCharacter),
        ("a\x00b", PathInvalidCharacter),
        ("a\nb", PathInvalidCharacter),
        ("a\u202eb", PathInvalidCharacter),  # right-to-left override
        ("a\u00a0b", PathInvalidCharacter),  # no-break space
        ("a\u3002b", PathInvalidCharacter),  # ideographic full stop: NFKC keeps it
        ("a\u29f8b", PathInvalidCharacter),  # big solidus
        ("\ufb01le.csv", PathInvalidCharacter),  # the ligature fi: NFKC changes it
        ("\uff41.csv", PathInvalidCharacter),  # fullwidth a
    ],
)
def test_paths_that_could_be_read_another_way_are_refused(value, error):
    with pytest.raises(error):
        normalize_datasource_path(value)


def test_the_nul_form_is_checked_by_the_path_rules_too():
    """The body check catches NUL first over HTTP; the rule does not depend on it."""
    assert FORMS["nul"][2] == "nul_character"
    with pytest.raises(PathInvalidCharacter):
        normalize_datasource_path("../b\x00/b.duckdb")


def test_area_names_only_resource_ids():
    for bad in ("..", "", "a/b", "aaaa-aaaa-aaa\u0430", "AAAA-AAAA-AAAA"):
        with pytest.raises(ValueError):
            ensure_organization_area(Path("/nonexistent"), bad)
