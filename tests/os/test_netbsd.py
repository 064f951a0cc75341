"""NetBSD backend, from ``sys/sys/un.h`` (``unpcbid``): layout tests for a kernel that
cannot run here."""

from __future__ import annotations

import struct

from udscompat._os import netbsd


def test_unpcbid_is_pid_euid_egid() -> None:
    assert netbsd.decode_peercred(struct.pack("=iII", 99, 1000, 100)) == (99, 1000, 100, None)


def test_constants() -> None:
    assert netbsd.LOCAL_PEEREID == 3
    assert netbsd.SUN_PATH_SIZE == 104
