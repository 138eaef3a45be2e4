"""The doctor's network checks, per destination: DNS, a TCP connection (or the proxy: reachable,
`CONNECT` allowed, credentials accepted), and TLS (chain, expiry, a TLS-inspecting middlebox named).
Sends no HTTP request to a destination; `blocked` records which destinations later checks should skip.
"""

from __future__ import annotations

import asyncio
import ssl
from urllib.parse import urlsplit

from gateway.doctor.plan import CONTROL_PLANE, EMBEDDED, Destination, Plan
from gateway.doctor.probes import (
    Certificate,
    Link,
    Problem,
    Resolver,
    forward_head,
    handshake,
    open_link,
    through_proxy,
    unverified_context,
)
from gateway.doctor.report import CheckResult, fail, ok, skip, timed
from gateway.protocol.errors import ConfigError
from gateway.upstream.egress import tls_context

Blocked = dict[str, str]
"""Destination target -> why the checks after this one skip it."""
EXPIRY_WARNING_DAYS = 14


def embedded(kind: str) -> CheckResult:
    return skip(kind, CONTROL_PLANE, EMBEDDED)


def _proxy_address(proxy: str) -> str:
    parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


# --------------------------------------------------------------------------- dns


async def check_dns(plan: Plan, resolver: Resolver, blocked: Blocked, timeout_s: float) -> list[CheckResult]:
    """Each host the gateway resolves itself: a destination's, or its proxy's (a proxied destination's
    own name is the proxy's to resolve)."""
    users: dict[str, list[Destination]] = {}
    proxies: dict[str, list[Destination]] = {}
    for dest in plan.destinations:
        proxy = dest.proxy
        if proxy is None:
            users.setdefault(dest.host, []).append(dest)
        else:
            proxies.setdefault(urlsplit(proxy if "://" in proxy else f"http://{proxy}").hostname or "", []).append(dest)
    hosts = list(dict.fromkeys([*users, *proxies]))
    results = list(await asyncio.gather(*(_resolve(h, users, proxies, resolver, blocked, timeout_s) for h in hosts)))
    results += [
        skip("dns", dest.host, f"resolved by the proxy ({dest.target})")
        for dest in plan.destinations
        if dest.proxy is not None and dest.host not in users and dest.host not in proxies
    ]
    return ([embedded("dns")] if plan.embedded else []) + results


async def _resolve(
    host: str,
    users: dict[str, list[Destination]],
    proxies: dict[str, list[Destination]],
    resolver: Resolver,
    blocked: Blocked,
    timeout_s: float,
) -> CheckResult:
    direct, via = users.get(host, []), proxies.get(host, [])
    names = [d.target for d in direct] + [f"proxy of {d.target}" for d in via]
    port = direct[0].port if direct else int(_proxy_address(via[0].proxy or "").rsplit(":", 1)[1])
    with timed() as clock:
        try:
            async with asyncio.timeout(timeout_s):
                addresses = await resolver(host, port)
        except TimeoutError:
            cause = f"DNS lookup for {host} got no answer within {timeout_s:g}s"
            problem: str | None = cause
        except OSError as exc:
            problem = f"DNS lookup failed for {host} ({exc.strerror or exc})"
        else:
            problem = None if addresses else f"DNS lookup for {host} returned no address"
        if problem is None:
            return clock.stamp(ok("dns", host, f"{', '.join(addresses)} ({', '.join(names)})"))
        for dest in [*direct, *via]:
            blocked[dest.target] = "its host does not resolve (see dns)"
        if direct:
            fix = f"check the host name in `{direct[0].url_setting}`; this machine's resolver must know it"
        else:
            fix = f"check the proxy's host name in {via[0].proxy_setting}; this machine's resolver must know it"
        if direct and via:
            fix += " (it is also a proxy's)"
        return clock.stamp(fail("dns", host, problem, fix + " (/etc/resolv.conf, or the network's DNS)"))


# --------------------------------------------------------------------------- connect / proxy


async def check_reach(plan: Plan, blocked: Blocked, timeout_s: float) -> list[CheckResult]:
    """A TCP connection to each destination reached directly, and the proxy of each proxied one."""
    results: list[CheckResult] = [embedded("connect")] if plan.embedded else []
    checks = [
        (_proxy(dest, blocked, timeout_s) if dest.proxy is not None else _connect(dest, blocked, timeout_s))
        for dest in plan.destinations
    ]
    return results + list(await asyncio.gather(*checks))


