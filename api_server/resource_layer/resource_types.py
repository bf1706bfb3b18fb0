"""A JSON:API resource type, declared once.

One pydantic model names every attribute with its type, bounds, validators and description;
``READ_ONLY`` and ``WRITE_ONLY`` in an attribute's ``Annotated`` metadata say which way it flows.
Everything else is derived: the create and update models (writable attributes; on update each is
optional and only those sent change), the read-only attributes a request may not send, the
serialiser's allow-list, sparse fieldsets, the collection query parser and the OpenAPI schemas
(``api_server.resource_layer.schemas``). Validators live in the annotations (``AfterValidator``),
so that the derived models keep them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model
from pydantic.fields import FieldInfo
from starlette.requests import Request

from api_server import jsonapi
from api_server.resource_layer.names import NAME_UNCHANGED
from shared.errors import InvalidQueryParameter
from shared.ids import RESOURCE_ID_PATTERN
from shared.openapi import Schema, enum, string


class _Access:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


READ_ONLY = _Access("READ_ONLY")  # the server sets it; a request that sends it gets a 422
WRITE_ONLY = _Access("WRITE_ONLY")  # accepted, never sent back (a password)

ID_SCHEMA = string(pattern=RESOURCE_ID_PATTERN.pattern)


class Attributes(BaseModel):
    """The base of every attributes model: unknown attributes refused, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True)

    def changes(self) -> dict[str, Any]:
        """The attributes the request sent (an update changes only these)."""
        return {name: getattr(self, name) for name in self.model_fields_set}


# Spelled once outside ResourceType, whose ``type`` field would shadow the builtin inside it.
AttributesModel = type[Attributes]


@dataclass(frozen=True)
class Relationship:
    """``linked`` reads the related id (to-one) or ids (to-many) from a row; None: null data."""

    type: str
    linked: Callable[[Any], Any]
    to_many: bool = False
    nullable: bool = False  # a to-many's data may be null (a to-one's always may)
    description: str | None = None
    accepted: Schema | None = None  # what a request may send, when the type lets it be set

    @classmethod
    def not_yet(cls, type_: str, why: str) -> Relationship:
        """A to-many relationship Cluvio's schema has and whose resources dataferry has not
        yet: always empty data, ``why`` in its description."""
        return cls(type_, linked=lambda row: [], to_many=True, description=f"Always empty: {why}.")


@dataclass(frozen=True)
class Filter:
    """``filter[name]``; ``parse`` turns the text into the value compared (400 when it cannot)."""

    name: str
    description: str | None = None
    schema: Schema | None = None
    parse: Callable[[str, str], Any] | None = None  # (parameter name, text) → value

    @classmethod
    def one_of(cls, name: str, values: Iterable[str], description: str | None = None) -> Filter:
        """A filter on an attribute of a few values: any other value is a 400 naming them, not
        an empty page, which a misspelt value (``SAMPLE``) would pass for "none match"."""
        allowed = tuple(values)

        def parse(parameter: str, text: str) -> str:
            if text not in allowed:
                raise InvalidQueryParameter(
                    f"{parameter} must be one of: {', '.join(allowed)}.", parameter=parameter
                )
            return text

        return cls(name, description, enum(allowed), parse=parse)


# Every declared type by its name, the first declaration of a name kept.
_DECLARED: dict[str, ResourceType] = {}


def declared_type(name: str) -> ResourceType | None:
    return _DECLARED.get(name)


