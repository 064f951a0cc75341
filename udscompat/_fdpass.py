"""``send_fds`` / ``recv_fds``: the standard library's pair, with its gaps closed.

Differences from ``socket.send_fds``/``socket.recv_fds``: ``flags`` and
``address`` are honoured (CPython #107898); received descriptors are
close-on-exec; the control buffer is sized with CMSG_SPACE for the kernel's
cap; truncation closes what arrived and raises; and the sender may close its
copies as soon as ``send_fds`` returns, on every OS.
"""

from __future__ import annotations

import _socket
import collections
import functools
import os
import socket
import threading
import weakref
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Deque,
    Iterable,
    List,
    Optional,
    Sequence,
    Set,
    Tuple,
    TypeVar,
    Union,
)

from udscompat import _io, _probes, _sockarg
from udscompat._bind import sendmsg_to
from udscompat._platform import backend
from udscompat._sockarg import SocketLike

__all__ = [
    "DEFAULT_MAX_HELD_FDS",
    "hold_sent_fds",
    "max_held_fds",
    "recv_fds",
    "release_sent_fds",
    "send_fds",
]

T = TypeVar("T")
Buffers = Union[bytes, bytearray, memoryview, Iterable[Any]]

_HOLD_ENV = "UDSCOMPAT_HOLD_SENT_FDS"


@functools.cache
def hold_sent_fds() -> bool:
    """Whether udscompat keeps a duplicate of each sent fd until the peer has it.

    On where the kernel needs it (macOS: os-facts §2.4) or where a receive in
    the same process was seen to return the sender's own slot; forced on or
    off with the environment variable ``UDSCOMPAT_HOLD_SENT_FDS=1`` / ``0``.
    """
    forced = os.environ.get(_HOLD_ENV, "").strip().lower()
    if forced in ("1", "true", "yes", "on"):
        return True
    if forced in ("0", "false", "no", "off"):
        return False
    if forced:
        raise ValueError(f"{_HOLD_ENV}={forced!r}: expected 1 or 0")
    if backend.HOLD_SENT_FDS:
        return True
    try:
        return _probes.same_process_fd_reuse()
    except OSError:
        return False  # could not probe now (EMFILE?); no kernel read reuses slots


#: How many duplicates of sent descriptors are held per socket unless configured otherwise.
DEFAULT_MAX_HELD_FDS = 64
_MAX_HELD_ENV = "UDSCOMPAT_MAX_HELD_FDS"


@functools.cache
def max_held_fds() -> int:
    """The most duplicates held per socket: ``UDSCOMPAT_MAX_HELD_FDS``, default 64.

    Raises:
        ValueError: the variable is set to something other than a positive integer.
    """
    configured = os.environ.get(_MAX_HELD_ENV, "").strip()
    if not configured:
        return DEFAULT_MAX_HELD_FDS
    try:
        value = int(configured)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{_MAX_HELD_ENV}={configured!r}: expected a positive integer")
    return value


class _Held:
    """What the registry keeps for one socket: batches of duplicates, oldest first."""

    __slots__ = ("batches", "count", "unacked")

    def __init__(self) -> None:
        self.batches: Deque[List[int]] = collections.deque()
        #: Duplicates in all batches.  Kept, not summed per call (that walks up to 64
        #: batches per held send); an interrupt between a batch's change and this update
        #: can skew it by one batch until the entry next holds at most one batch, where it
        #: is counted afresh.
        self.count = 0
        #: Frames sent with an acknowledgement request and not acknowledged yet (the shim's
        #: own connections); the newest ``len(batches)`` of them still have their batch.
        self.unacked = 0

    def recount(self) -> None:
        if len(self.batches) <= 1:
            self.count = sum(map(len, self.batches))


