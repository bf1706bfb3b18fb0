"""Fixtures of the egress policy tests; their helpers are in tests/support/egress.py."""

from __future__ import annotations

import socket

import pytest


@pytest.fixture
def resolver(monkeypatch):
    """Replace DNS: ``resolver[name] = [addresses]``; ``resolver.calls`` counts lookups."""

    class FakeResolver(dict):
        calls: list[str]

        def lookup(self, name, port, *args, **kwargs):
            self.calls.append(name)
            if name not in self:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [
                (
                    socket.AF_INET6 if ":" in address else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    (address, port, 0, 0) if ":" in address else (address, port),
                )
                for address in self[name]
            ]

    fake = FakeResolver()
    fake.calls = []
    monkeypatch.setattr(socket, "getaddrinfo", fake.lookup)
    return fake
