"""The credentials a request carries, read alike by both servers."""

from __future__ import annotations

from starlette.requests import Request


def authorization(request: Request) -> str | None:
    """The ``Authorization`` header's value ("" when absent), or None when the request sends it
    more than once: it is a single field (RFC 9110 §11.6.2), and a proxy in front that kept
    another copy than this server would have authenticated another caller."""
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        return None
    return values[0] if values else ""
