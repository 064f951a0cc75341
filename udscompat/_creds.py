"""``peer_credentials``: one call over every OS's credential mechanism."""

from __future__ import annotations

import errno
import socket
from typing import Optional

from udscompat import _probes, _sockarg
from udscompat._errors import UnsupportedError
from udscompat._platform import backend
from udscompat._records import ConnCredentials
from udscompat._sockarg import SocketLike

__all__ = ["peer_credentials"]

# From the socket module where the headers define it (Linux, the BSDs, macOS, illumos).
_SO_ACCEPTCONN: Optional[int] = getattr(socket, "SO_ACCEPTCONN", None)


def peer_credentials(sock: SocketLike) -> ConnCredentials:
    """The connected peer's pid (where the OS tells), effective uid and gid, and groups.

    Linux ``SO_PEERCRED`` (+ ``SO_PEERGROUPS``); OpenBSD ``SO_PEERCRED``
    (``sockpeercred``); FreeBSD and DragonFly ``LOCAL_PEERCRED``; macOS
    ``LOCAL_PEERCRED`` + ``LOCAL_PEERPID``; NetBSD ``LOCAL_PEEREID``;
    illumos ``getpeerucred(3C)``.

    The kernel records credentials once, when the connection is made, and
    never updates them: they are those of whoever *connected* (the process
    that called ``connect()`` or ``socketpair()``), not of whoever holds the
    socket now.  A connection made by root and passed to another process
    (``send_fds``, ``fork``) still reports root, and a peer that changed its
    uid after connecting reports the old one.  On an accepted socket these
    are the connecting process's credentials; on the connecting side,
    those of the process that created the listener (at ``listen()`` on
    Linux and FreeBSD, at ``bind()`` on OpenBSD and NetBSD).

    Raises:
        OSError: ``ENOTCONN`` when the socket has no connected peer: an
            unconnected socket (Linux would report pid 0 and uid -1, gVisor
            this process's own credentials), or a listening one (Linux would
            report this process's own credentials, recorded by ``listen()``).
        UnsupportedError: the OS has no mechanism udscompat knows, or the
            kernel's answers are not the peer's (gVisor 20221219 reports the
            caller's own credentials: ``_probes.peer_credentials_name_the_peer``).
        TypeError: ``sock`` is none of a ``socket.socket``, udscompat's
            ``SeqpacketConn``/``UnixDatagram``/``AsyncSeqpacketConn`` (their
            ``peer_credentials``) or an object with ``fileno()``.
        ValueError: the socket is not AF_UNIX.
    """
    if not isinstance(sock, socket.socket):
        return _sockarg.peer_credentials(sock)  # our own types; anything with fileno()
    if sock.family != socket.AF_UNIX:
        raise ValueError(f"expected an AF_UNIX socket, got {sock.family!r}")
    if _is_listening(sock):
        raise OSError(
            errno.ENOTCONN,
            "a listening socket has no peer; peer_credentials() takes a connection "
            "(one that accept() returned)",
        )
    try:
        sock.getpeername()  # every kernel: ENOTCONN without a peer, whatever SO_PEERCRED says
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise OSError(errno.ENOTCONN, "the socket has no connected peer") from None
        raise
    truthful, reason = _probes.peer_credentials_name_the_peer()
    if not truthful:
        raise UnsupportedError("peer credentials", backend.OS_NAME, reason)
    return backend.peer_credentials(sock)


def _is_listening(sock: socket.socket) -> bool:
    if _SO_ACCEPTCONN is None:
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, _SO_ACCEPTCONN))
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL, errno.EOPNOTSUPP):
            return False  # a kernel that does not report it for this socket type
        raise
