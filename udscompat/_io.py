"""The syscall layer: one sendmsg or recvmsg with descriptors, and one wait.

Every socket kind in udscompat goes through ``send_with_fds`` and
``recv_with_fds``, so the rules -- one SCM_RIGHTS per message, close-on-exec,
no descriptor leaked on truncation -- live in one place.  ``call`` is the
one loop behind blocking, non-blocking and timeout modes.
"""

from __future__ import annotations

import array
import contextlib
import errno
import fcntl
import os
import select
import socket
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple, TypeVar

from udscompat import _probes
from udscompat._errors import ControlTruncatedError
from udscompat._platform import backend

T = TypeVar("T")

#: Room for the most descriptors the kernel puts in one message, so the kernel itself never
#: truncates (CPython's recv_fds uses CMSG_LEN and loses fds on FreeBSD, #111675; macOS leaks
#: what does not fit, #80931).  Where the cap is unknown, room for 256.
FD_ROOM = backend.MAX_FDS_PER_MESSAGE or 256
_MARKER_ROOM = socket.CMSG_SPACE(16)  # a struct timeval
ANCBUF_SIZE = socket.CMSG_SPACE(4 * FD_ROOM) + _MARKER_ROOM
# Backend values read on every receive, bound once.
_SOL_SOCKET = backend.SOL_SOCKET
_SCM_RIGHTS = backend.SCM_RIGHTS
_MSG_CTRUNC = backend.MSG_CTRUNC
#: The cmsg type of the per-message marker (``Backend.MESSAGE_MARKER``), None where there is none.
MARKER_TYPE = backend.MESSAGE_MARKER[2] if backend.MESSAGE_MARKER is not None else None
_FD_CMSGS = backend.FD_CARRYING_CMSG_TYPES
_MAX_FDS = backend.MAX_FDS_PER_MESSAGE
_MAX_FD_NUMBER = 2**31 - 1


#: One recvmsg: payload, descriptors (the caller owns them), flags, source, marker seen.
#: A plain tuple: it is built on every receive, and a NamedTuple costs a Python call.
Received = Tuple[bytes, List[int], int, Any, bool]


def check_fds(fds: Sequence[Any]) -> array.array[int]:
    """Descriptor numbers from ints or objects with ``fileno()``, checked before any send.

    Returns them as the C ``int`` array that SCM_RIGHTS carries.

    Raises:
        ValueError: a negative or out-of-range descriptor, or more than this
            OS takes in one message.
        TypeError: an item is neither an int nor has ``fileno()``.
    """
    # An unsigned array rejects negative numbers as it is built, with no second pass.
    try:
        try:
            numbers = array.array("I", fds)
        except TypeError:  # some items are objects with fileno()
            numbers = array.array("I", [i if isinstance(i, int) else _fileno_of(i) for i in fds])
    except OverflowError:
        bad = [i for i in fds if isinstance(i, int) and not 0 <= i <= _MAX_FD_NUMBER]
        raise ValueError(f"invalid file descriptor {bad[0] if bad else list(fds)!r}") from None
    if _MAX_FDS is not None and len(numbers) > _MAX_FDS:
        raise ValueError(
            f"{len(numbers)} descriptors in one message; {backend.OS_NAME} takes at most {_MAX_FDS}"
        )
    return numbers


def _fileno_of(item: Any) -> int:
    fileno = getattr(item, "fileno", None)
    if fileno is None or isinstance(item, bool):
        raise TypeError(f"expected a file descriptor or an object with fileno(), got {item!r}")
    result = fileno()
    if not isinstance(result, int):
        raise TypeError(f"{item!r}.fileno() returned {result!r}")
    return result


def send_with_fds(
    sock: socket.socket,
    buffers: Sequence[Any],
    fds: array.array[int],
    flags: int = 0,
    address: Any = None,
) -> int:
    """One ``sendmsg`` carrying ``fds`` in exactly one SCM_RIGHTS message."""
    ancdata = [(_SOL_SOCKET, _SCM_RIGHTS, fds)] if fds else []
    if address is None:
        return sock.sendmsg(buffers, ancdata, flags)
    return sock.sendmsg(buffers, ancdata, flags, address)


def recv_with_fds(sock: socket.socket, bufsize: int, maxfds: int, flags: int = 0) -> Received:
    """One ``recvmsg``; like ``socket.recv_fds``, but nothing can leak.

    Returns ``(data, fds, msg_flags, address, marked)``.  Received
    descriptors are close-on-exec (MSG_CMSG_CLOEXEC where the kernel honours
    it, else set at once).  Descriptors the caller did not ask for -- more
    than ``maxfds``, or any from other fd-carrying cmsgs -- are closed.

    Raises:
        ControlTruncatedError: the kernel set MSG_CTRUNC or failed with
            EMSGSIZE (OpenBSD, DragonFly), or more than ``maxfds`` arrived.
            All received descriptors are closed first; ``.data`` keeps the payload.
    """
    try:
        cloexec = _probes.cmsg_cloexec_flag()
    except OSError:
        cloexec = None  # the probe itself could not run (EMFILE?): set FD_CLOEXEC by hand
    data, ancdata, msg_flags, address = recvmsg(sock, bufsize, flags | (cloexec or 0))
    if not msg_flags & _MSG_CTRUNC:
        if not ancdata:
            return data, [], msg_flags, address, False
        if len(ancdata) == 1 and cloexec is not None:
            # The common cases, the marker alone or one SCM_RIGHTS within maxfds, inline.
            level, kind, payload = ancdata[0]
            if kind == MARKER_TYPE and level == _SOL_SOCKET:
                return data, [], msg_flags, address, True
            if (
                kind == _SCM_RIGHTS
                and level == _SOL_SOCKET
                and len(payload) <= 4 * maxfds
                and not len(payload) & 3
            ):
                return data, memoryview(payload).cast("i").tolist(), msg_flags, address, False
    fds, marked = collect_fds(data, ancdata, msg_flags, maxfds, cloexec is None)
    return data, fds, msg_flags, address, marked


