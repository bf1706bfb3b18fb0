"""Settings: one typed model, read once from the environment (prefix ``DATAFERRY_``).

Each field declares its type, default, bounds and a one-line description; its variable is
``DATAFERRY_`` + the field's name in capitals. A value out of bounds stops start-up with one line
naming the variable and what it may be (never a secret's value). ``deploy/env.example`` documents
every field, and a test holds it to the names, defaults and bounds declared here.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError, core_schema

from shared.egress import NetworkRule, parse_allowed_networks
from shared.errors import ConfigurationError
from shared.host_resolution import url_host
from shared.setting_fields import (
    HOST_BOUNDS,
    PORT_BOUNDS,
    SettingDoc,
    refusal,
    setting,
    setting_docs,
    url_bounds,
)
from shared.text import DECIMAL_NUMBER, WHOLE_NUMBER


class Secret:
    """A string that never shows its value when printed or logged."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __len__(self) -> int:
        """What ``Field(min_length=...)`` checks: the length, never the value, is compared."""
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Callable[[Any], Any]) -> Any:
        """A setting of this type takes a ``Secret`` or the string read from the environment."""
        return core_schema.no_info_before_validator_function(
            lambda value: cls(value) if isinstance(value, str) else value,
            core_schema.is_instance_schema(cls),
        )


_ORIGIN = r"\s*(\*|[a-z][a-z0-9+.-]*://[^\s,/]+)?\s*"
_SECRETS_DIR = "<generated into <state dir>/secrets/{}>"
_ANY_DIRECTORY = "any directory this process may create and write"


