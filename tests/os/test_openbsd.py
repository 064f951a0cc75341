"""OpenBSD backend, from ``sys/sys/socket.h`` (``sockpeercred``): layout tests for a kernel
that cannot run here."""

from __future__ import annotations

import struct

from udscompat._os import cmsg_space, linux, openbsd


def test_sockpeercred_is_uid_gid_pid() -> None:
    raw = struct.pack("=IIi", 1000, 1000, 5555)
    assert openbsd.decode_peercred(raw) == (5555, 1000, 1000, None)
    # The same bytes read as Linux's ucred would be wrong: the order differs.
    assert linux.decode_peercred(raw).pid == 1000


def test_constants() -> None:
    assert (openbsd.SOL_SOCKET, openbsd.SO_PEERCRED) == (0xFFFF, 0x1022)
    assert openbsd.MSG_CMSG_CLOEXEC == 0x800
    # struct fdpass is 16 bytes on LP64: 127 fit a 2048-byte cluster.
    assert cmsg_space(127 * 16, 12, 8) <= 2048 < cmsg_space(128 * 16, 12, 8)
    assert openbsd.MAX_FDS_PER_MESSAGE == 127
    assert openbsd.MAX_PATH_BYTES == 103
