"""JSON:API 1.1 plumbing: media types, request documents, collection queries, response documents."""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import orjson
from jsonapi_pydantic.v1_0 import Resource as ResourceEnvelope
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from api_server.services.listing import MAX_PAGE_SIZE, CollectionQuery
from shared.digits import natural_number
from shared.errors import (
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    InvalidQueryParameter,
    MalformedJSON,
    NotAcceptable,
    UnlistedProblems,
    Unprocessable,
    UnsupportedMediaType,
    ValidationErrors,
)
from shared.input_models import coded_problem, pointer_token, with_unknown_names_bounded
from shared.problems import JSONAPI_MEDIA_TYPE
from shared.web.http_limits import read_body_within
from shared.web.request_headers import list_value, refuse_content_coding, sole_value

JSON_MEDIA_TYPE = "application/json"
MAX_BODY_BYTES = 1024 * 1024
# Keeps the row offset ((number - 1) * size) a 64-bit integer, as every database needs it.
MAX_PAGE_NUMBER = 1_000_000_000
# The JSON:API media type's one parameter this server takes: ``profile`` (ignored). ``ext``
# names extensions, and it supports none: a body or an Accept range naming one is refused.
_ALLOWED_MEDIA_PARAMS = {"profile"}
ModelT = TypeVar("ModelT", bound=BaseModel)


# ---------------------------------------------------------------- media types


def _media_ranges(header: str) -> list[tuple[str, dict[str, str]]]:
    ranges = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        if not pieces[0]:
            continue
        params = {}
        for piece in pieces[1:]:
            key, _, value = piece.partition("=")
            params[key.strip().lower()] = value.strip().strip('"')
        ranges.append((pieces[0].lower(), params))
    return ranges


def accepts(request: Request, produced: str) -> bool:
    """Whether the request's Accept admits ``produced`` (JSON:API: a range with parameters other
    than ``profile`` does not, as JSON:API 1.1's content negotiation says).

    A plain-JSON action also takes the JSON:API media type: Cluvio's clients send
    ``Accept: application/vnd.api+json`` on every request, and a JSON:API document is JSON.
    """
    header = list_value(request, "accept")
    if not header:
        return True
    main, _, _sub = produced.partition("/")
    for media, params in _media_ranges(header):
        if params.get("q") in ("0", "0.0", "0.00", "0.000"):
            continue
        params.pop("q", None)
        if media in ("*/*", f"{main}/*"):
            return True
        if media == produced and (
            produced != JSONAPI_MEDIA_TYPE or params.keys() <= _ALLOWED_MEDIA_PARAMS
        ):
            return True
        if produced == JSON_MEDIA_TYPE and media == JSONAPI_MEDIA_TYPE:
            return True
    return False


def require_acceptable(request: Request, produced: str = JSONAPI_MEDIA_TYPE) -> None:
    if not accepts(request, produced):
        raise NotAcceptable(
            f"This endpoint produces {produced}; the Accept header does not allow it."
        )


async def read_bounded_body(
    request: Request, max_bytes: int = MAX_BODY_BYTES, seconds: float | None = None
) -> bytes:
    refuse_content_coding(request)
    return await read_body_within(request, max_bytes, seconds)


# ---------------------------------------------------------------- request documents


