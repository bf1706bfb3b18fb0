"""The egress policy: which addresses and ports a tenant's datasource may make us connect to.

A datasource names a host; connecting to it is a request the *server* makes from inside the
region's network, so without a policy a tenant could reach the cloud metadata service, the
region's own metadata database and Redis, or anything else on the private network. One function,
``check_destination``, decides: the API calls it when a datasource is saved, the worker again
right before it connects. The host is resolved once per check (shared/host_resolution.py); every
address it resolves to must be allowed, and the caller connects to the address returned, never to
the name again, so a DNS answer that changes between the check and the connection (rebinding)
reaches nothing unchecked.

Policy: public unicast addresses are allowed; loopback, link-local, private, shared (CGNAT),
documentation, benchmarking and reserved ranges are denied unless an entry of
``DATAFERRY_DATASOURCE_ALLOWED_NETWORKS`` opens them (entries ``CIDR``, ``CIDR:port`` or
``CIDR:low-high``; IPv6 in brackets when a port follows: ``[fd00::/8]:5432``). Never allowed,
whatever the list says: unspecified, multicast and broadcast addresses, and the host and port of
the region's own metadata database and Redis (on any loopback address when they are local).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from shared.digits import natural_number
from shared.errors import DestinationNotAllowed, HostNotFound, ServiceUnavailable, Unprocessable
from shared.host_resolution import IPAddress, literal_address, resolve

if TYPE_CHECKING:
    from shared.settings import Settings

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

SETTING = "DATAFERRY_DATASOURCE_ALLOWED_NETWORKS"

_net = ipaddress.ip_network

# Ranges denied unless allowed explicitly, with the word a refusal uses for them.
_DENIED_V4: tuple[tuple[IPNetwork, str], ...] = (
    (_net("10.0.0.0/8"), "private"),
    (_net("100.64.0.0/10"), "shared (CGNAT)"),
    (_net("127.0.0.0/8"), "loopback"),
    (_net("169.254.0.0/16"), "link-local (cloud metadata)"),
    (_net("172.16.0.0/12"), "private"),
    (_net("192.0.0.0/24"), "IETF protocol"),
    (_net("192.0.2.0/24"), "documentation"),
    (_net("192.88.99.0/24"), "6to4 relay"),
    (_net("192.168.0.0/16"), "private"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("198.51.100.0/24"), "documentation"),
    (_net("203.0.113.0/24"), "documentation"),
    (_net("240.0.0.0/4"), "reserved"),
)
_DENIED_V6_IN_GLOBAL: tuple[tuple[IPNetwork, str], ...] = (
    (_net("2001::/23"), "IETF protocol (incl. Teredo)"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("3fff::/20"), "documentation"),
)
_NAMED_V6: tuple[tuple[IPNetwork, str], ...] = (
    (_net("::1/128"), "loopback"),
    (_net("fe80::/10"), "link-local"),
    (_net("fc00::/7"), "private (unique local)"),
    (_net("fec0::/10"), "site-local"),
    (_net("64:ff9b:1::/48"), "local NAT64"),
)
_GLOBAL_UNICAST_V6 = _net("2000::/3")
_NAT64 = _net("64:ff9b::/96")
_SIX_TO_FOUR = _net("2002::/16")
_IPV4_MAPPED = _net("::ffff:0:0/96")
# Never a destination: "this host/network", group and broadcast addresses.
_NEVER: tuple[tuple[IPNetwork, str], ...] = (
    (_net("0.0.0.0/8"), "unspecified"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("255.255.255.255/32"), "broadcast"),
    (_net("::/128"), "unspecified"),
    (_net("ff00::/8"), "multicast"),
)
_DEFAULT_PORTS = {"postgresql": 5432, "redis": 6379}  # the metadata database's, and Redis
_LARGEST_PORT = 65535


@dataclass(frozen=True)
class NetworkRule:
    """One entry of the allow-list: a network and, optionally, an inclusive port range."""

    network: IPNetwork
    ports: tuple[int, int] | None = None

    def permits(self, address: IPAddress, port: int) -> bool:
        if address.version != self.network.version or address not in self.network:
            return False
        return self.ports is None or self.ports[0] <= port <= self.ports[1]

    def __str__(self) -> str:
        if self.ports is None:
            return str(self.network)
        low, high = self.ports
        net = f"[{self.network}]" if self.network.version == 6 else str(self.network)
        return f"{net}:{low}" if low == high else f"{net}:{low}-{high}"


def parse_allowed_networks(text: str) -> tuple[NetworkRule, ...]:
    """Read the allow-list setting; ``ValueError`` names the entry that is wrong and why."""
    return tuple(_parse_rule(entry.strip()) for entry in text.split(",") if entry.strip())


def _parse_rule(entry: str) -> NetworkRule:
    network_text, ports_text = _split_rule(entry)
    try:
        network = ipaddress.ip_network(network_text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{entry!r}: not an IP address or network in CIDR form ({exc})") from exc
    if _within(network, _IPV4_MAPPED):
        raise ValueError(f"{entry!r}: write IPv4 networks in IPv4 form (e.g. 10.0.0.0/8)")
    for never, label in _NEVER:
        if _within(network, never):
            raise ValueError(f"{entry!r}: {label} addresses are never a datasource destination")
    return NetworkRule(network, None if ports_text is None else _parse_ports(entry, ports_text))


def _split_rule(entry: str) -> tuple[str, str | None]:
    """``(network, ports)`` of ``10.0.0.0/8``, ``10.0.0.0/8:5432``, ``[fd00::/8]:5432``,
    ``[fd00::]/8:5432`` or a bare IPv6 network ``fd00::/8``."""
    if entry.startswith("["):
        address, bracket, rest = entry[1:].partition("]")
        prefix, colon, ports = rest.partition(":")
        if not bracket or (prefix and not prefix.startswith("/")) or (colon and not ports):
            raise ValueError(
                f"{entry!r}: write an IPv6 network with a port in brackets: [fd00::/8]:5432"
            )
        return address + prefix, ports if colon else None
    if entry.count(":") == 1:
        network, _, ports = entry.partition(":")
        return network, ports
    return entry, None


def _within(network: IPNetwork, outer: IPNetwork) -> bool:
    return network.version == outer.version and network.subnet_of(outer)  # type: ignore[arg-type]


def _parse_ports(entry: str, text: str) -> tuple[int, int]:
    low_text, dash, high_text = text.partition("-")
    try:
        low = int(low_text)
        high = int(high_text) if dash else low
    except ValueError:
        raise ValueError(
            f"{entry!r}: the port must be a number or a range like 5432-5439"
        ) from None
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{entry!r}: ports must lie in 1-65535, the lower one first")
    return (low, high)


def check_destination(
    host: str, port: int, settings: Settings, *, pointer: str | None = None
) -> str:
    """The address to connect to for ``host:port``, or a 422 saying why the policy refuses it.

    Callers connect to the returned address (text; an IPv6 one without brackets, see
    ``host_resolution.url_host``), never to ``host`` again: that is what closes the DNS-rebinding window.
    """
    if not 1 <= port <= 65535:
        raise Unprocessable(f"Port {port} is not in 1-65535.", pointer=pointer, code="invalid_port")
    addresses = resolve(host, port, pointer=pointer)
    literal = literal_address(host) is not None
    for address in addresses:
        reason = _refusal(address, port, settings)
        if reason:
            shown = f"{address}" if literal else f"{host} resolves to an address that"
            raise DestinationNotAllowed(
                f"{shown} {reason}; datasources may not connect there.", pointer=pointer
            )
    return str(addresses[0])


def _refusal(address: IPAddress, port: int, settings: Settings) -> str | None:
    """Why ``address:port`` may not be reached, or None when it may."""
    never = never_label(address)
    if never is not None:
        return f"is {_a(never)} address"
    if _is_own_service(address, port, settings):
        return f"is, with port {port}, one of this region's own services"
    if any(rule.permits(address, port) for rule in settings.allowed_networks):
        return None
    denied_class = default_denial(address)
    if denied_class is None:
        return None
    return f"is {_a(denied_class)} address, which the operator has not allowed ({SETTING})"


def _a(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def never_label(address: IPAddress) -> str | None:
    """The class of an address that is never a destination, also where an IPv6 address leads
    to one (IPv4-mapped, NAT64, 6to4): "unspecified", "multicast", "broadcast"; else None."""
    label = _first_label(address, _NEVER)
    if label is not None or isinstance(address, ipaddress.IPv4Address):
        return label
    inner = address.ipv4_mapped or _embedded_ipv4(address)
    if inner is None:
        return None
    label = _first_label(inner, _NEVER)
    return None if label is None else f"{label} (embedded in IPv6)"


def default_denial(address: IPAddress) -> str | None:
    """The class of a non-public address (e.g. "loopback"), or None for a public one."""
    if isinstance(address, ipaddress.IPv4Address):
        return _first_label(address, _DENIED_V4)
    if address.ipv4_mapped is not None:
        return default_denial(address.ipv4_mapped)
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        inner = default_denial(embedded)
        return f"{inner} (embedded in IPv6)" if inner else None
    if address in _GLOBAL_UNICAST_V6:
        return _first_label(address, _DENIED_V6_IN_GLOBAL)
    return _first_label(address, _NAMED_V6) or "reserved"


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address a NAT64 (64:ff9b::/96) or 6to4 (2002::/16) address leads to."""
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def _first_label(address: IPAddress, table: Iterable[tuple[IPNetwork, str]]) -> str | None:
    return next((label for network, label in table if address in network), None)


