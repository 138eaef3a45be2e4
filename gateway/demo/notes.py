"""Demo Streamable HTTP MCP server: an in-memory notes store with tools, a prompt and resources.
The store is process-local (lost on exit); it binds only the host it is given.

Owns the store and its HTTP listener. Run: ``python -m gateway.demo.notes --host 127.0.0.1 --port 0``;
once it accepts connections it prints ``notes: listening on http://HOST:PORT/mcp`` on stdout
(``--port 0`` picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field
from starlette.types import ASGIApp
from typing_extensions import TypedDict  # pydantic needs it below Python 3.12 for nested TypedDicts

SERVER_NAME = "notes"
MCP_PATH = "/mcp"
MAX_NOTES = 1000
MAX_TITLE = 200
MAX_BODY = 20_000


class NoteView(TypedDict):
    """A note as tools return it."""

    id: int
    title: str
    body: str
    tags: list[str]
    created: str


@dataclass(frozen=True, slots=True)
class Note:
    id: int
    title: str
    body: str
    tags: tuple[str, ...]
    created: datetime

    def view(self) -> NoteView:
        return NoteView(
            id=self.id,
            title=self.title,
            body=self.body,
            tags=list(self.tags),
            created=self.created.isoformat(timespec="seconds"),
        )

    def as_text(self) -> str:
        tags = f" [{', '.join(self.tags)}]" if self.tags else ""
        return f"#{self.id} {self.title}{tags}\n{self.body}"


@dataclass
class NoteStore:
    """Notes kept in memory, ids never reused; every method is synchronous and cannot await."""

    max_notes: int = MAX_NOTES
    _notes: dict[int, Note] = field(default_factory=dict)
    _next_id: int = 1

    def add(self, title: str, body: str, tags: Sequence[str]) -> Note:
        if len(self._notes) >= self.max_notes:
            raise ToolError(f"the store is full ({self.max_notes} notes): delete some first")
        clean_tags = tuple(sorted({t.strip().lower() for t in tags if t.strip()}))
        note = Note(self._next_id, title.strip(), body, clean_tags, datetime.now(UTC))
        self._notes[note.id] = note
        self._next_id += 1
        return note

    def get(self, note_id: int) -> Note | None:
        return self._notes.get(note_id)

    def select(self, tag: str | None = None) -> list[Note]:
        wanted = tag.strip().lower() if tag else None
        return [n for n in self._notes.values() if wanted is None or wanted in n.tags]

    def search(self, query: str) -> list[Note]:
        needle = query.lower()
        return [
            n
            for n in self._notes.values()
            if needle in n.title.lower() or needle in n.body.lower() or any(needle in t for t in n.tags)
        ]

    def delete(self, note_id: int) -> bool:
        return self._notes.pop(note_id, None) is not None


def build_server(store: NoteStore | None = None) -> MCPServer:
    """A notes server over ``store`` (a fresh empty one by default)."""
    notes = store if store is not None else NoteStore()
    mcp: MCPServer = MCPServer(
        SERVER_NAME,
        title="Notes",
        version="1.0.0",
        instructions="A small in-memory notebook: add, list, search and delete notes; ask for a summary.",
        log_level="WARNING",
    )

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=False, open_world_hint=False))
    def add_note(
        title: Annotated[str, Field(min_length=1, max_length=MAX_TITLE)],
        body: Annotated[str, Field(max_length=MAX_BODY)] = "",
        tags: list[str] | None = None,
    ) -> NoteView:
        """Store a new note and return it with its id."""
        return notes.add(title, body, tags or ()).view()

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def list_notes(tag: str | None = None) -> list[NoteView]:
        """All notes, oldest first; only those carrying `tag` when given."""
        return [n.view() for n in notes.select(tag)]

    @mcp.tool(annotations=ToolAnnotations(read_only_hint=True, open_world_hint=False))
    def search_notes(query: Annotated[str, Field(min_length=1)]) -> list[NoteView]:
        """Notes whose title, body or tags contain `query` (case-insensitive)."""
        return [n.view() for n in notes.search(query)]

    @mcp.tool(annotations=ToolAnnotations(destructive_hint=True, idempotent_hint=True, open_world_hint=False))
    def delete_note(note_id: int) -> str:
        """Delete the note with this id."""
        if not notes.delete(note_id):
            raise ToolError(f"no note with id {note_id}")
        return f"deleted note {note_id}"

    @mcp.prompt()
    def summarize_notes(tag: str | None = None) -> str:
        """Ask the model to summarize the stored notes (only those tagged `tag` when given)."""
        chosen = notes.select(tag)
        scope = f"tagged '{tag}'" if tag else "in my notebook"
        if not chosen:
            return f"I have no notes {scope}. Say so in one sentence."
        listing = "\n\n".join(n.as_text() for n in chosen)
        count = f"{len(chosen)} note{'s' if len(chosen) > 1 else ''}"
        return (
            f"Summarize the {count} {scope} below in a few bullet points, "
            f"grouping related notes and naming open action items.\n\n{listing}"
        )

    @mcp.resource("notes://all", name="all-notes", mime_type="text/plain")
    def all_notes() -> str:
        """Every note as plain text, oldest first."""
        return "\n\n".join(n.as_text() for n in notes.select()) or "(no notes)"

    @mcp.resource("notes://{note_id}", name="note", mime_type="text/plain")
    def one_note(note_id: str) -> str:
        """One note by id."""
        note = notes.get(int(note_id)) if note_id.isdigit() else None
        if note is None:
            raise ResourceNotFoundError(f"no note with id {note_id}")
        return note.as_text()

    return mcp


class AnnouncingServer(uvicorn.Server):
    """A uvicorn server that prints one readiness line on stdout once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self._ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            print(self._ready_line, flush=True)


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), not yet listening; port 0 lets the kernel choose."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


async def serve(app: ASGIApp, sock: socket.socket, ready_line: str) -> None:
    """Serve ``app`` on the bound ``sock`` until SIGINT/SIGTERM."""
    config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_graceful_shutdown=2)
    await AnnouncingServer(config, ready_line).serve(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.demo.notes", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default: 0)")
    args = parser.parse_args(argv)
    host: str = args.host
    sock = bind(host, args.port)
    port: int = sock.getsockname()[1]
    app = build_server().streamable_http_app(streamable_http_path=MCP_PATH, host=host)
    url_host = f"[{host}]" if ":" in host else host
    asyncio.run(serve(app, sock, f"{SERVER_NAME}: listening on http://{url_host}:{port}{MCP_PATH}"))


if __name__ == "__main__":
    main()
