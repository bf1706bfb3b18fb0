"""Logs mask what looks like a secret, however a client sent it (shared/secret_shapes.py) and
however long the path (shared/web/middleware.py)."""

from __future__ import annotations

from shared.secret_shapes import without_secrets
from shared.signing_keys import SigningKeyring
from shared.tokens import Scope, mint_data_token, new_data_key
from shared.web.middleware import LOGGED_PATH_CHARS, _method_as_sent, _path_as_sent

KEY_BODY = "A1b2C3d4E5f6G7h8I9j0" * 2


def test_a_key_is_masked_with_or_without_its_checksum():
    """The checksum is computed from the 40 characters: without it they are still the key. The
    mask runs to the next blank or quote: what follows the key in the same word is lost."""
    assert without_secrets(f"/x/dfk_{KEY_BODY}_Zz9Yy8/y z") == "/x/dfk_… z"
    assert without_secrets(f"/x/dfk_{KEY_BODY}") == "/x/dfk_…"
    assert without_secrets("/datasources/q7g8-u4p4-8dpm/files/dfk_notes.csv") == (
        "/datasources/q7g8-u4p4-8dpm/files/dfk_notes.csv"
    )


def test_a_secret_broken_split_or_misspelt_is_masked_whole():
    """Removing a character, joining two parts or correcting the prefix gives the secret back:
    the log must not hold it either (found by outside probes)."""
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJvIn0.c2lnbmF0dXJl"
    for stray in "-.!%~:=+*@$()[]{}|\\^`/?#&;,\x7f\u00e9\u2026":
        for at in (5, 10, 20, 39):
            key = f"dfk_{KEY_BODY[:at]}{stray}{KEY_BODY[at:]}_Zz9Yy8"
            assert without_secrets(f"/x/{key}/y") == "/x/dfk_…", key
            broken = f"{token[:at]}{stray}{token[at:]}"
            assert without_secrets(f"/data/k?token={broken}&a=1") == "/data/k?token=eyJ…"
    for misspelt in ("DFK_", "Dfk_", "dfk-", "d-fk_", "", "x"):
        masked = without_secrets(f"/x/{misspelt}{KEY_BODY}_Zz9Yy8")
        assert masked.endswith("dfk_…") and KEY_BODY[:10] not in masked, masked
    assert without_secrets(f"/data/{token.replace('eyJ', 'EYJ', 1)}") == "/data/eyJ…"
    assert without_secrets("dfk_x " * 10_000) == "dfk_x " * 10_000
    # What ends a sentence is not part of a secret.
    assert without_secrets(f"No key dfk_{KEY_BODY}.") == "No key dfk_…."
    assert without_secrets(f"(token {token}).") == "(token eyJ…)."


def test_a_data_token_is_masked_padded_or_split(settings):
    token = mint_data_token(
        SigningKeyring(settings), settings, organization_id="o",
        data_key=new_data_key(Scope.EXECUTION_RESULT), scope=Scope.EXECUTION_RESULT,
    )  # fmt: skip
    header, claims, signature = token.split(".")
    assert without_secrets(f"/data/k&token={token}") == "/data/k&token=eyJ…"
    assert without_secrets(f"/data/{token}==") == "/data/eyJ…"
    assert without_secrets(f"/data/k/{header}.{claims[:30]}/{claims[30:]}.{signature}") == (
        "/data/k/eyJ…"
    )
    assert without_secrets(f"/data/k/{header}.{claims}./{signature}") == "/data/k/eyJ…"
    assert without_secrets("/data/k.arrow") == "/data/k.arrow"


def test_a_logged_path_is_bounded_and_still_masked():
    long_path = f"/data/dfk_{KEY_BODY}_Zz9Yy8%20" + "a" * 20_000
    logged = _path_as_sent({"path": long_path, "raw_path": long_path.encode()})
    masked = "/data/dfk_… " + "a" * 20_000
    assert logged == f"{masked[:LOGGED_PATH_CHARS]}…({len(masked)} characters)"
    assert _path_as_sent({"path": "/healthz", "raw_path": b"/healthz"}) == "/healthz"


def test_a_method_other_than_the_usual_is_logged_by_its_length_only():
    """A parser may take any token as a method (h11 took 60 KB of one), which may hold a pasted
    key."""
    assert _method_as_sent({"method": "PATCH"}) == "PATCH"
    odd = f"dfk_{KEY_BODY[:10]}&{KEY_BODY[10:]}" * 1000
    assert _method_as_sent({"method": odd}) == f"(another method, {len(odd)} characters)"


def test_a_secret_percent_encoded_over_and_over_is_still_masked():
    """``%2564`` is ``%64`` encoded again, which is ``d``: a proxy or a client that encodes twice
    still put the key in the path."""
    once = "/executions/%64fk_" + KEY_BODY
    twice = "/executions/%2564fk_" + KEY_BODY.replace("A", "%41")
    thrice = twice.replace("%", "%25")
    for path in (once, twice, thrice):
        assert _path_as_sent({"path": path, "raw_path": path.encode()}) == "/executions/dfk_…"
    plain = "/executions/%2541/files/a%20b.csv"  # no secret: written as sent
    assert _path_as_sent({"path": plain, "raw_path": plain.encode()}) == plain
