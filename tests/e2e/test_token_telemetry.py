"""End to end, the token requests in the gateway's telemetry: the gateway as a real process exporting to
a real OTLP receiver (tests/support/otlp_receiver.py), against the token-endpoint doubles.

Each token request is one CLIENT span named and described by the OTel HTTP client semantic conventions
(semconv "HTTP spans", section "HTTP client span": span name `{method}`, `http.request.method`,
`server.address`, `server.port`, `url.full`, `http.response.status_code`, `error.type` — the status
code as a string for a 4xx/5xx, the exception's type when no answer came), plus `gateway.token.grant`
(and `gateway.server` for a service credential), and one `gateway.token.duration` point by grant and
outcome (`issued`, `refused`, `failed`). Workload identity: tests/e2e/test_workload_identity.py's
doubles; service credentials: tests/e2e/test_service_credential.py's stack (an RFC 6749/8693 token
service, an MCP resource server, the gateway with its embedded relay). Both tests end with a sweep of
every exported span and point attribute, every log and output line, for every token and secret.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from gateway.observe.otel import DURATION_BUCKETS
from tests.e2e.test_service_credential import SECRET, service_stack
from tests.e2e.test_workload_identity import REFUSED, doubles, environment, line_after, routes
from tests.support.gateway_process import run_gateway
from tests.support.otlp_receiver import FAST_EXPORT, Point, Receiver, Span, otlp_receiver
from tests.support.sweep import Sweep

POINT_KEYS = {"gateway.token.grant", "gateway.token.outcome", "error.type"}
"""All a `gateway.token.duration` point may carry: no user, subject, server or URL."""


def token_spans(receiver: Receiver, service: str) -> list[Span]:
    return [span for span in receiver.named("POST") if span.service == service]


def token_points(receiver: Receiver, service: str) -> list[Point]:
    return [p for p in receiver.points if p.metric == "gateway.token.duration" and p.service == service]


def outcomes(receiver: Receiver, service: str) -> set[tuple[Any, ...]]:
    """(grant, outcome, error.type) of every token point exported so far."""
    return {
        (p.attributes["gateway.token.grant"], p.attributes["gateway.token.outcome"], p.attributes.get("error.type"))
        for p in token_points(receiver, service)
    }


def exported_values(receiver: Receiver) -> list[str]:
    """Every span name, status message, attribute and event value, every point attribute value and
    every log record the receiver holds, as text."""
    values: list[str] = []
    for span in receiver.spans:
        values += [span.name, span.status_message, *map(str, span.attributes.values())]
        values += [f"{name} {attributes}" for name, attributes in span.events]
    for point in receiver.points:
        values += map(str, point.attributes.values())
    for record in receiver.logs:
        values += [str(record.body), *map(str, record.attributes.values())]
    return values


def the_http_client_span(span: Span, *, url: str, port: int | None) -> None:
    """HTTP client span: kind CLIENT, name the method, the address, port and URL of the endpoint."""
    assert span.kind == "CLIENT"
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == port
    assert span.attributes["url.full"] == url


async def test_workload_identity_exchanges_are_post_client_spans_and_points_refused_then_issued(
    tmp_path: Path,
) -> None:
    """The first exchanges are refused (RFC 6749 §5.2 `invalid_grant`, HTTP 400, by an endpoint that
    quotes the subject token back), then one is issued: each is a root `POST` CLIENT span (a background
    exchange has no caller's span) with `gateway.token.grant` `workload_identity`; the refusals carry
    `error.type` "400" and span status Error (a 4xx on a CLIENT span), the issued one status 200 and
    no `error.type`; the histogram has a `refused`/"400" point and an `issued` one, with the gateway's
    duration buckets."""
    sweep = Sweep()
    service = "wif-tokens"
    async with contextlib.AsyncExitStack() as stack:
        receiver = await stack.enter_async_context(otlp_receiver())
        issuer, endpoint, cp = await stack.enter_async_context(doubles())
        subject = tmp_path / "token"
        subject.write_text(issuer.mint())
        endpoint.echo_subject = True
        endpoint.refuse("invalid_grant", "not accepted")
        document = json.loads(routes(cp, endpoint, subject=subject))
        document["telemetry"] = {"endpoint": receiver.url, "service_name": service}
        env = environment(endpoint, **FAST_EXPORT)
        waiting = rf"^waiting: credentials \({REFUSED}"
        gw = await stack.enter_async_context(run_gateway(json.dumps(document), tmp_path, env=env, ready=waiting))
        mark = len(gw.stdout)
        endpoint.accept()
        await line_after(gw, r"^gateway: ready$", mark)
        rid = cp.call("echo", {"text": "with an exchanged token"})
        await cp.answer(rid)
        assert cp.text(rid) == "with an exchanged token"
        wanted = {("workload_identity", "refused", "400"), ("workload_identity", "issued", None)}
        await receiver.wait_for(
            lambda r: (
                outcomes(r, service) >= wanted
                and any(s.attributes.get("http.response.status_code") == 200 for s in token_spans(r, service))
            )
        )
        assert await gw.stop() == 0
        sweep.add("gateway stdout", gw.stdout)
        sweep.add("gateway stderr", gw.stderr)
        sweep.add("OTLP exports", receiver.raw)
        sweep.add("exported values", exported_values(receiver))

    spans = token_spans(receiver, service)
    assert len(spans) == len(endpoint.exchanges)  # one span per request, no more
    refused = [s for s in spans if s.attributes.get("error.type") == "400"]
    (issued,) = [s for s in spans if s.attributes.get("http.response.status_code") == 200]
    assert refused
    assert refused[0].parent_id == ""  # the first exchange runs in the background: a root
    for span in spans:
        the_http_client_span(span, url=endpoint.url, port=endpoint.port)
        assert span.attributes["gateway.token.grant"] == "workload_identity"
        assert "gateway.server" not in span.attributes
    for span in refused:
        assert span.attributes["http.response.status_code"] == 400
        assert span.attributes["gateway.token.error"] == "invalid_grant"
        assert span.status_code == 2  # STATUS_CODE_ERROR
    assert "error.type" not in issued.attributes
    assert issued.status_code == 0  # unset
    assert outcomes(receiver, service) == wanted
    for point in token_points(receiver, service):
        assert set(point.attributes) <= POINT_KEYS
        assert point.kind == "histogram"
        assert point.unit == "s"
        assert point.bounds == list(DURATION_BUCKETS)

    secrets = {f"access token {i}": token for i, token in enumerate(endpoint.issued)}
    for i, token in enumerate(issuer.minted):
        secrets[f"subject token {i}"] = token
        secrets[f"subject token {i} signature"] = token.rsplit(".", 1)[1]
    assert endpoint.issued
    assert sweep.leaks(secrets) == []
    assert sweep.searched() > 50


async def test_service_credential_requests_are_children_of_the_call_and_points_by_outcome(tmp_path: Path) -> None:
    """On a call's path (RFC 8693 on-behalf-of exchange, RFC 6749 §4.4 client credentials) the token
    request's `POST` span is a child of that call's SERVER span (same trace id), named by grant and
    server: an exchange issued for alice, one refused for mallory (`invalid_grant`, "400"), one at a
    token endpoint that refuses connections (no status; `error.type` the exception type, outcome
    `failed`), and a client-credentials token. Nothing exported or logged holds the client secret, a
    user's token or an issued one."""
    service = "svc-tokens"
    async with otlp_receiver() as receiver:
        telemetry = {"endpoint": receiver.url, "service_name": service}
        async with service_stack(tmp_path, telemetry=telemetry) as stack:
            stack.idp.refused_subjects.add("mallory")
            alice, mallory = stack.idp.user_token("alice"), stack.idp.user_token("mallory")
            assert (await stack.whoami("obo", alice))["subject"] == "alice"
            assert (await stack.whoami("cc"))["subject"] == "mcp-gateway"
            assert (await stack.call("obo", mallory)).status_code == 403
            assert (await stack.call("down", alice)).status_code == 502
            wanted = {
                ("token_exchange", "issued", None),
                ("client_credentials", "issued", None),
                ("token_exchange", "refused", "400"),
                ("token_exchange", "failed", "ClientConnectorError"),
            }
            await receiver.wait_for(lambda r: outcomes(r, service) >= wanted and len(token_spans(r, service)) >= 4)
            await receiver.wait_for(
                lambda r: {s.parent_id for s in token_spans(r, service)} <= {s.span_id for s in r.spans}
            )
            stack.sweep()
            sweep = Sweep()
            sweep.add("OTLP exports", receiver.raw)
            sweep.add("exported values", exported_values(receiver))
            secrets = {"client secret": SECRET} | {f"token {i}": t for i, t in enumerate(stack.idp.issued)}
            token_url, requests = stack.idp.token_url, len(stack.idp.requests)

    assert outcomes(receiver, service) == wanted
    spans = token_spans(receiver, service)
    assert len(spans) == requests + 1  # one span per request: those the endpoint saw, and the unreachable one
    by_server = {(s.attributes["gateway.server"], s.attributes.get("error.type")): s for s in spans}
    assert set(by_server) == {("obo", None), ("cc", None), ("obo", "400"), ("down", "ClientConnectorError")}
    calls = {span.span_id: span for span in receiver.spans if span.service == service}
    for span in spans:
        call = calls[span.parent_id]
        assert (call.name, call.kind, call.trace_id) == ("tools/call whoami", "SERVER", span.trace_id)
        assert span.attributes["http.request.method"] == "POST"
    the_http_client_span(by_server["obo", None], url=token_url, port=urlsplit(token_url).port)
    assert by_server["obo", None].attributes["gateway.token.grant"] == "token_exchange"
    assert by_server["cc", None].attributes["gateway.token.grant"] == "client_credentials"
    assert by_server["obo", "400"].attributes["http.response.status_code"] == 400
    down = by_server["down", "ClientConnectorError"]
    assert "http.response.status_code" not in down.attributes
    assert down.status_code == 2
    assert down.attributes["url.full"].endswith("/t")
    for point in token_points(receiver, service):
        assert set(point.attributes) <= POINT_KEYS
    assert sweep.leaks(secrets) == []
    assert sweep.searched() > 50