def read_json_body(request: Request, expected: str = JSONAPI_MEDIA_TYPE) -> Any:
    """Check the media type, then parse the body read by ``endpoint``; bad JSON is 400."""
    ranges = _media_ranges(sole_value(request, "Content-Type") or "")
    media, params = ranges[0] if len(ranges) == 1 else ("", {})  # one media type, not a list
    if media != expected or (
        expected == JSONAPI_MEDIA_TYPE and set(params) - _ALLOWED_MEDIA_PARAMS
    ):
        raise UnsupportedMediaType(
            f"Send the request body as Content-Type: {expected}"
            + (" (no extension: ext is not supported)." if "ext" in params else ".")
        )
    if params.get("charset", "utf-8").lower() != "utf-8":
        # RFC 8259 §8.1: JSON exchanged between systems is UTF-8; a body declared otherwise
        # would be read as what it says it is not.
        raise UnsupportedMediaType(
            f"A JSON body is UTF-8: send {expected} (charset=utf-8 or none)."
        )
    body = request.state.body
    try:
        orjson.loads(body)  # the strict reader: NaN, a lone surrogate or trailing data is 400
    except orjson.JSONDecodeError as exc:
        if (pointer := _number_beyond_double(body)) is not None:
            raise Unprocessable(
                "This number is beyond the range of a double (about ±1.8e308), the largest "
                "this API reads.",
                pointer=pointer,
                code="number_out_of_range",
            ) from None
        raise MalformedJSON(_why_not_json(body, exc)) from None
    try:
        # Read again by the standard library, whose hook sees every member: a name given twice
        # in one object is refused (RFC 8259 §4 leaves its meaning open; orjson kept the last).
        # It also keeps an integer beyond 64 bits exact, where orjson reads a float, so that
        # validation can refuse it, not match other rows.
        document = json.loads(body, object_pairs_hook=_members_once)
        pointer = _first_pointer(document, "", _holds_nul) if b"\\u0000" in body else None
    except RecursionError:
        raise MalformedJSON("The request body nests too deeply.") from None
    if pointer is not None:
        raise Unprocessable(
            "Text may not hold a NUL character (\\u0000): no database stores it.",
            pointer=pointer,
            code="nul_character",
        )
    return document


