"""No payload retention: with the audit log on, telemetry exported to a real OTLP receiver and logging at DEBUG, no
byte of a call's arguments or results is written anywhere by the gateway (its audit files, its log, its stdout, the
OTLP span, metric and log exports) unless `telemetry.capture_arguments` is on; with it on, the same markers do
reach the spans (so the search below can find them)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mcp import Client

from gateway.observe.otel import SCOPE
from tests.support.harness import PYTHON, SERVERS, gateway, tool_text
from tests.support.otlp_receiver import FAST_EXPORT, otlp_receiver
from tests.support.waiting import until


@pytest.mark.parametrize("capture", [False, True])
async def test_nothing_of_arguments_or_results_is_written(capture: bool, tmp_path: Path) -> None:
    argument = f"arg-marker-{uuid.uuid4().hex}"
    result = f"result-marker-{uuid.uuid4().hex}"  # only ever in a result: the server's environment holds it
    prompt = f"prompt-marker-{uuid.uuid4().hex}"
    markers = (argument, result, prompt)
    out = tmp_path / "out"
    out.mkdir()
    async with otlp_receiver() as receiver:
        script = SERVERS / "sdk_server.py"
        server = f"{{stdio: {{command: '{PYTHON}', args: ['{script}'], env: {{RESULT_MARKER: '{result}'}}}}}}"
        routes = (
            "relay: {listen: '127.0.0.1:0'}\n"
            f"audit: {{file: '{out / 'audit.jsonl'}', max_bytes: 2000, backups: 3}}\n"
            f"telemetry: {{endpoint: '{receiver.url}', capture_arguments: {str(capture).lower()}}}\n"
            "logging: {level: DEBUG}\n"
            f"servers:\n  a: {server}\nchannels:\n  main: [a]\n"
        )
        env = {**FAST_EXPORT, "OTEL_BLRP_SCHEDULE_DELAY": "100"}
        with (out / "gateway.stderr").open("wb") as stderr:
            async with gateway(routes, tmp_path, env=env, stderr=stderr) as gw:
                async with Client(gw.urls["main"], mode="legacy") as client:
                    for _ in range(5):  # enough lines to rotate the audit file
                        assert tool_text(await client.call_tool("echo", {"text": argument})) == argument
                    assert tool_text(await client.call_tool("getenv", {"variable": "RESULT_MARKER"})) == result
                    greeting = await client.get_prompt("greet", {"who": prompt})
                    assert prompt in str(greeting.messages[0].content)
                await until(lambda: (out / "audit.jsonl.1").exists(), within_s=30)
                await receiver.wait_for(
                    lambda r: (
                        bool(r.named("tools/call echo", scope=SCOPE))
                        and sum(1 for log in r.logs if log.event_name == "gateway.call") >= 7
                    )
                )
                stdout = "\n".join(gw.process.lines)

    written = {path.name: path.read_bytes().decode("latin-1") for path in out.iterdir()}
    assert {"audit.jsonl", "audit.jsonl.1", "gateway.stderr"} <= written.keys()
    assert "DEBUG" in written["gateway.stderr"]  # the log really was at DEBUG
    calls = [log for log in receiver.logs if log.event_name == "gateway.call"]
    assert {log.attributes["gateway.call.name"] for log in calls if "gateway.call.name" in log.attributes} >= {
        "echo",
        "getenv",
        "greet",
    }
    assert all("gateway.call.session" not in log.attributes for log in calls)
    exports = b"".join(receiver.raw).decode("latin-1")
    written |= {"stdout": stdout, "OTLP exports": exports}
    if not capture:
        for where, text in written.items():
            for marker in markers:
                assert marker not in text, f"{marker} was written to {where}"
    else:
        # Spans carry what capture_arguments records; the audit files and the OTLP log records never do.
        spans = [span for span in receiver.spans if span.scope == SCOPE]
        assert any(argument in str(span.attributes) for span in spans)
        assert any(result in str(span.attributes) for span in spans)
        for name in ("audit.jsonl", "audit.jsonl.1"):
            assert not any(marker in written[name] for marker in markers)
        assert not any(marker in str(log.attributes) + str(log.body) for log in calls for marker in markers)