def _unreachable_fix(dest: Destination, problem: Problem) -> str:
    if problem.kind == "refused":
        if dest.target.startswith("servers."):
            return f"start the server, or correct the host and port in `{dest.url_setting}`"
        return f"check the host and port in `{dest.url_setting}`, and that the service runs there"
    return (
        f"allow outbound connections to {dest.authority} from this machine, or set the proxy this network "
        f"requires (`{dest.key}.proxy`, or {dest.proxy_setting})"
    )


async def _connect(dest: Destination, blocked: Blocked, timeout_s: float) -> CheckResult:
    if dest.target in blocked:
        return skip("connect", dest.target, blocked[dest.target])
    with timed() as clock:
        link = await open_link(dest.host, dest.port, timeout_s)
        if isinstance(link, Problem):
            blocked[dest.target] = f"{dest.authority} is not reachable (see connect)"
            return clock.stamp(fail("connect", dest.target, link.cause, _unreachable_fix(dest, link), dest.authority))
        await link.close()
        return clock.stamp(ok("connect", dest.target, f"{dest.authority} accepts connections"))


async def _proxy(dest: Destination, blocked: Blocked, timeout_s: float) -> CheckResult:
    proxy = dest.proxy
    assert proxy is not None
    where = f"via {_proxy_address(proxy)}"
    if dest.target in blocked:
        return skip("proxy", dest.target, blocked[dest.target])
    with timed() as clock:
        if dest.tls:
            link = await through_proxy(proxy, dest.authority, timeout_s)
            if isinstance(link, Link):
                await link.close()
                return clock.stamp(ok("proxy", dest.target, f"{where}: CONNECT to {dest.authority} allowed"))
            answer: str | Problem = link
        else:
            answer = await forward_head(proxy, dest.url, timeout_s)
            if isinstance(answer, str) and answer != "407":
                return clock.stamp(ok("proxy", dest.target, f"{where}: forwards plain HTTP (HTTP {answer})"))
            if isinstance(answer, str):
                answer = Problem("proxy_status", f"HTTP {answer} Proxy Authentication Required", status=answer)
        assert isinstance(answer, Problem)
        blocked[dest.target] = "the proxy does not carry it (see proxy)"
        cause, fix = _proxy_advice(dest, proxy, answer)
        return clock.stamp(fail("proxy", dest.target, cause, fix, where))


def _proxy_advice(dest: Destination, proxy: str, problem: Problem) -> tuple[str, str]:
    setting = dest.proxy_setting
    if problem.kind != "proxy_status":
        if problem.kind == "closed":
            return problem.cause, f"check that {setting} names an HTTP proxy (http://host:port)"
        cause = f"cannot reach the proxy {_proxy_address(proxy)}: {problem.cause}"
        return cause, f"check the proxy's address in {setting}, and that the proxy runs"
    status = problem.status or ""
    if status == "407":
        has_credentials = "@" in urlsplit(proxy if "://" in proxy else f"http://{proxy}").netloc
        if has_credentials:
            cause = f"the proxy refused the credentials in {setting} ({problem.cause})"
        else:
            cause = f"the proxy requires credentials and {setting} has none ({problem.cause})"
        fix = f"put the proxy's user and password in {setting}'s URL, as `user:password@` before its host"
        return cause, fix
    if status in ("502", "503", "504"):
        cause = f"the proxy could not reach {dest.authority} ({problem.cause})"
        return cause, f"check the host in `{dest.url_setting}`; the proxy itself must be able to reach it"
    cause = f"the proxy refused CONNECT to {dest.authority} ({problem.cause})"
    fix = (
        f"ask the proxy's administrators to allow CONNECT to {dest.authority}, or bypass the proxy for this "
        f"host (`{dest.key}.proxy: none`, or NO_PROXY) where it is reachable directly"
    )
    return cause, fix


# --------------------------------------------------------------------------- tls


async def check_tls(plan: Plan, blocked: Blocked, timeout_s: float) -> list[CheckResult]:
    """The TLS handshake with each HTTPS destination, trusting what the gateway would trust."""
    results: list[CheckResult] = [embedded("tls")] if plan.embedded else []
    checks = [_tls(plan, dest, blocked, timeout_s) for dest in plan.destinations if dest.tls]
    return results + list(await asyncio.gather(*checks))


