"""An OAuth token endpoint's answer without I/O: a token (RFC 6749 §5.1), or a refusal (§5.2) in words.
Sans-IO: no asyncio, no aiohttp; no token (subject, access) or client secret is ever part of a reason.

Shared by every grant the gateway asks for: workload identity's exchange for the control-plane
credential (gateway.protocol.workload_identity) and a server's service credential
(gateway.protocol.service_tokens). Peer-supplied text is masked and bounded before anyone logs it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import msgspec
from msgspec import UNSET, Struct, UnsetType

from gateway.protocol.wire import JsonDecoder

MAX_ANSWER_BYTES: Final = 64 * 1024
"""A token endpoint's answer longer than this is not read further (it is not a token answer)."""
MAX_REASON_CHARS: Final = 200
MASK: Final = "[REDACTED]"

_JWT: Final = re.compile(r"eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*")
_ERROR_CODE: Final = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class TokenAnswer(Struct, frozen=True, kw_only=True):
    """A successful answer (RFC 6749 §5.1, RFC 8693 §2.2.1); members we do not use are ignored."""

    access_token: str
    expires_in: float | UnsetType = UNSET
    token_type: str
    issued_token_type: str | UnsetType = UNSET

    def __repr__(self) -> str:
        return f"TokenAnswer(expires_in={self.expires_in!r}, token_type={self.token_type!r}, access_token=<hidden>)"


class OAuthError(Struct, frozen=True, kw_only=True):
    """An RFC 6749 §5.2 error body (RFC 8693 §2.2.2 uses it too)."""

    error: str
    error_description: str | UnsetType = UNSET


_ANSWER: Final = JsonDecoder(TokenAnswer)
_ERROR: Final = JsonDecoder(OAuthError)


@dataclass(frozen=True, slots=True)
class Granted:
    """An access token and how long the endpoint said it lives."""

    token: str = field(repr=False)
    lifetime_s: float


@dataclass(frozen=True, slots=True)
class Failed:
    """A request that produced no token: `reason` is for operators (no token in it); `refused`
    is True when the endpoint said no (a 4xx or an OAuth error), False for a failure on the way;
    `code` is the RFC 6749 §5.2 `error` when the endpoint sent a readable one."""

    reason: str
    refused: bool = False
    code: str | None = field(default=None, compare=False)


def read_answer(
    status: int,
    body: bytes,
    *,
    context: str,
    hide: Iterable[str] = (),
    what: str = "token exchange",
    default_lifetime_s: float | None = None,
) -> Granted | Failed:
    """The token endpoint's answer, as a token or a failure in words.

    `context` names the identity in failures (`identity provider idp_…`), `what` the request
    (`token exchange`, `token request`); every string in `hide` (a subject token, a client secret)
    is masked wherever the endpoint echoes it, as is anything shaped like a JWT. An answer without
    `expires_in` lives `default_lifetime_s` (None: such an answer is unusable)."""
    if status == 200:
        try:
            answer = _ANSWER.decode(body)
        except msgspec.MsgspecError as exc:
            return Failed(f"the token endpoint's answer is not a token answer ({_shape_error(exc)}; {context})")
        lifetime = default_lifetime_s if isinstance(answer.expires_in, UnsetType) else answer.expires_in
        problem = _unusable(answer, lifetime)
        if problem is not None or lifetime is None:
            return Failed(f"the token endpoint's answer is unusable: {problem} ({context})")
        return Granted(answer.access_token, float(lifetime))
    error: OAuthError | None
    try:
        error = _ERROR.decode(body)
    except msgspec.MsgspecError:
        error = None
    client_side = 400 <= status < 500 and status not in (408, 429)
    if error is None:
        verb = "refused" if client_side else "failed"
        return Failed(f"{what} {verb}: HTTP {status} ({context})", refused=client_side)
    readable = _ERROR_CODE.fullmatch(error.error) is not None
    code = error.error if readable else "an unreadable error code"
    detail = "" if isinstance(error.error_description, UnsetType) else describe(error.error_description, hide)
    if client_side:
        reason = f"{what} refused: {code} ({context})"
    else:
        reason = f"{what} failed: {code} (HTTP {status}, {context})"
    return Failed(f"{reason}: {detail}" if detail else reason, refused=client_side, code=code if readable else None)


def _unusable(answer: TokenAnswer, lifetime: float | None) -> str | None:
    if not answer.access_token:
        return "an empty access_token"
    if not (answer.access_token.isascii() and answer.access_token.isprintable()) or " " in answer.access_token:
        return "an access_token no header can carry"
    if lifetime is None or not lifetime > 0:
        return "expires_in is not a positive number of seconds"
    if answer.token_type.lower() != "bearer":
        return f"token_type {describe(answer.token_type)!r} is not Bearer"
    return None


def _shape_error(exc: msgspec.MsgspecError) -> str:
    """msgspec's words for a shape mismatch (they name fields and types, never values), or `not JSON`."""
    return str(exc) if isinstance(exc, msgspec.ValidationError) else "not JSON"


def describe(text: str, hide: Iterable[str] = ()) -> str:
    """Peer-supplied text made fit for a log line: known secrets and JWT-shaped strings masked,
    control characters and runs of space folded, at most MAX_REASON_CHARS characters."""
    for secret in hide:
        if len(secret) >= 6:
            text = text.replace(secret, MASK)
    text = _JWT.sub(MASK, text)
    text = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return text if len(text) <= MAX_REASON_CHARS else text[: MAX_REASON_CHARS - 1] + "…"
