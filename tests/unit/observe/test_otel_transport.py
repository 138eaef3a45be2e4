"""gateway.observe.otel_transport with a real OTLP/HTTP receiver on loopback: the span exporter sends to a
plain-HTTP endpoint over one kept connection, recovers from a connection the receiver closed (the SDK's
immediate retry), keeps the SDK's retry on 503 with Retry-After and its refusal of a 400, gives up at
the deadline, and leaves every endpoint `requests` treats specially (https, proxies, .netrc logins,
credential providers) to `requests`."""

from __future__ import annotations

import http.server
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from opentelemetry.exporter.http.transport._requests import RequestsHTTPTransport
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from gateway.observe.otel_export import FastOTLPSpanExporter
from gateway.observe.otel_transport import KeepAliveTransport, keeps_alive


@dataclass
class Script:
    """What the receiver answers, request by request (then 200), and what it saw."""

    statuses: list[int] = field(default_factory=list)
    close_after: set[int] = field(default_factory=set)
    """Requests (0-based) after whose answer the receiver closes the connection without saying so."""
    stall: bool = False
    bodies: list[bytes] = field(default_factory=list)
    ports: list[int] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless closed
    script: Script

    def do_POST(self) -> None:
        script = self.script
        index = len(script.bodies)
        script.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        script.ports.append(self.client_address[1])
        script.headers.append({name.lower(): value for name, value in self.headers.items()})
        if script.stall:
            time.sleep(3)
        status = script.statuses[index] if index < len(script.statuses) else 200
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()
        if index in script.close_after:
            self.close_connection = True  # no `Connection: close`: the client learns on its next request

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, Script]]:
    script = Script()
    handler = type("Handler", (_Handler,), {"script": script})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces", script
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _spans(count: int = 3) -> list[object]:
    provider = TracerProvider()
    finished = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(finished))
    for index in range(count):
        provider.get_tracer("t").start_span(f"span {index}").end()
    return list(finished.get_finished_spans())


def _exporter(url: str, timeout: float = 10) -> FastOTLPSpanExporter:
    exporter = FastOTLPSpanExporter(endpoint=url, timeout=timeout)
    assert isinstance(exporter._client._transport, KeepAliveTransport)  # type: ignore[attr-defined]
    return exporter


def test_batches_go_over_one_kept_connection(receiver: tuple[str, Script]) -> None:
    url, script = receiver
    exporter = _exporter(url)
    for _ in range(4):
        assert exporter.export(_spans()) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    assert len(script.bodies) == 4
    assert len(set(script.ports)) == 1, "one connection for every batch"
    first = script.headers[0]
    assert first["content-type"] == "application/x-protobuf"
    assert first["user-agent"].startswith("OTel-OTLP-Exporter-Python/"), "the SDK's headers are sent"
    assert "accept" not in first, "sent by http.client, not requests (which adds Accept: */*)"
    exporter.shutdown()


def test_a_connection_the_receiver_closed_is_reopened(receiver: tuple[str, Script]) -> None:
    url, script = receiver
    script.close_after = {0, 1}
    exporter = _exporter(url)
    for _ in range(3):
        assert exporter.export(_spans()) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    assert len(script.bodies) == 3
    assert len(set(script.ports)) == 3
    exporter.shutdown()


def test_the_sdks_retry_rules_still_apply(receiver: tuple[str, Script]) -> None:
    url, script = receiver
    script.statuses = [503, 503, 200, 400]
    exporter = _exporter(url)
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    assert len(script.bodies) == 3, "503 with Retry-After is retried until it succeeds"
    assert exporter.export(_spans()) is SpanExportResult.FAILURE  # type: ignore[arg-type]
    assert len(script.bodies) == 4, "a 400 is not retried"
    exporter.shutdown()


def test_a_receiver_that_does_not_answer_fails_the_export_at_its_deadline(receiver: tuple[str, Script]) -> None:
    url, script = receiver
    script.stall = True
    exporter = _exporter(url, timeout=0.5)
    started = time.monotonic()
    assert exporter.export(_spans()) is SpanExportResult.FAILURE  # type: ignore[arg-type]
    assert time.monotonic() - started < 2.5, "the receiver's stall is not waited out"
    exporter.shutdown()


def test_endpoints_requests_treats_specially_stay_with_requests(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "http_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    assert keeps_alive("http://127.0.0.1:4318/v1/traces")
    assert not keeps_alive("https://collector.example/v1/traces")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:3128")
    assert not keeps_alive("http://collector.example:4318/v1/traces"), "a proxy applies"
    monkeypatch.setenv("NO_PROXY", "collector.example")
    assert keeps_alive("http://collector.example:4318/v1/traces"), "no_proxy covers the host"
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine collector.example login user password secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert not keeps_alive("http://collector.example:4318/v1/traces"), "a .netrc login applies"
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))
    monkeypatch.setenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER", "some_provider")
    assert not keeps_alive("http://collector.example:4318/v1/traces"), "a credential provider's session"
    monkeypatch.delenv("OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER")
    remote = FastOTLPSpanExporter(endpoint="https://collector.example/v1/traces")
    assert isinstance(remote._client._transport, RequestsHTTPTransport)  # type: ignore[attr-defined]


def test_other_urls_go_through_requests(receiver: tuple[str, Script]) -> None:
    url, script = receiver
    session = requests.Session()
    fallback = RequestsHTTPTransport(session=session)
    with pytest.raises(ValueError, match="plain http"):
        KeepAliveTransport("https://collector.example/v1/traces", fallback, session)
    transport = KeepAliveTransport("http://127.0.0.1:9/v1/traces", fallback, session)
    result = transport.request("POST", url, data=b"x", timeout=10)
    assert result.status_code == 200
    assert script.headers[0]["accept"] == "*/*", "sent by requests"
    assert transport.request("POST", "http://127.0.0.1:9/v1/traces", data=b"", timeout=0).error is not None
    transport.close()


def test_a_forked_child_opens_its_own_connection(receiver: tuple[str, Script]) -> None:
    url, script = receiver
    exporter = _exporter(url)
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    child = os.fork()
    if child == 0:  # the child: one export on a connection of its own, then out without cleanup
        ok = exporter.export(_spans()) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert exporter.export(_spans()) is SpanExportResult.SUCCESS  # type: ignore[arg-type]
    parent, forked, again = script.ports
    assert forked != parent, "the child did not write on its parent's socket"
    assert again == parent, "the parent's connection is still its own"
    exporter.shutdown()
