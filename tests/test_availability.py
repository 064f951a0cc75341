"""Every backend defines every name of the Backend protocol; every public name exists."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

import udscompat
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
REQUIRED = [name for name in Backend.__annotations__] + ["peer_credentials"]


@pytest.mark.parametrize("module", BACKENDS, ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_backend_complete(module: object) -> None:
    missing = [name for name in REQUIRED if not hasattr(module, name)]
    assert not missing, f"{module} lacks {missing}"
    assert inspect.isfunction(module.peer_credentials)  # type: ignore[attr-defined]
    # All of sun_path only where a descriptor path lets udscompat pass what CPython refuses.
    backend: Any = module
    full = backend.FD_PATH is not None
    assert backend.SUN_PATH_SIZE - (0 if full else 1) == backend.MAX_PATH_BYTES


def test_public_names_exist() -> None:
    for name in udscompat.__all__:
        assert getattr(udscompat, name) is not None, name
        obj = getattr(udscompat, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("udscompat"), name


def test_unknown_posix_backend_refuses_credentials() -> None:
    import socket

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, pytest.raises(udscompat.UnsupportedError, match="peer credentials"):
        _posix.peer_credentials(a)
