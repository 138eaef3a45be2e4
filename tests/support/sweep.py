"""Everything a run put out, by where it came from, searched for configured secrets (the secret sweeps)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass
class Sweep:
    """Every text a run put out (stdout and stderr lines, OTLP bodies, `/metrics`, answers), by source."""

    texts: dict[str, list[str]] = field(default_factory=dict)

    def add(self, where: str, items: Iterable[str | bytes]) -> None:
        self.texts.setdefault(where, []).extend(
            item.decode(errors="replace") if isinstance(item, bytes) else item for item in items
        )

    def leaks(self, secrets: Mapping[str, str]) -> list[str]:
        """Where any of `secrets` (name -> value) appears: one line per finding, empty when none."""
        found = []
        for where, items in self.texts.items():
            for item in items:
                found += [f"{name} in {where}: {item[:300]!r}" for name, value in secrets.items() if value in item]
        return found

    def searched(self) -> int:
        return sum(len(items) for items in self.texts.values())
