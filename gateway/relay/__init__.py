"""The relay: a self-hostable Secure MCP Tunnel v1 control plane and MCP front door.
Imports nothing of the project beyond `gateway.protocol` and `gateway.config`; re-exports the public names.

Each submodule owns one part (see its docstring). The Redis
backend (`gateway.relay.redis_queue.RedisQueue`) is imported only when configured.
"""

from gateway.relay.app import BACKEND, CONFIG, IDENTITY, METRICS, Relay, build_relay_app, make_backend, serve_relay
from gateway.relay.config import (
    IdentitySpec,
    IssuerSpec,
    MemoryBackend,
    RedisBackend,
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
from gateway.relay.ops import RelayMetrics
from gateway.relay.queue import Command, MemoryQueue, QueueBackend, TunnelStatus, new_command

__all__ = [
    "BACKEND",
    "CONFIG",
    "IDENTITY",
    "METRICS",
    "Command",
    "Credentials",
    "IdentitySpec",
    "IssuerSpec",
    "MemoryBackend",
    "MemoryQueue",
    "QueueBackend",
    "RedisBackend",
    "Relay",
    "RelayConfig",
    "RelayConfigError",
    "RelayError",
    "RelayMetrics",
    "TunnelCredentials",
    "TunnelSpec",
    "TunnelStatus",
    "build_relay_app",
    "decode_relay_config",
    "load_relay_config",
    "make_backend",
    "map_status",
    "new_command",
    "parse_listen",
    "resolve_credentials",
    "serve_relay",
]
