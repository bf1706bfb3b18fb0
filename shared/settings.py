"""Settings, read once from the environment (prefix ``DATAFERRY_``).

Every field carries the name of its variable and a one-line description; ``deploy/env.example``
documents each of them and a test keeps the two in step.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from shared.egress import NetworkRule, parse_allowed_networks
from shared.errors import ConfigurationError

PREFIX = "DATAFERRY_"


class Secret:
    """A string that never shows its value when printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _setting(env: str, doc: str, default: Any = None) -> Any:
    return field(default=default, metadata={"env": PREFIX + env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Everything a server of one region needs to know about its deployment."""

    region: str = _setting("REGION", "Region this deployment serves (eu, us, ...).", "eu")
    state_dir: Path = _setting(
        "STATE_DIR", "Directory for the SQLite file, generated keys and results.", Path("var")
    )
    database_url: str = _setting(
        "DATABASE_URL",
        "SQLAlchemy URL of the metadata DB; default: SQLite file in the state dir.",
        "",
    )
    data_root: Path = _setting(
        "DATA_ROOT",
        "Holds one area per organisation, <data root>/<organisation id>/, where its file "
        "datasources' paths resolve; default <state dir>/data.",
        Path(),
    )
    api_host: str = _setting("API_HOST", "Address the API server binds to.", "127.0.0.1")
    api_port: int = _setting("API_PORT", "Port the API server listens on.", 8000)
    data_host: str = _setting("DATA_HOST", "Address the data server binds to.", "127.0.0.1")
    data_port: int = _setting("DATA_PORT", "Port the data server listens on.", 8001)
    public_api_url: str = _setting(
        "PUBLIC_API_URL", "Base URL clients use for the API server (links, token issuer).", ""
    )
    public_data_url: str = _setting(
        "PUBLIC_DATA_URL",
        "Base URL clients use for the data server (grants' data_url); default from its host/port.",
        "",
    )
    cors_origins: str = _setting(
        "CORS_ORIGINS",
        "Comma-separated origins whose browser pages may fetch data (CORS); default: none.",
        "",
    )
    api_key_pepper: Secret | None = _setting(
        "API_KEY_PEPPER", "HMAC key for API key hashes; generated into the state dir if unset."
    )
    encryption_key: Secret | None = _setting(
        "ENCRYPTION_KEY",
        "Fernet key encrypting datasource passwords; generated into the state dir if unset.",
    )
    max_datasources: int = _setting(
        "MAX_DATASOURCES", "Datasources an organisation may own (the sample one is free).", 100
    )
    sample_scale: float = _setting(
        "SAMPLE_SCALE", "Size of the generated sample datasource (1.0 = a few million rows).", 1.0
    )
    log_level: str = _setting("LOG_LEVEL", "Python logging level.", "INFO")
    execution_retention_hours: float = _setting(
        "EXECUTION_RETENTION_HOURS", "How long an execution stays visible after it started.", 24.0
    )
    result_retention_hours: float = _setting(
        "RESULT_RETENTION_HOURS", "How long a result stays fetchable after it completed.", 24.0
    )
    data_token_ttl_seconds: int = _setting(
        "DATA_TOKEN_TTL_SECONDS", "Lifetime of a data access token (at most 600).", 120
    )
    signing_key_file: Path | None = _setting(
        "SIGNING_KEY_FILE",
        "Ed25519 private key (PEM) signing data tokens; default: generated into the state dir.",
    )
    signing_key_publish_delay_seconds: int = _setting(
        "SIGNING_KEY_PUBLISH_DELAY_SECONDS",
        "After rotate-signing-key, how long the new public key is published before it signs.",
        30,
    )
    jwks_url: str = _setting(
        "JWKS_URL",
        "Where the data server fetches the public keys; default: read them from the state dir.",
        "",
    )
    max_connections: int = _setting(
        "MAX_CONNECTIONS", "Concurrent connections a server process accepts; beyond: 503.", 1000
    )
    datasource_allowed_networks: str = _setting(
        "DATASOURCE_ALLOWED_NETWORKS",
        "Networks (CIDR[:port[-port]], comma-separated) datasources may reach besides public ones.",
        "",
    )
    redis_url: str = _setting(
        "REDIS_URL",
        "Redis holding rate-limit counters shared by API servers; default: each process counts.",
        "",
    )
    rate_limit_per_minute: int = _setting(
        "RATE_LIMIT_PER_MINUTE",
        "Requests per API key per minute, unless its organisation's differs.",
        600,
    )
    rate_limit_per_hour: int = _setting(
        "RATE_LIMIT_PER_HOUR",
        "Requests per API key per hour, unless its organisation's differs.",
        20000,
    )
    max_running_executions: int = _setting(
        "MAX_RUNNING_EXECUTIONS",
        "SQL executions an organisation may have unfinished, and executions of any kind running, "
        "at once, unless its own cap differs.",
        20,
    )
    results_dir: Path = _setting(
        "RESULTS_DIR", "Directory of the local result store; default <state dir>/results.", Path()
    )
    results_url: str = _setting(
        "RESULTS_URL",
        "s3://bucket/prefix of an S3-compatible result store; default: the local results dir.",
        "",
    )
    s3_endpoint_url: str = _setting(
        "S3_ENDPOINT_URL", "Endpoint of an S3-compatible server (MinIO, Ceph); default: AWS.", ""
    )
    s3_region: str = _setting("S3_REGION", "Region of the result bucket; default: AWS's own.", "")
    worker_processes: int = _setting(
        "WORKER_PROCESSES", "Sandboxed DuckDB child processes per data server.", 2
    )
    query_timeout_seconds: float = _setting(
        "QUERY_TIMEOUT_SECONDS", "Longest an execution may run before it fails with timeout.", 300.0
    )
    connect_timeout_seconds: float = _setting(
        "CONNECT_TIMEOUT_SECONDS",
        "Longest a remote datasource (PostgreSQL, MySQL, object storage) may take to connect.",
        10.0,
    )
    query_memory_limit_mb: int = _setting(
        "QUERY_MEMORY_LIMIT_MB", "DuckDB memory_limit per execution, in MiB.", 1024
    )
    query_threads: int = _setting("QUERY_THREADS", "DuckDB threads per execution.", 2)
    query_temp_space_mb: int = _setting(
        "QUERY_TEMP_SPACE_MB", "Spill space an execution may use, in MiB.", 4096
    )
    max_result_rows: int = _setting(
        "MAX_RESULT_ROWS", "Rows kept of a result; beyond that it is truncated.", 10_000_000
    )
    max_result_bytes: int = _setting(
        "MAX_RESULT_BYTES", "Bytes kept of a result; beyond that it is truncated.", 2 * 1024**3
    )
    max_upload_mb: int = _setting(
        "MAX_UPLOAD_MB", "Largest file one upload may store, in MiB; beyond: 413.", 1024
    )
    max_organization_storage_mb: int = _setting(
        "MAX_ORGANIZATION_STORAGE_MB",
        "Storage quota of an organisation (its area's files and stored results), in MiB.",
        10240,
    )
    max_sql_length: int = _setting(
        "MAX_SQL_LENGTH", "Longest sql_query accepted, in characters.", 100_000
    )
    lease_seconds: float = _setting(
        "LEASE_SECONDS", "A worker's claim on an execution; renewed by heartbeats.", 30.0
    )
    max_attempts: int = _setting(
        "MAX_ATTEMPTS", "Attempts before an execution whose worker vanished is failed.", 3
    )
    poll_interval_seconds: float = _setting(
        "POLL_INTERVAL_SECONDS", "How often an idle worker looks for new executions.", 0.2
    )

    def __post_init__(self) -> None:
        state_dir = Path(self.state_dir).absolute()
        object.__setattr__(self, "state_dir", state_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{state_dir / 'dataferry.db'}")
        data_root = self.data_root if str(self.data_root) not in ("", ".") else state_dir / "data"
        object.__setattr__(self, "data_root", Path(data_root).absolute())
        if not self.public_api_url:
            object.__setattr__(self, "public_api_url", f"http://{self.api_host}:{self.api_port}")
        if not self.public_data_url:
            host = _reachable(self.data_host)
            object.__setattr__(self, "public_data_url", f"http://{host}:{self.data_port}")
        object.__setattr__(self, "public_data_url", self.public_data_url.rstrip("/"))
        results_dir = (
            self.results_dir if str(self.results_dir) not in ("", ".") else state_dir / "results"
        )
        object.__setattr__(self, "results_dir", Path(results_dir).absolute())
        if not 1 <= self.data_token_ttl_seconds <= 600:
            raise ConfigurationError(f"{PREFIX}DATA_TOKEN_TTL_SECONDS must be between 1 and 600")
        if self.signing_key_publish_delay_seconds < 0:
            raise ConfigurationError(
                f"{PREFIX}SIGNING_KEY_PUBLISH_DELAY_SECONDS must not be negative"
            )
        if self.worker_processes < 1 or self.max_attempts < 1:
            raise ConfigurationError(
                f"{PREFIX}WORKER_PROCESSES and {PREFIX}MAX_ATTEMPTS must be positive"
            )
        self.allowed_networks  # noqa: B018 - parse now: a bad entry stops start-up
        if self.max_upload_mb < 1 or self.max_organization_storage_mb < 1:
            raise ConfigurationError(
                f"{PREFIX}MAX_UPLOAD_MB and {PREFIX}MAX_ORGANIZATION_STORAGE_MB must be positive"
            )
        if not self.region.isidentifier() or self.region != self.region.lower():
            raise ConfigurationError(
                f"{PREFIX}REGION must be a lower-case name, got {self.region!r}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); fail fast on bad values."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(spec.metadata["env"])
            if raw is not None and raw != "":
                values[spec.name] = _cast(spec.metadata["env"], spec.type, raw)
        values.update(overrides)
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    @cached_property
    def allowed_networks(self) -> tuple[NetworkRule, ...]:
        """DATAFERRY_DATASOURCE_ALLOWED_NETWORKS, parsed (see shared.egress)."""
        try:
            return parse_allowed_networks(self.datasource_allowed_networks)
        except ValueError as exc:
            raise ConfigurationError(f"{PREFIX}DATASOURCE_ALLOWED_NETWORKS: {exc}") from None

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @classmethod
    def documented_variables(cls) -> dict[str, str]:
        return {spec.metadata["env"]: spec.metadata["doc"] for spec in fields(cls)}


def _reachable(host: str) -> str:
    """A bind address as clients can reach it: a wildcard address means this host."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping a wildcard, not binding to it
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def _cast(name: str, type_name: Any, raw: str) -> Any:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes")
        if kind.startswith("Path"):
            return Path(raw)
        if kind.startswith("Secret"):
            return Secret(raw)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: cannot read {raw!r} as {kind}") from exc
    return raw
