"""gateway.config.routing with plain calls: a routing.yaml loads, or fails naming the file, the key and what was
expected."""

from __future__ import annotations

import json

import pytest

from gateway.config import routing as config
from gateway.protocol.errors import ConfigError

# --------------------------------------------------------------------------- the document


GOOD = """
servers:
  clock: {stdio: {command: python3, args: [-m, x]}}
  docs: {http: {url: 'http://127.0.0.1:8080/mcp', headers: {Authorization: 'env:DOCS_TOKEN'}}}
channels:
  main: [clock]
  docs: [docs]
"""


def test_good_routing_file_loads() -> None:
    routes = config.parse(GOOD.encode(), "routing.yaml")
    assert routes.control_plane is None
    assert routes.servers["clock"].transport == "stdio"
    assert routes.servers["docs"].http is not None
    assert routes.relay.listen == "127.0.0.1:8780"


@pytest.mark.parametrize(
    ("document", "key", "expected"),
    [
        ("servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\nbogus: 1\n", "(top level)", "unknown field"),
        ("servers: {a: {stdio: {command: x, argz: []}}}\nchannels: {main: [a]}\n", "servers.a.stdio", "argz"),
        ("servers: {a: {http: {url: 'ftp://x'}}}\nchannels: {main: [a]}\n", "servers.a.http.url", "http(s) URL"),
        (
            "servers: {a: {stdio: {command: x}, http: {url: 'http://h'}}}\nchannels: {main: [a]}\n",
            "servers.a",
            "exactly one",
        ),
        ("servers: {a: {stdio: {command: x}}}\nchannels: {main: [a, a]}\n", "channels.main", "each server named once"),
        ("servers: {a: {stdio: {command: x}}}\nchannels: {}\n", "channels", "at least one"),
        (
            "servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\nrelay: {listen: nope}\n",
            "relay.listen",
            "HOST:PORT",
        ),
        (
            "servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\ngateway: {max_inflight: 0}\n",
            "gateway.max_inflight",
            "at least 1",
        ),
        (
            "servers: {a: {stdio: {command: x}, request_timeout_s: 0}}\nchannels: {main: [a]}\n",
            "servers.a.request_timeout_s",
            "a positive number of seconds",
        ),
    ],
)
def test_bad_routing_files_name_the_key(document: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as error:
        config.parse(document.encode(), "conf/routing.yaml")
    assert error.value.file == "conf/routing.yaml"
    assert error.value.key == key
    assert expected in str(error.value)
    assert str(error.value).startswith("conf/routing.yaml: ")


# --------------------------------------------------------------------------- routes and channels


BASE = "servers: {a: {stdio: {command: x}}, b: {stdio: {command: y}}}\nchannels: {main: [a, b], solo: [a]}\n"


@pytest.mark.parametrize(
    ("extra", "key", "expected"),
    [
        ("routes: [{match: {channel: nope}, deny: x}]", "routes[0].match.channel", "a channel defined"),
        ("routes: [{match: {channel: [main, nope]}, deny: x}]", "routes[0].match.channel", "'nope'"),
        ("routes: [{to: ghost}]", "routes[0].to", "a server defined under `servers` (got 'ghost'"),
        ("routes: [{match: {name: 'admin_[x'}, deny: x}]", "routes[0].match.name", "unclosed '['"),
        ("routes: [{match: {method: ''}, deny: x}]", "routes[0].match.method", "an empty pattern"),
        ("routes: [{match: {headers: {x-tenant: 'a]'}}, deny: x}]", "routes[0].match.headers.x-tenant", "glob"),
        ("routes: [{match: {name: x}}]", "routes[0]", "one of `to`, `deny` or `limit_key`"),
        ("routes: [{to: a, deny: nope}]", "routes[0]", "not both"),
        ("routes: [{match: {nam: x}, deny: y}]", "routes[0].match", "unknown field"),
        ("routes: [{limit_key: 3}]", "routes[0].limit_key", "str"),
    ],
)
def test_bad_routes_are_refused_at_load_time(extra: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as failure:
        config.parse((BASE + extra + "\n").encode(), "routing.yaml")
    assert failure.value.file == "routing.yaml"
    assert failure.value.key == key, failure.value
    assert expected in failure.value.expected, failure.value


@pytest.mark.parametrize(
    ("channels", "key", "expected"),
    [
        ("{main: {servers: [a, zz]}}", "channels.main", "'zz'"),
        ("{main: {servers: [a], prefix: sometimes}}", "channels.main.prefix", "'sometimes'"),
        ("{main: {servers: [a], separator: ''}}", "channels.main.separator", "non-empty"),
        ("{main: {servers: [a], rename: {b: {x: y}}}}", "channels.main.rename.b", "a server of this channel"),
        ("{main: {servers: [a], page_size: 0}}", "channels.main.page_size", "at least 1"),
        ("{main: {servers: []}}", "channels.main", "at least one server"),
        ("{main: {serverz: [a]}}", "channels.main", "unknown field"),
    ],
)
def test_bad_channel_options_are_refused_at_load_time(channels: str, key: str, expected: str) -> None:
    document = f"servers: {{a: {{stdio: {{command: x}}}}, b: {{stdio: {{command: y}}}}}}\nchannels: {channels}\n"
    with pytest.raises(ConfigError) as failure:
        config.parse(document.encode(), "routing.yaml")
    assert (failure.value.key, expected in failure.value.expected) == (key, True), failure.value


def test_channels_in_both_forms_load() -> None:
    loaded = config.parse(
        (
            b"servers: {a: {stdio: {command: x}}, b: {stdio: {command: y}}}\n"
            b"channels:\n  short: [a, b]\n  long: {servers: [b], prefix: always, server_info: {name: n}}\n"
            b"routes: [{match: {channel: long, method: 'tools/*'}, limit_key: k}]\n"
        ),
        "routing.yaml",
    )
    assert loaded.channels == {"short": ["a", "b"], "long": ["b"]}
    assert config.channel_spec(loaded, "short").servers == ["a", "b"]
    long = config.channel_spec(loaded, "long")
    assert long.prefix == "always"
    assert long.server_info is not None
    assert long.server_info.name == "n"
    with pytest.raises(ConfigError) as failure:
        config.parse(b"servers: {}\nchannels: {}\nchannel_specs: {}\n", "routing.yaml")
    assert failure.value.key == "channel_specs"


# --------------------------------------------------------------------------- ops


def test_ops_section_is_checked() -> None:
    with pytest.raises(config.ConfigError, match=r"ops\.listen"):
        config.parse(b"ops: {listen: nowhere}\nservers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\n", "r.yaml")
    with pytest.raises(config.ConfigError, match=r"ops\.ready_poll_age_s"):
        config.parse(
            b"ops: {listen: '127.0.0.1:1', ready_poll_age_s: 0}\nservers: {a: {stdio: {command: x}}}\n"
            b"channels: {main: [a]}\n",
            "r.yaml",
        )


# --------------------------------------------------------------------------- telemetry


def test_telemetry_section_is_checked() -> None:
    base = b"servers: {a: {stdio: {command: x}}}\nchannels: {main: [a]}\n"
    with pytest.raises(ConfigError, match=r"telemetry\.sampling_ratio"):
        config.parse(b"telemetry: {sampling_ratio: 2}\n" + base, "r.yaml")
    with pytest.raises(ConfigError, match=r"telemetry\.endpoint"):
        config.parse(b"telemetry: {endpoint: 'not a url'}\n" + base, "r.yaml")
    with pytest.raises(ConfigError, match=r"telemetry\.protocol"):
        config.parse(b"telemetry: {protocol: carrier-pigeon}\n" + base, "r.yaml")
    with pytest.raises(ConfigError, match=r"logging\.format"):
        config.parse(b"logging: {format: xml}\n" + base, "r.yaml")
    parsed = config.parse(
        b"telemetry: {enabled: true, headers: {Authorization: 'env:OTLP_TOKEN'}, sampling_ratio: 0.25}\n"
        b"logging: {format: json, level: DEBUG}\n" + base,
        "r.yaml",
    )
    assert parsed.telemetry.sampling_ratio == 0.25
    assert parsed.logging.format == "json"


# --------------------------------------------------------------------------- secrets in errors (issue 14, defect 9)


@pytest.mark.parametrize(
    "url",
    ["ftp://user:SECRET-pw-1@host/x", "http://user:SECRET-pw-1@[::1", "SECRET-pw-1@nothing", "http://:SECRET-pw-1@/"],
)
async def test_url_errors_do_not_echo_a_password(url: str) -> None:
    """Defect 9: `expected an absolute http(s) URL (got 'ftp://user:SECRET@…')`."""
    for document in (
        {"servers": {"a": {"http": {"url": url}}}, "channels": {"c": ["a"]}},
        {"servers": {"a": {"stdio": {"command": "x"}}}, "channels": {"c": ["a"]}, "telemetry": {"endpoint": url}},
        {"servers": {"a": {"http": {"url": "http://h/", "proxy": url}}}, "channels": {"c": ["a"]}},
    ):
        with pytest.raises(ConfigError) as caught:
            config.parse(json.dumps(document).encode(), "routing.yaml")
        assert "SECRET" not in str(caught.value)
        assert "URL" in caught.value.expected
