"""Strict input models whose every problem carries the API's error code, and the one place that
turns pydantic's errors into 422 error objects.

A model declares its types and bounds as usual; ``Problem`` in a field's ``Annotated`` metadata
names the code and detail of whatever pydantic finds wrong with that value (its type, a bound, a
pattern, a ``ValueError`` of a validator inside it, its absence); a validator with a rule of its
own raises ``problem(code, detail)``. A pydantic error that nobody named keeps a generic code.
Framework-free: ``sql_templating`` and the services use it alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, ValidationError, model_validator
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError, core_schema

from shared.errors import MAX_LISTED_PROBLEMS, UnlistedProblems, Unprocessable, ValidationErrors

InputModelT = TypeVar("InputModelT", bound="InputModel")
Location = tuple[int | str, ...]


def problem(code: str, detail: str) -> PydanticCustomError:
    """An error whose type is the API's code and whose message is the detail a client reads."""
    return PydanticCustomError(code, detail)


def problems_at(found: Iterable[tuple[Location, PydanticCustomError]]) -> ValidationError:
    """Several problems at once, each at its place below the value being validated (a
    validator of a list or a model that finds problems in its members raises this)."""
    details = [InitErrorDetails(type=error, loc=loc, input=None) for loc, error in found]
    return ValidationError.from_exception_data("input", details)


@dataclass(frozen=True)
class Problem:
    """Field metadata: what pydantic finds wrong with this value is reported as ``code`` with
    ``detail``; ``only``: just these of pydantic's error types (a bound with a code of its own)."""

    code: str
    detail: str
    only: tuple[str, ...] = ()

    def error(self, **names: str) -> PydanticCustomError:
        return problem(self.code, self.detail.format(**names) if names else self.detail)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_wrap_validator_function(self._validate, handler(source))

    def _validate(self, value: Any, handler: Callable[[Any], Any]) -> Any:
        try:
            return handler(value)
        except ValidationError as exc:
            raise _recoded(exc, self._names) from None

    def _names(self, error: ErrorDetails) -> PydanticCustomError | None:
        """This value's own problem (not one of its items'), unless a validator named it."""
        if error["loc"] or not _from_pydantic(error):
            return None
        return self.error() if not self.only or error["type"] in self.only else None


class InputModel(BaseModel):
    """A request body or a part of one: unknown members refused, no type coercion, and every
    problem coded (an absent required member as its field's ``Problem`` says)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    not_an_object: ClassVar[Problem] = Problem("invalid_type", "The value must be an object.")
    unknown_member: ClassVar[Problem] = Problem("unknown_attribute", "Unknown member '{name}'.")

    @model_validator(mode="wrap")
    @classmethod
    def _coded(cls, data: Any, handler: Callable[[Any], Any]) -> Any:
        unlisted = 0
        if isinstance(data, dict):
            data, unlisted = with_unknown_names_bounded(data, cls.model_fields)
        try:
            return handler(data)
        except ValidationError as exc:
            raise _recoded(exc, cls._names, unlisted) from None

    @classmethod
    def _names(cls, error: ErrorDetails) -> PydanticCustomError | None:
        if not _from_pydantic(error):
            return None
        loc, kind = error["loc"], error["type"]
        if not loc and kind == "model_type":
            return cls.not_an_object.error()
        if len(loc) == 1 and kind == "extra_forbidden":
            return cls.unknown_member.error(name=str(loc[0]))
        if len(loc) == 1 and kind == "missing" and isinstance(loc[0], str):
            field = cls.model_fields[loc[0]]
            named = [m for m in field.metadata if isinstance(m, Problem) and not m.only]
            return named[-1].error() if named else None
        return None


def with_unknown_names_bounded(
    data: dict[str, Any], known: Collection[str]
) -> tuple[dict[str, Any], int]:
    """``data`` with the first ``MAX_LISTED_PROBLEMS`` of the names ``known`` does not hold, and
    how many more it held. Each is a problem, but a 1 MiB body holds 80,000: validating them
    all was most of a second of CPU for an answer that lists no more than these."""
    if len(data) <= len(known) + MAX_LISTED_PROBLEMS:  # as every request's body: nothing to do
        return data, 0
    kept: dict[str, Any] = {}
    unknown = 0
    for name, value in data.items():
        if name not in known:
            unknown += 1
            if unknown > MAX_LISTED_PROBLEMS:
                continue
        kept[name] = value
    return kept, max(0, unknown - MAX_LISTED_PROBLEMS)


def validate_input(
    model: type[InputModelT],
    data: Any,
    pointer: str = "",
    context: dict[str, Any] | None = None,
) -> InputModelT:
    """``data`` as ``model``, or one 422 listing every problem, each at its JSON pointer below
    ``pointer`` (where ``data`` sits in the request body)."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        raise ValidationErrors([_unprocessable(error, pointer) for error in exc.errors()]) from None


