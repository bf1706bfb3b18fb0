"""Request header fields both servers read alike: the ones that hold one value, the ones that
hold a list, and the content coding of a body.

RFC 9110 §5.3 lets a sender split a list over several field lines and a recipient combine them
into one comma-separated value: a list field is read whole (``list_value``), never as its first
line. A field that holds one value, sent twice, has no meaning: whichever copy a server read, a
proxy in front may have kept another. Such a request is refused, never answered by one copy.
"""

from __future__ import annotations

from starlette.requests import Request

from shared.errors import BadRequest, UnsupportedMediaType


def authorization(request: Request) -> str | None:
    """The ``Authorization`` header's value ("" when absent), or None when it is sent more than
    once (the caller answers that as any bad credentials: 401); a proxy that kept another copy
    than this server would have authenticated another caller."""
    values = request.headers.getlist("authorization")
    if len(values) > 1:
        return None
    return values[0] if values else ""


def sole_value(request: Request, name: str) -> str | None:
    """The value of a one-value header (``Content-Type``, ``Idempotency-Key``), None when
    absent; 400 ``repeated_header`` when it is sent more than once."""
    values = request.headers.getlist(name)
    if len(values) > 1:
        raise BadRequest(
            f"The {name} header is sent {len(values)} times; it holds one value.",
            code="repeated_header",
        )
    return values[0] if values else None


def list_value(request: Request, name: str) -> str | None:
    """A list header (``Accept``, ``Accept-Encoding``, ``If-Match``, ``If-None-Match``) with
    its field lines combined; None when absent."""
    values = request.headers.getlist(name)
    return ", ".join(values) if values else None


def names_any(request: Request, name: str) -> bool:
    """Whether a conditional header (``If-Match``, ``If-None-Match``) holds ``*`` among its list
    elements, however its field lines are split and whatever empty elements they hold (RFC 9110
    §5.6.1): ``*,`` or two lines of ``*`` mean ``*`` (found by the outside probe)."""
    value = list_value(request, name)
    return value is not None and "*" in (element.strip() for element in value.split(","))


def refuse_content_coding(request: Request) -> None:
    """A request body is read as sent: one in a content coding (gzip, …) would be checked as
    if it were not, and refused for its bytes with a misleading reason. RFC 9110 §8.4 lets a
    server answer such a body 415."""
    coding = sole_value(request, "Content-Encoding")
    if coding is not None and coding.strip().lower() not in ("", "identity"):
        raise UnsupportedMediaType(
            "Request bodies are read without a content coding; send it uncoded, not as "
            f"{coding[:40]!r}."
        )
