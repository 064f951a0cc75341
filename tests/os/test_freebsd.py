"""FreeBSD backend, from ``sys/sys/ucred.h`` and ``socket.h``: layout tests for a kernel
that cannot run here."""

from __future__ import annotations

import errno
import struct

import pytest

from tests.os.cstruct import c_sizeof, c_struct
from udscompat._msgcreds import ReceivedCredentials
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


# -- ancillary credentials: sys/sys/socket.h and sys/sys/un.h (zig generic-freebsd @1bde4cb4) ---
# struct cmsgcred { pid_t cmcred_pid; uid_t cmcred_uid; uid_t cmcred_euid; gid_t cmcred_gid;
#                   short cmcred_ngroups; gid_t cmcred_groups[CMGROUP_MAX]; }
# struct sockcred { uid_t sc_uid; uid_t sc_euid; gid_t sc_gid; gid_t sc_egid; int sc_ngroups;
#                   gid_t sc_groups[1]; }
# struct sockcred2 { int sc_version; pid_t sc_pid; uid_t sc_uid; uid_t sc_euid; gid_t sc_gid;
#                    gid_t sc_egid; int sc_ngroups; gid_t sc_groups[1]; }


def _cmsgcred(pid: int, uid: int, euid: int, gid: int, groups: list[int]) -> bytes:
    padded = groups + [0] * (16 - len(groups))
    return c_struct(
        [
            ("pid_t", pid),
            ("uid_t", uid),
            ("uid_t", euid),
            ("gid_t", gid),
            ("short", len(groups)),
            ("gid_t", padded),
        ]
    )


def _sockcred(uid: int, euid: int, gid: int, egid: int, groups: list[int]) -> bytes:
    # What the kernel sends: SOCKCREDSIZE(ngroups) bytes, groups[ngroups].
    return c_struct(
        [
            ("uid_t", uid),
            ("uid_t", euid),
            ("gid_t", gid),
            ("gid_t", egid),
            ("int", len(groups)),
            ("gid_t", groups),
        ]
    )


def _sockcred2(pid: int, uid: int, euid: int, gid: int, egid: int, groups: list[int]) -> bytes:
    return c_struct(
        [
            ("int", 0),
            ("pid_t", pid),
            ("uid_t", uid),
            ("uid_t", euid),
            ("gid_t", gid),
            ("gid_t", egid),
            ("int", len(groups)),
            ("gid_t", groups),
        ]
    )


def test_ancillary_constants() -> None:
    assert (freebsd.SOL_LOCAL, freebsd.LOCAL_CREDS, freebsd.LOCAL_CREDS_PERSISTENT) == (0, 2, 3)
    assert (freebsd.SCM_CREDS, freebsd.SCM_CREDS2) == (0x03, 0x08)
    assert c_sizeof([("pid_t", 1), ("uid_t", 2), ("gid_t", 1), ("short", 1), ("gid_t", 16)]) == 84
    # SOCKCREDSIZE(n) = sizeof(struct sockcred) + sizeof(gid_t) * (n - 1)
    sockcred = c_sizeof([("uid_t", 2), ("gid_t", 2), ("int", 1), ("gid_t", 1)])
    sockcred2 = c_sizeof([("int", 1), ("pid_t", 1), ("uid_t", 2), ("gid_t", 2), ("int", 1)])
    assert (sockcred, sockcred2 + 4) == (24, 32)
    assert len(_sockcred(1, 1, 1, 1, [1, 2, 3])) == sockcred + 4 * 2
    # A sender's cmsgcred and the receiver's sockcred2 with 16 groups fit.
    assert cmsg_space(84, 12, 8) + cmsg_space(sockcred2 + 64, 12, 8) == freebsd.CREDENTIALS_ROOM
    assert freebsd.SENDER_NAMES_CREDENTIALS is False


def test_credentials_cmsg_is_an_empty_cmsgcred_for_the_kernel_to_fill() -> None:
    from udscompat._msgcreds import SendCredentials

    assert freebsd.credentials_cmsg(SendCredentials(1, 2, 3)) == (0xFFFF, 0x03, bytes(84))


def test_cmsgcred_groups_zero_is_the_effective_gid() -> None:
    raw = _cmsgcred(321, 1001, 0, 1001, [5, 1001, 0])
    assert freebsd.decode_scm_creds(raw) == ReceivedCredentials(321, 1001, 1001, 0, 5, (5, 1001, 0))


def test_sockcred_has_no_pid() -> None:
    raw = _sockcred(1001, 0, 1001, 20, [20, 1001])
    assert freebsd.decode_scm_creds(raw) == ReceivedCredentials(None, 1001, 1001, 0, 20, (20, 1001))
    assert freebsd.decode_sockcred(_sockcred(1, 2, 3, 4, [])).groups == ()


def test_sockcred2_is_complete() -> None:
    raw = _sockcred2(555, 1001, 0, 1001, 0, [0, 5])
    assert freebsd.decode_sockcred2(raw) == ReceivedCredentials(555, 1001, 1001, 0, 0, (0, 5))
    bad = bytearray(raw)
    bad[0] = 1
    with pytest.raises(OSError, match="version 1"):
        freebsd.decode_sockcred2(bytes(bad))


@pytest.mark.parametrize(
    "raw",
    [
        _sockcred(1, 1, 1, 1, [7] * 3)[:-4],  # claims 3 groups, carries 2
        _sockcred(1, 1, 1, 1, [7] * 17),  # past CMGROUP_MAX
        _sockcred2(1, 1, 1, 1, 1, [7])[:16],  # cut inside the header
        c_struct([("uid_t", [1, 1]), ("gid_t", [1, 1]), ("int", -1)]),  # negative count
    ],
    ids=["short-groups", "too-many-groups", "short-header", "negative-count"],
)
def test_impossible_structures_are_eproto(raw: bytes) -> None:
    decode = freebsd.decode_sockcred2 if len(raw) == 16 else freebsd.decode_sockcred
    with pytest.raises(OSError) as info:
        decode(raw)
    assert info.value.errno == errno.EPROTO


def test_sockcred2_wins_over_a_senders_cmsgcred_and_disagreement_is_none() -> None:
    # The receiver's sockcred2 is read even when a sender's cmsgcred (16 groups at most, the
    # first taken as the egid) comes with it: here they differ only in what each can carry.
    mine = (0xFFFF, 0x08, _sockcred2(9, 1, 1, 2, 2, [2, 7]))
    theirs = (0xFFFF, 0x03, _cmsgcred(9, 1, 1, 2, [2]))
    assert freebsd.credentials_from_cmsgs([theirs, mine]) == ReceivedCredentials(
        9, 1, 2, 1, 2, (2, 7)
    )
    assert freebsd.credentials_from_cmsgs([theirs]) == ReceivedCredentials(9, 1, 2, 1, 2, (2,))
    other = (0xFFFF, 0x08, _sockcred2(10, 1, 1, 2, 2, [2]))
    assert freebsd.credentials_from_cmsgs([mine, other]) is None
    assert freebsd.credentials_from_cmsgs([(0xFFFF, 0x01, b"\0" * 4)]) is None
