"""``send_fds`` / ``recv_fds``: the standard library's pair, with its gaps closed.

Differences from ``socket.send_fds``/``socket.recv_fds``: ``flags`` and
``address`` are honoured (CPython #107898); received descriptors are
close-on-exec; the control buffer is sized with CMSG_SPACE for the kernel's
cap; truncation closes what arrived and raises; and the sender may close its
copies as soon as ``send_fds`` returns, on every OS.
"""

from __future__ import annotations

import _socket
import functools
import os
import socket
import threading
import weakref
from typing import Any, Iterable, List, Optional, Sequence, Set, Tuple, Union

from udscompat import _io, _probes
from udscompat._bind import sendmsg_to
from udscompat._platform import backend

__all__ = ["hold_sent_fds", "recv_fds", "release_sent_fds", "send_fds"]

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


class _SentFdRegistry:
    """Duplicates of sent fds, per socket, until released or the socket is closed or collected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: weakref.WeakKeyDictionary[socket.socket, List[List[int]]] = (
            weakref.WeakKeyDictionary()
        )
        #: Sent descriptor numbers, tracked only where a same-process receive was seen to
        #: return the sender's own slot (see ``guard_reused``).
        self.originals: Set[int] = set()

    def hold(self, sock: socket.socket, fds: Sequence[int]) -> List[int]:
        dups = [os.dup(fd) for fd in fds]  # os.dup gives close-on-exec copies
        with self._lock:
            self._reap_closed()
            batches = self._held.get(sock)
            if batches is None:
                batches = self._held[sock] = []
                weakref.finalize(sock, _close_batches, batches)
            batches.append(dups)
            if _probes.same_process_fd_reuse():
                self.originals.update(fds)
        return dups

    def release(self, sock: socket.socket, count: Optional[int] = None) -> int:
        """Close the oldest ``count`` batches held for ``sock`` (all if None)."""
        with self._lock:
            batches = self._held.get(sock, [])
            taken = batches[: len(batches) if count is None else count]
            del batches[: len(taken)]
        return _close_batches(taken)

    def held(self, sock: socket.socket) -> int:
        """How many duplicates are held for ``sock``."""
        with self._lock:
            return sum(len(b) for b in self._held.get(sock, []))

    def _reap_closed(self) -> None:
        for sock in [s for s in self._held if s.fileno() == -1]:
            _close_batches(self._held.pop(sock))


def _close_batches(batches: List[List[int]]) -> int:
    fds = [fd for batch in batches for fd in batch]
    del batches[:]
    _io.close_fds(fds)
    return len(fds)


REGISTRY = _SentFdRegistry()


def send_fds(
    sock: socket.socket,
    data: Buffers,
    fds: Sequence[Any],
    flags: int = 0,
    address: Any = None,
) -> int:
    """Like ``socket.send_fds``, but honours ``flags`` and ``address`` and checks first.

    Args:
        sock: an AF_UNIX socket of any type (stream, datagram, seqpacket).
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
        OSError: from ``sendmsg``.
    """
    _check_unix(sock)
    if type(data) is list:
        buffers = data  # only read, never kept
    elif isinstance(data, (bytes, bytearray, memoryview)):
        buffers = [data]
    else:
        buffers = list(data)
    numbers = _io.check_fds(fds)
    if numbers and not _has_payload(buffers) and _raw_type(sock) & 0xF == socket.SOCK_STREAM:
        raise ValueError("descriptors need at least one payload byte on a stream socket")
    ancdata = [(_SOL_SOCKET, _SCM_RIGHTS, numbers)] if numbers else []
    if address is None:
        sent = sock.sendmsg(buffers, ancdata, flags)
    else:
        sent = sendmsg_to(sock, buffers, ancdata, flags, address)
    if numbers and hold_sent_fds():
        REGISTRY.hold(sock, numbers)
    return sent


def recv_fds(
    sock: socket.socket, bufsize: int, maxfds: int, flags: int = 0
) -> Tuple[bytes, List[int], int, Any]:
    """Like ``socket.recv_fds``, but closes what it cannot hand over and raises.

    Args:
        sock: an AF_UNIX socket.
        bufsize: most payload bytes to receive.
        maxfds: most descriptors the caller accepts.
        flags: ``recvmsg`` flags (``MSG_PEEK`` included: on Linux a peek
            clones the descriptors, which the caller then owns).

    Returns:
        ``(data, fds, msg_flags, address)``; ``fds`` are new, close-on-exec
        descriptors owned by the caller.

    Raises:
        ControlTruncatedError: control data was truncated or more than
            ``maxfds`` descriptors arrived; every received descriptor was
            closed and the payload is in ``.data``.
        ValueError: negative ``bufsize`` or ``maxfds``, or not AF_UNIX.
    """
    _check_unix(sock)
    if bufsize < 0 or maxfds < 0:
        _io.check_sizes(bufsize, maxfds)
    data, fds, msg_flags, address, _ = _io.recv_with_fds(sock, bufsize, maxfds, flags)
    if fds and REGISTRY.originals:
        fds = guard_reused(fds)
    return data, fds, msg_flags, address


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

    Call it once the peer has confirmed receipt by its own protocol.  The
    shim's own seqpacket connections do this by acknowledgement, and every
    socket's duplicates are closed when it is closed or collected.

    Returns:
        How many duplicates were closed (0 where nothing is held).
    """
    return REGISTRY.release(sock)


# socket.socket.family/.type wrap the C attribute in an IntEnum on every access: slow on a
# hot path.  The C attributes give the plain ints.
_raw_family = _socket.socket.family.__get__
_raw_type = _socket.socket.type.__get__
_AF_UNIX = socket.AF_UNIX
_SOL_SOCKET = backend.SOL_SOCKET
_SCM_RIGHTS = backend.SCM_RIGHTS


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
