"""The relay: a self-hostable Secure MCP Tunnel v1 control plane and MCP front door.

Re-exports the public names; each submodule owns one part (see its docstring).
May import only `gateway.wire` and `gateway.secrets` from the project.
"""

from gateway.relay.app import BACKEND, CONFIG, Relay, build_relay_app, serve_relay
from gateway.relay.config import (
    RelayConfig,
    RelayConfigError,
    TunnelSpec,
    decode_relay_config,
    load_relay_config,
    parse_listen,
)
from gateway.relay.errors import RelayError
from gateway.relay.front import map_status
from gateway.relay.guard import Credentials, TunnelCredentials, resolve_credentials
from gateway.relay.queue import Command, MemoryQueue, QueueBackend, TunnelStatus, new_command

__all__ = [
    "BACKEND",
    "CONFIG",
    "Command",
    "Credentials",
    "MemoryQueue",
    "QueueBackend",
    "Relay",
    "RelayConfig",
    "RelayConfigError",
    "RelayError",
    "TunnelCredentials",
    "TunnelSpec",
    "TunnelStatus",
    "build_relay_app",
    "decode_relay_config",
    "load_relay_config",
    "map_status",
    "new_command",
    "parse_listen",
    "resolve_credentials",
    "serve_relay",
]
