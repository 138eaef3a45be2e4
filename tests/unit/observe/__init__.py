"""gateway/observe/: readiness, Prometheus text, OpenTelemetry hooks, redacted logs."""
