"""SOCK_SEQPACKET with one contract: native where the kernel keeps it, emulated elsewhere.

``SeqpacketConn.connect``, ``SeqpacketListener``, ``seqpacket_pair`` and
``SeqpacketConn.from_socket`` return connections of one of two kinds with
identical behaviour:

* native -- a kernel SOCK_SEQPACKET socket.  On Linux a zero-length message
  reads as 0 bytes, like end-of-stream; the kernel is asked to tag every
  message (``Backend.MESSAGE_MARKER``) so the two are told apart.  On FreeBSD
  15 a short read leaves the record's rest queued; it is drained and
  discarded so truncation looks the same everywhere.
* emulated -- SOCK_STREAM carrying ``_framing`` frames, used where the kernel
  has no conformant SOCK_SEQPACKET (macOS, or illumos without boundaries).

Each kind has one send and one receive routine.  Both keep the socket
non-blocking and wait through ``_io``: a public call computes its deadline
once, so a ``settimeout(1.0)`` call ends within about a second whatever the
peer does, and blocking, non-blocking and timeout modes are one code path.

Threads may share a connection: native messages are whole in the kernel;
emulated sends and receives each hold a lock, so frames never interleave.  A
call that finds the lock held waits for it within its own deadline (that one
deadline then bounds its I/O too); a non-blocking one raises
``BlockingIOError`` instead of waiting, as a native call never waits for
another thread's.
``close()`` from another thread wakes a thread blocked in ``send`` or
``recv_message`` (the socket is shut down first), which then raises ``EBADF``.

Signals: a raising signal handler (``KeyboardInterrupt``) can interrupt any
call.  Interrupted while waiting, nothing is lost: a partly sent emulated
frame is finished by the next send (or ``close``), a partly received one is
kept.  Interrupted between a system call and the recording of its result, an
emulated connection can no longer know where the next frame starts: it closes
itself and the next call raises ``ConnectionAbortedError`` -- never a corrupt
message, never a ``FramingError`` blaming the peer.  That window is a few
microseconds for a read that is one whole frame (the compiled receive records
it before any Python code runs), but a read that holds several frames, or
part of one, is decoded in Python within it: with a fast peer, up to a whole
64 KiB chunk's decoding.  Under a storm of raising handlers (every 300 us, a
peer sending as fast as it can) an emulated receive was aborted after 1-4 of
them; a native one never is.  A message (native or emulated) whose
receive is interrupted as it is handed over is lost with its descriptors,
exactly as with ``socket.recvmsg``, whose result CPython drops when a handler
raises right after the system call returned.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import threading
import time
from typing import (
    Any,
    Callable,
    Iterator,
    List,
    NoReturn,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from udscompat import _accel, _ancillary, _fdpass, _framing, _io, _probes
from udscompat._address import UnixSocketAddr
from udscompat._ancillary import Buffers
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
from udscompat._errors import ControlTruncatedError, FramingError, UnsupportedError
from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._platform import backend
from udscompat._records import (
    ConnCredentials,
    Message,
    ReceivedInto,
    WritableBuffers,
    new_message,
)

T = TypeVar("T")

__all__ = [
    "SeqpacketConn",
    "SeqpacketListener",
    "resolve_implementation",
    "seqpacket_pair",
]

_ENV = "UDSCOMPAT_SEQPACKET"
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
#: A native connection's every system call is non-blocking by its own flag: the socket's
#: O_NONBLOCK belongs to the open file description, which another holder (a forked child,
#: a process the descriptor was passed to) can make blocking -- a timed call then waited
#: in the kernel past its deadline, and close() from another thread could not wake it.
_DONTWAIT = getattr(socket, "MSG_DONTWAIT", 0)
#: An emulated connection's send flags: MSG_DONTWAIT as for native connections (O_NONBLOCK
#: belongs to the open file description, which another holder of the descriptor can clear).
_STREAM_SEND = int(_NOSIGNAL | _DONTWAIT)  # a plain int: IntFlag arithmetic is a Python call
_MSG_TRUNC = backend.MSG_TRUNC
_MSG_CTRUNC = backend.MSG_CTRUNC
_MSG_EOR = backend.MSG_EOR
_TRUNCATIONS = backend.MSG_TRUNC | backend.MSG_CTRUNC
# Only SOL_SOCKET cmsgs arrive on AF_UNIX sockets, so the type alone names the marker.
_MARKER_TYPE = _io.MARKER_TYPE
_ANCBUF = _io.ANCBUF_SIZE
_NONBLOCKING = _io.NONBLOCKING
_monotonic = _io._monotonic
_STREAM_CHUNK = 131072  # larger reads cost an mmap per recvmsg in CPython's allocator
#: A non-blocking emulated receive reads at most this many chunks, then says "would block"
#: with its progress kept: an asyncio readiness callback never runs unbounded work.  16
#: chunks hold a whole maximum-size message.
_READS_PER_CALL = 16
#: A native receive with a larger ``bufsize`` sizes its buffer by what is queued (FIONREAD)
#: instead of allocating all of it.
_LARGE_BUFSIZE = 262144
#: The compiled receive where udscompat._accel chose it, else None (see _io.compiled_recvmsg).
_COMPILED_RECV = _io.compiled_recv_message
_NO_LIMIT = 1 << 30  # the decoder, not collect_fds, limits a chunk's descriptors
_NO_WAIT = (False,)
_WAIT = (True,)
#: A timed receive's deadline not computed yet: it took its lock without waiting, so the
#: deadline starts when it first must wait (microseconds after the call's start, with no
#: clock read on the path that never waits).  A real deadline, a time.monotonic() value,
#: is never negative; compared by identity.
_NOT_YET = -1.0
#: The emulated connections' lock type: one whose try-acquire the compiled methods make in C
#: where the accelerator runs (a threading.Lock's costs them a Python call with its argument
#: parsing, ~1,000 instructions), else threading.Lock.
_EMULATED_LOCK: Callable[[], threading.Lock] = (
    threading.Lock if _accel.speedups is None else _accel.speedups.Lock
)
#: The types of ``data`` that mean several buffers sent as one message.
_SEVERAL = (list, tuple)
_MSG_PEEK = int(socket.MSG_PEEK)  # a plain int: IntFlag arithmetic is a Python call
#: How soon a thread blocked on a duplicated connection notices that it was closed (ms;
#: every other wait looks again after ``_io.wait_ready``'s second).
_DUP_WAKE_MS = 50
_DATA_HEADER = _framing.HEADER.pack
_HEADER_SIZE = _framing.HEADER.size
_KIND_DATA = _framing.KIND_DATA
_NEED_DATA = _framing.NEED_DATA
_ACK = _framing.FrameEncoder.ack


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


def _closed_error() -> OSError:
    return OSError(errno.EBADF, "the connection is closed")


def _run_send_probes() -> None:
    """Run the probes a send with descriptors consults, so that no send runs one.

    A connection is made here, as ``_io.cloexec_flag()`` already probes for receives.
    Inside a send a probe runs in the system-call window (``_io.rights`` consults
    ``fd_control_padding``), where a raising signal handler leaks the probe's pipe
    (``os.pipe``'s result lost) or a socket (``socket.socketpair`` is Python code) and
    leaves the window marked, so the next send aborts.  Each answer is cached after the
    first: later calls cost a lookup.
    """
    # peek_installs_fds: a peek asks it before its receive, and where it cannot run then
    # (EMFILE) refuses a message with descriptors (_io.peek_recvmsg): run it while it can.
    for probe in (
        _probes.same_process_fd_reuse,
        _probes.fd_control_padding,
        _probes.peek_installs_fds,
    ):
        try:
            probe()
        except OSError:
            pass  # could not run now (EMFILE?): the send tries again
    try:
        _fdpass.hold_sent_fds()
    except ValueError:
        pass  # a bad UDSCOMPAT_HOLD_SENT_FDS: the first send with descriptors says so


def _lock_wait(lock: threading.Lock, deadline: Optional[float], holder: str) -> Iterator[bool]:
    """The wait of a call that found its lock (``_send_lock``, ``_recv_lock``) held.

    The lock wait is part of the call, which its timeout bounds (a deadline
    for the whole call, as CPython's ``sock_call_ex`` keeps it): ``deadline``
    None waits as long as it takes; a deadline waits what is left of it (the
    caller raises ``TimeoutError`` if it passes first).  Either leaves the
    connection as it was: nothing is sent, read or marked.

    Returns an iterator whose one item is the acquire's result, taken by the
    caller's ``for taken in ...: break``: the acquire runs inside ``FOR_ITER``,
    which stores its item with no eval-breaker check in between (CPython
    3.10+ runs signal handlers only at calls and backward jumps), so a
    raising handler never leaves the lock taken without the caller's
    ``finally`` knowing; one raising during the wait ends it, lock not
    taken.  (Python 3.9 checks for signals before every instruction: there a
    handler raising in that one-instruction gap leaves the lock held.)  The
    caller's first try, ``iter(self._send_try, None)``, is the same without
    waiting, and cheaper than ``with lock:`` (about 130 instructions).

    Raises:
        BlockingIOError: ``deadline`` is ``NONBLOCKING``: a non-blocking call
            never waits, as a native socket's never waits for another
            thread's call (here ``holder``, which may be waiting for the peer).
    """
    if deadline is None:
        return iter(lock.acquire, None)
    if deadline == _NONBLOCKING:
        raise BlockingIOError(
            errno.EAGAIN, f"another thread's {holder} holds the connection; try again later"
        )
    left = min(max(deadline - _monotonic(), 0.0), threading.TIMEOUT_MAX)
    return iter(functools.partial(lock.acquire, True, left), None)


def _holding(lock: threading.Lock, run: Callable[[], None]) -> None:
    """``run()`` under ``lock`` if it is free now; skip it if another thread holds it.

    The acquire runs inside ``list.extend``, so its result is stored before a
    signal handler can run: a handler raising right after a plain
    ``lock.acquire(False)`` would leave the lock held for good.
    """
    got: List[bool] = []
    try:
        got.extend(map(lock.acquire, _NO_WAIT))
        if got[0]:
            run()
    finally:
        if got and got[0]:
            lock.release()


class SeqpacketConn:
    """A connected seqpacket socket: one ``send`` is one ``recv_message``.

    Create one with ``SeqpacketConn.connect``, ``SeqpacketListener.accept``,
    ``seqpacket_pair`` or ``SeqpacketConn.from_socket``.  The two
    implementations share this interface; ``implementation`` tells which one
    this is.
    """

    implementation: str = ""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._timeout: Optional[float] = None
        self._closed = False
        self._eof = False
        #: Threads blocked in a wait on this connection, for ``close`` to wake.
        self._waiting: Set[int] = set()
        #: ``pass_credentials()`` is on: messages report the credentials the kernel attached.
        self._credentials = False
        #: The socket file ``connect(local_addr=...)`` created, removed on ``close``.
        self._file: Optional[SocketFile] = None
        #: Addresses known better than getsockname()/getpeername() tell them (a path reached
        #: through /proc/self/fd, the address connected to).
        self._local: Optional[UnixSocketAddr] = None
        self._peer: Optional[UnixSocketAddr] = None
        #: Objects made by ``dup()`` that share this kernel socket (None: never duplicated).
        self._group: Optional[_Group] = None
        sock.setblocking(False)
        _run_send_probes()

    # -- construction ------------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        addr: AddressArg,
        *,
        local_addr: Optional[AddressArg] = None,
        implementation: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> SeqpacketConn:
        """Connect to a ``SeqpacketListener`` (of the same implementation) at ``addr``.

        Args:
            addr: the listener's address, by udscompat's one address rule
                (``"@name"`` is abstract).
            local_addr: bind this end there first (the uds crate's
                ``connect_from_to_unix_addr``), with ``udscompat.bind``'s
                rules (a stale socket file is replaced, a live one never);
                the peer sees it as ``peer_addr``.  A socket file created
                for it is removed on ``close``.
            implementation: ``"native"``, ``"emulated"`` or ``None`` (see
                ``resolve_implementation``).
            timeout: for the connect, and then the connection's timeout.

        Raises:
            OSError: from ``bind`` (``EADDRINUSE`` for a live socket at
                ``local_addr``) or ``connect``, with the address in the
                message.  A listener of the other implementation answers
                ``EPROTOTYPE`` at a path and ``ECONNREFUSED`` at an abstract
                name (Linux keys those by socket type); the message says
                which was found.
        """
        address = as_address(addr)
        local = None if local_addr is None else as_address(local_addr, "local_addr")
        impl = resolve_implementation(implementation)
        timeout = _io.check_timeout(timeout)
        sock = socket.socket(
            socket.AF_UNIX, backend.SOCK_SEQPACKET if impl == "native" else socket.SOCK_STREAM
        )
        file = None
        try:
            if local is not None:
                file = bind(sock, local)
            sock.settimeout(timeout)
            try:
                _connect_within(sock, address, _io.deadline(timeout))
            except OSError as exc:
                if isinstance(exc, TimeoutError):
                    raise
                raise connect_error(exc, address, sock) from exc
            # Inside the try: an exception (a raising signal handler) while the connection
            # object is made must not leave the socket file of local_addr behind.
            conn = _wrap(sock, impl)
            conn._file = file
            conn._local = None if file is None else file.address
            conn._peer = address
            conn.settimeout(timeout)
        except BaseException:
            close_listener(sock, file)  # the file first: never left behind, never stale
            raise
        return conn

    @classmethod
    def from_socket(cls, sock: socket.socket) -> SeqpacketConn:
        """Take over a connected AF_UNIX socket as a seqpacket connection.

        A SOCK_SEQPACKET socket becomes a native connection, a SOCK_STREAM
        one an emulated connection (its peer must speak the emulation's
        framing: another udscompat emulated connection).  The connection owns
        the socket from now on and makes it non-blocking.

        The family and type are the kernel's (``SO_DOMAIN`` where the OS has
        it, ``SO_TYPE``), not what the socket object was told: CPython
        believes ``socket.socket(family, type, fileno=fd)``, and a stream
        taken for a seqpacket socket would lose every message boundary.

        Raises:
            TypeError: ``sock`` is not a ``socket.socket``.
            ValueError: ``sock`` is not AF_UNIX, or neither SOCK_SEQPACKET
                nor SOCK_STREAM, or the kernel's family or type is not what
                the socket object says (the message names them).
            OSError: the kernel could not be asked (``EBADF``: closed;
                ``ENOTSOCK``: not a socket).
        """
        if not isinstance(sock, socket.socket):
            raise TypeError(f"sock must be a socket.socket, not {type(sock).__name__}")
        if sock.family != socket.AF_UNIX:
            name = _enum_name(sock.family, socket.AddressFamily)
            raise ValueError(f"sock must be an AF_UNIX socket, not family {name}")
        kind = sock.type
        _check_kernel_agrees(sock, kind)
        if kind == backend.SOCK_SEQPACKET:
            return _NativeConn(sock)
        if kind == socket.SOCK_STREAM:
            return _EmulatedConn(sock)
        name = _enum_name(kind, socket.SocketKind)
        raise ValueError(f"sock must be SOCK_SEQPACKET or SOCK_STREAM, not type {name}")

    # -- the socket-like surface -------------------------------------------------------

    def send(
        self, data: Buffers, fds: Sequence[Any] = (), credentials: Optional[SendCredentials] = None
    ) -> int:
        """Send ``data`` as one message, with ``fds`` (and ``credentials``) attached to it.

        Returns the number of bytes of ``data``: a message is never split.
        ``data`` is a bytes-like object, or a list or tuple of them sent as
        one message (vectored: the uds crate's ``send_vectored``).  The
        descriptors may be closed as soon as this returns.  ``fds`` may be
        any iterable (read once) of ints or objects with ``fileno()``.
        ``credentials`` (``udscompat.send_credentials()``, or with privilege
        on Linux other ids) go with this message as the kernel attaches
        them (see ``udscompat.send_ancillary``; the receiver sees them after
        ``pass_credentials()``).

        An emulated connection sends a large message in parts when the peer
        reads slowly: the rest, once the first part went out, is kept and
        finished first by the next ``send``, ``flush`` or ``close``.  So a
        non-blocking (or timed) send raises ``BlockingIOError`` (or
        ``TimeoutError``) only if none of the message went out.

        Raises:
            BlockingIOError: non-blocking mode and nothing of the message could be
                sent (emulated: also while another thread's send holds the connection).
            TimeoutError: the timeout passed before the message could start (emulated:
                the wait for another thread's send included; see ``settimeout``).
            ValueError: too many descriptors, a descriptor out of range, or a
                message over the size limit (before anything is sent).
            TypeError: an item of ``fds`` is a bool or not a descriptor, or
                ``data`` is not bytes-like.
            UnsupportedError: ``credentials`` where the kernel has no
                ancillary credentials, ids not this process's own where the
                kernel fills in the truth, or with descriptors on DragonFly.
            ConnectionError: the peer has gone: ``BrokenPipeError``
                (``EPIPE``); on Linux, the first native send after the peer
                closed with messages unread raises ``ConnectionResetError``
                (``ECONNRESET``: the kernel says they were discarded) once,
                ``EPIPE`` after.  An emulated send says ``EPIPE``, and the
                next receive ``ECONNRESET`` (see ``recv_message``).
            OSError: ``EBADF`` after ``close``, ``EPERM``/``ESRCH`` (Linux)
                for ids the sender may not claim, and other send errors.
            ConnectionAbortedError: (emulated) an exception interrupted an
                earlier send mid-frame; the connection was closed.
        """
        raise NotImplementedError  # pragma: no cover - each implementation defines it

    def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        """Receive one message, or ``None`` at end-of-stream (and every time after).

        A message longer than ``bufsize`` is cut to ``bufsize`` and the rest
        discarded (``Message.truncated``).  Its descriptors belong to the
        caller; more than ``maxfds`` are closed and raise.  After
        ``pass_credentials()``, ``Message.credentials`` holds the sender's
        credentials as the kernel attached them.

        Raises:
            ControlTruncatedError: more descriptors than ``maxfds``, or the
                kernel truncated the control data (this process is out of
                descriptors?); none leak, ``.data`` keeps the payload, and the
                next call receives the next message.
            FramingError: (emulated) the peer broke the framing; the connection is closed.
            ConnectionAbortedError: (emulated) an exception interrupted an
                earlier receive mid-chunk; the connection was closed.
            BlockingIOError / TimeoutError: as for a socket; emulated, the wait
                for another thread's receive is part of the call (see ``settimeout``).
            ConnectionResetError: (Linux) once, instead of end-of-stream,
                when the peer closed with messages unread and no native
                send reported it first.
            OSError: ``EBADF`` after ``close`` (also in a thread that was
                blocked here when another thread closed the connection).
            TypeError / ValueError: ``bufsize`` or ``maxfds`` is not an int, or negative.
        """
        raise NotImplementedError  # pragma: no cover

    def recv(self, bufsize: int) -> bytes:
        """Like ``socket.recv``: one message's payload, ``b""`` at end-of-stream.

        A message that carries descriptors raises ``ControlTruncatedError``
        (use ``recv_message`` to take them).
        """
        message = self.recv_message(bufsize)
        return b"" if message is None else message.data

    def recv_message_into(
        self, buffers: WritableBuffers, maxfds: int = 0
    ) -> Optional[ReceivedInto]:
        """Receive one message into ``buffers``; ``None`` at end-of-stream.

        ``buffers`` is one writable bytes-like object (a ``bytearray``, a
        ``memoryview``, an ``array``) or a list or tuple of them, filled in
        order (the uds crate's ``recv_vectored``).  A message longer than
        all of them together is cut and the rest discarded
        (``truncated``).  Native connections have the kernel write into
        ``buffers`` (no payload object is allocated); the emulation copies
        the message out of its stream buffer.

        Returns:
            ``ReceivedInto(nbytes, fds, truncated, credentials)``.

        Raises:
            TypeError: ``buffers`` is not writable bytes-like (or a list of them).
            The rest as ``recv_message``: a ``ControlTruncatedError``
            (descriptors lost, e.g. ``EMFILE``) carries the payload in
            ``.data`` as ``recv_message``'s does; what ``buffers`` then
            hold is unspecified.
        """
        views, size = _writable(buffers)
        try:
            message = self.recv_message(size, maxfds)
            if message is None:
                return None
            return ReceivedInto(_copy_into(views, message.data), *message[1:])
        finally:
            _release(views)

    def peek(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        """The next message as ``recv_message`` would return it, left for the next receive.

        ``None`` at end-of-stream.  ``truncated`` says whether a receive
        with this ``bufsize`` would cut the message.  Descriptors follow
        Linux's ``MSG_PEEK``: every peek hands out new descriptors (copies
        of the message's) which the caller owns and must close; the
        receive later hands out its own.  More than ``maxfds`` raise
        ``ControlTruncatedError`` and the message stays queued.  The
        emulation does the same with copies it makes itself (``F_DUPFD``).
        A native connection on a kernel whose ``MSG_PEEK`` installs no
        copies (FreeBSD, NetBSD, macOS put kernel pointers or zeros there)
        raises ``UnsupportedError`` for a message that carries descriptors
        -- those values are never read as descriptors; OpenBSD leaves them
        out of a peek, so there a peek cannot see them at all.

        Raises:
            ControlTruncatedError: more descriptors than ``maxfds`` (the
                message stays queued; the copies were closed); or (emulated)
                the kernel dropped the message's descriptors as the stream was
                read (out of descriptors): the next receive raises it again,
                with the payload in ``.data``, as a native peek leaves such a
                message queued.
            UnsupportedError: see above.
            OSError: ``EMFILE`` (native) for a message with descriptors when
                the descriptor table had no room for the probe that tells
                whether this kernel's peek installs copies, neither when the
                connection was made nor now: nothing was installed, the
                message stays queued (``udscompat.recv_fds``; through NetBSD's
                Linux ABI such a peek sees no descriptors instead).
            The rest as ``recv_message``.
        """
        raise NotImplementedError  # pragma: no cover

    def dup(self) -> SeqpacketConn:
        """A second, independent connection object on the same kernel socket (``try_clone``).

        Like ``socket.dup``: a new descriptor for the same connection, with
        its own timeout (copied from this one) and its own ``close``;
        closing one wakes only the threads blocked on that one, and the
        connection ends when the last is closed.  Messages go to whichever
        object receives first.  Native connections only: an emulated
        connection's framing state (a partly sent frame, messages decoded
        ahead, descriptors held for the peer) lives in its one object, and
        two objects writing one stream would interleave frames -- share the
        object instead, it is thread-safe.

        Raises:
            UnsupportedError: the connection is emulated.
            OSError: ``EBADF`` after ``close``; ``EMFILE`` from ``dup``.
        """
        raise NotImplementedError  # pragma: no cover

    def take_error(self) -> Optional[OSError]:
        """The socket's pending error (``SO_ERROR``), cleared by reading it; ``None`` if none.

        Linux sets ``ECONNRESET`` on a connection whose peer closed with
        messages it never read.  An emulated connection reports its stream
        socket's error (not the emulation's own: a ``FramingError`` is
        raised by the call that meets it).

        Raises:
            OSError: ``EBADF`` after ``close``.
        """
        if self._closed:
            raise _closed_error()
        code = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return OSError(code, os.strerror(code)) if code else None

    def pass_credentials(self, enable: bool = True, *, claimed: bool = False) -> None:
        """Have messages report the sender's credentials as the kernel attaches them.

        ``claimed=True`` (emulated connections): where the kernel attaches
        no credentials to stream writes (macOS, OpenBSD, NetBSD after the
        first message), report instead what the sender claims in its frames
        -- ``ClaimedCredentials``, NOT verified, a peer can lie -- and
        change nothing on the socket.  Where the kernel does attach them,
        ``claimed`` changes nothing: the kernel's ``ReceivedCredentials``,
        claims dropped unread.  Native connections ignore it.

        ``udscompat.pass_credentials`` on this connection's socket, and
        ``Message.credentials`` filled from then on.  On an emulated
        connection the credentials the kernel attached to the stream's
        writes are given to the message those writes carried; a message
        whose bytes came with different credentials, or some without,
        gets ``None`` (``Message.credentials``).  What is already queued
        may have come without.

        Raises:
            UnsupportedError: macOS and OpenBSD have no such mechanism
                (unless ``claimed`` on an emulated connection).

        Availability: Linux, FreeBSD 13+, DragonFly, NetBSD 7+, illumos.
        """
        _ancillary.pass_credentials(self._sock, enable)
        self._credentials = bool(enable)
        self._update_fast()

    def peer_security_label(self) -> Optional[bytes]:
        """The peer's security label (``udscompat.peer_security_label``): ``SO_PEERSEC``.

        Availability: Linux.
        """
        return _ancillary.peer_security_label(self._sock)

    def _update_fast(self) -> None:
        """Recompute whether the inlined common receive may run."""

    def pending(self) -> bool:
        """Whether ``recv_message`` would return (or raise) now without reading the socket.

        An emulated connection decodes ahead: a message may wait in it while
        the socket itself has nothing to read.  A ``select``/``selectors``
        user checks this before waiting on ``fileno()`` (see there).  Always
        False for a native connection until end-of-stream or ``close``.
        """
        return self._closed or self._eof

    def flush(self) -> None:
        """Send what remains of a message that ``send`` accepted in part.

        Only an emulated connection sends in parts (a large frame to a slow
        reader), and acknowledgements it owes go out here too; for a native
        connection this does nothing.

        Raises:
            BlockingIOError / TimeoutError: some of it is still unsent.
            OSError: as for ``send``.
        """
        if self._closed:
            raise _closed_error()

    def peer_credentials(self) -> ConnCredentials:
        """The peer's credentials, as ``udscompat.peer_credentials`` reads them."""
        return peer_credentials(self._sock)

    @property
    def local_addr(self) -> UnixSocketAddr:
        """This end's address: the listener's for an accepted connection, ``local_addr``
        for a client that gave one, else unnamed (a client, a socketpair end)."""
        if self._local is not None:
            return self._local
        return UnixSocketAddr.from_sockaddr(self._sock.getsockname())

    @property
    def peer_addr(self) -> UnixSocketAddr:
        """The peer's address: the one connected to for a client, else what the kernel says."""
        if self._peer is not None:
            return self._peer
        return UnixSocketAddr.from_sockaddr(self._sock.getpeername())

    def shutdown(self, how: int) -> None:
        """Like ``socket.shutdown``; ``SHUT_WR`` lets the peer read end-of-stream."""
        self._sock.shutdown(how)

    def settimeout(self, timeout: Optional[float]) -> None:
        """``None`` blocks, ``0`` is non-blocking, a positive number is a timeout in seconds.

        The timeout bounds each whole call (``send``, ``recv_message``,
        ``peek``, ``flush``), however many system calls it makes -- and, on an
        emulated connection, its wait for another thread's send (or receive)
        on it to finish: ``TimeoutError`` when the deadline passes first, and
        in non-blocking mode ``BlockingIOError`` at once rather than wait.
        Either leaves the connection as it was.  ``close()`` never waits.

        Raises:
            ValueError / OverflowError / TypeError: as ``socket.settimeout``
                (negative, NaN, infinite, not a number).
        """
        self._timeout = _io.check_timeout(timeout)

    def gettimeout(self) -> Optional[float]:
        """The timeout set by ``settimeout``/``setblocking``."""
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0)``; ``True`` is ``settimeout(None)``."""
        self.settimeout(None if flag else 0.0)

    def fileno(self) -> int:
        """The underlying socket's descriptor (-1 once closed).

        To wait with ``select``/``selectors``/``poll``: call ``pending()``
        first, and ``recv_message`` at once if it is True -- an emulated
        connection may hold a decoded message while the socket is not
        readable, and waiting would then sleep on it.  The socket is
        non-blocking; its own timeout is never used.
        """
        return self._sock.fileno()

    def close(self) -> None:
        """Close the connection; held descriptors are closed with it.

        Never raises for a peer that is gone.  If another thread is blocked
        in ``send`` or ``recv_message`` on this connection, the socket is shut
        down first so that thread wakes (and raises ``EBADF``); otherwise only
        this descriptor is closed, and a copy held elsewhere (after ``fork``
        or passed on) keeps the connection.  While objects made by ``dup()``
        are open the socket is never shut down: a blocked thread wakes
        within ``_DUP_WAKE_MS`` milliseconds instead.  The socket file of
        ``connect(local_addr=...)`` is removed by the last of them.
        """
        # _closed first (a thread about to wait checks it after registering, see _wait); the
        # socket's own state says whether there is anything left to do, so a close that an
        # exception interrupted is finished by the next one.
        # The socket file and the group are looked up again by a close that an exception cut
        # short (leaving a group and removing a file are idempotent), never taken away first.
        self._closed = True
        if self._sock.fileno() < 0:
            return
        group = self._group
        if group is None:
            file = self._file
            if self._waiting:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already disconnected
        else:
            # Shared with duplicates: never shut down (a blocked thread wakes within _DUP_WAKE_MS).
            file = group.leave(self._sock)
        _fdpass.REGISTRY.release(self._sock)
        try:
            if file is not None:
                file.remove()  # first: the file is never there without its socket
        finally:
            self._sock.close()

    @property
    def closed(self) -> bool:
        """True once ``close`` was called (or an error closed the connection)."""
        return self._closed

    def __enter__(self) -> SeqpacketConn:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"fd={self.fileno()}"
        return f"<{type(self).__name__} {self.implementation} {state}>"

    # -- the wait -----------------------------------------------------------------------

    def _wait(self, write: bool, deadline: Optional[float]) -> None:
        """``_io.wait_ready``, registered so that ``close`` in another thread wakes it."""
        me = threading.get_ident()
        self._waiting.add(me)
        try:
            if self._closed:  # checked after registering: close() checks in the other order
                raise self._unusable()
            # Polls in slices (the caller retries), looking at _closed again after each:
            # close() may not shut a shared socket down, and a close() between wait_ready
            # reading the descriptor's number and polling it leaves the poll on a number
            # that may already name another file (whatever was opened or received next).
            if self._group is None:
                _io.wait_ready(self._sock, write=write, deadline=deadline)
            else:
                _io.wait_ready(self._sock, write=write, deadline=deadline, longest_ms=_DUP_WAKE_MS)
        finally:
            self._waiting.discard(me)
        if self._closed:
            raise self._unusable()

    def _unusable(self) -> OSError:
        """What a call on this closed connection raises."""
        return _closed_error()


def _connect_within(
    sock: socket.socket, address: UnixSocketAddr, deadline: Optional[float]
) -> None:
    """``connect_unix``, retried until ``deadline`` while the listener's backlog is full.

    Linux answers a connect with a timeout (a non-blocking socket inside CPython) EAGAIN at
    once when the listener's queue is full, where a blocking connect would wait for room;
    nothing can be polled for that room, so the retries back off from 1 ms to 50 ms.
    """
    delay = 0.001
    while True:
        try:
            connect_unix(sock, address)
            return
        except BlockingIOError:
            if deadline is None or deadline == _NONBLOCKING:
                raise
            remaining = deadline - _monotonic()
            if remaining <= 0:
                raise _io.timeout_error() from None
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)


class _Group:
    """The connection objects ``dup()`` made on one kernel socket, and what they share."""

    __slots__ = ("file", "lock", "members", "record")

    def __init__(
        self, file: Optional[SocketFile], record: List[bool], first: socket.socket
    ) -> None:
        self.lock = threading.Lock()
        #: The socket objects still open, one per member.
        self.members: List[socket.socket] = [first]
        #: The socket file of ``connect(local_addr=...)``: the last to close removes it.
        self.file = file
        #: (native) ``[True]`` while the rest of a cut FreeBSD 15 record waits to be discarded.
        self.record = record

    def join(self, sock: socket.socket) -> None:
        with self.lock:
            self.members.append(sock)

    def leave(self, sock: socket.socket) -> Optional[SocketFile]:
        """``sock``'s member closes.  The socket file to remove if it was the last, else None.

        Idempotent (a close that an exception cut short calls it again): the last
        member gets the file every time until its socket is closed.
        """
        with self.lock:
            # A member closed without leaving (another thread's close() that ran while
            # dup() made this group) can keep nothing: neither the connection nor the file.
            self.members = [m for m in self.members if m is not sock and m.fileno() >= 0]
            if self.members:
                if self.file is not None:
                    # The file's removal trusts an open socket: hand it to one still open.
                    self.file = self.file.kept_by(self.members[0])
                return None
            return self.file


class _NativeConn(SeqpacketConn):
    # What the compiled send and recv_message read on every call, kept in slots: the C reads
    # them at their offset (_speedups.c, struct slot) instead of through the type's lookup.
    __slots__ = ("_fast", "_inline_args")
    implementation = "native"

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(sock)
        _probes.enable_message_marker(sock)
        self._partial_records = _probes.seqpacket().short_read == "partial"
        self._flags = backend.SEQPACKET_SEND_FLAGS | _NOSIGNAL | _DONTWAIT
        self._message_flags = backend.MSG_EOR | backend.MSG_TRUNC
        cloexec = _io.cloexec_flag()
        self._compiled_recv = _COMPILED_RECV if type(sock) in _io.PLAIN_SOCKETS else None
        self._recv_flags = (cloexec or 0) | _DONTWAIT
        self._set_cloexec = cloexec is None
        #: Inline the common receive (property-tested equal to ``_receive_once``); off after
        #: the end of the stream, while the rest of a FreeBSD record is being discarded and
        #: while credentials are reported.
        self._fast = True
        #: ``[True]`` while the rest of a cut FreeBSD 15 record waits to be discarded; one list
        #: shared by the objects ``dup()`` made, since they read one queue.
        self._record = [False]
        #: What the compiled send and recv_message read, as one attribute (each lookup costs
        #: a tenth of a small message's round trip): none of it changes after this.
        self._inline_args = (sock, self._flags, self._recv_flags)

    @property
    def _discarding(self) -> bool:
        return self._record[0]

    @_discarding.setter
    def _discarding(self, value: bool) -> None:
        self._record[0] = value
        self._update_fast()

    def _update_fast(self) -> None:
        # Duplicates on a kernel that cuts records take the general path: another object may
        # have left the rest of a record for whoever receives next to discard.
        self._fast = not (
            self._eof
            or self._credentials
            or self._record[0]
            or (self._group is not None and self._partial_records)
        )

    # The kernel keeps each message whole, so native sends and receives take no lock.

    def send(
        self, data: Any, fds: Sequence[Any] = (), credentials: Optional[SendCredentials] = None
    ) -> int:
        if fds or credentials is not None:
            return self._send_general(data, fds, credentials)
        # A SOCK_SEQPACKET send is all or nothing, so its count is the message's length.
        try:
            return self._sock.send(data, self._flags)
        except BlockingIOError:
            if self._timeout == 0.0:
                raise
        except (TypeError, BufferError):
            # Several buffers (found here, off the common path), or not bytes-like at all
            # (BufferError: a strided view): _send_general's as_buffers raises the TypeError
            # that names `data`.
            return self._send_general(data, fds, credentials)
        sock, flags = self._sock, self._flags
        sent: int = _io.call(
            lambda: sock.send(data, flags),
            self._wait,
            write=True,
            deadline=_io.deadline(self._timeout),
        )
        return sent

    def _send_general(
        self, data: Buffers, fds: Sequence[Any], credentials: Optional[SendCredentials]
    ) -> int:
        """A send with descriptors, credentials or several buffers: one sendmsg."""
        buffers, size = _ancillary.as_buffers(data)
        numbers = _io.check_fds(fds)
        sock, flags = self._sock, self._flags
        operation: Callable[[], int]
        if credentials is None:
            operation = lambda: _io.send_with_fds(sock, buffers, numbers, flags)  # noqa: E731
        else:
            ancdata = _ancillary.ancillary_data(sock, numbers, credentials)
            operation = lambda: sock.sendmsg(buffers, ancdata, flags)  # noqa: E731
        # Held before the send: a full descriptor table fails it before anything went out.
        hold = bool(numbers) and _fdpass.hold_sent_fds()
        batch = _fdpass.REGISTRY.hold(sock, numbers) if hold else None
        try:
            try:
                operation()
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise
                _io.call(operation, self._wait, write=True, deadline=_io.deadline(self._timeout))
        except OSError:
            if batch is not None:
                _fdpass.REGISTRY.unhold(sock, batch)
            raise
        return size

    def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        if type(bufsize) is not int or type(maxfds) is not int or bufsize < 0 or maxfds < 0:
            bufsize, maxfds = _io.check_sizes(bufsize, maxfds)
        if self._eof:
            return None
        if self._fast and bufsize <= _LARGE_BUFSIZE and self._compiled_recv is not None:
            # The compiled receive (udscompat/_speedups.c): one call hands back the message's
            # descriptors all or none, and builds the Message itself where the inline case
            # below would (a payload, no descriptors, nothing cut); else recvmsg's tuple.
            try:
                message = self._compiled_recv(
                    self._sock, bufsize, maxfds, self._recv_flags, self._partial_records
                )
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise
            else:
                if isinstance(message, Message):
                    return message
                data, fds, flags, _, marked = message
                return self._message(data, fds, flags, marked, bufsize)
        elif self._fast and bufsize <= _LARGE_BUFSIZE:
            # _receive_once's common case inline: a whole message, no descriptors, at most the
            # marker (tests/test_fastpaths.py drives both with the same input).
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(bufsize, _ANCBUF, self._recv_flags)
            except BlockingIOError:
                if self._timeout == 0.0:
                    raise
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    raise _io.emsgsize_error() from exc
                raise
            else:
                if (
                    data
                    and not flags & _TRUNCATIONS
                    and (not ancdata or (len(ancdata) == 1 and ancdata[0][1] == _MARKER_TYPE))
                    and (len(data) < bufsize or not self._partial_records)
                ):
                    return new_message((data, (), False, None))
                fds, marked = _io.collect_fds(data, ancdata, flags, maxfds, self._set_cloexec)
                return self._message(data, fds, flags, marked, bufsize)
        return _io.call(
            lambda: self._receive_once(bufsize, maxfds),
            self._wait,
            write=False,
            deadline=_io.deadline(self._timeout),
        )

    def _receive_once(self, bufsize: int, maxfds: int) -> Optional[Message]:
        """The native receive routine: one recvmsg, made a ``Message`` (or None at the end)."""
        if self._eof:
            return None
        if self._discarding:
            self._discard_rest_of_record()
        room = bufsize if bufsize <= _LARGE_BUFSIZE else self._room_for_next(bufsize)
        if self._credentials:
            data, fds, flags, _, marked, creds = _ancillary.receive(
                self._sock, room, maxfds, _DONTWAIT
            )
            return self._message(data, fds, flags, marked, room, creds)
        data, fds, flags, _, marked = _io.recv_with_fds(self._sock, room, maxfds, _DONTWAIT)
        return self._message(data, fds, flags, marked, room)

    def peek(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        bufsize, maxfds = _io.check_sizes(bufsize, maxfds)
        if self._eof:
            return None
        return _io.call(
            lambda: self._peek_once(bufsize, maxfds),
            self._wait,
            write=False,
            deadline=_io.deadline(self._timeout),
        )

    def _peek_once(self, bufsize: int, maxfds: int) -> Optional[Message]:
        if self._eof:
            return None
        if self._discarding:
            self._discard_rest_of_record()
        room = bufsize if bufsize <= _LARGE_BUFSIZE else self._room_for_next(bufsize)
        data, fds, flags, _, marked, creds = _ancillary.receive(
            self._sock, room, maxfds, _MSG_PEEK | _DONTWAIT, refuse_peeked_fds=True
        )
        if not (data or fds or marked or flags & self._message_flags):
            return None  # end-of-stream; the receive that meets it records it
        truncated = bool(flags & _MSG_TRUNC) or (
            self._partial_records and not flags & _MSG_EOR and len(data) == room
        )
        return new_message((data, tuple(fds), truncated, creds if self._credentials else None))

    def recv_message_into(
        self, buffers: WritableBuffers, maxfds: int = 0
    ) -> Optional[ReceivedInto]:
        views, size = _writable(buffers)
        try:
            _, maxfds = _io.check_sizes(0, maxfds)
            if self._eof:
                return None
            return _io.call(
                lambda: self._receive_into_once(views, size, maxfds),
                self._wait,
                write=False,
                deadline=_io.deadline(self._timeout),
            )
        finally:
            _release(views)

    def _receive_into_once(
        self, views: List[memoryview], size: int, maxfds: int
    ) -> Optional[ReceivedInto]:
        """The native receive routine for ``recv_message_into``: one recvmsg_into."""
        if self._eof:
            return None
        if self._discarding:
            self._discard_rest_of_record()
        room = _ancillary.ANCILLARY_ROOM if self._credentials else _ANCBUF
        try:
            nbytes, ancdata, flags, _ = self._sock.recvmsg_into(views, room, self._recv_flags)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise _io.emsgsize_error() from exc
            raise
        try:
            fds, marked = _io.collect_fds(b"", ancdata, flags, maxfds, self._set_cloexec)
        except ControlTruncatedError as exc:
            exc.data = b"".join(views)[:nbytes]  # the payload, as recv_message reports it
            raise
        creds = None
        if self._credentials:
            try:
                creds = backend.credentials_from_cmsgs(ancdata)
            except BaseException:
                _io.close_fds(fds)
                raise
        truncated = self._end_of(nbytes, fds, flags, marked, size)
        if truncated is None:
            return None
        if fds and _fdpass.REGISTRY.originals:
            fds = _fdpass.guard_reused(fds)
        return ReceivedInto(nbytes, tuple(fds), truncated, creds)

    def dup(self) -> SeqpacketConn:
        if self._closed:
            raise _closed_error()
        twin = _NativeConn(self._sock.dup())  # close-on-exec, as every socket CPython makes
        try:
            twin._timeout = self._timeout
            twin._credentials = self._credentials
            twin._local, twin._peer = self._local, self._peer
            group = self._group
            if group is None:
                group = self._group = _Group(self._file, self._record, self._sock)
            twin._group = group  # before it joins: the except clause's close leaves the group
            twin._record = group.record
            group.join(twin._sock)
            self._update_fast()
            twin._update_fast()
        except BaseException:
            # A raising signal handler: a member nobody holds would keep the connection (and
            # the socket file of local_addr) alive after every object the caller has closed.
            twin.close()
            raise
        return twin

    def _room_for_next(self, bufsize: int) -> int:
        """A buffer size that holds the next message without allocating a huge ``bufsize``.

        The bytes queued (FIONREAD) bound the next message.  With none queued
        the head is a zero-length message or end-of-stream if the socket is
        readable (anything sent later queues behind it), else nothing yet.
        """
        queued = _io.queued_bytes(self._sock)
        if queued < 0:
            return bufsize  # the OS will not say: what the standard library would do
        if queued == 0:
            if not _io.ready_now(self._sock):
                raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
            queued = max(_io.queued_bytes(self._sock), 0)
        return min(bufsize, queued)

    def _message(
        self,
        data: bytes,
        fds: List[int],
        flags: int,
        marked: bool,
        bufsize: int,
        credentials: Optional[ReceivedCredentials] = None,
    ) -> Optional[Message]:
        truncated = self._end_of(len(data), fds, flags, marked, bufsize)
        if truncated is None:
            return None
        if fds and _fdpass.REGISTRY.originals:
            fds = _fdpass.guard_reused(fds)
        return new_message((data, tuple(fds), truncated, credentials))

    def _end_of(
        self, nbytes: int, fds: List[int], flags: int, marked: bool, bufsize: int
    ) -> Optional[bool]:
        """None at end-of-stream (recorded), else whether the message was truncated."""
        if not (nbytes or fds or marked or flags & self._message_flags):
            self._eof = True
            self._update_fast()
            return None
        truncated = bool(flags & _MSG_TRUNC)
        if self._partial_records and not flags & _MSG_EOR and nbytes == bufsize:
            # FreeBSD 15 leaves the rest of a record queued and marks its end with MSG_EOR.
            self._discarding = True
            truncated = True
            try:
                self._discard_rest_of_record()
            except BlockingIOError:
                pass  # the rest has not arrived yet: the next receive goes on discarding
        return truncated

    def _discard_rest_of_record(self) -> None:
        while self._discarding:
            try:
                data, _, flags, _, _ = _io.recv_with_fds(self._sock, _STREAM_CHUNK, 0, _DONTWAIT)
            except ControlTruncatedError:
                continue  # its descriptors were closed; the record goes on
            if flags & _MSG_EOR or not data:
                self._discarding = False


#: _NativeConn's send and recv_message as written above: the reference the compiled methods
#: hand every call but the common case to, and what tests compare them with.
PYTHON_NATIVE_SEND = _NativeConn.send
PYTHON_NATIVE_RECV_MESSAGE = _NativeConn.recv_message

if _accel.speedups is not None:
    # A Python method call costs as much as the system call of a small message: where the
    # accelerator runs, these two are C method descriptors (_speedups.c, configure_native).
    _compiled_send, _compiled_recv_message = _accel.speedups.configure_native(
        _NativeConn, PYTHON_NATIVE_SEND, PYTHON_NATIVE_RECV_MESSAGE, _LARGE_BUFSIZE
    )
    setattr(_NativeConn, "send", _compiled_send)  # noqa: B010 (mypy: a method)
    setattr(_NativeConn, "recv_message", _compiled_recv_message)  # noqa: B010


class _EmulatedConn(SeqpacketConn):
    """Seqpacket framed over SOCK_STREAM (``_framing``), where the kernel has no conformant one.

    A send holds the send lock and a receive (or peek) the receive lock for
    the whole call, so frames never interleave.  A call that finds its lock
    held by another thread's waits for it within its own timeout: one
    deadline, computed once, bounds the wait for the lock and the I/O after
    it (``TimeoutError``, the connection as it was); a non-blocking call
    raises ``BlockingIOError`` at once instead of waiting, as a native
    socket's never waits for another thread's call; a blocking one waits as
    long as it takes.  ``close()`` never waits for a lock: a thread waiting
    in a call wakes and raises ``EBADF``.
    """

    # The state the compiled send and recv_message read and write on every call: as slots,
    # the C finds each at a fixed offset (configure_emulated) instead of looking it up.
    __slots__ = (
        "_acks_sent",
        "_broken",
        "_closed",
        "_cmsgs",
        "_fast",
        "_inline_args",
        "_receiving",
        "_sending",
        "_timeout",
        "_unsent",
    )
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
        self._send_lock = _EMULATED_LOCK()
        self._recv_lock = _EMULATED_LOCK()
        #: Each lock's try (acquire(False)), for ``for taken in iter(try, None)``: _lock_wait.
        self._send_try: Callable[[], bool] = functools.partial(self._send_lock.acquire, False)
        self._recv_try: Callable[[], bool] = functools.partial(self._recv_lock.acquire, False)
        #: The unsent rest of a frame already accepted (a partly sent message or acknowledgement).
        self._unsent: Union[bytes, memoryview] = b""
        #: Acknowledgements sent so far (the decoder counts the requests; the difference is owed).
        self._acks_sent = 0
        self._broken: Optional[OSError] = None
        # Set from just before a system call until its result is recorded (in the frame
        # state or the decoder).  Still set at the next call means an exception interrupted
        # that window: the stream position is unknown, and the connection is aborted.
        self._sending = False
        self._receiving = False
        cloexec = _io.cloexec_flag()
        self._recv_flags = int((cloexec or 0) | _DONTWAIT)
        self._set_cloexec = cloexec is None
        #: Inline the common receive (property-tested equal to ``_receive``); off while a
        #: peeked message waits and while credentials are reported.
        self._fast = True
        #: Control room of a chunk's recvmsg: more once credentials come with the chunks.
        self._ancbuf = _ANCBUF
        #: The message ``peek`` took from the decoder, for the next receive (its fds are ours);
        #: or the frame whose descriptors were lost, which the next receive reports again.
        self._peeked: Optional[Union[Message, _framing.DescriptorsLost]] = None
        #: The credentials message attached to every write of the frame being sent, if any.
        self._cmsgs: Optional[List[Tuple[int, int, Any]]] = None
        #: What the compiled send and recv_message read that never changes after this, as one
        #: attribute (each lookup costs about a twentieth of a small message's round trip).
        self._inline_args = (
            sock,
            self._send_lock,
            self._recv_lock,
            self._decoder,
            self._encoder,
            self._recv_flags,
            self._encoder.max_message_size,
            self._decoder.max_message_size,
            self._decoder.max_fds,
        )

    def _update_fast(self) -> None:
        self._fast = not self._credentials and self._peeked is None
        self._ancbuf = _ancillary.ANCILLARY_ROOM if self._credentials else _ANCBUF

    def pass_credentials(self, enable: bool = True, *, claimed: bool = False) -> None:
        if claimed and not kernel_stream_credentials():
            with self._recv_lock:
                self._decoder.accept_claims = bool(enable)
            return
        SeqpacketConn.pass_credentials(self, enable)
        self._decoder.accept_claims = False

    def dup(self) -> SeqpacketConn:
        raise UnsupportedError(
            "duplicates (dup) of emulated seqpacket connections",
            backend.OS_NAME,
            "its framing state (a partly sent frame, messages decoded ahead, descriptors held "
            "for the peer) lives in this one object, and two objects writing one stream "
            "would interleave frames; share this object between threads instead",
        )

    def _locked(
        self,
        lock: threading.Lock,
        try_lock: Callable[[], bool],
        holder: str,
        run: Callable[..., T],
        *args: Any,
    ) -> T:
        """``run(deadline, *args)`` holding ``lock``, the call's deadline bounding the wait for it.

        For ``peek`` and ``flush``; ``send`` and ``recv_message`` do the same
        inline (a call costs them several hundred instructions, and a receive
        reads the clock only if it must wait).  See ``_lock_wait``.
        """
        deadline = _io.deadline(self._timeout)
        taken = False
        try:
            for taken in iter(try_lock, None):  # noqa: B007 (stored: _lock_wait)
                break
            if not taken:
                for taken in _lock_wait(lock, deadline, holder):  # noqa: B007
                    break
                if not taken:
                    raise _io.timeout_error()
            return run(deadline, *args)
        finally:
            if taken:
                lock.release()

    # -- send ------------------------------------------------------------------------------

    def send(
        self, data: Any, fds: Sequence[Any] = (), credentials: Optional[SendCredentials] = None
    ) -> int:
        numbers = _io.check_fds(fds) if fds else None
        payload: Any
        if type(data) is bytes:
            payload = data
        elif type(data) in _SEVERAL:
            payload = b"".join(_ancillary.as_buffers(data)[0])
        else:
            try:
                payload = memoryview(data).cast("B")
            except TypeError:
                _ancillary.as_buffers(data)  # raises the TypeError that names `data`
                raise
        length = size = len(payload)
        hold = False
        cmsgs = claim = None
        if credentials is not None:
            if kernel_stream_credentials():
                cmsgs = _ancillary.credentials_data(credentials, bool(numbers)) or None
            else:
                claim = _claim(credentials)
                payload = claim + payload
                size = len(payload)
        if numbers is None and claim is None and size <= self._encoder.max_message_size:
            header = _DATA_HEADER(size, 0, _KIND_DATA, 0)  # what header() builds, inline
        else:
            hold = bool(numbers) and _fdpass.hold_sent_fds()
            header = self._encoder.header(
                size, len(numbers) if numbers else 0, ack_requested=hold, claimed=claim is not None
            )
        timeout = self._timeout
        deadline = timeout and _monotonic() + timeout  # once per call: see _io.deadline
        lock = self._send_lock
        taken = False
        try:
            for taken in iter(self._send_try, None):  # noqa: B007 (stored: _lock_wait)
                break
            if not taken:
                for taken in _lock_wait(lock, deadline, "send"):  # noqa: B007
                    break
                if not taken:
                    raise _io.timeout_error()
            if (
                self._unsent
                or self._sending
                or self._broken is not None
                or self._closed
                or self._decoder.ack_requests != self._acks_sent
            ):
                self._before_send(deadline)
            # Every write of this frame carries its credentials (the receiver gives a frame
            # credentials only if all of its bytes came with the same ones).
            self._cmsgs = cmsgs
            # Small frames go out as one joined buffer: one copy is cheaper than an iovec.
            frame = header + payload if size < 4096 else None
            if numbers is None and frame is not None and cmsgs is None:
                self._sending = True  # the common case of _send_frame, inline
                try:
                    sent = self._sock.send(frame, _STREAM_SEND)
                except BlockingIOError:
                    self._sending = False
                    if deadline == _NONBLOCKING:
                        raise
                    sent = self._start_frame(header, payload, frame, None, None, deadline)
                except OSError:
                    self._sending = False
                    raise
            else:
                sent = self._start_frame(header, payload, frame, numbers, hold, deadline)
            if sent < _HEADER_SIZE + size:
                whole = frame if frame is not None else header + bytes(payload)
                self._unsent = memoryview(whole)[sent:]
            self._sending = False
            if self._unsent and deadline != _NONBLOCKING:
                self._flush(deadline, committed=True)
        finally:
            if taken:
                lock.release()
        return length

    def _before_send(self, deadline: Optional[float]) -> None:
        """Refuse an unusable connection; send an earlier frame's rest and owed acknowledgements."""
        if self._sending:
            self._abort("send")
        if self._closed or self._broken is not None:
            SeqpacketConn.close(self)  # finishes an abort cut short: the peer sees the end
            raise self._unusable()
        self._flush(deadline, committed=False)

    def _start_frame(
        self,
        header: bytes,
        payload: Any,
        frame: Optional[bytes],
        numbers: Any,
        hold: Optional[bool],
        deadline: Optional[float],
    ) -> int:
        """Send the start of a frame (with its descriptors), waiting within ``deadline``.

        Sent descriptors are held first (``_fdpass.REGISTRY``) and released
        again if nothing could be sent.
        """
        batch = None
        if hold:
            if _fdpass.REGISTRY.held(self._sock):
                _holding(self._recv_lock, self._take_acks)
                if self._broken is not None:
                    raise self._unusable()
            batch = _fdpass.REGISTRY.hold(self._sock, numbers)
        try:
            try:
                return self._send_frame(header, payload, frame, numbers)
            except BlockingIOError:
                if deadline == _NONBLOCKING:
                    raise
            sent: int = _io.call(
                lambda: self._send_frame(header, payload, frame, numbers),
                self._wait,
                write=True,
                deadline=deadline,
            )
            return sent
        except BaseException:
            # Nothing went out unless an exception cut the window after the system call
            # short (_sending still set): then the batch stays for the acknowledgement.
            if batch is not None and not self._sending:
                _fdpass.REGISTRY.unhold(self._sock, batch)
            raise

    def _send_frame(self, header: bytes, payload: Any, frame: Optional[bytes], numbers: Any) -> int:
        """The emulation's one send system call: the start of a frame, descriptors attached."""
        self._sending = True
        try:
            cmsgs = self._cmsgs
            if cmsgs is not None:  # credentials: sendmsg itself (the compiled call has no room)
                buffers = [frame] if frame is not None else [header, payload]
                ancdata = cmsgs if numbers is None else cmsgs + _io.rights(self._sock, numbers)
                return self._sock.sendmsg(buffers, ancdata, _STREAM_SEND)
            if numbers is None:
                if frame is not None:
                    return self._sock.send(frame, _STREAM_SEND)
                return self._sock.sendmsg([header, payload], [], _STREAM_SEND)
            buffers = [frame] if frame is not None else [header, payload]
            return _io.send_with_fds(self._sock, buffers, numbers, _STREAM_SEND)
        except OSError:
            self._sending = False  # nothing went out
            raise

    def _flush(self, deadline: Optional[float], *, committed: bool) -> None:
        """Send the rest of a partly sent frame, then one ACK for every acknowledgement owed.

        Waits within ``deadline``.  ``committed``: the current message was
        accepted, so running out of time leaves the rest for later; otherwise
        it raises (nothing of a new message may go out before the rest).
        Acknowledgements owed are a count, so a peer that asks for many and
        never reads costs one integer, not a growing buffer.
        """
        while True:
            if not self._unsent:
                self._cmsgs = None  # the frame is out: an ACK carries no credentials
                owed = self._decoder.ack_requests - self._acks_sent
                if not owed:
                    return
                count = min(owed, _framing.MAX_ACK_COUNT)
                # Counted before it is queued: an interrupt in between loses an ACK (the peer
                # holds a duplicate a little longer), never sends one twice.
                self._acks_sent += count
                self._unsent = _ACK(count)
            self._sending = True
            try:
                if self._cmsgs is None:
                    sent = self._sock.send(self._unsent, _STREAM_SEND)
                else:
                    sent = self._sock.sendmsg([self._unsent], self._cmsgs, _STREAM_SEND)
            except BlockingIOError:
                self._sending = False
                try:
                    self._wait(True, deadline)
                except (BlockingIOError, TimeoutError) as exc:
                    if committed:
                        return  # the next send, flush or close goes on with it
                    if isinstance(exc, BlockingIOError):
                        raise BlockingIOError(
                            errno.EAGAIN, "the previous message is still being sent"
                        ) from None
                    raise
                continue
            except OSError:
                self._sending = False
                raise
            self._unsent = memoryview(self._unsent)[sent:]
            self._sending = False

    def flush(self) -> None:
        if not (
            self._unsent
            or self._sending
            or self._closed
            or self._broken is not None
            or self._decoder.ack_requests != self._acks_sent
        ):
            return  # nothing owed (read without the lock: a send running now flushes itself)
        self._locked(self._send_lock, self._send_try, "send", self._flush_locked)

    def _flush_locked(self, deadline: Optional[float]) -> None:
        """``flush`` with the send lock held, within ``deadline``."""
        if self._sending:
            self._abort("send")
        if self._closed or self._broken is not None:
            SeqpacketConn.close(self)  # finishes an abort cut short
            raise self._unusable()
        self._flush(deadline, committed=False)

    def _acknowledge(self) -> None:
        """Send owed acknowledgements now if no send is running (else the next send does)."""

        def push() -> None:
            if self._sending or self._closed or self._broken is not None:
                return
            try:
                self._flush(_NONBLOCKING, committed=True)
            except OSError:
                pass  # the peer is gone: the next send reports it

        _holding(self._send_lock, push)

    def _take_acks(self) -> None:
        """Release what the peer acknowledged, for a sender that never receives (recv lock held).

        Reads only while the decoder holds nothing but acknowledgements, at
        most a few chunks and never waiting; a message read on the way stays
        in the decoder for ``recv_message`` (``pending()`` says so).
        """
        decoder = self._decoder
        for _ in range(4):
            ack = decoder.next_ack()
            while ack is not None:
                if not _fdpass.REGISTRY.acknowledge(self._sock, ack.frames):
                    return  # a lying peer: recv_message reports it
                ack = decoder.next_ack()
            if not decoder.idle or self._receiving or self._closed or self._broken is not None:
                return
            self._receiving = True
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    _STREAM_CHUNK, self._ancbuf, self._recv_flags
                )
            except OSError:
                self._receiving = False
                return  # nothing there (or an error recv_message will meet)
            try:
                self._ingest(data, ancdata, flags)
            except OSError:
                return  # the connection broke; recv_message reports it
            self._receiving = False

    # -- receive ---------------------------------------------------------------------------

    def recv_message(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        if type(bufsize) is not int or type(maxfds) is not int or bufsize < 0 or maxfds < 0:
            bufsize, maxfds = _io.check_sizes(bufsize, maxfds)
        deadline: Optional[float] = _NOT_YET
        lock = self._recv_lock
        taken = False
        try:
            for taken in iter(self._recv_try, None):  # noqa: B007 (stored: _lock_wait)
                break
            if not taken:
                deadline = _io.deadline(self._timeout)
                for taken in _lock_wait(lock, deadline, "receive"):  # noqa: B007
                    break
                if not taken:
                    raise _io.timeout_error()
            if self._receiving:
                self._abort("receive", holding_recv=True)
            self._receiving = True
            decoder = self._decoder
            # Closed and broken decoders are not idle, but an abort that an exception cut
            # short may have set only _broken (its first step): the stream position is
            # unknown then, and _receive refuses instead of reading on.
            if not (decoder.idle and self._fast) or self._broken is not None:
                return self._receive(bufsize, maxfds, None, False, deadline)
            # _receive's common case inline: nothing held, one chunk that is one plain frame.
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    _STREAM_CHUNK, _ANCBUF, self._recv_flags
                )
            except BlockingIOError:
                if self._timeout == 0.0:
                    self._receiving = False
                    raise
                return self._receive(bufsize, maxfds, None, False, deadline)
            except OSError as exc:
                self._receiving = False
                self._raise_read_error(exc)
            if ancdata or flags & _MSG_CTRUNC or not data:
                self._ingest(data, ancdata, flags)
                return self._receive(bufsize, maxfds, None, False, deadline)
            try:
                event = decoder.receive_and_next(data)
            except FramingError as exc:
                self._break(exc)
                raise
            if type(event) is not Message:
                return self._receive(bufsize, maxfds, event, False, deadline)
            self._receiving = False
            if decoder.ack_requests != self._acks_sent:
                self._acknowledge()
            if len(event.data) > bufsize:
                return new_message((event.data[:bufsize], (), True, event.credentials))
            return event
        finally:
            if taken:
                lock.release()

    def _receive(
        self,
        bufsize: int,
        maxfds: int,
        event: Any,
        whole: bool = False,
        deadline: Optional[float] = _NOT_YET,
    ) -> Optional[Message]:
        """The emulation's one receive routine: decode, and read a chunk whenever it needs one.

        Runs with the receive lock held and ``_receiving`` set, and clears it
        at every exit where the decoder is consistent.  One deadline bounds
        the whole call: a peer dripping bytes (or flooding acknowledgements)
        cannot hold it past its timeout.  ``deadline`` is the call's, computed
        when it waited for the lock; ``_NOT_YET`` (the call took the lock
        without waiting, and has not waited since): from now.  Non-blocking,
        it reads at most ``_READS_PER_CALL`` chunks, keeping what it decoded.
        """
        decoder = self._decoder
        if deadline is _NOT_YET:
            deadline = _io.deadline(self._timeout)
        reads = 0
        while True:
            if event is None:
                if self._closed or self._broken is not None:
                    self._receiving = False
                    self._discard_received()
                    SeqpacketConn.close(self)  # finishes an abort or close cut short
                    raise self._unusable()
                peeked = self._peeked
                if peeked is not None and not whole:
                    self._peeked = None
                    self._update_fast()
                    self._receiving = False
                    if isinstance(peeked, _framing.DescriptorsLost):
                        raise _descriptors_lost(peeked, bufsize)
                    return _fit(peeked, bufsize, maxfds)
                try:
                    event = decoder.next_event()
                except FramingError as exc:
                    self._break(exc)
                    raise
            kind = type(event)
            if kind is Message:
                self._receiving = False
                if decoder.ack_requests != self._acks_sent:
                    self._acknowledge()
                return event if whole else _fit(event, bufsize, maxfds)
            if event is _NEED_DATA:
                if reads and deadline is not None:
                    if deadline == _NONBLOCKING:
                        if reads >= _READS_PER_CALL:
                            self._receiving = False
                            raise BlockingIOError(
                                errno.EAGAIN, "read budget spent; the rest waits for the next call"
                            )
                    elif _monotonic() >= deadline:
                        self._receiving = False
                        raise _io.timeout_error()
                self._read_chunk(deadline)
                reads += 1
            elif kind is _framing.Ack:
                if not _fdpass.REGISTRY.acknowledge(self._sock, event.frames):
                    error = FramingError(
                        f"framing violated by peer: it acknowledged {event.frames} frames, more "
                        "than awaited acknowledgement"
                    )
                    self._break(error)
                    raise error
            elif kind is _framing.DescriptorsLost:
                self._receiving = False
                if decoder.ack_requests != self._acks_sent:
                    self._acknowledge()  # the sender may let go: this frame is done
                if whole:
                    # A peek leaves the message for the receive, which reports the loss too
                    # (as a native peek leaves it queued): its payload is never lost with it.
                    self._peeked = event
                    self._update_fast()
                raise _descriptors_lost(event, bufsize)
            else:  # EndOfStream
                self._receiving = False
                return None
            event = None

    def _read_chunk(self, deadline: Optional[float]) -> None:
        """Read one chunk into the decoder, waiting within ``deadline`` (``_receiving`` set)."""
        while True:
            try:
                data, ancdata, flags, _ = self._sock.recvmsg(
                    _STREAM_CHUNK, self._ancbuf, self._recv_flags
                )
            except BlockingIOError:
                self._receiving = False  # waiting is safe: nothing was read
                self._wait(False, deadline)
                self._receiving = True
                continue
            except OSError as exc:
                self._receiving = False
                self._raise_read_error(exc)
            self._ingest(data, ancdata, flags)
            return

    def _ingest(self, data: bytes, ancdata: List[Any], flags: int) -> None:
        """Hand one chunk and its descriptors to the decoder; a truncated chunk's bytes too."""
        fds: List[int] = []
        lost = -1
        creds = None
        if ancdata or flags & _MSG_CTRUNC:
            try:
                fds, _ = _io.collect_fds(data, ancdata, flags, _NO_LIMIT, self._set_cloexec)
            except ControlTruncatedError as exc:
                # Out of descriptors: the kernel dropped some, the rest are closed.  The bytes
                # still go to the decoder, so the stream stays in step and only this frame is
                # reported (never a message built from two).
                lost = exc.closed_fds
            if self._credentials and lost < 0:
                try:
                    creds = backend.credentials_from_cmsgs(ancdata)
                except OSError:
                    creds = None  # undecodable: no answer, and the stream stays in step
        try:
            self._decoder.receive_data(data, fds, fds_lost=lost, credentials=creds)
        except FramingError as exc:
            self._break(exc)
            raise

    def _raise_read_error(self, exc: OSError) -> NoReturn:
        if self._closed:
            raise self._unusable() from exc  # closed by another thread meanwhile
        if exc.errno == errno.EMSGSIZE:
            # OpenBSD and DragonFly fail the whole recvmsg when the descriptors do not fit:
            # whether the bytes went with them is unknown, so the stream cannot be trusted.
            error = ControlTruncatedError(
                "recvmsg failed with EMSGSIZE: the kernel discarded descriptors (out of "
                "descriptors?) and the stream position is unknown; the connection was closed"
            )
            self._break(error)
            raise error from exc
        raise exc

    # -- state -----------------------------------------------------------------------------

    def pending(self) -> bool:
        decoder = self._decoder
        if decoder.idle and not self._receiving:
            # Nothing held (closed and broken decoders are not idle; _broken covers an
            # abort cut short before it closed the decoder) but a peeked message.
            return self._closed or self._broken is not None or self._peeked is not None
        return (
            self._closed
            or self._broken is not None
            or self._receiving
            or self._peeked is not None
            or decoder.has_message()
        )

    def peek(self, bufsize: int = 65536, maxfds: int = 0) -> Optional[Message]:
        bufsize, maxfds = _io.check_sizes(bufsize, maxfds)
        return self._locked(
            self._recv_lock, self._recv_try, "receive", self._peek_locked, bufsize, maxfds
        )

    def _peek_locked(
        self, deadline: Optional[float], bufsize: int, maxfds: int
    ) -> Optional[Message]:
        """``peek`` with the receive lock held; its receive waits within ``deadline``."""
        message = self._peeked
        if isinstance(message, _framing.DescriptorsLost):
            raise _descriptors_lost(message, bufsize)
        if message is None:
            if self._receiving:
                self._abort("receive", holding_recv=True)
            self._receiving = True
            message = self._receive(bufsize, maxfds, None, True, deadline)
            if message is None:
                return None
            self._peeked = message
            self._update_fast()
        return _peek_copy(message, bufsize, maxfds)

    def _discard_received(self) -> None:
        """Close the decoder and a peeked message's descriptors (receive lock held)."""
        self._decoder.close()
        peeked, self._peeked = self._peeked, None
        if type(peeked) is Message:
            _io.close_fds(peeked.fds)

    def _break(self, error: OSError) -> None:
        """Close the connection after ``error`` (receive lock held)."""
        self._broken = error
        self._receiving = False
        self._discard_received()
        SeqpacketConn.close(self)

    def _abort(self, what: str, *, holding_recv: bool = False) -> NoReturn:
        """An exception interrupted an earlier call mid-system-call: close, and say so."""
        error = ConnectionAbortedError(
            errno.ECONNABORTED,
            f"an exception (a signal handler's?) interrupted an earlier {what} between a system "
            "call and the recording of its result; the stream position is unknown, so the "
            "connection was closed rather than risk a corrupt message",
        )
        # _broken first: from here on every path refuses the connection, so an exception
        # cutting the rest short cannot make it read or send from an unknown position.
        self._broken = error
        self._sending = self._receiving = False
        SeqpacketConn.close(self)
        if holding_recv:
            self._discard_received()
        else:
            _holding(self._recv_lock, self._discard_received)
        raise error

    def _unusable(self) -> OSError:
        broken = self._broken
        if broken is None:
            return _closed_error()
        reason = f"connection closed after an earlier error: {broken.strerror}"
        if isinstance(broken, FramingError):
            return FramingError(reason)
        return OSError(broken.errno, reason)

    def close(self) -> None:
        def finish_frame() -> None:
            # Best effort, never waiting: a peer that is gone or does not read cannot hold
            # close() up (asyncio's close waits for the rest, within a limit).
            # Not after an abort: _unsent may hold bytes that already went out.
            if self._unsent and not self._sending and self._broken is None:
                try:
                    self._flush(_NONBLOCKING, committed=True)
                except OSError:
                    pass

        if not self._closed:
            _holding(self._send_lock, finish_frame)
        super().close()
        # A receive running in another thread closes the decoder itself when it wakes.
        _holding(self._recv_lock, self._discard_received)


#: _EmulatedConn's send and recv_message as written above: the reference the compiled methods
#: hand every call but the common case to (what ``UDSCOMPAT_SPEEDUPS=0`` runs), and what tests
#: compare them with.
PYTHON_EMULATED_SEND = _EmulatedConn.send
PYTHON_EMULATED_RECV_MESSAGE = _EmulatedConn.recv_message

if _accel.speedups is not None:
    # Two Python method calls with their state checks cost more than the system calls of a
    # small message: where the accelerator runs, these two are C method descriptors
    # (_speedups.c, configure_emulated) over the same attributes and continuations.
    _emulated_send, _emulated_recv_message = _accel.speedups.configure_emulated(
        _EmulatedConn,
        _framing.FrameDecoder,
        PYTHON_EMULATED_SEND,
        PYTHON_EMULATED_RECV_MESSAGE,
        _STREAM_CHUNK,
        _ANCBUF,
        _STREAM_SEND,
        _monotonic,
    )
    setattr(_EmulatedConn, "send", _emulated_send)  # noqa: B010 (mypy: a method)
    setattr(_EmulatedConn, "recv_message", _emulated_recv_message)  # noqa: B010


def kernel_stream_credentials() -> bool:
    """Does the kernel attach credentials to every stream write (else emulated frames claim)?

    DragonFly's do when the sender attaches ``SCM_CREDS`` (its kernel fills
    in the truth), which the emulation does on every write of a frame.
    """
    return _ancillary.credentials_probe().stream in ("every message", "sender attaches")


def _claim(credentials: SendCredentials) -> bytes:
    """The CLAIM an emulated frame carries where the kernel attaches no credentials.

    Raises:
        TypeError: ``credentials`` is not a ``SendCredentials``.
        UnsupportedError: ids other than this process's own.
    """
    if not isinstance(credentials, SendCredentials):
        raise TypeError(
            f"credentials: expected a SendCredentials, not {type(credentials).__name__}"
        )
    if not credentials.is_own():
        raise UnsupportedError(
            "claiming ids other than this process's own",
            backend.OS_NAME,
            "the kernel attaches no credentials to stream writes, so the emulation carries "
            "the sender's claim; udscompat never helps a sender claim another's ids",
        )
    return _framing.FrameEncoder.claim(credentials)


def _peek_copy(message: Message, bufsize: int, maxfds: int) -> Message:
    """What a peek hands out of a held message: its data cut to ``bufsize``, copies of its fds.

    As Linux's MSG_PEEK: every peek gives new descriptors, the caller's to
    close; more than ``maxfds`` raise (the message is kept).
    """
    data = message.data
    if len(message.fds) > maxfds:
        raise _io.truncation_error("excess", data[:bufsize], len(message.fds), maxfds)
    copies: List[int] = []
    try:
        # Each copy (os.dup: close-on-exec) is stored by the C call that makes it, so a
        # raising signal handler cannot drop one between the two; until the message is
        # built, the except clause closes them all.
        copies.extend(map(os.dup, message.fds))
        cut = len(data) > bufsize
        return new_message((data[:bufsize], tuple(copies), cut, message.credentials))
    except BaseException:
        _io.close_fds(copies)
        raise


def _descriptors_lost(event: _framing.DescriptorsLost, bufsize: int) -> ControlTruncatedError:
    """What a receive (or peek) of a frame whose descriptors the kernel dropped raises."""
    return ControlTruncatedError(
        "control data truncated (MSG_CTRUNC): the message's descriptors were lost "
        f"({event.closed_fds} that did arrive were closed; is this process out of "
        "descriptors?)",
        event.data[:bufsize],
        event.closed_fds,
    )


def _fit(message: Message, bufsize: int, maxfds: int) -> Message:
    """Apply the caller's limits to a whole message, as the kernel does for native ones."""
    if message.fds:
        _io.refuse_excess_fds(message.fds, maxfds, message.data[:bufsize])
        if _fdpass.REGISTRY.originals:
            fds = tuple(_fdpass.guard_reused(list(message.fds)))
            message = new_message((message.data, fds, False, message.credentials))
    if len(message.data) > bufsize:
        return new_message((message.data[:bufsize], message.fds, True, message.credentials))
    return message


def _writable(buffers: WritableBuffers) -> Tuple[List[memoryview], int]:
    """``buffers`` as writable byte views, and their total size.

    Raises:
        TypeError: not a writable bytes-like object, or a list or tuple of them.
    """
    items = list(buffers) if isinstance(buffers, (list, tuple)) else [buffers]
    views: List[memoryview] = []
    try:
        for item in items:
            try:
                view = memoryview(item)
            except TypeError:
                raise TypeError(
                    "buffers: expected a writable bytes-like object or a list of them, "
                    f"not {type(item).__name__}"
                ) from None
            views.append(view)
            if view.readonly:
                raise TypeError(f"buffers: {type(item).__name__} is read-only")
            if not view.c_contiguous:
                # The kernel writes one contiguous run (recvmsg_into refuses a strided view);
                # the emulation's copy must not fill every other byte instead.
                raise TypeError(f"buffers: {type(item).__name__} is not C-contiguous")
            if view.format != "B" or view.ndim != 1:
                views[-1] = view.cast("B")
                view.release()  # the cast keeps the export
    except BaseException:
        _release(views)
        raise
    return views, sum(v.nbytes for v in views)


def _release(views: List[memoryview]) -> None:
    """Let the caller's buffers go (resizable again) even while an exception holds our frames.

    The standard library's recv_into/recvmsg_into release theirs before they raise; a
    caller that grows its buffer in ``except TimeoutError:`` must be able to here too.
    """
    for view in views:
        view.release()


def _copy_into(views: List[memoryview], data: bytes) -> int:
    """Copy ``data`` into ``views`` in order; how many bytes were copied."""
    offset = 0
    for view in views:
        chunk = data[offset : offset + len(view)]
        view[: len(chunk)] = chunk
        offset += len(chunk)
        if offset >= len(data):
            break
    return offset


def _check_kernel_agrees(sock: socket.socket, kind: int) -> None:
    """Refuse a socket whose kernel family or type is not what the object says."""
    actual = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
    family: int = socket.AF_UNIX  # where the kernel cannot say: the type alone
    domain = getattr(socket, "SO_DOMAIN", None)  # Linux, FreeBSD
    if domain is not None:
        try:
            family = sock.getsockopt(socket.SOL_SOCKET, domain)
        except OSError as exc:
            if exc.errno != errno.ENOPROTOOPT:  # a kernel without it (NetBSD's Linux ABI)
                raise
    if actual != kind or family != socket.AF_UNIX:
        raise ValueError(
            f"sock says family {_enum_name(sock.family, socket.AddressFamily)} and type "
            f"{_enum_name(kind, socket.SocketKind)}, but the kernel's socket is family "
            f"{_enum_name(family, socket.AddressFamily)} and type "
            f"{_enum_name(actual, socket.SocketKind)} "
            "(a socket.socket built with explicit family and type over another descriptor)"
        )


def _enum_name(value: int, kind: Any) -> str:
    """``AF_UNIX``, ``SOCK_STREAM``: the name of a family or type the socket module knows,
    else the number (what the kernel answered may be a value it has no name for)."""
    try:
        return str(kind(value).name)
    except ValueError:
        return str(int(value))


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
            # getsockname() names /proc/self/fd/N/... for a socket bound through a descriptor.
            self._path = None if self._file is None else self._file.address
            self._sock.setblocking(False)
        except BaseException:
            # Anything (a raising signal handler too) before the listener is handed over:
            # close it and remove its file, never leave it behind as a stale socket file.
            close_listener(self._sock, self._file)
            raise
        if not remove_on_close:
            self._file = None
        self._timeout: Optional[float] = None

    def accept(self) -> Tuple[SeqpacketConn, UnixSocketAddr]:
        """Wait for a connection; returns it and the peer's address."""
        sock, address = _io.call(
            self._sock.accept,
            self._wait,
            write=False,
            deadline=_io.deadline(self._timeout),
        )
        conn = _wrap(sock, self.implementation)
        conn._local = self._path  # getsockname() may name /proc/self/fd/N/... instead
        return conn, UnixSocketAddr.from_sockaddr(address)

    def _wait(self, write: bool, deadline: Optional[float]) -> None:
        # A second at most: a close() in another thread is seen by the retry (EBADF).
        _io.wait_ready(self._sock, write=write, deadline=deadline)

    @property
    def local_addr(self) -> UnixSocketAddr:
        """The address this listener is bound to."""
        return self._path or UnixSocketAddr.from_sockaddr(self._sock.getsockname())

    def fileno(self) -> int:
        """The listening socket's descriptor."""
        return self._sock.fileno()

    def settimeout(self, timeout: Optional[float]) -> None:
        """Timeout for ``accept``: ``None`` blocks, ``0`` is non-blocking (as ``settimeout``)."""
        self._timeout = _io.check_timeout(timeout)

    def setblocking(self, flag: bool) -> None:
        """``setblocking(False)`` is ``settimeout(0)``."""
        self.settimeout(None if flag else 0.0)

    def close(self) -> None:
        """Stop listening; remove the socket file if it is still ours and removal was asked.

        A thread blocked in ``accept`` wakes within a second and raises ``EBADF``.  The
        listening socket is never shut down for it: a copy held elsewhere (children of a
        pre-forking server, a descriptor passed on) keeps accepting.
        """
        file, self._file = self._file, None
        close_listener(self._sock, file)  # removed first: never stale while it is still there

    def __enter__(self) -> SeqpacketListener:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


SeqpacketConn.__module__ = "udscompat"
SeqpacketListener.__module__ = "udscompat"
