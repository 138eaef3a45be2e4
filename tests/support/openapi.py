"""Validation against the Secure MCP Tunnel v1 contract (`openapi.json`), for tests.

`validate(name, instance)` checks a body against `#/components/schemas/<name>`;
`validate_extended(name, instance)` does the same against the contract plus the official client's
`oauth_discovery` extension (README, "Outside openapi.json"): the `ResponsePayloadType` enum plus
`oauth_discovery_response`, and a polled `oauth_discovery` command shaped like the other non-JSON-RPC
command; `validate_failure(data)` checks `error.data.tunnel_failure` against the nested
`x-tunnel-failure-schema`. All raise jsonschema.ValidationError on failure.
The contract is read from `../shared/tunnel-protocol/openapi.json` (next to the
project root) unless the TUNNEL_OPENAPI environment variable names another file.
"""

from __future__ import annotations

import copy
import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

_BASE_URI = "urn:tunnel-protocol:openapi"
_EXTENDED_URI = "urn:tunnel-protocol:openapi+oauth-discovery"
OAUTH_DISCOVERY_COMMAND = "oauth_discovery"
OAUTH_DISCOVERY_RESPONSE = "oauth_discovery_response"


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
def _extended_document() -> dict[str, Any]:
    """The contract plus the `oauth_discovery` extension the official client's wire types name
    (pkg/controlplane/wiretypes/wire.go in openai/tunnel-client) and the published schema lacks."""
    document = copy.deepcopy(_document())
    schemas = document["components"]["schemas"]
    schemas["ResponsePayloadType"]["enum"].append(OAUTH_DISCOVERY_RESPONSE)
    command = copy.deepcopy(schemas["SessionTerminationPolledCommand"])
    command["title"] = "OAuthDiscoveryPolledCommand"
    command["properties"]["command_type"] = {
        "type": "string",
        "const": OAUTH_DISCOVERY_COMMAND,
        "default": OAUTH_DISCOVERY_COMMAND,
    }
    schemas["OAuthDiscoveryPolledCommand"] = command
    items = schemas["PolledCommandList"]["properties"]["commands"]["items"]
    items["oneOf"].append({"$ref": "#/components/schemas/OAuthDiscoveryPolledCommand"})
    items["discriminator"]["mapping"][OAUTH_DISCOVERY_COMMAND] = "#/components/schemas/OAuthDiscoveryPolledCommand"
    return document


@cache
def _registry() -> Registry[Any]:
    resource: Resource[Any] = Resource.from_contents(_document(), default_specification=DRAFT202012)
    extended: Resource[Any] = Resource.from_contents(_extended_document(), default_specification=DRAFT202012)
    registry: Registry[Any] = Registry().with_resource(_BASE_URI, resource).with_resource(_EXTENDED_URI, extended)
    return registry


@cache
def _validator(schema_name: str, base: str = _BASE_URI) -> Draft202012Validator:
    if schema_name not in _document()["components"]["schemas"]:
        raise KeyError(f"openapi.json has no schema {schema_name!r}")
    schema = {"$ref": f"{base}#/components/schemas/{schema_name}"}
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


def validate_extended(schema_name: str, instance: object) -> None:
    """Like `validate`, against the contract plus the `oauth_discovery` extension (see the module)."""
    _validator(schema_name, _EXTENDED_URI).validate(instance)


def validate_failure(error_data: object) -> None:
    """Raise unless the `tunnel_failure` provenance matches the nested schema; `error_data`
    is either that object or a JSON-RPC `error.data` object holding it under `tunnel_failure`."""
    if isinstance(error_data, dict) and "tunnel_failure" in error_data:
        error_data = error_data["tunnel_failure"]
    _failure_validator().validate(error_data)
