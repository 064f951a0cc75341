"""Linux backend: its constants against this kernel's headers (via CPython) and ``ucred``."""

from __future__ import annotations

import errno
import socket
import struct

import pytest

from tests.conftest import only_on
from tests.os.cstruct import c_struct
from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import cmsg_len, cmsg_space, linux


@only_on("Linux", "CPython's socket module has this kernel's values")
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


# -- ancillary credentials and SO_PEERSEC -------------------------------------------------------
# asm-generic/socket.h, bits/socket.h: struct ucred { pid_t pid; uid_t uid; gid_t gid; }.


def _ucred(pid: int, uid: int, gid: int) -> bytes:
    return c_struct([("pid_t", pid), ("uid_t", uid), ("gid_t", gid)])


def test_ancillary_constants_match_the_running_kernel() -> None:
    for name in ("SO_PASSCRED", "SCM_CREDENTIALS", "SO_PEERSEC"):
        assert getattr(linux, name) == getattr(socket, name), name
    # One ucred and one pidfd: CMSG_SPACE(12) + CMSG_SPACE(4).
    assert socket.CMSG_SPACE(12) + socket.CMSG_SPACE(4) == linux.CREDENTIALS_ROOM
    assert linux.SENDER_NAMES_CREDENTIALS is True
    assert linux.CREDENTIALS_WITH_FDS is True


def test_scm_credentials_cmsg_is_a_ucred() -> None:
    creds = SendCredentials(4242, 1000, 100)
    assert linux.credentials_cmsg(creds) == (1, 2, _ucred(4242, 1000, 100))


def test_scm_credentials_decode() -> None:
    assert linux.decode_scm_credentials(_ucred(77, 1000, 100)) == ReceivedCredentials(
        77, 1000, 100, None, None, None
    )
    # pid 0: a sender in a pid namespace this process cannot see.
    assert linux.decode_scm_credentials(_ucred(0, 5, 6)).pid is None


def test_scm_credentials_malformed_is_eproto() -> None:
    with pytest.raises(OSError) as info:
        linux.decode_scm_credentials(b"\0" * 8)
    assert info.value.errno == errno.EPROTO
    with pytest.raises(OSError) as info:
        linux.decode_scm_credentials(_ucred(1, 0xFFFFFFFF, 0))
    assert info.value.errno == errno.EPROTO


def test_credentials_from_cmsgs_ignores_other_messages_and_disagreement() -> None:
    ucred = (1, 2, _ucred(10, 20, 30))
    rights = (1, 1, b"\x05\0\0\0")
    assert linux.credentials_from_cmsgs([rights]) is None
    assert linux.credentials_from_cmsgs([rights, ucred]) == ReceivedCredentials(
        10, 20, 30, None, None, None
    )
    assert linux.credentials_from_cmsgs([ucred, ucred]) is not None
    assert linux.credentials_from_cmsgs([ucred, (1, 2, _ucred(11, 20, 30))]) is None
    assert linux.credentials_from_cmsgs([(6, 2, _ucred(10, 20, 30))]) is None  # other level


def test_security_label_decode() -> None:
    assert linux.decode_security_label(b"system_u:system_r:sshd_t:s0\0") == (
        b"system_u:system_r:sshd_t:s0"
    )
    assert linux.decode_security_label(b"unconfined") == b"unconfined"
    assert linux.decode_security_label(b"") is None
    assert linux.decode_security_label(b"\0") is None
