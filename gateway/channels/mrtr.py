"""MRTR = multi round-trip requests: a server asking its client for input in the middle of a call
(elicitation, sampling, roots), bridged between the MCP eras. The pure parts and the calls held between
rounds; does no transport I/O itself (it calls through an `Upstream`).

Owns both directions of the bridge:
- a handshake-era server's request to the client during a call (`elicitation/create`,
  `sampling/createMessage`, `roots/list`) becomes an `input_required` result for a 2026-07-28
  client; the server's call is held (`HeldCalls`) under an opaque `requestState` until the
  client's retry carries `inputResponses`, which answer the server, and the call goes on;
- a 2026-07-28 server's `input_required` result becomes requests to a handshake-era client during
  its call; their answers make the retry (`with_input_responses`).
The held calls live in this process only: a retry that reaches another replica gets -32602.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.protocol.errors import InvalidRequestParams, MissingClientCapability, UpstreamError
from gateway.protocol.mcp import Frame, Notify, Reply, UpstreamInfo, abandon
from gateway.protocol.wire import Codec, Headers, JsonDecoder, JsonRpcMessage
from gateway.upstream.base import Upstream

INPUT_METHODS: Final = frozenset({"elicitation/create", "sampling/createMessage", "roots/list"})
"""Requests a server may make of a client during a call (MRTR input requests in 2026-07-28)."""
STATE_PREFIX: Final = "gwh."
"""Marks a `requestState` the gateway issued (others belong to the server and pass through)."""
MAX_ROUNDS: Final = 10
"""Rounds of input a call may ask for before the gateway gives up on it."""


@dataclass(eq=False, slots=True)
class Held:
    """A server call waiting for a 2026-07-28 client's answers, between two of its requests."""

    frames: AsyncIterator[Frame]
    """The call, suspended right after the server's request."""
    upstream: Upstream
    info: UpstreamInfo
    method: str
    asked: dict[str, Raw]
    """inputRequests key -> the id of the server's request it stands for."""
    respond_headers: Headers
    own_session: bool
    member: str = ""
    expires: float = 0.0
    rounds: int = 1
    extra: dict[str, object] = field(default_factory=dict)

    async def close(self) -> None:
        await abandon(self.frames)


