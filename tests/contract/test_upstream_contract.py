"""The Upstream contract suite: the same checks, through the public `Upstream` interface only, for every
transport the gateway builds (`gateway.app.build_upstream`): one stdio process (2026-07-28 and
handshake-era servers), a stdio pool of two processes, per-client processes, and Streamable HTTP
(both eras), each against the official-SDK test server (tests/support/servers/sdk_server.py).

Where transports legitimately differ the difference lives in tests/support/upstream_support.py, named: what a
"client" is (its own process behind `session: per-client`, its own `Mcp-Session-Id` on a handshake-era
HTTP server) and how a dead server comes back (stdio restarts it; an HTTP server is someone else's).
Each subject is started once per module; every check leaves it serving. Timeouts are hang guards only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from gateway.protocol.errors import UpstreamError, UpstreamProtocolError, UpstreamUnavailable
from gateway.protocol.mcp import Frame, Notify
from tests.support.upstream_support import HANG_GUARD_S, MAX_MESSAGE_BYTES, SUBJECTS, Client, Subject, subject, text_of

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=list(SUBJECTS))
async def started(request: pytest.FixtureRequest) -> AsyncIterator[Subject]:
    async with subject(request.param) as made:
        yield made


@pytest_asyncio.fixture(loop_scope="module")
async def under_test(started: Subject) -> Subject:
    """The module's subject, serving (an HTTP server a failed check left dead is started again)."""
    server = started.http_server
    if server is not None and not server.running:
        await started.revive()
    return started


def progress_of(note: Notify) -> dict[str, Any]:
    message = json.loads(note.message)
    assert message["method"] == "notifications/progress", message
    params: dict[str, Any] = message["params"]
    return params


async def whoami(client: Client) -> int:
    return int(await client.text("whoami"))


# --------------------------------------------------------------------------- concurrency and ids


async def test_concurrent_calls_each_get_their_own_answer(under_test: Subject) -> None:
    """50 calls at once on one upstream, from a client with a session of its own and a sessionless one,
    are all answered, each with its own result and id (MCP 2026-07-28 basic, Responses: a response
    carries the id of the request it answers)."""
    clients = [await under_test.client("a"), await under_test.client(None)]
    calls = [(clients[n % 2], n, f"call {n}") for n in range(50)]
    answers = await asyncio.gather(*(client.run_tool("echo", n, text=text) for client, n, text in calls))
    for (_, n, text), (notes, reply) in zip(calls, answers, strict=True):
        assert notes == []
        assert reply.status == 200
        assert json.loads(reply.body)["id"] == n
        assert text_of(reply) == text


@pytest.mark.parametrize("id", [7, "7", 0, 123456789012, "req-ü"], ids=repr)
async def test_ids_come_back_unchanged_even_when_clients_use_the_same_ones(under_test: Subject, id: object) -> None:
    """A client's JSON-RPC id, string or integer, comes back unchanged in its reply while other clients
    use the same id at once (MCP 2026-07-28 basic, Requests: ids are strings or integers, unique only
    among one requestor's requests; Responses: the same id as the request)."""
    clients = [await under_test.client(session) for session in ("a", "b", None)]
    answers = await asyncio.gather(*(client.run_tool("echo", id, text=f"{client.session}") for client in clients))
    for client, (_, reply) in zip(clients, answers, strict=True):
        assert json.loads(reply.body)["id"] == id
        assert type(json.loads(reply.body)["id"]) is type(id)
        assert text_of(reply) == f"{client.session}"


# --------------------------------------------------------------------------- progress


async def test_progress_reaches_the_caller_with_its_token_in_order(under_test: Subject) -> None:
    """`notifications/progress` frames come before the Reply, carry the caller's own progressToken
    (equal tokens from two clients at once do not cross), and their progress increases
    (MCP 2026-07-28 basic/patterns/progress)."""
    callers = [
        (await under_test.client("a"), "tok"),
        (await under_test.client("b"), "tok"),
        (await under_test.client(None), 5),
    ]
    answers = await asyncio.gather(
        *(client.run_tool("slow_progress", 1, progress=token, steps=3, delay_ms=1) for client, token in callers)
    )
    for (_, token), (notes, reply) in zip(callers, answers, strict=True):
        progress = [progress_of(note) for note in notes]
        assert [p["progressToken"] for p in progress] == [token] * 3
        assert [p["progress"] for p in progress] == [1, 2, 3]
        assert text_of(reply) == "done 3 steps"


# --------------------------------------------------------------------------- cancellation


async def _first_progress(client: Client, id: object) -> tuple[AsyncGenerator[Frame, None], Notify]:
    """A long call, started and running on the server (it reported progress once)."""
    frames = await client.exchange(await client.tool("slow_progress", id, progress="long", steps=100, delay_ms=50))
    async with asyncio.timeout(HANG_GUARD_S):
        first = await anext(frames)
    assert isinstance(first, Notify)
    return frames, first


async def test_abandoning_a_call_leaves_the_upstream_serving(under_test: Subject) -> None:
    """Closing the iteration mid-call abandons the call and the upstream serves the next ones; a late
    answer to the abandoned call reaches nobody, even a new call under the same id (MCP 2026-07-28
    basic/patterns/cancellation: on stdio a `notifications/cancelled`, on Streamable HTTP closing the
    stream). The same id is reused by the sessionless client only: there the gateway owns the ids on the
    wire; a client with a session of its own must not reuse one (2025-11-25 basic, Requests), and on a
    handshake-era HTTP server its ids reach the server unchanged."""
    for client, reused in ((await under_test.client("a"), None), (await under_test.client(None), 9)):
        frames, _ = await _first_progress(client, reused)
        await frames.aclose()
        assert await client.text("echo", reused, text="after") == "after"
    assert await (await under_test.client("b")).text("echo", text="other") == "other"


