"""The admin controls' telemetry hooks in process: `budget_alert` counts `gateway.budget.alerts` by budget, scope
and threshold; `call_log` turns each CallRecord into one OTLP log record (event `gateway.call`) carrying the
record's names, outcome, sizes and times, and no session id; telemetry off has neither."""

from __future__ import annotations

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor

from gateway.observe.hooks import NOOP
from gateway.observe.ops import render_prometheus
from gateway.observe.records import CallRecord
from tests.support.otel_memory import InMemoryOtel


def test_budget_alerts_are_counted_and_calls_become_log_records() -> None:
    exported = InMemoryLogRecordExporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(exported))
    built: list[int] = []

    def logs() -> tuple[object, object]:
        built.append(1)
        return logger_provider.get_logger("test"), logger_provider.shutdown

    telemetry = InMemoryOtel(tracing=False, logs=logs).telemetry
    telemetry.budget_alert("acme-daily", "tenant", 80)
    telemetry.budget_alert("acme-daily", "tenant", 80)
    telemetry.budget_alert("acme-daily", "tenant", 100)
    text = render_prometheus(telemetry.metrics_data()).decode()
    sink = telemetry.call_log()
    assert sink is not None
    assert telemetry.call_log() is sink
    assert built == [1]  # the logger provider is built once, on first use
    call = CallRecord(
        time=1_700_000_000.25,
        tunnel="t",
        channel="main",
        method="tools/call",
        outcome="error",
        status=502,
        duration_s=0.5,
        name="echo",
        session="session-id-value",
        error="upstream_unavailable",
        bytes_in=10,
    )
    sink.record(call)
    telemetry.shutdown()

    labels = 'gateway_budget="acme-daily",gateway_budget_scope="tenant"'
    assert f'gateway_budget_alerts_total{{{labels},gateway_budget_threshold="80"}} 2' in text
    assert f'gateway_budget_alerts_total{{{labels},gateway_budget_threshold="100"}} 1' in text
    (record,) = [log.log_record for log in exported.get_finished_logs()]
    assert record.event_name == "gateway.call"
    assert record.timestamp == 1_700_000_000_250_000_000
    assert record.severity_text == "WARN"
    assert record.body == "tools/call error"
    assert record.attributes is not None
    attributes = dict(record.attributes)
    assert attributes["gateway.call.name"] == "echo"
    assert attributes["gateway.call.error"] == "upstream_unavailable"
    assert attributes["gateway.call.status"] == 502
    assert attributes["gateway.call.bytes_in"] == 10
    assert "gateway.call.session" not in attributes
    assert "gateway.call.server" not in attributes  # None fields are left out
    assert "session-id-value" not in str(attributes)


def test_telemetry_off_has_no_call_log() -> None:
    assert NOOP.call_log() is None
    NOOP.budget_alert("b", "channel", 100)  # a no-op
