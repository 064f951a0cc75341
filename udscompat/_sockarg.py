"""The ``sock`` of the free functions: a socket, one of udscompat's own types, or any fileno().

``send_fds``, ``recv_fds``, ``send_ancillary``, ``recv_ancillary``,
``pass_credentials``, ``peer_credentials`` and ``peer_security_label`` take
a ``socket.socket`` on their fast path and come here with anything else:

- ``SeqpacketConn`` and ``UnixDatagram``: the call goes to the object's own
  method, never to its socket.  An emulated connection's socket carries
  frames, and a raw ``sendmsg`` on it would corrupt them; both types keep
  their socket non-blocking and apply their own timeout.  So a data call
  takes no ``flags`` here but ``MSG_PEEK`` (a seqpacket ``peek``), and a
  seqpacket connection no ``address``.
- ``AsyncSeqpacketConn``: the option calls work; the data calls are
  coroutines (``await conn.send(...)``), so a ``TypeError`` says which.
- Anything else with ``fileno()`` returning a socket's descriptor: the call
  runs on a ``socket.socket`` borrowed around that descriptor and detached
  afterwards (the descriptor stays the caller's, its blocking mode as it
  was).
- Anything else: ``TypeError`` naming the parameter.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from udscompat._records import ConnCredentials, Message

if TYPE_CHECKING:
    from udscompat._ancillary import AncillaryMessage, Buffers
    from udscompat._bind import AddressArg
    from udscompat._dgram import UnixDatagram
    from udscompat._msgcreds import SendCredentials
    from udscompat._seqpacket import SeqpacketConn
    from udscompat.aio import AsyncSeqpacketConn

__all__ = ["SocketLike", "SupportsFileno"]


class SupportsFileno(Protocol):
    """Anything whose ``fileno()`` is a socket's descriptor."""

    def fileno(self) -> int: ...


#: What the free functions take as ``sock``.
SocketLike = Union[
    socket.socket, "SeqpacketConn", "UnixDatagram", "AsyncSeqpacketConn", SupportsFileno
]

_MSG_PEEK = int(socket.MSG_PEEK)
_MSG_TRUNC = int(socket.MSG_TRUNC)


def _own(sock: object) -> Optional[str]:
    """Which of udscompat's types ``sock`` is, if any."""
    from udscompat._dgram import UnixDatagram
    from udscompat._seqpacket import SeqpacketConn

    if isinstance(sock, SeqpacketConn):
        return "seqpacket"
    if isinstance(sock, UnixDatagram):
        return "datagram"
    aio = sys.modules.get("udscompat.aio")  # an AsyncSeqpacketConn means it was imported
    if aio is not None and isinstance(sock, aio.AsyncSeqpacketConn):
        return "async"
    return None


def socket_for(fd: int) -> socket.socket:
    """``socket.socket(fileno=fd)`` without asking the kernel for ``SO_PROTOCOL``.

    CPython asks for the protocol when it is not given; an AF_UNIX socket's is 0, and a
    Linux-ABI layer without the option (NetBSD's compat_linux, linux_socket.c rev 1.131:
    ``linux_to_bsd_so_sockopt`` maps no SO_PROTOCOL) answers EINVAL, which failed every
    call given anything but a ``socket.socket``.  Family and type are still the kernel's.
    """
    return socket.socket(-1, -1, 0, fileno=fd)