def _is_own_service(address: IPAddress, port: int, settings: Settings) -> bool:
    """Whether ``address:port`` is the metadata DB or Redis of this region. A local service
    answers on every loopback address, so any loopback address with its port counts."""
    for host, service_port in own_service_endpoints(settings):
        if service_port != port:
            continue
        for service_address in _service_addresses(host, port):
            if address == service_address or (_is_local(address) and _is_local(service_address)):
                return True
    return False


def _is_local(address: IPAddress) -> bool:
    return address.is_loopback or address.is_unspecified


def _service_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses of one of our own services; failing to resolve fails closed: without them,
    nothing tells a tenant's destination apart from our own database."""
    try:
        return resolve(host, port)
    except (HostNotFound, Unprocessable) as exc:
        raise ServiceUnavailable(
            "The egress policy cannot resolve this region's own services right now.",
            code="egress_policy_unavailable",
        ) from exc


def own_service_endpoints(settings: Settings) -> list[tuple[str, int]]:
    """``(host, port)`` of the metadata database, the Redis and the S3-compatible result store
    this region uses (TCP only): the store holds every organisation's results."""
    return [
        *_database_endpoints(settings.database_url),
        *_redis_endpoints(settings.redis_url),
        *_result_store_endpoints(settings),
    ]


