"""The relay's secret sweep for workload identity: a `gateway relay` run that exchanges, refuses, polls
and answers with tokens, and every byte it put out searched for them.

Secrets: every subject token sent (good, expired, tampered, for an unknown subject, signed by an
unknown key), every access token issued (whole, and its signature alone), both signing keys (the
whole PEM and each of its lines), the JWKS Bearer credential and a tunnel's gateway key. Searched:
every line the relay printed on stdout and stderr (DEBUG level, access log on), every OTLP export
(a real receiver), every `/metrics` text and every error answer (design.md, Non-negotiables: secrets
never reach logs, spans, metrics or error messages). A successful exchange's answer carries its
access token by design and is the one thing not searched.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.support.identity import (
    SUBJECT,
    IssuerKey,
    TokenPoller,
    claims,
    exchange,
    hs256_with_public_key,
    identity_yaml,
    jwks_server,
    mcp_call,
    relay_process,
    tampered,
    write_signing_key,
)
from tests.support.otlp_receiver import FAST_EXPORT, otlp_receiver

TUNNEL_A, TUNNEL_B = "tunnel_a", "tunnel_b"
GATEWAY_KEY = "swp-relay-gwkey-Nd83kq1Z"
JWKS_BEARER = "swp-relay-jwks-bearer-Ls02mc7Q"


async def test_no_token_or_key_reaches_the_relays_output(tmp_path: Path) -> None:
    key, stranger = IssuerKey.rsa(), IssuerKey.ec()
    new_key = write_signing_key(tmp_path / "new.pem", "rsa")
    old_key = write_signing_key(tmp_path / "old.pem")
    token_file = tmp_path / "jwks-bearer"
    token_file.write_text(JWKS_BEARER)
    secrets: dict[str, str] = {"gateway key": GATEWAY_KEY, "JWKS bearer": JWKS_BEARER}
    for name, path in (("new signing key", new_key), ("old signing key", old_key)):
        pem = path.read_text()
        secrets[name] = pem
        for n, line in enumerate(pem.splitlines()):
            if not line.startswith("-----"):
                secrets[f"{name} line {n}"] = line
    answers: list[str] = []
    stderr_file = tmp_path / "relay.stderr"
    async with (
        jwks_server([key], bearer=JWKS_BEARER) as jwks,
        otlp_receiver() as receiver,
        aiohttp.ClientSession() as http,
    ):
        config = (
            "listen: '127.0.0.1:0'\naccess_log: true\n"
            f"tunnels: {{{TUNNEL_A}: {{}}, {TUNNEL_B}: {{gateway_key: {GATEWAY_KEY}}}}}\n"
            + identity_yaml(
                jwks.url,
                [new_key, old_key],
                {SUBJECT: [TUNNEL_A]},
                issuer_extra=f"      jwks_token: 'file:{token_file}'\n      jwks_cooldown_s: 0\n",
            )
        )
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, **FAST_EXPORT}
        with stderr_file.open("wb") as stderr:
            async with relay_process(config, tmp_path / "relay", stderr=stderr, log_level="DEBUG", env=env) as relay:
                url = relay.url
                subject_tokens = {
                    "good": key.sign(claims()),
                    "expired": key.sign(claims(ttl=-600)),
                    "tampered": tampered(key.sign(claims()), sub="system:serviceaccount:x:admin"),
                    "unknown subject": key.sign(claims(sub="system:serviceaccount:x:y")),
                    "unknown key": stranger.sign(claims()),
                    "HS256 confusion": hs256_with_public_key(key, claims()),
                    "wrong audience": key.sign(claims(aud="elsewhere")),
                }
                for name, token in subject_tokens.items():
                    secrets[f"subject token ({name})"] = token
                    secrets[f"subject token signature ({name})"] = token.rsplit(".", 1)[1]
                    for form in (False, True):
                        status, _, body = await exchange(http, url, token, form=form)
                        if status == 200:
                            _issued(secrets, body["access_token"])
                        else:
                            answers.append(str(body))
                poller = TokenPoller(http, TUNNEL_A, subject_tokens["good"], url, url)
                async with asyncio.TaskGroup() as tg:
                    serving = tg.create_task(poller.run())
                    await poller.serving()
                    for n in range(5):
                        status, body = await mcp_call(http, url, TUNNEL_A, n)
                        assert status == 200, body
                    serving.cancel()
                assert poller.token is not None
                _issued(secrets, poller.token)
                # refused uses of good and bad credentials, on the tunnel API
                for bearer in (poller.token, poller.token[:-6] + "AAAAAA", GATEWAY_KEY, subject_tokens["good"]):
                    for tunnel in (TUNNEL_A, TUNNEL_B, "tunnel_nope"):
                        for path in ("", "/poll?timeout_ms=1"):
                            async with http.get(
                                f"{url}/v1/tunnels/{tunnel}{path}", headers={"Authorization": f"Bearer {bearer}"}
                            ) as resp:
                                answers.append(await resp.text())
                # the issuer's JWKS goes away: the unknown-key token now meets an unreachable issuer
                jwks.bearer = "something else"
                status, _, body = await exchange(http, url, stranger.sign(claims(), kid="new-kid"))
                assert status == 503, body
                answers.append(str(body))
                async with http.get(f"{url}/metrics") as resp:
                    metrics = await resp.text()
                assert 'relay_token_exchanges_total{outcome="issued"}' in metrics
                await receiver.wait_for(lambda r: bool(r.spans))
        stdout = relay.process.lines
    stderr_lines = stderr_file.read_text().splitlines()
    assert any("identity: issued an access token" in line for line in stderr_lines)  # the run was logged
    assert any("token exchange refused: invalid_grant" in line for line in stderr_lines)
    assert any("JWKS of issuer" in line and "HTTP 401" in line for line in stderr_lines)
    searched = {
        "relay stdout": stdout,
        "relay stderr": stderr_lines,
        "metrics": [metrics],
        "error answers": answers,
        "OTLP exports": [raw.decode(errors="replace") for raw in receiver.raw],
    }
    leaks = [
        f"{name} in {where}: {text[:200]!r}"
        for where, texts in searched.items()
        for text in texts
        for name, value in secrets.items()
        if value in text
    ]
    assert not leaks, leaks
    assert sum(len(texts) for texts in searched.values()) > 50


def _issued(secrets: dict[str, str], token: str) -> None:
    secrets[f"access token {len(secrets)}"] = token
    secrets[f"access token signature {len(secrets)}"] = token.rsplit(".", 1)[1]
