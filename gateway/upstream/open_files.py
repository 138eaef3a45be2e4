"""The open-files limit the gateway's server processes need: raised (soft up to hard) before they start.
Reads and sets only RLIMIT_NOFILE of this process; starts nothing.

Each stdio server process holds three pipes in the gateway, a spawned HTTP server one; on top of those the
gateway keeps `HEADROOM` descriptors for its sockets, logs and the like. When the soft limit is lower than
that, it is raised towards the hard limit; when even the hard limit cannot hold the processes that start at
once, start-up stops with an error that says how many fit. Processes started later (`session: per-client`)
raise the soft limit but never stop start-up: they are bounded by `max_sessions` and start on demand.
"""

from __future__ import annotations

import resource
from collections.abc import Iterable
from typing import Final

from gateway.config.routing import ServerSpec
from gateway.protocol.errors import ConfigError

FDS_PER_STDIO: Final = 3
FDS_PER_SPAWNED: Final = 1
HEADROOM: Final = 256


def needed(servers: Iterable[ServerSpec]) -> tuple[int, int]:
    """(descriptors for the processes that start with the gateway, for those that may start later)."""
    eager = later = 0
    for spec in servers:
        if spec.stdio is not None:
            if spec.session == "per-client":
                later += FDS_PER_STDIO * spec.max_sessions
            else:
                eager += FDS_PER_STDIO * spec.processes
        elif spec.http is not None and spec.http.spawn is not None:
            eager += FDS_PER_SPAWNED
    return eager, later


def ensure(servers: Iterable[ServerSpec], file: str) -> int:
    """Raise the soft open-files limit to fit `servers` (up to the hard limit); returns the soft limit now.
    Raises ConfigError when the servers that start at once cannot fit under the hard limit."""
    specs = list(servers)
    eager, later = needed(specs)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = HEADROOM + eager + later
    if want <= soft or soft == resource.RLIM_INFINITY:
        return soft
    if hard != resource.RLIM_INFINITY and HEADROOM + eager > hard:
        fit = max(0, (hard - HEADROOM) // FDS_PER_STDIO)
        raise ConfigError(
            file,
            "servers",
            f"server processes that fit the open-files limit: these need about {HEADROOM + eager} descriptors "
            f"(3 per stdio process, plus {HEADROOM}) but the hard limit is {hard}, room for about {fit} stdio "
            "processes; raise it (`ulimit -Hn`, systemd `LimitNOFILE=`, docker `--ulimit nofile=`) or start fewer",
        )
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return new
