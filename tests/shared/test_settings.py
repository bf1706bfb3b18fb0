"""Settings: read once from the environment, documented in deploy/env.example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.errors import ConfigurationError
from shared.settings import Secret, Settings
from shared.state_secrets import ServerSecrets

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "env.example"


def test_env_example_documents_exactly_the_settings():
    documented = set(
        re.findall(r"^#?\s*(DATAFERRY_[A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.MULTILINE)
    )
    assert documented == set(Settings.documented_variables())


def test_operator_guide_places_every_setting():
    guide = (ENV_EXAMPLE.parent / "README.md").read_text()
    missing = [name for name in Settings.documented_variables() if f"`{name}`" not in guide]
    assert missing == [], "deploy/README.md does not mention these settings"


def test_defaults_live_in_the_state_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.region == "eu"
    assert settings.state_dir == tmp_path / "var"
    assert settings.database_url == f"sqlite:///{tmp_path / 'var' / 'dataferry.db'}"
    assert settings.data_root == tmp_path / "var" / "data"
    assert settings.public_api_url == "http://127.0.0.1:8000"


def test_environment_values_are_cast():
    settings = Settings.from_env(
        {
            "DATAFERRY_REGION": "us",
            "DATAFERRY_API_PORT": "9000",
            "DATAFERRY_SAMPLE_SCALE": "0.5",
            "DATAFERRY_API_KEY_PEPPER": "p" * 40,
        }
    )
    assert (settings.region, settings.api_port, settings.sample_scale) == ("us", 9000, 0.5)
    assert isinstance(settings.api_key_pepper, Secret)


@pytest.mark.parametrize(
    "environ",
    [
        {"DATAFERRY_API_PORT": "eighty"},
        {"DATAFERRY_SAMPLE_SCALE": "big"},
        {"DATAFERRY_REGION": "EU West"},
    ],
)
def test_bad_values_fail_fast(environ):
    with pytest.raises(ConfigurationError):
        Settings.from_env(environ)


def test_secret_never_shows_its_value():
    secret = Secret("hunter2")
    assert "hunter2" not in repr(secret) and "hunter2" not in str(secret)
    settings = Settings(api_key_pepper=Secret("q" * 40))
    assert "q" * 40 not in repr(settings)


def test_generated_secrets_are_created_once_with_mode_0600(tmp_path):
    settings = Settings(state_dir=tmp_path)
    first = ServerSecrets.load(settings)
    second = ServerSecrets.load(settings)
    assert first.api_key_pepper == second.api_key_pepper
    for name in ("api_key_pepper", "encryption_key"):
        assert (tmp_path / "secrets" / name).stat().st_mode & 0o777 == 0o600
    assert second.decrypt(first.encrypt("x")) == "x"


def test_operator_supplied_secrets_win(tmp_path):
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    settings = Settings(
        state_dir=tmp_path, api_key_pepper=Secret("z" * 40), encryption_key=Secret(key)
    )
    secrets = ServerSecrets.load(settings)
    assert secrets.api_key_pepper == b"z" * 40
    assert not (tmp_path / "secrets").exists()


@pytest.mark.parametrize(
    ("field", "value"), [("api_key_pepper", "short"), ("encryption_key", "not-a-fernet-key")]
)
def test_weak_or_malformed_secrets_fail_fast(tmp_path, field, value):
    settings = Settings(state_dir=tmp_path, **{field: Secret(value)})
    with pytest.raises(ConfigurationError):
        ServerSecrets.load(settings)
