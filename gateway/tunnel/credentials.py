"""Control-plane credentials: the `Credential` interface the client uses, and the API key behind it.
No credential ever reaches a log or an error message.

Owns the interface (a bearer value, readiness words, "the control plane refused this one") that
both the API key and workload identity (`gateway.tunnel.workload_identity`) implement, and the API
key's rotation without restart: `file:` keys are re-read when the file changes, any key is re-read
after the control plane answers 401, and `exec:` keys run a command whose short-lived output is
cached until it expires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shlex
import time
from pathlib import Path
from typing import Final, Protocol

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


class Credential(Protocol):
    """What the control-plane client sends as `Authorization: Bearer …`, and tells when refused."""

    @property
    def label(self) -> str:
        """What to check when the control plane refuses it (`api_key (env:TUNNEL_API_KEY)`)."""

    async def get(self) -> str:
        """The value to send now; raises ControlPlaneError (CredentialsUnavailable) when there is none."""

    def invalidate(self, rejected: str | None = None) -> bool:
        """The control plane answered 401/403 to a request that carried `rejected` (None: unknown).
        True when a different credential is on its way, so retrying at once is worth it."""

    def status(self) -> str | None:
        """The credential's state for `/readyz`; None when there is nothing to tell (a static key)."""

    def problem(self) -> str | None:
        """Why there is no credential to send (None while there is one); keeps the gateway unready."""


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

    @property
    def label(self) -> str:
        return f"api_key ({self.source})"

    def invalidate(self, rejected: str | None = None) -> bool:
        """Forget the cached key (after a 401): the next `get()` reads it again. A key does not
        change because it was refused, so the caller backs off all the same (False)."""
        self._value = None
        return False

    def status(self) -> None:
        return None

    def problem(self) -> None:
        return None

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
        token, expires = await run_token_command(command, cwd=self._base, what="API key", decoder=self._decoder)
        self._expires = expires
        return token


async def run_token_command(
    command: str, *, cwd: Path | None, what: str, decoder: JsonDecoder[_TokenOutput] | None = None
) -> tuple[str, float]:
    """Run `command` (no shell) and take the token it prints, bare or as JSON `{"token": …,
    "expires_in"|"expires_at": …}`: (token, unix time to stop using it). Failures name the
    program and `what`, never the output."""
    argv = shlex.split(command)
    if not argv:
        raise ControlPlaneError(f"the {what} command is empty")
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=None,  # the command's diagnostics go to the gateway's stderr
            env=dict(os.environ),
            cwd=cwd,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), EXEC_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ControlPlaneError(f"the {what} command {argv[0]!r} failed to run ({type(exc).__name__})") from None
    if proc.returncode != 0:
        log.error("%s command %r exited with status %s", what, argv[0], proc.returncode)
        raise ControlPlaneError(f"the {what} command {argv[0]!r} exited with status {proc.returncode}")
    text = out.decode(errors="replace").strip()
    now = time.time()
    if text.startswith("{"):
        try:
            found = (decoder or JsonDecoder(_TokenOutput)).decode(text)
        except msgspec.MsgspecError:
            raise ControlPlaneError(f"the {what} command {argv[0]!r} printed malformed JSON") from None
        token = found.token
        if found.expires_at is not None:
            expires = found.expires_at
        else:
            expires = now + (found.expires_in if found.expires_in is not None else EXEC_DEFAULT_TTL_S)
    else:
        token, expires = text, now + EXEC_DEFAULT_TTL_S
    if not token:
        raise ControlPlaneError(f"the {what} command {argv[0]!r} printed no token")
    return token, max(now + 1.0, expires - EXPIRY_MARGIN_S)
