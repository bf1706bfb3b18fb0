"""No API key plaintext and no datasource password plaintext anywhere in the metadata DB."""

from __future__ import annotations

import hashlib

from api_server.permissions import Permission
from shared.db.models import Datasource
from tests.support.factories import POSTGRES_DATASOURCE, dump_tables


def test_metadata_db_holds_no_key_or_password_plaintext(api):
    org = api.create_org()
    extra_key = api.create_key(org, [Permission.VIEW_DATASOURCES])
    password = "Pa55-word-that-must-never-be-stored"
    api.create_datasource(org.key, password=password, **POSTGRES_DATASOURCE)
    dump = repr(dump_tables(api.app))
    for secret in (org.key, extra_key, password):
        assert secret not in dump
        random_part = secret.split("_")[1] if secret.startswith("dfk_") else secret
        assert random_part not in dump
        assert hashlib.sha256(secret.encode()).hexdigest() not in dump  # not an unpeppered hash
    assert org.key[:8] in dump  # only the display prefix is kept


def test_stored_password_is_fernet_ciphertext(api):
    org = api.create_org()
    created = api.create_datasource(org.key, password="swordfish", **POSTGRES_DATASOURCE)
    with api.app.state.sessions() as session:
        stored = session.get(Datasource, created["id"]).password_encrypted
    assert stored.startswith("gAAAA")  # Fernet token version byte
    assert api.app.state.secrets.decrypt(stored) == "swordfish"
