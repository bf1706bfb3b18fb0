"""Signing keys (``shared.signing_keys``): the first key is generated once and kept private, the
data server holds public keys only, and rotation (``python -m api_server rotate-signing-key``)
publishes first, signs later, keeps the previous key's tokens working through the overlap and
refuses them after it.

The API server's ``SigningKeyring`` and the data server's ``PublicKeyring`` share one key
directory, as they do on one machine or on a shared volume; neither is restarted.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from starlette.testclient import TestClient

from data_server.app import create_app as create_data_app
from shared.errors import ConfigurationError
from shared.file_modes import keep_private
from shared.results import ResultGone
from shared.settings import Settings
from shared.signing_keys import (
    SigningKeyring,
    default_overlap_seconds,
    keys_dir,
    load_public_keys,
    prune_signing_keys,
    rotate_signing_key,
)
from shared.tokens import Scope, mint_data_token, new_data_key
from tests.support.processes import clean_environment, run_cli

DATA_KEY = new_data_key(Scope.EXECUTION_RESULT)


class EmptyStore:
    """Every result is gone: a 404 proves the token passed, a 401 that it did not."""

    def open(self, *args, **kwargs):
        raise ResultGone("This result is no longer available.")


@pytest.fixture
def settings(tmp_path):
    return Settings(state_dir=tmp_path, sample_scale=0.001, signing_key_publish_delay_seconds=0)


@pytest.fixture
def data_server(settings):
    app = create_data_app(settings)
    app.state.result_store = EmptyStore()
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _token(signer, settings) -> str:
    return mint_data_token(
        signer, settings, organization_id="o", data_key=DATA_KEY, scope=Scope.EXECUTION_RESULT
    )


def _status(data_server, token: str) -> int:
    answer = data_server.get(f"/data/{DATA_KEY}", headers={"Authorization": f"Data {token}"})
    return answer.status_code


def _kid(token: str) -> str:
    return jwt.get_unverified_header(token)["kid"]


def test_previous_key_works_during_the_overlap_and_is_refused_after(settings, data_server):
    signer = SigningKeyring(settings)
    before = _token(signer, settings)
    assert _status(data_server, before) == 404

    rotation = rotate_signing_key(settings, overlap_seconds=2)
    after = _token(signer, settings)  # the same keyring object: no restart of the API server
    assert _kid(before) == rotation.previous_kid
    assert _kid(after) == rotation.kid != rotation.previous_kid
    assert _status(data_server, before) == 404, "the old key must work during the overlap"
    assert _status(data_server, after) == 404, "the new key must work at once"

    time.sleep(max(0.0, rotation.previous_retire_at - time.time()) + 0.2)
    refused = data_server.get(f"/data/{DATA_KEY}", headers={"Authorization": f"Data {before}"})
    assert refused.status_code == 401, "a retired key must verify nothing"
    assert refused.json()["errors"][0]["code"] == "invalid_data_token"
    assert _status(data_server, after) == 404
    assert _kid(_token(signer, settings)) == rotation.kid


def test_new_key_is_published_before_it_signs(tmp_path):
    settings = Settings(state_dir=tmp_path, signing_key_publish_delay_seconds=600)
    signer = SigningKeyring(settings)
    old_kid = _kid(_token(signer, settings))

    rotation = rotate_signing_key(settings)
    assert rotation.signs_from >= time.time() + 590
    assert set(load_public_keys(settings)) == {old_kid, rotation.kid}, "published at once"
    assert _kid(_token(signer, settings)) == old_kid, "signing only after the publish delay"
    assert _kid(_token(signer, settings)) == old_kid
    later = rotation.signs_from + 1
    assert signer.signing_key(later).kid == rotation.kid
    # The default overlap outlasts the last token the old key signed, plus clock skew.
    assert rotation.previous_retire_at >= rotation.signs_from + settings.data_token_ttl_seconds


@pytest.mark.parametrize("at_once", [False, True])
def test_rotations_close_together_never_retire_a_key_before_its_tokens_expire(settings, at_once):
    """Four rotations in one second, one after the other or at once (two operators): each new
    key starts later than the last, and whichever key signs at a moment is kept for a token's
    lifetime after it. Before, keys of one second started together and either signed, and the
    one a later rotation retired signed tokens that were refused up to ~110 s early."""
    SigningKeyring(settings).signing_key()
    now = int(time.time())
    if at_once:
        with ThreadPoolExecutor(4) as pool:
            rotations = list(pool.map(lambda _: rotate_signing_key(settings, now=now), range(4)))
    else:
        rotations = [rotate_signing_key(settings, now=now) for _ in range(4)]
    starts = sorted(rotation.signs_from for rotation in rotations)
    assert len(set(starts)) == 4 and starts[0] == now + settings.signing_key_publish_delay_seconds
    schedules = {
        path.stem: json.loads(path.read_text()) for path in keys_dir(settings).glob("*.json")
    }
    signer = SigningKeyring(settings)
    for moment in range(now, starts[-1] + default_overlap_seconds(settings) + 1):
        retire_at = schedules.get(signer.signing_key(moment).kid, {}).get("retire_at")
        assert retire_at is None or retire_at >= moment + settings.data_token_ttl_seconds, moment


def test_retired_keys_leave_the_jwks_and_their_files_are_pruned(settings):
    first = SigningKeyring(settings).signing_key().kid
    rotation = rotate_signing_key(settings, overlap_seconds=0, now=time.time() - 60)
    assert first not in load_public_keys(settings), "retired: no longer published"
    assert prune_signing_keys(settings) == [first]
    assert not any(path.name.startswith(first) for path in keys_dir(settings).iterdir())
    assert SigningKeyring(settings).signing_key().kid == rotation.kid
    private_files = [p for p in keys_dir(settings).iterdir() if p.name.endswith(".key.pem")]
    assert [p.stat().st_mode & 0o777 for p in private_files] == [0o600]


def test_data_server_refuses_a_key_it_was_never_given(settings, data_server, tmp_path):
    """A key of another state directory (another region, an attacker's) is unknown here, even
    when its files look exactly like ours."""
    foreign = Settings(state_dir=tmp_path / "elsewhere", signing_key_publish_delay_seconds=0)
    assert _status(data_server, _token(SigningKeyring(foreign), settings)) == 401
    assert _status(data_server, _token(SigningKeyring(settings), settings)) == 404


def test_rotate_signing_key_command_prints_kids_and_never_key_material(tmp_path):
    env = clean_environment({"DATAFERRY_STATE_DIR": str(tmp_path / "state")})
    first = run_cli(env, tmp_path, "rotate-signing-key", "--overlap-seconds", "5")
    assert first.returncode == 0, first.stderr
    printed = json.loads(first.stdout)
    assert set(printed) == {"kid", "signs_from", "previous_kid", "previous_retire_at", "pruned"}
    assert printed["previous_retire_at"] == printed["signs_from"] + 5
    assert "PRIVATE KEY" not in first.stdout + first.stderr
    published = {p.name for p in (tmp_path / "state" / "keys" / "eu").glob("*.pub.pem")}
    assert published == {f"{printed['kid']}.pub.pem", f"{printed['previous_kid']}.pub.pem"}

    keys = sorted(path.name for path in (tmp_path / "state" / "keys" / "eu").iterdir())
    # A huge overlap rotated the key, kept the old one valid for ages, then failed to print.
    for overlap in ("-1", "86401", "99999999999999999999"):
        refused = run_cli(env, tmp_path, "rotate-signing-key", "--overlap-seconds", overlap)
        assert (refused.returncode, refused.stdout) == (2, ""), overlap
        assert "--overlap-seconds is 0 to 86,400" in refused.stderr
        assert "Traceback" not in refused.stderr
    assert sorted(path.name for path in (tmp_path / "state" / "keys" / "eu").iterdir()) == keys


def test_a_fixed_key_file_cannot_be_rotated_by_the_command(tmp_path):
    pem_source = Settings(state_dir=tmp_path / "source")
    SigningKeyring(pem_source)
    key_file = keys_dir(pem_source) / "signing-key.pem"
    env = clean_environment(
        {
            "DATAFERRY_STATE_DIR": str(tmp_path / "state"),
            "DATAFERRY_SIGNING_KEY_FILE": str(key_file),
        }
    )
    refused = run_cli(env, tmp_path, "rotate-signing-key")
    assert refused.returncode == 2
    assert "DATAFERRY_SIGNING_KEY_FILE" in refused.stderr


def test_data_server_holds_no_private_key(settings):
    SigningKeyring(settings).signing_key()
    with TestClient(create_data_app(settings)) as data_server:
        keyring = data_server.app.state.keyring
    assert len(keyring) == 1
    assert all(not hasattr(published.key, "sign") for published in keyring._keys.values())
    assert all(isinstance(published.key, Ed25519PublicKey) for published in keyring._keys.values())


def test_signing_key_is_generated_once_with_private_permissions(settings):
    first, second = SigningKeyring(settings).signing_key(), SigningKeyring(settings).signing_key()
    assert first.kid == second.kid
    key_file = settings.state_dir / "keys" / settings.region / "signing-key.pem"
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_key_file_others_could_write_is_not_trusted(settings):
    """A public key in the key directory signs data tokens: one that another user could have
    written (group- or world-writable) is ignored, as a link is."""
    SigningKeyring(settings)  # the region's own key
    directory = keys_dir(settings)
    own = set(load_public_keys(settings))
    planted = Ed25519PrivateKey.generate().public_key()
    pem = planted.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    loose = directory / "planted.pub.pem"
    loose.write_bytes(pem)
    loose.chmod(0o666)
    (directory / "linked.pub.pem").symlink_to(loose)
    assert set(load_public_keys(settings)) == own
    loose.chmod(0o644)  # the same file, this user's alone: a key like any other
    assert len(set(load_public_keys(settings)) - own) == 1


def test_a_loose_state_directory_is_made_private_at_start(tmp_path):
    """A state directory made under a looser umask (or chmod -R 777) is tightened where it holds
    secrets or lets others publish a signing key."""
    state = tmp_path / "state"
    for folder in ("keys/eu", "secrets", "results", "data"):
        (state / folder).mkdir(parents=True)
    (state / "secrets" / "api_key_pepper").write_bytes(b"x" * 48)
    for path in [state, *state.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)
    keep_private(Settings(state_dir=state))
    for path in (state, state / "secrets", state / "keys", state / "keys" / "eu"):
        assert path.stat().st_mode & 0o077 == 0, path
    assert (state / "secrets" / "api_key_pepper").stat().st_mode & 0o077 == 0


def test_a_key_file_that_is_not_there_is_named_by_its_setting(tmp_path):
    """Found by the outside probe: the refusal named the path only, not what set it."""
    missing = tmp_path / "nowhere" / "key.pem"
    with pytest.raises(ConfigurationError, match=r"DATAFERRY_SIGNING_KEY_FILE=.*no such file"):
        SigningKeyring(Settings(state_dir=tmp_path / "state", signing_key_file=missing))
