"""``UnixDatagram``: AF_UNIX datagrams with the library's address, fd and credential rules.

A datagram socket bound to a path (a stale socket file is replaced, a live
one never), to an abstract name, autobound (Linux), or left unbound; one
``send``/``send_to`` is one datagram carrying descriptors and credentials;
``recv_from`` reports the sender, truncation (as for seqpacket), close-on-exec
descriptors that are the caller's, and the sender's credentials where the
kernel attached them.  Blocking, non-blocking and timeouts are one code path
(``_io.call``), as for the seqpacket types.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar

from udscompat import _fdpass, _io
from udscompat._address import UnixSocketAddr
from udscompat._ancillary import (
    AncillaryMessage,
    Buffers,
    pass_credentials,
    recv_ancillary,
    send_ancillary,
)
from udscompat._bind import (
    AddressArg,
    SocketFile,
    as_address,
    bind,
    close_listener,
    connect_error,
    connect_unix,
)
from udscompat._creds import peer_credentials
from udscompat._errors import UnsupportedError
from udscompat._msgcreds import SendCredentials
from udscompat._platform import backend
from udscompat._records import ConnCredentials

__all__ = ["UnixDatagram"]

T = TypeVar("T")


class UnixDatagram:
    """An AF_UNIX ``SOCK_DGRAM`` socket: one send is one received message.

    Create one with ``UnixDatagram.bind``, ``UnixDatagram.unbound`` or
    ``UnixDatagram.pair``.  It starts in blocking mode; ``settimeout`` and
    ``setblocking`` work as on a socket.  Sends and receives are single
    system calls, so threads may share one.
    """

    def __init__(self, sock: socket.socket, *, socket_file: Optional[SocketFile] = None) -> None:
        """Take ownership of ``sock``, an AF_UNIX datagram socket (and its socket file)."""
        _fdpass._check_unix(sock)
        if _fdpass._raw_type(sock) & 0xF != socket.SOCK_DGRAM:
            raise ValueError(f"expected a SOCK_DGRAM socket, got {sock.type!r}")
        self._sock = sock
        self._file = socket_file
        self._path = None if socket_file is None else socket_file.address
        self._timeout: Optional[float] = sock.gettimeout()
        sock.setblocking(False)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def unbound(cls) -> UnixDatagram:
        """A socket with no address: it can send, and receive replies only where it is named."""
        return cls(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))

    @classmethod
    def bind(
        cls,
        addr: AddressArg,
        *,
        mode: Optional[int] = None,
        remove_on_close: bool = True,
    ) -> UnixDatagram:
        """A socket bound to ``addr``: a path, an abstract name, or unnamed for autobind.

        Args:
            addr: a ``UnixSocketAddr``, or a str, bytes or path-like by the one
                address rule (``"@name"`` abstract).  The unnamed address
                (``""``) asks the kernel for a unique abstract name (Linux
                autobind).
            mode: permission bits for a path's socket file.
            remove_on_close: unlink the socket file on ``close`` if it is
                still the one this bind created.

        Raises:
            OSError: ``EADDRINUSE`` for a live socket or a non-socket at the
                path (a stale socket file is replaced), with the address named.
            UnsupportedError: autobind where the kernel has none.
        """
        address = as_address(addr)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            socket_file = bind(sock, address, mode=mode)
        except OSError as exc:
            sock.close()
            if address.kind == "unnamed":
                raise UnsupportedError(
                    "autobind", backend.OS_NAME, f"binding the empty address fails: {exc}"
                ) from exc
            raise
        try:
            datagram = cls(sock, socket_file=socket_file if remove_on_close else None)
            if socket_file is not None:
                datagram._path = socket_file.address
        except BaseException:
            # Anything (a raising signal handler too) before it is handed over: never leave
            # the socket file behind.
            close_listener(sock, socket_file)
            raise
        return datagram

    @classmethod
    def pair(cls) -> Tuple[UnixDatagram, UnixDatagram]:
        """A connected pair, like ``socket.socketpair(AF_UNIX, SOCK_DGRAM)``."""
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        return cls(a), cls(b)

    def connect(self, addr: AddressArg) -> None:
        """Send to and receive from ``addr`` only; ``send`` then needs no address.

        Raises:
            OSError: from ``connect``, with the address in the message.
        """
        address = as_address(addr)
        try:
            connect_unix(self._sock, address)
        except OSError as exc:
            raise connect_error(exc, address) from exc

    # -- datagrams ---------------------------------------------------------------------

    def send(
        self,
        data: Buffers,
        fds: Sequence[Any] = (),
        credentials: Optional[SendCredentials] = None,
    ) -> int:
        """Send one datagram to the connected peer (see ``send_to``)."""
        return self._call(lambda: send_ancillary(self._sock, data, fds, credentials), write=True)

    def send_to(
        self,
        addr: AddressArg,
        data: Buffers,
        fds: Sequence[Any] = (),
        credentials: Optional[SendCredentials] = None,
    ) -> int:
        """Send one datagram to ``addr``, with ``fds`` and ``credentials`` attached.

        ``data`` may be several buffers, sent as one datagram.  The
        descriptors may be closed as soon as this returns.

        Returns:
            The number of bytes sent: all of them (a datagram is never split).

        Raises:
            OSError: ``EMSGSIZE`` past the kernel's datagram size,
                ``ECONNREFUSED``/``ENOENT`` where nobody is bound at ``addr``,
                ``ENOBUFS``/``EAGAIN`` when its queue is full.
            BlockingIOError / TimeoutError: as for a socket.
            ValueError, TypeError, UnsupportedError: as ``send_ancillary``.
        """
        destination = as_address(addr)
        return self._call(
            lambda: send_ancillary(self._sock, data, fds, credentials, 0, destination),
            write=True,
        )

    def recv_from(
        self, bufsize: int = 65536, maxfds: int = 0
    ) -> Tuple[AncillaryMessage, UnixSocketAddr]:
        """Receive one datagram and the sender's address.

        A datagram longer than ``bufsize`` is cut and the rest discarded
        (``truncated``).  Its descriptors are the caller's; more than
        ``maxfds`` are closed and raise.  ``credentials`` is set where the
        kernel attached them (``pass_credentials``).

        Raises:
            ControlTruncatedError: as ``recv_ancillary``; nothing leaks.
            BlockingIOError / TimeoutError: as for a socket.
        """
        message = self.recv_message(bufsize, maxfds)
        return message, message.address

    def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> AncillaryMessage:
        """Receive one datagram (see ``recv_from``)."""
        _io.check_sizes(bufsize, maxfds)
        return self._call(lambda: recv_ancillary(self._sock, bufsize, maxfds), write=False)

    def pass_credentials(self, enable: bool = True) -> None:
        """Have the kernel attach each sender's credentials (see ``udscompat.pass_credentials``)."""
        pass_credentials(self._sock, enable)

    def peer_credentials(self) -> ConnCredentials:
        """The connected peer's credentials, where the OS records them for datagrams.

        Linux has them for a socketpair; a datagram socket that merely
        called ``connect`` has none on most kernels (``OSError``).
        """
        return peer_credentials(self._sock)

    # -- the socket-like surface -------------------------------------------------------

    @property
    def local_addr(self) -> UnixSocketAddr:
        """This socket's address (unnamed when unbound).

        The path it was bound to, even where the kernel was handed another
        name for it (``/proc/self/fd/N/...``: see ``udscompat.bind``).
        """
        if self._path is not None:
            return self._path
        return UnixSocketAddr.from_sockaddr(self._sock.getsockname())

    @property
    def peer_addr(self) -> UnixSocketAddr:
        """The connected peer's address.

        Raises:
            OSError: ``ENOTCONN`` when not connected.
        """
        return UnixSocketAddr.from_sockaddr(self._sock.getpeername())

    def settimeout(self, timeout: Optional[float]) -> None:
        """``None`` blocks, ``0`` is non-blocking, a positive number is a timeout in seconds."""
        self._timeout = _io.check_timeout(timeout)  # NaN and infinity refused here, not later

    def gettimeout(self) -> Optional[float]:
        """The timeout set by ``settimeout``/``setblocking``."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0)``; ``True`` is ``settimeout(None)``."""
        self.settimeout(None if flag else 0.0)

    def fileno(self) -> int:
        """The socket's descriptor (-1 once closed)."""
        return self._sock.fileno()

    def close(self) -> None:
        """Close the socket; remove its socket file if it is still ours and removal was asked."""
        _fdpass.REGISTRY.release(self._sock)
        self._sock.close()
        if self._file is not None:
            self._file.remove()
            self._file = None

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._sock.fileno() == -1

    def __enter__(self) -> UnixDatagram:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<UnixDatagram closed>"
        return f"<UnixDatagram fd={self.fileno()} {self.local_addr}>"

    def _call(self, operation: Callable[[], T], *, write: bool) -> T:
        return _io.call(operation, self._wait, write=write, deadline=_io.deadline(self._timeout))

    def _wait(self, write: bool, deadline: Optional[float]) -> None:
        _io.wait_ready(self._sock, write=write, deadline=deadline)


UnixDatagram.__module__ = "udscompat"
