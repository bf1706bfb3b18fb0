"""Which keys a result store takes: those the object key functions make, and nothing that could
name a file outside the store. Checked by spelling (``checked_key``), for both stores."""

from __future__ import annotations

import pytest

from shared.results import (
    VARIANTS,
    LocalResultStore,
    ResultGone,
    checked_key,
    result_object_key,
    schema_object_key,
    variant_object_key,
)
from shared.tokens import Scope, new_data_key

OUTSIDE = [
    "results/../../x",  # the decoy beside the store
    "../results/r_x.arrow",
    "results/../schemas/s_x.json",
    "results/..",
    "results/../../etc/passwd",
    "/etc/passwd",
    "results//r_x.arrow",
    "results/r_x/../../x",
    "results/.hidden",
    "results/r_x..arrow",
    "results/r_x.arrow/",
    "results/r_x\x00.arrow",
    "results/r_\u00e9.arrow",  # a letter outside ASCII
    "tmp/x",
    "results\\..\\x",
    "",
    ".",
]


@pytest.mark.parametrize("key", OUTSIDE)
def test_a_key_that_could_leave_the_store_or_was_never_made_is_gone(key, tmp_path):
    store = LocalResultStore(tmp_path / "results-root")
    (tmp_path / "x").write_bytes(b"secret")
    with pytest.raises(ResultGone):
        checked_key(key)
    for ask in (store.open, store.read_bytes, store.size, store.delete):
        with pytest.raises(ResultGone):
            ask(key)
    assert (tmp_path / "x").read_bytes() == b"secret"


def test_every_key_the_object_functions_make_is_taken(tmp_path):
    store = LocalResultStore(tmp_path / "results-root")
    data_key = new_data_key(Scope.EXECUTION_RESULT)
    keys = [
        result_object_key(data_key),
        *(variant_object_key(data_key, variant) for variant in sorted(VARIANTS)),
        schema_object_key(new_data_key(Scope.DATASOURCE_SCHEMA)),
    ]
    for key in keys:
        store.put_bytes(key, key.encode())
        assert store.read_bytes(key) == key.encode()
        assert (tmp_path / "results-root" / key).is_file()
    assert sorted(store.keys_older_than("results/", float("inf"))) == sorted(keys[:-1])
