"""Validation against the Secure MCP Tunnel v1 contract (`openapi.json`), for tests.

`validate(name, instance)` checks a body against `#/components/schemas/<name>`;
`validate_failure(data)` checks `error.data.tunnel_failure` against the nested
`x-tunnel-failure-schema`. Both raise jsonschema.ValidationError on failure.
The contract is read from `../shared/tunnel-protocol/openapi.json` (next to the
project root) unless the TUNNEL_OPENAPI environment variable names another file.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_BASE_URI = "urn:tunnel-protocol:openapi"


def contract_path() -> Path:
    override = os.environ.get("TUNNEL_OPENAPI")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[3] / "shared/tunnel-protocol/openapi.json"


@cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(contract_path().read_text())
    return document


@cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(_document(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, resource)
    return registry


@cache
def _validator(schema_name: str) -> Draft202012Validator:
    if schema_name not in _document()["components"]["schemas"]:
        raise KeyError(f"openapi.json has no schema {schema_name!r}")
    schema = {"$ref": f"{_BASE_URI}#/components/schemas/{schema_name}"}
    return Draft202012Validator(schema, registry=_registry())


@cache
def _failure_validator() -> Draft202012Validator:
    payload = _document()["components"]["schemas"]["TunnelResponsePayload"]
    schema = payload["properties"]["resp_json"]["x-tunnel-failure-schema"]
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def validate(schema_name: str, instance: object) -> None:
    """Raise jsonschema.ValidationError unless `instance` matches the named component schema."""
    _validator(schema_name).validate(instance)


def validate_failure(error_data: object) -> None:
    """Raise unless the `tunnel_failure` provenance matches the nested schema; `error_data`
    is either that object or a JSON-RPC `error.data` object holding it under `tunnel_failure`."""
    if isinstance(error_data, dict) and "tunnel_failure" in error_data:
        error_data = error_data["tunnel_failure"]
    _failure_validator().validate(error_data)
