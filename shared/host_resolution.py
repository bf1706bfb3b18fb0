"""A host as a datasource names it → the IP addresses it stands for, checked and looked up once.

IP literals must be canonical (``127.1`` or ``0x7f.1`` are refused, not guessed at); names must be
valid DNS names (no port, scheme, path or zone). A lookup runs in a daemon thread, is given up
after ``RESOLVE_TIMEOUT_SECONDS`` and at most 16 are in flight, so a hung DNS server holds no
request for longer nor exhausts threads. What may be reached is decided by shared/egress.py.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import threading

from shared.errors import HostNotFound, Unprocessable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

RESOLVE_TIMEOUT_SECONDS = 5.0
_RESOLVER_SLOTS = threading.BoundedSemaphore(16)  # lookups in flight; a hung DNS holds no more

# A label of a host name (punycode for international names); a last label that is a number
# makes the name an IPv4 literal in some non-canonical form (127.1, 0x7f.1, 2130706433).
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")
_NUMBER = re.compile(r"(0[xX][0-9A-Fa-f]*|[0-9]+)\Z")


def resolve(host: str, port: int, *, pointer: str | None = None) -> list[IPAddress]:
    """Every address ``host`` stands for, IPv4-mapped IPv6 ones as IPv4, in the resolver's order.

    IP literals must be canonical; names are looked up once, within RESOLVE_TIMEOUT_SECONDS."""
    literal = literal_address(host)
    if literal is not None:
        return [literal]
    name = _checked_name(host, pointer)
    try:
        infos = _getaddrinfo_within(name, port, RESOLVE_TIMEOUT_SECONDS)
    except TimeoutError:
        raise HostNotFound(
            f"Host {host!r} did not resolve within {RESOLVE_TIMEOUT_SECONDS:g} s.", pointer=pointer
        ) from None
    except (OSError, UnicodeError):
        raise HostNotFound(
            f"Host {host!r} does not resolve to any address.", pointer=pointer
        ) from None
    addresses = list(dict.fromkeys(_unmapped(_sockaddr_ip(info[4][0])) for info in infos))
    if not addresses:
        raise HostNotFound(f"Host {host!r} does not resolve to any address.", pointer=pointer)
    return addresses


def literal_address(host: str) -> IPAddress | None:
    """``host`` as a canonical IP literal (IPv6 optionally in brackets), else None."""
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        address = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        return None
    if bracketed and address.version == 4:
        return None  # brackets hold IPv6 only; [192.0.2.10] is no host (_checked_name says so)
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return None  # a zone (fe80::1%eth0) is refused by _checked_name
    return _unmapped(address)


def _checked_name(host: str, pointer: str | None) -> str:
    """A syntactically valid DNS name, or a 422: no ports, paths, spaces or odd IP literals."""
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in labels):
        raise Unprocessable(
            f"{host!r} is not a host name or IP address (letters, digits, '-', '_' and '.'; "
            "punycode for international names; no port, scheme or path).",
            pointer=pointer,
            code="invalid_host",
        )
    if _NUMBER.match(labels[-1]):
        raise Unprocessable(
            f"{host!r} is not a canonical IP address: write IPv4 addresses as four decimal "
            "numbers, such as 192.0.2.10.",
            pointer=pointer,
            code="invalid_host",
        )
    return name


def _getaddrinfo_within(
    name: str, port: int, timeout: float
) -> list[tuple[object, object, object, object, tuple[object, ...]]]:
    """``getaddrinfo`` in a daemon thread, given up after ``timeout`` (the C call cannot be
    cancelled; it finishes on its own, and at most 16 such lookups are ever in flight)."""
    if not _RESOLVER_SLOTS.acquire(timeout=timeout):
        raise TimeoutError
    outcome: dict[str, object] = {}
    done = threading.Event()

    def lookup() -> None:
        try:
            outcome["infos"] = socket.getaddrinfo(
                name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except (OSError, UnicodeError) as exc:
            outcome["error"] = exc
        finally:
            _RESOLVER_SLOTS.release()
            done.set()

    threading.Thread(target=lookup, name="egress-resolve", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError
    error = outcome.get("error")
    if isinstance(error, (OSError, UnicodeError)):
        raise error
    return outcome["infos"]  # type: ignore[return-value]


def _sockaddr_ip(text: object) -> IPAddress:
    return ipaddress.ip_address(str(text).partition("%")[0])


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def url_host(host: str) -> str:
    """A host or address as the host part of a URL or ``host:port``: IPv6 in brackets."""
    return f"[{host}]" if ":" in host else host
