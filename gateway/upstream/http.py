"""The Streamable HTTP transport: one MCP server reached over HTTP(S).
Uses a shared aiohttp session it does not own; knows nothing of the tunnel.

Owns the HTTP side of MCP for one server: the era probe (`server/discover`,
falling back to `initialize`; a 401 means the server is up and wants the
user's token, its era learned from the first authorized call), the gateway's
own legacy session and its calls' lifecycle (cancel, renew, end), and its OAuth
metadata (`gateway.upstream.oauth_discovery`). Request headers are built in
`http_headers`, answers read into `Notify`/`Reply` frames in `http_answers` (a
401's `WWW-Authenticate` kept); a `service_credential` swaps the
user's token for the gateway's (`gateway.upstream.service_credentials`). aiohttp failures become
`UpstreamError`s in `gateway.upstream.http_errors`, nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from typing import Final
from urllib.parse import urlsplit

import aiohttp
import msgspec
from msgspec import UNSET, Raw
from multidict import CIMultiDict

from gateway.config.routing import HttpSpec
from gateway.protocol.eras import MODERN_VERSION, Bridge
from gateway.protocol.errors import UpstreamError, UpstreamHttpError, UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.headers import (
    AUTHORIZATION,
    METHOD_HEADER,
    SESSION_HEADER,
    VERSION_HEADER,
)
from gateway.protocol.mcp import Call, Era, Frame, Reply, UpstreamInfo
from gateway.protocol.oauth import MetadataCodec
from gateway.protocol.wire import (
    Headers,
    JsonRpcMessage,
    allowed_response_headers,
    header_value,
)
from gateway.upstream.base import Upstream, within
from gateway.upstream.egress import Egress, proxy_for
from gateway.upstream.environment import ChildEnvironment
from gateway.upstream.http_answers import AnswerReader, challenge, response_headers
from gateway.upstream.http_errors import map_aiohttp_errors, unaddressable
from gateway.upstream.http_headers import RequestHeaders, valid_value
from gateway.upstream.oauth_discovery import MetadataFetcher
from gateway.upstream.process import SupervisedProcess, end_task
from gateway.upstream.service_credentials import ServiceCredentials

__all__ = ["HttpUpstream", "map_aiohttp_errors"]

log = logging.getLogger(__name__)


PROBE_ID: Final = Raw(b'"gw-probe"')
INIT_ID: Final = Raw(b'"gw-init"')
CANCEL_TIMEOUT_S: Final = 1.0
"""Budget for the best-effort `notifications/cancelled` after an abandoned legacy call."""
PROBE_BACKOFF_START_S: Final = 0.2
"""First pause before probing a down server again; doubles up to `restart_backoff_max_s`."""
_UNREACHABLE: Final = frozenset({"connect", "dns", "tls"})
"""Failure sources that mean the server cannot be reached at all (as opposed to one failed call)."""
CLOSE_TIMEOUT_S: Final = 2.0
"""Budget for the best-effort DELETE of the gateway's own session at close."""


# --------------------------------------------------------------------------- the transport