class Settings(BaseModel):
    """Everything a server of one region needs to know about its deployment."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, validate_default=True
    )

    region: str = setting(
        "eu",
        "Region this deployment serves (eu, us, ...).",
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        allowed="a lower-case name: a letter, then letters, digits or _ (at most 32)",
    )
    state_dir: Path = setting(
        Path("var"),
        "Directory for the SQLite file, generated keys and results.",
        unbounded=_ANY_DIRECTORY,
    )
    database_url: str = setting(
        "",
        "SQLAlchemy URL of the metadata DB; default: SQLite file in the state dir.",
        pattern=r"^$|^(sqlite(\+pysqlite)?|postgres(ql)?(\+psycopg)?)://",
        allowed="sqlite:///<file> or postgresql+psycopg://<user>@<host>:<port>/<database> "
        "(postgresql:// and postgres:// are read as postgresql+psycopg://)",
        shown="sqlite:///<state dir>/dataferry.db",
        hidden=True,
    )
    data_root: Path = setting(
        Path(),
        "Holds one area per organisation, <data root>/<organisation id>/, where its file "
        "datasources' paths resolve; default <state dir>/data.",
        unbounded=_ANY_DIRECTORY,
        shown="<state dir>/data",
    )
    api_host: str = setting(
        "127.0.0.1",
        "Address the API server binds to.",
        **HOST_BOUNDS,
    )
    api_port: int = setting(8000, "Port the API server listens on.", **PORT_BOUNDS)
    data_host: str = setting(
        "127.0.0.1",
        "Address the data server binds to.",
        **HOST_BOUNDS,
    )
    data_port: int = setting(8001, "Port the data server listens on.", **PORT_BOUNDS)
    public_api_url: str = setting(
        "",
        "Base URL clients use for the API server, which the launcher prints and its curl "
        "example uses; default from its host/port.",
        shown="http://<api host>:<api port>",
        **url_bounds("http", "https"),
    )
    public_data_url: str = setting(
        "",
        "Base URL clients use for the data server (grants' data_url); default from its host/port.",
        shown="http://<data host>:<data port>",
        **url_bounds("http", "https"),
    )
    cors_origins: str = setting(
        "",
        "Comma-separated origins whose browser pages may fetch data (CORS); default: none.",
        pattern=rf"^{_ORIGIN}(,{_ORIGIN})*$",
        allowed="origins (scheme://host[:port], no path) or *, comma-separated",
    )
    trusted_proxies: str = setting(
        "",
        "Comma-separated addresses or networks of the proxies whose X-Forwarded-For and "
        "X-Forwarded-Proto are believed; default: none, the connection's peer is the client.",
        allowed="IP addresses or networks (CIDR, host bits zero), comma-separated; or * alone",
    )
    api_key_pepper: Secret | None = setting(
        None,
        "HMAC key for API key hashes; generated into the state dir if unset.",
        min_length=32,
        shown=_SECRETS_DIR.format("api_key_pepper"),
        hidden=True,
    )
    encryption_key: Secret | None = setting(
        None,
        "Fernet key encrypting datasource passwords; generated into the state dir if unset.",
        min_length=44,
        max_length=44,
        allowed="a Fernet key: 44 url-safe base64 characters",
        shown=_SECRETS_DIR.format("encryption_key"),
        hidden=True,
    )
    max_datasources: int = setting(
        100, "Datasources an organisation may own (the sample one is free).", ge=0, le=1_000_000
    )
    max_filter_options_mb: int = setting(
        100,
        "Megabytes of options (values and labels, as stored JSON) an organisation's filters may "
        "hold together.",
        ge=1,
        le=1_000_000,
    )
    max_execution_text_mb: int = setting(
        2048,
        "Megabytes of text (SQL as sent and as run, parameters as sent and as bound) an "
        "organisation's executions may keep together until they expire "
        "(DATAFERRY_EXECUTION_RETENTION_HOURS).",
        ge=1,
        le=1_000_000,
    )
    max_objects_per_kind: int = setting(
        10_000,
        "Filters, SQL snippets, dashboards, reports and dashboard groups an organisation may "
        "have, of each kind.",
        ge=1,
        le=10_000_000,
    )
    sample_scale: float = setting(
        1.0, "Size of the generated sample datasource (1.0 = a few million rows).", gt=0, le=100
    )
    log_level: Literal["CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"] = setting(
        "INFO", "Python logging level."
    )
    execution_retention_hours: float = setting(
        24.0, "How long an execution stays visible after it started.", gt=0, le=8760
    )
    result_retention_hours: float = setting(
        24.0, "How long a result stays fetchable after it completed.", gt=0, le=8760
    )
    data_token_ttl_seconds: int = setting(120, "Lifetime of a data access token.", ge=1, le=600)
    signing_key_file: Path | None = setting(
        None,
        "Ed25519 private key (PEM) signing data tokens; default: generated into the state dir.",
        unbounded="a file path; start-up refuses a file that is not an Ed25519 private key",
        shown="<generated into <state dir>/keys/<region>/signing-key.pem>",
    )
    signing_key_publish_delay_seconds: int = setting(
        30,
        "After rotate-signing-key, how long the new public key is published before it signs.",
        ge=0,
        le=86400,
    )
    jwks_url: str = setting(
        "",
        "Where the data server fetches the public keys; default: read them from the state dir.",
        **url_bounds("http", "https"),
    )
    max_connections: int = setting(
        1000, "Concurrent connections a server process accepts; beyond: 503.", ge=1, le=1_000_000
    )
    datasource_allowed_networks: str = setting(
        "",
        "Networks (CIDR[:port[-port]], comma-separated) datasources may reach besides public ones.",
        allowed="CIDR, CIDR:port or CIDR:low-high entries, comma-separated",
    )
    redis_url: str = setting(
        "",
        "Redis holding rate-limit counters shared by API servers; default: each process counts.",
        hidden=True,
        **url_bounds("redis", "rediss", "unix"),
    )
    rate_limit_per_minute: int = setting(
        600,
        "Requests per API key per minute, unless its organisation's differs.",
        ge=1,
        le=1_000_000_000,
    )
    rate_limit_per_hour: int = setting(
        20000,
        "Requests per API key per hour, unless its organisation's differs.",
        ge=1,
        le=1_000_000_000,
    )
    max_running_executions: int = setting(
        20,
        "SQL executions an organisation may have starting or running at once, unless its own "
        "cap differs (refreshes and connection tests do not count).",
        ge=1,
        le=1_000_000,
    )
    results_dir: Path = setting(
        Path(),
        "Directory of the local result store; default <state dir>/results.",
        unbounded=_ANY_DIRECTORY,
        shown="<state dir>/results",
    )
    results_url: str = setting(
        "",
        "s3://bucket/prefix of an S3-compatible result store; default: the local results dir.",
        **url_bounds("s3"),
    )
    s3_endpoint_url: str = setting(
        "",
        "Endpoint of an S3-compatible server (MinIO, Ceph); default: AWS.",
        **url_bounds("http", "https"),
    )
    s3_region: str = setting(
        "",
        "Region of the result bucket; default: AWS's own.",
        pattern=r"^[A-Za-z0-9_-]*$",
        max_length=64,
        allowed="a region name: letters, digits, - and _ (at most 64)",
    )
    worker_processes: int = setting(
        2,
        "Executions one organisation may run at once on a data server, each in a sandboxed "
        "DuckDB child; the server runs one more, kept for the other organisations.",
        ge=1,
        le=256,
    )
    query_timeout_seconds: float = setting(
        300.0, "Longest an execution may run before it fails with timeout.", gt=0, le=86400
    )
    connect_timeout_seconds: float = setting(
        10.0,
        "Longest a remote datasource (PostgreSQL, MySQL, object storage) may take to connect.",
        gt=0,
        le=3600,
    )
    query_memory_limit_mb: int = setting(
        1024, "DuckDB memory_limit per execution, in MiB.", ge=16, le=1_048_576
    )
    query_threads: int = setting(2, "DuckDB threads per execution.", ge=1, le=256)
    encode_threads: int = setting(
        2,
        "Threads of a data server encoding JSON, records, NDJSON and CSV results, shared by all "
        "fetches (1: each fetch encodes on its own thread only).",
        ge=1,
        le=256,
    )
    warm_scratch_mb: int = setting(
        512,
        "Scratch space a data server keeps prepared, its pages already in memory, for the first "
        "fetch of a large JSON, records, NDJSON or CSV result to write into (0: none). Filled at "
        "idle priority; the pages are clean, so the kernel may take them back at any time.",
        ge=0,
        le=1_048_576,
    )
    query_temp_space_mb: int = setting(
        4096, "Spill space an execution may use, in MiB.", ge=0, le=16_777_216
    )
    max_result_rows: int = setting(
        10_000_000, "Rows kept of a result; beyond that it is truncated.", ge=1, le=10**12
    )
    max_result_bytes: int = setting(
        2 * 1024**3, "Bytes kept of a result; beyond that it is truncated.", ge=1, le=2**40
    )
    max_upload_mb: int = setting(
        1024, "Largest file one upload may store, in MiB; beyond: 413.", ge=1, le=1_048_576
    )
    max_organization_storage_mb: int = setting(
        10240,
        "Storage quota of an organisation (its area's files and stored results), in MiB.",
        ge=1,
        le=2**30,
    )
    # At most a request body's 1 MiB (api_server.jsonapi.MAX_BODY_BYTES): no longer one arrives.
    max_sql_length: int = setting(
        100_000, "Longest sql_query accepted, in characters.", ge=1, le=1_048_576
    )
    lease_seconds: float = setting(
        30.0, "A worker's claim on an execution; renewed by heartbeats.", ge=1, le=3600
    )
    idle_transaction_seconds: float = setting(
        300.0,
        "How long a server's PostgreSQL session may sit idle inside a transaction before the "
        "database ends it, and frees its locks: a process frozen mid-transaction (a stopped or "
        "paused host) would otherwise hold them, and the lease reaper would wait for them, as "
        "long as it stays frozen. Longer than any walk of an organisation's files, which a "
        "transaction makes under its lock when an upload committed since the walk before it.",
        ge=1,
        le=86400,
    )
    max_attempts: int = setting(
        3, "Attempts before an execution whose worker vanished is failed.", ge=1, le=100
    )
    poll_interval_seconds: float = setting(
        0.2, "How often an idle worker looks for new executions.", gt=0, le=600
    )
    scheduler_interval_seconds: float = setting(
        20.0,
        "How often each data server looks for dashboard refreshes that are due (one server runs "
        "each); a refresh starts at most this late.",
        gt=0,
        le=3600,
    )

    @model_validator(mode="wrap")
    @classmethod
    def _refuse_bad_values(cls, values: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Whoever builds settings (``from_env``, a CLI override, a test) gets one
        ``ConfigurationError`` line per refused value, never pydantic's report with the input."""
        try:
            return handler(values)
        except ValidationError as exc:
            refused = [refusal(error, cls.docs()) for error in exc.errors()]
            raise ConfigurationError("; ".join(refused)) from None

    @field_validator("*", mode="before")
    @classmethod
    def _numbers_in_ascii_digits(cls, value: Any, info: ValidationInfo) -> Any:
        """A number as the operator commands and the API read one: ``int`` and ``float`` also
        take ``1_000`` (found by the outside probes: the CLI refused what the settings took)."""
        if not isinstance(value, str):
            return value
        field = cls.model_fields[info.field_name or ""]
        kinds, text = (field.annotation, *get_args(field.annotation)), value.strip()
        if int in kinds and not WHOLE_NUMBER.fullmatch(text):
            raise PydanticCustomError("int_parsing", "not a whole number")  # as int's own
        if float in kinds and not DECIMAL_NUMBER.fullmatch(text):
            infinite = text.lower().lstrip("+-") in ("inf", "infinity", "nan")
            raise PydanticCustomError(  # as float's own
                "finite_number" if infinite else "float_parsing", "not a finite number"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level_in_any_case(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _postgresql_through_psycopg(cls, url: str) -> str:
        """The PostgreSQL driver installed is psycopg (3): a URL naming no driver means it. The
        query's parameters are libpq's connection options; one libpq does not know is refused
        here, in one line, rather than at the first connection, in a traceback."""
        scheme, _, rest = url.partition("://")
        if not scheme.startswith("postgres"):
            return url
        from psycopg import ProgrammingError
        from psycopg.conninfo import make_conninfo
        from sqlalchemy.engine import make_url

        options = {
            name: str(value) for name, value in make_url(f"postgresql://{rest}").query.items()
        }
        try:
            make_conninfo("", **options)
        except ProgrammingError as error:  # names the option, never a value
            raise ValueError(str(error).strip()) from None
        return f"postgresql+psycopg://{rest}"

    @field_validator("redis_url")
    @classmethod
    def _redis_options_parse(cls, url: str) -> str:
        """The query's options are redis-py's; one it cannot read (``?db=x``) or its connection
        pool refuses (``?max_connections=-1``) is refused here, in one line naming the option,
        rather than at start-up, in a traceback. (The pool connects to nothing yet.)"""
        if url:
            from redis import ConnectionPool

            try:
                ConnectionPool.from_url(url)  # its ValueError names the option, never a value
            except TypeError:
                raise ValueError(
                    "an option of the URL's query has a value of the wrong type"
                ) from None
            # redis-py ignores a path that is no number: /5x counted in database 0, beside
            # whoever else counts there (outside probe).
            parsed = urlsplit(url)
            if parsed.scheme != "unix" and not re.fullmatch(r"/?([0-9]+)?", parsed.path):
                raise ValueError("the URL's path is no database number (/0, /1, …)")
        return url

    @field_validator("trusted_proxies")
    @classmethod
    def _proxies_parse(cls, text: str) -> str:
        """As uvicorn reads them; an entry it cannot read it keeps as a name no peer ever has,
        so a typo (``10.0.0.256``, ``10.0.0.5/24``, ``*`` beside others) trusted nobody, and
        the audit log kept the proxy's address for every client (outside probe)."""
        entries = [entry for entry in map(str.strip, text.split(",")) if entry]
        if "*" in entries and len(entries) > 1:
            raise ValueError("* (every peer) stands alone")
        for entry in (entry for entry in entries if entry != "*"):
            try:
                ipaddress.ip_network(entry) if "/" in entry else ipaddress.ip_address(entry)
            except ValueError as error:  # "'x' does not appear to be an IPv4 or IPv6 address"
                raise ValueError(str(error)) from None
        return ",".join(entries)  # uvicorn is given what was checked: "*," is "*" to it then

    @field_validator("datasource_allowed_networks")
    @classmethod
    def _networks_parse(cls, text: str) -> str:
        parse_allowed_networks(text)  # its ValueError names the entry that is wrong and why
        return text

    @model_validator(mode="after")
    def _derive_defaults(self) -> Settings:
        """Fill the settings whose default depends on others (the state dir, a host and port)."""
        state_dir = self.state_dir.absolute()
        derived = {
            "state_dir": state_dir,
            "database_url": self.database_url or f"sqlite:///{state_dir / 'dataferry.db'}",
            "data_root": _or_default(self.data_root, state_dir / "data").absolute(),
            "results_dir": _or_default(self.results_dir, state_dir / "results").absolute(),
            "public_api_url": (self.public_api_url or self.api_local_url).rstrip("/"),
            "public_data_url": (self.public_data_url or self.data_local_url).rstrip("/"),
        }
        for name, value in derived.items():
            object.__setattr__(self, name, value)  # frozen for everyone after this point
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``environ`` (default ``os.environ``); an empty variable is unset."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {
            name: environ[doc.variable]
            for name, doc in cls.docs().items()
            if environ.get(doc.variable)
        }
        return cls(**{**values, **overrides})

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with ``changes``, checked against the same bounds; what was derived from the
        others (the public URLs from a port, say) is derived again (the review: ``serve --port``
        kept the public URLs of the environment's port)."""
        given = {name: getattr(self, name) for name in self.model_fields_set}
        return type(self)(**{**given, **changes})

    @property
    def api_local_url(self) -> str:
        """The API server as this host reaches its bind address (a wildcard: loopback)."""
        return f"http://{_reachable(self.api_host)}:{self.api_port}"

    @property
    def data_local_url(self) -> str:
        """The data server as this host reaches its bind address."""
        return f"http://{_reachable(self.data_host)}:{self.data_port}"

    @cached_property
    def allowed_networks(self) -> tuple[NetworkRule, ...]:
        """DATAFERRY_DATASOURCE_ALLOWED_NETWORKS, parsed (see shared.egress)."""
        return parse_allowed_networks(self.datasource_allowed_networks)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @classmethod
    @cache
    def docs(cls) -> dict[str, SettingDoc]:
        """Every setting as deploy/env.example documents it, by field name."""
        return setting_docs(cls.model_fields)

    @classmethod
    def documented_variables(cls) -> dict[str, str]:
        return {doc.variable: doc.description for doc in cls.docs().values()}


def _or_default(path: Path, default: Path) -> Path:
    """An unset path setting (``Path()``) takes its default."""
    return path if str(path) not in ("", ".") else default


def _reachable(host: str) -> str:
    """A bind address as clients can reach it: a wildcard address means this host."""
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - mapping a wildcard, not binding to it
        return "127.0.0.1"
    return url_host(host)
