"""`Telemetry.token_request` (gateway/observe/otel_scopes.py `TokenSpan`): one CLIENT span per token
request, named and described by the OTel HTTP client semantic conventions (semconv "HTTP spans",
section "HTTP client span": name `{method}`, `http.request.method`, `server.address`, `server.port`,
`url.full`, `http.response.status_code`, `error.type`), and the `gateway.token.duration` histogram.

The real `WorkloadIdentity` and `ServiceCredentials` against the token-endpoint doubles on loopback
(tests/support/token_endpoint.py, oauth_token_service.py) for the outcomes a real endpoint gives; the
scope itself, fed values, for what no double can make cheaply (a timeout, a cancellation, a URL with
userinfo and a query, a 200 without a usable token).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from gateway.config.secrets import Secret
from gateway.observe.hooks import NOOP, TokenRequest
from gateway.protocol.errors import ServiceCredentialRefused
from gateway.protocol.oauth_tokens import Failed, Granted
from gateway.tunnel.subject_tokens import ReferenceToken
from gateway.tunnel.workload_identity import ExchangeSettings, WorkloadIdentity
from gateway.upstream.service_credentials import ServiceCredentials, ServiceCredentialSettings
from tests.support.oauth_token_service import TokenService
from tests.support.otel_memory import InMemoryOtel
from tests.support.token_endpoint import SubjectIssuer, TokenEndpoint
from tests.support.waiting import until

SECRET = "unit-token-secret-7731"
Point = tuple[dict[str, Any], int]


class Recorded:
    """An `OtelTelemetry` over in-memory SDK providers, and what it recorded."""

    def __init__(self, *, tracing: bool = True) -> None:
        otel = InMemoryOtel(tracing=tracing)
        self.exporter, self.reader, self.telemetry = otel.spans, otel.reader, otel.telemetry
        self.provider = otel.provider

    def spans(self) -> list[ReadableSpan]:
        return [span for span in self.exporter.get_finished_spans() if span.name == "POST"]

    def points(self) -> list[Point]:
        """`gateway.token.duration`'s points: (attributes, count)."""
        data = self.reader.get_metrics_data()
        found: list[Point] = []
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == "gateway.token.duration":
                        assert metric.unit == "s"
                        for point in metric.data.data_points:
                            found.append((dict(point.attributes or {}), point.count))  # type: ignore[union-attr]
        return found


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    rec = Recorded()
    yield rec
    rec.telemetry.shutdown()


@contextlib.asynccontextmanager
async def identity(endpoint: TokenEndpoint, token_file: Path, recorded: Recorded) -> AsyncIterator[WorkloadIdentity]:
    """The workload-identity credential, started (its first exchange is under way)."""
    async with aiohttp.ClientSession() as session:
        settings = ExchangeSettings(
            token_url=endpoint.url,
            identity_provider_id=endpoint.identity_provider_id,
            service_account_id=endpoint.service_account_id,
        )
        wi = WorkloadIdentity(settings, ReferenceToken(f"file:{token_file}"), session, telemetry=recorded.telemetry)
        wi.start()
        try:
            yield wi
        finally:
            await wi.close()


