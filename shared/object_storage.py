"""Object-storage (``s3``) datasources: which bucket prefix they read and how it is reached.

Shared by the API server (what a client may send), the worker (which endpoint host to check
against the egress policy) and the sandbox child (what httpfs is told); nothing here does I/O.
The location is kept to a plain bucket and prefix because the sandbox hands it to DuckDB: a
glob character, ``?`` (which httpfs would read as a query parameter such as ``s3_endpoint``),
``%`` or a ``.``/``..`` segment could otherwise widen what the datasource reaches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared.display_names import REFUSED_DETAIL, holds_refused_character
from shared.errors import Unprocessable
from shared.host_resolution import url_host

DATABASE_TYPE = "s3"
DEFAULT_REGION = "us-east-1"
AWS_ENDPOINT = "s3.{region}.amazonaws.com"  # the regional endpoint, when no host is given
HTTPS_PORT, HTTP_PORT = 443, 80

# S3's bucket naming rules (3-63 characters; lower-case letters, digits, '.' and '-').
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")
_IPV4_LIKE = re.compile(r"\d+\.\d+\.\d+\.\d+\Z")
# Characters a prefix may not hold: glob syntax, URL syntax httpfs interprets, escapes.
_UNSAFE_PREFIX = re.compile(r"[*?\[\]{}#%\\\x00-\x1f\x7f]")
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")


@dataclass(frozen=True)
class ObjectLocation:
    """A bucket and a key prefix that is empty or ends with ``/``."""

    bucket: str
    prefix: str

    @property
    def url(self) -> str:
        """The canonical form stored in ``database`` and given to DuckDB."""
        return f"s3://{self.bucket}/{self.prefix}"


def parse_location(value: str) -> ObjectLocation:
    """``s3://bucket/prefix/``, ``s3://bucket``, ``bucket/prefix`` or ``bucket``; ValueError says
    what is wrong."""
    text = value.removeprefix("s3://")
    if "://" in text:
        raise ValueError("must be s3://bucket/prefix/ or bucket/prefix (no other scheme)")
    bucket, _, prefix = text.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket or _IPV4_LIKE.match(bucket):
        raise ValueError(
            f"{bucket!r} is not a bucket name (3-63 lower-case letters, digits, '.' and '-')"
        )
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if _UNSAFE_PREFIX.search(prefix):
        raise ValueError("the prefix may not contain * ? [ ] { } # % \\ or control characters")
    if any(segment in ("", ".", "..") for segment in prefix.split("/")[:-1]):
        raise ValueError("the prefix may not contain empty, '.' or '..' segments")
    return ObjectLocation(bucket, prefix)


def check_region(value: str) -> str:
    if not _REGION.match(value):
        raise ValueError("must be a region name such as eu-west-1 (letters, digits, '-', '_')")
    return value


def check_attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """An s3 datasource's attributes after a create or update: ``database`` in its canonical
    form, or a 422 pointing at what is wrong (``database_type`` checks presence and which
    attributes the type takes; this, what they must look like together)."""
    try:
        location = parse_location(str(values.get("database") or ""))
        if holds_refused_character(location.prefix):  # it is shown in lists, as names are
            raise ValueError(f"the prefix {REFUSED_DETAIL}")
    except ValueError as exc:
        raise Unprocessable(
            f"database: {exc}.", pointer="/data/attributes/database", code="invalid_location"
        ) from None
    if values.get("port") is not None and not values.get("host"):
        raise Unprocessable(
            "port needs a host: without one, the datasource reaches AWS on its standard port.",
            pointer="/data/attributes/port",
        )
    if bool(values.get("username")) != bool(values.get("password")):
        missing = "password" if values.get("username") else "username"
        raise Unprocessable(
            "username (access key id) and password (secret access key) go together: send both, "
            "or neither for a public bucket.",
            pointer=f"/data/attributes/{missing}",
            code="missing_attribute",
        )
    return {"database": location.url}


@dataclass(frozen=True)
class Endpoint:
    """Where httpfs sends a datasource's requests, and the one host:port it connects to."""

    endpoint: str  # the secret's ENDPOINT: host[:port], no scheme
    url_style: str  # "path" or "vhost"
    use_ssl: bool
    connect_host: str  # the name the egress policy checks (the bucket's own, in vhost style)
    connect_port: int


def default_port(use_ssl: bool) -> int:
    return HTTPS_PORT if use_ssl else HTTP_PORT


def endpoint_for(
    location: ObjectLocation, host: str | None, port: int | None, region: str, use_ssl: bool
) -> Endpoint:
    """No host: AWS's regional endpoint, virtual-hosted unless the bucket name has a dot (its
    certificate would not match). A host: an S3-compatible server, addressed path-style."""
    standard = default_port(use_ssl)
    if not host:
        aws = AWS_ENDPOINT.format(region=region)
        if "." in location.bucket:
            return Endpoint(aws, "path", use_ssl, aws, standard)
        return Endpoint(aws, "vhost", use_ssl, f"{location.bucket}.{aws}", standard)
    shown = url_host(host)
    return Endpoint(f"{shown}:{port}" if port else shown, "path", use_ssl, host, port or standard)