async def test_cancelling_the_task_of_a_call_leaves_the_upstream_serving(under_test: Subject) -> None:
    """The same when the task iterating the call is cancelled (a deadline, a client gone)
    (MCP 2026-07-28 basic/patterns/cancellation)."""
    client = await under_test.client()
    started = asyncio.Event()

    async def long_call() -> None:
        frames, _ = await _first_progress(client, None)
        async with contextlib.aclosing(frames):
            started.set()
            async for _ in frames:
                pass

    task = asyncio.create_task(long_call())
    async with asyncio.timeout(HANG_GUARD_S):
        await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await client.text("echo", text="after") == "after"


# --------------------------------------------------------------------------- death, restart


async def _crash(client: Client) -> UpstreamError:
    """The server process dies mid-call: the call ends with an UpstreamError, never hangs."""
    with pytest.raises(UpstreamError) as caught:
        await client.run_tool("crash")
    return caught.value


async def test_death_mid_call_ends_the_call_with_an_upstream_error(under_test: Subject) -> None:
    """A server that dies while answering ends the call with `UpstreamUnavailable` (transport_closed):
    the dispatcher turns it into a JSON-RPC error with a tunnel_failure, the client is never left hanging
    (MCP 2026-07-28 basic, Responses: every request gets a response or an error)."""
    client = await under_test.client()
    error = await _crash(client)
    assert isinstance(error, UpstreamUnavailable)
    assert error.failure.source == "transport_closed"
    assert error.failure.upstream_response_received is False
    await under_test.revive()
    assert await client.text("echo", text="alive") == "alive"


async def test_restart_after_death_serves_from_a_new_process(under_test: Subject) -> None:
    """After the server died the next calls succeed, answered by a new server process.

    stdio transports restart their processes themselves (here every process of a pool dies, so the
    next call waits for one to be back).
    An HTTP server is external: while it is down calls fail fast and `problem` says why; once it is
    started again on its port the upstream recovers by itself; a handshake-era server's client sessions
    died with it, so such a client gets 404 and initializes again (2025-11-25 basic/transports,
    session management), while the gateway's own session is renewed for its callers."""
    client = await under_test.client()
    sessionless = await under_test.client(None)
    before = set(await asyncio.gather(whoami(client), whoami(client)))  # both processes of a pool
    await asyncio.gather(_crash(client), _crash(client))  # every process of a pool: the next call waits
    server = under_test.http_server
    if server is not None:  # nothing restarts an external server: it stays down until started again
        await server.dead()
        await _down_while_dead(client)
        await server.revive()
        await under_test.upstream.wait_info()  # recovered: the next use probes it again
        assert under_test.upstream.ready
        assert under_test.upstream.problem is None
        if under_test.upstream.holds_sessions:  # the client's session died with the server
            _, gone = await client.run_tool("echo", text="old session")
            assert gone.status == 404
            await under_test.reopen()
    assert await whoami(client) not in before
    assert await sessionless.text("echo", text="renewed") == "renewed"


async def _down_while_dead(client: Client) -> None:
    """An HTTP server that died: a call fails at once, and the upstream says it is down and why."""
    with pytest.raises(UpstreamUnavailable) as caught:
        await client.run_tool("echo", text="nobody home")
    assert caught.value.failure.source == "connect"
    upstream = client.subject.upstream
    assert not upstream.ready
    assert upstream.info is None
    assert upstream.problem is not None
    assert upstream.problem.startswith("connect refused 127.0.0.1:")


# --------------------------------------------------------------------------- oversized messages


async def test_oversized_answer_fails_its_call_and_the_upstream_keeps_serving(under_test: Subject) -> None:
    """An answer over `gateway.max_message_bytes` fails its call with `response_body_too_large`
    (nothing of it is relayed) and the next call is served (MCP 2026-07-28 basic/transports: a
    receiver may refuse messages it cannot handle; the gateway's limit is documented in the README)."""
    client = await under_test.client()
    with pytest.raises(UpstreamProtocolError) as caught:
        await client.run_tool("big", n=MAX_MESSAGE_BYTES * 2)
    assert caught.value.failure.transport_error_kind == "response_body_too_large"
    assert len(await client.text("big", n=MAX_MESSAGE_BYTES // 4)) == MAX_MESSAGE_BYTES // 4
    assert await client.text("echo", text="after") == "after"


async def test_oversized_answer_fails_only_its_own_call_while_others_run(under_test: Subject) -> None:
    """The same with another client's call in flight on the upstream: the oversized answer fails its own
    call (not some other, and not never), and the other call goes on receiving its frames
    (MCP 2026-07-28 basic, Responses: every request gets a response or an error)."""
    other, _ = await _first_progress(await under_test.client("b"), None)
    async with contextlib.aclosing(other):
        client = await under_test.client()
        with pytest.raises(UpstreamProtocolError) as caught:
            await client.run_tool("big", n=MAX_MESSAGE_BYTES * 2)
        assert caught.value.failure.transport_error_kind == "response_body_too_large"
        async with asyncio.timeout(HANG_GUARD_S):
            going_on = await anext(other)
        assert isinstance(going_on, Notify)
        assert progress_of(going_on)["progressToken"] == "long"
    assert await client.text("echo", text="after") == "after"
