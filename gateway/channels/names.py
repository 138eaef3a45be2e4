"""Names on an aggregated channel: tool and prompt names namespaced per server, resource URI owners.
Sans-IO: it never awaits, and imports neither asyncio nor aiohttp.

Owns `server__name` prefixing (`always`, `conditional`, renames) and its reverse mapping, and which
server owns a resource URI or template.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

PrefixMode = Literal["always", "conditional", "none"]


@dataclass(frozen=True, slots=True)
class Owner:
    """Who serves an exposed name, and the name it knows the item by."""

    server: str
    name: str


class NameTable:
    """Exposed names of one list (tools or prompts) in an aggregated channel, both ways."""

    def __init__(self, owners: Mapping[str, Owner], separator: str, servers: Sequence[str]) -> None:
        self._owners = dict(owners)
        self._exposed = {(owner.server, owner.name): exposed for exposed, owner in owners.items()}
        self._separator = separator
        self._servers = tuple(servers)

    def resolve(self, exposed: str) -> Owner | None:
        """The owner of an exposed name; a `server<sep>name` not (yet) listed resolves by its prefix."""
        owner = self._owners.get(exposed)
        if owner is not None:
            return owner
        for server in self._servers:
            head = f"{server}{self._separator}"
            if exposed.startswith(head) and len(exposed) > len(head):
                return Owner(server, exposed[len(head) :])
        return None

    def exposed(self, server: str, name: str) -> str | None:
        return self._exposed.get((server, name))

    def items(self) -> list[tuple[str, Owner]]:
        return list(self._owners.items())

    def __len__(self) -> int:
        return len(self._owners)


def namespace(
    listed: Mapping[str, Sequence[str]],
    *,
    separator: str,
    mode: PrefixMode,
    rename: Mapping[str, Mapping[str, str]] | None = None,
    servers: Sequence[str] | None = None,
) -> tuple[NameTable, list[str]]:
    """Exposed names for each server's names (in the mapping's order), and warnings about dropped duplicates.

    A renamed item gets exactly its new name. Otherwise `always` exposes
    `server<sep>name`, `none` the name itself, and `conditional` the name
    itself unless another server exposes the same name (then every such
    name is prefixed). When two items still end up with one exposed name,
    the first server's wins and the other is left out (with a warning).
    `servers` (default: the listed ones) are those a `server<sep>name` not
    listed resolves to by its prefix.
    """
    rename = rename or {}
    plain: dict[str, int] = {}
    for server, names in listed.items():
        renames = rename.get(server, {})
        for name in dict.fromkeys(names):
            key = renames.get(name, name)
            plain[key] = plain.get(key, 0) + 1
    owners: dict[str, Owner] = {}
    warnings: list[str] = []
    for server, names in listed.items():
        renames = rename.get(server, {})
        for name in dict.fromkeys(names):
            if name in renames:
                exposed = renames[name]
            elif mode == "always" or (mode == "conditional" and plain[name] > 1):
                exposed = f"{server}{separator}{name}"
            else:
                exposed = name
            if exposed in owners:
                first = owners[exposed].server
                warnings.append(f"{server}'s {name!r} is left out: {first} already exposes {exposed!r}")
                continue
            owners[exposed] = Owner(server, name)
    return NameTable(owners, separator, list(servers if servers is not None else listed)), warnings


class ResourceTable:
    """Which server serves a resource URI: listed URIs first, then URI templates, in server order."""

    def __init__(self, uris: Mapping[str, str], templates: Sequence[tuple[str, str]]) -> None:
        self._uris = dict(uris)
        self._templates = [(template_regex(t), server) for t, server in templates]

    def owner(self, uri: str) -> str | None:
        server = self._uris.get(uri)
        if server is not None:
            return server
        for pattern, owner in self._templates:
            if pattern.fullmatch(uri):
                return owner
        return None


def resource_table(listed: Mapping[str, Sequence[str]], templates: Mapping[str, Sequence[str]]) -> ResourceTable:
    """The first server (in order) listing a URI owns it; templates likewise."""
    uris: dict[str, str] = {}
    for server, names in listed.items():
        for uri in names:
            uris.setdefault(uri, server)
    pairs = [(t, server) for server, ts in templates.items() for t in ts]
    return ResourceTable(uris, pairs)


_EXPRESSION = re.compile(r"\{([+#./;?&]?)([^}]*)\}")


def template_regex(template: str) -> re.Pattern[str]:
    """An RFC 6570 URI template as a regex matching the URIs it can expand to (levels 1 to 4, loosely)."""
    out: list[str] = []
    last = 0
    for found in _EXPRESSION.finditer(template):
        out.append(re.escape(template[last : found.start()]))
        operator = found[1]
        if operator in ("+", "#"):
            out.append(".*")
        elif operator in ("?", "&"):
            out.append(r"(?:[?&][^#]*)?")
        else:
            out.append("[^/?#]*")
        last = found.end()
    out.append(re.escape(template[last:]))
    return re.compile("".join(out), re.S)
