"""Secret references: `env:VAR`, `file:/path`, or a literal, resolved on demand.
Keeps the value out of reprs and error text; imports only the error tree, so gateway and relay share it.
"""

from __future__ import annotations

import os
from pathlib import Path

from gateway.protocol.errors import GatewayError


class SecretError(GatewayError):
    """A secret reference could not be resolved; the message never holds the secret."""


class Secret:
    """A resolved secret whose repr and str never show the value."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str) -> None:
        self._value = value
        self.source = source

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({self.source})"

    __str__ = __repr__


def describe(ref: str) -> str:
    """How a reference is named in logs and errors: its kind and name, never a literal."""
    if ref.startswith("env:"):
        return ref
    if ref.startswith("file:"):
        return ref
    return "inline value"


def resolve(ref: str, *, base: Path | None = None) -> Secret:
    """Resolve `env:VAR`, `file:PATH` (relative to `base`; `${VAR}` expanded) or a literal string."""
    if ref.startswith("env:"):
        name = ref[4:]
        value = os.environ.get(name)
        if not value:
            raise SecretError(f"environment variable {name} is not set or empty")
        return Secret(value, ref)
    if ref.startswith("file:"):
        path = Path(os.path.expandvars(ref[5:]))  # e.g. file:${CREDENTIALS_DIRECTORY}/key under systemd
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            value = path.read_text().strip()
        except OSError as exc:
            raise SecretError(f"cannot read secret file {path}: {exc.strerror}") from exc
        if not value:
            raise SecretError(f"secret file {path} is empty")
        return Secret(value, f"file:{path}")
    return Secret(ref, "inline value")