class _SentFdRegistry:
    """Duplicates of sent fds, per socket, until acknowledged, released, closed or collected.

    Bounded: past ``max_per_socket`` duplicates for one socket (``None``: the
    ``UDSCOMPAT_MAX_HELD_FDS`` setting), the oldest batches are closed; the
    newest batch is always kept whole.  A child process starts with an empty
    registry and a fresh lock (``os.register_at_fork``).

    A signal handler that raises can interrupt any of these methods: a
    duplicate is made straight into a batch that is already registered, and
    is forgotten in the same C-level step that closes it (``_close_batch``),
    so none is lost and none closed twice (which could close another
    thread's new descriptor that took the number).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: weakref.WeakKeyDictionary[socket.socket, _Held] = weakref.WeakKeyDictionary()
        #: The bound per socket; None reads ``max_held_fds()``.
        self.max_per_socket: Optional[int] = None
        #: Duplicates closed at the bound before their acknowledgement came, since start.
        self.evicted = 0
        #: Sent descriptor numbers, tracked only where a same-process receive was seen to
        #: return the sender's own slot (see ``guard_reused``).
        self.originals: Set[int] = set()

    def hold(self, sock: socket.socket, fds: Sequence[int]) -> List[int]:
        """Keep duplicates of ``fds`` for ``sock``; call it *before* sending them.

        The duplicates are made first, so a full descriptor table fails the
        send here, before anything went out, and an acknowledgement can never
        arrive before its batch is held.  Returns the batch, for ``unhold``
        if the send then fails.

        Raises:
            OSError: from ``dup`` (EMFILE); nothing is held then.
        """
        limit = self.max_per_socket or max_held_fds()
        reuse = _probes.same_process_fd_reuse()  # run outside the lock (cached after once)
        batch: List[int] = []
        with self._lock:
            self._reap_closed()
            entry = self._held.get(sock)
            if entry is None:
                entry = self._held[sock] = _Held()
                weakref.finalize(sock, _close_entry, entry)
            # Registered empty, then filled: each duplicate is stored by the same C-level
            # call that makes it (os.dup gives close-on-exec copies).
            entry.batches.append(batch)
            entry.unacked += 1
            try:
                batch.extend(map(os.dup, fds))
            except OSError:
                entry.unacked -= 1
                self._drop(entry, batch)
                raise
            entry.count += len(batch)
            while len(entry.batches) > 1 and entry.count > limit:
                oldest = entry.batches[0]
                self.evicted += len(oldest)
                entry.count -= len(oldest)
                _close_batch(oldest)
                entry.batches.popleft()
            entry.recount()
            if reuse:
                self.originals.update(fds)
        return batch

    def unhold(self, sock: socket.socket, batch: List[int]) -> None:
        """Undo ``hold`` for a send that failed before anything went out.

        Closes the batch only if it is still held: one evicted, released or
        acknowledged meanwhile was closed then, and its numbers may already
        name other descriptors.
        """
        with self._lock:
            entry = self._held.get(sock)
            if entry is not None:
                # That frame never went out: no acknowledgement will come for it, held or not.
                entry.unacked = max(entry.unacked - 1, 0)
                self._drop(entry, batch)

    @staticmethod
    def _drop(entry: _Held, batch: List[int]) -> None:
        for i in range(len(entry.batches) - 1, -1, -1):
            if entry.batches[i] is batch:
                entry.count -= len(batch)
                _close_batch(batch)
                del entry.batches[i]
                entry.recount()
                return

    def acknowledge(self, sock: socket.socket, frames: int) -> bool:
        """The peer confirmed the oldest ``frames`` requests: close their batches.

        Returns False (and changes nothing) if ``frames`` is more than were
        awaiting acknowledgement: the peer is lying.
        """
        with self._lock:
            entry = self._held.get(sock)
            if entry is None or not 0 < frames <= entry.unacked:
                return False
            entry.unacked -= frames
            while len(entry.batches) > entry.unacked:
                entry.count -= len(entry.batches[0])
                _close_batch(entry.batches[0])
                entry.batches.popleft()
            entry.recount()
        return True

    def release(self, sock: socket.socket) -> int:
        """Close every duplicate held for ``sock``; returns how many."""
        with self._lock:
            entry = self._held.get(sock)
            if entry is None:
                return 0
            count = entry.count
            _close_entry(entry)
        return count

    def held(self, sock: socket.socket) -> int:
        """How many duplicates are held for ``sock``."""
        with self._lock:
            entry = self._held.get(sock)
            return 0 if entry is None else entry.count

    def after_fork_in_child(self) -> None:
        """A forked child holds nothing: close the inherited copies, start afresh."""
        self._lock = threading.Lock()  # another thread may have held the old one at fork
        try:
            entries = list(self._held.values())
        except RuntimeError:  # pragma: no cover - the fork froze a resize mid-way
            entries = []
        self._held = weakref.WeakKeyDictionary()
        self.originals = set()
        for entry in entries:
            _close_entry(entry)

    def _reap_closed(self) -> None:
        for sock in [s for s in self._held if s.fileno() == -1]:
            _close_entry(self._held[sock])  # closed before it is forgotten
            del self._held[sock]


def _close_entry(entry: _Held) -> None:
    # Runs as a finalizer too, so it takes no lock: once its socket is gone, nothing else
    # reaches the entry.  Each batch is emptied as it is closed: a second run closes nothing.
    while entry.batches:
        _close_batch(entry.batches[0])
        entry.batches.popleft()
    entry.count = 0


def _close_batch(batch: List[int]) -> None:
    """Close every descriptor of ``batch`` and forget it, in one C-level step per descriptor.

    ``map(os.close, map(batch.pop, ...))`` drained by a ``deque`` runs in C, so no signal
    handler can run between a close and the pop that forgets it: an interrupted call leaves
    the rest in ``batch`` (closed by the next), never one closed and remembered.
    """
    while batch:
        try:
            collections.deque(map(os.close, map(batch.pop, [-1] * len(batch))), maxlen=0)
        except OSError:
            pass  # that one is gone either way (EBADF; EINTR after the kernel closed it)


REGISTRY = _SentFdRegistry()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=REGISTRY.after_fork_in_child)

#: The compiled fast paths of send_fds/recv_fds (None in pure Python): the same checks in C,
#: NotImplemented wherever the code of these functions must run.
_fast_send = _io.enable_fast_fdpass(hold_sent_fds, REGISTRY)
_fast_recv = _io.compiled_recv_fds
_PURE_SEND = _io.send_with_fds is _io.pure_send_with_fds
#: recv_fds's receive, and its receive for a peek (the same function in pure Python).
_RECEIVE = _io.recv_with_fds
_PEEK_RECEIVE = _io.pure_recv_with_fds
_PURE_RECEIVE = _RECEIVE is _PEEK_RECEIVE


def send_fds(
    sock: SocketLike,
    data: Buffers,
    fds: Sequence[Any],
    flags: int = 0,
    address: Any = None,
) -> int:
    """Like ``socket.send_fds``, but honours ``flags`` and ``address`` and checks first.

    Args:
        sock: an AF_UNIX socket of any type (stream, datagram, seqpacket),
            a ``SeqpacketConn`` or ``UnixDatagram`` (their ``send``; no
            ``flags``), or an object whose ``fileno()`` is a socket's.
        data: a bytes-like object, or an iterable of them (as ``sendmsg``).
        fds: descriptors (ints or objects with ``fileno()``) to pass, in one
            SCM_RIGHTS message.  They may be closed as soon as this returns.
        flags: ``sendmsg`` flags.
        address: destination for an unconnected datagram socket: a
            ``UnixSocketAddr``, or a str, bytes or path-like by udscompat's
            one address rule (``"@name"`` is abstract; see ``as_address``).

    Returns:
        The number of payload bytes sent (on a stream socket possibly fewer
        than given: the descriptors travel with the first byte).

    Raises:
        ValueError: more descriptors than this OS takes in one message, a
            negative descriptor, a socket that is not AF_UNIX, or
            descriptors with no payload on a stream socket (Linux would drop
            them silently).
        TypeError: an item of ``fds`` is a bool or not a descriptor.
        OSError: from ``sendmsg``, or EMFILE from duplicating ``fds`` where
            sent descriptors are held (see ``release_sent_fds``); nothing was
            sent then.
    """
    if address is None and _fast_send is not None:
        # The common case compiled (udscompat/_speedups.c), or NotImplemented before anything
        # was sent: the code below then does the whole call.
        sent: int = _fast_send(sock, data, fds, flags)
        if sent is not NotImplemented:
            return sent
    if type(sock) not in _PLAIN_SOCKETS or _raw_family(sock) != _AF_UNIX:
        if not isinstance(sock, socket.socket):
            return _sockarg.send_fds(sock, data, fds, flags, address)
        _check_unix(sock)
    if TYPE_CHECKING:  # what the test above established, for mypy (free at run time)
        assert isinstance(sock, socket.socket)
    if type(data) is list:
        buffers = data  # only read, never kept
    elif isinstance(data, (bytes, bytearray, memoryview)):
        buffers = [data]
    else:
        buffers = list(data)
    numbers = _io.check_fds(fds)
    if (
        numbers
        and not (buffers and type(buffers[0]) is bytes and buffers[0])  # _has_payload's first test
        and not _has_payload(buffers)
        and _raw_type(sock) & 0xF == socket.SOCK_STREAM
    ):
        raise ValueError("descriptors need at least one payload byte on a stream socket")
    # Held before the send, so a full descriptor table fails it before anything went out.
    batch = REGISTRY.hold(sock, numbers) if numbers and hold_sent_fds() else None
    try:
        if address is None:
            try:
                if _PURE_SEND and _io.stream_padding is False:
                    # _io.pure_send_with_fds inline once the padding fact is known (no kernel
                    # here pads): the call cost ~1,100 of a pure round trip's ~27,000 instructions.
                    ancdata = [(_SOL_SOCKET, _SCM_RIGHTS, numbers)] if numbers else []
                    return sock.sendmsg(buffers, ancdata, flags)
                return _io.send_with_fds(sock, buffers, numbers, flags)
            except BlockingIOError:
                timeout = sock.gettimeout()
                if not timeout:
                    raise
                return _within_timeout(
                    sock, timeout, True, _io.send_with_fds, buffers, numbers, flags
                )
        return sendmsg_to(sock, buffers, _io.rights(sock, numbers), flags, address)
    except OSError:
        if batch is not None:
            REGISTRY.unhold(sock, batch)
        raise


def recv_fds(
    sock: SocketLike, bufsize: int, maxfds: int, flags: int = 0
) -> Tuple[bytes, List[int], int, Any]:
    """Like ``socket.recv_fds``, but closes what it cannot hand over and raises.

    Args:
        sock: an AF_UNIX socket, a ``SeqpacketConn`` (its ``recv_message``,
            or ``peek`` for ``MSG_PEEK``) or ``UnixDatagram``, or an object
            whose ``fileno()`` is a socket's.
        bufsize: most payload bytes to receive.
        maxfds: most descriptors the caller accepts.
        flags: ``recvmsg`` flags (``MSG_PEEK`` included: on Linux a peek
            clones the descriptors, which the caller then owns; where a peek
            installs none -- NetBSD and FreeBSD copy out kernel pointers,
            macOS zeros -- it returns no descriptors).

    Returns:
        ``(data, fds, msg_flags, address)``; ``fds`` are new, close-on-exec
        descriptors owned by the caller.

    Raises:
        ControlTruncatedError: control data was truncated or more than
            ``maxfds`` descriptors arrived; every received descriptor was
            closed and the payload is in ``.data``.
        ValueError: negative ``bufsize`` or ``maxfds``, or not AF_UNIX.
        TypeError: ``bufsize`` or ``maxfds`` is not an int.
        OSError: ``EMFILE`` for a ``MSG_PEEK`` of a message with descriptors
            when the table has no room for the probe that tells whether this
            kernel's peek installs copies (asked once per process; a
            ``SeqpacketConn`` asks it when made): nothing is installed, the
            message stays queued.  A peek of a message without descriptors
            works under a full table.
    """
    if _fast_recv is not None:
        # The common case compiled, or NotImplemented before anything was received.
        received: Tuple[bytes, List[int], int, Any] = _fast_recv(sock, bufsize, maxfds, flags)
        if received is not NotImplemented:
            return received
    if type(sock) not in _PLAIN_SOCKETS or _raw_family(sock) != _AF_UNIX:
        if not isinstance(sock, socket.socket):
            return _sockarg.recv_fds(sock, bufsize, maxfds, flags)
        _check_unix(sock)
    if TYPE_CHECKING:  # what the test above established, for mypy (free at run time)
        assert isinstance(sock, socket.socket)
    # A bad bufsize the receive itself refuses, before any system call (below); the
    # compiled one wants an int, so only Python's recvmsg sees an __index__ object.
    if type(maxfds) is not int or maxfds < 0 or (not _PURE_RECEIVE and type(bufsize) is not int):
        bufsize, maxfds = _io.check_sizes(bufsize, maxfds)
    # A peek takes the pure path, which reads descriptors only where the kernel installed
    # copies for the peeker (_probes.peek_installs_fds).
    receive = _PEEK_RECEIVE if flags & _MSG_PEEK else _RECEIVE
    try:
        data, fds, msg_flags, address, _ = receive(sock, bufsize, maxfds, flags)
    except BlockingIOError:
        timeout = sock.gettimeout()
        if not timeout:
            raise
        data, fds, msg_flags, address, _ = _within_timeout(
            sock, timeout, False, receive, bufsize, maxfds, flags
        )
    except (TypeError, ValueError, OverflowError):
        _io.check_sizes(bufsize, maxfds)  # a bad bufsize: the error in our words, naming it
        raise
    if fds and REGISTRY.originals:
        fds = guard_reused(fds)
    return data, fds, msg_flags, address


def _within_timeout(
    sock: socket.socket, timeout: float, write: bool, operation: Callable[..., T], *args: Any
) -> T:
    """Retry ``operation(sock, *args)`` within ``sock``'s own timeout, as its methods would.

    The compiled wrappers make one system call on the descriptor, and a socket
    in timeout mode is non-blocking underneath, so they fail with
    BlockingIOError where ``sock.recvmsg`` would wait; this waits as it would
    (the pure-Python wrappers call the socket's methods, which wait themselves).
    The arguments come separately, not in a closure, so that ``send_fds`` and
    ``recv_fds`` keep their variables plain locals (a closure over them made
    each call create four or five cells: ~10% of a pure-Python round trip).
    """
    return _io.call(
        functools.partial(operation, sock, *args),
        lambda w, deadline: _io.wait_ready(sock, write=w, deadline=deadline),
        write=write,
        deadline=_io.deadline(timeout),
    )


def guard_reused(fds: List[int]) -> List[int]:
    """Replace any received fd that is a slot this process sent (and holds) by a duplicate.

    No kernel read does this (os-facts §2.5); the probe watches for it, and
    only then are sent fds held, which makes the check meaningful.
    """
    if not REGISTRY.originals:
        return fds
    return [os.dup(fd) if fd in REGISTRY.originals else fd for fd in fds]


def release_sent_fds(sock: socket.socket) -> int:
    """Close the duplicates udscompat holds for descriptors sent on ``sock``.

    Where the kernel needs it (macOS, os-facts §2.4: its collector can drop an
    in-flight descriptor whose sender closed it), ``send_fds`` keeps a
    duplicate of each sent descriptor, so the caller may close its own copy at
    once.  Call this once the peer has confirmed receipt by its own protocol.
    The shim's own seqpacket connections release on the peer's
    acknowledgement (even a sender that never receives), and every socket's
    duplicates are closed when it is closed or collected.

    The duplicates are bounded: at most ``UDSCOMPAT_MAX_HELD_FDS`` (default
    64) per socket.  Beyond that the oldest are closed first (the newest send
    is always kept whole): a message still unreceived after that many later
    ones loses this protection, and nothing grows without bound.  A forked
    child holds none (it closes its inherited copies).

    Returns:
        How many duplicates were closed (0 where nothing is held).
    """
    return REGISTRY.release(sock)


# socket.socket.family/.type wrap the C attribute in an IntEnum on every access: slow on a
# hot path.  The C attributes give the plain ints.
_raw_family = _socket.socket.family.__get__
#: Socket types nobody overrides: the common case's one test (subclasses take the long way).
_PLAIN_SOCKETS = _io.PLAIN_SOCKETS
_raw_type = _socket.socket.type.__get__
_AF_UNIX = socket.AF_UNIX
_SOL_SOCKET = backend.SOL_SOCKET
_SCM_RIGHTS = backend.SCM_RIGHTS
_MSG_PEEK = int(socket.MSG_PEEK)  # a plain int: an IntFlag operand costs ~1 us per receive


def _check_unix(sock: socket.socket) -> None:
    try:
        family = _raw_family(sock)
    except TypeError:
        raise TypeError(f"expected a socket.socket, got {type(sock).__name__}") from None
    if family != _AF_UNIX:
        raise ValueError(f"expected an AF_UNIX socket, got {sock.family!r}")


def _has_payload(buffers: List[Any]) -> bool:
    if buffers and type(buffers[0]) is bytes and buffers[0]:
        return True  # the common case, without a memoryview
    return any(len(memoryview(b)) for b in buffers)
