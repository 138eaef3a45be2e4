"""Coverage-guided fuzzing of the gateway's sans-IO core with atheris (libFuzzer), for long runs outside CI.

    bash scripts/bootstrap.sh && .tools/uv/bin/uv sync --locked --extra test --extra fuzz
    # (or, in any environment that has the gateway: pip install atheris)
    .venv/bin/python scripts/fuzz_atheris.py TARGET [libFuzzer flags]
    .venv/bin/python scripts/fuzz_atheris.py wire -max_total_time=600 -print_final_stats=1

TARGET is one of: wire, timeout, eras, routing, sse, framing. Each keeps the property the
hypothesis suite (tests/unit/protocol/test_fuzz_core.py) checks, on inputs libFuzzer evolves for coverage:
- wire: a poll body, each command and a client message decode or raise `msgspec.DecodeError`,
  never anything else (no RecursionError, whatever the depth);
- timeout: `parse_response_timeout` follows the v1 grammar and returns None for anything else;
- eras: any decodable `params` is bridged or refused with `InvalidRequestParams` (-32602);
- routing: any routing.yaml loads or raises `ConfigError` naming the file, a key and what was expected;
- sse, framing: a stream split at a fuzzed point parses exactly like the whole stream.
A violation raises, libFuzzer stops and writes the input to `crash-*` (replay it by passing the file).
`scripts/soak.sh` runs every target for ATHERIS_SECONDS each and prints libFuzzer's final figures.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable
from pathlib import Path

try:
    import atheris
except ImportError:  # pragma: no cover - documented above
    sys.exit("fuzz_atheris: atheris is missing (uv sync --locked --extra test --extra fuzz, or pip install atheris)")

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

with atheris.instrument_imports():
    import msgspec
    from msgspec import Raw

    from gateway.config import routing as routing_config
    from gateway.protocol import jsonscan
    from gateway.protocol.eras import EMPTY_OBJECT, Bridge
    from gateway.protocol.errors import ConfigError, InvalidRequestParams
    from gateway.protocol.sse import SseError, SseParser
    from gateway.protocol.wire import Codec, parse_response_timeout
    from gateway.upstream.framing import LineDecoder

CODEC = Codec()
BRIDGE = Bridge(CODEC)
GRAMMAR = re.compile(r"[0-9]+(ns|us|ms|s|m|h)")


def wire(data: bytes) -> None:
    jsonscan.members(data)
    jsonscan.nesting_exceeds(data, 16)
    with contextlib.suppress(msgspec.DecodeError):
        CODEC.client_message(data)
    try:
        commands = CODEC.batch(data).commands
    except msgspec.DecodeError:
        commands = [Raw(data)]
    for raw in commands:
        with contextlib.suppress(msgspec.DecodeError):
            CODEC.command(raw)


def timeout(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    parsed = parse_response_timeout(text)
    if GRAMMAR.fullmatch(text) is None and parsed is not None:
        raise AssertionError(f"{text!r} is outside the grammar but parsed as {parsed}")
    if parsed is not None and parsed < 0:
        raise AssertionError(f"{text!r} parsed as a negative duration")


def eras(data: bytes) -> None:
    try:
        params = msgspec.json.decode(data, type=Raw)
    except (msgspec.DecodeError, RecursionError):
        return  # only decodable params reach the bridge
    with contextlib.suppress(InvalidRequestParams):
        BRIDGE.modern_params(params, EMPTY_OBJECT, BRIDGE.client_info)
    BRIDGE.legacy_params(params)
    BRIDGE.client_era(params, {})
    BRIDGE.modern_result("tools/list", params, EMPTY_OBJECT)
    BRIDGE.legacy_result(params)


def routing(data: bytes) -> None:
    try:
        routing_config.parse(data, "fuzz.yaml")
    except ConfigError as exc:
        if exc.file != "fuzz.yaml" or not exc.key or not exc.expected:
            raise AssertionError(f"a ConfigError without file, key and expectation: {exc}") from None


def _split(data: bytes) -> tuple[bytes, int]:
    provider = atheris.FuzzedDataProvider(data)
    cut = provider.ConsumeIntInRange(0, 1 << 16)
    stream = provider.ConsumeBytes(provider.remaining_bytes())
    return stream, min(cut, len(stream))


def sse(data: bytes) -> None:
    stream, cut = _split(data)
    whole = SseParser().feed(stream)
    parser = SseParser()
    if parser.feed(stream[:cut]) + parser.feed(stream[cut:]) != whole:
        raise AssertionError("an SSE stream parsed differently when split")
    with contextlib.suppress(SseError):
        SseParser(max_event_bytes=64).feed(stream)


def framing(data: bytes) -> None:
    stream, cut = _split(data)
    whole = list(LineDecoder(32).feed(stream))
    decoder = LineDecoder(32)
    if list(decoder.feed(stream[:cut])) + list(decoder.feed(stream[cut:])) != whole:
        raise AssertionError("stdio framing differed when the stream was split")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "wire": wire,
    "timeout": timeout,
    "eras": eras,
    "routing": routing,
    "sse": sse,
    "framing": framing,
}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: fuzz_atheris.py {{{'|'.join(TARGETS)}}} [libFuzzer flags]")
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
