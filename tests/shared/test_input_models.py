"""Input models: every problem pydantic or a validator finds comes back as one 422 error object
with the code the model declares and a JSON pointer to the member at fault, all at once; and the
OpenAPI schemas derived from models that nest one another refer to each other by name."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import AfterValidator, Field

from shared.errors import MAX_LISTED_PROBLEMS, UnlistedProblems, ValidationErrors
from shared.input_models import (
    InputModel,
    Problem,
    problem,
    validate_input,
    with_unknown_names_bounded,
)
from shared.openapi import model_schemas


def _no_sevens(values: list[int]) -> list[int]:
    if 7 in values:
        raise problem("too_long", "No sevens.")  # a code that is also one of pydantic's types
    return values


class Part(InputModel):
    """A part."""

    not_an_object = Problem("invalid_part", "A part is an object.")

    name: Annotated[str, Field(pattern=r"^[a-z]+$"), Problem("invalid_name", "Lower-case only.")]


class Whole(InputModel):
    """A whole."""

    unknown_member = Problem("unknown_parameter", "No member '{name}' here.")

    parts: Annotated[
        list[Part],
        Field(max_length=2),
        Problem("too_many", "At most two parts.", only=("too_long",)),
        Problem("invalid_parts", "parts is an array."),
    ]
    sizes: (
        Annotated[
            list[int],
            Field(max_length=3),
            AfterValidator(_no_sevens),
            Problem("too_many_sizes", "At most three sizes.", only=("too_long",)),
        ]
        | None
    ) = None
    note: str | None = None


def _errors(data: object, pointer: str = "") -> list[tuple[str, str | None, str]]:
    with pytest.raises(ValidationErrors) as raised:
        validate_input(Whole, data, pointer)
    return [(error.code, error.pointer, error.detail) for error in raised.value.errors]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"parts": "x"}, ("invalid_parts", "/parts", "parts is an array.")),
        ({"parts": [{"name": "a"}] * 3}, ("too_many", "/parts", "At most two parts.")),
        ({"parts": [5]}, ("invalid_part", "/parts/0", "A part is an object.")),
        ({"parts": [{"name": "A"}]}, ("invalid_name", "/parts/0/name", "Lower-case only.")),
        ({"parts": [{"name": 1}]}, ("invalid_name", "/parts/0/name", "Lower-case only.")),
        ({"parts": [{}]}, ("invalid_name", "/parts/0/name", "Lower-case only.")),
        ({"parts": [], "x/~": 1}, ("unknown_parameter", "/x~1~0", "No member 'x/~' here.")),
        ({"parts": [{"name": "a", "b": 1}]}, ("unknown_attribute", "/parts/0/b", "Unknown member 'b'.")),
        ({"parts": [], "sizes": [7]}, ("too_long", "/sizes", "No sevens.")),
        ({"parts": [], "sizes": [1] * 4}, ("too_many_sizes", "/sizes", "At most three sizes.")),
        ({"parts": [], "note": 5}, ("invalid_type", "/note", "Input should be a valid string.")),
        ({}, ("invalid_parts", "/parts", "parts is an array.")),
        ([], ("invalid_type", "", "The value must be an object.")),
    ],
)  # fmt: skip
def test_each_problem_has_the_code_and_pointer_its_model_declares(data, expected):
    assert _errors(data) == [expected]


def test_every_problem_is_reported_at_once_below_the_pointer_given():
    found = _errors({"parts": [{"name": "A"}, 1], "sizes": ["x"], "other": 1}, "/body")
    assert [(code, pointer) for code, pointer, _ in found] == [
        ("invalid_name", "/body/parts/0/name"),
        ("invalid_part", "/body/parts/1"),
        ("invalid_type", "/body/sizes/0"),
        ("unknown_parameter", "/body/other"),
    ]


def test_valid_input_is_the_model():
    whole = validate_input(Whole, {"parts": [{"name": "a"}], "sizes": [1]})
    assert whole == Whole(parts=[Part(name="a")], sizes=[1])


def test_nested_models_refer_to_each_other_by_their_component_names():
    schemas = model_schemas({"WholeDocument": Whole, "PartDocument": Part})
    parts = schemas["WholeDocument"]["properties"]["parts"]
    assert parts["items"] == {"$ref": "#/components/schemas/PartDocument"}
    assert parts["maxItems"] == 2
    assert schemas["WholeDocument"]["additionalProperties"] is False
    assert schemas["PartDocument"] == {
        "additionalProperties": False,
        "description": "A part.",
        "properties": {"name": {"pattern": "^[a-z]+$", "type": "string"}},
        "required": ["name"],
        "type": "object",
    }


def test_names_beyond_those_an_error_document_lists_are_not_validated():
    known = {"a", "b"}
    data = {"a": 1, **{f"k{n}": n for n in range(MAX_LISTED_PROBLEMS + 10)}, "b": 2}
    kept, unlisted = with_unknown_names_bounded(data, known)
    assert list(kept) == ["a", *[f"k{n}" for n in range(MAX_LISTED_PROBLEMS)], "b"]
    assert unlisted == 10
    few = {"a": 1, "x": 2}
    assert with_unknown_names_bounded(few, known) == (few, 0)


def test_a_model_given_a_great_many_unknown_members_lists_a_few_and_counts_the_rest():
    class Small(InputModel):
        a: int = 0

    with pytest.raises(ValidationErrors) as raised:
        validate_input(Small, {f"k{n}": n for n in range(1000)}, "/body")
    errors = raised.value.errors
    assert [e.pointer for e in errors[:2]] == ["/body/k0", "/body/k1"]
    assert len(errors) == MAX_LISTED_PROBLEMS + 1
    assert (
        isinstance(errors[-1], UnlistedProblems) and errors[-1].count == 1000 - MAX_LISTED_PROBLEMS
    )


def test_problems_left_out_inside_are_counted_through_the_models_around_them():
    """An outer model that recodes its own errors (an unknown member of its own) carried an
    inner one's count on, and a count it lost was a KeyError: a 500."""

    class Inner(InputModel):
        a: int = 0

    class Outer(InputModel):
        inner: Inner | None = None
        b: int = 0

    body = {"b": "not a number", "bogus": 1, "inner": {f"k{n}": n for n in range(100)}}
    with pytest.raises(ValidationErrors) as raised:
        validate_input(Outer, body)
    errors = raised.value.errors
    assert len(errors) == MAX_LISTED_PROBLEMS + 1
    assert isinstance(errors[-1], UnlistedProblems)
    assert errors[-1].count == 102 - MAX_LISTED_PROBLEMS  # b, bogus and the inner 100
