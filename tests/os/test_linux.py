"""Linux backend: its constants against this kernel's headers (via CPython) and ``ucred``."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from udscompat._os import cmsg_len, cmsg_space, linux


def test_constants_match_the_running_kernel() -> None:
    for name in (
        "SOL_SOCKET",
        "SCM_RIGHTS",
        "SOCK_STREAM",
        "SOCK_DGRAM",
        "SOCK_SEQPACKET",
        "MSG_EOR",
        "MSG_TRUNC",
        "MSG_CTRUNC",
        "MSG_CMSG_CLOEXEC",
        "SO_PEERCRED",
    ):
        assert getattr(linux, name) == getattr(socket, name), name
    assert cmsg_len(4, linux.CMSGHDR_SIZE, linux.CMSG_ALIGNMENT) == socket.CMSG_LEN(4) == 20
    assert cmsg_space(4, linux.CMSGHDR_SIZE, linux.CMSG_ALIGNMENT) == socket.CMSG_SPACE(4) == 24
    assert cmsg_space(12, linux.CMSGHDR_SIZE, linux.CMSG_ALIGNMENT) == socket.CMSG_SPACE(12)


def test_ucred_layout_is_pid_uid_gid() -> None:
    raw = struct.pack("=iII", 4242, 1000, 100)
    groups = struct.pack("=3I", 100, 27, 4)
    creds = linux.decode_peercred(raw, groups)
    assert creds == (4242, 1000, 100, (100, 27, 4))


def test_unset_ucred_means_not_connected() -> None:
    with pytest.raises(OSError) as info:
        linux.decode_peercred(struct.pack("=iII", 0, 0xFFFFFFFF, 0xFFFFFFFF))
    assert info.value.errno == errno.ENOTCONN


def test_pid_zero_is_unknown_not_pid_zero() -> None:
    assert linux.decode_peercred(struct.pack("=iII", 0, 5, 6)).pid is None


def test_short_ucred_is_an_error() -> None:
    with pytest.raises(OSError, match="12"):
        linux.decode_peercred(b"\0" * 8)
