"""The workload-identity credential and its subject-token sources (gateway/tunnel/workload_identity.py,
gateway/tunnel/subject_tokens.py) in this process, against the token-endpoint and metadata-server
doubles on loopback: one exchange however many callers, a subject file read for every exchange,
refusals named and paced, a 401 answered with one exchange, and the Google and Azure wire formats."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import jwt
import pytest

from gateway.config.identity import AwsWebIdentitySpec, SubjectProviderSpec
from gateway.protocol.errors import ConfigError, CredentialsUnavailable
from gateway.tunnel.subject_tokens import (
    AZURE_IMDS,
    GCP_METADATA,
    AzureManagedIdentityToken,
    CommandToken,
    GcpMetadataToken,
    ReferenceToken,
    SubjectTokenError,
    azure_endpoint,
    gcp_base,
    subject_source,
)
from gateway.tunnel.workload_identity import ExchangeSettings, WorkloadIdentity
from tests.support.metadata_servers import AZURE_ISSUER, GOOGLE_ISSUER, AzureIdentityServer, GcpMetadataServer
from tests.support.token_endpoint import SubjectIssuer, TokenEndpoint

REFUSED = "token exchange refused: invalid_grant (identity provider idp_test_0001): subject token not accepted"


@contextlib.asynccontextmanager
async def credential(
    endpoint: TokenEndpoint,
    subject: ReferenceToken | CommandToken,
    learn_secret: Callable[[str], None] | None = None,
    **settings: object,
) -> AsyncIterator[WorkloadIdentity]:
    async with aiohttp.ClientSession() as session:
        exchange = ExchangeSettings(
            token_url=endpoint.url,
            identity_provider_id=str(settings.pop("identity_provider_id", endpoint.identity_provider_id)),
            service_account_id=endpoint.service_account_id,
            **settings,  # type: ignore[arg-type]
        )
        wi = WorkloadIdentity(exchange, subject, session, learn_secret=learn_secret)
        wi.start()
        try:
            yield wi
        finally:
            await wi.close()


@pytest.fixture
def issuer() -> SubjectIssuer:
    return SubjectIssuer()


@pytest.fixture
def token_file(issuer: SubjectIssuer, tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(issuer.mint())
    return path


async def test_many_callers_share_one_exchange(issuer: SubjectIssuer, token_file: Path) -> None:
    async with TokenEndpoint(issuer) as endpoint, credential(endpoint, ReferenceToken(f"file:{token_file}")) as wi:
        endpoint.delay_s = 0.2
        tokens = await asyncio.gather(*(wi.get() for _ in range(50)))
        assert len(set(tokens)) == 1
        assert endpoint.valid(tokens[0])
        assert len(endpoint.exchanges) == 1
        assert endpoint.max_in_flight == 1
        assert await wi.get() == tokens[0]
        assert wi.status().startswith("access token valid for ")
        assert wi.problem() is None
        assert endpoint.violations == []


async def test_a_caller_that_gives_up_does_not_cancel_the_exchange(issuer: SubjectIssuer, token_file: Path) -> None:
    async with TokenEndpoint(issuer) as endpoint, credential(endpoint, ReferenceToken(f"file:{token_file}")) as wi:
        endpoint.delay_s = 0.3
        impatient = asyncio.create_task(wi.get())
        await endpoint.until(lambda: len(endpoint.exchanges) == 1)
        impatient.cancel()
        with pytest.raises(asyncio.CancelledError):
            await impatient
        assert endpoint.valid(await wi.get())
        assert len(endpoint.exchanges) == 1


async def test_refresh_runs_in_the_background_and_reads_the_file_again(issuer: SubjectIssuer, token_file: Path) -> None:
    async with (
        TokenEndpoint(issuer, lifetime_s=2) as endpoint,
        credential(endpoint, ReferenceToken(f"file:{token_file}"), refresh_before_s=1200) as wi,
    ):
        first = await wi.get()
        rotated = issuer.mint()
        rotate(token_file, rotated)  # the platform rotates the token in place
        # Exchanges run one after the other: when the third begins, the second's token is in use.
        await endpoint.until(lambda: len(endpoint.exchanges) == 3, what="two refreshes half-way through")
        second = endpoint.granted()[1]
        assert second.jti == jwt.decode(rotated, options={"verify_signature": False})["jti"]
        assert await wi.get() == second.access_token != first
        assert endpoint.max_in_flight == 1


async def test_the_log_redactor_learns_the_subject_and_the_access_token(
    issuer: SubjectIssuer, token_file: Path
) -> None:
    """Both are credentials: the log redactor is told of each as it is read or obtained (an opaque access
    token matches none of its patterns), and of nothing else."""
    learnt: list[str] = []
    subject = (await asyncio.to_thread(token_file.read_text)).strip()
    async with (
        TokenEndpoint(issuer) as endpoint,
        credential(endpoint, ReferenceToken(f"file:{token_file}"), learnt.append) as wi,
    ):
        token = await wi.get()
        assert endpoint.valid(token)
    assert learnt == [subject, token]


def rotate(path: Path, token: str) -> None:
    """Replace the token file at once, as the kubelet does (a new file renamed over the old)."""
    fresh = path.with_name(f".{path.name}.new")
    fresh.write_text(token)
    os.replace(fresh, path)


async def test_a_refusal_is_named_and_paced(issuer: SubjectIssuer, token_file: Path) -> None:
    async with TokenEndpoint(issuer) as endpoint, credential(endpoint, ReferenceToken(f"file:{token_file}")) as wi:
        endpoint.refuse()
        with pytest.raises(CredentialsUnavailable) as first:
            await wi.get()
        assert first.value.reason == REFUSED
        assert str(first.value) == f"credentials: {REFUSED}"
        assert wi.problem() == REFUSED
        assert wi.status() == REFUSED
        with pytest.raises(CredentialsUnavailable) as again:
            await wi.get()  # within the pause: no exchange, the same reason
        assert again.value.retry_after is not None
        assert again.value.retry_after > 0
        assert len(endpoint.exchanges) == 1
        endpoint.accept()
        await asyncio.sleep(again.value.retry_after)  # the pause the credential named, then it exchanges
        assert endpoint.valid(await wi.get())
        assert wi.problem() is None


async def test_a_401_exchanges_once_then_not_again_at_once(issuer: SubjectIssuer, token_file: Path) -> None:
    async with TokenEndpoint(issuer) as endpoint, credential(endpoint, ReferenceToken(f"file:{token_file}")) as wi:
        first = await wi.get()
        assert wi.invalidate(first) is True
        assert wi.invalidate(first) is True  # a second request that carried it: the same exchange
        second = await wi.get()
        assert second != first
        assert len(endpoint.exchanges) == 2
        assert wi.invalidate(second) is False  # the fresh one refused too: not the token's fault
        assert await wi.get() == second
        assert len(endpoint.exchanges) == 2


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("file:{missing}", "no subject token: cannot read secret file {missing}: No such file or directory"),
        ("env:WIF_TEST_UNSET_VARIABLE", "no subject token: environment variable WIF_TEST_UNSET_VARIABLE is not set"),
    ],
)
async def test_no_subject_token_is_named(issuer: SubjectIssuer, tmp_path: Path, source: str, reason: str) -> None:
    missing = tmp_path / "nothing-here"
    async with (
        TokenEndpoint(issuer) as endpoint,
        credential(endpoint, ReferenceToken(source.format(missing=missing))) as wi,
    ):
        with pytest.raises(CredentialsUnavailable) as caught:
            await wi.get()
        assert caught.value.reason.startswith(reason.format(missing=missing))
        assert endpoint.exchanges == []


async def test_an_exec_subject_token_runs_for_every_exchange(issuer: SubjectIssuer, tmp_path: Path) -> None:
    tokens = [issuer.mint() for _ in range(2)]
    script = tmp_path / "token.py"
    counter = tmp_path / "runs"
    script.write_text(
        "import pathlib, sys\n"
        f"runs = pathlib.Path({str(counter)!r})\n"
        "n = int(runs.read_text()) if runs.exists() else 0\n"
        "runs.write_text(str(n + 1))\n"
        f"print({tokens!r}[n])\n"
    )
    async with (
        TokenEndpoint(issuer) as endpoint,
        credential(endpoint, CommandToken(f"{sys.executable} {script}")) as wi,
    ):
        first = await wi.get()
        wi.invalidate(first)
        await wi.get()
        jtis = [e.jti for e in endpoint.granted()]
        assert jtis == [jwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens]


async def test_an_unreachable_token_endpoint_is_named(issuer: SubjectIssuer, token_file: Path) -> None:
    async with TokenEndpoint(issuer) as endpoint:
        pass  # closed: nothing listens on its port any more
    async with credential(endpoint, ReferenceToken(f"file:{token_file}")) as wi:
        with pytest.raises(CredentialsUnavailable) as caught:
            await wi.get()
    assert (
        caught.value.reason
        == "token endpoint 127.0.0.1 unreachable (ClientConnectorError; identity provider idp_test_0001)"
    )


async def test_a_wrong_identity_provider_is_refused_by_name(issuer: SubjectIssuer, token_file: Path) -> None:
    async with TokenEndpoint(issuer) as endpoint:
        subject = ReferenceToken(f"file:{token_file}")
        async with credential(endpoint, subject, identity_provider_id="idp_other") as wi:
            with pytest.raises(CredentialsUnavailable) as caught:
                await wi.get()
    assert (
        caught.value.reason
        == "token exchange refused: invalid_grant (identity provider idp_other): unknown identity provider"
    )


async def test_close_ends_an_exchange_in_flight(issuer: SubjectIssuer, token_file: Path) -> None:
    async with TokenEndpoint(issuer) as endpoint, credential(endpoint, ReferenceToken(f"file:{token_file}")) as wi:
        endpoint.delay_s = 30
        wi.start()
        await endpoint.until(lambda: len(endpoint.exchanges) == 1)
        await wi.close()
        assert wi.exchanges == 0


# --------------------------------------------------------------------------- metadata servers


async def test_google_metadata_server_identity_token() -> None:
    issuer = SubjectIssuer(GOOGLE_ISSUER)
    async with GcpMetadataServer(issuer) as server, aiohttp.ClientSession() as session:
        source = GcpMetadataToken(session, "https://api.openai.com/v1", server.base_url)
        token = await source.read()
        assert issuer.verify(token, "https://api.openai.com/v1")["google"]["compute_engine"]["project_id"] == "project"
        request = server.requests[0]
        assert request.headers["Metadata-Flavor"] == "Google"
        assert request.query == {"audience": "https://api.openai.com/v1", "format": "full"}
        with pytest.raises(SubjectTokenError) as caught:
            await GcpMetadataToken(session, "", server.base_url).read()
        assert str(caught.value) == "the Google metadata server answered HTTP 400 (audience )"


@pytest.mark.parametrize("client_id", [None, "9e3a0c4d-1111-2222-3333-444455556666"])
async def test_azure_imds_managed_identity_token(client_id: str | None) -> None:
    issuer = SubjectIssuer(AZURE_ISSUER)
    async with AzureIdentityServer(issuer) as server, aiohttp.ClientSession() as session:
        endpoint, header = azure_endpoint(server.base_url, {})
        source = AzureManagedIdentityToken(session, "api://openai-wif", client_id, endpoint, header)
        assert issuer.verify(await source.read(), "api://openai-wif")["tid"]
        request = server.requests[0]
        assert request.headers["Metadata"] == "true"
        expected = {"api-version": "2018-02-01", "resource": "api://openai-wif"}
        assert request.query == (expected if client_id is None else {**expected, "client_id": client_id})
        wrong = AzureManagedIdentityToken(session, "api://openai-wif", "someone-else", endpoint, header)
        with pytest.raises(SubjectTokenError) as caught:
            await wrong.read()
        assert str(caught.value) == "Azure IMDS answered HTTP 400 (invalid_request, resource api://openai-wif)"


async def test_azure_app_service_identity_endpoint() -> None:
    issuer = SubjectIssuer(AZURE_ISSUER)
    secret = "app-service-identity-header-0001"
    async with AzureIdentityServer(issuer, identity_header=secret) as server, aiohttp.ClientSession() as session:
        environ = {"IDENTITY_ENDPOINT": server.identity_endpoint, "IDENTITY_HEADER": secret}
        endpoint, header = azure_endpoint(None, environ)
        source = AzureManagedIdentityToken(session, "api://openai-wif", None, endpoint, header)
        assert issuer.verify(await source.read(), "api://openai-wif")
        request = server.requests[0]
        assert request.headers["X-IDENTITY-HEADER"] == secret
        assert request.query == {"api-version": "2019-08-01", "resource": "api://openai-wif"}
        assert secret not in source.description
        assert secret not in repr(source)


def test_metadata_base_urls_come_from_config_then_the_environment() -> None:
    assert gcp_base(None, {}) == GCP_METADATA
    assert gcp_base(None, {"GCE_METADATA_HOST": "127.0.0.1:8080"}) == "http://127.0.0.1:8080"
    assert gcp_base("http://10.0.0.1/", {"GCE_METADATA_HOST": "x"}) == "http://10.0.0.1"
    path = "/metadata/identity/oauth2/token"
    assert azure_endpoint(None, {}) == (f"{AZURE_IMDS}{path}", None)
    assert azure_endpoint(None, {"AZURE_POD_IDENTITY_AUTHORITY_HOST": "http://10.0.0.2/"}) == (
        f"http://10.0.0.2{path}",
        None,
    )
    service = {"IDENTITY_ENDPOINT": "http://127.0.0.1:41741/msi/token", "IDENTITY_HEADER": "h"}
    assert azure_endpoint(None, service) == ("http://127.0.0.1:41741/msi/token", "h")
    assert azure_endpoint(None, {"IDENTITY_ENDPOINT": "http://x"}) == (f"{AZURE_IMDS}{path}", None)
    assert azure_endpoint("http://127.0.0.1:9", service) == (f"http://127.0.0.1:9{path}", None)


async def test_aws_web_identity_reads_its_file_every_time(issuer: SubjectIssuer, tmp_path: Path) -> None:
    token_file = tmp_path / "eks-token"
    provider = SubjectProviderSpec(aws_web_identity=AwsWebIdentitySpec())
    async with aiohttp.ClientSession() as session:
        environ = {"AWS_WEB_IDENTITY_TOKEN_FILE": str(token_file)}
        source = subject_source(None, provider, session=session, base=tmp_path, file="r", environ=environ)
        for _ in range(2):
            token = issuer.mint(audience="sts.amazonaws.com")
            token_file.write_text(token)
            assert await source.read() == token
        with pytest.raises(ConfigError) as caught:
            subject_source(None, provider, session=session, base=tmp_path, file="r", environ={})
        assert caught.value.key == "control_plane.workload_identity.provider.aws_web_identity.token_file"
