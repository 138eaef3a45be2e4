"""Readiness with a control-plane credential (gateway/observe/ops.py): workload identity shows as the
`credentials` part, first, failing while there is no token; a static key shows nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.config import routing as routing_config
from gateway.observe.ops import Readiness


@dataclass
class Credential:
    """Our `CredentialState` interface with fixed answers."""

    state: str | None
    why: str | None = None

    def status(self) -> str | None:
        return self.state

    def problem(self) -> str | None:
        return self.why


@dataclass
class ControlPlane:
    last_poll_ok: float | None = None
    problem: str | None = None


@dataclass
class Poller:
    fault: str | None = None


@dataclass
class Runtime:
    config: routing_config.RoutingConfig = field(
        default_factory=lambda: routing_config.parse(b"servers: {a: {stdio: {command: x}}}\nchannels: {c: [a]}\n", "r")
    )
    upstreams: Mapping[str, Any] = field(default_factory=dict)
    control_plane: ControlPlane = field(default_factory=ControlPlane)
    poller: Poller = field(default_factory=Poller)


def readiness(credential: Credential | None, runtime: Runtime) -> Readiness:
    ready = Readiness(max_poll_age_s=30, clock=lambda: 100.0)
    ready.runtime = runtime  # type: ignore[assignment]
    ready.credentials = credential
    return ready


def test_a_refused_exchange_is_the_first_reason() -> None:
    refused = "token exchange refused: invalid_grant (identity provider idp_1)"
    runtime = Runtime(control_plane=ControlPlane(problem="waiting for an access token (see credentials)"))
    ready, body = readiness(Credential(refused, refused), runtime).report()
    assert not ready
    assert body["not_ready"] == ["credentials", "control_plane"]
    assert body["checks"]["credentials"] == refused
    assert list(readiness(Credential(refused, refused), runtime).problems()) == ["credentials", "control_plane"]


def test_a_valid_token_is_shown_and_does_not_fail() -> None:
    runtime = Runtime(control_plane=ControlPlane(last_poll_ok=99.0))
    ready, body = readiness(Credential("access token valid for 812s"), runtime).report()
    assert ready
    assert body["checks"] == {"credentials": "access token valid for 812s", "control_plane": "polled 1.0s ago"}


def test_a_static_key_adds_no_part() -> None:
    runtime = Runtime(control_plane=ControlPlane(last_poll_ok=99.0))
    assert readiness(Credential(None), runtime).report()[1]["checks"] == {"control_plane": "polled 1.0s ago"}
    assert readiness(None, runtime).report()[1]["checks"] == {"control_plane": "polled 1.0s ago"}