def _why_not_json(body: bytes, refused: orjson.JSONDecodeError) -> str:
    """Why orjson refused the body, said as the client can act on it: a body that is not UTF-8
    (UTF-16, Latin-1) is named so, not by orjson's "str is not valid UTF-8: surrogates not
    allowed"."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"The request body is not UTF-8, which JSON is (byte {exc.start} is not)."
    return f"The request body is not valid JSON: {refused.msg}."


def _first_pointer(value: Any, pointer: str, found: Callable[[Any], bool]) -> str | None:
    """The JSON Pointer of the first member name or value ``found`` in ``value``, if any."""
    if found(value):
        return pointer
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for name, member in items:
        escaped = pointer_token(str(name))
        if isinstance(name, str) and found(name):
            return f"{pointer}/{escaped}"
        if (inner := _first_pointer(member, f"{pointer}/{escaped}", found)) is not None:
            return inner
    return None


def _holds_nul(value: Any) -> bool:
    return isinstance(value, str) and "\x00" in value


class _BeyondDouble:
    """A number of the body that no double holds, where the standard library reads it."""


def _integer_beyond_double(text: str) -> Any:
    # More digits than the largest double has are beyond it; int() would refuse over 4300.
    if len(text.lstrip("-")) > _DOUBLE_DIGITS or abs(int(text)) > sys.float_info.max:
        return _BeyondDouble()
    return 0  # its value is not needed, only where the one beyond it is


def _fraction_beyond_double(text: str) -> Any:
    return _BeyondDouble() if math.isinf(float(text)) else 0.0


_DOUBLE_DIGITS = len(str(int(sys.float_info.max)))  # 309


def _number_beyond_double(body: bytes) -> str | None:
    """Where a body that orjson refused holds a number beyond a double's range, if that is why.
    JSON's grammar bounds no number, and RFC 8259 §6 lets a reader set its own range: such a
    body is valid JSON that this API cannot read, which the client is told at the number
    (422 ``number_out_of_range``, as for an integer beyond 64 bits), not that it sent
    malformed JSON. Any other fault of the body, read here or not, leaves it malformed."""
    try:
        document = json.loads(
            body,
            parse_int=_integer_beyond_double,
            parse_float=_fraction_beyond_double,
            parse_constant=_not_json,
        )
    except (ValueError, RecursionError):  # json.JSONDecodeError is a ValueError
        return None
    return _first_pointer(document, "", lambda value: isinstance(value, _BeyondDouble))


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


@dataclass
class ResourceInput:
    attributes: dict[str, Any]
    relationships: dict[str, Any]


def parse_resource_document(
    document: Any,
    resource_type: str,
    resource_id: str | None = None,
    *,
    settable_relationships: Collection[str] = (),
) -> ResourceInput:
    """Validate the ``{"data": {...}}`` envelope; attribute values are the caller's to check.

    A relationship the operation cannot set is refused, never ignored: a client that sent one
    would otherwise believe it took effect."""
    if not isinstance(document, dict) or not isinstance(document.get("data"), dict):
        raise BadRequest("The document must hold one resource object in 'data'.", pointer="/data")
    data = document["data"]
    try:
        envelope = ResourceEnvelope.model_validate(
            _named_as_addressed(_without_links(data), resource_type, resource_id)
        )
    except ValidationError as exc:
        pointer = _pointer_into(data, exc.errors()[0]["loc"], "/data")
        raise BadRequest(
            f"Invalid resource object: the member at {pointer} is not valid there.",
            pointer=pointer,
        ) from None
    except TypeError:
        # jsonapi-pydantic's own validators take len() of members they expect to be objects or
        # strings ("relationships": {"a": null}, "links": {"self": 1}): a malformed document.
        raise BadRequest(
            "Invalid resource object: a member has the wrong JSON type.", pointer="/data"
        ) from None
    if envelope.type != resource_type:
        raise Conflict(
            f"This endpoint takes resources of type '{resource_type}'.", pointer="/data/type"
        )
    if resource_id is None and envelope.id is not None:
        raise Forbidden("Client-generated ids are not supported.", pointer="/data/id")
    if resource_id is not None and envelope.id is None:
        raise BadRequest("An update names the resource: data.id is required.", pointer="/data/id")
    if resource_id is not None and envelope.id != resource_id:
        raise Conflict("The id in the body does not match the URL.", pointer="/data/id")
    # Present means an object (JSON:API): a null is as malformed as a string.
    if "attributes" in data and not isinstance(data["attributes"], dict):
        raise BadRequest("'attributes' must be an object.", pointer="/data/attributes")
    relationships = data.get("relationships", {})
    if not isinstance(relationships, dict):
        raise BadRequest("'relationships' must be an object.", pointer="/data/relationships")
    for name in relationships:
        if name not in settable_relationships:
            raise Unprocessable(
                f"The relationship '{name}' cannot be set on {resource_type} by this request.",
                pointer=f"/data/relationships/{pointer_token(name)}",
                code="relationship_not_settable",
            )
    return ResourceInput(attributes=data.get("attributes") or {}, relationships=relationships)


def _named_as_addressed(
    data: dict[str, Any], resource_type: str, resource_id: str | None
) -> dict[str, Any]:
    """``data`` with the ``type`` the endpoint takes and, in an update, the ``id`` of the URL,
    where it leaves them out: Cluvio's reference shows every create and update as
    ``{"data": {"attributes": …}}``, and a client written from it sent those (found by the
    outside probe). Given, each must still match."""
    implied = (
        {"type": resource_type}
        if resource_id is None
        else {"type": resource_type, "id": resource_id}
    )
    return {**implied, **data}


def _members_once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise MalformedJSON(f"The member {name!r} is given twice in one object.")
        members[name] = value
    return members


def _without_links(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` without its ``links`` and its relationships' (400 unless each is JSON:API's
    shape): the server ignores them, and jsonapi-pydantic would want absolute URLs where JSON:API
    takes any URI reference, such as the relative ``self`` this server's own documents carry."""
    _check_links(data.get("links"), "/data/links")
    relationships = data.get("relationships")
    if not isinstance(relationships, dict):
        return {k: v for k, v in data.items() if k != "links"}
    kept = {}
    for name, relationship in relationships.items():
        if isinstance(relationship, dict):
            pointer = f"/data/relationships/{pointer_token(str(name))}/links"
            _check_links(relationship.get("links"), pointer)
            relationship = {k: v for k, v in relationship.items() if k != "links"}
        kept[name] = relationship
    return {**{k: v for k, v in data.items() if k != "links"}, "relationships": kept}


