"""Linux: abstract addresses, SO_PEERCRED, MSG_CMSG_CLOEXEC, 253 fds per message.

Sources: glibc ``bits/socket.h``, ``sys/un.h``, ``asm-generic/socket.h`` on
Debian 12; ``net/unix/af_unix.c``; ``include/net/scm.h`` (os-facts §2).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional, Tuple

from udscompat._os._posix import getsockopt_bytes, unpack_exact
from udscompat._records import ConnCredentials

OS_NAME = "Linux"
SUN_PATH_SIZE = 108  # sys/un.h: char sun_path[108]
MAX_PATH_BYTES = SUN_PATH_SIZE - 1  # CPython needs room for the NUL
SOL_SOCKET = 1
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x80
MSG_TRUNC = 0x20
MSG_CTRUNC = 0x08
MSG_CMSG_CLOEXEC: Optional[int] = 0x40000000
CMSGHDR_SIZE = 16  # size_t cmsg_len; int cmsg_level; int cmsg_type
CMSG_ALIGNMENT = 8  # sizeof(size_t)
MAX_FDS_PER_MESSAGE: Optional[int] = 253  # include/net/scm.h: SCM_MAX_FD
SCM_PIDFD = 0x4C  # asm-generic/socket.h, with SO_PASSPIDFD a pidfd arrives per message
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = (SCM_PIDFD,)
SEQPACKET_SEND_FLAGS = 0
SO_TIMESTAMP = 29  # asm-generic/socket.h: SO_TIMESTAMP_OLD == SCM_TIMESTAMP
# __unix_dgram_recvmsg adds SCM_TIMESTAMP to every message when SO_TIMESTAMP is set,
# and nothing at end-of-stream: that tells a zero-length message from EOF.
# (SO_PASSCRED would too, but makes every send autobind an abstract name.)
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = (SOL_SOCKET, SO_TIMESTAMP, SO_TIMESTAMP)
HOLD_SENT_FDS = False

SO_PEERCRED = 17
SO_PEERGROUPS = 59
UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_UNSET_ID = 0xFFFFFFFF  # (uid_t)-1: what SO_PEERCRED reports for a socket without a peer
_GID = struct.Struct("=I")


def decode_peercred(raw: bytes, groups_raw: Optional[bytes] = None) -> ConnCredentials:
    """Decode ``struct ucred`` (and the ``gid_t`` array of ``SO_PEERGROUPS``)."""
    pid, uid, gid = unpack_exact(UCRED, raw, "struct ucred")
    if uid == _UNSET_ID and gid == _UNSET_ID:
        raise OSError(errno.ENOTCONN, "socket has no connected peer (SO_PEERCRED is unset)")
    groups = None
    if groups_raw is not None:
        count = len(groups_raw) // _GID.size
        groups = struct.unpack(f"={count}I", groups_raw[: count * _GID.size])
    # pid 0: the peer is in a pid namespace this process cannot see.
    return ConnCredentials(pid if pid > 0 else None, uid, gid, groups)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``SO_PEERCRED``, plus ``SO_PEERGROUPS`` (Linux 4.13+) for the groups."""
    raw = getsockopt_bytes(sock, SOL_SOCKET, SO_PEERCRED, UCRED.size)
    return decode_peercred(raw, _peer_groups(sock))


def _peer_groups(sock: socket.socket) -> Optional[bytes]:
    # NGROUPS_MAX is 65536; start small and retry once at the size ERANGE implies.
    for size in (64 * _GID.size, 65536 * _GID.size):
        try:
            return sock.getsockopt(SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            if exc.errno in (errno.ENOPROTOOPT, errno.ENODATA):
                return None  # kernel before 4.13, or no groups recorded
            raise
    return None
