"""A scripted Secure MCP Tunnel v1 control plane, on loopback, recording everything the gateway does.

`ScriptedControlPlane` serves the v1 gateway API (`GET /v1/tunnels/{id}`, `GET …/poll`,
`POST …/response`) on 127.0.0.1:0 with aiohttp. Tests script it: queue commands with any
fields, make the next polls or response POSTs fail with chosen statuses (and `Retry-After`),
go down for a while, and then count, at the control plane and on its own monotonic clock,
what the gateway did: every poll (query, headers, arrival and reply times, commands handed
out, commands outstanding at arrival) and every response POST (bytes, headers, status).

It behaves like the service: a terminal frame for a request already final, or for one never
handed out, is 404 `pending_request_not_found`; a wrong shard token is 400. Every body it
returns is validated against `openapi.json` (commands deliberately off-contract are marked
`contract=False`), and every body it receives is checked against the contract: anything
wrong lands in `violations`, which tests assert empty.

What it records and the replies it is scripted with are in `cp_records`; the gateway process it serves is
started by `gateway_process.run_gateway`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Final

from aiohttp import web
from multidict import CIMultiDict

from tests.support.cp_records import (
    ERROR_CODES,
    Command,
    PollRecord,
    PostRecord,
    PostRule,
    Reply,
    ReplySpec,
    as_reply,
    now,
)
from tests.support.openapi import validate, validate_extended, validate_failure

TUNNEL: Final = "tunnel_scripted"
KEY: Final = "scripted-gateway-key-0001"
RESPONSE_HEADERS: Final = frozenset(
    {
        "content-type",
        "mcp-session-id",
        "mcp-protocol-version",
        "last-event-id",
        "access-control-expose-headers",
        "www-authenticate",
    }
)
"""The response headers the contract lets through (`resp_headers`)."""


class _Dropped(web.Response):
    """What a handler returns after closing its connection unanswered (recorded as status 0)."""


class ScriptedControlPlane:
    """The v1 gateway API on loopback, scripted and recording. Use as an async context manager."""

    def __init__(
        self,
        *,
        tunnel_id: str = TUNNEL,
        key: str = KEY,
        ssl_context: ssl.SSLContext | None = None,
        hold_s: float = 1.0,
        authorize: Callable[[str], bool] | None = None,
    ) -> None:
        self.tunnel_id = tunnel_id
        self.keys: dict[str, set[str]] = {"poll": {key}, "post": {key}, "metadata": {key}}
        self.authorize = authorize
        """When set, it alone decides which bearer tokens are good on every endpoint, instead of
        `keys` (e.g. the access tokens a token-endpoint double issued and that have not expired)."""
        self.hold_s = hold_s
        """Longest a poll is held when the queue is empty (the service bounds `timeout_ms`)."""
        self._ssl = ssl_context
        self.handshakes = 0
        """TLS handshakes begun (ClientHello received), whether or not they succeeded."""
        if ssl_context is not None:
            ssl_context.sni_callback = self._hello
        self.polls: list[PollRecord] = []
        self.posts: list[PostRecord] = []
        self.metadata_requests = 0
        self.violations: list[str] = []
        """What the gateway did against the contract, as the control plane saw it."""
        self.commands: dict[str, Command] = {}
        self._queue: deque[Command] = deque()
        self._final: dict[str, PostRecord] = {}
        self._handed: set[str] = set()
        self._poll_script: deque[Reply] = deque()
        self._post_rules: list[PostRule] = []
        self._alternate: tuple[int, bool, bool] | None = None  # (status, fail next, terminal only)
        self.force_batch: int | None = None
        """Hand out up to this many commands in the next batch, whatever `limit` says (then reset)."""
        self.body_delay_s: float = 0.0
        """Delay the next non-empty poll body by this long after its headers (then reset)."""
        self._ids = itertools.count(1)
        self._tick = asyncio.Event()
        self._enqueued = asyncio.Event()
        self._down: str | None = None
        self._went_down = asyncio.Event()
        self._protocols: set[Any] = set()
        self._active: set[Any] = set()
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self.port = 0

    # ------------------------------------------------------------------ lifetime

    def _hello(self, sock: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        self.handshakes += 1

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def __aenter__(self) -> ScriptedControlPlane:
        app = web.Application(middlewares=[self._track])
        base = f"/v1/tunnels/{self.tunnel_id}"
        app.router.add_get(base, self._metadata)
        app.router.add_get(f"{base}/poll", self._poll)
        app.router.add_post(f"{base}/response", self._response)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._down = "closing"
        self._went_down.set()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl, reuse_address=True)
        await self._site.start()
        self.port = self._runner.addresses[-1][1]

    # ------------------------------------------------------------------ scripting: commands

    def enqueue(
        self,
        jsonrpc: dict[str, Any] | None = None,
        *,
        request_id: str | None = None,
        channel: str | None = None,
        response_timeout: str | None = None,
        headers: dict[str, list[str]] | None = None,
        command_type: str | None = "jsonrpc",
        contract: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> str:
        """Queue one command; returns its request_id. `contract=False` marks a command that is
        off-contract on purpose (malformed `response_timeout`, unknown `command_type` …)."""
        n = next(self._ids)
        request_id = request_id or f"req_{n:04d}"
        shard_token = f"shard:{n}:{os.urandom(4).hex()}"
        body: dict[str, Any] = {
            "request_id": request_id,
            "shard_token": shard_token,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        if command_type is not None:
            body["command_type"] = command_type
        if channel is not None:
            body["channel"] = channel
        if response_timeout is not None:
            body["response_timeout"] = response_timeout
        if headers is not None:
            body["headers"] = headers
        if jsonrpc is not None:
            body["jsonrpc"] = jsonrpc
        body.update(extra or {})
        command = Command(request_id, shard_token, channel, body, contract)
        if contract:  # the contract, plus the official client's `oauth_discovery` (tests/openapi.py)
            validate_extended("PolledCommandList", {"commands": [body]})
        self.commands[request_id] = command
        self._queue.append(command)
        self._enqueued.set()
        return request_id

    def enqueue_raw(
        self,
        members: bytes,
        *,
        request_id: str | None = None,
        shard_token: str | None = None,
        envelope: bool = True,
        channel: str | None = None,
    ) -> str:
        """Queue a command given as raw JSON text (deep nesting, lone surrogates, wrong types: what
        `json.dumps` cannot or will not write); returns its request_id. With `envelope`, `members`
        are the object's members after `request_id` and `shard_token`; without, the whole command
        (`request_id` and `shard_token` then say what it holds; `channel` is what responses must echo).
        Never validated against the contract."""
        n = next(self._ids)
        request_id = request_id or f"req_{n:04d}"
        shard_token = shard_token or f"shard:{n}:{os.urandom(4).hex()}"
        if envelope:
            head = json.dumps({"request_id": request_id, "shard_token": shard_token}).encode()[:-1]
            raw = head + (b"," + members if members else b"") + b"}"
        else:
            raw = members
        command = Command(request_id, shard_token, channel, {}, False, raw=raw)
        self.commands[request_id] = command
        self._queue.append(command)
        self._enqueued.set()
        return request_id

    def call(
        self, tool: str, arguments: dict[str, Any] | None = None, *, progress: str | None = None, **options: Any
    ) -> str:
        """Queue a `tools/call` (JSON-RPC id = the request_id) and return the request_id."""
        request_id = options.pop("request_id", None) or f"req_{tool}_{next(self._ids):04d}"
        params: dict[str, Any] = {"name": tool, "arguments": arguments or {}}
        if progress is not None:
            params["_meta"] = {"progressToken": progress}
        message = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}
        return self.enqueue(message, request_id=request_id, **options)

    def notify(self, method: str, params: dict[str, Any] | None = None, **options: Any) -> str:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        return self.enqueue(message, **options)

    # ------------------------------------------------------------------ scripting: failures

    def fail_polls(self, *replies: ReplySpec) -> None:
        """Answer the next polls with these replies, in order."""
        self._poll_script.extend(as_reply(r) for r in replies)

    def fail_posts(self, *replies: ReplySpec, request_id: str | None = None, resp_type: str | None = None) -> None:
        """Answer the next response POSTs matching `request_id`/`resp_type` with these replies."""
        self._post_rules.append(PostRule(deque(as_reply(r) for r in replies), request_id, resp_type))

    def fail_every_other_post(self, status: int = 503, *, terminal_only: bool = False) -> None:
        """Deterministically fail every other response POST (the first one fails)."""
        self._alternate = (status, True, terminal_only)

    def reset_scripts(self) -> None:
        self._poll_script.clear()
        self._post_rules.clear()
        self._alternate = None
        self.force_batch = None
        self.body_delay_s = 0.0

    async def go_down(self, mode: str = "refuse") -> None:
        """Become unreachable. `refuse`: stop listening and close every connection (requests in
        progress are answered first); `drop`: keep accepting, close every connection unanswered."""
        assert mode in ("refuse", "drop")
        self._down = mode
        self._went_down.set()
        if mode == "refuse" and self._site is not None:
            await self._site.stop()
            self._site = None
        for protocol in list(self._protocols):
            # Requests in progress are answered, then their connection closes (see `_track`).
            if protocol not in self._active and protocol.transport is not None:
                protocol.transport.close()
        self._protocols = set(self._active)

    async def come_up(self) -> None:
        if self._down == "refuse":
            await self._listen()
        self._down = None
        self._went_down = asyncio.Event()

    @contextlib.asynccontextmanager
    async def outage(self, mode: str = "refuse") -> AsyncIterator[None]:
        await self.go_down(mode)
        try:
            yield
        finally:
            await self.come_up()

    # ------------------------------------------------------------------ counting

    def attempts(self, request_id: str, resp_type: str | None = None) -> list[PostRecord]:
        """Every response POST for a request, in arrival order (retries included)."""
        return [p for p in self.posts if p.request_id == request_id and (resp_type is None or p.resp_type == resp_type)]

    def terminals(self, request_id: str) -> list[PostRecord]:
        """Terminal frames the control plane accepted for a request (exactly one when delivered)."""
        return [p for p in self.posts if p.request_id == request_id and p.terminal and p.accepted]

    def notifies(self, request_id: str) -> list[PostRecord]:
        return [p for p in self.posts if p.request_id == request_id and p.resp_type == "jsonrpc_notify"]

    def answered(self, request_id: str) -> bool:
        return request_id in self._final

    def duplicates(self) -> dict[str, int]:
        """Requests whose terminal frame arrived again after one was accepted and acknowledged:
        request_id -> extra copies. (A re-send after a scripted lost acknowledgement is the
        contract working, not a duplicate: see `redeliveries`.)"""
        extra: dict[str, int] = {}
        for post in self.posts:
            rid = post.request_id
            if post.after_final and rid is not None and not self._final[rid].lost_ack:
                extra[rid] = extra.get(rid, 0) + 1
        return extra

    def redeliveries(self, request_id: str) -> list[PostRecord]:
        """Frames for a request that arrived after its terminal frame was accepted (answered 404)."""
        return [p for p in self.posts if p.request_id == request_id and p.after_final]

    def outstanding(self) -> set[str]:
        return self._handed - set(self._final)

    def handed(self) -> set[str]:
        return set(self._handed)

    def payload(self, request_id: str) -> dict[str, Any]:
        """The accepted terminal payload of a request."""
        final = self._final[request_id]
        assert final.payload is not None
        return final.payload

    def result(self, request_id: str) -> Any:
        """`resp_json.result` of the accepted terminal frame."""
        return self.payload(request_id)["resp_json"]["result"]

    def text(self, request_id: str) -> str:
        """The first text content of a tools/call result."""
        return str(self.result(request_id)["content"][0]["text"])

    async def until(self, predicate: Callable[[], bool], within_s: float = 30.0, what: str = "condition") -> None:
        """Wait (event-driven) until `predicate()` holds after something was recorded."""
        deadline = now() + within_s
        while not predicate():
            remaining = deadline - now()
            if remaining <= 0:
                raise AssertionError(f"timed out after {within_s}s waiting for {what}")
            tick = self._tick
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(tick.wait(), min(remaining, 0.5))

    async def answer(self, request_id: str, within_s: float = 30.0) -> dict[str, Any]:
        await self.until(lambda: self.answered(request_id), within_s, f"a terminal frame for {request_id}")
        return self.payload(request_id)

    async def answers(self, request_ids: Iterable[str], within_s: float = 60.0) -> list[dict[str, Any]]:
        ids = list(request_ids)
        await self.until(lambda: all(self.answered(r) for r in ids), within_s, f"terminal frames for {len(ids)}")
        return [self.payload(r) for r in ids]

    async def polls_after(self, index: int, count: int = 1, within_s: float = 30.0) -> None:
        await self.until(lambda: len(self.polls) >= index + count, within_s, f"{count} more polls")

    async def quiet(self, seconds: float) -> None:
        """Let `seconds` pass on the control plane's clock (only to prove an absence)."""
        await asyncio.sleep(seconds)

    def _changed(self) -> None:
        tick, self._tick = self._tick, asyncio.Event()
        tick.set()

    # ------------------------------------------------------------------ HTTP handlers

    @web.middleware
    async def _track(self, request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
        protocol = request.protocol
        self._protocols.add(protocol)
        self._active.add(protocol)
        try:
            if self._down is not None:
                return self._drop(request)
            response: web.StreamResponse = await handler(request)
            if self._down is not None:
                response.force_close()
            return response
        finally:
            self._active.discard(protocol)

    def _drop(self, request: web.Request) -> web.StreamResponse:
        """Close the connection without an answer."""
        request.protocol.force_close()
        if request.transport is not None:
            request.transport.abort()
        return _Dropped(status=503)

    def _authorized(self, request: web.Request, endpoint: str) -> bool:
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer "):
            return False
        if self.authorize is not None:
            return self.authorize(auth[7:])
        return auth[7:] in self.keys[endpoint]

    def _error(self, reply: Reply, message: str = "scripted failure") -> web.Response:
        if reply.body is not None:
            return web.Response(status=reply.status, body=reply.body, content_type="application/json")
        type_, code = ERROR_CODES.get(reply.status, ("server_error", "tunnel_transport_unavailable"))
        body = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        validate("APIErrorResponse", body)
        headers = {"Retry-After": reply.retry_after} if reply.retry_after is not None else {}
        return web.json_response(body, status=reply.status, headers=headers)

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_requests += 1
        if not self._authorized(request, "metadata"):
            return self._error(Reply(401), "invalid tunnel api key")
        body = {"id": self.tunnel_id, "name": "scripted", "description": "scripted control plane for tests"}
        validate("TunnelClientMetadata", body)
        return web.json_response(body)

    async def _poll(self, request: web.Request) -> web.StreamResponse:
        query: dict[str, list[str]] = {}
        for name, value in request.query.items():
            query.setdefault(name, []).append(value)
        record = PollRecord(len(self.polls), now(), query, CIMultiDict(request.headers), len(self.outstanding()))
        if request.transport is not None:
            record.peer_cert = request.transport.get_extra_info("peercert")
        self.polls.append(record)
        self._changed()
        try:
            response = await self._poll_answer(request, record)
        except BaseException:
            record.status = 0
            raise
        finally:
            record.replied, record.replied_wall = now(), time.time()
            self._changed()
        record.status = 0 if isinstance(response, _Dropped) else response.status
        return response

    async def _poll_answer(self, request: web.Request, record: PollRecord) -> web.StreamResponse:
        self._check_poll(record)
        if self._poll_script:
            reply = self._poll_script.popleft()
            if reply.drop:
                return self._drop(request)
            return self._error(reply)
        if not self._authorized(request, "poll"):
            return self._error(Reply(401), "invalid tunnel api key")
        limit = record.limit or 1
        timeout_s = int(record.query.get("timeout_ms", ["1000"])[0] or 0) / 1000
        wait_until = record.arrived + min(timeout_s, self.hold_s)
        went_down = self._went_down
        while not self._queue and self._down is None:
            remaining = wait_until - now()
            if remaining <= 0:
                break
            self._enqueued.clear()
            enqueued = asyncio.ensure_future(self._enqueued.wait())
            down = asyncio.ensure_future(went_down.wait())
            try:
                await asyncio.wait({enqueued, down}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
            finally:
                enqueued.cancel()
                down.cancel()
        if self._down == "drop":
            return self._drop(request)
        if not self._queue or self._down is not None:
            return web.Response(status=204)
        count = self.force_batch or limit
        self.force_batch = None
        batch = [self._queue.popleft() for _ in range(min(count, len(self._queue)))]
        for command in batch:
            command.handed_at = now()
            self._handed.add(command.request_id)
            record.handed.append(command.request_id)
        validate_extended("PolledCommandList", {"commands": [c.body for c in batch if c.contract]})
        listed = b",".join(c.raw if c.raw is not None else json.dumps(c.body).encode() for c in batch)
        body = b'{"commands":[%s]}' % listed
        delay, self.body_delay_s = self.body_delay_s, 0.0
        if not delay:
            return web.Response(body=body, content_type="application/json")
        # Headers (and one byte of JSON whitespace) now, the commands later: the deadline is
        # anchored at the headers' receipt.
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        await response.write(b" ")
        await asyncio.sleep(delay)
        await response.write(body)
        await response.write_eof()
        return response

    def _check_poll(self, record: PollRecord) -> None:
        limit = record.query.get("limit", [])
        if len(limit) != 1 or not limit[0].isdigit() or not 1 <= int(limit[0]) <= 25:
            self.violations.append(f"poll {record.index}: limit {limit} is not one integer in 1..25")
        timeout = record.query.get("timeout_ms", [])
        if len(timeout) != 1 or not timeout[0].isdigit():
            self.violations.append(f"poll {record.index}: timeout_ms {timeout} is not one integer")
        self._check_identity(record.headers, f"poll {record.index}")

    def _check_identity(self, headers: CIMultiDict[str], where: str) -> None:
        for name in ("X-Tunnel-Client-Name", "X-Tunnel-Client-Version", "X-Tunnel-Client-Instance-Id"):
            if not headers.get(name):
                self.violations.append(f"{where}: no {name}")
        if "application/json" not in headers.get("Accept", ""):
            self.violations.append(f"{where}: Accept is not application/json")
        if not headers.get("Authorization", "").startswith("Bearer "):
            self.violations.append(f"{where}: no bearer Authorization")

    async def _response(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        record = PostRecord(len(self.posts), now(), body, CIMultiDict(request.headers), None)
        self.posts.append(record)
        try:
            response = self._response_answer(request, record)
        finally:
            self._changed()
        record.status = 0 if isinstance(response, _Dropped) else response.status
        return response

    def _response_answer(self, request: web.Request, record: PostRecord) -> web.StreamResponse:
        where = f"post {record.index}"
        try:
            payload = json.loads(record.body)
        except ValueError:
            self.violations.append(f"{where}: body is not JSON")
            return self._error(Reply(400), "body is not JSON")
        record.payload = payload if isinstance(payload, dict) else None
        self._check_post(record, where)
        lose_ack = False
        for rule in self._post_rules:
            if rule.replies and rule.matches(record):
                reply = rule.replies.popleft()
                if reply.drop and reply.status == 200:
                    lose_ack = True
                    break
                if reply.drop:
                    return self._drop(request)
                return self._error(reply)
        if self._alternate is not None and (record.terminal or not self._alternate[2]):
            status, fail, terminal_only = self._alternate
            self._alternate = (status, not fail, terminal_only)
            if fail:
                return self._error(Reply(status))
        if not self._authorized(request, "post"):
            return self._error(Reply(401), "invalid tunnel api key")
        request_id = record.request_id
        command = self.commands.get(request_id or "")
        if command is None or request_id not in self._handed:
            self.violations.append(f"{where}: a response for {request_id!r}, which was never handed out")
            return self._error(Reply(404), "pending request not found")
        if record.headers.get("X-Tunnel-Shard-Token") != command.shard_token:
            self.violations.append(f"{where}: wrong or missing X-Tunnel-Shard-Token for {request_id}")
            return self._error(Reply(400), "shard token mismatch")
        if request_id in self._final:
            record.after_final = True
            return self._error(Reply(404), "pending request not found")
        if record.terminal:
            self._final[request_id] = record
        if lose_ack:
            record.lost_ack = True
            return self._drop(request)
        ack = {"status": "ok"}
        validate("TunnelResponseAck", ack)
        return web.json_response(ack)

    def _check_post(self, record: PostRecord, where: str) -> None:
        payload = record.payload
        if payload is None:
            self.violations.append(f"{where}: body is not a JSON object")
            return
        try:  # the contract, plus the official client's `oauth_discovery_response` (tests/openapi.py)
            validate_extended("TunnelResponsePayload", payload)
        except Exception as exc:  # jsonschema.ValidationError
            self.violations.append(f"{where}: not a TunnelResponsePayload: {exc}")
        if "shard_token" in payload:
            self.violations.append(f"{where}: shard_token in the body")
        command = self.commands.get(str(payload.get("request_id")))
        if command is not None and payload.get("channel") != ("main" if command.channel is None else command.channel):
            self.violations.append(f"{where}: channel {payload.get('channel')!r} not echoed from the command")
        if not record.headers.get("Content-Type", "").startswith("application/json"):
            self.violations.append(f"{where}: Content-Type is not application/json")
        self._check_identity(record.headers, where)
        headers = payload.get("resp_headers") or {}
        if not isinstance(headers, dict) or not set(map(str.lower, headers)) <= RESPONSE_HEADERS:
            self.violations.append(f"{where}: resp_headers beyond the allowlist: {sorted(headers)}")
        error = (payload.get("resp_json") or {}).get("error") if isinstance(payload.get("resp_json"), dict) else None
        if isinstance(error, dict) and isinstance(error.get("data"), dict) and "tunnel_failure" in error["data"]:
            try:
                validate_failure(error["data"])
            except Exception as exc:  # jsonschema.ValidationError
                self.violations.append(f"{where}: invalid tunnel_failure: {exc}")
            if error.get("code") != -32603:
                self.violations.append(f"{where}: tunnel_failure on an error that is not -32603")