def closed_port() -> socket.socket:
    """A port bound and never listening: a connection to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


@pytest.fixture
def token_file(tmp_path: Path) -> tuple[SubjectIssuer, Path]:
    issuer = SubjectIssuer()
    path = tmp_path / "token"
    path.write_text(issuer.mint())
    return issuer, path


# --------------------------------------------------------------------------- through the real callers


async def test_an_issued_workload_identity_token_is_a_root_post_client_span_and_an_issued_point(
    recorded: Recorded, token_file: tuple[SubjectIssuer, Path]
) -> None:
    """HTTP client span: name `POST` (the method: no route template is known), kind CLIENT, the
    method, address, port and full URL, the status code, no `error.type` on success; a background
    exchange has no current span, so it is a root."""
    issuer, path = token_file
    async with TokenEndpoint(issuer) as endpoint, identity(endpoint, path, recorded) as wi:
        token = await wi.get()
    (span,) = recorded.spans()
    assert span.kind is SpanKind.CLIENT
    assert span.parent is None
    assert dict(span.attributes or {}) == {
        "http.request.method": "POST",
        "server.address": "127.0.0.1",
        "server.port": endpoint.port,
        "url.full": endpoint.url,
        "http.response.status_code": 200,
        "gateway.token.grant": "workload_identity",
    }
    assert span.status.status_code is StatusCode.UNSET
    assert recorded.points() == [({"gateway.token.grant": "workload_identity", "gateway.token.outcome": "issued"}, 1)]
    assert token not in repr(span.to_json())


async def test_a_refused_exchange_is_outcome_refused_with_the_status_as_error_type(
    recorded: Recorded, token_file: tuple[SubjectIssuer, Path]
) -> None:
    """RFC 6749 §5.2 `invalid_grant` (HTTP 400): HTTP client span `error.type` is the status code as
    a string and the span status is Error (a 4xx on a CLIENT span); the OAuth code is named too."""
    issuer, path = token_file
    async with TokenEndpoint(issuer) as endpoint:
        endpoint.refuse("invalid_grant")
        async with identity(endpoint, path, recorded):
            await until(lambda: bool(recorded.points()))
    span = recorded.spans()[0]
    attributes = dict(span.attributes or {})
    assert attributes["http.response.status_code"] == 400
    assert attributes["error.type"] == "400"
    assert attributes["gateway.token.error"] == "invalid_grant"
    assert span.status.status_code is StatusCode.ERROR
    assert recorded.points()[0][0] == {
        "gateway.token.grant": "workload_identity",
        "gateway.token.outcome": "refused",
        "error.type": "400",
    }


async def test_a_5xx_and_an_unreachable_endpoint_are_outcome_failed(
    recorded: Recorded, token_file: tuple[SubjectIssuer, Path]
) -> None:
    """A 503 (`temporarily_unavailable`) is a failure, not a refusal: `error.type` "503". A refused
    connection has no status: `error.type` is the exception's class (HTTP client span: "the
    exception type" when no response was received)."""
    issuer, path = token_file
    async with TokenEndpoint(issuer) as endpoint:
        endpoint.fail(503)
        async with identity(endpoint, path, recorded):
            await until(lambda: bool(recorded.points()))
    assert recorded.points()[0][0]["gateway.token.outcome"] == "failed"
    assert recorded.points()[0][0]["error.type"] == "503"

    down = Recorded()
    with closed_port() as sock:
        port = sock.getsockname()[1]
        async with aiohttp.ClientSession() as session:
            settings = ExchangeSettings(
                token_url=f"http://127.0.0.1:{port}/oauth/token", identity_provider_id="i", service_account_id="s"
            )
            wi = WorkloadIdentity(settings, ReferenceToken(f"file:{path}"), session, telemetry=down.telemetry)
            wi.start()
            try:
                await until(lambda: bool(down.points()))
            finally:
                await wi.close()
    span = down.spans()[0]
    attributes = dict(span.attributes or {})
    assert "http.response.status_code" not in attributes
    assert attributes["error.type"] == "ClientConnectorError"
    assert attributes["server.port"] == port
    assert span.status.status_code is StatusCode.ERROR
    assert down.points()[0][0] == {
        "gateway.token.grant": "workload_identity",
        "gateway.token.outcome": "failed",
        "error.type": "ClientConnectorError",
    }
    down.telemetry.shutdown()


async def test_an_on_behalf_of_exchange_on_a_calls_path_is_a_child_of_the_calls_span(recorded: Recorded) -> None:
    """RFC 8693 exchange begun while a call's span is current: its span is that span's child (same
    trace id), names the server and the grant, and holds neither the user's token nor the secret."""
    async with TokenService(client_id="gw", client_secret=SECRET) as idp, aiohttp.ClientSession() as session:
        settings = ServiceCredentialSettings(
            token_url=idp.token_url,
            on_behalf_of=True,
            client_id="gw",
            client_secret=Secret(SECRET, "env:S"),
            audience="api://notes",
        )
        credentials = ServiceCredentials("notes", settings, session, telemetry=recorded.telemetry)
        alice, mallory = idp.user_token("alice"), idp.user_token("mallory")
        idp.refused_subjects.add("mallory")
        assert recorded.provider is not None
        tracer = recorded.provider.get_tracer("test")
        with tracer.start_as_current_span("tools/call whoami", kind=SpanKind.SERVER) as call:
            authorized = await credentials.authorize({"Authorization": [f"Bearer {alice}"]}, {})
            with pytest.raises(ServiceCredentialRefused):
                await credentials.authorize({"Authorization": [f"Bearer {mallory}"]}, {})
        await credentials.close()
    issued, refused = recorded.spans()
    for span in (issued, refused):
        assert span.parent is not None
        assert span.parent.span_id == call.get_span_context().span_id
        assert span.context.trace_id == call.get_span_context().trace_id
        attributes = dict(span.attributes or {})
        assert attributes["gateway.token.grant"] == "token_exchange"
        assert attributes["gateway.server"] == "notes"
        assert attributes["url.full"] == idp.token_url
    assert dict(refused.attributes or {})["error.type"] == "400"
    outcomes = {(p["gateway.token.outcome"], p.get("error.type")): n for p, n in recorded.points()}
    assert outcomes == {("issued", None): 1, ("refused", "400"): 1}
    exported = repr([span.to_json() for span in recorded.spans()]) + repr(recorded.points())
    for secret in (SECRET, alice, mallory, authorized.token, *idp.issued):
        assert secret not in exported


