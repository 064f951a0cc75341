"""The system-call layer: one sendmsg or recvmsg with descriptors, and one wait.

Every socket kind in udscompat goes through ``send_with_fds`` and
``recv_with_fds``, so the rules -- one SCM_RIGHTS per message, close-on-exec,
no descriptor leaked on truncation -- live in one place.  These two are the
innermost wrappers: an accelerator replaces them, nothing else.

Waiting is one helper too.  A public call turns its socket-style timeout into
a *deadline* once (``deadline``): ``None`` blocks, ``NONBLOCKING`` never
waits, any other value is an absolute ``time.monotonic()`` by which the whole
call must end, however many system calls it makes.  ``call`` tries an
operation first and waits only on ``BlockingIOError`` (trio's
``_nonblocking_helper``; waiting first can hang where trying first answers),
``wait_ready`` polls for what remains of the deadline (CPython's
``sock_call_ex``).  asyncio is the fourth strategy: it calls with
``NONBLOCKING`` and waits on its loop instead (``udscompat.aio``).

Input checks live here as well, so every entry point rejects the same bad
values with the same words, before any system call.
"""

from __future__ import annotations

import _socket
import array
import contextlib
import errno
import fcntl
import operator
import os
import select
import socket
import struct
import termios
import time
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple, TypeVar, Union

from udscompat import _accel, _probes
from udscompat._errors import ControlTruncatedError
from udscompat._platform import backend
from udscompat._records import Message

T = TypeVar("T")

