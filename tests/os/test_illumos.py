"""illumos backend: swapped constants and the ucred(3C) reader.

``FakeUcredLibc`` is a stand-in for illumos libc (getpeerucred cannot run
here); it answers the ucred_get* calls as ucred(3C) documents them.
"""

from __future__ import annotations

import ctypes
from typing import Any, List

import pytest

from udscompat._os import cmsg_len, cmsg_space, illumos


class FakeUcredLibc:
    """Stand-in for illumos libc's ucred accessors (not a real kernel)."""

    def __init__(self, euid: int, egid: int, pid: int, groups: List[int]) -> None:
        self.euid, self.egid, self.pid = euid, egid, pid
        self._groups = (ctypes.c_uint * max(len(groups), 1))(*groups)
        self.count = len(groups)

    def ucred_geteuid(self, _uc: Any) -> int:
        return self.euid

    def ucred_getegid(self, _uc: Any) -> int:
        return self.egid

    def ucred_getpid(self, _uc: Any) -> int:
        return self.pid

    def ucred_getgroups(self, _uc: Any, out: Any) -> int:
        ctypes.cast(out, ctypes.POINTER(ctypes.POINTER(ctypes.c_uint)))[0] = ctypes.cast(
            self._groups, ctypes.POINTER(ctypes.c_uint)
        )
        return self.count


def test_decode_ucred() -> None:
    creds = illumos.decode_ucred(FakeUcredLibc(100, 10, 4321, [10, 14]), ctypes.c_void_p(1))
    assert creds == (4321, 100, 10, (10, 14))


def test_pid_unavailable_is_none() -> None:
    assert illumos.decode_ucred(FakeUcredLibc(1, 1, -1, []), ctypes.c_void_p(1)).pid is None


def test_missing_effective_ids_is_an_error() -> None:
    with pytest.raises(OSError, match="no effective ids"):
        illumos.decode_ucred(FakeUcredLibc(-1, 1, 1, []), ctypes.c_void_p(1))


def test_swapped_constants() -> None:
    assert (illumos.SOCK_STREAM, illumos.SOCK_DGRAM, illumos.SOCK_SEQPACKET) == (2, 1, 6)
    assert (illumos.MSG_TRUNC, illumos.MSG_CTRUNC) == (0x20, 0x10)
    assert illumos.SCM_RIGHTS == 0x1010
    assert cmsg_len(4, illumos.CMSGHDR_SIZE, illumos.CMSG_ALIGNMENT) == 16
    assert cmsg_space(4, illumos.CMSGHDR_SIZE, illumos.CMSG_ALIGNMENT) == 16
