"""Seeded generators of malformed tunnel commands and HTTP requests for the live fuzzers, each with
the contract's verdict on it (must it be answered?). Fast and reproducible: `random.Random(seed)`.

The verdict follows the v1 contract as the gateway keeps it: a command is answered when its
`request_id` and `shard_token` are strings (without lone surrogates), its `command_type` is
absent, `jsonrpc` or `session_termination`, its `channel` absent or a string, and its
`response_timeout` has not passed (`0s`, anything under a millisecond). Everything else in it may
be anything: a malformed JSON-RPC message, `headers` or timeout is still answered (400, -32600).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Final

LONE: Final = ['"\\ud800"', '"\\udfff"', '"x\\udc00y"']
UNITS: Final = ("ns", "us", "ms", "s", "m", "h")
LEGACY: Final = {"Mcp-Protocol-Version": ["2025-11-25"]}
POLL_QUERIES: Final = (
    "",
    "limit=0",
    "limit=26",
    "limit=a",
    "limit=1&limit=2",
    "timeout_ms=-1",
    "channel=BAD",
    "channel=main&channel=x",
    "timeout_ms=99999999999999999999",
)
METHODS: Final = ("ping", "tools/list", "tools/call", "resources/read", "prompts/get", "initialize", "nope/x", "")


@dataclass
class FuzzCommand:
    members: bytes
    """The raw command text (a whole JSON object)."""
    request_id: str
    shard_token: str
    channel: str | None
    answered: bool
    """The contract's verdict: exactly one terminal frame is due."""
    upstream: bool
    """It may reach an MCP server (slower)."""