#: Room for the most descriptors the kernel puts in one message, so the kernel itself never
#: truncates (CPython's recv_fds uses CMSG_LEN and loses fds on FreeBSD, #111675; macOS leaks
#: what does not fit, #80931).  Where the cap is unknown, room for 256.
FD_ROOM = backend.MAX_FDS_PER_MESSAGE or 256
_MARKER_ROOM = socket.CMSG_SPACE(16)  # a struct timeval
# And room for this kernel's credential messages on every receive: credentials passing can
# be on without udscompat's knowing (another dup() object turned it on; Linux gives every
# socket a listener accepts the listener's SO_PASSCRED), and where they do not fit the kernel
# drops descriptors instead (Linux: SO_TIMESTAMP 32 + SCM_CREDENTIALS 32 B left room for 246).
ANCBUF_SIZE = socket.CMSG_SPACE(4 * FD_ROOM) + _MARKER_ROOM + backend.CREDENTIALS_ROOM
# Backend values read on every receive, bound once.
_SOL_SOCKET = backend.SOL_SOCKET
_SCM_RIGHTS = backend.SCM_RIGHTS
_MSG_CTRUNC = backend.MSG_CTRUNC
# The C attribute, a plain int (socket.socket.type builds an IntEnum on every access).
_raw_type = _socket.socket.type.__get__
_SOCK_STREAM = socket.SOCK_STREAM
# A plain int: ``flags & socket.MSG_PEEK`` builds an IntFlag on every receive (about 1 us).
_MSG_PEEK = int(socket.MSG_PEEK)
#: The C ints of an SCM_RIGHTS payload: one with a ``Struct`` (~1,100 instructions fewer than a
#: memoryview cast), several by their count's format (~600 fewer for 16), for as many as the
#: control buffer holds.
_unpack_int = struct.Struct("i").unpack
_unpack = struct.unpack
_INTS_FORMATS = [f"{count}i" for count in range(ANCBUF_SIZE // 4 + 1)]
#: The cmsg type of the per-message marker (``Backend.MESSAGE_MARKER``), None where there is none.
MARKER_TYPE = backend.MESSAGE_MARKER[2] if backend.MESSAGE_MARKER is not None else None
_FD_CMSGS = backend.FD_CARRYING_CMSG_TYPES
_MAX_FDS = backend.MAX_FDS_PER_MESSAGE
_MAX_FD_NUMBER = 2**31 - 1  # descriptors are C ints
_MAX_FDS_PER_SEND = _MAX_FDS if _MAX_FDS is not None else 2**63  # (no cap known: none)
_fd_array = array.array
#: Longest timeout the standard library accepts (a 64-bit count of nanoseconds).
_MAX_TIMEOUT = (2**63 - 1) / 1e9
#: Longest single poll: a wait is made of polls this long, so that the retry finds a
#: socket that another thread closed meanwhile (EBADF) instead of polling forever on its
#: old number, which by then may name whatever was opened next.
_WAKE_MS = 1000

#: The deadline of a non-blocking call: it never waits.  (Real deadlines are
#: ``time.monotonic()`` values, which are positive.)
NONBLOCKING = 0.0
_monotonic = time.monotonic


#: One recvmsg: payload, descriptors (the caller owns them), flags, source, marker seen.
#: A plain tuple: it is built on every receive, and a NamedTuple costs a Python call.
Received = Tuple[bytes, List[int], int, Any, bool]


# -- input checks (before any system call) ------------------------------------------------


def check_fds(fds: Iterable[Any]) -> array.array[int]:
    """Descriptor numbers from ints or objects with ``fileno()``, checked before any send.

    ``fds`` is read exactly once (a generator loses nothing).  Returns the
    numbers as the array of C ints that SCM_RIGHTS carries (typecode ``"I"``
    or ``"i"``: every number is within the C int range either way).

    Raises:
        ValueError: a negative descriptor or one outside the C int range, or
            more than this OS takes in one message.
        TypeError: an item is a bool, or neither an int nor has ``fileno()``.
    """
    if type(fds) is not list and type(fds) is not tuple:
        fds = list(fds)
    if len(fds) == 1:  # the common case, checked in one comparison (a bool's type is not int)
        number = fds[0]
        if type(number) is int and 0 <= number <= _MAX_FD_NUMBER:
            return _fd_array("I", fds)
    elif 1 < len(fds) <= _MAX_FDS_PER_SEND:
        try:
            # Unsigned, which builds faster than signed: a negative number or a non-int fails
            # here.  One sort gives the least and the greatest number; 0 and 1 (a bool's
            # values) go the long way.
            numbers = _fd_array("I", fds)
        except (TypeError, OverflowError):
            pass
        else:
            ordered = sorted(numbers)
            if ordered[0] > 1 and ordered[-1] <= _MAX_FD_NUMBER:
                return numbers
    return _check_each_fd(fds)


def _check_each_fd(fds: Sequence[Any]) -> array.array[int]:
    """``check_fds`` the long way: ``fds`` (a list or tuple) item by item, errors in its words."""
    try:
        try:
            numbers = array.array("i", fds)
        except TypeError:  # some items are objects with fileno()
            numbers = array.array("i", [_fileno_of(i) for i in fds])
    except OverflowError:
        raise ValueError(f"fds: invalid file descriptor {_out_of_range(fds)!r}") from None
    if True in fds or False in fds:  # 0 and 1 compare equal too, so look closer
        for item in fds:
            _fileno_of(item)
    if numbers and min(numbers) < 0:
        raise ValueError(f"fds: invalid file descriptor {min(numbers)}")
    if _MAX_FDS is not None and len(numbers) > _MAX_FDS:
        raise ValueError(
            f"fds: {len(numbers)} descriptors in one message; "
            f"{backend.OS_NAME} takes at most {_MAX_FDS}"
        )
    return numbers


def _out_of_range(fds: Sequence[Any]) -> Any:
    for item in fds:
        number = item if isinstance(item, int) else _fileno_of(item)
        if not -_MAX_FD_NUMBER - 1 <= number <= _MAX_FD_NUMBER:
            return number
    return list(fds)  # pragma: no cover - array() refused something in range


def _fileno_of(item: Any) -> int:
    if isinstance(item, bool):
        raise TypeError(f"fds: {item!r} is not a file descriptor")
    if isinstance(item, int):
        return int(item)
    fileno = getattr(item, "fileno", None)
    if fileno is None:
        raise TypeError(f"fds: expected a file descriptor or an object with fileno(), got {item!r}")
    result = fileno()
    if not isinstance(result, int) or isinstance(result, bool):
        raise TypeError(f"fds: {item!r}.fileno() returned {result!r}")
    if not 0 <= result <= _MAX_FD_NUMBER:
        raise ValueError(f"fds: invalid file descriptor {result!r} from {item!r}")
    return result


def check_sizes(bufsize: Any, maxfds: Any) -> Tuple[int, int]:
    """``bufsize`` and ``maxfds`` as ints, checked before any receive.

    Raises:
        TypeError: either is not an integer (the message names which).
        ValueError: either is negative.
    """
    return _size("bufsize", bufsize), _size("maxfds", maxfds)


def _size(name: str, value: Any) -> int:
    if type(value) is not int:
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an int, not {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_timeout(timeout: Any) -> Optional[float]:
    """A socket-style timeout, refused where ``socket.socket.settimeout`` refuses it.

    Raises:
        TypeError: not a number (or None).
        ValueError: negative, or NaN.
        OverflowError: longer than the standard library can represent (``inf``).
    """
    if timeout is None:
        return None
    if isinstance(timeout, float):
        value = timeout
    else:
        try:
            value = float(operator.index(timeout))
        except TypeError:
            raise TypeError(
                f"timeout must be a number or None, not {type(timeout).__name__}"
            ) from None
    if value != value:
        raise ValueError("Invalid value NaN (not a number)")
    if value < 0:
        raise ValueError("Timeout value out of range")
    if value > _MAX_TIMEOUT:
        raise OverflowError("timestamp out of range for platform time_t")
    return value


# -- the innermost wrappers (an accelerator replaces these) -------------------------------


def pure_send_with_fds(
    sock: socket.socket,
    buffers: Sequence[Any],
    fds: array.array[int],
    flags: int = 0,
    address: Any = None,
) -> int:
    """One ``sendmsg`` carrying ``fds`` in exactly one SCM_RIGHTS message (pure Python; see
    ``rights``)."""
    if not fds:
        ancdata: List[Tuple[int, int, Any]] = []
    elif stream_padding is False or _raw_type(sock) & 0xF != _SOCK_STREAM:
        ancdata = [(_SOL_SOCKET, _SCM_RIGHTS, fds)]  # rights() inline: a call less per send
    else:
        ancdata = rights(sock, fds)
    if address is None:
        return sock.sendmsg(buffers, ancdata, flags)
    return sock.sendmsg(buffers, ancdata, flags, address)


def rights(sock: socket.socket, fds: array.array[int]) -> List[Tuple[int, int, Any]]:
    """The ancillary data that carries ``fds`` on ``sock``: one SCM_RIGHTS message.

    On a stream socket where ``_probes.fd_control_padding()`` found that the
    kernel silently drops messages whose descriptors outgrow the receiver's
    buffer (NetBSD), the array goes a second time, as padding the kernel
    ignores, so that the kernel waits for room instead.
    """
    global stream_padding
    if not fds:
        return []
    # The raw C attribute: socket.socket.type builds an IntEnum on every access, which cost
    # the pure-Python send_fds+recv_fds round trip about half of its time (1.15x -> 1.7x stdlib).
    if _raw_type(sock) & 0xF == _SOCK_STREAM:
        stream_padding = _probes.fd_control_padding()  # a kernel fact, kept for the pure sends
        if stream_padding:
            return [(_SOL_SOCKET, _SCM_RIGHTS, fds), (_SOL_SOCKET, _SCM_RIGHTS, fds)]
    return [(_SOL_SOCKET, _SCM_RIGHTS, fds)]


#: ``_probes.fd_control_padding()`` once ``rights`` asked it (None: not yet).  While it is
#: False, the pure-Python sends build their one SCM_RIGHTS message inline.
stream_padding: Optional[bool] = None


def pure_recv_with_fds(sock: socket.socket, bufsize: int, maxfds: int, flags: int = 0) -> Received:
    """One ``recvmsg``; like ``socket.recv_fds``, but nothing can leak (pure Python).

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
        cloexec = _probes.cmsg_cloexec_flag()  # cached after the first answer
    except OSError:
        cloexec = None  # the probe itself could not run (EMFILE?): set FD_CLOEXEC by hand
    if flags & _MSG_PEEK:
        return _pure_peek_with_fds(sock, bufsize, maxfds, flags, cloexec)
    data, ancdata, msg_flags, address = recvmsg(sock, bufsize, flags | (cloexec or 0), ANCBUF_SIZE)
    if not msg_flags & _MSG_CTRUNC:
        if not ancdata:
            return data, [], msg_flags, address, False
        if len(ancdata) == 1 and cloexec is not None:
            # The common cases, the marker alone or one SCM_RIGHTS within maxfds, inline.
            level, kind, payload = ancdata[0]
            if kind == MARKER_TYPE and level == _SOL_SOCKET:
                return data, [], msg_flags, address, True
            if kind == _SCM_RIGHTS and level == _SOL_SOCKET:
                if len(payload) == 4 and maxfds:  # one descriptor: a struct, not a memoryview
                    return data, [*_unpack_int(payload)], msg_flags, address, False
                if 0 < len(payload) <= 4 * maxfds and not len(payload) & 3:
                    fds = [*_unpack(_INTS_FORMATS[len(payload) >> 2], payload)]
                    return data, fds, msg_flags, address, False
    fds, marked = collect_fds(data, ancdata, msg_flags, maxfds, cloexec is None)
    return data, fds, msg_flags, address, marked


def _pure_peek_with_fds(
    sock: socket.socket, bufsize: int, maxfds: int, flags: int, cloexec: Optional[int]
) -> Received:
    """``pure_recv_with_fds`` for a ``MSG_PEEK``: descriptors only where the kernel installed them.

    A peek is rare, so it is kept off the plain receive's path and reads its
    control data the general way (``collect_fds``).
    """
    data, ancdata, msg_flags, address, installed = peek_recvmsg(
        sock, bufsize, ANCBUF_SIZE, flags | (cloexec or 0)
    )
    if not installed:
        # The kernel copied out its own file pointers (NetBSD, FreeBSD) or zeros (macOS):
        # nothing was installed, and those numbers name unrelated descriptors of ours.
        ancdata = [c for c in ancdata if not (c[0] == _SOL_SOCKET and c[1] == _SCM_RIGHTS)]
    fds, marked = collect_fds(data, ancdata, msg_flags, maxfds, cloexec is None)
    return data, fds, msg_flags, address, marked


def peek_recvmsg(
    sock: socket.socket, bufsize: int, room: int, flags: int
) -> Tuple[bytes, List[Any], int, Any, bool]:
    """One ``MSG_PEEK`` ``recvmsg`` with ``room`` for control data, and whether its descriptors
    are copies the kernel installed for the caller (Linux) -- elsewhere their numbers are not
    this process's and must never be closed or handed out (``_probes.peek_installs_fds``).

    The probe is asked before the receive: it opens descriptors, and after a peek that
    installed copies, its EMFILE (or a raising signal handler) would lose them.  Where it
    cannot run now (a full descriptor table), the peek gets control room only for what the
    kernel puts before SCM_RIGHTS (``control_room_before_rights``), so that it installs
    nothing: a message without descriptors is returned as usual (a peek never fails on the
    probe), one with them raises EMFILE and stays queued (NetBSD's Linux ABI reports no
    descriptors there instead, as its peeks do anyway).  Where that room is not known
    (kernels whose peek installs no copies), the probe is asked after the receive, and only
    if descriptors came.

    Raises:
        OSError: ``EMFILE``, see above: nothing was installed, the message is still queued.
        ControlTruncatedError: recvmsg failed with EMSGSIZE (OpenBSD, DragonFly).
    """
    try:
        installed: Optional[bool] = _probes.peek_installs_fds()
    except OSError:
        installed = None  # the table is full now (EMFILE): no room for the probe
    if installed is None:
        before_rights = backend.control_room_before_rights(sock)
        if before_rights is not None:
            free = _lowest_free_slots(before_rights)
            got = recvmsg(sock, bufsize, flags, before_rights)
            if got[2] & _MSG_CTRUNC or carries_fds(got[1]):
                # MSG_CTRUNC: descriptors were there (or control data the room had to leave
                # out); a descriptor message: an option changed since the room was sized
                # (another thread or process turned it off), so the room held copies.
                _close_installed(got[1], free)
                raise undecided_peek_error()
            return (*got, False)
    data, ancdata, msg_flags, address = recvmsg(sock, bufsize, flags, room)
    if installed is None and carries_fds(ancdata):
        try:
            installed = _probes.peek_installs_fds()
        except OSError as exc:
            raise undecided_peek_error() from exc
    return data, ancdata, msg_flags, address, bool(installed)


def _lowest_free_slots(room: int) -> List[int]:
    """The lowest free descriptor slots, as many as copies ``room`` could hold were every
    control message it counts left out (SO_PASSCRED or SO_TIMESTAMP turned off meanwhile).

    Linux installs copies in the lowest free slots, so after the receive a number there
    that is open is a copy: the same bytes from a kernel whose peek installs nothing
    (kernel pointers) name a slot that was free and is free still.  Found by asking each
    slot, not by dup'ing into them: a raising signal handler between a dup and its close
    would leak it.  Costs one fcntl per slot below the last one found: on this path the
    table is full (or the system's is), so about 17 ms at 20,000 descriptors with the free
    slots at the top, measured on 6.18 -- the price of a peek that cannot ask the probe.
    """
    most = max(0, (room - socket.CMSG_LEN(0)) // 4)
    limit = os.sysconf("SC_OPEN_MAX")
    free: List[int] = []
    fd = 0
    while len(free) < most and fd < limit:
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)
        except OSError:
            free.append(fd)
        fd += 1
    return free


def _close_installed(ancdata: List[Any], free: List[int]) -> None:
    """Close the numbers of descriptor messages that are slots ``_lowest_free_slots`` saw
    free and that are open now: copies a peek with too much room installed."""
    numbers: List[int] = []
    for level, kind, payload in ancdata:
        if level == _SOL_SOCKET and (kind == _SCM_RIGHTS or kind in _FD_CMSGS):
            numbers.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    close_fds(sorted(set(numbers) & set(free)))


def undecided_peek_error() -> OSError:
    """What a peek raises whose descriptors it cannot tell installed copies from foreign numbers."""
    return OSError(
        errno.EMFILE,
        "MSG_PEEK of a message with descriptors (or control data that did not fit): the "
        "descriptor table has no room to ask whether this kernel's peek installs copies (Linux) "
        "or reports numbers that are not this process's (NetBSD's Linux ABI); nothing was "
        "installed and the message is still queued",
    )


def carries_fds(ancdata: List[Any]) -> bool:
    """Whether some control message carries descriptors (the marker and credentials do not)."""
    return any(c[0] == _SOL_SOCKET and (c[1] == _SCM_RIGHTS or c[1] in _FD_CMSGS) for c in ancdata)


def cloexec_flag() -> Optional[int]:
    """MSG_CMSG_CLOEXEC if this kernel honours it, else None (a fact, probed once).

    A probe that could not run (EMFILE) answers None now, so descriptors get
    FD_CLOEXEC by hand, and is tried again next time.
    """
    try:
        return _probes.cmsg_cloexec_flag()
    except OSError:
        return None


def recvmsg(
    sock: socket.socket, bufsize: int, flags: int, room: int
) -> Tuple[bytes, List[Any], int, Any]:
    """``sock.recvmsg`` with ``room`` for control data (``ANCBUF_SIZE``: the kernel's descriptor
    cap and the marker).

    A recvmsg that fails with EMSGSIZE (OpenBSD, DragonFly: the control data
    did not fit, the descriptors are gone) raises ``ControlTruncatedError``.
    """
    try:
        return sock.recvmsg(bufsize, room, flags)
    except OSError as exc:
        if exc.errno == errno.EMSGSIZE:
            raise emsgsize_error() from exc
        raise


def truncation_error(
    reason: str, data: Optional[bytes], closed: int, maxfds: int
) -> ControlTruncatedError:
    """What a receive raises once every descriptor it got is closed, for both implementations.

    ``reason``: ``"ctrunc"`` (the kernel set MSG_CTRUNC), ``"empty"`` (an
    SCM_RIGHTS message without descriptors: gVisor's way of saying none fitted,
    without MSG_CTRUNC), ``"excess"`` (more than ``maxfds`` arrived) or
    ``"emsgsize"`` (recvmsg failed with EMSGSIZE, OpenBSD and DragonFly: no
    payload came with it).
    """
    if reason == "ctrunc":
        # The buffer had room for the kernel's own per-message cap, so the usual cause is a
        # full descriptor table in this process.
        message = (
            f"control data truncated (MSG_CTRUNC): {closed} received descriptors closed; the "
            "kernel dropped the rest (is this process out of descriptors?)"
        )
    elif reason == "empty":
        message = (
            f"descriptors lost: the kernel delivered an SCM_RIGHTS message without them (no "
            f"MSG_CTRUNC); {closed} received descriptors closed (is this process out of "
            "descriptors?)"
        )
    elif reason == "excess":
        message = (
            f"{closed} descriptors arrived but at most {maxfds} were asked for; all were closed"
        )
    else:
        message = (
            "recvmsg failed with EMSGSIZE: the kernel discarded the descriptors "
            "(control data did not fit)"
        )
    return ControlTruncatedError(message, data or b"", closed)


def emsgsize_error() -> ControlTruncatedError:
    """What a recvmsg that failed with EMSGSIZE raises (no payload came with it)."""
    return truncation_error("emsgsize", None, 0, 0)


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
    empty = False
    for level, kind, payload in ancdata:
        if level != _SOL_SOCKET:
            continue
        if kind == _SCM_RIGHTS:
            fds += _ints(payload)
            # An SCM_RIGHTS without descriptors carries nothing: gVisor hands one out when
            # none of the message's descriptors fitted this process's table, and sets no
            # MSG_CTRUNC.  (A peer that could send one only gets its message reported cut.)
            empty = empty or not payload
        elif kind == MARKER_TYPE:
            marked = True
        elif kind in _FD_CMSGS:
            close_fds(_ints(payload))
    if msg_flags & _MSG_CTRUNC or empty:
        close_fds(fds)
        raise truncation_error(
            "ctrunc" if msg_flags & _MSG_CTRUNC else "empty", data, len(fds), maxfds
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


def refuse_excess_fds(fds: Sequence[int], maxfds: int, data: bytes) -> None:
    """Close all of ``fds`` and raise if there are more than the caller accepts."""
    if len(fds) > maxfds:
        close_fds(fds)
        raise truncation_error("excess", data, len(fds), maxfds)


def close_fds(fds: Sequence[int]) -> None:
    """Close every descriptor, ignoring ones already closed."""
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


# -- the compiled accelerator (udscompat/_speedups.c; _accel chooses it once) --------------


def configure_compiled(module: Any) -> Any:
    """Give the compiled module this OS's facts, ``truncation_error``, ``Message``; returns it."""
    module.configure(FD_ROOM, MARKER_TYPE, _FD_CMSGS, truncation_error, backend.CREDENTIALS_ROOM)
    module.configure_message(Message)
    return module


def fast_fdpass_facts() -> Optional[Tuple[int, bool]]:
    """What the compiled ``send_fds``/``recv_fds`` need from the probes, or None for now.

    ``(receive flags, stream padding)``: MSG_CMSG_CLOEXEC where the kernel
    honours it (else 0: the C call sets FD_CLOEXEC itself), and whether a
    stream send with descriptors must pad its control data (``rights``).
    None while a probe cannot run (EMFILE): the Python path runs it then.
    """
    try:
        return _probes.cmsg_cloexec_flag() or 0, _probes.fd_control_padding()
    except OSError:
        return None


def enable_fast_fdpass(hold: Callable[[], bool], registry: Any) -> Optional[Callable[..., Any]]:
    """Turn on the compiled ``send_fds``/``recv_fds`` fast paths (``_fdpass`` calls this once).

    ``hold`` is the policy asked at every send with descriptors (where it says
    yes, Python holds them); ``registry.originals`` the received numbers to
    guard (where there are any, Python receives).  Returns the compiled
    module's ``send_fds``, or None in pure Python.
    """
    if _speedups is None:
        return None
    _speedups.configure_fast(PLAIN_SOCKETS, _MAX_FDS, fast_fdpass_facts, hold, registry)
    send_fds: Callable[..., Any] = _speedups.send_fds
    return send_fds


#: Socket types whose methods the compiled calls may stand in for.  A subclass that
#: overrides ``recvmsg``/``sendmsg`` (a test's stand-in for another kernel, a user's
#: wrapper) keeps the pure-Python path, which calls its methods.
PLAIN_SOCKETS = (socket.socket, _socket.socket)

_speedups = _accel.speedups
if _speedups is not None:
    configure_compiled(_speedups)
    _c_sendmsg = _speedups.sendmsg
    _c_recvmsg = _speedups.recvmsg


def _c_send_with_fds(
    sock: socket.socket,
    buffers: Sequence[Any],
    fds: array.array[int],
    flags: int = 0,
    address: Any = None,
) -> int:
    """``send_with_fds`` compiled: one sendmsg.

    An addressed send, a socket whose methods are overridden, and a stream
    send that must pad its control data (NetBSD, see ``rights``) stay in Python.
    """
    if (
        address is not None
        or type(sock) not in PLAIN_SOCKETS
        or (fds and _raw_type(sock) & 0xF == _SOCK_STREAM and _probes.fd_control_padding())
    ):
        return pure_send_with_fds(sock, buffers, fds, flags, address)
    sent: int = _c_sendmsg(sock, buffers, fds, flags)
    return sent


def _c_recv_with_fds(sock: socket.socket, bufsize: int, maxfds: int, flags: int = 0) -> Received:
    """``recv_with_fds`` compiled: one recvmsg that returns every descriptor or closes them all."""
    if type(sock) not in PLAIN_SOCKETS or flags & _MSG_PEEK:
        # A peek reads descriptors only where the kernel installed copies, and asks the
        # probe that tells so without losing them (see peek_recvmsg): the pure path's job.
        return pure_recv_with_fds(sock, bufsize, maxfds, flags)
    try:
        cloexec = _probes.cmsg_cloexec_flag()  # cached after the first answer
    except OSError:
        cloexec = None  # the probe could not run: the C call sets FD_CLOEXEC itself
    received: Received = _c_recvmsg(sock, bufsize, maxfds, flags | (cloexec or 0), True)
    return received


#: The innermost wrappers every socket kind calls: compiled where ``_accel`` chose it.
send_with_fds: Callable[..., int] = (
    _c_send_with_fds if _speedups is not None else pure_send_with_fds
)
recv_with_fds: Callable[..., Received] = (
    _c_recv_with_fds if _speedups is not None else pure_recv_with_fds
)
#: The compiled receive itself for hot paths that pass their own MSG_CMSG_CLOEXEC:
#: ``(sock, bufsize, maxfds, flags) -> Received`` (address None), or None in pure Python.
compiled_recvmsg: Optional[Callable[[socket.socket, int, int, int], Received]] = (
    _c_recvmsg if _speedups is not None else None
)
#: The compiled native seqpacket receive: ``(sock, bufsize, maxfds, flags, partial_records)
#: -> Message`` for a whole message with a payload and no descriptors (built in C), else
#: ``compiled_recvmsg``'s tuple; None in pure Python.
compiled_recv_message: Optional[
    Callable[[socket.socket, int, int, int, bool], Union[Message, Received]]
] = _speedups.recv_message if _speedups is not None else None
#: The compiled ``recv_fds`` fast path (``NotImplemented``: take the Python path), or None.
compiled_recv_fds: Optional[Callable[..., Any]] = (  # any sock: NotImplemented unless a socket
    _speedups.recv_fds if _speedups is not None else None
)


def queued_bytes(sock: socket.socket) -> int:
    """How many bytes wait in ``sock``'s receive queue (FIONREAD), -1 if the OS will not say.

    For a SOCK_SEQPACKET socket that bounds the next message, so a receive
    need not allocate a caller's huge ``bufsize``.

    Raises:
        OSError: ``EBADF`` if the socket is closed (another thread closed it).
    """
    fileno = sock.fileno()
    if fileno < 0:
        raise OSError(errno.EBADF, "the socket is closed")  # as wait_ready says it
    count = array.array("i", [0])
    try:
        fcntl.ioctl(fileno, termios.FIONREAD, count)
    except OSError:
        return -1
    return count[0]


# -- the one wait ------------------------------------------------------------------------


def deadline(timeout: Optional[float]) -> Optional[float]:
    """The deadline of a public call made now under a socket-style ``timeout``.

    ``None`` (block) stays None, ``0`` is ``NONBLOCKING``, seconds become a
    ``time.monotonic()`` value.  Call it once per public call.
    """
    return timeout and _monotonic() + timeout


def timeout_error() -> TimeoutError:
    """What a call whose deadline passed raises."""
    return TimeoutError(errno.ETIMEDOUT, "timed out")


def wait_ready(
    sock: socket.socket, *, write: bool, deadline: Optional[float], longest_ms: int = _WAKE_MS
) -> None:
    """Wait until ``sock`` is readable (or writable), for what remains of ``deadline``.

    Returns when the socket is ready, or after at most ``longest_ms`` (a
    second) of a longer wait (the caller retries either way, as
    ``sock_call_ex`` does, and a retry on a socket another thread closed
    meanwhile fails with ``EBADF``).

    Raises:
        BlockingIOError: ``deadline`` is ``NONBLOCKING``.
        TimeoutError: the deadline has passed.
        OSError: ``EBADF`` if the socket is closed.
    """
    millis = longest_ms
    if deadline is not None:
        if deadline == NONBLOCKING:
            raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))
        remaining = deadline - _monotonic()
        if remaining <= 0:
            raise timeout_error()
        # Round up: a poll that ends a hair early would only be repeated.
        millis = min(int(remaining * 1000) + 1, longest_ms)
    fileno = sock.fileno()
    if fileno < 0:
        raise OSError(errno.EBADF, "the socket is closed")
    _poll(fileno, write, millis)


if hasattr(select, "poll"):

    def _poll(fileno: int, write: bool, millis: Optional[int]) -> bool:
        poller = select.poll()
        poller.register(fileno, select.POLLOUT if write else select.POLLIN)
        return bool(poller.poll(millis))

else:  # pragma: no cover - every supported OS has poll

    def _poll(fileno: int, write: bool, millis: Optional[int]) -> bool:
        seconds = None if millis is None else millis / 1000
        if write:
            return any(select.select([], [fileno], [fileno], seconds))
        return any(select.select([fileno], [], [fileno], seconds))


def ready_now(sock: socket.socket, *, write: bool = False) -> bool:
    """Whether ``sock`` is readable (or writable) at this moment, without waiting."""
    fileno = sock.fileno()
    if fileno < 0:
        return True  # an operation fails at once with EBADF
    return _poll(fileno, write, 0)


def call(
    operation: Callable[[], T],
    wait: Callable[[bool, Optional[float]], None],
    *,
    write: bool,
    deadline: Optional[float],
) -> T:
    """``operation()``, retried after ``wait(write, deadline)`` while it would block.

    ``wait`` is ``wait_ready`` for the socket (a connection wraps it to be
    woken by ``close``); it raises ``BlockingIOError`` or ``TimeoutError``
    when the deadline allows no (more) waiting.
    """
    while True:
        try:
            return operation()
        except BlockingIOError:
            pass
        wait(write, deadline)
