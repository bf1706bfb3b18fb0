"""What a claimed execution's sandbox child connects to, decided again at run time.

The API server checked a datasource when it was saved; the data server checks it again before a
child connects, because what was allowed may no longer be: a file path is confined again to the
organisation's area or a folder still granted to it, a remote host or object-store endpoint is
checked against the egress policy (the checked address is what the child connects to), and a
stored password is decrypted only to be handed to that child.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from sqlalchemy.orm import Session, sessionmaker

from data_server.engine import DatasourceSpec, QueryFailed
from data_server.object_storage import ObjectStorageSpec
from data_server.remote_databases import RemoteDatabaseSpec
from data_server.sample import ensure_sample_database
from shared import lifecycle, object_storage
from shared.database_types import DATABASE_TYPES, REMOTE_DATABASE_TYPES
from shared.datapaths import FILE_DATABASE_TYPES, resolve_datasource_path
from shared.egress import check_destination
from shared.errors import AppError
from shared.settings import Settings
from shared.shared_folders import granted_folder
from shared.state_secrets import load_fernet


class DatasourceSpecs:
    """Builds the ``DatasourceSpec`` of a claim; thread-safe, one per data server."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self._fernet: Fernet | None = None  # loaded when a remote datasource first needs it

    def for_claim(self, claim: lifecycle.Claim) -> DatasourceSpec:
        """Raises ``QueryFailed`` when the datasource may not be reached now."""
        if claim.database_type in REMOTE_DATABASE_TYPES:
            return DatasourceSpec(
                database_type=claim.database_type,
                path="",
                data_time_zone=claim.data_time_zone,
                remote=self._remote_spec(claim),
            )
        if claim.database_type == object_storage.DATABASE_TYPE:
            storage = self._object_storage_spec(claim)
            return DatasourceSpec(
                database_type=claim.database_type,
                path=storage.url,
                data_time_zone=claim.data_time_zone,
                object_storage=storage,
            )
        if claim.database_type == "sample":
            path = ensure_sample_database(self.settings.state_dir, self.settings.sample_scale)
        else:
            path = self._confined_file_path(claim)
        # Only an instance of this organisation's datasource is ever reused for it
        # (data_server.warm_sandboxes); remote and object-storage ones are always opened afresh.
        return DatasourceSpec(
            database_type=claim.database_type,
            path=str(path),
            data_time_zone=claim.data_time_zone,
            owner=f"{claim.organization_id}/{claim.datasource_id}",
        )

    def _remote_spec(self, claim: lifecycle.Claim) -> RemoteDatabaseSpec:
        """The host checked against the egress policy again, now (its answer is the address the
        child connects to), and the password decrypted only to be handed to that child."""
        port = claim.port or DATABASE_TYPES[claim.database_type].default_port or 0
        address = self._checked_address(claim.host or "", port)
        password = self._password(claim)
        return RemoteDatabaseSpec(
            host=claim.host or "",
            address=address,
            port=port,
            database=claim.database or "",
            username=claim.username or "",
            password=password,
            require_ssl=claim.require_ssl,
            verify_ssl=claim.verify_ssl,
            connect_timeout_seconds=self.settings.connect_timeout_seconds,
        )

    def _object_storage_spec(self, claim: lifecycle.Claim) -> ObjectStorageSpec:
        """As for a remote database: the endpoint's host (the bucket's own name, for AWS)
        checked now and the secret key decrypted only for the child."""
        region = claim.s3_region or object_storage.DEFAULT_REGION
        try:
            location = object_storage.parse_location(claim.database or "")
        except ValueError as exc:
            raise QueryFailed("datasource_unavailable", f"database: {exc}.") from None
        endpoint = object_storage.endpoint_for(
            location, claim.host, claim.port, region, claim.require_ssl
        )
        return ObjectStorageSpec.of(
            location,
            endpoint,
            region=region,
            verify_ssl=claim.verify_ssl,
            address=self._checked_address(endpoint.connect_host, endpoint.connect_port),
            connect_timeout_seconds=self.settings.connect_timeout_seconds,
            key_id=claim.username,
            secret=self._password(claim),
        )

    def _checked_address(self, host: str, port: int) -> str:
        try:
            return check_destination(host, port, self.settings)
        except AppError as exc:
            raise QueryFailed(exc.code, exc.detail) from None

    def _password(self, claim: lifecycle.Claim) -> str | None:
        if not claim.password_encrypted:
            return None
        if self._fernet is None:
            self._fernet = load_fernet(self.settings)
        try:
            return self._fernet.decrypt(claim.password_encrypted.encode()).decode()
        except InvalidToken:
            raise QueryFailed(
                "datasource_unavailable",
                "The stored password cannot be decrypted: the data server's "
                "DATAFERRY_ENCRYPTION_KEY differs from the API server's.",
            ) from None

    def _confined_file_path(self, claim: lifecycle.Claim) -> Path:
        """Confine the path again at run time, in the organisation's area or a folder granted to
        it: a symlink may have changed, or the grant been revoked, since the API server checked."""

        def granted(name: str) -> Path | None:
            with self.sessions() as session:
                return granted_folder(session, self.settings, claim.organization_id, name)

        try:
            return resolve_datasource_path(
                self.settings.data_root,
                claim.organization_id,
                claim.database or "",
                want_dir=FILE_DATABASE_TYPES.get(claim.database_type, False),
                granted_folder=granted,
            ).path
        except AppError as exc:
            raise QueryFailed("datasource_unavailable", exc.detail) from exc
