"""illumos backend: swapped constants and the ucred(3C) reader.

``FakeUcredLibc`` is a stand-in for illumos libc (getpeerucred cannot run
here); it answers the ucred_get* calls as ucred(3C) documents them.
"""

from __future__ import annotations

import ctypes
import errno
from typing import Any, List

import pytest

from tests.os.cstruct import c_sizeof, c_struct
from udscompat._msgcreds import ReceivedCredentials, SendCredentials
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


# -- SCM_UCRED: sys/ucred.h struct ucred_s, sys/procfs.h prcred_t (illumos-gate) ----------------
# struct ucred_s { uint32_t uc_size; uint32_t uc_credoff; uint32_t uc_privoff; pid_t uc_pid;
#                  uint32_t uc_audoff; zoneid_t uc_zoneid; projid_t uc_projid;
#                  uint32_t uc_labeloff; }
# typedef struct prcred { uid_t pr_euid, pr_ruid, pr_suid; gid_t pr_egid, pr_rgid, pr_sgid;
#                         int pr_ngroups; gid_t pr_groups[1]; } prcred_t;


def _ucred_t(
    pid: int,
    ids: tuple[int, int, int, int, int, int],
    groups: list[int],
    *,
    credoff: int = 32,
    size: int | None = None,
    trailer: int = 40,  # privilege sets, audit data: not read
    claim: int | None = None,  # pr_ngroups, if not len(groups)
) -> bytes:
    euid, ruid, suid, egid, rgid, sgid = ids
    prcred = c_struct(
        [
            ("uid_t", [euid, ruid, suid]),
            ("gid_t", [egid, rgid, sgid]),
            ("int", len(groups) if claim is None else claim),
            ("gid_t", groups),
        ]
    )
    body = bytes(max(credoff, 32) - 32) + prcred + bytes(trailer)
    total = 32 + len(body) if size is None else size
    header = c_struct(
        [
            ("uint32_t", total),
            ("uint32_t", credoff),
            ("uint32_t", 0),  # uc_privoff
            ("pid_t", pid),
            ("uint32_t", 0),  # uc_audoff
            ("zoneid_t", 0),
            ("projid_t", 3),
            ("uint32_t", 0),  # uc_labeloff
        ]
    )
    return header + body


def test_ancillary_constants() -> None:
    assert (illumos.SO_RECVUCRED, illumos.SCM_UCRED) == (0x0400, 0x1012)
    header = [("uint32_t", 3), ("pid_t", 1), ("uint32_t", 1), ("int", 2), ("uint32_t", 1)]
    assert c_sizeof(header) == illumos.UCRED_S.size == 32
    assert illumos.credentials_cmsg(SendCredentials(1, 2, 3)) is None  # the receiver asks


def test_scm_ucred_decode_reads_real_and_effective() -> None:
    raw = _ucred_t(901, (0, 1001, 0, 10, 1001, 10), [10, 14])
    assert illumos.decode_scm_ucred(raw) == ReceivedCredentials(901, 1001, 1001, 0, 10, (10, 14))
    assert illumos.credentials_from_cmsgs([(0xFFFF, 0x1012, raw)]) == (
        illumos.decode_scm_ucred(raw)
    )
    # A credential offset further on (the layout allows it) is followed, not assumed.
    moved = _ucred_t(5, (1, 1, 1, 2, 2, 2), [], credoff=48)
    assert illumos.decode_scm_ucred(moved).uid == 1


@pytest.mark.parametrize(
    "raw",
    [
        b"\0" * 16,
        _ucred_t(1, (1, 1, 1, 1, 1, 1), [1], credoff=0),
        _ucred_t(1, (1, 1, 1, 1, 1, 1), [1], size=4096),  # uc_size past the bytes received
        _ucred_t(1, (1, 1, 1, 1, 1, 1), [1], credoff=8),  # into the header
        _ucred_t(1, (1, 1, 1, 1, 1, 1), [1] * 3, trailer=0, claim=5),  # more than uc_size holds
        _ucred_t(1, (1, 1, 1, 1, 1, 1), [], claim=-1),
    ],
    ids=["short", "no-cred", "size-past-end", "credoff-in-header", "groups-cut", "negative"],
)
def test_scm_ucred_offsets_are_checked(raw: bytes) -> None:
    with pytest.raises(OSError) as info:
        illumos.decode_scm_ucred(raw)
    assert info.value.errno == errno.EPROTO
