"""gateway/doctor/network_checks.py, DNS: resolution goes through the injected resolver, so a failing
one names the host, the routing.yaml key to fix, and makes the later checks of its destination skip,
without any DNS query leaving this machine (nothing else is reached either: every later check skips)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gateway.doctor.report import CheckResult, Report
from gateway.doctor.run import diagnose
from tests.support.gateway_process import PROXY_VARIABLES, routes, stdio


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


class Unresolvable:
    """A resolver that knows no name, and writes down what it was asked."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append((host, port))
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


async def diagnosed(tmp_path: Path, **control: str) -> tuple[Report, Unresolvable]:
    """The doctor's report on a file with one stdio server and this control plane, names unresolvable."""
    settings = {"url": "https://cp.doctor.invalid", "tunnel_id": "t1", "api_key": "inline-key-0001", **control}
    file = tmp_path / "routing.yaml"
    file.write_text(routes({"main": stdio("raw_stdio.py")}, control_plane=settings))
    resolver = Unresolvable()
    return await diagnose(file, resolver=resolver), resolver


def one(report: Report, name: str, target: str) -> CheckResult:
    (found,) = [c for c in report.checks if c.name == name and c.target == target]
    return found


async def test_an_unresolvable_control_plane_is_named_and_nothing_reaches_it(tmp_path: Path) -> None:
    report, resolver = await diagnosed(tmp_path)
    assert resolver.asked == [("cp.doctor.invalid", 443)]
    dns = one(report, "dns", "cp.doctor.invalid")
    assert dns.status == "fail"
    assert dns.cause == "DNS lookup failed for cp.doctor.invalid (Name or service not known)"
    assert dns.mitigation is not None
    assert dns.mitigation.startswith("check the host name in `control_plane.url`")
    for kind in ("connect", "tls", "credentials", "tunnel"):
        result = one(report, kind, "control_plane")
        assert result.status == "skip", result
        assert "does not resolve" in result.detail
    assert one(report, "server", "servers.main").status == "ok"
    assert report.summary.exit_code == 1


async def test_an_unresolvable_proxy_names_the_proxy_setting(tmp_path: Path) -> None:
    """Behind a proxy the control plane's own name is the proxy's to resolve: only the proxy's is looked up."""
    report, resolver = await diagnosed(tmp_path, proxy="http://proxy.doctor.invalid:3128")
    assert resolver.asked == [("proxy.doctor.invalid", 3128)]
    dns = one(report, "dns", "proxy.doctor.invalid")
    assert dns.status == "fail"
    assert dns.mitigation is not None
    assert "`control_plane.proxy`" in dns.mitigation
    assert one(report, "dns", "cp.doctor.invalid").detail == "resolved by the proxy (control_plane)"
    assert one(report, "proxy", "control_plane").status == "skip"
