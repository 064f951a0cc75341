"""DragonFly BSD: LOCAL_PEERCRED with the FreeBSD 4 ``xucred`` (no pid).

Sources: DragonFlyBSD ``sys/kern/uipc_usrreq.c`` b5523eac, ``sys/sys/un.h``
002c1265, ``sys/sys/socket.h`` 03d6a592 (os-facts §2).  Old sources: the
conformance suite checks the rest.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional, Tuple

from udscompat._os._posix import getsockopt_bytes, unpack_exact, xucred_groups
from udscompat._records import ConnCredentials

OS_NAME = "DragonFly BSD"
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
MSG_CMSG_CLOEXEC: Optional[int] = None  # absent from the source read; Python's value is probed
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8
# unp_internalize: CMSG_LEN(n * sizeof(struct file *)) > MCLBYTES -> E2BIG: 254 (inferred).
MAX_FDS_PER_MESSAGE: Optional[int] = 254
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False

LOCAL_PEERCRED = 1  # at level 0; the header has no SOL_LOCAL
XUCRED = struct.Struct("=IIh2x16I")  # the FreeBSD 4 layout: no pid union
XUCRED_VERSION = 0


def decode_peercred(raw: bytes) -> ConnCredentials:
    """Decode DragonFly's ``struct xucred``."""
    version, uid, ngroups, *groups = unpack_exact(XUCRED, raw, "struct xucred")
    if version != XUCRED_VERSION:
        raise OSError(errno.EPROTO, f"unknown xucred version {version}")
    valid = xucred_groups(ngroups, tuple(groups))
    return ConnCredentials(None, uid, valid[0], valid)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getsockopt(0, LOCAL_PEERCRED)``."""
    return decode_peercred(getsockopt_bytes(sock, 0, LOCAL_PEERCRED, XUCRED.size))
