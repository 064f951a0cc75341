"""Per-OS backends: one module per kernel, one set of names in each.

Every backend module imports on every OS (constants, ``struct`` layouts and
functions only), so the layouts of kernels that cannot run here are tested
on Linux.  ``Backend`` lists the names each must define; a test assigns
each module to a ``Backend`` variable so mypy proves it complete.
"""

from __future__ import annotations

import socket
from typing import Optional, Protocol, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
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

    # -- ancillary credentials and the peer's security label ----------------------------

    #: Whether a sender may name ids of its choosing (Linux SCM_CREDENTIALS); elsewhere
    #: the kernel fills in the sender's own, whatever it was given.
    SENDER_NAMES_CREDENTIALS: bool
    #: Whether credentials and SCM_RIGHTS can travel in one sendmsg.
    CREDENTIALS_WITH_FDS: bool
    #: Control-buffer bytes the kernel's credential messages may take in one receive.
    CREDENTIALS_ROOM: int

    def peer_credentials(self, sock: socket.socket) -> ConnCredentials: ...

    def pass_credentials(self, sock: socket.socket, enable: bool) -> None:
        """Ask the kernel to attach the sender's credentials to what ``sock`` receives."""

    def credentials_cmsg(self, creds: SendCredentials) -> Optional[Tuple[int, int, bytes]]:
        """The control message a sender attaches, ``None`` where only the receiver asks."""

    def credentials_from_cmsgs(
        self, ancdata: Sequence[Tuple[int, int, bytes]]
    ) -> Optional[ReceivedCredentials]:
        """The sender's credentials among one receive's control messages, if any."""

    def peer_security_label(self, sock: socket.socket) -> Optional[bytes]:
        """The connected peer's security label, ``None`` where no LSM labelled it."""


def cmsg_len(length: int, header_size: int, alignment: int) -> int:
    """``CMSG_LEN(length)`` for a kernel with this header size and alignment."""
    return _align(header_size, alignment) + length


def cmsg_space(length: int, header_size: int, alignment: int) -> int:
    """``CMSG_SPACE(length)`` for a kernel with this header size and alignment."""
    return _align(header_size, alignment) + _align(length, alignment)


def _align(length: int, alignment: int) -> int:
    return (length + alignment - 1) & ~(alignment - 1)
