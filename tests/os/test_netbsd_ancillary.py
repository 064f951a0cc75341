"""NetBSD ancillary credentials: layout tests for a kernel that cannot run here.

From NetBSD/src ``sys/sys/un.h`` rev 1.60 (LOCAL_CREDS 0x0004; 0x0001 is
LOCAL_OCREDS, the pre-7.0 one) and ``sys/sys/socket.h`` rev 1.131.4.1
(netbsd-10): SCM_CREDS 0x10 and
``struct sockcred { pid_t sc_pid; uid_t sc_uid; uid_t sc_euid; gid_t sc_gid;
gid_t sc_egid; int sc_ngroups; gid_t sc_groups[1]; }``, SOCKCREDSIZE(n) =
sizeof(struct sockcred) + sizeof(gid_t) * (n - 1).  (tests/os/test_netbsd.py
is the rump engineer's; this file holds only the ancillary part.)
"""

from __future__ import annotations

import errno
import socket

import pytest

from tests.os.cstruct import c_sizeof, c_struct
from udscompat import UnsupportedError
from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import cmsg_space, netbsd


def _sockcred(pid: int, uid: int, euid: int, gid: int, egid: int, groups: list[int]) -> bytes:
    ids = [("pid_t", pid), ("uid_t", uid), ("uid_t", euid), ("gid_t", gid), ("gid_t", egid)]
    return c_struct([*ids, ("int", len(groups)), ("gid_t", groups)])


def test_constants() -> None:
    assert (netbsd.LOCAL_CREDS, netbsd.SCM_CREDS) == (0x0004, 0x10)
    sizeof = c_sizeof([("pid_t", 1), ("uid_t", 2), ("gid_t", 2), ("int", 1), ("gid_t", 1)])
    assert sizeof == 28
    assert len(_sockcred(1, 1, 1, 1, 1, [1, 2, 3])) == sizeof + 4 * 2  # SOCKCREDSIZE(3)
    assert cmsg_space(sizeof + 4 * 15, 12, 8) == netbsd.CREDENTIALS_ROOM


def test_sockcred_decode_pid_first() -> None:
    raw = _sockcred(812, 1000, 0, 100, 0, [0, 100, 5])
    assert netbsd.decode_sockcred(raw) == ReceivedCredentials(812, 1000, 100, 0, 0, (0, 100, 5))
    assert netbsd.credentials_from_cmsgs([(0xFFFF, 0x10, raw)]) == netbsd.decode_sockcred(raw)
    # FreeBSD's SCM_CREDS number (3) is not NetBSD's.
    assert netbsd.credentials_from_cmsgs([(0xFFFF, 0x03, raw)]) is None


def test_impossible_sockcred_is_eproto() -> None:
    for raw in (_sockcred(1, 1, 1, 1, 1, [1, 2])[:-4], _sockcred(1, 1, 1, 1, 1, [1] * 17)):
        with pytest.raises(OSError) as info:
            netbsd.decode_sockcred(raw)
        assert info.value.errno == errno.EPROTO


def test_the_receiver_asks_and_senders_attach_nothing() -> None:
    # unp_internalize rejects every control message but SCM_RIGHTS (uipc_usrreq.c 1.180).
    assert netbsd.credentials_cmsg(SendCredentials(1, 2, 3)) is None
    assert netbsd.SENDER_NAMES_CREDENTIALS is False
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, pytest.raises(UnsupportedError, match="NetBSD"):
        netbsd.peer_security_label(a)
