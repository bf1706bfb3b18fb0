"""The sandbox side of ``s3`` datasources: objects under a bucket prefix read through httpfs.

Set up inside the sandbox child before the instance is locked (``sandbox.Sandbox``), in this order:
httpfs loaded from its Python package under its own name (``httpfs.duckdb_extension``; autoload
and autoinstall stay off), every HTTP request routed through a ``PinnedProxy`` that connects
only to the address the worker checked against the egress policy, the credentials given as a
TEMPORARY secret scoped to the prefix (``duckdb_secrets()`` shows it redacted, and the sandbox
refuses that function anyway), the prefix listed, and then ``s3_url_compatibility_mode`` switched
on so that no URL is read as a glob or with query parameters (``?s3_endpoint=…`` would otherwise
redirect a read). The engine then allows the prefix — and nothing else remote — through
``allowed_directories`` and locks the configuration.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import duckdb

from data_server.sql_check import QueryFailed
from shared.object_storage import Endpoint, ObjectLocation

EXTENSION_PACKAGE = "duckdb_extension_httpfs"
EXTENSION_FILE = "httpfs.duckdb_extension"
MAX_OBJECT_VIEWS = 1000  # objects of one prefix that become views; the rest are left out
# Test Connection shows only the message: it starts with what the code means.
_SUMMARIES = {
    "authentication_failed": "The object store refused the access key id or secret access key "
    "(or the key may not list or read this prefix)",
    "database_not_found": "The bucket does not exist",
    "tls_refused": "The TLS handshake failed or the endpoint's certificate did not verify",
    "destination_not_allowed": "The request named a host the egress policy did not check",
}
# Where a bucket listing's root element must start: after the XML declaration, at the top.
_LISTING_PEEK = 1024
_HEAD_LIMIT = 64 * 1024  # a proxy request head larger than this is refused
_RELAY_CHUNK = 256 * 1024


@dataclass(frozen=True)
class ObjectStorageSpec:
    """Everything the child needs to reach one prefix; built by the worker, never logged."""

    url: str  # s3://bucket/prefix/ (shared.object_storage.ObjectLocation.url)
    endpoint: str
    url_style: str
    region: str
    use_ssl: bool
    verify_ssl: bool
    connect_host: str
    connect_port: int
    address: str  # the egress-checked address the proxy connects to
    connect_timeout_seconds: float
    key_id: str | None = None
    secret: str | None = None

    def __repr__(self) -> str:  # a dataclass would print the secret
        return f"ObjectStorageSpec(url={self.url!r}, endpoint={self.endpoint!r})"

    @classmethod
    def of(
        cls,
        location: ObjectLocation,
        endpoint: Endpoint,
        *,
        region: str,
        verify_ssl: bool,
        address: str,
        connect_timeout_seconds: float,
        key_id: str | None = None,
        secret: str | None = None,
    ) -> ObjectStorageSpec:
        return cls(
            url=location.url,
            endpoint=endpoint.endpoint,
            url_style=endpoint.url_style,
            region=region,
            use_ssl=endpoint.use_ssl,
            verify_ssl=verify_ssl,
            connect_host=endpoint.connect_host,
            connect_port=endpoint.connect_port,
            address=address,
            connect_timeout_seconds=connect_timeout_seconds,
            key_id=key_id,
            secret=secret,
        )


def extension_path() -> Path:
    """The packaged httpfs build for this DuckDB version (``duckdb-extension-httpfs``)."""
    try:
        package = importlib.resources.files(EXTENSION_PACKAGE)
    except ModuleNotFoundError:
        raise QueryFailed(
            "datasource_unavailable", "The httpfs extension package is not installed."
        ) from None
    path = Path(str(package)) / "extensions" / f"v{duckdb.__version__}" / EXTENSION_FILE
    if not path.is_file():
        raise QueryFailed(
            "datasource_unavailable",
            f"The installed httpfs extension is not built for DuckDB {duckdb.__version__}.",
        )
    return path


def forget_server_environment() -> None:
    """Drop what httpfs would read from the environment: the server's own AWS_* credentials
    (httpfs makes them the defaults of its s3_* settings) and NO_PROXY (curl would go around
    the pinned proxy for the hosts it lists)."""
    for name in list(os.environ):
        if name.upper().startswith("AWS_") or name.upper() == "NO_PROXY":
            os.environ.pop(name, None)


class PinnedProxy:
    """An HTTP proxy on 127.0.0.1 that httpfs must use and that connects to one address only.

    httpfs resolves no host name itself once a proxy is set: HTTPS goes through CONNECT (TLS,
    and its certificate check against the host name, stay end to end) and plain HTTP in absolute
    form. Whatever a request names, the proxy opens a connection to the checked address and port,
    so a DNS answer that changed since the check, or a URL that names another host, reaches
    nothing else. It records why a connection failed, for a specific error code.
    """

    def __init__(self, authority: tuple[str, int], address: str, timeout: float) -> None:
        self._authority = (authority[0].lower().rstrip("."), authority[1])
        self._address = address
        self._timeout = timeout
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self.failure: str | None = None  # "refused", "timeout" or "other_host"
        threading.Thread(target=self._accept, name="s3-proxy", daemon=True).start()

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self._listener.getsockname()[1]}"

    def close(self) -> None:
        with self._lock:
            sockets, self._sockets = list(self._sockets), set()
        for sock in [self._listener, *sockets]:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _serve(self, client: socket.socket) -> None:
        try:
            head, rest = _read_head(client)
            method, target = _request_line(head)
            tunnel = method == "CONNECT"
            if _authority_of(target, tunnel) != self._authority:
                self.failure = "other_host"
                client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            upstream = self._connect()
            if upstream is None:
                client.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
                return
            if tunnel:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                upstream.sendall(rest)
            else:
                upstream.sendall(head + rest)
            _relay(client, upstream)
        except (OSError, ValueError):
            pass
        finally:
            _close(client)

    def _connect(self) -> socket.socket | None:
        """A connection to the checked address; after one failure every retry fails at once,
        so httpfs's retries never stretch a dead endpoint beyond the connect timeout."""
        if self.failure in ("timeout", "refused"):
            return None
        try:
            upstream = socket.create_connection(
                (self._address, self._authority[1]), timeout=self._timeout
            )
        except TimeoutError:
            self.failure = "timeout"
            return None
        except OSError:
            self.failure = "refused"
            return None
        upstream.settimeout(None)
        self._track(upstream)
        return upstream


