"""``peer_credentials``: one call over every OS's credential mechanism."""

from __future__ import annotations

import socket

from udscompat._platform import backend
from udscompat._records import ConnCredentials

__all__ = ["peer_credentials"]


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """The connected peer's pid (where the OS tells), effective uid and gid, and groups.

    Linux ``SO_PEERCRED`` (+ ``SO_PEERGROUPS``); OpenBSD ``SO_PEERCRED``
    (``sockpeercred``); FreeBSD and DragonFly ``LOCAL_PEERCRED``; macOS
    ``LOCAL_PEERCRED`` + ``LOCAL_PEERPID``; NetBSD ``LOCAL_PEEREID``;
    illumos ``getpeerucred(3C)``.  For a listener-side socket these are the
    credentials of the process that connected; for the connecting side,
    those of the process that created the listener (at ``listen()`` on
    Linux and FreeBSD, at ``bind()`` on OpenBSD and NetBSD).

    Raises:
        OSError: ``ENOTCONN`` when the socket has no connected peer (Linux
            would report pid 0 and uid -1; that is not passed off as credentials).
        UnsupportedError: the OS has no mechanism udscompat knows.
        ValueError: the socket is not AF_UNIX.
    """
    if not isinstance(sock, socket.socket):
        raise TypeError(f"expected a socket.socket, got {type(sock).__name__}")
    if sock.family != socket.AF_UNIX:
        raise ValueError(f"expected an AF_UNIX socket, got {sock.family!r}")
    return backend.peer_credentials(sock)
