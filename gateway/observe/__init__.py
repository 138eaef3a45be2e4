"""Telemetry (the OpenTelemetry seam and implementation), logs, the ops listener and readiness, and
readiness said on stdout. Imported by the layers above; imports none of them."""
