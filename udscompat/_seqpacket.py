"""SOCK_SEQPACKET with one contract: native where the kernel keeps it, emulated elsewhere.

``SeqpacketConn.connect``, ``SeqpacketListener`` and ``seqpacket_pair`` return
connections of one of two kinds with identical behaviour:

* native -- a kernel SOCK_SEQPACKET socket.  On Linux a zero-length message
  reads as 0 bytes, like end-of-stream; the kernel is asked to tag every
  message (``Backend.MESSAGE_MARKER``) so the two are told apart.  On FreeBSD
  15 a short read leaves the record's rest queued; it is drained and
  discarded so truncation looks the same everywhere.
* emulated -- SOCK_STREAM carrying ``_framing`` frames, used where the kernel
  has no conformant SOCK_SEQPACKET (macOS, or illumos without boundaries).

Both keep the underlying socket non-blocking and implement blocking and
timeouts with ``_io.call``, so the three modes are one code path.  Sends
and receives each hold a lock: threads may share a connection, and
messages never interleave.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import Any, List, Optional, Sequence, Tuple, Union

from udscompat import _fdpass, _framing, _io, _probes
from udscompat._address import UnixSocketAddr
from udscompat._bind import (
    AddressArg,
    SocketFile,
    as_address,
    bind,
    close_listener,
    connect_error,
    connect_unix,
)
from udscompat._errors import ControlTruncatedError, FramingError, UnsupportedError
from udscompat._platform import backend
from udscompat._records import ConnCredentials, Message

__all__ = [
    "SeqpacketConn",
    "SeqpacketListener",
    "resolve_implementation",
    "seqpacket_pair",
]

_ENV = "UDSCOMPAT_SEQPACKET"
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_MSG_TRUNC = backend.MSG_TRUNC
_TRUNCATIONS = backend.MSG_TRUNC | backend.MSG_CTRUNC
# Only SOL_SOCKET cmsgs arrive on AF_UNIX sockets, so the type alone names the marker.
_MARKER_TYPE = _io.MARKER_TYPE
_STREAM_CHUNK = 131072  # larger reads cost an mmap per recvmsg in CPython's allocator
_CHUNK_FDS = _io.FD_ROOM
_DATA_HEADER = _framing.HEADER.pack
_HEADER_SIZE = _framing.HEADER.size
_KIND_DATA = _framing.KIND_DATA


def resolve_implementation(implementation: Optional[str]) -> str:
    """``"native"`` or ``"emulated"`` for an ``implementation=`` argument.

    ``None`` takes the environment variable ``UDSCOMPAT_SEQPACKET``
    (``native``, ``emulated`` or ``auto``; default ``auto``).  ``auto`` is
    native where the probe finds a kernel SOCK_SEQPACKET that keeps the
    whole contract, emulated otherwise.

    Raises:
        ValueError: an unknown value.
        UnsupportedError: ``"native"`` where the kernel has no SOCK_SEQPACKET.
    """
    choice = implementation
    if choice is None:
        choice = os.environ.get(_ENV, "auto").strip().lower() or "auto"
        source = f"{_ENV}={choice!r}"
    else:
        source = f"implementation={choice!r}"
    if choice not in ("native", "emulated", "auto"):
        raise ValueError(f"{source}: expected 'native', 'emulated' or 'auto'")
    probe = _probes.seqpacket()
    if choice == "auto":
        return "native" if probe.conformant else "emulated"
    if choice == "native" and not probe.available:
        raise UnsupportedError("native SOCK_SEQPACKET sockets", backend.OS_NAME, probe.reason)
    return choice


class SeqpacketConn:
    """A connected seqpacket socket: one ``send`` is one ``recv_message``.

    Create one with ``SeqpacketConn.connect``, ``SeqpacketListener.accept``
    or ``seqpacket_pair``.  The two implementations share this interface;
    ``implementation`` tells which one this is.
    """

    implementation: str = ""
    #: The unsent rest of a message already accepted by ``send``: only the emulation's frames
    #: go out in parts.  An attribute, not a method: asyncio checks it around every send.
    _pending: Union[bytes, memoryview] = b""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout: Optional[float] = None
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._eof = False
        sock.setblocking(False)

    # -- construction ------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        addr: AddressArg,
        *,
        implementation: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> SeqpacketConn:
        """Connect to a ``SeqpacketListener`` (of the same implementation) at ``addr``.

        Raises:
            OSError: from ``connect``, with the address in the message.  A
                listener of the other implementation answers ``EPROTOTYPE``
                at a path and ``ECONNREFUSED`` at an abstract name (Linux
                keys those by socket type); the message says which was found.
        """
        address = as_address(addr)
        impl = resolve_implementation(implementation)
        sock = socket.socket(
            socket.AF_UNIX, backend.SOCK_SEQPACKET if impl == "native" else socket.SOCK_STREAM
        )
        try:
            sock.settimeout(timeout)
            connect_unix(sock, address)
        except OSError as exc:
            sock.close()
            if isinstance(exc, TimeoutError):
                raise
            raise connect_error(exc, address, sock) from exc
        conn = _wrap(sock, impl)
        conn.settimeout(timeout)
        return conn

    # -- the socket-like surface -------------------------------------------------------

    def send(self, data: Any, fds: Sequence[Any] = ()) -> int:
        """Send ``data`` as one message, with ``fds`` attached to it.

        Returns ``len(data)``: a message is never split.  The descriptors may
        be closed as soon as this returns.

        Raises:
            BlockingIOError: non-blocking mode and nothing of the message could be sent.
            TimeoutError: the timeout passed before the message could start.
            ValueError: too many descriptors, or a message over the size limit.
            OSError: ``EPIPE`` once the peer has gone, and other send errors.
        """
        raise NotImplementedError  # pragma: no cover - each implementation defines it

    def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        """Receive one message, or ``None`` at end-of-stream (and every time after).

        A message longer than ``bufsize`` is cut to ``bufsize`` and the rest
        discarded (``Message.truncated``).  Its descriptors belong to the
        caller; more than ``maxfds`` are closed and raise.

        Raises:
            ControlTruncatedError: more descriptors than ``maxfds``, or the
                kernel truncated the control data; none leak, ``.data`` keeps the payload.
            FramingError: (emulated) the peer broke the framing; the connection is closed.
            BlockingIOError / TimeoutError: as for a socket.
        """
        raise NotImplementedError  # pragma: no cover

    def recv(self, bufsize: int) -> bytes:
        """Like ``socket.recv``: one message's payload, ``b""`` at end-of-stream.

        A message that carries descriptors raises ``ControlTruncatedError``
        (use ``recv_message`` to take them).
        """
        message = self.recv_message(bufsize)
        return b"" if message is None else message.data

    def peer_credentials(self) -> ConnCredentials:
        """The peer's credentials, as ``udscompat.peer_credentials`` reads them."""
        return backend.peer_credentials(self._sock)

    @property
    def local_addr(self) -> UnixSocketAddr:
        """This end's address (unnamed for a client or a socketpair end)."""
        return UnixSocketAddr.from_sockaddr(self._sock.getsockname())

    @property
    def peer_addr(self) -> UnixSocketAddr:
        """The peer's address."""
        return UnixSocketAddr.from_sockaddr(self._sock.getpeername())

    def shutdown(self, how: int) -> None:
        """Like ``socket.shutdown``; ``SHUT_WR`` lets the peer read end-of-stream."""
        self._sock.shutdown(how)

    def settimeout(self, timeout: Optional[float]) -> None:
        """``None`` blocks, ``0`` is non-blocking, a positive number is a timeout in seconds."""
        if timeout is not None:
            timeout = float(timeout)
            if timeout < 0:
                raise ValueError("Timeout value out of range")
        self._timeout = timeout

    def gettimeout(self) -> Optional[float]:
        """The timeout set by ``settimeout``/``setblocking``."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0)``; ``True`` is ``settimeout(None)``."""
        self.settimeout(None if flag else 0.0)

    def fileno(self) -> int:
        """The underlying socket's descriptor (-1 once closed)."""
        return self._sock.fileno()

    def _buffered(self) -> bool:
        """Whether a receive may succeed without the socket being readable (decoded data)."""
        return False

    def _send_unsent(self) -> None:
        """Send what ``_pending`` holds, as far as the socket takes it now."""

    def close(self) -> None:
        """Close the connection; held descriptors are closed with it."""
        _fdpass.REGISTRY.release(self._sock)
        self._sock.close()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called."""
        return self._sock.fileno() == -1

    def __enter__(self) -> SeqpacketConn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"fd={self.fileno()}"
        return f"<{type(self).__name__} {self.implementation} {state}>"

    # -- shared helpers ----------------------------------------------------------------

    def _call(self, operation: Any, *, write: bool) -> Any:
        return _io.call(self._sock.fileno(), operation, write=write, timeout=self._timeout)


class _NativeConn(SeqpacketConn):
    implementation = "native"

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        _probes.enable_message_marker(sock)
        self._partial_records = _probes.seqpacket().short_read == "partial"
        self._flags = backend.SEQPACKET_SEND_FLAGS | _NOSIGNAL
        self._message_flags = backend.MSG_EOR | backend.MSG_TRUNC
        try:
            self._recv_flags: Optional[int] = _probes.cmsg_cloexec_flag()
        except OSError:
            self._recv_flags = None  # probe failed (EMFILE?): the general path sets FD_CLOEXEC

    # The kernel keeps each message whole, so native sends and receives take no lock.

    def send(self, data: Any, fds: Sequence[Any] = ()) -> int:
        if fds:
            numbers = _io.check_fds(fds)
            self._call(
                lambda: _io.send_with_fds(self._sock, [data], numbers, self._flags), write=True
            )
            if _fdpass.hold_sent_fds():
                _fdpass.REGISTRY.hold(self._sock, numbers)
            return len(memoryview(data))
        # A SOCK_SEQPACKET send is all or nothing, so its count is the message's length.
        try:
            return self._sock.send(data, self._flags)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
            sent: int = self._call(lambda: self._sock.send(data, self._flags), write=True)
            return sent

    def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        if bufsize < 0 or maxfds < 0:
            _io.check_sizes(bufsize, maxfds)
        if self._eof:
            return None
        if self._recv_flags is not None:
            # The common case inline: a whole message with no descriptors, at most the marker.
            try:
                data, ancdata, flags, _ = _io.recvmsg(self._sock, bufsize, self._recv_flags)
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise
            else:
                if (
                    data
                    and not flags & _TRUNCATIONS
                    and (not ancdata or (len(ancdata) == 1 and ancdata[0][1] == _MARKER_TYPE))
                ):
                    return Message(data, [], False)
                return self._finish(data, ancdata, flags, maxfds, bufsize)
        try:
            data, fds, flags, _, marked = _io.recv_with_fds(self._sock, bufsize, maxfds)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
            data, fds, flags, _, marked = self._call(
                lambda: _io.recv_with_fds(self._sock, bufsize, maxfds), write=False
            )
        return self._message(data, fds, flags, marked, bufsize)

    def _finish(
        self, data: bytes, ancdata: List[Any], flags: int, maxfds: int, bufsize: int
    ) -> Optional[Message]:
        fds, marked = _io.collect_fds(data, ancdata, flags, maxfds, set_cloexec=False)
        return self._message(data, fds, flags, marked, bufsize)

    def _message(
        self, data: bytes, fds: List[int], flags: int, marked: bool, bufsize: int
    ) -> Optional[Message]:
        if not (data or fds or marked or flags & self._message_flags):
            self._eof = True
            return None
        truncated = bool(flags & _MSG_TRUNC)
        if self._partial_records and not flags & backend.MSG_EOR and len(data) == bufsize:
            truncated = self._discard_rest_of_record() or truncated
        if fds and _fdpass.REGISTRY.originals:
            fds = _fdpass.guard_reused(fds)
        return Message(data, fds, truncated)

    def _discard_rest_of_record(self) -> bool:
        # FreeBSD 15 leaves the rest of a record queued and marks its end with MSG_EOR.
        while True:
            try:
                data, _, flags, _, _ = _io.recv_with_fds(self._sock, _STREAM_CHUNK, 0)
            except ControlTruncatedError:
                continue
            except BlockingIOError:
                return True
            if flags & backend.MSG_EOR or not data:
                return True


class _EmulatedConn(SeqpacketConn):
    implementation = "emulated"

    def __init__(
        self,
        sock: socket.socket,
        max_message_size: int = _framing.DEFAULT_MAX_MESSAGE_SIZE,
        max_fds: int = _framing.DEFAULT_MAX_FDS,
    ) -> None:
        super().__init__(sock)
        self._encoder = _framing.FrameEncoder(max_message_size, max_fds)
        self._decoder = _framing.FrameDecoder(max_message_size, max_fds)
        self._pending = memoryview(b"")
        self._broken: Optional[FramingError] = None
        try:
            self._recv_flags: Optional[int] = _probes.cmsg_cloexec_flag()
        except OSError:
            self._recv_flags = None  # probe failed (EMFILE?): the general path sets FD_CLOEXEC

    def send(self, data: Any, fds: Sequence[Any] = ()) -> int:
        numbers = _io.check_fds(fds) if fds else None
        payload = data if type(data) is bytes else memoryview(data).cast("B")
        size = len(payload)
        hold = numbers is not None and _fdpass.hold_sent_fds()
        if numbers is None and size <= self._encoder.max_message_size:
            header = _DATA_HEADER(size, 0, _KIND_DATA, 0)  # what header() builds, inline
        else:
            header = self._encoder.header(size, len(numbers) if numbers else 0, ack_requested=hold)
        # acquire/try/finally rather than ``with``: this runs per message, and on CPython 3.11
        # the ``with`` costs about 80 ns more.
        self._send_lock.acquire()
        try:
            if self._pending or self._broken is not None or self._decoder.pending_acks:
                self._before_send()
            # Small frames go out as one joined buffer: one copy is cheaper than an iovec.
            frame = header + payload if size < 4096 else None
            try:
                if numbers is None and frame is not None:
                    sent = self._sock.send(frame, _NOSIGNAL)  # the common case, inline
                else:
                    sent = self._send_frame(header, payload, frame, numbers)
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise
                sent = self._call(
                    lambda: self._send_frame(header, payload, frame, numbers), write=True
                )
            if hold and numbers is not None:
                _fdpass.REGISTRY.hold(self._sock, numbers)
            if sent < _HEADER_SIZE + size:
                whole = frame if frame is not None else header + bytes(payload)
                self._pending = memoryview(whole)[sent:]
                self._flush(block=self._timeout is None)
        finally:
            self._send_lock.release()
        return size

    def _before_send(self) -> None:
        """Refuse a broken connection; send owed acknowledgements and an earlier frame's rest."""
        self._check_broken()
        if self._decoder.pending_acks:
            self._flush_acks()
        if self._pending:
            self._flush(block=True)
            if self._pending:
                raise BlockingIOError(errno.EAGAIN, "previous message still being sent")

    def _send_frame(self, header: bytes, payload: Any, frame: Optional[bytes], numbers: Any) -> int:
        if numbers is None:
            if frame is not None:
                return self._sock.send(frame, _NOSIGNAL)
            return self._sock.sendmsg([header, payload], [], _NOSIGNAL)
        buffers = [frame] if frame is not None else [header, payload]
        return _io.send_with_fds(self._sock, buffers, numbers, _NOSIGNAL)

    def _flush(self, *, block: bool) -> None:
        """Send the rest of a partly sent frame; in timeout mode, until the deadline."""
        while self._pending:
            try:
                if block:
                    sent = self._call(lambda: self._sock.send(self._pending, _NOSIGNAL), write=True)
                else:
                    sent = self._sock.send(self._pending, _NOSIGNAL)
            except (BlockingIOError, TimeoutError):
                return  # committed; the next send, receive or close goes on with it
            self._pending = self._pending[sent:]

    def _buffered(self) -> bool:
        return not self._decoder.idle  # decoded frames, end-of-stream or an error wait

    def _send_unsent(self) -> None:
        with self._send_lock:
            self._flush(block=False)

    def _flush_acks(self) -> None:
        count = self._decoder.take_acks()
        if count:
            frame = self._encoder.ack(count)
            self._pending = (
                memoryview(bytes(self._pending) + frame) if self._pending else memoryview(frame)
            )
            self._flush(block=False)

    def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        if bufsize < 0 or maxfds < 0:
            _io.check_sizes(bufsize, maxfds)
        decoder = self._decoder
        self._recv_lock.acquire()  # not ``with``: see send
        try:
            # Nothing decoded waits (nor an error): read first, and decode in the same step.
            event: Any = self._read_and_decode() if decoder.idle else None
            while True:
                if event is None:
                    if self._broken is not None:
                        self._check_broken()
                    try:
                        event = decoder.next_event()
                    except FramingError as exc:
                        self._break(exc)
                        raise
                if type(event) is Message:
                    if decoder.pending_acks:
                        self._acknowledge()
                    if event.fds or len(event.data) > bufsize:
                        return _fit(event, bufsize, maxfds)
                    return event
                if event is _framing.NEED_DATA:
                    event = self._read_and_decode()
                elif isinstance(event, _framing.Ack):
                    _fdpass.REGISTRY.release(self._sock, event.frames)
                    event = None
                else:
                    return None  # EndOfStream
        finally:
            self._recv_lock.release()

    def _read_and_decode(self) -> Any:
        """Read one chunk from the socket and return the decoder's next event."""
        if self._recv_flags is not None:
            # The common case inline: a chunk without descriptors.
            try:
                data, ancdata, flags, _ = _io.recvmsg(self._sock, _STREAM_CHUNK, self._recv_flags)
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise
            else:
                if ancdata or flags & _TRUNCATIONS:
                    fds, _ = _io.collect_fds(data, ancdata, flags, _CHUNK_FDS, set_cloexec=False)
                else:
                    fds = []
                return self._decode(data, fds)
        try:
            data, fds, _, _, _ = _io.recv_with_fds(self._sock, _STREAM_CHUNK, _CHUNK_FDS)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
            data, fds, _, _, _ = self._call(
                lambda: _io.recv_with_fds(self._sock, _STREAM_CHUNK, _CHUNK_FDS), write=False
            )
        return self._decode(data, fds)

    def _decode(self, data: bytes, fds: List[int]) -> Any:
        try:
            return self._decoder.receive_and_next(data, fds)
        except FramingError as exc:
            self._break(exc)
            raise

    def _acknowledge(self) -> None:
        if self._decoder.pending_acks and self._send_lock.acquire(blocking=False):
            try:
                self._flush_acks()
            finally:
                self._send_lock.release()

    def _break(self, exc: FramingError) -> None:
        self._broken = exc
        self._decoder.close()
        super().close()

    def _check_broken(self) -> None:
        if self._broken is not None:
            raise FramingError(f"connection closed after an earlier error: {self._broken.strerror}")

    def close(self) -> None:
        if not self.closed:
            self._flush(block=False)
        self._decoder.close()
        super().close()


