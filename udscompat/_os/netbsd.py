"""NetBSD: LOCAL_PEEREID at level 0.

Sources: NetBSD/src ``sys/sys/un.h`` rev 1.46.12.1, ``sys/kern/uipc_usrreq.c``
rev 1.124; unix(4) of NetBSD 7.0.2 and current (os-facts §2).  The kernel
source read is old: the conformance suite checks the rest.
"""

from __future__ import annotations

import socket
import struct
from typing import Optional, Tuple

from udscompat._os._posix import getsockopt_bytes, unpack_exact
from udscompat._records import ConnCredentials

OS_NAME = "NetBSD"
SUN_PATH_SIZE = 104
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x8
MSG_TRUNC = 0x10
MSG_CTRUNC = 0x20
MSG_CMSG_CLOEXEC: Optional[int] = 0x800  # value not verified (os-facts §4); probed
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8
MAX_FDS_PER_MESSAGE: Optional[int] = None  # only an in-flight rate limit was read
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False

LOCAL_PEEREID = 3  # level 0: "SOL_SOCKET will not work"
UNPCBID = struct.Struct("=iII")  # struct unpcbid { pid_t unp_pid; uid_t unp_euid; gid_t unp_egid; }


def decode_peercred(raw: bytes) -> ConnCredentials:
    """Decode ``struct unpcbid``."""
    pid, euid, egid = unpack_exact(UNPCBID, raw, "struct unpcbid")
    return ConnCredentials(pid if pid > 0 else None, euid, egid, None)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getsockopt(0, LOCAL_PEEREID)``."""
    return decode_peercred(getsockopt_bytes(sock, 0, LOCAL_PEEREID, UNPCBID.size))