class CommandFuzzer:
    def __init__(self, seed: int, channels: tuple[str, ...]) -> None:
        self.rng = random.Random(seed)
        self.channels = channels
        self.count = 0

    # ---------------------------------------------------------------- JSON values

    def value(self, depth: int = 0) -> bytes:
        """Raw JSON text of a random value: scalars, containers, deep nesting, lone surrogates."""
        r = self.rng
        pick = r.random()
        if pick < 0.04:
            n = r.randint(600, 3000)
            return b"[" * n + b"]" * n if r.random() < 0.5 else b'{"a":' * n + b"1" + b"}" * n
        if pick < 0.08:
            return r.choice(LONE).encode()
        if pick < 0.45 or depth > 2:
            return r.choice(
                [
                    b"null",
                    b"true",
                    b"false",
                    b"0",
                    b"-1",
                    b"1e400",
                    b"12345678901234567890123",
                    b'""',
                    b'"x"',
                    b"3.5",
                    b'"\\u0000"',
                    b'"30s"',
                ]
            )
        if pick < 0.7:
            return b"[" + b",".join(self.value(depth + 1) for _ in range(r.randint(0, 3))) + b"]"
        keys = [
            "name",
            "arguments",
            "_meta",
            "uri",
            "cursor",
            "x",
            "progressToken",
            "protocolVersion",
            "io.modelcontextprotocol/protocolVersion",
        ]
        members = [b'"%s":%s' % (r.choice(keys).encode(), self.value(depth + 1)) for _ in range(r.randint(0, 3))]
        return b"{" + b",".join(members) + b"}"

    # ---------------------------------------------------------------- commands

    def jsonrpc(self) -> tuple[bytes, bool, dict[str, list[str]] | None]:
        """(raw `jsonrpc` value, may it reach a server, headers it needs)."""
        r = self.rng
        kind = r.random()
        id = r.choice([b"1", b'"a"', b"null", b"-7", b"1.5", b"[1]", b'{"x":1}', b"12345678901234567890123"])
        if kind < 0.35:  # not a JSON-RPC message the gateway can use: answered 400 locally
            junk = [self.value(), b'{"jsonrpc":"2.0"}', b'{"id":1}', b'{"jsonrpc":"2.0","id":1,"method":7}', b"[]"]
            return r.choice(junk), False, None
        if kind < 0.7:  # handshake-era requests the gateway answers itself (ping, initialize) or bridges
            method = r.choice(["ping"] * 7 + ["tools/list", "initialize", "initialize"])
            params = b"" if r.random() < 0.3 else b',"params":' + self.value()
            message = b'{"jsonrpc":"2.0","id":%s,"method":"%s"%s}' % (id, method.encode(), params)
            return message, method == "tools/list", LEGACY
        if kind < 0.75:  # a client's answer to a request nobody sent
            return b'{"jsonrpc":"2.0","id":%s,"result":%s}' % (id, self.value()), True, None
        if kind < 0.8:  # a notification
            method = r.choice(["notifications/initialized", "notifications/cancelled", "notifications/x"])
            return b'{"jsonrpc":"2.0","method":"%s","params":%s}' % (method.encode(), self.value()), True, None
        method = r.choice(METHODS).encode()
        params = b"" if r.random() < 0.2 else b',"params":' + self.value()
        extra = b',"extra":' + self.value() if r.random() < 0.2 else b""
        return b'{"jsonrpc":"2.0","id":%s,"method":"%s"%s%s}' % (id, method, params, extra), True, None

    def command(self) -> FuzzCommand:
        r = self.rng
        self.count += 1
        request_id = f"fz-{self.count}"
        fields: dict[str, bytes] = {}
        answered, upstream = True, False
        # the envelope
        if r.random() < 0.06:  # unusable: nothing can answer it
            answered = False
            choice = r.randint(0, 3)
            if choice == 0:
                fields["request_id"] = r.choice([b"7", b"null", b"[]", r.choice(LONE).encode()])
            elif choice == 1:
                fields["request_id"] = json.dumps(request_id).encode()
                fields["shard_token"] = r.choice([b"1", b"{}", r.choice(LONE).encode()])
            elif choice == 2:
                fields["shard_token"] = b'"s"'
            else:
                fields["request_id"] = json.dumps(request_id).encode()
                fields["shard_token"] = b'"s"'
                fields["channel"] = r.choice([b"5", b"[]", b'{"a":1}', r.choice(LONE).encode()])
        channel: str | None = None
        if r.random() < 0.25:
            channel = r.choice([*self.channels, "nope", "", "UPPER", "x" * 80])
            fields.setdefault("channel", json.dumps(channel).encode())
        command_type = r.random()
        if command_type < 0.04:
            fields["command_type"] = r.choice([b'"oauth_x"', b'"JSONRPC"', b'""'])
            answered = False
        elif command_type < 0.08:
            fields["command_type"] = b'"session_termination"'
        elif command_type < 0.1:
            fields["command_type"] = r.choice([b"1", b"null", b"[]"])
            answered = False
        else:
            if command_type < 0.2:
                fields["command_type"] = b'"jsonrpc"'
            if r.random() < 0.95:
                message, upstream, headers = self.jsonrpc()
                fields["jsonrpc"] = message
                if headers is not None:
                    fields["headers"] = json.dumps(headers).encode()
        # the rest of the command
        timing = r.random()
        if timing < 0.08:
            value = r.choice(["0s", "0ms", "1ns", "100ns", "1us", "999us", "0h", "00s"])
            fields["response_timeout"] = json.dumps(value).encode()
            answered = False
        elif timing < 0.25:
            fields["response_timeout"] = r.choice(
                [
                    b"5",
                    b"true",
                    b"[]",
                    b'{"s":1}',
                    b'"1.5s"',
                    b'"-1s"',
                    b'"30d"',
                    b'" 1s"',
                    b'"99999999999999999999h"',
                    b'"60s"',
                    b"null",
                    self.value(),
                ]
            )
        if r.random() < 0.1:
            fields["headers"] = r.choice([b'{"x":"y"}', b"[]", b'{"Mcp-Session-Id":[7]}', self.value()])
        if r.random() < 0.1:
            fields[r.choice(["created_at", "unknown_field", "resp_json"])] = self.value()
        if answered and "request_id" not in fields:
            fields["request_id"] = json.dumps(request_id).encode()
            fields["shard_token"] = json.dumps(f"shard-{self.count}").encode()
        names = list(fields)
        r.shuffle(names)
        members = b"{" + b",".join(b'"%s":%s' % (name.encode(), fields[name]) for name in names) + b"}"
        return FuzzCommand(members, request_id, f"shard-{self.count}", channel, answered, upstream and answered)


# --------------------------------------------------------------------------- HTTP


@dataclass
class FuzzRequest:
    data: bytes
    framed: bool
    """Well-framed HTTP/1.1 (the connection may carry more requests after it)."""


