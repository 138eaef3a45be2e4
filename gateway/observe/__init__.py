"""Telemetry (the seam in `hooks`, which imports no OpenTelemetry; the OTel implementation in `otel*`,
loaded only when telemetry is on), logs, the ops listener and readiness, and readiness said on stdout.
Imported by the layers above; imports none of them."""