@dataclass(frozen=True, eq=False)
class ResourceType:
    type: str
    schema_name: str  # "SqlSnippet": the OpenAPI schemas' stem
    noun: str  # "SQL snippet": how the documentation names one
    attributes: AttributesModel
    path: str | None  # the collection's path; a resource's self link is path/id (None: no link)
    relationships: Mapping[str, Relationship] = field(default_factory=dict)
    settable_relationships: tuple[str, ...] = ()
    sortable: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    includable: tuple[str, ...] = ()
    included_note: str = ""  # what ``included`` holds, for the documentation
    id_schema: Schema = field(default_factory=lambda: ID_SCHEMA)
    # How an attribute is read from a row when it is not the row's own attribute of that name.
    readers: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    # OpenAPI only: what the served attributes' schemas say beyond the model (an enum that differs
    # from what may be written).
    output_refinements: Mapping[str, Schema] = field(default_factory=dict)
    # For resources named by something else than ``id`` (a file by its name).
    id_attribute: str = "id"
    # Each self link is given to ``serialize`` (a URL not path/id: a datasource's files).
    self_links_given: bool = False
    # OpenAPI only: a collection's ``meta`` when it holds more than the count and the page.
    collection_meta: Schema | None = None
    # OpenAPI only: what a create's request must hold beyond each attribute's own rule, as the
    # service checks it: a rule between attributes (one of two names), the relationships it needs.
    create_attributes_rule: Schema | None = None
    required_on_create: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _DECLARED.setdefault(self.type, self)

    # ------------------------------------------------------------ derived from the declaration

    def included_types(self) -> tuple[ResourceType, ...]:
        """The declared types ``include`` may add under ``included`` (whose ``fields[type]`` a
        request may then give). Asked once every module has declared its types: two types
        including each other cannot both import the other."""
        named = dict.fromkeys(self.relationships[name].type for name in self.includable)
        return tuple(_DECLARED[name] for name in named if name in _DECLARED)

    def _access(self, name: str) -> _Access | None:
        metadata = self.attributes.model_fields[name].metadata
        return next((m for m in metadata if isinstance(m, _Access)), None)

    @cached_property
    def output_attributes(self) -> tuple[str, ...]:
        return tuple(n for n in self.attributes.model_fields if self._access(n) is not WRITE_ONLY)

    @cached_property
    def writable_attributes(self) -> tuple[str, ...]:
        return tuple(n for n in self.attributes.model_fields if self._access(n) is not READ_ONLY)

    @cached_property
    def read_only_attributes(self) -> tuple[str, ...]:
        return tuple(n for n in self.attributes.model_fields if self._access(n) is READ_ONLY)

    @cached_property
    def fields(self) -> tuple[str, ...]:
        """What ``fields[type]`` may name: attributes and relationships."""
        return (*self.output_attributes, *self.relationships)

    @cached_property
    def create_model(self) -> AttributesModel:
        return self._model("Create", self.writable_attributes, optional=False)

    @cached_property
    def update_model(self) -> AttributesModel:
        return self._model("Update", self.writable_attributes, optional=True)

    @cached_property
    def output_model(self) -> AttributesModel:
        return self._model("", self.output_attributes, optional=False)

    def _model(self, suffix: str, names: tuple[str, ...], *, optional: bool) -> AttributesModel:
        """A model of ``names``; ``optional``: each defaults to None, which is not validated, so
        a null sent for an attribute whose type has no None is still refused."""
        declared = self.attributes.model_fields

        def field_of(info: FieldInfo) -> FieldInfo:
            return (
                FieldInfo.merge_field_infos(info, default=None, default_factory=None)
                if optional
                else info
            )

        definitions: dict[str, Any] = {
            n: (declared[n].annotation, field_of(declared[n])) for n in names
        }
        return create_model(
            f"{self.schema_name}{suffix}Attributes", __base__=Attributes, **definitions
        )

    def _read(self, row: Any, name: str) -> Any:
        reader = self.readers.get(name)
        return reader(row) if reader is not None else getattr(row, name)

    # ------------------------------------------------------------ requests

    def query(self, request: Request, *, collection: bool, **extra: Any) -> jsonapi.CollectionQuery:
        """The query parameters of a request on this type (400 for any other), filters parsed."""
        query = jsonapi.parse_collection_query(
            request,
            sortable=self.sortable,
            filterable=tuple(f.name for f in self.filters) if collection else (),
            fields_by_type={
                resource.type: resource.fields for resource in (self, *self.included_types())
            },
            includable=self.includable,
            collection=collection,
            **extra,
        )
        for declared in self.filters:
            if declared.parse is not None and declared.name in query.filters:
                name = f"filter[{declared.name}]"
                query.filters[declared.name] = declared.parse(name, query.filters[declared.name])
        return query

    def read(self, request: Request, resource_id: str | None = None) -> jsonapi.ResourceInput:
        """The request's resource document, envelope checked (attributes not yet)."""
        document = jsonapi.read_json_body(request)
        return jsonapi.parse_resource_document(
            document, self.type, resource_id, settable_relationships=self.settable_relationships
        )

    def validate(
        self,
        resource: jsonapi.ResourceInput,
        *,
        update: bool,
        context: dict[str, Any] | None = None,
    ) -> Attributes:
        """The attributes as the create or update model reads them: every problem one 422;
        ``context``: what the attributes' validators read (a setting, ``keeping_stored_name``).
        A name sent back as it is stored is left out of the attributes set: no change."""
        model = self.update_model if update else self.create_model
        validated = jsonapi.validate_attributes(
            model, resource.attributes, self.read_only_attributes, context
        )
        if context is not None and context.get(NAME_UNCHANGED):
            validated.model_fields_set.discard("name")
        return validated

    # ------------------------------------------------------------ responses

    def serialize(
        self,
        row: Any,
        *,
        resource_id: str | None = None,
        attributes: Mapping[str, Any] | None = None,
        self_link: str | None = None,
        only: Collection[str] | None = None,
    ) -> dict[str, Any]:
        """A resource object: the declared attributes (or ``attributes``, for a type that shows
        some only to some callers; or those named in ``only``, the others not even read), the
        relationships, the self link."""
        resource_id = getattr(row, self.id_attribute) if resource_id is None else resource_id
        resource: dict[str, Any] = {
            "type": self.type,
            "id": resource_id,
            "attributes": dict(attributes)
            if attributes is not None
            else {
                name: self._read(row, name)
                for name in self.output_attributes
                if only is None or name in only
            },
        }
        if self.relationships:
            resource["relationships"] = {
                name: {"data": _linkage(relationship, relationship.linked(row))}
                for name, relationship in self.relationships.items()
            }
        if self_link is not None or self.path is not None:
            resource["links"] = {"self": self_link or f"{self.path}/{resource_id}"}
        return resource


def from_row(name: str) -> Callable[[Any], Any]:
    """A reader of a view's row's attribute (a view: a row with its relationships' ids, read
    for a whole page at once and as the caller may see them)."""
    return lambda view: getattr(view.row, name)


def _linkage(relationship: Relationship, linked: Any) -> Any:
    if linked is None:
        return None
    if relationship.to_many:
        return [{"type": relationship.type, "id": i} for i in linked]
    return {"type": relationship.type, "id": linked}