class RequestFuzzer:
    """Requests for a relay with tunnel `open_tunnel` (MCP endpoint, never polled) and `gw_tunnel`
    (polled and posted to with `key`)."""

    def __init__(self, seed: int, *, open_tunnel: str, gw_tunnel: str, key: str, port: int) -> None:
        self.rng = random.Random(seed)
        self.commands = CommandFuzzer(seed + 1, ("main",))
        self.open, self.gw, self.key, self.port = open_tunnel, gw_tunnel, key, port

    def path(self) -> str:
        r = self.rng
        return r.choice(
            [
                f"/v1/mcp/{self.open}",
                f"/v1/mcp/{self.open}/{r.choice(['main', 'files', 'BAD', '%2e%2e', 'x' * 70])}",
                f"/v1/mcp/{r.choice(['nope', '%00', '..', 'a' * 200])}",
                f"/v1/tunnels/{self.gw}/poll?{r.choice(POLL_QUERIES)}",
                f"/v1/tunnels/{self.gw}/response",
                f"/v1/tunnels/{self.gw}",
                f"/v1/tunnels/{r.choice(['nope', self.open, '%2F'])}/poll",
                r.choice(["/healthz", "/readyz", "/metrics", "/", "/v1/tunnels", "/" + "a" * 3000, "/%ZZ", "/v1/mcp/"]),
            ]
        )

    def headers(self) -> dict[str, str]:
        r = self.rng
        out: dict[str, str] = {}
        options = {
            "Authorization": [f"Bearer {self.key}", "Bearer wrong", "Basic x", "Bearer", f"Bearer  {self.key} "],
            "Content-Type": ["application/json", "text/plain", "application/json; charset=latin-1", ""],
            "Accept": ["application/json, text/event-stream", "text/event-stream", "*/*", "application/xml"],
            "Mcp-Session-Id": ["s1", "", "x" * 500],
            "Mcp-Protocol-Version": ["2025-11-25", "2026-07-28", "1999-01-01", ""],
            "Origin": ["http://127.0.0.1", "http://evil.example", "null", ""],
            "X-Tunnel-Shard-Token": ["s", "", "x" * 300],
            "X-Tunnel-MCP-Server-Info": [
                '{"version":1,"channels":[{"name":"main","proc_affinity":true}]}',
                "[" * 1500 + "]" * 1500,
                "{",
                '{"version":"x"}',
            ],
            "Last-Event-ID": ["1", "x"],
            "Host": ["127.0.0.1", "evil.example", "[::1]:1"],
        }
        for name, values in options.items():
            if r.random() < 0.3:
                out[name] = r.choice(values)
        return out

    def body(self) -> bytes:
        r = self.rng
        pick = r.random()
        if pick < 0.15:
            return b""
        if pick < 0.3:
            return bytes(r.getrandbits(8) for _ in range(r.randint(1, 64)))
        if pick < 0.55:
            message, _, _ = self.commands.jsonrpc()
            return message
        if pick < 0.7:  # a TunnelResponsePayload, more or less
            fields = [
                b'"request_id":%s' % r.choice([b'"r"', b"1", self.commands.value()]),
                b'"resp_code":%s' % r.choice([b"200", b'"x"', b"1e99"]),
            ]
            if r.random() < 0.7:
                fields.append(b'"resp_type":%s' % r.choice([b'"jsonrpc_response"', b'"x"', b"null"]))
            if r.random() < 0.7:
                fields.append(b'"resp_json":%s' % self.commands.value())
            if r.random() < 0.2:
                fields.append(b'"extra":1')
            return b"{" + b",".join(fields) + b"}"
        if pick < 0.8:
            return b"[" + b",".join(self.commands.jsonrpc()[0] for _ in range(r.randint(0, 3))) + b"]"
        return self.commands.value()

    def request(self) -> FuzzRequest:
        r = self.rng
        if r.random() < 0.15:
            return FuzzRequest(self.malformed(), framed=False)
        method = r.choice(["POST"] * 5 + ["GET"] * 3 + ["DELETE", "PUT", "OPTIONS", "PATCH"])
        body = self.body()
        headers = self.headers()
        host = headers.pop("Host", f"127.0.0.1:{self.port}")
        lines = [f"{method} {self.path()} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return FuzzRequest(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body, framed=True)

    def malformed(self) -> bytes:
        r = self.rng
        path = self.path().encode()
        return r.choice(
            [
                b"GET %s HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n" % path,
                b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd" % path,
                b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n" % path,
                b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n0\r\n\r\n"
                % path,
                b"GET %s\x00 HTTP/1.1\r\nHost: x\r\n\r\n" % path,
                b"GET %s HTTP/1.1\r\nBad Header\r\n\r\n" % path,
                b"GET %s HTTP/1.1\r\nX: \x01\x7f\r\n\r\n" % path,
                b"GET %s HTTP/9.9\r\n\r\n" % path,
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"
                + bytes(r.getrandbits(8) for _ in range(40))
                + b"\r\n\r\n",
                b"GET %s HTTP/1.1\r\nHost: x\r\nX-Big: %s\r\n\r\n" % (path, b"a" * r.choice([9000, 70000])),
                b"%s\r\n\r\n" % bytes(r.choice(b"ABCDEFGHIJ /:\t") for _ in range(r.randint(1, 60))),
                b"GET %s HTTP/1.1\r\nHost: x\r\n" % path + b"X-H: 1\r\n" * 200 + b"\r\n",
            ]
        )


def summary(commands: list[FuzzCommand]) -> dict[str, Any]:
    return {
        "commands": len(commands),
        "must answer": sum(c.answered for c in commands),
        "must not answer": sum(not c.answered for c in commands),
        "may reach a server": sum(c.upstream for c in commands),
    }
