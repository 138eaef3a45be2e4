"""`POST /oauth/token`: the relay's RFC 8693 token exchange endpoint, as HTTP.
It decides no exchange itself (identity.py does) and never echoes a token in an answer.

Owns the request's edge (a per-address rate budget checked first, the address the one
`gateway.relay.callers` names; method, content type, a small bounded body, JSON or form parameters
into a TokenRequest) and the answer's shape (RFC 6749 section 5.1, never cached); the exchange itself
is identity.py's, and refusals become RFC 6749 bodies in `TokenError.to_response`. The exchange, the
rate budget and the trusted proxies are the current settings' `identity:` (`gateway.relay.settings`),
read once per request, so a reload's new keys, rates and proxies apply at once.
"""

from __future__ import annotations

import logging
from typing import Final
from urllib.parse import parse_qsl

import msgspec
from aiohttp import web

from gateway.protocol.wire import JsonDecoder
from gateway.relay.budgets import CallerBudgets
from gateway.relay.callers import X_FORWARDED_FOR, caller_key
from gateway.relay.errors import (
    NO_STORE,
    BodyTimeout,
    BodyTooLarge,
    TokenBodyTooLarge,
    TokenError,
    TokenMethodNotAllowed,
    TokenRateExceeded,
)
from gateway.relay.guard import read_body
from gateway.relay.identity import TOKEN_TYPE_ACCESS, Identity, TokenRequest, describe
from gateway.relay.ops import RelayMetrics
from gateway.relay.settings import LiveSettings

log = logging.getLogger("gateway.relay")

PATH: Final = "/oauth/token"
MAX_BODY_BYTES: Final = 64 * 1024
"""A token request is a few parameters and one JWT (a Kubernetes token is about 1 KiB)."""
MAX_FORM_FIELDS: Final = 32
JSON: Final = "application/json"
FORM: Final = "application/x-www-form-urlencoded"
REFUSALS_LOGGED_PER_S: Final = 1 / 60
"""A caller address over its budget is logged once, then at most once a minute while it stays over."""
RATE_LIMITED: Final = "rate_limited"
"""The metrics outcome of a request refused by the rate budget (`RelayMetrics.observe_exchange`)."""


class TokenResponse(msgspec.Struct, frozen=True, kw_only=True):
    """RFC 8693 section 2.2.1."""

    access_token: str
    issued_token_type: str
    token_type: str
    expires_in: int


_REQUEST: Final = JsonDecoder(TokenRequest)
_ENCODER: Final = msgspec.json.Encoder()


def parse_request(content_type: str, body: bytes) -> TokenRequest:
    """The token request's parameters from a JSON object or a form; TokenError (invalid_request)
    for anything else, naming what is wrong and never quoting the body."""
    if content_type == JSON:
        try:
            return _REQUEST.decode(body)
        except msgspec.ValidationError as exc:
            raise TokenError(f"the JSON body does not fit a token request ({_where(exc)})") from None
        except msgspec.DecodeError:
            raise TokenError("the body is not a JSON object") from None
    if content_type == FORM:
        try:
            pairs = parse_qsl(body.decode(), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
        except (UnicodeDecodeError, ValueError):
            raise TokenError("the body is not a UTF-8 form with at most 32 fields") from None
        fields: dict[str, str] = {}
        for name, value in pairs:
            if name in fields:
                raise TokenError(f"the parameter {_name(name)} is sent more than once")  # RFC 6749 section 3.2
            fields[name] = value
        return msgspec.convert(fields, TokenRequest)  # every field is a string: nothing to refuse
    raise TokenError(f"the Content-Type must be {JSON} or {FORM}")


def _where(exc: msgspec.ValidationError) -> str:
    """msgspec's "Expected `str | null`, got `int` - at `$.subject_token`" without any value."""
    text = str(exc)
    at = text.rfind("`$.")
    return f"{text[at + 3 : -1]} must be a string" if at != -1 and text.endswith("`") else "expected an object"


def _name(name: str) -> str:
    return name if name.isidentifier() and len(name) <= 40 else "(a parameter)"


class TokenEndpoint:
    """The handler of `POST /oauth/token`."""

    def __init__(self, live: LiveSettings, metrics: RelayMetrics) -> None:
        self._live = live
        self._metrics = metrics
        self._budgets: CallerBudgets[tuple[str, float, int]] = CallerBudgets()
        self._refusals_logged: CallerBudgets[str] = CallerBudgets()

    def routes(self) -> list[web.RouteDef]:
        return [web.route("*", PATH, self.token)]

    async def token(self, request: web.Request) -> web.Response:
        identity = self._live.current.identity
        assert identity is not None  # the endpoint is routed only with `identity:`, which stays (reload)
        caller = identity.trusted_proxies.caller(request.remote, request.headers.getall(X_FORWARDED_FOR, ()))
        await self._check_rate(identity, caller_key(caller))
        try:
            response = await self._token(identity, request)
        except TokenError as exc:
            self._metrics.observe_exchange(exc.oauth_error)
            log.info("identity: token exchange refused: %s (%s)", exc.oauth_error, exc.message)
            raise
        self._metrics.observe_exchange("issued")
        return response

    async def _check_rate(self, identity: Identity, caller: str) -> None:
        """TokenRateExceeded when `caller` spent its budget: before the body is read or a JWT parsed."""
        rate_per_s, burst = identity.spec.token_rate_per_s, identity.spec.token_burst
        wait_s = await self._budgets.take((caller, rate_per_s, burst), rate_per_s, burst)  # a new rate: a new budget
        if wait_s is None:
            return
        self._metrics.observe_exchange(RATE_LIMITED)
        if await self._refusals_logged.take(caller, REFUSALS_LOGGED_PER_S, 1) is None:
            log.warning(
                "identity: token requests from %s exceed token_rate_per_s %g (burst %d); refused with 429"
                " (logged at most once a minute per address)",
                caller or "(unknown address)",
                rate_per_s,
                burst,
            )
        raise TokenRateExceeded(wait_s)

    async def _token(self, identity: Identity, request: web.Request) -> web.Response:
        if request.method != "POST":
            raise TokenMethodNotAllowed()
        try:
            body = await read_body(request, MAX_BODY_BYTES)
        except BodyTooLarge:
            raise TokenBodyTooLarge(f"the token request body exceeds {MAX_BODY_BYTES} bytes") from None
        except BodyTimeout:
            raise TokenError("the token request body did not arrive in time") from None
        exchanged = await identity.exchange.exchange(parse_request(request.content_type, body))
        log.info(
            "identity: issued an access token to subject %s of issuer %s for tunnels %s (key %s, %ds)",
            describe(exchanged.subject),
            describe(exchanged.issuer),
            ", ".join(exchanged.tunnels),
            exchanged.issued.kid,
            exchanged.issued.expires_in,
        )
        answer = TokenResponse(
            access_token=exchanged.issued.token,
            issued_token_type=TOKEN_TYPE_ACCESS,
            token_type="Bearer",
            expires_in=exchanged.issued.expires_in,
        )
        return web.Response(body=_ENCODER.encode(answer), content_type=JSON, headers=NO_STORE)
