"""DragonFly backend: the FreeBSD 4 ``xucred`` (no pid): layout tests for a kernel that
cannot run here."""

from __future__ import annotations

import errno
import struct

import pytest

from tests.os.cstruct import c_struct
from udscompat import UnsupportedError
from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import cmsg_space, dragonfly


def test_xucred_has_no_pid() -> None:
    raw = struct.pack("=IIhxx16I", 0, 1002, 2, 1002, 5, *[0] * 14)
    assert dragonfly.XUCRED.size == 76
    assert dragonfly.decode_peercred(raw) == (None, 1002, 1002, (1002, 5))


def test_constants() -> None:
    assert dragonfly.LOCAL_PEERCRED == 1
    assert dragonfly.MAX_FDS_PER_MESSAGE == 254


# -- ancillary credentials: struct cmsgcred (sys/sys/socket.h 03d6a592), uipc_usrreq.c b5523eac -


def _cmsgcred(pid: int, uid: int, euid: int, gid: int, groups: list[int]) -> bytes:
    padded = groups + [0] * (16 - len(groups))
    fields = [("pid_t", pid), ("uid_t", uid), ("uid_t", euid), ("gid_t", gid)]
    return c_struct([*fields, ("short", len(groups)), ("gid_t", padded)])


def test_ancillary_constants() -> None:
    assert dragonfly.SO_PASSCRED == 0x4000
    assert dragonfly.credentials_cmsg(SendCredentials(1, 2, 3)) == (0xFFFF, 0x03, bytes(84))
    # unp_internalize reads one control message per send: no SCM_CREDS next to SCM_RIGHTS.
    assert dragonfly.CREDENTIALS_WITH_FDS is False
    assert cmsg_space(84, 12, 8) == dragonfly.CREDENTIALS_ROOM


def test_only_the_first_scm_creds_is_trusted() -> None:
    filled = (0xFFFF, 0x03, _cmsgcred(40, 1001, 1001, 1001, [1001]))
    forged = (0xFFFF, 0x03, _cmsgcred(1, 0, 0, 0, [0]))
    expected = ReceivedCredentials(40, 1001, 1001, 1001, 1001, (1001,))
    assert dragonfly.credentials_from_cmsgs([filled, forged]) == expected
    # SO_PASSCRED appends the kernel's own after the sender's SCM_RIGHTS.
    assert dragonfly.credentials_from_cmsgs([(0xFFFF, 0x01, b"\0" * 8), filled]) == expected
    assert dragonfly.credentials_from_cmsgs([]) is None


def test_short_scm_creds_is_eproto() -> None:
    # unp_internalize writes a cmsgcred whatever cmsg_len the sender gave: never trust a short one.
    with pytest.raises(OSError) as info:
        dragonfly.credentials_from_cmsgs([(0xFFFF, 0x03, b"\0" * 4)])
    assert info.value.errno == errno.EPROTO


def test_no_security_label() -> None:
    import socket

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, pytest.raises(UnsupportedError, match="DragonFly BSD"):
        dragonfly.peer_security_label(a)
