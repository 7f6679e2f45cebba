"""OpenAI's own schemas for the Responses API and embeddings
(``tests/fixtures/openapi/openai-responses.yaml``, trimmed by ``trim.py``), as one assertion
that the unit and integration tests share."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

RESPONSES_OPENAPI = Path(__file__).parents[1] / "fixtures" / "openapi" / "openai-responses.yaml"


@cache
def _components() -> dict[str, Any]:
    components: dict[str, Any] = yaml.safe_load(RESPONSES_OPENAPI.read_text())["components"]
    return components


@cache
def _event_schemas() -> dict[str, str]:
    """Each stream event type → the name of its schema."""
    schemas = _components()["schemas"]
    out = {}
    for option in schemas["ResponseStreamEvent"]["anyOf"]:
        name = option["$ref"].rsplit("/", 1)[1]
        for kind in schemas[name]["properties"]["type"]["enum"]:
            out[kind] = name
    return out


def assert_valid(obj: Any, schema: str) -> None:
    """``obj`` validates against ``#/components/schemas/<schema>`` of OpenAI's document. A
    stream event is checked against its own type's schema (``ResponseStreamEvent`` is a union
    of them), so a failure names the field."""
    if schema == "ResponseStreamEvent":
        assert obj["type"] in _event_schemas(), f"unknown event type {obj['type']}"
        schema = _event_schemas()[obj["type"]]
    validator = Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": _components()}
    )
    error = best_match(validator.iter_errors(obj))
    assert error is None, f"{schema}: {error.message} at {list(error.absolute_path)}"
