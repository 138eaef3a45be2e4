"""Subjects of the Upstream contract suite (tests/contract/test_upstream_contract.py): each transport built as
the gateway builds it, against the official-SDK test server, and driven as the channel layer drives it.

Owns where the transports legitimately differ (who a "client" is, how a dead server comes back);
the checks themselves live in the suite and see only the public `Upstream` interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from msgspec import UNSET, Raw

from gateway.app import build_upstream
from gateway.config import routing as config_module
from gateway.protocol.eras import EMPTY_OBJECT, LATEST_HANDSHAKE, Bridge
from gateway.protocol.mcp import Call, Era, Frame, Notify, Reply
from gateway.protocol.wire import Codec, Headers, header_value
from gateway.upstream.base import Upstream
from gateway.upstream.http import SESSION_HEADER, VERSION_HEADER
from gateway.upstream.pool import ClientProcesses
from tests.support.harness import PYTHON, SERVERS, Process, process

HANG_GUARD_S = 60.0
"""Bounds every call and wait, only reached when something hangs: no check depends on how fast anything is."""
MAX_MESSAGE_BYTES = 64 * 1024
"""`gateway.max_message_bytes` for every subject: small, so the oversized check stays cheap."""
SERVER = SERVERS / "sdk_server.py"


class HttpServer:
    """The SDK test server over Streamable HTTP, as an external server: nothing restarts it but `revive`."""

    def __init__(self, *flags: str) -> None:
        self._flags = flags
        self._stack = contextlib.AsyncExitStack()
        self._proc: Process | None = None
        self.url = ""

    async def start(self, port: int = 0) -> None:
        self._proc = await self._stack.enter_async_context(
            process(PYTHON, SERVER, "--http", "--port", str(port), "--name", "contract", *self._flags)
        )
        self.url = (await self._proc.wait_for(r"READY (\S+)"))[1]

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.proc.returncode is None

    async def dead(self) -> None:
        """Until the process has exited (after it was told to: the `crash` tool)."""
        assert self._proc is not None
        async with asyncio.timeout(HANG_GUARD_S):
            await self._proc.proc.wait()

    async def revive(self) -> None:
        """Start the server again on the same port once it has died (waits for its death first)."""
        assert self._proc is not None
        await self.dead()
        await self._proc.stop()
        await self.start(urlsplit(self.url).port or 0)

    async def close(self) -> None:
        await self._stack.aclose()


@dataclass
class Client:
    """One MCP client of a subject, as the channel layer presents it to the transport.

    `session` None is a sessionless client (a 2026-07-28 client, or one the gateway serves on its own
    session); a named one is a client with a session of its own: a process of its own behind
    `ClientProcesses`, its own `Mcp-Session-Id` on a handshake-era HTTP server (the channel forwards
    such a client's `initialize` and headers: passthrough), and no difference on a shared stdio pipe.
    """

    subject: Subject
    session: str | None
    headers: Headers = field(default_factory=dict)
    sent: int = 0

    @property
    def passthrough(self) -> bool:
        """This client's calls run in a server session of its own (never the gateway's)."""
        return bool(self.headers)

    async def upstream(self) -> Upstream:
        """What the channel would send this client's calls to (looked up per call, as the channel does)."""
        upstream = self.subject.upstream
        if isinstance(upstream, ClientProcesses) and self.session is not None:
            return await upstream.for_session(self.session)
        return upstream

    async def call(self, method: str, params: dict[str, Any], id: object = None) -> Call:
        """A request as the channel builds it for this server's era (`_meta` envelope for 2026-07-28),
        once the server is up (the channel waits for its info first, too). Without an `id`, the next of
        this client's own (a client never reuses one in a session, as the spec requires)."""
        if id is None:
            self.sent += 1
            id = f"{self.session}-{self.sent}"
        raw = Raw(json.dumps(params).encode())
        info = await (await self.upstream()).wait_info()
        bridge = self.subject.bridge
        if info.era is Era.MODERN:
            raw = bridge.modern_params(raw, EMPTY_OBJECT, bridge.client_info)
        return Call(method, Raw(json.dumps(id).encode()), raw, dict(self.headers), own_session=not self.passthrough)

    async def tool(self, name: str, id: object = None, progress: object = None, **arguments: Any) -> Call:
        params: dict[str, Any] = {"name": name, "arguments": arguments}
        if progress is not None:
            params["_meta"] = {"progressToken": progress}
        return await self.call("tools/call", params, id)

    async def exchange(self, call: Call) -> AsyncGenerator[Frame, None]:
        """The call's frames, as every transport gives them: an async generator, abandoned by closing it."""
        frames = (await self.upstream()).exchange(call)
        assert isinstance(frames, AsyncGenerator), "every transport's exchange is an async generator"
        return frames

    async def run(self, call: Call) -> tuple[list[Notify], Reply]:
        """Every frame of one call: checks the shape (Notify*, then exactly one Reply)."""
        async with asyncio.timeout(HANG_GUARD_S):
            return await collect(await self.exchange(call))

    async def run_tool(
        self, name: str, id: object = None, progress: object = None, **arguments: Any
    ) -> tuple[list[Notify], Reply]:
        return await self.run(await self.tool(name, id, progress, **arguments))

    async def text(self, name: str, id: object = None, **arguments: Any) -> str:
        """The text a tool answered (asserting a successful result)."""
        _, reply = await self.run_tool(name, id, **arguments)
        return text_of(reply)

    async def open(self) -> None:
        """Start this client's own server session where the transport has client sessions (passthrough)."""
        await self.subject.upstream.wait_info()
        if self.session is None or not self.subject.upstream.holds_sessions:
            return
        params = {
            "protocolVersion": LATEST_HANDSHAKE,
            "capabilities": {},
            "clientInfo": {"name": self.session, "version": "1"},
        }
        call = Call("initialize", Raw(b'"init"'), Raw(json.dumps(params).encode()), {}, own_session=False)
        self.headers = {}
        _, reply = await self.run(call)
        session = header_value(reply.headers, SESSION_HEADER)
        assert reply.status == 200, reply
        assert session is not None, reply
        version = json.loads(reply.body)["result"]["protocolVersion"]
        self.headers = {SESSION_HEADER: [session], VERSION_HEADER: [version]}
        done = Call("notifications/initialized", None, UNSET, dict(self.headers), own_session=False)
        _, ack = await self.run(done)
        assert ack.status == 202, ack


