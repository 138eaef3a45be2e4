"""Range checks written as msgspec `Meta` constraints (routing.yaml and relay.yaml) still name the
file, the key path and what was expected, in words rather than msgspec's `>= 1`."""

from __future__ import annotations

import re

import pytest

from gateway.config import routing as config
from gateway.protocol.errors import ConfigError
from gateway.relay.config import RelayConfigError, decode_relay_config

MSGSPEC_WORDING = re.compile(r"`(int|float|str|array|object)`|[<>]|regex")
"""How msgspec says a constraint; the messages say it in words."""
BASE = "servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\n"


@pytest.mark.parametrize(
    ("document", "key", "expected"),
    [
        (BASE + "gateway: {polls_in_flight: 17}", "gateway.polls_in_flight", "an integer of at most 16"),
        (BASE + "gateway: {polls_in_flight: 0}", "gateway.polls_in_flight", "an integer of at least 1"),
        (BASE + "gateway: {max_message_bytes: 1023}", "gateway.max_message_bytes", "an integer of at least 1024"),
        (BASE + "telemetry: {sampling_ratio: 1.5}", "telemetry.sampling_ratio", "a number of at most 1"),
        (BASE + "telemetry: {sampling_ratio: -0.5}", "telemetry.sampling_ratio", "a non-negative number"),
        (BASE + "limits: {max_waiting: -1}", "limits.max_waiting", "a non-negative integer"),
        (BASE + "limits: {rules: [{scope: tool, rate: 1/s, burst: 0}]}", "limits.rules[0].burst", "at least 1"),
        (BASE + "limits: {rules: [{scope: tool, concurrency: 2, burst: 3}]}", "limits.rules[0].burst", "with a `rate`"),
        (BASE + "sessions: {ttl_s: 0}", "sessions.ttl_s", "a positive number of seconds"),
        (BASE + "routes: [{limit_key: ''}]", "routes[0].limit_key", "a non-empty string"),
        (BASE + "control_plane: {url: 'https://cp', tunnel_id: ''}", "control_plane.tunnel_id", "a non-empty string"),
        ("servers: {a: {stdio: {command: ''}}}\nchannels: {main: [a]}", "servers.a.stdio.command", "non-empty"),
        (
            "servers: {a: {http: {url: 'http://127.0.0.1:9/', spawn: {command: ''}}}}\nchannels: {main: [a]}",
            "servers.a.http.spawn.command",
            "non-empty",
        ),
        # NaN compares false with everything: the old `<= 0` check let it through
        (
            "servers: {a: {stdio: {command: x}, idle_timeout_s: .nan}}\nchannels: {main: [a]}",
            "servers.a.idle_timeout_s",
            "a positive number of seconds",
        ),
        (
            "servers: {a: {stdio: {command: x}, max_sessions: 0}}\nchannels: {main: [a]}",
            "servers.a.max_sessions",
            "at least 1",
        ),
        ("servers: {a: {stdio: {command: x}}}\nchannels: {}", "channels", "at least one"),
        (
            "servers: {a: {stdio: {command: x}}}\nchannels: {main: {servers: [a], cache_ttl_s: -1}}",
            "channels.main.cache_ttl_s",
            "a non-negative number of seconds",
        ),
        (
            "servers: {a: {stdio: {command: x}}}\nchannels: {main: {servers: [a], separator: 'a b'}}",
            "channels.main.separator",
            "without spaces",
        ),
        (
            'servers: {a: {stdio: {command: x}}}\nchannels: {main: {servers: [a], separator: "_\\n"}}',
            "channels.main.separator",
            "without spaces",
        ),
    ],
)
def test_constraint_errors_name_file_key_and_expectation(document: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        config.parse((document + "\n").encode(), "conf/routing.yaml")
    assert (failure.value.file, failure.value.key) == ("conf/routing.yaml", key), failure.value
    assert expected in failure.value.expected, failure.value
    assert not MSGSPEC_WORDING.search(failure.value.expected), failure.value
    assert str(failure.value) == f"conf/routing.yaml: {key}: expected {failure.value.expected}"


def test_values_at_the_bounds_load() -> None:
    loaded = config.parse(
        (
            b"servers: {a: {stdio: {command: x}, max_sessions: 1, request_timeout_s: 0.001}}\n"
            b"channels: {main: {servers: [a], cache_ttl_s: 0, page_size: 1, separator: '.'}}\n"
            b"gateway: {polls_in_flight: 16, max_message_bytes: 1024}\n"
            b"telemetry: {sampling_ratio: 0}\n"
            b"limits: {max_waiting: 0}\n"
        ),
        "routing.yaml",
    )
    assert loaded.gateway.polls_in_flight == 16
    assert config.channel_spec(loaded, "main").cache_ttl_s == 0


def test_a_relay_burst_below_one_names_its_key() -> None:
    """`client_burst: 0` used to be reported against the whole tunnel entry."""
    with pytest.raises(RelayConfigError) as failure:
        decode_relay_config("tunnels: {t1: {gateway_key: k, client_rate: 1/s, client_burst: 0}}\n", source="relay.yaml")
    assert failure.value.key == "$.tunnels.t1.client_burst"
    assert ">= 1" in failure.value.problem
    with pytest.raises(RelayConfigError) as failure:
        decode_relay_config("tunnels: {t1: {gateway_key: k, client_burst: 2}}\n", source="relay.yaml")
    assert (failure.value.key, "client_rate" in failure.value.problem) == ("$.tunnels.t1", True)
    assert isinstance(failure.value, ConfigError)
