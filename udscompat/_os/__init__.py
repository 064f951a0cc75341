"""Per-OS backends: one module per kernel, one set of names in each.

Every backend module imports on every OS (constants, ``struct`` layouts and
functions only), so the layouts of kernels that cannot run here are tested
on Linux.  ``Backend`` lists the names each must define; a test assigns
each module to a ``Backend`` variable so mypy proves it complete.
"""

from __future__ import annotations

import socket
from typing import Optional, Protocol, Tuple

from udscompat._records import ConnCredentials

__all__ = ["Backend", "cmsg_len", "cmsg_space"]


class Backend(Protocol):
    """What udscompat needs to know about one kernel."""

    #: Human name of the OS, used in error messages.
    OS_NAME: str
    #: ``sizeof(((struct sockaddr_un *)0)->sun_path)``.
    SUN_PATH_SIZE: int
    #: Longest filesystem path bind/connect take: sun_path less its NUL.
    MAX_PATH_BYTES: int
    #: Longest abstract name, without its leading NUL (0: no abstract names).
    SOL_SOCKET: int
    SCM_RIGHTS: int
    SOCK_STREAM: int
    SOCK_DGRAM: int
    SOCK_SEQPACKET: int
    MSG_EOR: int
    MSG_TRUNC: int
    MSG_CTRUNC: int
    #: ``None`` where the headers do not define it.
    MSG_CMSG_CLOEXEC: Optional[int]
    #: ``sizeof(struct cmsghdr)`` and the alignment of CMSG_SPACE (LP64).
    CMSGHDR_SIZE: int
    CMSG_ALIGNMENT: int
    #: The kernel's cap on descriptors in one message, ``None`` if unknown.
    MAX_FDS_PER_MESSAGE: Optional[int]
    #: cmsg types other than SCM_RIGHTS (at SOL_SOCKET) that install a
    #: descriptor in the receiver, which udscompat must close.
    FD_CARRYING_CMSG_TYPES: Tuple[int, ...]
    #: Flags every seqpacket send needs to mark the record end.
    SEQPACKET_SEND_FLAGS: int
    #: (level, optname, cmsg type) of a socket option that makes the kernel
    #: attach a control message to every received message, so a zero-length
    #: message is told from end-of-stream; ``None`` where none is known.
    MESSAGE_MARKER: Optional[Tuple[int, int, int]]
    #: Keep a duplicate of every sent fd until the peer has it (macOS).
    HOLD_SENT_FDS: bool

    def peer_credentials(self, sock: socket.socket) -> ConnCredentials: ...


def cmsg_len(length: int, header_size: int, alignment: int) -> int:
    """``CMSG_LEN(length)`` for a kernel with this header size and alignment."""
    return _align(header_size, alignment) + length


def cmsg_space(length: int, header_size: int, alignment: int) -> int:
    """``CMSG_SPACE(length)`` for a kernel with this header size and alignment."""
    return _align(header_size, alignment) + _align(length, alignment)


def _align(length: int, alignment: int) -> int:
    return (length + alignment - 1) & ~(alignment - 1)
