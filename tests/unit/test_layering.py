"""Imports run one way: a module imports only its own layer and the layers below it (shared/design.md,
"Layout"), `gateway/protocol/` imports no I/O library, the relay only `protocol/` and `config/`, and
only the OTel implementation in `observe/` imports opentelemetry (everyone else calls `observe.hooks`).

The check reads every module of the package with `ast` (nothing is imported); a module that no layer
names fails it too, so a new module is placed on purpose.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.harness import ROOT

LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # lowest first; a module may import from its own layer and any layer above it in this list
    ("protocol", ("gateway.protocol",)),
    ("config", ("gateway.config",)),
    ("relay", ("gateway.relay",)),
    ("observe", ("gateway.observe",)),
    ("upstream", ("gateway.upstream",)),
    ("channels", ("gateway.channels",)),
    ("dispatch", ("gateway.dispatch",)),
    ("tunnel", ("gateway.tunnel",)),
    ("app", ("gateway.app",)),
    ("doctor", ("gateway.doctor",)),
    ("cli", ("gateway.cli",)),
)
STANDALONE = ("gateway.demo",)
"""Programs shipped in the package that import nothing of the gateway's."""
ANYONE = "gateway"
"""The package root (`__version__`) may be imported by every module."""
RELAY_MAY_IMPORT = frozenset({"protocol", "config", "relay"})
NO_IO = ("asyncio", "aiohttp", "uvloop", "httptools", "redis", "opentelemetry", "socket", "ssl", "subprocess")
"""What `gateway/protocol/` must not import: it is sans-IO."""
OTEL = (
    "gateway.observe.otel",
    "gateway.observe.otel_scopes",
    "gateway.observe.otel_relay",
    "gateway.observe.otel_sdk",
    "gateway.observe.otel_export",
    "gateway.observe.otel_spans",
    "gateway.observe.otel_records",
    "gateway.observe.otel_transport",
)
"""The OTel implementation: the only modules that import `opentelemetry`."""
OTEL_LOADER = "gateway.observe.telemetry"
"""The one module that imports the OTel implementation (inside `build`, when telemetry is on)."""


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer_of(module: str) -> str | None:
    for name, prefixes in LAYERS:
        if any(_within(module, prefix) for prefix in prefixes):
            return name
    if any(_within(module, prefix) for prefix in STANDALONE):
        return "standalone"
    return None


RANK = {name: rank for rank, (name, _) in enumerate(LAYERS)}


