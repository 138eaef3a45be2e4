"""The control-plane API key: where it comes from, and when to read it again (rotation without restart).
The key itself never reaches a log or an error message.

Owns rotation without restart: `file:` keys are re-read when the file changes,
any key is re-read after the control plane answers 401, and `exec:` keys run a
command whose short-lived output is cached until it expires (workload-identity
style).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Final

import msgspec

from gateway.config import secrets
from gateway.protocol.errors import ControlPlaneError
from gateway.protocol.wire import JsonDecoder

log = logging.getLogger(__name__)

EXEC_TIMEOUT_S: Final = 30.0
EXEC_DEFAULT_TTL_S: Final = 300.0
EXPIRY_MARGIN_S: Final = 30.0


class _TokenOutput(msgspec.Struct):
    """What an `exec:` command may print instead of a bare token."""

    token: str
    expires_in: float | None = None
    expires_at: float | None = None
    """Unix time."""


class ApiKey:
    """The current key for one control plane; `get()` is cheap when nothing changed."""

    def __init__(self, ref: str, *, base: Path | None = None) -> None:
        self._ref = ref
        self._base = base
        self._value: str | None = None
        self._expires: float | None = None
        self._file_stamp: tuple[float, int] | None = None
        self._lock = asyncio.Lock()
        self._decoder = JsonDecoder(_TokenOutput)

    @property
    def source(self) -> str:
        return secrets.describe(self._ref) if not self._ref.startswith("exec:") else "exec: command"

    def invalidate(self) -> None:
        """Forget the cached key (after a 401): the next `get()` reads it again."""
        self._value = None

    async def get(self) -> str:
        if self._value is not None and not self._stale():
            return self._value
        async with self._lock:
            if self._value is None or self._stale():
                self._value = await self._load()
            return self._value

    def _stale(self) -> bool:
        if self._expires is not None and time.time() >= self._expires:
            return True
        if self._ref.startswith("file:"):
            return self._stamp() != self._file_stamp
        return False

    def _file(self) -> Path:
        path = Path(os.path.expandvars(self._ref[5:]))
        return path if path.is_absolute() or self._base is None else self._base / path

    def _stamp(self) -> tuple[float, int] | None:
        try:
            stat = self._file().stat()
        except OSError:
            return None
        return stat.st_mtime, stat.st_size

    async def _load(self) -> str:
        self._expires = None
        if self._ref.startswith("exec:"):
            return await self._exec(self._ref[5:])
        if self._ref.startswith("file:"):
            self._file_stamp = self._stamp()
        try:
            return secrets.resolve(self._ref, base=self._base).reveal()
        except secrets.SecretError as exc:
            raise ControlPlaneError(f"cannot read the API key: {exc}") from None

    async def _exec(self, command: str) -> str:
        argv = shlex.split(command)
        if not argv:
            raise ControlPlaneError("the API key command is empty")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # the command's diagnostics go to the gateway's stderr
                env=dict(os.environ),
                cwd=self._base,
            )
            out, _ = await asyncio.wait_for(proc.communicate(), EXEC_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise ControlPlaneError(f"the API key command {argv[0]!r} failed to run ({type(exc).__name__})") from None
        if proc.returncode != 0:
            log.error("API key command %r exited with status %s", argv[0], proc.returncode)
            raise ControlPlaneError(f"the API key command {argv[0]!r} exited with status {proc.returncode}")
        text = out.decode().strip()
        now = time.time()
        if text.startswith("{"):
            try:
                found = self._decoder.decode(text)
            except msgspec.MsgspecError:
                raise ControlPlaneError(f"the API key command {argv[0]!r} printed malformed JSON") from None
            token = found.token
            if found.expires_at is not None:
                expires = found.expires_at
            else:
                expires = now + (found.expires_in if found.expires_in is not None else EXEC_DEFAULT_TTL_S)
        else:
            token, expires = text, now + EXEC_DEFAULT_TTL_S
        if not token:
            raise ControlPlaneError(f"the API key command {argv[0]!r} printed no token")
        self._expires = max(now + 1.0, expires - EXPIRY_MARGIN_S)
        return token