@contextmanager
def borrowed(sock: object, name: str = "sock") -> Iterator[socket.socket]:
    """A ``socket.socket`` around ``sock.fileno()``, detached (never closed) afterwards.

    Raises:
        TypeError: ``sock`` has no ``fileno()``, or it returned no int.
        OSError: ``ENOTSOCK`` when the descriptor is not a socket's; ``EBADF`` for a
            negative one (a closed socket's).
    """
    try:
        fileno = sock.fileno  # type: ignore[attr-defined]
    except AttributeError:
        raise TypeError(
            f"{name}: expected a socket.socket, a udscompat connection or an object with "
            f"fileno(), not {type(sock).__name__}"
        ) from None
    fd = fileno()
    if type(fd) is not int:
        raise TypeError(f"{name}: fileno() returned {type(fd).__name__}, not an int")
    if fd < 0:  # what a closed socket (ours or the standard library's) answers
        raise OSError(errno.EBADF, f"{name}: fileno() returned {fd}: closed?")
    borrowed: Optional[socket.socket] = None
    blocking = _blocking_mode(fd)
    try:
        try:
            borrowed = socket_for(fd)
            if blocking is not None:
                # socket.setdefaulttimeout() made CPython switch the descriptor to
                # non-blocking (its mode is the open file's, shared with the caller): put it
                # back, and run the call as the caller's socket would, blocking or not.
                borrowed.settimeout(None if blocking else 0.0)
        except OSError as exc:
            if exc.errno == errno.ENOTSOCK:
                raise OSError(errno.ENOTSOCK, f"{name}: descriptor {fd} is not a socket") from exc
            raise
        yield borrowed
    finally:
        if borrowed is not None:
            borrowed.detach()  # the descriptor is the caller's: never closed here


def _blocking_mode(fd: int) -> Optional[bool]:
    """Whether ``fd`` blocks, where wrapping it would change that (a default timeout is set)."""
    if socket.getdefaulttimeout() is None:
        return None  # socket(fileno=) leaves the descriptor's mode alone
    try:
        return os.get_blocking(fd)
    except OSError:
        return None  # not open: socket(fileno=) says so


def _no_async(name: str, instead: str) -> TypeError:
    return TypeError(
        f"sock: {name}() is blocking and an AsyncSeqpacketConn's I/O is a coroutine; use {instead}"
    )


def _only(what: str, flags: int, address: Any, *, peek: bool) -> None:
    allowed = (0, _MSG_PEEK) if peek else (0,)
    if flags not in allowed:
        raise ValueError(
            f"flags: {what} takes no recvmsg/sendmsg flags here"
            + (" but MSG_PEEK" if peek else "")
            + f" (its own methods keep its framing and timeout), got {flags!r}"
        )
    if address is not None:
        raise ValueError(f"address: {what} is connected; it sends to its peer only")


def _received(conn: SeqpacketConn, bufsize: int, maxfds: int, flags: int) -> Optional[Message]:
    _only("a SeqpacketConn", flags, None, peek=True)
    if flags:
        return conn.peek(bufsize, maxfds)
    return conn.recv_message(bufsize, maxfds)


def send_fds(sock: object, data: Any, fds: Sequence[Any], flags: int, address: Any) -> int:
    """``udscompat.send_fds`` for anything but a ``socket.socket``."""
    kind = _own(sock)
    if kind == "seqpacket":
        _only("a SeqpacketConn", flags, address, peek=False)
        return sock.send(data, fds)  # type: ignore[attr-defined, no-any-return]
    if kind == "datagram":
        _only("a UnixDatagram", flags, None, peek=False)
        if address is None:
            return sock.send(data, fds)  # type: ignore[attr-defined, no-any-return]
        return sock.send_to(address, data, fds)  # type: ignore[attr-defined, no-any-return]
    if kind == "async":
        raise _no_async("send_fds", "await conn.send(data, fds)")
    from udscompat import _fdpass

    with borrowed(sock) as plain:
        return _fdpass.send_fds(plain, data, fds, flags, address)


def recv_fds(
    sock: object, bufsize: int, maxfds: int, flags: int
) -> Tuple[bytes, List[int], int, Any]:
    """``udscompat.recv_fds`` for anything but a ``socket.socket``."""
    kind = _own(sock)
    if kind == "seqpacket":
        message = _received(sock, bufsize, maxfds, flags)  # type: ignore[arg-type]
        if message is None:
            return b"", [], 0, None  # end-of-stream, as recvmsg reports it
        return message.data, list(message.fds), _MSG_TRUNC if message.truncated else 0, None
    if kind == "datagram":
        _only("a UnixDatagram", flags, None, peek=False)
        got = sock.recv_message(bufsize, maxfds)  # type: ignore[attr-defined]
        return got.data, list(got.fds), got.flags, got.address.to_sockaddr() or None
    if kind == "async":
        raise _no_async("recv_fds", "await conn.recv_message(bufsize, maxfds)")
    from udscompat import _fdpass

    with borrowed(sock) as plain:
        return _fdpass.recv_fds(plain, bufsize, maxfds, flags)


