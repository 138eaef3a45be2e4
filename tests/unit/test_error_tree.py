"""One error tree: every exception class defined under `gateway/` descends from `GatewayError`, and
the tree drawn in `gateway/protocol/errors.py` (the relay's branch in `gateway/relay/errors.py`)
names each one.

Every module of the package is imported (`pkgutil.walk_packages`); a class counts where it is
defined, not where it is imported.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types
from collections.abc import Iterable, Iterator
from typing import Final

import gateway
from gateway.protocol import errors
from gateway.relay import errors as relay_errors

PENDING: Final[dict[str, str]] = {}
"""Known strays, each with why it may stay for now (`"gateway.x.Name": "why"`). Equality is checked, so
a fixed one fails until its entry goes."""


def package_modules() -> list[types.ModuleType]:
    """`gateway` and every module under it, imported."""
    found = [gateway]
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        found.append(importlib.import_module(info.name))
    return found


def _classes_in(namespace: Iterable[object], module: str) -> Iterator[type]:
    for value in namespace:
        if isinstance(value, type) and value.__module__ == module:
            yield value
            yield from _classes_in(list(vars(value).values()), module)


def exception_classes(modules: Iterable[types.ModuleType]) -> list[type[Exception]]:
    """The Exception subclasses each module defines (nested in its classes too), not those it imports."""
    return [
        cls
        for module in modules
        for cls in dict.fromkeys(_classes_in(list(vars(module).values()), module.__name__))
        if issubclass(cls, Exception)
    ]


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def outside_the_tree(classes: Iterable[type[Exception]]) -> list[str]:
    """The classes that do not descend from GatewayError, by qualified name."""
    return sorted(_name(cls) for cls in classes if not issubclass(cls, errors.GatewayError))


def missing_from_the_drawing(classes: Iterable[type[Exception]]) -> list[str]:
    """The GatewayError classes whose name the drawn tree lacks (RelayError's branch: relay/errors.py's)."""
    missing = []
    for cls in classes:
        if not issubclass(cls, errors.GatewayError):
            continue
        drawing = relay_errors.__doc__ if issubclass(cls, relay_errors.RelayError) else errors.__doc__
        if not re.search(rf"\b{re.escape(cls.__name__)}\b", drawing or ""):
            missing.append(_name(cls))
    return sorted(missing)


def test_every_exception_class_descends_from_gateway_error() -> None:
    strays = outside_the_tree(exception_classes(package_modules()))
    assert strays == sorted(PENDING), (
        "every exception class under gateway/ must descend from gateway.protocol.errors.GatewayError "
        "(add ValueError etc. as a second base where callers catch that); remove fixed entries from PENDING"
    )


def test_the_drawn_tree_names_every_error() -> None:
    assert missing_from_the_drawing(exception_classes(package_modules())) == []
    assert errors.__doc__ is not None
    assert "RelayError" in errors.__doc__  # the relay's branch hangs off the one tree


def test_the_relay_error_is_a_gateway_error_and_the_names_are_not_shared() -> None:
    assert issubclass(relay_errors.RelayError, errors.GatewayError)
    assert not hasattr(relay_errors, "GatewayError") or relay_errors.GatewayError is errors.GatewayError
    assert issubclass(relay_errors.GatewayUnauthorized, relay_errors.TunnelClientError)


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(compile(source, f"<{name}>", "exec"), module.__dict__)
    return module


def test_the_checks_fail_on_a_stray_and_on_a_class_the_tree_omits() -> None:
    """The helpers above really find what they look for (else the tests above prove nothing)."""
    fake = _module(
        "gateway.fake",
        "from gateway.protocol.errors import GatewayError, ConfigError\n"
        "class Stray(ValueError): pass\n"
        "class Holder:\n"
        "    class NestedStray(Exception): pass\n"
        "class Undrawn(GatewayError, ValueError): pass\n"
        "class UnknownChannel(GatewayError): pass\n"  # a drawn name, defined here
        "class NotAnError: pass\n",
    )
    found = exception_classes([fake])
    assert sorted(cls.__qualname__ for cls in found) == ["Holder.NestedStray", "Stray", "Undrawn", "UnknownChannel"]
    assert "ConfigError" not in {cls.__name__ for cls in found}  # imported, not defined there
    assert outside_the_tree(found) == ["gateway.fake.Holder.NestedStray", "gateway.fake.Stray"]
    assert missing_from_the_drawing(found) == ["gateway.fake.Undrawn"]