def _read_head(client: socket.socket) -> tuple[bytes, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = client.recv(4096)
        if not chunk or len(data) > _HEAD_LIMIT:
            raise ValueError("no request head")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head + b"\r\n\r\n", rest


def _request_line(head: bytes) -> tuple[str, str]:
    method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
    return method.upper(), target


def _authority_of(target: str, tunnel: bool) -> tuple[str, int]:
    """``(host, port)`` of a CONNECT target (``host:port``) or of an absolute-form URL."""
    parts = urlsplit(f"//{target}" if tunnel else target)
    if not tunnel and parts.scheme != "http":
        raise ValueError("not an absolute http URL")
    port = parts.port or 80
    return ((parts.hostname or "").rstrip("."), port)


def _relay(client: socket.socket, upstream: socket.socket) -> None:
    back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
    back.start()
    _pump(client, upstream)
    back.join()
    _close(upstream)


def _pump(source: socket.socket, sink: socket.socket) -> None:
    buffer = bytearray(_RELAY_CHUNK)
    view = memoryview(buffer)
    try:
        while count := source.recv_into(buffer):
            sink.sendall(view[:count])
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


class ObjectStorage:
    """One prefix opened on one DuckDB connection: the proxy, the secret, the object listing."""

    def __init__(self, connection: duckdb.DuckDBPyConnection, spec: ObjectStorageSpec) -> None:
        self.spec = spec
        forget_server_environment()
        connection.execute(f"LOAD '{_escape(str(extension_path()))}'")
        self.proxy = PinnedProxy(
            (spec.connect_host, spec.connect_port), spec.address, spec.connect_timeout_seconds
        )
        try:
            self._configure(connection)
        except BaseException:
            self.proxy.close()
            raise

    def _configure(self, connection: duckdb.DuckDBPyConnection) -> None:
        spec = self.spec
        timeout = max(1, round(self.spec.connect_timeout_seconds))
        settings = {
            "http_proxy": self.proxy.url,
            "http_retries": 1,
            "http_timeout": timeout,
            "enable_server_cert_verification": spec.verify_ssl,
            "enable_curl_server_cert_verification": spec.verify_ssl,
            "allow_persistent_secrets": False,
        }
        for name, value in settings.items():
            connection.execute(f"SET {name} = $1", [value])
        self._create_secret(connection, "dataferry_s3", spec.url)

    def _create_secret(self, connection: duckdb.DuckDBPyConnection, name: str, scope: str) -> None:
        """The datasource's endpoint and credentials for URLs under ``scope``. Bound values,
        never spliced text: the secret reaches DuckDB and nothing else."""
        spec = self.spec
        connection.execute(
            f"CREATE TEMPORARY SECRET {name} (TYPE s3, SCOPE $1, ENDPOINT $2, URL_STYLE $3, "
            "REGION $4, USE_SSL $5, KEY_ID $6, SECRET $7)",
            [
                scope,
                spec.endpoint,
                spec.url_style,
                spec.region,
                spec.use_ssl,
                spec.key_id or "",
                spec.secret or "",
            ],
        )

    def list_objects(
        self, connection: duckdb.DuckDBPyConnection, *, testing_connection: bool = False
    ) -> list[str]:
        """The object names directly under the prefix, then globs and URL parameters off.
        ``testing_connection``: an empty listing must also come from an object store."""
        rows = connection.execute(
            "SELECT file FROM glob($1) ORDER BY file LIMIT $2",
            [self.spec.url + "*", MAX_OBJECT_VIEWS],
        ).fetchall()
        connection.execute("SET s3_url_compatibility_mode = true")
        if testing_connection and not rows:
            self._check_speaks_s3(connection)
        names = [str(row[0]).removeprefix(self.spec.url) for row in rows]
        return [name for name in names if name and "/" not in name]

    def _check_speaks_s3(self, connection: duckdb.DuckDBPyConnection) -> None:
        """An endpoint that answers every path with 200 (a web server, a captive portal) lists
        nothing under the prefix, as an empty prefix does. The bucket's own listing tells them
        apart: an object store answers it with a ListBucketResult document, or refuses it (403)
        to a key that may list only the prefix."""
        bucket_url = "s3://" + self.spec.url.removeprefix("s3://").split("/", 1)[0] + "/"
        self._create_secret(connection, "dataferry_s3_bucket", bucket_url)
        try:
            content = connection.execute("SELECT content FROM read_text($1)", [bucket_url])
            listing = content.fetchone()
        except duckdb.Error as error:
            if "(HTTP 403" in str(error):
                return
            if "(HTTP " not in str(error):  # no answer (a timeout, say): classified as usual
                raise
            listing = None  # a 404 there is no missing bucket: the prefix was just listed
        finally:
            connection.execute("DROP TEMPORARY SECRET dataferry_s3_bucket")
        if listing is None or "<ListBucketResult" not in str(listing[0])[:_LISTING_PEEK]:
            raise QueryFailed(
                "datasource_unavailable",
                f"The endpoint {self.spec.connect_host}:{self.spec.connect_port} answered, but "
                "not as an S3-compatible object store (no bucket listing): check the host, the "
                "port and the bucket.",
            )

    def failure(self, error: BaseException, message: str) -> QueryFailed:
        """The most specific code for an error of this datasource, with a cleaned message."""
        code = self.classify(error)
        spec = self.spec
        if self.proxy.failure in ("timeout", "refused"):
            reason = (
                f"timed out after {spec.connect_timeout_seconds:g} s"
                if self.proxy.failure == "timeout"
                else "connection refused"
            )
            message = f"Cannot connect to {spec.connect_host}:{spec.connect_port} ({reason})."
        elif code in _SUMMARIES:
            message = f"{_SUMMARIES[code]} ({message})"
        return QueryFailed(code, message)

    def classify(self, error: BaseException) -> str:
        text = str(error)
        if self.proxy.failure == "other_host":  # httpfs asked for a host the policy never saw
            return "destination_not_allowed"
        if self.proxy.failure == "timeout":
            return "connection_timed_out"
        if self.proxy.failure == "refused":
            return "host_unreachable"
        if "(HTTP 401" in text or "(HTTP 403" in text:
            return "authentication_failed"
        if "NoSuchBucket" in text:
            return "database_not_found"
        if any(word in text for word in ("SSL", "TLS", "certificate")):
            return "tls_refused"
        if "Timeout was reached" in text:
            return "connection_timed_out"
        return "datasource_unavailable"

    def secrets(self) -> list[str]:
        """What cleaned messages must never show."""
        return [value for value in (self.spec.key_id, self.spec.secret) if value]

    def close(self) -> None:
        self.proxy.close()


def _escape(text: str) -> str:
    return text.replace("'", "''")