def imports_of(source: str, module: str) -> set[str]:
    """Every module `source` imports (absolute names; relative imports resolved against `module`).

    `from gateway.x import y` gives `gateway.x.y`, which may name a module or something in one:
    `violations` reads it as the module it is or is in (`module_of`).
    """
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join([*parts, base] if base else parts)
            if _within(base, ANYONE):  # `from gateway.observe import otel` names a module
                found.update(f"{base}.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    return found


def module_of(name: str, modules: dict[str, set[str]]) -> str:
    """The package module `name` is or is in: `gateway.protocol.wire.Codec` -> `gateway.protocol.wire`."""
    while name not in modules and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def violations(modules: dict[str, set[str]]) -> list[str]:
    """Each import that breaks a rule, as `importer -> imported: why`."""
    out: list[str] = []
    for module, imported in sorted(modules.items()):
        if module == ANYONE:
            continue
        layer = layer_of(module)
        if layer is None:
            out.append(f"{module}: in no layer (add it to LAYERS in tests/unit/test_layering.py)")
            continue
        for name in sorted({module_of(n, modules) if _within(n, ANYONE) else n for n in imported}):
            if layer == "protocol" and any(_within(name, lib) for lib in NO_IO):
                out.append(f"{module} -> {name}: protocol/ is sans-IO")
                continue
            if module not in OTEL and _within(name, "opentelemetry"):
                out.append(f"{module} -> {name}: only the OTel implementation imports opentelemetry")
                continue
            if module not in OTEL and module != OTEL_LOADER and name in OTEL:
                out.append(f"{module} -> {name}: only {OTEL_LOADER} loads the OTel implementation")
                continue
            if not _within(name, ANYONE) or name == ANYONE:
                continue
            target = layer_of(name)
            if target is None or (name in modules and target == layer):
                continue
            if layer == "standalone":
                out.append(f"{module} -> {name}: a standalone program imports nothing of the gateway's")
            elif target == "standalone":
                out.append(f"{module} -> {name}: nothing imports a standalone program")
            elif layer == "relay" and target not in RELAY_MAY_IMPORT:
                out.append(f"{module} -> {name}: the relay imports only protocol/ and config/")
            elif RANK[target] > RANK[layer]:
                out.append(f"{module} -> {name}: {layer} may not import {target} (a higher layer)")
    return out


def package_modules() -> dict[str, set[str]]:
    modules: dict[str, set[str]] = {}
    for path in sorted((ROOT / "gateway").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[module] = imports_of(path.read_text(), module)
    return modules


def test_the_package_keeps_its_layers() -> None:
    modules = package_modules()
    assert len(modules) > 40, "the check reads the package"
    assert violations(modules) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        ("gateway.protocol.wire", "import asyncio\n", "protocol/ is sans-IO"),
        ("gateway.protocol.eras", "from aiohttp import web\n", "protocol/ is sans-IO"),
        ("gateway.protocol.eras", "from gateway.upstream.base import Upstream\n", "protocol may not import upstream"),
        ("gateway.config.routing", "from gateway.channels.rules import Router\n", "config may not import channels"),
        ("gateway.upstream.pool", "from gateway.channels.rules import Router\n", "upstream may not import channels"),
        ("gateway.relay.app", "from gateway.observe.hooks import NOOP\n", "the relay imports only protocol/ and"),
        ("gateway.relay.app", "from gateway.observe import announce\n", "the relay imports only protocol/ and"),
        ("gateway.observe.telemetry", "from ..upstream.base import Upstream\n", "observe may not import upstream"),
        ("gateway.observe.hooks", "from opentelemetry import trace\n", "only the OTel implementation imports"),
        ("gateway.observe.telemetry", "import opentelemetry.sdk.trace\n", "only the OTel implementation imports"),
        ("gateway.relay.tracing", "from opentelemetry.trace import Span\n", "only the OTel implementation imports"),
        ("gateway.dispatch.dispatcher", "from gateway.observe.otel import SCOPE\n", "only gateway.observe.telemetry"),
        ("gateway.observe.ops", "from . import otel_sdk\n", "only gateway.observe.telemetry loads"),
        ("gateway.demo.clock", "from gateway.protocol import wire\n", "a standalone program imports nothing"),
        ("gateway.newthing", "import json\n", "in no layer"),
    ],
)
def test_a_forbidden_import_fails_the_check(module: str, source: str, expected: str) -> None:
    modules = package_modules()
    modules[module] = imports_of(source, module)
    found = [v for v in violations(modules) if v.startswith(module)]
    assert len(found) == 1, found
    assert expected in found[0]


def test_allowed_imports_pass() -> None:
    modules = package_modules()
    modules["gateway.dispatch.dispatcher"] = imports_of("from gateway.channels.channel import ServedChannel\n", "x")
    modules["gateway.relay.app"] = imports_of("from gateway.protocol.wire import Codec\nimport asyncio\n", "x")
    assert violations(modules) == []


def test_the_tree_matches_the_docs() -> None:
    """Every layer's folder or module, and every module the OTel rule names, exists (a stale table
    would check nothing)."""
    for prefix in [*(prefix for _, prefixes in LAYERS for prefix in prefixes), *OTEL, OTEL_LOADER]:
        path = ROOT / Path(*prefix.split("."))
        assert path.is_dir() or path.with_suffix(".py").is_file(), prefix
