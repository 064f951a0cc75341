"""What every POSIX backend shares, and the backend for an unknown POSIX.

An unknown POSIX system gets the 4.4BSD values where they are universal and
``UnsupportedError`` for everything that differs by kernel (credentials).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Optional, Tuple

from udscompat._errors import UnsupportedError
from udscompat._records import ConnCredentials

OS_NAME = os.uname().sysname if hasattr(os, "uname") else "unknown POSIX"
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
MSG_CMSG_CLOEXEC: Optional[int] = None
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8
MAX_FDS_PER_MESSAGE: Optional[int] = None
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """No known mechanism on an unrecognised kernel."""
    raise UnsupportedError("peer credentials", OS_NAME, "no known mechanism on this kernel")


def getsockopt_bytes(sock: socket.socket, level: int, optname: int, size: int) -> bytes:
    """``getsockopt`` returning raw bytes, with ``ENOTCONN`` for the unconnected.

    Kernels answer an unconnected socket with ENOTCONN (connection types) or
    EINVAL (datagram types); both mean "no peer" to the caller.
    """
    try:
        return sock.getsockopt(level, optname, size)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.EINVAL):
            raise OSError(errno.ENOTCONN, "socket has no connected peer") from exc
        raise


def unpack_exact(layout: struct.Struct, raw: bytes, what: str) -> Tuple[int, ...]:
    """Unpack ``raw`` with ``layout``, naming the struct when the size is wrong."""
    if len(raw) < layout.size:
        raise OSError(
            errno.EPROTO, f"kernel returned {len(raw)} bytes for {what}; expected {layout.size}"
        )
    return layout.unpack_from(raw)


def xucred_groups(ngroups: int, groups: Tuple[int, ...]) -> Tuple[int, ...]:
    """The valid prefix of an ``xucred.cr_groups`` array (``cr_groups[0]`` is the egid)."""
    if not 0 < ngroups <= len(groups):
        raise OSError(
            errno.EPROTO, f"xucred reports {ngroups} groups; the array holds {len(groups)}"
        )
    return groups[:ngroups]