def send_ancillary(
    sock: object,
    data: Buffers,
    fds: Sequence[Any],
    credentials: Optional[SendCredentials],
    flags: int,
    address: Optional[AddressArg],
) -> int:
    """``udscompat.send_ancillary`` for anything but a ``socket.socket``."""
    kind = _own(sock)
    if kind == "seqpacket":
        _only("a SeqpacketConn", flags, address, peek=False)
        return sock.send(data, fds, credentials)  # type: ignore[attr-defined, no-any-return]
    if kind == "datagram":
        _only("a UnixDatagram", flags, None, peek=False)
        if address is None:
            return sock.send(data, fds, credentials)  # type: ignore[attr-defined, no-any-return]
        return sock.send_to(address, data, fds, credentials)  # type: ignore[attr-defined, no-any-return]
    if kind == "async":
        raise _no_async("send_ancillary", "await conn.send(data, fds, credentials)")
    from udscompat import _ancillary

    with borrowed(sock) as plain:
        return _ancillary.send_ancillary(plain, data, fds, credentials, flags, address)


def recv_ancillary(sock: object, bufsize: int, maxfds: int, flags: int) -> AncillaryMessage:
    """``udscompat.recv_ancillary`` for anything but a ``socket.socket``.

    From a ``SeqpacketConn``: its message, ``flags`` ``MSG_TRUNC`` if cut,
    ``address`` unnamed; an emulated frame's ``ClaimedCredentials`` are not
    an ``AncillaryMessage``'s (the kernel's only): ``recv_message`` has them.
    """
    from udscompat import _ancillary
    from udscompat._address import UnixSocketAddr
    from udscompat._msgcreds import ReceivedCredentials

    kind = _own(sock)
    if kind == "seqpacket":
        message = _received(sock, bufsize, maxfds, flags)  # type: ignore[arg-type]
        if message is None:
            return _ancillary.AncillaryMessage(b"")  # end-of-stream, as recvmsg reports it
        creds = message.credentials
        return _ancillary.AncillaryMessage(
            message.data,
            message.fds,
            message.truncated,
            creds if isinstance(creds, ReceivedCredentials) else None,
            _MSG_TRUNC if message.truncated else 0,
            UnixSocketAddr.unnamed(),
        )
    if kind == "datagram":
        _only("a UnixDatagram", flags, None, peek=False)
        return sock.recv_message(bufsize, maxfds)  # type: ignore[attr-defined, no-any-return]
    if kind == "async":
        raise _no_async("recv_ancillary", "await conn.recv_message(bufsize, maxfds)")
    with borrowed(sock) as plain:
        return _ancillary.recv_ancillary(plain, bufsize, maxfds, flags)


def pass_credentials(sock: object, enable: bool) -> None:
    """``udscompat.pass_credentials`` for anything but a ``socket.socket``."""
    if _own(sock) is not None:
        sock.pass_credentials(enable)  # type: ignore[attr-defined]
        return
    from udscompat import _ancillary

    with borrowed(sock) as plain:
        _ancillary.pass_credentials(plain, enable)


def peer_credentials(sock: object) -> ConnCredentials:
    """``udscompat.peer_credentials`` for anything but a ``socket.socket``."""
    if _own(sock) is not None:
        return sock.peer_credentials()  # type: ignore[attr-defined, no-any-return]
    from udscompat import _creds

    with borrowed(sock) as plain:
        return _creds.peer_credentials(plain)


def peer_security_label(sock: object) -> Optional[bytes]:
    """``udscompat.peer_security_label`` for anything but a ``socket.socket``."""
    from udscompat import _ancillary

    if _own(sock) in ("seqpacket", "async"):
        return sock.peer_security_label()  # type: ignore[attr-defined, no-any-return]
    with borrowed(sock) as plain:  # a UnixDatagram too: an option, no I/O
        return _ancillary.peer_security_label(plain)