def _check_links(links: Any, pointer: str) -> None:
    """JSON:API's links object: each link a URI reference, null, or an object with ``href``."""
    if links is None:
        return
    if not isinstance(links, dict):
        raise BadRequest("A links member must be an object.", pointer=pointer)
    for name, link in links.items():
        if link is None or isinstance(link, str):
            continue
        if not (isinstance(link, dict) and isinstance(link.get("href"), str)):
            raise BadRequest(
                "A link is a URI reference, null, or an object whose href is one.",
                pointer=f"{pointer}/{pointer_token(str(name))}",
            )


def _pointer_into(document: Any, location: Iterable[Any], prefix: str) -> str:
    """A JSON pointer to the deepest member of ``document`` along a validator's ``location``
    (which also names the validator's own models and functions, nowhere in the document)."""
    pointer, node = prefix, document
    for step in location:
        in_object = isinstance(node, dict) and isinstance(step, str) and step in node
        in_array = isinstance(node, list) and isinstance(step, int) and 0 <= step < len(node)
        if in_object or in_array:
            node = node[step]
            pointer += f"/{pointer_token(str(step))}"
    return pointer


_ERROR_CODES = {
    "missing": ("missing_attribute", "is required"),
    "extra_forbidden": ("unknown_attribute", "is not an attribute of this resource"),
    "string_too_long": ("too_long", None),
    "string_too_short": ("too_short", None),
}


def validate_attributes(
    model: type[ModelT],
    attributes: dict[str, Any],
    read_only: Iterable[str] = (),
    context: dict[str, Any] | None = None,
    pointer: str = "/data/attributes",
) -> ModelT:
    """Validate attributes into ``model``; every problem becomes one 422 with a pointer below
    ``pointer`` (where the attributes sit in the body). A problem a validator coded
    (``shared.input_models.problem``) keeps its code and detail; ``context``: what such
    validators read (a setting)."""
    read_only = set(read_only)
    attributes, unlisted = with_unknown_names_bounded(attributes, {*model.model_fields, *read_only})
    errors: list[AppError] = [
        Unprocessable(
            f"'{name}' is read-only.",
            pointer=f"{pointer}/{pointer_token(name)}",
            code="read_only_attribute",
        )
        for name in attributes
        if name in read_only
    ]
    if unlisted:
        errors.append(UnlistedProblems(unlisted))
    try:
        result = model.model_validate(
            {k: v for k, v in attributes.items() if k not in read_only}, context=context
        )
    except ValidationError as exc:
        for item in exc.errors():
            coded = coded_problem(item, pointer)
            if coded is not None:  # an attribute's nested member, with its own code and place
                errors.append(coded)
                continue
            name = str(item["loc"][0]) if item["loc"] else ""
            code, message = _ERROR_CODES.get(item["type"], ("invalid_attribute", None))
            if item["type"].endswith("_type") or item["type"].endswith("_parsing"):
                code = "invalid_type"
            reason = item["msg"].removeprefix("Value error, ")
            detail = f"'{name}' {message}." if message else f"'{name}': {reason}."
            at = f"{pointer}/{pointer_token(name)}"
            errors.append(Unprocessable(detail, pointer=at, code=code))
        result = None
    if errors:
        raise ValidationErrors(errors)
    assert result is not None
    return result


# ---------------------------------------------------------------- collection queries


_FAMILY = re.compile(r"^(page|filter|fields)\[([a-z_]+)\]$")


