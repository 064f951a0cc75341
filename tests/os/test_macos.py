"""macOS backend, from XNU ``bsd/sys/ucred.h`` and ``socket.h``: layout tests for a kernel
that cannot run here (bytes built to the header's field order)."""

from __future__ import annotations

import struct

from udscompat._os import cmsg_len, cmsg_space, macos


def _xucred(uid: int, groups: list[int]) -> bytes:
    # u_int cr_version; uid_t cr_uid; short cr_ngroups; (2 bytes padding) gid_t cr_groups[16]
    padded = groups + [0] * (16 - len(groups))
    return struct.pack("=IIhxx16I", 0, uid, len(groups), *padded)


def test_xucred_is_76_bytes_without_pid() -> None:
    assert macos.XUCRED.size == 76
    creds = macos.decode_peercred(_xucred(501, [20, 12, 61]), struct.pack("=i", 777))
    assert creds == (777, 501, 20, (20, 12, 61))


def test_pid_missing_when_local_peerpid_fails() -> None:
    assert macos.decode_peercred(_xucred(0, [0]), None).pid is None


def test_four_byte_cmsg_alignment() -> None:
    assert cmsg_len(4, macos.CMSGHDR_SIZE, macos.CMSG_ALIGNMENT) == 16
    assert cmsg_space(4, macos.CMSGHDR_SIZE, macos.CMSG_ALIGNMENT) == 16
    assert cmsg_space(8, macos.CMSGHDR_SIZE, macos.CMSG_ALIGNMENT) == 20


def test_constants() -> None:
    assert (macos.SOL_SOCKET, macos.MSG_TRUNC, macos.MSG_CTRUNC, macos.MSG_EOR) == (
        0xFFFF,
        0x10,
        0x20,
        0x8,
    )
    assert macos.MSG_CMSG_CLOEXEC is None
    assert macos.SUN_PATH_SIZE == 104
    assert macos.MAX_PATH_BYTES == 103
    assert (macos.SOL_LOCAL, macos.LOCAL_PEERCRED, macos.LOCAL_PEERPID) == (0, 1, 2)
    assert macos.HOLD_SENT_FDS is True