def _result_store_endpoints(settings: Settings) -> Iterator[tuple[str, int]]:
    """The endpoint of an s3:// result store on a server of the operator's (MinIO, Ceph);
    AWS's own endpoints are public and answer every tenant's buckets."""
    if not settings.results_url or not settings.s3_endpoint_url:
        return
    parts = urlsplit(settings.s3_endpoint_url)
    if parts.hostname:
        yield parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


# Where a service reached through a unix socket also listens: on this machine, and any loopback
# address with its port counts as it (``_is_own_service``).
_THIS_MACHINE = "127.0.0.1"


def _database_endpoints(url_text: str) -> Iterator[tuple[str, int]]:
    """Every TCP endpoint the URL may lead to: its host, libpq's ``host=``/``hostaddr=`` lists
    and ``port=``; a unix socket (no host, ``host=/dir``) stands for this machine on the port.
    A ``service=`` name, whose file the policy does not read, fails closed."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(url_text)
    except ArgumentError:
        return
    backend = url.get_backend_name()
    default_port = _DEFAULT_PORTS.get(backend)
    if default_port is None:
        return  # SQLite: a file, no network
    if url.query.get("service"):
        raise ServiceUnavailable(
            "The egress policy cannot read a libpq service name (service=) in "
            "DATAFERRY_DATABASE_URL; name the metadata database's host and port instead.",
            code="egress_policy_unavailable",
        )
    listed_ports = [_port(part) for part in _query_list(url.query, "port")]
    port = url.port or next((p for p in listed_ports if p is not None), default_port)
    hosts = ([url.host] if url.host else []) + _query_list(url.query, "host")
    hosts += _query_list(url.query, "hostaddr")
    tcp_hosts = [host for host in hosts if host and not host.startswith("/")]
    for host in tcp_hosts:
        yield _split_host_port(host, port)
    if len(tcp_hosts) < len(hosts) or not tcp_hosts:
        yield _THIS_MACHINE, port


def _query_list(query: Mapping[str, str | tuple[str, ...]], name: str) -> list[str]:
    """A URL query parameter's comma-separated values, however often it is given."""
    value = query.get(name, ())
    entries = (value,) if isinstance(value, str) else value
    return [part.strip() for entry in entries for part in entry.split(",")]


def _redis_endpoints(url_text: str) -> Iterator[tuple[str, int]]:
    if not url_text:
        return
    parts = urlsplit(url_text)
    if parts.scheme in ("redis", "rediss") and parts.hostname:
        yield parts.hostname, parts.port or _DEFAULT_PORTS["redis"]
    elif parts.scheme == "unix":  # a socket: the server is on this machine
        yield _THIS_MACHINE, _DEFAULT_PORTS["redis"]


def _split_host_port(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = _port(rest[1:]) if rest.startswith(":") else None
        return host, default_port if port is None else port
    host, colon, port_text = text.rpartition(":")
    port = _port(port_text) if colon and ":" not in host else None
    return (text, default_port) if port is None else (host, port)


def _port(text: str) -> int | None:
    number = natural_number(text, _LARGEST_PORT)
    return number if number is not None and number <= _LARGEST_PORT else None
