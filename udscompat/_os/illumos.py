"""illumos: getpeerucred(3C), SCM_RIGHTS 0x1010, SOCK_STREAM/SOCK_DGRAM swapped.

Sources: illumos-gate ``usr/src/uts/common/sys/un.h`` 1e109f45,
``sys/socket.h``, ``sock2path.d/system%2Fkernel`` 5f570424, sockfs
``socksubr.c`` (os-facts §2).  No credentials getsockopt exists: the
opaque ``ucred_t`` of ``getpeerucred`` is read through libc with ctypes.
The ``ucred_t`` that ``SO_RECVUCRED`` attaches to messages is decoded here
from its layout instead (``sys/ucred.h`` ``struct ucred_s``, "bitness
neutral ... add new fixed fields at the end"; ``sys/procfs.h`` ``prcred_t``),
with every offset checked against the bytes that arrived: libc's
``ucred_get*()`` would follow the offsets inside the buffer unchecked.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from typing import Any, Optional, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os._posix import (
    NO_SECURITY_LABEL,
    Cmsg,
    credentials_of,
    group_array,
    received,
    refuse,
)
from udscompat._os._posix import bound_unix_sockets as bound_unix_sockets
from udscompat._os._posix import control_room_before_rights as control_room_before_rights
from udscompat._records import ConnCredentials

OS_NAME = "illumos"
SUN_PATH_SIZE = 108  # sys/un.h: char sun_path[108]
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 0x1010
SOCK_STREAM = 2  # the reverse of every other system here
SOCK_DGRAM = 1
SOCK_SEQPACKET = 6  # mapped to /dev/ticotsord, like STREAM: record boundaries are probed
MSG_EOR = 0x8
MSG_TRUNC = 0x20  # TRUNC and CTRUNC swapped compared with the BSDs
MSG_CTRUNC = 0x10
MSG_CMSG_CLOEXEC: Optional[int] = None  # not in the header read; Python's value is probed
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 4  # _CMSG_HDR_ALIGNMENT on x86
MAX_FDS_PER_MESSAGE: Optional[int] = None
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False
# unp_bind: ACCESSPERMS less the umask (inferred; os.address.mode_from_socket measures it).
BIND_MODE_FROM_SOCKET = False
FD_PATH: Optional[str] = None


def decode_ucred(libc: Any, ucred: ctypes.c_void_p) -> ConnCredentials:
    """Read euid, egid, pid and groups out of an opaque ``ucred_t``.

    ``libc`` provides ``ucred_geteuid``, ``ucred_getegid``, ``ucred_getpid``
    and ``ucred_getgroups`` with their ucred(3C) signatures; each reports
    "not available" as -1.
    """
    euid = libc.ucred_geteuid(ucred)
    egid = libc.ucred_getegid(ucred)
    if euid == -1 or egid == -1:
        raise OSError(errno.EPROTO, "getpeerucred returned no effective ids")
    pid = libc.ucred_getpid(ucred)
    groups_ptr = ctypes.POINTER(ctypes.c_uint)()
    count = libc.ucred_getgroups(ucred, ctypes.byref(groups_ptr))
    groups = tuple(groups_ptr[i] for i in range(count)) if count > 0 else None
    return ConnCredentials(pid if pid > 0 else None, euid, egid, groups)


def _load_libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.1", use_errno=True)
    libc.getpeerucred.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    for name in ("ucred_geteuid", "ucred_getegid", "ucred_getpid"):
        getattr(libc, name).argtypes = [ctypes.c_void_p]
        getattr(libc, name).restype = ctypes.c_int
    libc.ucred_getgroups.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libc.ucred_free.argtypes = [ctypes.c_void_p]
    libc.ucred_free.restype = None
    return libc


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getpeerucred(3C)`` through ctypes, then ``ucred_free``."""
    libc = _load_libc()
    ucred = ctypes.c_void_p(None)
    if libc.getpeerucred(sock.fileno(), ctypes.byref(ucred)) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOTCONN, errno.EINVAL):
            raise OSError(errno.ENOTCONN, "socket has no connected peer")
        raise OSError(err, os.strerror(err))
    try:
        return decode_ucred(libc, ucred)
    finally:
        libc.ucred_free(ucred)


