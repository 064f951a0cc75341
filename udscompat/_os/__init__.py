"""Per-OS backends: one module per kernel, one set of names in each.

Every backend module imports on every OS (constants, ``struct`` layouts and
functions only), so the layouts of kernels that cannot run here are tested
on Linux.  ``Backend`` lists the names each must define; a test assigns
each module to a ``Backend`` variable so mypy proves it complete.
"""

from __future__ import annotations

import socket
from typing import List, NamedTuple, Optional, Protocol, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._records import ConnCredentials

__all__ = ["Backend", "BoundSocket", "cmsg_len", "cmsg_space"]


class BoundSocket(NamedTuple):
    """One AF_UNIX socket in the kernel's table, as a socket-table query reports it."""

    #: The socket's own inode number (``os.fstat(sock.fileno()).st_ino``).
    inode: int
    #: ``SOCK_STREAM``, ``SOCK_DGRAM`` or ``SOCK_SEQPACKET``.
    type: int
    listening: bool
    #: Connected: a connection ``accept()`` returned (it shares its listener's name and
    #: file), a client, or a connected datagram socket.
    connected: bool
    #: The address it was bound with (an abstract name keeps its leading NUL); ``None`` if unbound.
    name: Optional[bytes]
    #: ``(st_dev, st_ino)`` of the socket file it is bound to, ``None`` for no file.  The
    #: inode number may be only the low bits the kernel reports (``file_ino_mask``).
    file: Optional[Tuple[int, int]]
    file_ino_mask: int = -1

    @property
    def answers_at_name(self) -> bool:
        """Does a connect or send to its name reach this socket (or will, once it listens)?

        A listener, a bound socket that neither listens nor is connected yet,
        or a datagram socket -- not a connection, which only inherited the name.
        """
        return self.listening or not self.connected or self.type == socket.SOCK_DGRAM

    def is_bound_to(self, dev: int, ino: int) -> bool:
        """Is this socket bound to the file with ``st_dev`` ``dev`` and ``st_ino`` ``ino``?"""
        return self.file == (dev, ino & self.file_ino_mask)


class Backend(Protocol):
    """What udscompat needs to know about one kernel."""

    #: Human name of the OS, used in error messages.
    OS_NAME: str
    #: ``sizeof(((struct sockaddr_un *)0)->sun_path)``.
    SUN_PATH_SIZE: int
    #: Longest filesystem path udscompat binds, connects and sends to: sun_path less the
    #: NUL CPython adds, or all of sun_path where the kernel takes it without one and a
    #: descriptor path (``FD_PATH``) lets udscompat hand it over.
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

    #: bind() gives the new socket file the mode of the socket's own inode less the
    #: umask, so ``fchmod`` on the unbound socket sets the file's mode from the start.
    BIND_MODE_FROM_SOCKET: bool
    #: A path naming an open descriptor's own file (``str.format`` it with the fd): a
    #: directory opened once is reached again without walking its path; ``None`` if none.
    FD_PATH: Optional[str]

    def bound_unix_sockets(self) -> Optional[List[BoundSocket]]:
        """Every AF_UNIX socket the kernel will list, or ``None`` where it lists none."""
        ...

    def control_room_before_rights(self, sock: socket.socket) -> Optional[int]:
        """Control-buffer bytes for every control message the kernel puts before SCM_RIGHTS
        in a receive on ``sock``, with no room for one descriptor; ``None`` where unknown.

        A peek that must install no descriptor (``_io.peek_recvmsg``) reads with this room.
        """
        ...

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
