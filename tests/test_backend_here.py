"""The backend chosen for the running kernel against CPython's socket module (its headers).

Portable: on every OS this checks that OS's own backend module, so a retyped constant that
is wrong for macOS or a BSD fails on that OS's CI job.
"""

from __future__ import annotations

import socket

import pytest

from udscompat._os import cmsg_len, cmsg_space
from udscompat._platform import backend

NAMES = [
    "SOL_SOCKET",
    "SCM_RIGHTS",
    "SOCK_STREAM",
    "SOCK_DGRAM",
    "SOCK_SEQPACKET",
    "MSG_EOR",
    "MSG_TRUNC",
    "MSG_CTRUNC",
    "MSG_CMSG_CLOEXEC",
]


@pytest.mark.parametrize("name", NAMES)
def test_backend_constant_is_the_kernels(name: str) -> None:
    if not hasattr(socket, name):
        pytest.skip(f"CPython defines no socket.{name} on {backend.OS_NAME}")
    assert getattr(backend, name) == getattr(socket, name)


def test_backend_cmsg_arithmetic_is_the_kernels() -> None:
    for length in (0, 1, 4, 8, 12, 4 * 253):
        assert cmsg_len(length, backend.CMSGHDR_SIZE, backend.CMSG_ALIGNMENT) == socket.CMSG_LEN(
            length
        )
        assert cmsg_space(
            length, backend.CMSGHDR_SIZE, backend.CMSG_ALIGNMENT
        ) == socket.CMSG_SPACE(length)
