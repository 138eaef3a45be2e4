"""routing.yaml's `control_plane.workload_identity`: a platform token exchanged (RFC 8693) for short-lived
control-plane access tokens, the platform providers of that subject token, their load-time checks, and the
OPENAI_IDENTITY_* variables that turn it on. Shapes and checks only; reads no token and resolves no secret.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from gateway.config.base import Frozen, check_egress, check_url
from gateway.config.egress import Egress
from gateway.protocol.errors import ConfigError
from gateway.protocol.workload_identity import DEFAULT_TOKEN_URL


class GcpMetadataSpec(Frozen, frozen=True, kw_only=True):
    """A Google-signed ID token from the metadata server (Compute Engine, Cloud Run, GKE with an
    attached Google service account)."""

    audience: str
    base_url: str | None = None
    """Default: `http://$GCE_METADATA_HOST` when that variable is set, else the metadata server."""


class AzureManagedIdentitySpec(Frozen, frozen=True, kw_only=True):
    """A Microsoft Entra token of the managed identity, from IMDS (or from App Service's
    `IDENTITY_ENDPOINT` with `IDENTITY_HEADER` when those are set)."""

    resource: str
    """The application ID URI the token is for (its `aud`, the audience OpenAI trusts)."""
    client_id: str | None = None
    """A user-assigned identity's client id (several identities on one resource)."""
    base_url: str | None = None
    """Default: `$AZURE_POD_IDENTITY_AUTHORITY_HOST` when set, else IMDS (http://169.254.169.254)."""


class AwsWebIdentitySpec(Frozen, frozen=True, kw_only=True):
    """The web-identity token file EKS projects for IAM roles for service accounts."""

    token_file: str | None = None
    """Default: `$AWS_WEB_IDENTITY_TOKEN_FILE`."""


class SubjectProviderSpec(Frozen, frozen=True, kw_only=True):
    """Where the subject token comes from when it is not a file or variable: exactly one provider."""

    gcp_metadata: GcpMetadataSpec | None = None
    azure_managed_identity: AzureManagedIdentitySpec | None = None
    aws_web_identity: AwsWebIdentitySpec | None = None

    @property
    def chosen(self) -> list[str]:
        return [name for name in self.__struct_fields__ if getattr(self, name) is not None]


IDENTITY_ENV: Final = ("OPENAI_IDENTITY_PROVIDER_ID", "OPENAI_SERVICE_ACCOUNT_ID", "OPENAI_IDENTITY_TOKEN_FILE")
"""The variables the OpenAI SDKs read; together they turn workload identity on."""


class WorkloadIdentitySpec(Egress, frozen=True, kw_only=True):
    """A platform token exchanged (RFC 8693) for short-lived control-plane access tokens, instead
    of an API key. The egress settings default to the control plane's."""

    token_url: str = DEFAULT_TOKEN_URL
    identity_provider_id: str
    """`env:VAR`, `file:/path` or the id itself."""
    service_account_id: str
    """`env:VAR`, `file:/path` or the id itself."""
    subject_token_type: str = "jwt"
    """`jwt` or `id_token` (RFC 8693 `urn:ietf:params:oauth:token-type:…`)."""
    subject_token: str | None = None
    """`file:/path` (read again for every exchange), `env:VAR`, `exec:COMMAND` (run for every
    exchange; prints the token) or a literal; or `provider` instead."""
    provider: SubjectProviderSpec | None = None
    refresh_before_s: float = 1200.0
    """Exchange again this long before the access token expires (at most half its lifetime)."""


def check_workload_identity(
    spec: WorkloadIdentitySpec, file: str, key: str = "control_plane.workload_identity"
) -> None:
    check_url(spec.token_url, file, f"{key}.token_url")
    check_egress(spec, file, key)
    for name in ("identity_provider_id", "service_account_id"):
        if not getattr(spec, name):
            raise ConfigError(file, f"{key}.{name}", "a non-empty id or a reference (env:VAR, file:/path)")
    if spec.subject_token_type not in ("jwt", "id_token"):
        raise ConfigError(file, f"{key}.subject_token_type", f"`jwt` or `id_token` (got {spec.subject_token_type!r})")
    if (spec.subject_token is None) == (spec.provider is None):
        raise ConfigError(file, key, "exactly one of `subject_token` or `provider`")
    if spec.subject_token is not None and spec.subject_token in ("", "env:", "file:", "exec:"):
        raise ConfigError(file, f"{key}.subject_token", "a reference (file:/path, env:VAR, exec:COMMAND) or a token")
    if spec.refresh_before_s < 0:
        raise ConfigError(file, f"{key}.refresh_before_s", "a non-negative number of seconds")
    provider = spec.provider
    if provider is None:
        return
    chosen = provider.chosen
    if len(chosen) != 1:
        names = "`gcp_metadata`, `azure_managed_identity` or `aws_web_identity`"
        raise ConfigError(file, f"{key}.provider", f"exactly one of {names} (got {len(chosen)})")
    if provider.gcp_metadata is not None:
        if not provider.gcp_metadata.audience:
            raise ConfigError(file, f"{key}.provider.gcp_metadata.audience", "a non-empty audience")
        if provider.gcp_metadata.base_url is not None:
            check_url(provider.gcp_metadata.base_url, file, f"{key}.provider.gcp_metadata.base_url")
    if provider.azure_managed_identity is not None:
        azure = provider.azure_managed_identity
        if not azure.resource:
            raise ConfigError(file, f"{key}.provider.azure_managed_identity.resource", "a non-empty resource")
        if azure.base_url is not None:
            check_url(azure.base_url, file, f"{key}.provider.azure_managed_identity.base_url")
    if provider.aws_web_identity is not None and provider.aws_web_identity.token_file == "":
        raise ConfigError(file, f"{key}.provider.aws_web_identity.token_file", "a path (or leave it out)")


def workload_identity_from_env(environ: Mapping[str, str], file: str) -> WorkloadIdentitySpec | None:
    """Workload identity as the OpenAI SDKs turn it on: all of `IDENTITY_ENV` set. None when none
    is set; a ConfigError naming the missing ones when only some are."""
    present = [name for name in IDENTITY_ENV if environ.get(name)]
    if not present:
        return None
    missing = [name for name in IDENTITY_ENV if not environ.get(name)]
    if missing:
        expected = f"all of {', '.join(IDENTITY_ENV)} for workload identity ({', '.join(missing)} not set)"
        raise ConfigError(file, "control_plane (environment)", expected)
    return WorkloadIdentitySpec(
        identity_provider_id=f"env:{IDENTITY_ENV[0]}",
        service_account_id=f"env:{IDENTITY_ENV[1]}",
        subject_token=f"file:{os.path.abspath(environ[IDENTITY_ENV[2]])}",
    )


def token_endpoint_egress(control_plane: Egress | None, identity: WorkloadIdentitySpec) -> Egress:
    """The token endpoint's egress: the workload identity's own settings where given, the control
    plane's otherwise (a client certificate and its key count as one setting)."""
    inherited = control_plane or Egress()
    own_cert = identity.client_cert is not None
    return Egress(
        proxy=identity.proxy if identity.proxy is not None else inherited.proxy,
        ca_bundle=identity.ca_bundle if identity.ca_bundle is not None else inherited.ca_bundle,
        client_cert=identity.client_cert if own_cert else inherited.client_cert,
        client_key=identity.client_key if own_cert else inherited.client_key,
    )