async def _link(dest: Destination, timeout_s: float) -> Link | Problem:
    proxy = dest.proxy
    if proxy is None:
        return await open_link(dest.host, dest.port, timeout_s)
    return await through_proxy(proxy, dest.authority, timeout_s)


async def _tls(plan: Plan, dest: Destination, blocked: Blocked, timeout_s: float) -> CheckResult:
    if dest.target in blocked:
        return skip("tls", dest.target, blocked[dest.target])
    with timed() as clock:
        try:
            context = tls_context(dest.spec, file=plan.file, key=dest.key, base=plan.base)
        except ConfigError as exc:
            blocked[dest.target] = "its TLS settings are unusable (see tls)"
            fix = f"point `{dest.key}.ca_bundle` (and `client_cert`, `client_key`) at readable PEM files"
            return clock.stamp(fail("tls", dest.target, str(exc), fix))
        if not isinstance(context, ssl.SSLContext):
            context = ssl.create_default_context()
        found = await _verified(dest, context, timeout_s)
        if isinstance(found, Certificate):
            return clock.stamp(ok("tls", dest.target, _trusted(dest, found)))
        blocked[dest.target] = "the TLS handshake fails (see tls)"
        if found.kind == "tls_untrusted":
            found = await _with_issuer(dest, found, timeout_s)
        cause, fix = _tls_advice(dest, found)
        return clock.stamp(fail("tls", dest.target, cause, fix, dest.authority))


async def _verified(dest: Destination, context: ssl.SSLContext, timeout_s: float) -> Certificate | Problem:
    link = await _link(dest, timeout_s)
    if isinstance(link, Problem):
        return link
    try:
        return await handshake(link, context, dest.host, timeout_s)
    finally:
        await link.close()


async def _with_issuer(dest: Destination, problem: Problem, timeout_s: float) -> Problem:
    """The refused certificate's issuer, from a second handshake that verifies nothing."""
    found = await _verified(dest, unverified_context(), timeout_s)
    issuer = found.issuer if isinstance(found, Certificate) else None
    return Problem(problem.kind, problem.cause, problem.status, issuer)


def _trusted(dest: Destination, cert: Certificate) -> str:
    roots = f"the system roots and ca_bundle {dest.spec.ca_bundle}" if dest.spec.ca_bundle else "the system roots"
    days = cert.days_left()
    soon = f"; renew it within {days} days" if days < EXPIRY_WARNING_DAYS else ""
    expiry = f"expires in {days} days ({cert.not_after:%Y-%m-%d}){soon}"
    return f"chain verifies with {roots}; certificate issued by {cert.issuer}, {expiry}"


def _tls_advice(dest: Destination, problem: Problem) -> tuple[str, str]:
    key = f"`{dest.key}.ca_bundle`"
    if problem.kind == "tls_untrusted":
        issuer = f"'{problem.issuer}'" if problem.issuer else "an unknown issuer"
        cause = (
            f"the certificate of {dest.authority} is issued by {issuer}, not a CA this machine trusts: probably a "
            f"TLS-inspecting proxy or middlebox re-signs the traffic ({problem.cause})"
        )
        if dest.spec.ca_bundle is None:
            fix = f"get that CA's certificate (PEM) from your network team and set {key} to its file"
        else:
            fix = f"{key} ({dest.spec.ca_bundle}) does not hold that issuer: add its CA certificate (PEM) to the file"
        return cause, fix
    if problem.kind == "tls_expired":
        cause = f"the certificate of {dest.authority} has expired ({problem.cause})"
        return cause, "renew the server's certificate, or correct this machine's clock"
    if problem.kind == "tls_hostname":
        cause = f"the certificate of {dest.authority} does not name {dest.host} ({problem.cause})"
        return cause, f"use a host name the certificate names in `{dest.url_setting}`"
    if problem.kind == "tls":
        fix = (
            f"check that {dest.authority} speaks HTTPS (use http:// for a plain-HTTP service) and, where it asks "
            f"for a client certificate, `{dest.key}.client_cert` and `client_key`"
        )
        return f"{problem.cause} with {dest.authority}", fix
    return problem.cause, _unreachable_fix(dest, problem)
