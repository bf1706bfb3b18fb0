"""Logs mask what looks like a secret, however a client sent it (shared/secret_shapes.py) and
however long the path (shared/web/middleware.py)."""

from __future__ import annotations

from shared.secret_shapes import without_secrets
from shared.signing_keys import SigningKeyring
from shared.tokens import Scope, mint_data_token, new_data_key
from shared.web.middleware import LOGGED_PATH_CHARS, _path_as_sent

KEY_BODY = "A1b2C3d4E5f6G7h8I9j0" * 2


def test_a_key_is_masked_with_or_without_its_checksum():
    """The checksum is computed from the 40 characters: without it they are still the key."""
    assert without_secrets(f"/x/dfk_{KEY_BODY}_Zz9Yy8/y") == "/x/dfk_…/y"
    assert without_secrets(f"/x/dfk_{KEY_BODY}/y") == "/x/dfk_…/y"
    assert without_secrets("/datasources/q7g8-u4p4-8dpm/files/dfk_notes.csv") == (
        "/datasources/q7g8-u4p4-8dpm/files/dfk_notes.csv"
    )


def test_a_secret_broken_by_a_stray_character_is_masked_whole():
    """Removing one character gives the secret back: the log must not hold it either."""
    token = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJvIn0.c2lnbmF0dXJl"
    for stray in "-.!%~:=+*@$()[]{}|\\^`\x7f\u00e9\u2026":
        for at in (5, 20, 39):
            key = f"dfk_{KEY_BODY[:at]}{stray}{KEY_BODY[at:]}_Zz9Yy8"
            assert without_secrets(f"/x/{key}/y") == "/x/dfk_…/y", key
            broken = f"{token[:at]}{stray}{token[at:]}"
            assert without_secrets(f"/data/k?token={broken}&a=1") == "/data/k?token=eyJ…&a=1"
    # A separator of URL parts ends the run: what follows it is under half of a key.
    assert without_secrets(f"dfk_{KEY_BODY[:25]}/{KEY_BODY[25:]}") == f"dfk_…/{KEY_BODY[25:]}"
    assert without_secrets("dfk_x/" * 10_000) == "dfk_x/" * 10_000
    assert without_secrets(f"/x/DFK_{KEY_BODY}/y") == "/x/dfk_…/y"
    assert without_secrets(f"/data/{token.replace('eyJ', 'EYJ', 1)}") == "/data/eyJ…"
    # What ends a sentence is not part of a secret.
    assert without_secrets(f"No key dfk_{KEY_BODY}.") == "No key dfk_…."
    assert without_secrets(f"(token {token}).") == "(token eyJ…)."


def test_a_data_token_is_masked_padded_or_not(settings):
    token = mint_data_token(
        SigningKeyring(settings), settings, organization_id="o",
        data_key=new_data_key(Scope.EXECUTION_RESULT), scope=Scope.EXECUTION_RESULT,
    )  # fmt: skip
    assert without_secrets(f"/data/k&token={token}") == "/data/k&token=eyJ…"
    assert without_secrets(f"/data/{token}==/x") == "/data/eyJ…/x"
    assert without_secrets("/data/k.arrow") == "/data/k.arrow"


def test_a_logged_path_is_bounded_and_still_masked():
    long_path = f"/data/dfk_{KEY_BODY}_Zz9Yy8/" + "a" * 20_000
    logged = _path_as_sent({"path": long_path, "raw_path": long_path.encode()})
    masked = "/data/dfk_…/" + "a" * 20_000
    assert logged == f"{masked[:LOGGED_PATH_CHARS]}…({len(masked)} characters)"
    assert _path_as_sent({"path": "/healthz", "raw_path": b"/healthz"}) == "/healthz"


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
