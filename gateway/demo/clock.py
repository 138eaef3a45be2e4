"""Demo stdio MCP server: the time in any IANA zone, conversions between zones, a countdown with progress.
Keeps no state between calls and touches nothing but the clock and the system zone database.

Owns its tools and the zone list resource. Run: ``python -m gateway.demo.clock`` (speaks MCP on
stdin/stdout).
"""

from __future__ import annotations

import argparse
import zoneinfo
from collections.abc import Sequence
from datetime import datetime, time, timedelta
from typing import Annotated

import anyio
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field
from typing_extensions import TypedDict  # pydantic needs it below Python 3.12 for nested TypedDicts

SERVER_NAME = "clock"


class ZoneTime(TypedDict):
    """One instant as seen in one zone."""

    timezone: str
    datetime: str
    utc_offset: str
    day_of_week: str
    is_dst: bool


class Conversion(TypedDict):
    """The same instant in two zones, and how far apart their wall clocks are."""

    source: ZoneTime
    target: ZoneTime
    time_difference: str


def _zone(name: str) -> zoneinfo.ZoneInfo:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ToolError(
            f"unknown time zone {name!r}: use an IANA name such as 'UTC', 'Europe/Paris' or 'Asia/Tokyo'"
        ) from exc


def _offset(delta: timedelta | None) -> str:
    minutes = int((delta or timedelta()).total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def _zone_time(moment: datetime, zone_name: str) -> ZoneTime:
    return ZoneTime(
        timezone=zone_name,
        datetime=moment.isoformat(timespec="seconds"),
        utc_offset=_offset(moment.utcoffset()),
        day_of_week=moment.strftime("%A"),
        is_dst=bool(moment.dst()),
    )


def _parse_moment(text: str, zone: zoneinfo.ZoneInfo) -> datetime:
    """``HH:MM`` means today in ``zone``; an ISO 8601 date-time without an offset is read in ``zone``."""
    try:
        wall = time.fromisoformat(text)
    except ValueError:
        pass
    else:
        return datetime.combine(datetime.now(zone).date(), wall, tzinfo=zone)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ToolError(f"cannot read time {text!r}: give HH:MM or an ISO 8601 date-time") from exc
    return moment.replace(tzinfo=zone) if moment.tzinfo is None else moment.astimezone(zone)


def build_server() -> MCPServer:
    """A fresh clock server; every call builds its own, nothing is shared."""
    mcp: MCPServer = MCPServer(
        SERVER_NAME,
        title="Clock",
        version="1.0.0",
        instructions="Current time in any IANA time zone, conversions between zones, and a countdown.",
        log_level="WARNING",
    )

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def now(timezone: str = "UTC") -> ZoneTime:
        """The current date and time in an IANA time zone (for example 'Europe/Paris')."""
        zone = _zone(timezone)
        return _zone_time(datetime.now(zone), timezone)

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False))
    def convert_time(time: str, source_timezone: str, target_timezone: str) -> Conversion:
        """Convert a time between IANA zones. `time` is HH:MM (today in the source zone) or ISO 8601."""
        source_zone, target_zone = _zone(source_timezone), _zone(target_timezone)
        moment = _parse_moment(time, source_zone)
        target = moment.astimezone(target_zone)
        gap = (target.utcoffset() or timedelta()) - (moment.utcoffset() or timedelta())
        hours = gap.total_seconds() / 3600
        return Conversion(
            source=_zone_time(moment, source_timezone),
            target=_zone_time(target, target_timezone),
            time_difference=f"{hours:+g}h",
        )

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    async def countdown(
        ctx: Context,
        steps: Annotated[int, Field(ge=1, le=100, description="how many ticks")] = 5,
        interval_ms: Annotated[int, Field(ge=0, le=5000, description="pause between ticks")] = 200,
    ) -> str:
        """Count down from `steps` to zero, one tick every `interval_ms`, reporting progress at each tick."""
        for done in range(1, steps + 1):
            await anyio.sleep(interval_ms / 1000)
            await ctx.report_progress(done, steps, f"{steps - done} to go")
        return f"countdown of {steps} finished at {datetime.now().astimezone().isoformat(timespec='seconds')}"

    @mcp.resource("clock://timezones", name="timezones", mime_type="text/plain")
    def timezones() -> str:
        """Every IANA time zone name this machine knows, one per line."""
        return "\n".join(sorted(zoneinfo.available_timezones()))

    return mcp


def main(argv: Sequence[str] | None = None) -> None:
    """Serve one MCP connection on stdin/stdout until stdin closes."""
    argparse.ArgumentParser(prog="python -m gateway.demo.clock", description=__doc__).parse_args(argv)
    build_server().run("stdio")


if __name__ == "__main__":
    main()