# --------------------------------------------------------------------------- the scope, fed values


def test_the_url_loses_userinfo_query_and_fragment_and_the_port_defaults_to_the_schemes() -> None:
    """HTTP client span `url.full`: credentials are not to be recorded; the query string is left out
    here (a token endpoint's query may carry a tenant key). `server.port` is the scheme's default."""
    rec = Recorded()
    request = TokenRequest("client_credentials", "https://user:pw@IdP.example/oauth2/token?key=k1#frag", "notes")
    with rec.telemetry.token_request(request) as scope:
        scope.settled(200, Granted("an-access-token", 60.0))
    (span,) = rec.spans()
    attributes = dict(span.attributes or {})
    assert attributes["url.full"] == "https://IdP.example/oauth2/token"
    assert (attributes["server.address"], attributes["server.port"]) == ("idp.example", 443)
    assert attributes["gateway.server"] == "notes"
    assert "user:pw" not in span.to_json()
    rec.telemetry.shutdown()


@pytest.mark.parametrize(
    ("status", "outcome", "expected"),
    [
        (200, Failed("the token endpoint's answer is not a token answer"), ("failed", "invalid_answer")),
        (302, Failed("a redirect"), ("failed", "302")),
        (429, Failed("slow down"), ("failed", "429")),
        (401, Failed("refused", refused=True, code="some_vendor_code"), ("refused", "401")),
    ],
)
def test_every_answer_without_a_token_has_an_outcome_and_an_error_type(
    status: int, outcome: Failed, expected: tuple[str, str]
) -> None:
    rec = Recorded()
    with rec.telemetry.token_request(TokenRequest("workload_identity", "http://127.0.0.1:9/t")) as scope:
        scope.settled(status, outcome)
    ((attributes, count),) = rec.points()
    assert (attributes["gateway.token.outcome"], attributes["error.type"]) == expected
    assert count == 1
    span_attributes = dict(rec.spans()[0].attributes or {})
    assert span_attributes["error.type"] == expected[1]
    if outcome.code is not None:
        assert span_attributes["gateway.token.error"] == "_OTHER"  # not a registered code: not repeated
    rec.telemetry.shutdown()


async def test_a_timeout_is_failed_by_class_and_a_cancelled_request_counts_nothing() -> None:
    rec = Recorded()
    request = TokenRequest("token_exchange", "http://127.0.0.1:9/t", "notes")
    with pytest.raises(TimeoutError), rec.telemetry.token_request(request):
        async with asyncio.timeout(0):
            await asyncio.Event().wait()
    assert rec.points() == [
        ({"gateway.token.grant": "token_exchange", "gateway.token.outcome": "failed", "error.type": "TimeoutError"}, 1)
    ]
    waiting = asyncio.Event()

    async def cancelled() -> None:
        with rec.telemetry.token_request(request):
            waiting.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(cancelled())
    await waiting.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sum(count for _, count in rec.points()) == 1  # the timeout's only
    assert dict(rec.spans()[-1].attributes or {})["gateway.token.cancelled"] is True
    rec.telemetry.shutdown()


def test_without_tracing_the_histogram_is_kept_and_noop_does_nothing() -> None:
    rec = Recorded(tracing=False)
    request = TokenRequest("client_credentials", "http://127.0.0.1:9/t", "notes")
    with rec.telemetry.token_request(request) as scope:
        scope.settled(200, Granted("t", 60.0))
    assert rec.spans() == []
    assert rec.points() == [({"gateway.token.grant": "client_credentials", "gateway.token.outcome": "issued"}, 1)]
    rec.telemetry.shutdown()
    with NOOP.token_request(request) as scope:
        scope.settled(200, Granted("t", 60.0))
    assert NOOP.token_request(request) is NOOP.token_request(request)  # nothing built per request