def parse_collection_query(
    request: Request,
    *,
    sortable: Sequence[str] = (),
    filterable: Sequence[str] = (),
    fields_by_type: Mapping[str, Iterable[str]] | None = None,
    includable: Sequence[str] = (),
    collection: bool = True,
) -> CollectionQuery:
    """Parse and check the JSON:API query parameters' values. Admission has already refused a
    name the operation does not declare, or one given twice (``reject_undeclared_query``)."""
    query = CollectionQuery()
    fields_by_type = fields_by_type or {}
    for name, value in request.query_params.multi_items():
        match = _FAMILY.match(name)
        family, member = (match.group(1), match.group(2)) if match else (name, "")
        if family == "page" and collection and member in ("number", "size"):
            maximum = MAX_PAGE_SIZE if member == "size" else MAX_PAGE_NUMBER
            setattr(query, f"page_{member}", _positive_int(name, value, maximum))
        elif family == "sort" and collection:
            query.sort = _parse_sort(value, sortable)
        elif family == "filter" and collection and member in filterable:
            query.filters[member] = value
        elif family == "fields" and member in fields_by_type:
            wanted = {f for f in value.split(",") if f}
            unknown = wanted - set(fields_by_type[member])
            if unknown:
                raise InvalidQueryParameter(
                    f"Unknown field(s) for {member}: {', '.join(sorted(unknown))}.", parameter=name
                )
            query.fields[member] = wanted
        elif family == "include" and includable:
            wanted = {i for i in value.split(",") if i}
            unknown = wanted - set(includable)
            if unknown:
                raise InvalidQueryParameter(
                    f"Cannot include {', '.join(sorted(unknown))}; allowed: {', '.join(includable)}.",
                    parameter="include",
                )
            query.include = wanted
        else:
            raise InvalidQueryParameter(f"Unsupported query parameter '{name}'.", parameter=name)
    return query


def parse_boolean(name: str, value: str) -> bool:
    if value not in ("true", "false"):
        raise InvalidQueryParameter(f"{name} must be true or false.", parameter=name)
    return value == "true"


def _positive_int(name: str, value: str, maximum: int) -> int:
    number = natural_number(value, maximum)
    if number is None or number < 1:
        raise InvalidQueryParameter(f"{name} must be a positive integer.", parameter=name)
    if number > maximum:
        raise InvalidQueryParameter(f"{name} may be at most {maximum}.", parameter=name)
    return number


def _parse_sort(value: str, sortable: Sequence[str]) -> list[tuple[str, bool]]:
    """Each sortable field at most once: a repeated key orders nothing further, and so the
    number of sort keys stays within every database's ORDER BY limit."""
    keys: list[tuple[str, bool]] = []
    for item in value.split(","):
        descending = item.startswith("-")
        name = item[1:] if descending else item
        if name not in sortable:
            raise InvalidQueryParameter(
                f"Cannot sort by '{name}'; sortable: {', '.join(sortable)}.", parameter="sort"
            )
        if any(name == seen for seen, _ in keys):
            raise InvalidQueryParameter(f"sort names '{name}' more than once.", parameter="sort")
        keys.append((name, descending))
    return keys


# ---------------------------------------------------------------- response documents


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def render(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, default=_default, option=orjson.OPT_UTC_Z)


def response(
    document: dict[str, Any], status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        render(document), status_code=status_code, media_type=JSONAPI_MEDIA_TYPE, headers=headers
    )


def json_response(payload: dict[str, Any], status_code: int = 200) -> Response:
    """Plain JSON, for Cluvio's action operations."""
    return Response(render(payload), status_code=status_code, media_type=JSON_MEDIA_TYPE)


def apply_sparse_fields(resource: dict[str, Any], query: CollectionQuery) -> dict[str, Any]:
    wanted = query.fields.get(resource["type"])
    if wanted is None:
        return resource
    trimmed = dict(resource)
    for member in ("attributes", "relationships"):
        if member in resource:
            kept = {k: v for k, v in resource[member].items() if k in wanted}
            if kept:
                trimmed[member] = kept
            else:
                trimmed.pop(member)
    return trimmed


def pagination_links(request: Request, query: CollectionQuery, total: int) -> dict[str, str | None]:
    last = max(1, -(-total // query.page_size))

    def page_url(number: int) -> str:
        params = [
            (k, v) for k, v in request.query_params.multi_items() if not k.startswith("page[")
        ]
        params += [("page[number]", str(number)), ("page[size]", str(query.page_size))]
        return f"{request.url.path}?{urlencode(params)}"

    return {
        "self": page_url(query.page_number),
        "first": page_url(1),
        "prev": page_url(query.page_number - 1) if query.page_number > 1 else None,
        "next": page_url(query.page_number + 1) if query.page_number < last else None,
        "last": page_url(last),
    }
