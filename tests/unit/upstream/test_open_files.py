"""The open-files limit fits the server processes before any starts (gateway.upstream.open_files).

Each case runs in a child interpreter whose RLIMIT_NOFILE the test lowers first, so the test process's own
limit is never touched; the child calls `ensure` for N stdio servers and prints what it saw.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from gateway.upstream import open_files

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from gateway.config.routing import ServerSpec, StdioSpec
    from gateway.protocol.errors import ConfigError
    from gateway.upstream import open_files
    soft, hard, count, session = (int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    extra = {"session": "per-client", "max_sessions": 100} if session == "per-client" else {}
    specs = [ServerSpec(stdio=StdioSpec(command="sh"), **extra) for _ in range(count)]
    try:
        now = open_files.ensure(specs, "routing.yaml")
        print(json.dumps({"soft": now, "limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}))
    except ConfigError as exc:
        print(json.dumps({"error": str(exc)}))
    """
)


def run(soft: int, hard: int, count: int, session: str = "shared") -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(soft), str(hard), str(count), session],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def test_a_soft_limit_too_low_for_the_processes_is_raised_towards_the_hard_limit() -> None:
    seen = run(soft=300, hard=4096, count=100)
    assert seen["limit"] == open_files.HEADROOM + 100 * open_files.FDS_PER_STDIO == seen["soft"]


def test_a_soft_limit_with_room_is_left_as_it_is() -> None:
    assert run(soft=2048, hard=4096, count=100) == {"soft": 2048, "limit": 2048}


def test_processes_beyond_the_hard_limit_stop_start_up_with_a_clear_error() -> None:
    error = str(run(soft=512, hard=1024, count=1000)["error"])
    assert error.startswith("routing.yaml: servers: expected server processes that fit the open-files limit")
    assert "the hard limit is 1024" in error
    assert "room for about 256 stdio processes" in error


def test_per_client_servers_raise_the_soft_limit_but_never_stop_start_up() -> None:
    seen = run(soft=300, hard=2048, count=10, session="per-client")  # up to 3,000 more descriptors later
    assert seen == {"soft": 2048, "limit": 2048}