# -- ancillary credentials (SO_RECVUCRED -> SCM_UCRED) ------------------------------------------
# sys/socket.h (illumos-gate, 2014 Garrett D'Amore revision): SO_RECVUCRED 0x0400,
# SCM_UCRED 0x1012, both at SOL_SOCKET.
SO_RECVUCRED = 0x0400
SCM_UCRED = 0x1012
# struct ucred_s { uint32_t uc_size; uint32_t uc_credoff; uint32_t uc_privoff; pid_t uc_pid;
#                  uint32_t uc_audoff; zoneid_t uc_zoneid; projid_t uc_projid;
#                  uint32_t uc_labeloff; }  -- 32 bytes
UCRED_S = struct.Struct("=IIIiIiiI")
# typedef struct prcred { uid_t pr_euid, pr_ruid, pr_suid; gid_t pr_egid, pr_rgid, pr_sgid;
#                         int pr_ngroups; gid_t pr_groups[1]; } prcred_t;
PRCRED = struct.Struct("=IIIIIIi")
NGROUPS_UMAX = 1024  # sys/param.h: the ceiling of the ngroups_max tunable
SENDER_NAMES_CREDENTIALS = False
CREDENTIALS_WITH_FDS = True
# ucred_size(): the header, prcred_t with ngroups_max groups, privilege sets, audit and label
# data; 8 KiB holds it with NGROUPS_UMAX groups.
CREDENTIALS_ROOM = 8192


def pass_credentials(sock: socket.socket, enable: bool) -> None:
    """``SO_RECVUCRED``: every message received carries an ``SCM_UCRED`` ucred_t."""
    sock.setsockopt(SOL_SOCKET, SO_RECVUCRED, 1 if enable else 0)


def credentials_cmsg(creds: SendCredentials) -> Optional[Cmsg]:
    """Nothing to attach: the receiver's SO_RECVUCRED makes the kernel add them."""
    return None


def decode_scm_ucred(raw: bytes) -> ReceivedCredentials:
    """Decode the ``ucred_t`` of an ``SCM_UCRED`` message, checking every offset."""
    if len(raw) < UCRED_S.size:
        raise OSError(errno.EPROTO, f"SCM_UCRED of {len(raw)} bytes; a ucred_t has {UCRED_S.size}")
    size, credoff, _privoff, pid = UCRED_S.unpack_from(raw)[:4]
    if credoff == 0:
        raise OSError(errno.EPROTO, "SCM_UCRED without process credentials (uc_credoff 0)")
    if size > len(raw) or credoff < UCRED_S.size or credoff + PRCRED.size > size:
        raise OSError(
            errno.EPROTO,
            f"SCM_UCRED of {len(raw)} bytes claims uc_size {size}, uc_credoff {credoff}",
        )
    euid, ruid, _suid, egid, rgid, _sgid, ngroups = PRCRED.unpack_from(raw, credoff)
    groups = group_array(raw[:size], credoff + PRCRED.size, ngroups, NGROUPS_UMAX, "ucred_t")
    return received("ucred_t", pid, ruid, rgid, euid, egid, groups)


def credentials_from_cmsgs(ancdata: Sequence[Cmsg]) -> Optional[ReceivedCredentials]:
    """The ``SCM_UCRED`` among ``ancdata``."""
    return credentials_of(ancdata, SOL_SOCKET, SCM_UCRED, decode_scm_ucred)


def peer_security_label(sock: socket.socket) -> Optional[bytes]:
    """No SO_PEERSEC (Trusted Extensions labels, ucred_getlabel(3C), are not read)."""
    refuse("peer security labels", OS_NAME, NO_SECURITY_LABEL)
