"""Cloud metadata servers on loopback, speaking the wire formats workloads get identity tokens in.

`GcpMetadataServer`: Google's metadata server identity endpoint
(`GET /computeMetadata/v1/instance/service-accounts/default/identity?audience=…&format=full`,
`Metadata-Flavor: Google` required both ways, the ID token as plain text). `AzureIdentityServer`:
Azure IMDS (`GET /metadata/identity/oauth2/token?api-version=2018-02-01&resource=…[&client_id=…]`,
`Metadata: true` required, a JSON answer whose numbers are strings), or App Service's identity
endpoint (`IDENTITY_ENDPOINT`, `api-version=2019-08-01`, the `X-IDENTITY-HEADER` secret). Both mint
real JWTs with a `SubjectIssuer` whose audience is the one asked for, and record each request.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from multidict import CIMultiDict

from tests.support.loopback_app import LoopbackApp
from tests.support.token_endpoint import SubjectIssuer

GOOGLE_ISSUER: Final = "https://accounts.google.com"
AZURE_TENANT: Final = "72f988bf-0000-0000-0000-2d7cd011db47"
AZURE_ISSUER: Final = f"https://sts.windows.net/{AZURE_TENANT}/"


@dataclass
class MetadataRequest:
    path: str
    query: dict[str, str]
    headers: CIMultiDict[str]
    status: int = 0


class _Server(LoopbackApp):
    def __init__(self) -> None:
        super().__init__()
        self.requests: list[MetadataRequest] = []

    @property
    def host(self) -> str:
        """host:port, as GCE_METADATA_HOST holds it."""
        return f"127.0.0.1:{self.port}"

    def _record(self, request: web.Request) -> MetadataRequest:
        record = MetadataRequest(request.path, dict(request.query), CIMultiDict(request.headers))
        self.requests.append(record)
        return record


class GcpMetadataServer(_Server):
    """Google's metadata server, identity endpoint only; `issuer.audience` is ignored (the caller asks)."""

    PATH: Final = "/computeMetadata/v1/instance/service-accounts/default/identity"

    def __init__(self, issuer: SubjectIssuer, *, subject: str = "104633357018876343512") -> None:
        super().__init__()
        self.issuer = issuer
        self.subject = subject

    def routes(self, app: web.Application) -> None:
        app.router.add_get(self.PATH, self._identity)

    async def _identity(self, request: web.Request) -> web.Response:
        record = self._record(request)
        flavor = {"Metadata-Flavor": "Google"}
        if request.headers.get("Metadata-Flavor") != "Google":
            record.status = 403
            return web.Response(status=403, text="Missing Metadata-Flavor:Google header.", headers=flavor)
        audience = request.query.get("audience")
        if not audience:
            record.status = 400
            return web.Response(status=400, text="non-empty audience parameter required", headers=flavor)
        claims = {"azp": self.subject, "email": "mcp-gateway@project.iam.gserviceaccount.com"}
        if request.query.get("format") == "full":
            claims["google"] = {"compute_engine": {"project_id": "project", "zone": "europe-west1-b"}}
        token = self.issuer.mint(self.subject, audience=audience, **claims)
        record.status = 200
        return web.Response(text=token, content_type="text/html", headers=flavor)


class AzureIdentityServer(_Server):
    """Azure IMDS's managed-identity token endpoint, or App Service's when `identity_header` is set."""

    IMDS_PATH: Final = "/metadata/identity/oauth2/token"
    APP_SERVICE_PATH: Final = "/msi/token"

    def __init__(
        self,
        issuer: SubjectIssuer,
        *,
        client_id: str = "9e3a0c4d-1111-2222-3333-444455556666",
        identity_header: str = "",
    ) -> None:
        super().__init__()
        self.issuer = issuer
        self.client_id = client_id
        self.identity_header = identity_header

    @property
    def identity_endpoint(self) -> str:
        return f"{self.base_url}{self.APP_SERVICE_PATH}"

    def routes(self, app: web.Application) -> None:
        app.router.add_get(self.IMDS_PATH, self._imds)
        app.router.add_get(self.APP_SERVICE_PATH, self._app_service)

    def _error(self, record: MetadataRequest, status: int, error: str, description: str) -> web.Response:
        record.status = status
        return web.json_response({"error": error, "error_description": description}, status=status)

    def _token(self, record: MetadataRequest, resource: str, expires_on: str) -> dict[str, str]:
        token = self.issuer.mint(
            "0b2a3c4d-aaaa-bbbb-cccc-ddddeeeeffff", audience=resource, appid=self.client_id, tid=AZURE_TENANT
        )
        record.status = 200
        return {"access_token": token, "expires_on": expires_on, "resource": resource, "token_type": "Bearer"}

    async def _imds(self, request: web.Request) -> web.Response:
        record = self._record(request)
        if request.headers.get("Metadata") != "true":
            return self._error(record, 400, "invalid_request", "Required metadata header not specified")
        if request.query.get("api-version") != "2018-02-01":
            return self._error(record, 400, "invalid_request", "Invalid API version")
        resource = request.query.get("resource")
        if not resource:
            return self._error(record, 400, "invalid_request", "Required audience parameter not specified")
        if request.query.get("client_id", self.client_id) != self.client_id:
            return self._error(record, 400, "invalid_request", "Identity not found")
        expires = int(time.time()) + 86399
        body = {
            **self._token(record, resource, str(expires)),
            "client_id": self.client_id,
            "expires_in": "86399",
            "ext_expires_in": "86399",
            "not_before": str(expires - 86399),
        }
        return web.json_response(body)

    async def _app_service(self, request: web.Request) -> web.Response:
        record = self._record(request)
        if not self.identity_header or request.headers.get("X-IDENTITY-HEADER") != self.identity_header:
            return self._error(record, 401, "unauthorized", "X-IDENTITY-HEADER missing or wrong")
        if request.query.get("api-version") != "2019-08-01":
            return self._error(record, 400, "invalid_request", "Invalid API version")
        resource = request.query.get("resource")
        if not resource:
            return self._error(record, 400, "invalid_request", "resource required")
        body = {**self._token(record, resource, str(int(time.time()) + 86399)), "client_id": self.client_id}
        return web.json_response(body)
