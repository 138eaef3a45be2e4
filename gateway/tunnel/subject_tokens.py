"""Subject tokens for workload identity: the platform token the gateway exchanges, read fresh each time.
Never logs or quotes a token, and never reaches a metadata server through a proxy.

Owns where a subject token comes from: a secret reference (`file:` re-read for every exchange,
since Kubernetes rotates projected tokens in place; `env:`; `exec:`, run for every exchange), the
Google metadata server's identity endpoint, Azure's managed-identity endpoints (IMDS, or App
Service's `IDENTITY_ENDPOINT`), and the AWS web-identity token file; and which base URL each
metadata provider uses (config, then the standard environment variables). Metadata servers are
link-local: they are reached directly, never through a proxy. Never logs or quotes a token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlencode, urlsplit

import aiohttp
import msgspec

from gateway.config import secrets
from gateway.config.identity import SubjectProviderSpec
from gateway.protocol.errors import ConfigError, ControlPlaneError
from gateway.protocol.wire import JsonDecoder
from gateway.protocol.workload_identity import describe
from gateway.tunnel.credentials import run_token_command
from gateway.upstream.token_post import read_capped

GCP_METADATA: Final = "http://metadata.google.internal"
GCP_IDENTITY_PATH: Final = "/computeMetadata/v1/instance/service-accounts/default/identity"
AZURE_IMDS: Final = "http://169.254.169.254"
AZURE_IMDS_PATH: Final = "/metadata/identity/oauth2/token"
AZURE_IMDS_API: Final = "2018-02-01"
AZURE_APP_SERVICE_API: Final = "2019-08-01"
METADATA_TIMEOUT_S: Final = 10.0
MAX_METADATA_BYTES: Final = 64 * 1024


class SubjectTokenError(ControlPlaneError):
    """No subject token could be had; the message names the source, never a token."""


class SubjectSource(Protocol):
    """Where subject tokens come from; `read()` gets a current one (called once per exchange)."""

    @property
    def description(self) -> str: ...

    async def read(self) -> str: ...


# --------------------------------------------------------------------------- references and files


@dataclass(frozen=True, slots=True)
class ReferenceToken:
    """`file:` (read again every time), `env:` or a literal."""

    ref: str
    base: Path | None = None

    @property
    def description(self) -> str:
        return secrets.describe(self.ref)

    async def read(self) -> str:
        try:
            return secrets.resolve(self.ref, base=self.base).reveal()
        except secrets.SecretError as exc:
            raise SubjectTokenError(f"no subject token: {exc}") from None


@dataclass(frozen=True, slots=True)
class CommandToken:
    """`exec:COMMAND`: run for every exchange; it prints the token (bare or as `{"token": …}`)."""

    command: str
    base: Path | None = None

    @property
    def description(self) -> str:
        return "exec: command"

    async def read(self) -> str:
        try:
            token, _ = await run_token_command(self.command, cwd=self.base, what="subject token")
        except ControlPlaneError as exc:
            raise SubjectTokenError(f"no subject token: {exc}") from None
        return token


# --------------------------------------------------------------------------- metadata servers


async def _metadata_get(
    session: aiohttp.ClientSession, url: str, headers: dict[str, str], what: str
) -> tuple[int, bytes]:
    """One GET to a metadata endpoint: direct (no proxy), no redirects, bounded in time and size."""
    try:
        async with session.get(
            url,
            headers=headers,
            proxy=None,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=METADATA_TIMEOUT_S),
        ) as resp:
            return resp.status, await read_capped(resp.content, MAX_METADATA_BYTES)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SubjectTokenError(f"{what} unreachable ({type(exc).__name__}, {_origin(url)})") from None


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"


def _bare_token(body: bytes, what: str) -> str:
    text = body.decode("ascii", errors="replace").strip()
    if not text or len(body) > MAX_METADATA_BYTES or not (text.isascii() and text.isprintable()) or " " in text:
        raise SubjectTokenError(f"{what} sent something that is not a token")
    return text


def gcp_base(configured: str | None, environ: Mapping[str, str]) -> str:
    """The metadata server: `base_url`, else `http://$GCE_METADATA_HOST` (host[:port], as Google's
    client libraries read it), else metadata.google.internal."""
    if configured:
        return configured.rstrip("/")
    host = environ.get("GCE_METADATA_HOST", "").strip()
    return f"http://{host}" if host else GCP_METADATA


@dataclass(frozen=True, slots=True)
class GcpMetadataToken:
    """A Google-signed ID token for `audience` (`format=full`: with the instance's claims)."""

    session: aiohttp.ClientSession
    audience: str
    base_url: str

    @property
    def description(self) -> str:
        return f"Google metadata server (audience {self.audience})"

    def url(self) -> str:
        return f"{self.base_url}{GCP_IDENTITY_PATH}?{urlencode({'audience': self.audience, 'format': 'full'})}"

    async def read(self) -> str:
        what = "the Google metadata server"
        status, body = await _metadata_get(self.session, self.url(), {"Metadata-Flavor": "Google"}, what)
        if status != 200:
            raise SubjectTokenError(f"{what} answered HTTP {status} (audience {self.audience})")
        return _bare_token(body, what)


class _AzureToken(msgspec.Struct):
    access_token: str

    def __repr__(self) -> str:
        return "_AzureToken(<hidden>)"


class _AzureError(msgspec.Struct):
    error: str = ""
    error_description: str = ""


_AZURE_TOKEN: Final = JsonDecoder(_AzureToken)
_AZURE_ERROR: Final = JsonDecoder(_AzureError)


def azure_endpoint(configured: str | None, environ: Mapping[str, str]) -> tuple[str, str | None]:
    """(token URL, `X-IDENTITY-HEADER` value or None): App Service / Functions / Container Apps
    when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set (and no `base_url` is configured),
    else IMDS at `base_url`, `$AZURE_POD_IDENTITY_AUTHORITY_HOST` or 169.254.169.254."""
    if configured:
        return f"{configured.rstrip('/')}{AZURE_IMDS_PATH}", None
    endpoint, header = environ.get("IDENTITY_ENDPOINT", ""), environ.get("IDENTITY_HEADER", "")
    if endpoint and header:
        return endpoint, header
    host = environ.get("AZURE_POD_IDENTITY_AUTHORITY_HOST", "").strip().rstrip("/")
    return f"{host or AZURE_IMDS}{AZURE_IMDS_PATH}", None


@dataclass(frozen=True, slots=True)
class AzureManagedIdentityToken:
    """A Microsoft Entra token of the managed identity for `resource` (its `aud`)."""

    session: aiohttp.ClientSession
    resource: str
    client_id: str | None
    endpoint: str
    identity_header: str | None = field(default=None, repr=False)
    """App Service's `IDENTITY_HEADER` (a secret: sent, never shown); None for IMDS."""

    @property
    def description(self) -> str:
        kind = "App Service identity endpoint" if self.identity_header else "Azure IMDS"
        return f"{kind} (resource {self.resource})"

    def url(self) -> str:
        api = AZURE_APP_SERVICE_API if self.identity_header else AZURE_IMDS_API
        query = {"api-version": api, "resource": self.resource}
        if self.client_id:
            query["client_id"] = self.client_id
        return f"{self.endpoint}?{urlencode(query)}"

    async def read(self) -> str:
        what = "the Azure App Service identity endpoint" if self.identity_header else "Azure IMDS"
        headers = {"X-IDENTITY-HEADER": self.identity_header} if self.identity_header else {"Metadata": "true"}
        status, body = await _metadata_get(self.session, self.url(), headers, what)
        if status != 200:
            try:
                code = _AZURE_ERROR.decode(body).error
            except msgspec.MsgspecError:
                code = ""
            detail = f"{describe(code)}, " if code else ""
            raise SubjectTokenError(f"{what} answered HTTP {status} ({detail}resource {self.resource})")
        try:
            token = _AZURE_TOKEN.decode(body).access_token
        except msgspec.MsgspecError:
            raise SubjectTokenError(f"{what} sent an answer without an access_token") from None
        return _bare_token(token.encode(errors="replace"), what)


def aws_token_file(configured: str | None, environ: Mapping[str, str]) -> str | None:
    return configured or environ.get("AWS_WEB_IDENTITY_TOKEN_FILE") or None


# --------------------------------------------------------------------------- choosing one


def subject_source(
    ref: str | None,
    provider: SubjectProviderSpec | None,
    *,
    session: aiohttp.ClientSession,
    base: Path | None,
    file: str,
    key: str = "control_plane.workload_identity",
    environ: Mapping[str, str] | None = None,
) -> SubjectSource:
    """The source routing.yaml names (the config check guarantees exactly one)."""
    env = os.environ if environ is None else environ
    if ref is not None:
        return CommandToken(ref[5:], base) if ref.startswith("exec:") else ReferenceToken(ref, base)
    assert provider is not None
    if provider.gcp_metadata is not None:
        gcp = provider.gcp_metadata
        return GcpMetadataToken(session, gcp.audience, gcp_base(gcp.base_url, env))
    if provider.azure_managed_identity is not None:
        azure = provider.azure_managed_identity
        endpoint, header = azure_endpoint(azure.base_url, env)
        return AzureManagedIdentityToken(session, azure.resource, azure.client_id, endpoint, header)
    assert provider.aws_web_identity is not None
    path = aws_token_file(provider.aws_web_identity.token_file, env)
    if path is None:
        expected = "a token file path, or the AWS_WEB_IDENTITY_TOKEN_FILE variable"
        raise ConfigError(file, f"{key}.provider.aws_web_identity.token_file", expected)
    return ReferenceToken(f"file:{path}", base)