def coded_problem(error: ErrorDetails, pointer: str) -> Unprocessable | None:
    """The 422 of an error a ``Problem`` or ``problem`` named, with its code and its whole place
    below ``pointer`` (an attribute's nested member); None for pydantic's own errors."""
    return None if _from_pydantic(error) else _unprocessable(error, pointer)


def _unprocessable(error: ErrorDetails, pointer: str) -> Unprocessable:
    if error["type"] == UnlistedProblems.code:
        return UnlistedProblems(error["ctx"]["count"])
    at = pointer + "".join(f"/{pointer_token(str(part))}" for part in error["loc"])
    if not _from_pydantic(error):
        return Unprocessable(error["msg"], pointer=at, code=error["type"])
    code = "invalid_type" if error["type"].endswith("_type") else "invalid_attribute"
    return Unprocessable(f"{error['msg']}.", pointer=at, code=code)


def pointer_token(name: str) -> str:
    """One reference token of a JSON pointer (RFC 6901)."""
    return name.replace("~", "~0").replace("/", "~1")


def _from_pydantic(error: ErrorDetails) -> bool:
    """pydantic's own errors carry a documentation URL; ``problem``'s never do."""
    return "url" in error


def _recoded(
    exc: ValidationError,
    name: Callable[[ErrorDetails], PydanticCustomError | None],
    unlisted: int = 0,
) -> ValidationError:
    """``exc`` with the errors ``name`` gives a code replaced, the others as they were; and
    ``unlisted`` problems left out before validating counted in one more."""
    errors = exc.errors()
    renamed = [name(error) for error in errors]
    if not any(renamed) and not unlisted:
        return exc
    details = [_detail(error, new) for error, new in zip(errors, renamed, strict=True)]
    if unlisted:
        details.append(InitErrorDetails(type=_unlisted(unlisted), loc=(), input=None))
    return ValidationError.from_exception_data(exc.title, details)


def _unlisted(count: int) -> PydanticCustomError:
    """``UnlistedProblems`` as pydantic carries it, through the models around the one that
    left them out, to ``_unprocessable``."""
    return PydanticCustomError(UnlistedProblems.code, "{count} more", {"count": count})


def _detail(error: ErrorDetails, renamed: PydanticCustomError | None) -> InitErrorDetails:
    if renamed is not None:
        return InitErrorDetails(type=renamed, loc=error["loc"], input=error["input"])
    if error["type"] == UnlistedProblems.code:
        return InitErrorDetails(type=_unlisted(error["ctx"]["count"]), loc=error["loc"], input=None)
    if not _from_pydantic(error):
        return InitErrorDetails(
            type=problem(error["type"], error["msg"]), loc=error["loc"], input=error["input"]
        )
    kept = InitErrorDetails(type=error["type"], loc=error["loc"], input=error["input"])
    if "ctx" in error:
        kept["ctx"] = error["ctx"]
    return kept