class HttpUpstream(Upstream):
    """A Streamable HTTP MCP server, either era, over a shared aiohttp session."""

    transport = "http"

    def __init__(
        self,
        name: str,
        spec: HttpSpec,
        *,
        session: aiohttp.ClientSession,
        bridge: Bridge,
        max_message_bytes: int,
        extra_headers: dict[str, str],
        ready_timeout_s: float = 30.0,
        request_timeout_s: float | None = None,
        egress: Egress | None = None,
        reprobe_max_s: float = 30.0,
        service_credentials: ServiceCredentials | None = None,
        environment: ChildEnvironment | None = None,
    ) -> None:
        super().__init__(name, ready_timeout_s)
        parts = urlsplit(spec.url)
        self._where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        """host:port for operator messages (never the userinfo, path or query)."""
        self._reprobe_max_s = reprobe_max_s
        self._watch: asyncio.Task[None] | None = None
        self._process = (
            None
            if spec.spawn is None
            else SupervisedProcess(
                name, spec.spawn, backoff_max_s=reprobe_max_s, on_exit=self._process_exited, environment=environment
            )
        )
        self._request_timeout_s = request_timeout_s
        self._ssl: ssl.SSLContext | bool = egress.ssl if egress else True
        self._proxy = egress.proxy if egress else None
        self._url = spec.url
        self._challenge: Headers = {}
        """The `WWW-Authenticate` of the 401 the gateway's own probe got: what a caller without
        credentials is answered while the server `needs_authorization`."""
        self._metadata = MetadataFetcher(
            name,
            spec.url,
            session,
            MetadataCodec(bridge.codec),
            ssl=self._ssl,
            proxy_for=(lambda url: proxy_for(url, spec)) if egress is not None else (lambda url: None),
            headers=extra_headers,
            request_timeout_s=request_timeout_s,
        )
        self._http = session
        self._service = service_credentials
        """Where the server takes a token the gateway obtains instead of the user's (`service_credential`)."""
        self._bridge = bridge
        self._codec = bridge.codec
        self._headers = RequestHeaders(bridge, extra_headers)
        self._answers = AnswerReader(name, bridge.codec, max_message_bytes)
        self._session_id: str | None = None
        """The gateway's own session with a handshake-era server (None: modern, or none issued)."""
        self._renewing = asyncio.Lock()
        self._probing = asyncio.Lock()
        self._next_id = 0
        # Deadlines belong to the dispatcher: no total or read timeout here (SSE
        # streams may idle); connect timeouts stay as the shared session has them.
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_read=None, connect=session.timeout.connect, sock_connect=session.timeout.sock_connect
        )

    @property
    def holds_sessions(self) -> bool:
        return self._info is not None and self._info.era is Era.LEGACY

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start the spawned process (if any) and keep probing in the background while the server is down.

        Returns after the first probe (raising its failure), or, for a spawned
        server, once it is up or `startup_timeout_s` passed (its process needs a
        moment to listen).
        """
        if self._process is not None:
            self._process.start()
        if self._watch is None:
            self._watch = asyncio.create_task(self._keep_probing(), name=f"http-probe:{self.name}")
        if self._process is None:
            async with self._probing:
                await self.probe()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), self._ready_timeout_s)

    async def probe(self, authorization: str | None = None) -> None:
        """Probe the era: `server/discover` first, `initialize` when the server does not speak 2026-07-28.

        Connection failures raise UpstreamUnavailable (the server's era is not
        decided by a network error) and leave the upstream down with the reason
        in `problem`; calling it again retries. A 401 leaves it up and wanting
        each client's credentials (`needs_authorization`): then a probe with a
        client's `authorization` learns the era, keeps no session opened with
        that client's token, and lets its refusal (401, 403) reach that client
        without changing the server's state.
        """
        try:
            info = await self._discover(authorization)
            session_id = None
            if info is None:
                info, session_id = await self._initialize(authorization)
        except UpstreamHttpError as exc:
            self._session_id = None
            if authorization is not None:
                raise  # this client's credentials were refused; the server is as it was
            if exc.resp_code != 401:
                self._down(exc.problem(self._where))
                raise
            self._challenge = exc.headers
            if not self.needs_authorization:
                log.warning(
                    "server %r requires authorization (HTTP 401 to the gateway's probe): up; its era is learned "
                    "from the first call that carries a client's credentials",
                    self.name,
                )
            self._requires_authorization()
            return
        except UpstreamError as exc:
            self._session_id = None
            self._down(exc.problem(self._where))
            raise
        except BaseException:
            self._session_id = None
            self._down()
            raise
        if authorization is not None:
            await self._end_session_of(session_id, info, authorization)
            session_id = None
            if self._info is None:
                log.info("server %r: %s era, learned from the first authorized call", self.name, info.era.value)
        self._session_id = session_id
        self._up(info)

    async def _keep_probing(self) -> None:
        """While the server is down, probe it again with capped backoff, so readiness follows it."""
        delay = PROBE_BACKOFF_START_S
        while True:
            if self.ready:
                delay = PROBE_BACKOFF_START_S
                await self._down_event.wait()
                continue
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._reprobe_max_s)
            if not self.ready:
                async with self._probing:
                    if not self.ready:
                        with contextlib.suppress(UpstreamError, TimeoutError):
                            async with asyncio.timeout(self._ready_timeout_s):
                                await self.probe()

    def _process_exited(self, reason: str) -> None:
        self._session_id = None
        self._down(f"its process {reason}")

    async def wait_info(self, credentials: Headers | None = None) -> UpstreamInfo:
        if self._service is None:
            return await self._wait_info(credentials)
        return await self._service.retrying(credentials or {}, self._challenge, self._wait_info)

    async def _wait_info(self, credentials: Headers | None = None) -> UpstreamInfo:
        """The server's info; a server that was down is probed again, one probe at a time.

        A server that `needs_authorization` answers a caller without an `Authorization` header
        with its 401 challenge (UpstreamHttpError: nothing it said to an authorized client is
        told to an anonymous one), and learns its era from the first caller with one."""
        authorization = header_value(credentials or {}, AUTHORIZATION)
        if self.needs_authorization and authorization is None:
            raise UpstreamHttpError(self.name, 401, self._challenge)
        if self._info is None:
            async with self._probing:
                if self._info is None:
                    try:
                        async with asyncio.timeout(self._ready_timeout_s):
                            await self.probe(authorization if self.needs_authorization else None)
                    except TimeoutError:
                        raise UpstreamUnavailable.timeout(self.name) from None
        if self._info is None:  # the probe found the server wants authorization
            raise UpstreamHttpError(self.name, 401, self._challenge)
        return self._info

    async def verify_credentials(self, credentials: Headers) -> None:
        """A server that `needs_authorization` probed again with the caller's `Authorization` (its
        refusal raised as UpstreamHttpError, its answer refreshing the era)."""
        if not self.needs_authorization:
            return
        if self._service is not None:
            await self._service.retrying(credentials, self._challenge, self._verify)
            return
        await self._verify(credentials)

    async def _verify(self, credentials: Headers) -> None:
        authorization = header_value(credentials, AUTHORIZATION)
        if authorization is None:
            raise UpstreamHttpError(self.name, 401, self._challenge)
        async with asyncio.timeout(self._ready_timeout_s):
            await self.probe(authorization)

    async def oauth_metadata(self, deadline: float | None = None) -> bytes:
        return await self._metadata.discover(deadline)

    async def close(self) -> None:
        """End the gateway's own legacy session (best effort), stop probing and the spawned process;
        the shared aiohttp session stays open."""
        watch, self._watch = self._watch, None
        await end_task(watch)
        try:
            if self._service is not None:
                await self._service.close()
            await self._end_own_session()
        finally:
            if self._process is not None:
                await self._process.close()

    async def _end_session_of(self, session_id: str | None, info: UpstreamInfo, authorization: str) -> None:
        """End a session the probe opened with a client's token (best effort): the gateway holds no
        session in a client's name."""
        if session_id is None:
            return
        headers = self._headers.base(json_body=False)
        headers[SESSION_HEADER] = session_id
        headers[VERSION_HEADER] = info.protocol_version
        headers[AUTHORIZATION] = authorization
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S), self._request("DELETE", None, headers):
                pass

    async def _end_own_session(self) -> None:
        session_id, self._session_id = self._session_id, None
        info = self._info
        self._down()
        if info is None or info.era is not Era.LEGACY or session_id is None:
            return
        headers = self._headers.base(json_body=False)
        headers[SESSION_HEADER] = session_id
        headers[VERSION_HEADER] = info.protocol_version
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT_S), self._request("DELETE", None, headers):
                pass

    async def end_session(self, headers: Headers) -> Reply:
        """DELETE the client's session on a handshake-era server; 405 where there are no sessions."""
        info = await self.wait_info(headers)
        if info.era is Era.MODERN:
            return Reply(405)
        session_id = header_value(headers, SESSION_HEADER)
        if session_id is None or not valid_value(session_id):
            return Reply(400)
        if session_id == self._session_id:
            return Reply(404)  # the gateway's own session is not the client's to end
        out = self._headers.base(json_body=False)
        out[SESSION_HEADER] = session_id
        version = header_value(headers, VERSION_HEADER)
        if version is not None and valid_value(version):
            out[VERSION_HEADER] = version
        async with self._request("DELETE", None, out) as resp:
            return Reply(resp.status, b"", allowed_response_headers(response_headers(resp.headers)))

    # ------------------------------------------------------------------ calls

    def exchange(self, call: Call) -> AsyncIterator[Frame]:
        frames = (
            self._exchange(call)
            if self._service is None
            else self._service.calls(call, self._exchange, self._challenge)
        )
        return within(frames, self._request_timeout_s, self.name)

    async def _exchange(self, call: Call) -> AsyncIterator[Frame]:
        """POST one message; yield the server's notifications, then its answer as the Reply.

        On the gateway's own session with a handshake-era server, many clients'
        requests share one session, so their ids are replaced by gateway-unique
        ones (and mapped back on the answer) to keep them, and any
        `notifications/cancelled`, from colliding.
        """
        info = await self._wait_info(call.headers)
        own = info.era is Era.LEGACY and call.own_session
        wire_id = call.id
        if own and call.id is not None:
            self._next_id += 1
            wire_id = Raw(b'"gw-%d"' % self._next_id)
        body = (
            self._codec.notification(call.method, call.params)
            if wire_id is None
            else self._codec.request(wire_id, call.method, call.params)
        )
        finished = False
        try:
            for attempt in (1, 2):
                info = self._info or info  # a renewal may have changed the negotiated version
                session_id = self._session_id if own else None
                reply: Reply | None = None
                async with self._request("POST", body, self._headers.call(call, info, session_id)) as resp:
                    if resp.status == 404 and session_id is not None and attempt == 1:
                        pass  # our own session expired: renew it below, then retry once
                    else:
                        async with contextlib.aclosing(self._answers.answer(resp, wire_id)) as frames:
                            async for frame in frames:
                                if isinstance(frame, Reply):
                                    reply = frame
                                else:
                                    yield frame
                if reply is not None:
                    finished = True
                    yield self._restore_id(reply, call.id) if wire_id is not call.id else reply
                    return
                assert session_id is not None
                await self._renew_session(session_id)
        except (asyncio.CancelledError, GeneratorExit):
            if not finished and wire_id is not None and info.era is Era.LEGACY:
                await self._send_cancel(wire_id, call, info, self._session_id if own else None)
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def respond(self, message: JsonRpcMessage, headers: Headers, own_session: bool) -> Reply:
        """A client's answer to a request the server sent on an SSE stream: POSTed back in the same session."""
        if self._service is not None:
            headers = (await self._service.authorize(headers, self._challenge)).headers
        info = await self._wait_info(headers)
        if info.era is Era.MODERN or message.id is UNSET:
            return Reply(404)  # a 2026-07-28 server sends no requests to clients over HTTP
        own = own_session
        call = Call("", None, UNSET, headers, own_session)
        body = self._codec.response(message.id, message)
        async with self._request(
            "POST", body, self._headers.call(call, info, self._session_id if own else None)
        ) as resp:
            await resp.read()
            return Reply(resp.status, b"", allowed_response_headers(response_headers(resp.headers)))

    def _restore_id(self, reply: Reply, client_id: Raw | None) -> Reply:
        """The answer under the client's own id again."""
        if client_id is None or not reply.body:
            return reply
        try:
            message = self._codec.message(reply.body)
        except msgspec.MsgspecError:
            return reply
        return Reply(reply.status, self._codec.response(client_id, message), reply.headers)

    # ------------------------------------------------------------------ probing

    async def _discover(self, authorization: str | None = None) -> UpstreamInfo | None:
        headers = self._headers.base(authorization=authorization)
        headers[VERSION_HEADER] = MODERN_VERSION
        headers[METHOD_HEADER] = "server/discover"
        body = self._codec.request(PROBE_ID, "server/discover", self._bridge.discover_params())
        try:
            reply = await self._roundtrip(body, headers, PROBE_ID)
        except UpstreamHttpError as exc:
            if exc.resp_code in (401, 403) and authorization is not None:
                raise  # the client's credentials were refused: no handshake will fare better
            return None  # not a 2026-07-28 answer: try the handshake
        except UpstreamProtocolError:
            return None
        if not 200 <= reply.status < 300:
            return None
        message = self._codec.message(reply.body)
        if message.result is UNSET:
            return None
        return self._bridge.info_from_discover(message.result)

    async def _initialize(self, authorization: str | None = None) -> tuple[UpstreamInfo, str | None]:
        """The handshake: `initialize`, then `notifications/initialized` in the new session."""
        body = self._codec.request(INIT_ID, "initialize", self._bridge.initialize_params())
        reply = await self._roundtrip(body, self._headers.base(authorization=authorization), INIT_ID)
        if reply.status >= 400:
            raise UpstreamHttpError(self.name, reply.status, challenge(reply.headers))
        message = self._codec.message(reply.body)
        if message.result is UNSET:
            raise UpstreamProtocolError(self.name, "invalid_protocol_response")
        try:
            info = self._bridge.info_from_initialize(message.result)
        except msgspec.MsgspecError:
            raise UpstreamProtocolError(self.name, "invalid_protocol_response") from None
        session_id = header_value(reply.headers, SESSION_HEADER)
        if session_id is not None and not valid_value(session_id):
            raise UpstreamProtocolError(self.name, "invalid_protocol_response")
        headers = self._headers.base(authorization=authorization)
        headers[VERSION_HEADER] = info.protocol_version
        if session_id is not None:
            headers[SESSION_HEADER] = session_id
        done = await self._roundtrip(self._codec.notification("notifications/initialized", UNSET), headers, None)
        if done.status >= 300:
            raise UpstreamHttpError(self.name, done.status, challenge(done.headers))
        return info, session_id

    async def _renew_session(self, stale: str) -> None:
        """Re-initialize once after the server forgot our session (concurrent callers share one renewal)."""
        async with self._renewing:
            if self._session_id != stale:
                return
            info, self._session_id = await self._initialize()
            self._up(info)

    async def _roundtrip(self, body: bytes, headers: CIMultiDict[str], id: Raw | None) -> Reply:
        async with (
            self._request("POST", body, headers) as resp,
            contextlib.aclosing(self._answers.answer(resp, id)) as frames,
        ):
            async for frame in frames:
                if isinstance(frame, Reply):
                    return frame
        raise UpstreamUnavailable.closed(self.name, "unexpected_eof")  # pragma: no cover - _answer ends in a Reply

    async def _send_cancel(self, wire_id: Raw, call: Call, info: UpstreamInfo, session_id: str | None) -> None:
        """Tell a handshake-era server an abandoned request is cancelled, bounded and awaited in place.

        Runs while the calling task is being cancelled (or the generator closed):
        no task is spawned; a second cancellation or the timeout just ends it.
        A 2026-07-28 server is not told: on HTTP, closing the stream is the cancellation.
        """
        params = Raw(self._codec.encode({"requestId": wire_id, "reason": "cancelled by gateway"}))
        cancel = Call("notifications/cancelled", None, params, call.headers, call.own_session)
        body = self._codec.notification(cancel.method, params)
        with contextlib.suppress(UpstreamError, TimeoutError):
            async with (
                asyncio.timeout(CANCEL_TIMEOUT_S),
                self._request("POST", body, self._headers.call(cancel, info, session_id)),
            ):
                pass

    # ------------------------------------------------------------------ HTTP

    @contextlib.asynccontextmanager
    async def _request(
        self, method: str, body: bytes | None, headers: CIMultiDict[str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One HTTP request; the response is released when read to the end, closed (aborted) otherwise."""
        if self._http.closed:  # the gateway is shutting down: its own state, not the server's fault
            raise unaddressable(self.name)
        try:
            with map_aiohttp_errors(self.name):
                resp = await self._http.request(
                    method,
                    self._url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    timeout=self._timeout,
                    ssl=self._ssl,
                    proxy=self._proxy,
                )
        except UpstreamUnavailable as exc:
            if exc.failure.source in _UNREACHABLE:  # the server is gone: down until a probe finds it again
                self._down(exc.problem(self._where))
            raise
        with map_aiohttp_errors(self.name):
            completed = False
            try:
                yield resp
                completed = True
            finally:
                if completed:
                    resp.release()
                else:
                    resp.close()
