"""Every backend defines every name of the ``Backend`` protocol, functions with its signatures.

``tests/test_availability.py`` checks the constants; this adds the functions
(the credential and label entries above all), compared by parameter names
with the protocol's own methods, so a backend cannot drift from the seam.
"""

from __future__ import annotations

import inspect
from types import ModuleType

import pytest

from udscompat._os import (
    Backend,
    _posix,
    dragonfly,
    freebsd,
    illumos,
    linux,
    macos,
    netbsd,
    openbsd,
)

BACKENDS = [linux, macos, freebsd, openbsd, netbsd, dragonfly, illumos, _posix]
METHODS = {
    name: member
    for name, member in vars(Backend).items()
    if inspect.isfunction(member) and not name.startswith("_")
}


def test_the_protocol_declares_the_ancillary_entries() -> None:
    assert {
        "pass_credentials",
        "credentials_cmsg",
        "credentials_from_cmsgs",
        "peer_security_label",
    } <= set(METHODS)
    assert {"SENDER_NAMES_CREDENTIALS", "CREDENTIALS_WITH_FDS", "CREDENTIALS_ROOM"} <= set(
        Backend.__annotations__
    )


@pytest.mark.parametrize("module", BACKENDS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_backend_functions_match_the_protocol(module: ModuleType) -> None:
    for name, method in METHODS.items():
        function = getattr(module, name, None)
        assert inspect.isfunction(function), f"{module.__name__} lacks {name}()"
        wanted = list(inspect.signature(method).parameters)[1:]  # without self
        assert list(inspect.signature(function).parameters) == wanted, name
    for name in Backend.__annotations__:
        assert hasattr(module, name), f"{module.__name__} lacks {name}"
    assert isinstance(module.CREDENTIALS_ROOM, int) and module.CREDENTIALS_ROOM >= 0