@dataclass
class Subject:
    """One transport under the contract: a started `Upstream` and how its server comes back from death."""

    kind: str
    upstream: Upstream
    bridge: Bridge
    http_server: HttpServer | None = None
    """The external server of an HTTP subject: it does not restart by itself."""
    clients: dict[str | None, Client] = field(default_factory=dict)

    @property
    def restarts_itself(self) -> bool:
        """stdio transports supervise their processes; an HTTP server is someone else's to restart."""
        return self.http_server is None

    async def client(self, session: str | None = "a") -> Client:
        found = self.clients.get(session)
        if found is None:
            found = self.clients[session] = Client(self, session)
            await found.open()
        return found

    async def revive(self) -> None:
        """Serving again after the server died: stdio needs nothing (its supervisor restarts the process);
        an HTTP server is started again on its port, and as the client sessions it held died with it,
        each client opens a new one (2025-11-25 transports, session management)."""
        if self.http_server is not None:
            await self.http_server.revive()
            await self.reopen()

    async def reopen(self) -> None:
        """Every client opens a new server session (where the transport has client sessions)."""
        for client in self.clients.values():
            await client.open()


SUBJECTS = {
    # kind: (routing.yaml server entry, HTTP server flags or None for stdio)
    "stdio": ("{stdio: %s}", None),
    "stdio-legacy": ("{stdio: %s}", ("--legacy",)),
    "pool": ("{stdio: %s, processes: 2}", None),
    "per-client": ("{stdio: %s, session: per-client}", ("--legacy",)),
    "http": ("{http: {url: '%s'}}", ()),
    "http-legacy": ("{http: {url: '%s'}}", ("--legacy",)),
}
"""Each transport of `gateway.app.build_upstream`; per-client runs a handshake-era (stateful) server,
the kind it exists for. HTTP subjects' servers are external processes (`HttpServer`)."""


@contextlib.asynccontextmanager
async def subject(kind: str) -> AsyncIterator[Subject]:
    """A started subject of `kind` (a key of SUBJECTS), built from a routing document as the gateway does."""
    entry, flags = SUBJECTS[kind]
    bridge = Bridge(Codec())
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, limit_per_host=256, keepalive_timeout=60),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            )
        )
        server = None
        if kind.startswith("http"):
            server = HttpServer(*(flags or ()))
            stack.push_async_callback(server.close)
            await server.start()
            target = entry % server.url
        else:
            args = json.dumps([str(SERVER), "--name", "contract", *(flags or ())])
            target = entry % f'{{command: "{PYTHON}", args: {args}}}'
        document = (
            f"gateway: {{max_message_bytes: {MAX_MESSAGE_BYTES}}}\nservers:\n  s: {target}\nchannels:\n  c: [s]\n"
        )
        config = config_module.parse(document.encode(), "contract.yaml")
        upstream = build_upstream(
            "s", config.servers["s"], bridge=bridge, http=http, config=config, file="contract.yaml", base=Path(".")
        )
        stack.push_async_callback(upstream.close)
        await upstream.start()
        await asyncio.wait_for(upstream.wait_info(), 60)
        yield Subject(kind, upstream, bridge, server)


async def collect(exchange: AsyncIterator[Frame]) -> tuple[list[Notify], Reply]:
    """Every frame of one call, checking the contract's shape: Notify*, then exactly one Reply."""
    notes: list[Notify] = []
    replies: list[Reply] = []
    assert isinstance(exchange, AsyncGenerator), "every transport's exchange is an async generator"
    async with contextlib.aclosing(exchange) as frames:
        async for frame in frames:
            assert not replies, "nothing may follow the Reply"
            if isinstance(frame, Notify):
                notes.append(frame)
            else:
                replies.append(frame)
    assert len(replies) == 1, "the iteration ended without a Reply"
    return notes, replies[0]


def result_of(reply: Reply) -> Any:
    message = json.loads(reply.body)
    assert "error" not in message, message
    return message["result"]


def text_of(reply: Reply) -> str:
    result = result_of(reply)
    assert not result.get("isError"), result
    text: str = result["content"][0]["text"]
    return text
