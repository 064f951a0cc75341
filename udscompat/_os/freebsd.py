"""FreeBSD: LOCAL_PEERCRED with a pid (13+), MSG_EOR-marked seqpacket records (15+).

Sources: freebsd-src ``sys/sys/un.h``, ``sys/sys/socket.h``, ``sys/sys/ucred.h``;
``sys/kern/uipc_usrreq.c`` (2025 HEAD and b7a3af0b) (os-facts §2).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional, Tuple

from udscompat._os._posix import getsockopt_bytes, unpack_exact, xucred_groups
from udscompat._records import ConnCredentials

OS_NAME = "FreeBSD"
SUN_PATH_SIZE = 104  # sys/un.h: SUNPATHLEN 104
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x8
MSG_TRUNC = 0x10
MSG_CTRUNC = 0x20
MSG_CMSG_CLOEXEC: Optional[int] = 0x00040000  # since FreeBSD 10 (jilles, c9066bd)
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8  # _ALIGNBYTES + 1 on amd64 and arm64
# unp_internalize: CMSG_SPACE(n * sizeof(void *)) > MCLBYTES (2048) -> EMSGSIZE: 254 (inferred).
MAX_FDS_PER_MESSAGE: Optional[int] = 254
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
# FreeBSD 15 ends a seqpacket record only where the sender passed MSG_EOR
# (tokio-seqpacket 0.8.1, bfffs#370); older kernels accept and ignore the flag.
SEQPACKET_SEND_FLAGS = MSG_EOR
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False

SOL_LOCAL = 0  # uipc_ctloutput rejects any other level with EINVAL
LOCAL_PEERCRED = 1
# struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16];
#                 union { void *_cr_unused1; pid_t cr_pid; }; }  -- 88 bytes on LP64
XUCRED = struct.Struct("=IIh2x16I4xi4x")
XUCRED_VERSION = 0


def decode_peercred(raw: bytes) -> ConnCredentials:
    """Decode FreeBSD's ``struct xucred``; ``cr_pid`` is 0 before FreeBSD 13."""
    version, uid, ngroups, *rest = unpack_exact(XUCRED, raw, "struct xucred")
    if version != XUCRED_VERSION:
        raise OSError(errno.EPROTO, f"unknown xucred version {version}")
    groups, pid = tuple(rest[:16]), rest[16]
    valid = xucred_groups(ngroups, groups)
    return ConnCredentials(pid if pid > 0 else None, uid, valid[0], valid)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getsockopt(0, LOCAL_PEERCRED)``."""
    return decode_peercred(getsockopt_bytes(sock, SOL_LOCAL, LOCAL_PEERCRED, XUCRED.size))
