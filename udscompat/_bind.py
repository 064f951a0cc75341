"""Binding AF_UNIX sockets to paths without ever removing a live socket.

A socket file outlives its listener.  Before binding, udscompat removes such
a *stale* file -- a socket nobody accepts on -- but never a live one (a
probe connect succeeds: CPython #121252 deleted another process's listener)
and never anything that is not a socket.  On close, it removes the file only
if the path still names the inode it created, so a successor that replaced
it keeps working.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Any, Optional

from udscompat._address import AddressArg, UnixSocketAddr, as_address

__all__ = [
    "AddressArg",
    "SocketFile",
    "as_address",
    "bind",
    "connect_error",
    "connect_unix",
    "is_live_socket_file",
    "sendmsg_to",
]

# connect() answers that mean "something is bound there and in use".
_LIVE = {
    errno.EAGAIN,
    errno.EINPROGRESS,
    errno.EPROTOTYPE,
    errno.EACCES,
    errno.EPERM,
    errno.EISCONN,
}


class SocketFile:
    """The filesystem entry a bind created: path, device, inode and change time.

    The change time guards against inode reuse: a successor's file may get
    the very inode number ours had.  (A chmod by someone else also changes
    it; then the file is left alone, which is the safe side.)
    """

    __slots__ = ("ctime_ns", "dev", "ino", "path")

    def __init__(self, path: bytes, dev: int, ino: int, ctime_ns: int) -> None:
        self.path = path
        self.dev = dev
        self.ino = ino
        self.ctime_ns = ctime_ns

    @classmethod
    def at(cls, path: bytes) -> SocketFile:
        """The socket file now at ``path``."""
        st = os.lstat(path)
        return cls(path, st.st_dev, st.st_ino, st.st_ctime_ns)

    def remove(self) -> bool:
        """Unlink the path if it still names this socket file.  True if removed."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return False
        now = (st.st_dev, st.st_ino, st.st_ctime_ns)
        if now != (self.dev, self.ino, self.ctime_ns) or not stat.S_ISSOCK(st.st_mode):
            return False  # replaced by someone else: theirs now
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True

    def __repr__(self) -> str:
        return f"SocketFile({os.fsdecode(self.path)!r}, dev={self.dev}, ino={self.ino})"


def connect_unix(sock: socket.socket, address: UnixSocketAddr) -> None:
    """``sock.connect`` to ``address``; errors as ``connect`` raises them (``connect_error``)."""
    sock.connect(address.to_sockaddr())


def connect_error(exc: OSError, address: UnixSocketAddr) -> OSError:
    """``exc`` from connecting to ``address``, with the address in its message."""
    return OSError(exc.errno, f"{exc.strerror}: cannot connect to {address}")


def sendmsg_to(
    sock: socket.socket, buffers: Any, ancdata: Any, flags: int, addr: AddressArg
) -> int:
    """``sock.sendmsg`` to ``addr``, an address by the one rule (``as_address``)."""
    return sock.sendmsg(buffers, ancdata, flags, as_address(addr).to_sockaddr())


def is_live_socket_file(path: bytes, sock_type: int) -> bool:
    """Does a process accept (or receive) on the socket file at ``path``?

    A non-blocking connect of the same type: refused means stale; success,
    a full backlog, or a socket of another type means live.  Permission
    errors count as live: what cannot be checked is not removed.
    """
    with socket.socket(socket.AF_UNIX, sock_type) as probe:
        probe.setblocking(False)
        try:
            probe.connect(os.fsdecode(path))
        except OSError as exc:
            if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
                return False
            if exc.errno in _LIVE:
                return True
            raise
        return True


def bind(
    sock: socket.socket,
    addr: AddressArg,
    *,
    mode: Optional[int] = None,
    remove_stale: bool = True,
) -> Optional[SocketFile]:
    """Like ``sock.bind(addr)``, but recovers from a stale socket file.

    Args:
        sock: an unbound AF_UNIX socket of any type.
        addr: where to bind.
        mode: permission bits for the socket file (applied with ``chmod``
            right after ``bind``; until then the umask applies).
        remove_stale: remove a socket file nobody listens on before binding.

    Returns:
        The ``SocketFile`` for a path address (keep it to ``remove()`` the
        file later), ``None`` for abstract and unnamed addresses.

    Raises:
        OSError: ``EADDRINUSE`` when a live socket, or anything that is not
            a socket, is at the path (nothing is removed); the address is
            named in the message.  Other ``bind`` errors likewise.
    """
    address = as_address(addr)
    path = address.path_bytes
    if path is not None and remove_stale:
        _remove_if_stale(path, sock.type)
    try:
        sock.bind(address.to_sockaddr())
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: cannot bind {address}") from exc
    if path is None:
        return None
    if mode is not None:
        os.chmod(path, mode)
    return SocketFile.at(path)


def _remove_if_stale(path: bytes, sock_type: int) -> None:
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(before.st_mode) or is_live_socket_file(path, sock_type):
        return  # bind() will fail with EADDRINUSE, which is the truth
    SocketFile(path, before.st_dev, before.st_ino, before.st_ctime_ns).remove()


def close_listener(sock: Any, socket_file: Optional[SocketFile]) -> None:
    """Close ``sock`` and then remove ``socket_file`` if it is still ours."""
    sock.close()
    if socket_file is not None:
        socket_file.remove()
