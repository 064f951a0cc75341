"""OpenBSD: SO_PEERCRED with (uid, gid, pid), 103-byte paths, EMSGSIZE on truncation.

Sources: openbsd/src ``sys/kern/uipc_usrreq.c`` rev 1.78 (5ff140d2) and 1.221;
``sys/sys/socket.h`` (os-facts §2).
"""

from __future__ import annotations

import socket
import struct
from typing import Optional, Tuple

from udscompat._os._posix import bound_unix_sockets as bound_unix_sockets
from udscompat._os._posix import control_room_before_rights as control_room_before_rights
from udscompat._os._posix import getsockopt_bytes, unpack_exact, without_ancillary_credentials
from udscompat._records import ConnCredentials

OS_NAME = "OpenBSD"
SUN_PATH_SIZE = 104
MAX_PATH_BYTES = SUN_PATH_SIZE - 1  # unp_bind: a path filling sun_path is EINVAL
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x8
MSG_TRUNC = 0x10
MSG_CTRUNC = 0x20
MSG_CMSG_CLOEXEC: Optional[int] = 0x800
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8
# unp_internalize: CMSG_SPACE(n * sizeof(struct fdpass)) within MCLBYTES; fdpass is 16 bytes
# on LP64 -> 127 (inferred arithmetic).
MAX_FDS_PER_MESSAGE: Optional[int] = 127
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False
# unp_bind: ACCESSPERMS less the umask (inferred; os.address.mode_from_socket measures it).
BIND_MODE_FROM_SOCKET = False
FD_PATH: Optional[str] = None

SO_PEERCRED = 0x1022
SOCKPEERCRED = struct.Struct("=IIi")  # struct sockpeercred { uid_t uid; gid_t gid; pid_t pid; }


def decode_peercred(raw: bytes) -> ConnCredentials:
    """Decode ``struct sockpeercred`` -- uid first, unlike Linux's ``ucred``."""
    uid, gid, pid = unpack_exact(SOCKPEERCRED, raw, "struct sockpeercred")
    return ConnCredentials(pid if pid > 0 else None, uid, gid, None)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getsockopt(SOL_SOCKET, SO_PEERCRED)``."""
    return decode_peercred(getsockopt_bytes(sock, SOL_SOCKET, SO_PEERCRED, SOCKPEERCRED.size))


# -- ancillary credentials and the security label: none -------------------------------------
# uipc_usrreq.c rev 1.221 unp_externalize: "SCM_RIGHTS is the only supported control message
# type on unix sockets"; no receiver option either (os-facts §2.7).
_NO_ANCILLARY_CREDENTIALS = "SCM_RIGHTS is the only control message OpenBSD's unix sockets carry"
SENDER_NAMES_CREDENTIALS = False
CREDENTIALS_WITH_FDS = False
CREDENTIALS_ROOM = 0


pass_credentials, credentials_cmsg, credentials_from_cmsgs, peer_security_label = (
    without_ancillary_credentials(OS_NAME, _NO_ANCILLARY_CREDENTIALS)
)