class HeldCalls:
    """Calls held for a client's retry, by `requestState`; bounded in number and in time."""

    def __init__(self, *, ttl_s: float = 300.0, limit: int = 1000, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._limit = limit
        self._clock = clock
        self._held: OrderedDict[str, Held] = OrderedDict()

    def hold(self, held: Held) -> tuple[str, list[Held]]:
        """Keep a call; returns its `requestState` and the calls pushed out (expired or over the limit),
        which the caller must close."""
        now = self._clock()
        held.expires = now + self._ttl_s
        token = STATE_PREFIX + secrets.token_urlsafe(18)
        self._held[token] = held
        dropped = [self._held.pop(t) for t, h in list(self._held.items()) if h.expires <= now]
        while len(self._held) > self._limit:
            dropped.append(self._held.popitem(last=False)[1])
        return token, dropped

    def take(self, token: str) -> Held | None:
        held = self._held.pop(token, None)
        if held is None or held.expires <= self._clock():
            return None
        return held

    def drain(self) -> list[Held]:
        held = list(self._held.values())
        self._held.clear()
        return held

    def __len__(self) -> int:
        return len(self._held)


@dataclass(frozen=True, slots=True)
class Ask:
    """A 2026-07-28 server's `input_required` result: what to ask the client, and the state to echo."""

    requests: dict[str, tuple[str, Raw | UnsetType]]
    state: str | None


ASK_PREFIX: Final = "gw-ask-"
INPUT_KEY: Final = "input"


class Rounds:
    """One channel's multi round-trip requests in progress, in both directions."""

    def __init__(self, codec: Codec) -> None:
        self._codec = codec
        self._held = HeldCalls()
        self._asked: dict[str, asyncio.Future[JsonRpcMessage]] = {}
        self._seq = 0

    async def close(self) -> None:
        await asyncio.gather(*(held.close() for held in self._held.drain()), return_exceptions=True)

    # ------------------------------------------------------------------ 2026-07-28 clients

    def input_request(self, frame: Notify) -> JsonRpcMessage | None:
        """A server's request to the client during a call that MRTR carries (elicitation, sampling, roots)."""
        if b'"id"' not in frame.message or b'"method"' not in frame.message:
            return None
        try:
            message = self._codec.message(frame.message)
        except msgspec.MsgspecError:
            return None
        return message if message.is_request and message.method in INPUT_METHODS else None

    async def hold(self, pending: Held, request: JsonRpcMessage) -> Raw:
        """Hold the call that sent `request`; the `input_required` result that asks the client instead."""
        assert request.id is not UNSET
        assert isinstance(request.method, str)
        pending.asked = {INPUT_KEY: Raw(bytes(request.id))}
        token, dropped = self._held.hold(pending)
        for old in dropped:
            await old.close()
        return input_required_result(self._codec, {INPUT_KEY: (request.method, request.params)}, token)

    async def resume(self, params: Raw | UnsetType) -> Held:
        """A retry: its answers go to the server whose call was held; the call, to be read on."""
        retry = retry_of(params)
        pending = self._held.take(retry[0]) if retry is not None else None
        if retry is None or pending is None:
            raise InvalidRequestParams("Invalid or expired requestState")
        try:
            for key, request_id in pending.asked.items():
                answer = retry[1].get(key)
                if answer is None:
                    raise InvalidRequestParams(f"inputResponses lacks {key!r}")
                message = JsonRpcMessage(jsonrpc="2.0", id=request_id, result=answer)
                await pending.upstream.respond(message, pending.respond_headers, pending.own_session)
        except BaseException:
            await pending.close()
            raise
        pending.rounds += 1
        return pending

    async def rootless(self, request: JsonRpcMessage, declared: Raw, upstream: Upstream) -> bool:
        """Answer a server's `roots/list` for a client that declared no roots with an empty list; True
        when done so (the call goes on). The gateway's own session declares `roots`, so a server may ask
        at any time (server-everything does, right after `initialized`), and a stdio call running then
        receives the request although the client never caused it (MCP 2025-11-25 client/roots)."""
        if request.method != "roots/list" or missing_capability(request, declared) is None:
            return False
        assert request.id is not UNSET
        answer = JsonRpcMessage(jsonrpc="2.0", id=request.id, result=Raw(b'{"roots":[]}'))
        with contextlib.suppress(UpstreamError):
            await upstream.respond(answer, {}, True)
        return True

    async def refuse_undeclared(
        self, request: JsonRpcMessage, declared: Raw, upstream: Upstream, headers: Headers, own_session: bool
    ) -> None:
        """MissingClientCapability when the client did not declare what the server's `request` needs,
        after answering the server's request with that error (the caller then abandons the call)."""
        missing = missing_capability(request, declared)
        if missing is None:
            return
        refusal = MissingClientCapability(*missing)
        assert request.id is not UNSET
        body = self._codec.error_response(request.id, refusal.code, str(refusal), refusal.data)
        with contextlib.suppress(UpstreamError):
            await upstream.respond(self._codec.message(body), headers, own_session)
        raise refusal

    # ------------------------------------------------------------------ handshake-era clients

    def asked_of(self, reply: Reply) -> Ask | None:
        """The input a 2026-07-28 server's answer asks for, or None when it is a final answer."""
        if not reply.body or b"input_required" not in reply.body:
            return None
        try:
            answer = self._codec.message(reply.body)
        except msgspec.MsgspecError:
            return None
        found = input_requests_of(answer.result) if answer.result is not UNSET else None
        return None if found is None else Ask(*found)

    async def ask(self, ask: Ask, answers: dict[str, Raw]) -> AsyncIterator[Notify]:
        """Send a handshake-era client the requests during its call; collect its answers (by key)."""
        loop = asyncio.get_running_loop()
        waiting: dict[str, asyncio.Future[JsonRpcMessage]] = {}
        ids: list[str] = []
        try:
            for key, (method, params) in ask.requests.items():
                self._seq += 1
                asked_id = f"{ASK_PREFIX}{self._seq}"
                ids.append(asked_id)
                waiting[key] = self._asked[asked_id] = loop.create_future()
                yield Notify(self._codec.request(Raw(self._codec.encode(asked_id)), method, params))
            for key, future in waiting.items():
                message = await future
                if message.result is not UNSET:
                    answers[key] = Raw(bytes(message.result))
        finally:
            for asked_id in ids:
                self._asked.pop(asked_id, None)

    def answered(self, message: JsonRpcMessage) -> bool | None:
        """A client's answer to a request the gateway asked: True when taken, False when nobody waits
        for it (any more), None when it answers some server's request instead."""
        if message.id is UNSET or ASK_PREFIX.encode() not in bytes(message.id):
            return None
        with contextlib.suppress(msgspec.DecodeError):
            waiting = self._asked.get(str(msgspec.json.decode(message.id)))
            if waiting is not None and not waiting.done():
                waiting.set_result(message)
                return True
        return False


def rekeyed(codec: Codec, reply: Reply, id: Raw) -> Reply:
    """An answer under the id of the request it now answers (a retry's differs from the first one's)."""
    if not reply.body:
        return reply
    try:
        answer = codec.message(reply.body)
    except msgspec.MsgspecError:
        return reply
    if answer.id is not UNSET and bytes(answer.id) == bytes(id):
        return reply
    return Reply(reply.status, codec.response(id, answer), reply.headers)


# --------------------------------------------------------------------------- client capabilities


class _Elicit(msgspec.Struct):
    mode: str = "form"


class _Sample(msgspec.Struct):
    tools: Raw | UnsetType = UNSET
    toolChoice: Raw | UnsetType = UNSET


class _Declared(msgspec.Struct):
    elicitation: dict[str, Raw] | None = None
    sampling: dict[str, Raw] | None = None
    roots: Raw | UnsetType = UNSET


def _given(value: Raw | UnsetType) -> bool:
    """A member that is present and not `null`."""
    return value is not UNSET and bytes(value) != b"null"


_elicit = msgspec.json.Decoder(_Elicit)
_sample = msgspec.json.Decoder(_Sample)
_declared = msgspec.json.Decoder(_Declared)


def missing_capability(request: JsonRpcMessage, declared: Raw) -> tuple[str, Raw] | None:
    """What a server's request to the client needs that the client's `declared` capabilities lack:
    (its name, `requiredCapabilities`), or None when the client can answer it.

    An `elicitation: {}` (the shape before modes) counts as form support, not URL support."""
    params = request.params if request.params is not UNSET else Raw(b"{}")
    try:
        caps = _declared.decode(declared)
    except msgspec.MsgspecError:
        caps = _Declared()
    with contextlib.suppress(msgspec.MsgspecError):
        if request.method == "elicitation/create":
            mode = _elicit.decode(params).mode
            modes = caps.elicitation
            if mode == "url":
                ok = modes is not None and "url" in modes
                return None if ok else ("URL elicitation", Raw(b'{"elicitation":{"url":{}}}'))
            ok = modes is not None and ("form" in modes or "url" not in modes)
            return None if ok else ("form elicitation", Raw(b'{"elicitation":{"form":{}}}'))
        if request.method == "sampling/createMessage":
            asked = _sample.decode(params)
            if _given(asked.tools) or _given(asked.toolChoice):
                ok = caps.sampling is not None and "tools" in caps.sampling
                return None if ok else ("sampling.tools", Raw(b'{"sampling":{"tools":{}}}'))
            return None if caps.sampling is not None else ("sampling", Raw(b'{"sampling":{}}'))
        if request.method == "roots/list":
            return None if _given(caps.roots) else ("roots", Raw(b'{"roots":{}}'))
    return None


# --------------------------------------------------------------------------- shapes


class _InputRequest(msgspec.Struct):
    method: str
    params: Raw | UnsetType = UNSET


class _InputRequired(msgspec.Struct):
    resultType: str = "complete"
    inputRequests: dict[str, _InputRequest] = {}
    requestState: str | None = None


class _Retry(msgspec.Struct):
    requestState: str | None = None
    inputResponses: dict[str, Raw] = {}


_input_required = JsonDecoder(_InputRequired)
_retry = JsonDecoder(_Retry)


def input_required_result(codec: Codec, requests: dict[str, tuple[str, Raw | UnsetType]], state: str) -> Raw:
    """An `input_required` result asking the client for `requests` (key -> method, params)."""
    asked = {
        key: {"method": method} if params is UNSET else {"method": method, "params": params}
        for key, (method, params) in requests.items()
    }
    return Raw(codec.encode({"resultType": "input_required", "inputRequests": asked, "requestState": state}))


def retry_of(params: Raw | UnsetType) -> tuple[str, dict[str, Raw]] | None:
    """The gateway's `requestState` and the `inputResponses` of a retry, or None when it is not one."""
    if params is UNSET or STATE_PREFIX.encode() not in bytes(params):
        return None
    try:
        found = _retry.decode(params)
    except msgspec.MsgspecError:
        return None
    if found.requestState is None or not found.requestState.startswith(STATE_PREFIX):
        return None
    return found.requestState, {k: Raw(bytes(v)) for k, v in found.inputResponses.items()}


def input_requests_of(result: Raw) -> tuple[dict[str, tuple[str, Raw | UnsetType]], str | None] | None:
    """The input requests and `requestState` of a 2026-07-28 `input_required` result, or None."""
    if b"input_required" not in bytes(result):
        return None
    try:
        found = _input_required.decode(result)
    except msgspec.MsgspecError:
        return None
    if found.resultType != "input_required":
        return None
    requests = {
        key: (req.method, Raw(bytes(req.params)) if req.params is not UNSET else UNSET)
        for key, req in found.inputRequests.items()
    }
    return requests, found.requestState


def with_input_responses(codec: Codec, params: Raw | UnsetType, responses: dict[str, Raw], state: str | None) -> Raw:
    """The params of a retry: the original ones plus the answers (and the server's state, verbatim)."""
    members = {} if params is UNSET else codec.members(params)
    members.pop("inputResponses", None)
    members.pop("requestState", None)
    members["inputResponses"] = Raw(codec.encode(responses))
    if state is not None:
        members["requestState"] = Raw(codec.encode(state))
    return Raw(codec.encode(members))
