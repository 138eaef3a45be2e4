"""Builds the CLI's `Telemetry` from the `telemetry:` section and the OTEL_* variables: `NOOP` when off.
Imports the OTel implementation (`otel_sdk`) only inside `build`, when telemetry is on; must not
import opentelemetry itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Final

from gateway.config.routing import TelemetrySpec
from gateway.observe.hooks import NOOP, Telemetry

GATEWAY_SERVICE: Final = "mcp-tunnel-gateway"
RELAY_SERVICE: Final = "mcp-tunnel-relay"


def _identity(text: str) -> str:
    return text


def export_configured(spec: TelemetrySpec, environ: Mapping[str, str]) -> bool:
    """Whether OTLP export is on: `enabled` when set, else whenever an OTLP endpoint is configured
    (and OTEL_SDK_DISABLED is not true)."""
    if spec.enabled is not None:
        return spec.enabled
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        spec.endpoint
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT")
    )


def build(
    spec: TelemetrySpec,
    *,
    service_name: str = GATEWAY_SERVICE,
    metrics_pull: bool = False,
    redact: Callable[[str], str] = _identity,
    base: Path | None = None,
    file: str = "routing.yaml",
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Telemetry from config and the OTEL_* environment; `NOOP` when neither OTLP export nor a
    `/metrics` scrape (`metrics_pull`) wants anything. Raises ConfigError for a bad section."""
    env = os.environ if environ is None else environ
    export = export_configured(spec, env)
    if not export and not metrics_pull:
        return NOOP
    # Imported here, not at the top: a gateway with telemetry off never loads OpenTelemetry.
    from gateway.observe.otel_sdk import build_sdk

    return build_sdk(
        spec, env, export=export, pull=metrics_pull, service=service_name, redact=redact, base=base, file=file
    )
