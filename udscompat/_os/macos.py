"""macOS (XNU): no SOCK_SEQPACKET, no abstract names, no MSG_CMSG_CLOEXEC.

Sources: apple-oss-distributions/xnu e3723e1f (xnu-11417.101.15):
``bsd/sys/un.h``, ``bsd/sys/socket.h``, ``bsd/sys/ucred.h``,
``bsd/kern/uipc_usrreq.c``, ``bsd/kern/uipc_syscalls.c`` (os-facts §2).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional, Tuple

from udscompat._os._posix import bound_unix_sockets as bound_unix_sockets
from udscompat._os._posix import control_room_before_rights as control_room_before_rights
from udscompat._os._posix import (
    getsockopt_bytes,
    unpack_exact,
    without_ancillary_credentials,
    xucred_groups,
)
from udscompat._records import ConnCredentials

OS_NAME = "macOS"
SUN_PATH_SIZE = 104  # bsd/sys/un.h: char sun_path[104]
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5  # defined, but localsw[] has no entry: socket() fails
MSG_EOR = 0x8
MSG_TRUNC = 0x10
MSG_CTRUNC = 0x20
MSG_CMSG_CLOEXEC: Optional[int] = None  # not in bsd/sys/socket.h
CMSGHDR_SIZE = 12  # socklen_t cmsg_len; int cmsg_level; int cmsg_type
CMSG_ALIGNMENT = 4  # __DARWIN_ALIGN32 on x86_64 and arm64
# sockargs(): (buflen - 12) * 2 + 12 <= MCLBYTES (2048) on LP64 -> 254 ints (inferred).
MAX_FDS_PER_MESSAGE: Optional[int] = 254
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
# CPython's multiprocessing (Issue14669) and Node.js (#7512) saw passed fds die when the
# sender closed its copy before the peer received it (os-facts §2.4).
HOLD_SENT_FDS = True
# unp_bind: ACCESSPERMS less the umask (inferred; os.address.mode_from_socket measures it).
BIND_MODE_FROM_SOCKET = False
FD_PATH: Optional[str] = None

SOL_LOCAL = 0
LOCAL_PEERCRED = 1
LOCAL_PEERPID = 2
# struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16]; }
XUCRED = struct.Struct("=IIh2x16I")
XUCRED_VERSION = 0
PID = struct.Struct("=i")


def decode_peercred(raw: bytes, pid_raw: Optional[bytes] = None) -> ConnCredentials:
    """Decode ``struct xucred`` and the ``pid_t`` of ``LOCAL_PEERPID``."""
    version, uid, ngroups, *groups = unpack_exact(XUCRED, raw, "struct xucred")
    if version != XUCRED_VERSION:
        raise OSError(errno.EPROTO, f"unknown xucred version {version}")
    valid = xucred_groups(ngroups, tuple(groups))
    pid = PID.unpack_from(pid_raw)[0] if pid_raw is not None and len(pid_raw) >= 4 else None
    return ConnCredentials(pid if pid else None, uid, valid[0], valid)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``LOCAL_PEERCRED`` for the ids, ``LOCAL_PEERPID`` for the pid (level ``SOL_LOCAL``)."""
    raw = getsockopt_bytes(sock, SOL_LOCAL, LOCAL_PEERCRED, XUCRED.size)
    try:
        pid_raw: Optional[bytes] = sock.getsockopt(SOL_LOCAL, LOCAL_PEERPID, PID.size)
    except OSError:
        pid_raw = None
    return decode_peercred(raw, pid_raw)


# -- ancillary credentials and the security label: none -------------------------------------
# bsd/sys/socket.h defines SCM_CREDS (0x03) but keeps struct cmsgcred under #ifndef __APPLE__,
# and uipc_usrreq.c unp_internalize answers anything but one SCM_RIGHTS with EINVAL; there
# is no receiver option (os-facts §2.7).
_NO_ANCILLARY_CREDENTIALS = (
    "XNU accepts only SCM_RIGHTS as control data (SCM_CREDS is defined but refused with EINVAL)"
)
SENDER_NAMES_CREDENTIALS = False
CREDENTIALS_WITH_FDS = False
CREDENTIALS_ROOM = 0


pass_credentials, credentials_cmsg, credentials_from_cmsgs, peer_security_label = (
    without_ancillary_credentials(OS_NAME, _NO_ANCILLARY_CREDENTIALS)
)
