"""DragonFly BSD: LOCAL_PEERCRED with the FreeBSD 4 ``xucred`` (no pid).

Sources: DragonFlyBSD ``sys/kern/uipc_usrreq.c`` b5523eac, ``sys/sys/un.h``
002c1265, ``sys/sys/socket.h`` 03d6a592 (os-facts §2).  Old sources: the
conformance suite checks the rest.  ``SO_PASSCRED`` (0x4000) is in no
DragonFly header read here: its value is rust-lang/libc's transcription
(``src/unix/bsd/freebsdlike/dragonfly/mod.rs``); uipc_usrreq.c b5523eac
tests ``so2->so_options & SO_PASSCRED`` in ``uipc_send`` (datagrams only).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import cmsg_space
from udscompat._os._bsd import CMSGCRED, SCM_CREDS, decode_cmsgcred
from udscompat._os._posix import (
    NO_SECURITY_LABEL,
    Cmsg,
    getsockopt_bytes,
    payloads,
    refuse,
    unpack_exact,
    xucred_groups,
)
from udscompat._os._posix import bound_unix_sockets as bound_unix_sockets
from udscompat._os._posix import control_room_before_rights as control_room_before_rights
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
# unp_bind: ACCESSPERMS less the umask (inferred; os.address.mode_from_socket measures it).
BIND_MODE_FROM_SOCKET = False
FD_PATH: Optional[str] = None

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


# -- ancillary credentials (SCM_CREDS) ----------------------------------------------------------
SO_PASSCRED = 0x4000  # at SOL_SOCKET (rust-lang/libc; see the module docstring)
SENDER_NAMES_CREDENTIALS = False
# unp_internalize (b5523eac) reads only the first control message of a send ("multiple
# headers (XXX not supported)"): an SCM_RIGHTS after an SCM_CREDS would go out as raw ints.
CREDENTIALS_WITH_FDS = False
CREDENTIALS_ROOM = cmsg_space(CMSGCRED.size, CMSGHDR_SIZE, CMSG_ALIGNMENT)


def pass_credentials(sock: socket.socket, enable: bool) -> None:
    """``SO_PASSCRED``: the kernel adds an ``SCM_CREDS`` cmsgcred to each datagram.

    uipc_send does so for SOCK_DGRAM only; on a stream or seqpacket socket
    the sender must attach ``SCM_CREDS`` itself (``send_credentials()``).
    """
    sock.setsockopt(SOL_SOCKET, SO_PASSCRED, 1 if enable else 0)


def credentials_cmsg(creds: SendCredentials) -> Optional[Cmsg]:
    """An empty ``SCM_CREDS`` cmsgcred: unp_internalize fills it in with the sender's own."""
    return (SOL_SOCKET, SCM_CREDS, bytes(CMSGCRED.size))


def credentials_from_cmsgs(ancdata: Sequence[Cmsg]) -> Optional[ReceivedCredentials]:
    """The first ``SCM_CREDS`` only: it is the one the kernel filled in.

    unp_internalize fills in the first control message of a send and leaves
    any later one as the sender wrote it, and SO_PASSCRED adds the kernel's
    own only when no SCM_CREDS is there yet; so a second SCM_CREDS may be a
    forgery, and the first never is.
    """
    found = payloads(ancdata, SOL_SOCKET, SCM_CREDS)
    return decode_cmsgcred(found[0]) if found else None


def peer_security_label(sock: socket.socket) -> Optional[bytes]:
    """No SO_PEERSEC."""
    refuse("peer security labels", OS_NAME, NO_SECURITY_LABEL)