def recvmsg(sock: socket.socket, bufsize: int, flags: int) -> Tuple[bytes, List[Any], int, Any]:
    """``sock.recvmsg`` with room for the kernel's descriptor cap and the marker.

    Every receive path reads through here, so none can miss the translation:
    a recvmsg that fails with EMSGSIZE (OpenBSD, DragonFly: the control data
    did not fit, the descriptors are gone) raises ``ControlTruncatedError``.
    """
    try:
        return sock.recvmsg(bufsize, ANCBUF_SIZE, flags)
    except OSError as exc:
        if exc.errno == errno.EMSGSIZE:
            raise _emsgsize_error() from exc
        raise


def _emsgsize_error() -> ControlTruncatedError:
    return ControlTruncatedError(
        "recvmsg failed with EMSGSIZE: the kernel discarded the descriptors "
        "(control data did not fit)"
    )


def collect_fds(
    data: bytes,
    ancdata: List[Tuple[int, int, bytes]],
    msg_flags: int,
    maxfds: int,
    set_cloexec: bool,
) -> Tuple[List[int], bool]:
    """The descriptors of one ``recvmsg``'s control data, and whether the marker was there.

    Raises:
        ControlTruncatedError: as ``recv_with_fds``; every descriptor is closed first.
    """
    fds: List[int] = []
    marked = False
    for level, kind, payload in ancdata:
        if level != _SOL_SOCKET:
            continue
        if kind == _SCM_RIGHTS:
            fds += _ints(payload)
        elif kind == MARKER_TYPE:
            marked = True
        elif kind in _FD_CMSGS:
            close_fds(_ints(payload))
    if msg_flags & _MSG_CTRUNC:
        close_fds(fds)
        # The buffer had room for the kernel's own per-message cap, so the usual cause is a
        # full descriptor table in this process.
        raise ControlTruncatedError(
            f"control data truncated (MSG_CTRUNC): {len(fds)} received descriptors closed; the "
            "kernel dropped the rest (is this process out of descriptors?)",
            data,
            len(fds),
        )
    if len(fds) > maxfds:
        refuse_excess_fds(fds, maxfds, data)
    if fds and set_cloexec:
        for fd in fds:
            fcntl.fcntl(fd, fcntl.F_SETFD, fcntl.fcntl(fd, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
    return fds, marked


def _ints(payload: bytes) -> List[int]:
    """The C ints in a cmsg payload (a trailing partial int, from a short buffer, ignored)."""
    whole = len(payload) & ~3
    return memoryview(payload[:whole] if whole != len(payload) else payload).cast("i").tolist()


def check_sizes(bufsize: int, maxfds: int) -> None:
    """Reject a negative ``bufsize`` or ``maxfds`` before any receive."""
    if bufsize < 0 or maxfds < 0:
        raise ValueError(f"bufsize and maxfds must be >= 0, got {bufsize} and {maxfds}")


def refuse_excess_fds(fds: Sequence[int], maxfds: int, data: bytes) -> None:
    """Close all of ``fds`` and raise if there are more than the caller accepts."""
    if len(fds) > maxfds:
        close_fds(fds)
        raise ControlTruncatedError(
            f"{len(fds)} descriptors arrived but at most {maxfds} were asked for; all were closed",
            data,
            len(fds),
        )


def close_fds(fds: Sequence[int]) -> None:
    """Close every descriptor, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def call(fileno: int, operation: Callable[[], T], *, write: bool, timeout: Optional[float]) -> T:
    """Run a non-blocking ``operation`` under a socket-style timeout.

    Tries first, waits only on ``BlockingIOError`` (trio's order: waiting
    first can hang where trying first answers).  ``timeout`` is ``None``
    (block), ``0.0`` (re-raise ``BlockingIOError``) or seconds, measured
    from a monotonic deadline set once.

    Raises:
        BlockingIOError: non-blocking mode and the operation would block.
        TimeoutError: the deadline passed.
    """
    deadline: Optional[float] = None
    while True:
        try:
            return operation()
        except BlockingIOError:
            if timeout == 0.0:
                raise
        remaining: Optional[float] = None
        if timeout is not None:
            now = time.monotonic()
            if deadline is None:
                deadline = now + timeout
            remaining = deadline - now
            if remaining <= 0:
                raise TimeoutError(errno.ETIMEDOUT, "timed out")
        wait(fileno, write=write, timeout=remaining)


if hasattr(select, "poll"):

    def wait(fileno: int, *, write: bool, timeout: Optional[float]) -> bool:
        """Wait until ``fileno`` is readable (or writable); False on timeout."""
        poller = select.poll()
        poller.register(fileno, select.POLLOUT if write else select.POLLIN)
        millis = None if timeout is None else max(0, int(timeout * 1000 + 0.999))
        return bool(poller.poll(millis))

else:  # pragma: no cover - every supported OS has poll

    def wait(fileno: int, *, write: bool, timeout: Optional[float]) -> bool:
        """Wait until ``fileno`` is readable (or writable); False on timeout."""
        ready = (
            select.select([], [fileno], [], timeout)
            if write
            else select.select([fileno], [], [], timeout)
        )
        return bool(ready[0] or ready[1])
