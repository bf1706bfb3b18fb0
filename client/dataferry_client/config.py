"""Where the client finds its API URL, key and data URL: arguments, environment, profile file.

Precedence, per value: an explicit argument, then ``DATAFERRY_API_URL`` / ``DATAFERRY_API_KEY`` /
``DATAFERRY_DATA_URL``, then the profile (``--profile``, ``DATAFERRY_PROFILE`` or ``default``) in
``$XDG_CONFIG_HOME/dataferry/profiles.toml`` (``~/.config/…`` when unset). The file holds a key,
so it is written with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dataferry_client.errors import ConfigurationError

ENV_API_URL = "DATAFERRY_API_URL"
ENV_API_KEY = "DATAFERRY_API_KEY"
ENV_DATA_URL = "DATAFERRY_DATA_URL"
ENV_PROFILE = "DATAFERRY_PROFILE"
DEFAULT_PROFILE = "default"
_FIELDS = ("api_url", "api_key", "data_url")


@dataclass(frozen=True)
class Config:
    api_url: str
    api_key: str = ""
    data_url: str | None = None

    def __repr__(self) -> str:  # never print the key
        return f"Config(api_url={self.api_url!r}, data_url={self.data_url!r})"


def profiles_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dataferry" / "profiles.toml"


def read_profiles(path: Path) -> dict[str, dict[str, str]]:
    try:
        with path.open("rb") as file:
            document = tomllib.load(file)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read the profile file {path}: {exc}") from exc
    return {
        name: {k: str(v) for k, v in table.items() if k in _FIELDS}
        for name, table in document.items()
        if isinstance(table, dict)
    }


def write_profile(path: Path, name: str, values: Mapping[str, str]) -> None:
    """Add or replace one profile; the file is (re)created with mode 0600. Text that is no
    UTF-8 (an argument's undecodable bytes) is refused before anything is written."""
    profiles = read_profiles(path)
    profiles[name] = {k: v for k, v in values.items() if k in _FIELDS and v}
    lines = []
    for profile, table in profiles.items():
        lines.append(f"[{_toml_string(profile, 'the profile name')}]")
        lines.extend(
            f"{key} = {_toml_string(value, key.replace('_', ' '))}" for key, value in table.items()
        )
        lines.append("")
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def _toml_string(text: str, what: str) -> str:
    """A TOML basic string: JSON's, but holding characters beyond ASCII as they are (JSON
    escapes one beyond U+FFFF as two surrogates, which TOML refuses, and the whole file with
    them) and escaping DEL, which TOML wants escaped and JSON does not."""
    try:
        text.encode()
    except UnicodeEncodeError:
        raise ConfigurationError(f"{what} is not UTF-8 text") from None
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def resolve_config(
    api_url: str | None = None,
    api_key: str | None = None,
    data_url: str | None = None,
    profile: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    environ = os.environ if environ is None else environ
    name = profile or environ.get(ENV_PROFILE) or DEFAULT_PROFILE
    profiles = read_profiles(profiles_path(environ))
    if profile and profile not in profiles:
        raise ConfigurationError(f"no profile {profile!r} in {profiles_path(environ)}")
    stored = profiles.get(name, {})
    url = api_url or environ.get(ENV_API_URL) or stored.get("api_url")
    key = api_key or environ.get(ENV_API_KEY) or stored.get("api_key")
    data = data_url or environ.get(ENV_DATA_URL) or stored.get("data_url")
    if not url:
        raise ConfigurationError(
            f"no API URL: pass api_url (--api-url), set {ENV_API_URL} or run 'dataferry configure'"
        )
    key = (key or "").strip()  # a pasted key's trailing newline or space
    if not key:
        raise ConfigurationError(
            f"no API key: pass api_key, set {ENV_API_KEY} or run 'dataferry configure'"
        )
    if not _HEADER_SAFE.fullmatch(key):
        # Said without the key: an error that quoted it would end up in terminals and logs.
        raise ConfigurationError(
            "the API key holds a character no key has (a control character or non-ASCII); "
            "copy it again"
        )
    return Config(
        server_url(url, "API server URL"),
        key,
        server_url(data, "data server URL") if data else None,
    )


def server_url(value: str, what: str) -> str:
    """A server's base URL as the client uses it: ``http`` or ``https`` with a host, nothing a
    request line cannot carry; the trailing slash dropped. Checked where it is given (a profile
    written with ``ftp://x`` or ``not a url`` failed only at the first request, as a transport
    error)."""
    url = value.strip().rstrip("/")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:  # an unclosed IPv6 bracket, say
        host = None
    if not host or parts.scheme not in ("http", "https"):
        raise ConfigurationError(f"the {what} is not an http(s) URL with a host: {url!r}")
    if not _URL_SAFE.fullmatch(url):
        raise ConfigurationError(f"the {what} holds a blank or control character: {url!r}")
    return url


# What an API key may hold: printable ASCII without blanks (a key is ``dfk_``, base62 and ``_``).
_HEADER_SAFE = re.compile(r"[\x21-\x7e]+")
# What a base URL may hold: no blank or control character (an IRI's non-ASCII host or path is
# fine: httpx encodes it).
_URL_SAFE = re.compile(r"[^\x00-\x20\x7f-\x9f]+")
