"""FreeBSD backend, from ``sys/sys/ucred.h`` and ``socket.h``: layout tests for a kernel
that cannot run here."""

from __future__ import annotations

import errno
import struct

import pytest

from udscompat._os import cmsg_len, cmsg_space, freebsd


def _xucred(uid: int, groups: list[int], pid: int) -> bytes:
    # xucred: version, uid, short ngroups, pad, gid_t[16], pad to 8, union { void *; pid_t cr_pid; }
    padded = groups + [0] * (16 - len(groups))
    return struct.pack("=IIhxx16I4xi4x", 0, uid, len(groups), *padded, pid)


def test_xucred_is_88_bytes_with_trailing_pid_union() -> None:
    assert freebsd.XUCRED.size == 88
    assert freebsd.decode_peercred(_xucred(1001, [1001, 0], 3131)) == (3131, 1001, 1001, (1001, 0))


def test_pid_zero_before_freebsd_13_is_none() -> None:
    assert freebsd.decode_peercred(_xucred(1, [1], 0)).pid is None


def test_bad_version_and_group_count() -> None:
    bad = bytearray(_xucred(1, [1], 5))
    bad[0] = 9
    with pytest.raises(OSError, match="version 9"):
        freebsd.decode_peercred(bytes(bad))
    with pytest.raises(OSError) as info:
        freebsd.decode_peercred(struct.pack("=IIhxx16I4xi4x", 0, 1, 17, *[0] * 16, 1))
    assert info.value.errno == errno.EPROTO


def test_constants() -> None:
    assert freebsd.MSG_CMSG_CLOEXEC == 0x40000
    assert freebsd.SEQPACKET_SEND_FLAGS == freebsd.MSG_EOR == 0x8
    assert cmsg_len(4, freebsd.CMSGHDR_SIZE, freebsd.CMSG_ALIGNMENT) == 20
    assert cmsg_space(4, freebsd.CMSGHDR_SIZE, freebsd.CMSG_ALIGNMENT) == 24
    # CMSG_SPACE(254 * 8) fits MCLBYTES (2048); 255 does not.
    assert cmsg_space(254 * 8, 12, 8) <= 2048 < cmsg_space(255 * 8, 12, 8)
    assert freebsd.MAX_FDS_PER_MESSAGE == 254