def _fit(message: Message, bufsize: int, maxfds: int) -> Message:
    """Apply the caller's limits to a whole message, as the kernel does for native ones."""
    _io.refuse_excess_fds(message.fds, maxfds, message.data[:bufsize])
    if len(message.data) > bufsize:
        return Message(message.data[:bufsize], message.fds, True)
    return message


def _wrap(sock: socket.socket, implementation: str) -> SeqpacketConn:
    return _NativeConn(sock) if implementation == "native" else _EmulatedConn(sock)


def seqpacket_pair(*, implementation: Optional[str] = None) -> Tuple[SeqpacketConn, SeqpacketConn]:
    """A connected pair of seqpacket connections, like ``socket.socketpair``."""
    impl = resolve_implementation(implementation)
    kind = backend.SOCK_SEQPACKET if impl == "native" else socket.SOCK_STREAM
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    return _wrap(a, impl), _wrap(b, impl)


class SeqpacketListener:
    """A listening seqpacket socket at a path or abstract address.

    Args:
        addr: a ``UnixSocketAddr`` or a path.  A stale socket file at the
            path is replaced; a live one is not (``EADDRINUSE``).
        backlog: the ``listen`` backlog.
        implementation: ``"native"``, ``"emulated"`` or ``None`` (see
            ``resolve_implementation``); clients must use the same.
        mode: permission bits for the socket file.
        remove_on_close: unlink the socket file on ``close`` if it is still ours.
    """

    def __init__(
        self,
        addr: Union[AddressArg, UnixSocketAddr],
        backlog: int = 128,
        *,
        implementation: Optional[str] = None,
        mode: Optional[int] = None,
        remove_on_close: bool = True,
    ) -> None:
        self.implementation = resolve_implementation(implementation)
        kind = backend.SOCK_SEQPACKET if self.implementation == "native" else socket.SOCK_STREAM
        self._sock = socket.socket(socket.AF_UNIX, kind)
        self._file: Optional[SocketFile] = None
        try:
            self._file = bind(self._sock, addr, mode=mode, backlog=backlog)
        except BaseException:
            close_listener(self._sock, self._file)
            raise
        # getsockname() names /proc/self/fd/N/... for a socket bound through a descriptor.
        self._path = None if self._file is None else self._file.address
        if not remove_on_close:
            self._file = None
        self._sock.setblocking(False)
        self._timeout: Optional[float] = None

    def accept(self) -> Tuple[SeqpacketConn, UnixSocketAddr]:
        """Wait for a connection; returns it and the peer's address."""
        sock, address = _io.call(
            self._sock.fileno(), self._sock.accept, write=False, timeout=self._timeout
        )
        return _wrap(sock, self.implementation), UnixSocketAddr.from_sockaddr(address)

    @property
    def local_addr(self) -> UnixSocketAddr:
        """The address this listener is bound to."""
        return self._path or UnixSocketAddr.from_sockaddr(self._sock.getsockname())

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        """Timeout for ``accept``: ``None`` blocks, ``0`` is non-blocking."""
        if timeout is not None and timeout < 0:
            raise ValueError("Timeout value out of range")
        self._timeout = None if timeout is None else float(timeout)

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0)``."""
        self.settimeout(None if flag else 0.0)

    def close(self) -> None:
        """Stop listening; remove the socket file if it is still ours and removal was asked."""
        file, self._file = self._file, None
        close_listener(self._sock, file)  # removed first: never stale while it is still there

    def __enter__(self) -> SeqpacketListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


SeqpacketConn.__module__ = "udscompat"
SeqpacketListener.__module__ = "udscompat"
