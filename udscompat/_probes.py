"""Cheap probes of what this kernel really does, each run once per process.

The answers feed validation (abstract addresses), the fd-passing path
(MSG_CMSG_CLOEXEC, holding sent fds) and ``capabilities()``.  They are
found by trying the real call on a private socketpair, never from a table;
the backend only supplies the candidate values to try.  Every probe closes
everything it opened, whatever happens.

No probe blocks: every probe socket is non-blocking and every receive waits
at most ``DELIVERY_WAIT`` for its message.  A kernel may accept a send and
then deliver nothing (NetBSD drops a message whose descriptors overflow the
receive buffer while ``sendmsg`` reports success), and a blocking receive
would then wait forever.  A probe that cannot decide says so: its answer is
the safe one for the library, and ``undecided()`` names it and why.
"""

from __future__ import annotations

import array
import contextlib
import errno
import functools
import os
import secrets
import socket
import threading
from typing import Dict, Iterator, List, NamedTuple, Optional, Set, Tuple

from udscompat import _io
from udscompat._platform import backend

__all__ = [
    "SeqpacketProbe",
    "abstract_addresses",
    "close_after_send",
    "cmsg_cloexec_flag",
    "ctrunc_behaviour",
    "datagram_connect_tells_liveness",
    "fd_control_padding",
    "max_fds_per_message",
    "open_fds",
    "peek_installs_fds",
    "peer_credentials_name_the_peer",
    "same_process_fd_reuse",
    "seqpacket",
    "stale_socket_files",
    "undecided",
]

_TOO_MANY = {errno.EINVAL, errno.EMSGSIZE, errno.E2BIG, errno.ETOOMANYREFS, errno.ENOBUFS}
#: Seconds a probe waits for a message it sent to itself.  Every kernel known queues an
#: AF_UNIX message before sendmsg returns; the wait only guards a slower one.
DELIVERY_WAIT = 0.25

_undecided: Dict[str, str] = {}
_undecided_lock = threading.Lock()


def undecided() -> Dict[str, str]:
    """The probes (by name) that could not decide in this process, and why."""
    with _undecided_lock:
        return dict(_undecided)


def _note_undecided(probe: str, reason: str) -> None:
    with _undecided_lock:
        _undecided[probe] = reason


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _send_rights(sock: socket.socket, data: bytes, fds: List[int], flags: int = 0) -> int:
    rights = array.array("i", fds).tobytes()
    return sock.sendmsg([data], [(backend.SOL_SOCKET, backend.SCM_RIGHTS, rights)], flags)


def _receive(
    sock: socket.socket, bufsize: int, ancbufsize: int = 0, flags: int = 0
) -> Optional[Tuple[bytes, List[Tuple[int, int, bytes]], int, object]]:
    """One recvmsg on a non-blocking probe socket, waiting at most ``DELIVERY_WAIT``.

    Returns None when no message came: the kernel accepted the send and delivered nothing.
    """
    try:
        return _io.call(
            lambda: sock.recvmsg(bufsize, ancbufsize, flags),
            lambda write, deadline: _io.wait_ready(sock, write=write, deadline=deadline),
            write=False,
            deadline=_io.deadline(DELIVERY_WAIT),
        )
    except TimeoutError:
        return None


def _rights(ancdata: List[Tuple[int, int, bytes]]) -> List[int]:
    fds: List[int] = []
    for level, kind, payload in ancdata:
        if level == backend.SOL_SOCKET and kind == backend.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    return fds


def _recv_rights(
    sock: socket.socket, nfds: int, flags: int = 0
) -> Optional[Tuple[bytes, List[int], int]]:
    """Receive a message with up to ``nfds`` fds; None if none arrived (see ``_receive``)."""
    got = _receive(sock, 64, socket.CMSG_SPACE(4 * max(nfds, 1)), flags)
    if got is None:
        return None
    data, ancdata, msg_flags, _ = got
    return data, _rights(ancdata), msg_flags


@contextlib.contextmanager
def _probe_pair(kind: int = socket.SOCK_STREAM) -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A non-blocking AF_UNIX socketpair of ``kind``, closed afterwards."""
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    try:
        a.setblocking(False)
        b.setblocking(False)
        yield a, b
    finally:
        a.close()
        b.close()


_stream_pair = _probe_pair


@contextlib.contextmanager
def _pipe() -> Iterator[Tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        _io.close_fds([r, w])


def open_fds() -> Set[int]:
    """The descriptor numbers open in this process right now."""
    for listing in ("/proc/self/fd", "/dev/fd"):
        try:
            names = os.listdir(listing)
        except OSError:
            continue
        # listdir opened one descriptor of its own, closed again by now.
        found = {int(n) for n in names if n.isdigit()}
        live = set()
        for fd in found:
            try:
                os.fstat(fd)
            except OSError:
                continue
            live.add(fd)
        if len(live) > 3 or listing == "/proc/self/fd":
            return live
    # FreeBSD without fdescfs shows only 0-2 in /dev/fd: scan the table instead.
    limit = min(os.sysconf("SC_OPEN_MAX"), 65536)
    live = set()
    for fd in range(limit):
        try:
            os.fstat(fd)
        except OSError:
            continue
        live.add(fd)
    return live


@functools.cache
def abstract_addresses() -> Tuple[bool, str]:
    """Can a socket bind a name in the abstract namespace?  Returns (yes, reason)."""
    name = b"\0udscompat-probe-" + secrets.token_hex(8).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(name)
            bound = sock.getsockname()
    except OSError as exc:
        return False, f"binding an abstract name fails with {_errno_name(exc)}"
    if bound != name:
        # Without an abstract namespace, a leading NUL names an empty path.
        return False, f"an abstract bind came back as {bound!r}"
    return True, "binding an abstract name works"


#: A datagram connect's answers for a socket file with a live socket behind it (another type
#: refuses with EPROTOTYPE; the rest as ``_bind`` reads them) and for one without.
_LIVE_ANSWERS = {errno.EPROTOTYPE, errno.EPERM, errno.EAGAIN, errno.EISCONN}
_STALE_ANSWERS = {errno.ECONNREFUSED, errno.ENOENT, errno.EDESTADDRREQ}
_NO_SUCH_TYPE = {errno.EPROTONOSUPPORT, errno.ESOCKTNOSUPPORT, errno.EPROTOTYPE, errno.EINVAL}


@functools.cache
def datagram_connect_tells_liveness() -> Tuple[bool, str]:
    """Does a datagram ``connect()`` to a socket file tell a live socket from a stale file?

    ``bind()`` removes a socket file only if no socket is bound to it, and asks
    with a datagram connect, which no listener sees: the kernels read refuse it
    with ``EPROTOTYPE`` where a stream or seqpacket socket is bound and with
    ``ECONNREFUSED`` where none is.  gVisor (release 20221219) refuses every
    datagram connect to a stream or seqpacket socket with ``ECONNREFUSED``,
    bound, listening or closed alike (its connection-oriented endpoints'
    ``UnidirectionalConnect``), so there "refused" proves nothing.

    Returns (yes, why).  Yes only where a live stream socket, listening and
    merely bound (and a seqpacket one where the kernel has the type), answer
    as live; no where one answers as stale, and where the probe cannot decide
    (the safe answer: nothing is then removed on the probe's word).
    """
    import shutil
    import tempfile

    kinds = [(socket.SOCK_STREAM, "SOCK_STREAM"), (backend.SOCK_SEQPACKET, "SOCK_SEQPACKET")]
    try:
        directory = tempfile.mkdtemp(prefix="udsc")
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            raise  # not an answer to cache
        reason = f"no private directory to probe in ({_errno_name(exc)})"
        _note_undecided("datagram_connect_tells_liveness", reason)
        return False, reason
    try:
        for index, (kind, name) in enumerate(kinds):
            for listening in (True, False):
                path = os.path.join(directory, f"s{index}{int(listening)}")
                try:
                    live = socket.socket(socket.AF_UNIX, kind)
                except OSError as exc:
                    if kind == socket.SOCK_STREAM or exc.errno not in _NO_SUCH_TYPE:
                        raise  # out of descriptors, say: not an answer to cache
                    continue  # no seqpacket here: nothing to mistake for stale
                with live, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                    try:
                        live.bind(path)
                        if listening:
                            live.listen(1)
                    except (OSError, ValueError) as exc:
                        reason = f"binding a {name} socket to probe failed ({exc})"
                        _note_undecided("datagram_connect_tells_liveness", reason)
                        return False, reason
                    probe.setblocking(False)
                    try:
                        probe.connect(path)
                    except OSError as exc:
                        answer = exc.errno
                    else:
                        answer = 0
                state = "listening" if listening else "bound"
                if answer in _STALE_ANSWERS:
                    return False, (
                        f"a datagram connect() to a {state} {name} socket fails with "
                        f"{errno.errorcode.get(answer, answer)}, as it does where no socket is "
                        "bound: a live socket looks like a stale socket file"
                    )
                if answer not in _LIVE_ANSWERS:
                    reason = (
                        f"a datagram connect() to a {state} {name} socket answered "
                        f"{errno.errorcode.get(answer, answer) if answer else 'success'}"
                    )
                    _note_undecided("datagram_connect_tells_liveness", reason)
                    return False, reason
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return True, "a datagram connect() to a live stream or seqpacket socket fails with EPROTOTYPE"


@functools.cache
def stale_socket_files() -> Tuple[bool, str]:
    """Can ``bind()`` tell a stale socket file (removed) from a live one (never removed)?

    Returns (yes, how -- or why not).  The datagram connect tells where
    ``datagram_connect_tells_liveness``; elsewhere the kernel's socket table
    (Linux's sock_diag) does, where there is one.  Without either, every
    socket file stays where it is and ``bind()`` fails with ``EADDRINUSE``.
    """
    tells, reason = datagram_connect_tells_liveness()
    if tells:
        return True, "removed: a datagram connect() tells them apart"
    try:
        table = backend.bound_unix_sockets()
    except OSError:
        table = None
    if table is not None:
        return True, "removed: the kernel's socket table tells them apart"
    return False, f"left in place (EADDRINUSE): {reason}, and there is no socket table to ask"


@functools.cache
def peer_credentials_name_the_peer() -> Tuple[bool, str]:
    """Does the kernel's peer-credentials option describe the peer, not the caller?

    A socket with no peer must have no peer credentials.  gVisor (release
    20221219) answers ``SO_PEERCRED`` on *any* AF_UNIX socket with the calling
    process's own pid, uid and gid (``getSockOptSocket`` returns the task's
    credentials), so a peer running as ``nobody`` reads as whoever asks --
    root, for a daemon.  Probed on an unconnected socket: an answer there
    (Linux says pid 0, uid and gid -1, which the backend reads as ENOTCONN;
    the BSDs, macOS and illumos refuse) means the answers are not the peer's.
    Returns (yes, why).
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            creds = backend.peer_credentials(sock)
        except OSError:  # ENOTCONN, EINVAL, or UnsupportedError: no answer without a peer
            return True, "a socket without a peer has no peer credentials"
    own = (os.geteuid(), os.getegid()) == (creds.euid, creds.egid) and creds.pid in (
        None,
        os.getpid(),
    )
    whose = "this process's own" if own else "nobody's"
    return False, (
        f"the kernel reports peer credentials (uid {creds.euid}, gid {creds.egid}: {whose}) "
        "for a socket that has no peer, so what it reports for a connection is not known to "
        "be the peer's"
    )


@functools.cache
def cmsg_cloexec_flag() -> Optional[int]:
    """The MSG_CMSG_CLOEXEC value if the kernel accepts and honours it, else None."""
    candidate = backend.MSG_CMSG_CLOEXEC or getattr(socket, "MSG_CMSG_CLOEXEC", None)
    if not candidate:
        return None
    with _stream_pair() as (a, b), _pipe() as (r, _w):
        _send_rights(a, b"x", [r])
        try:
            got = _recv_rights(b, 1, candidate)
        except OSError:
            return None
        if got is None:
            _note_undecided("cmsg_cloexec_flag", "the probe's message never arrived")
            return None
        _, fds, _ = got
        try:
            honoured = bool(fds) and all(not os.get_inheritable(fd) for fd in fds)
        finally:
            _io.close_fds(fds)
    return candidate if honoured else None


@functools.cache
def same_process_fd_reuse() -> bool:
    """Does a receive in the sending process hand back the sender's own, still open, slot?"""
    with _stream_pair() as (a, b), _pipe() as (r, _w):
        _send_rights(a, b"x", [r])
        got = _recv_rights(b, 1)
        if got is None:
            # Assume reuse: the library then guards received fds equal to sent ones.
            _note_undecided("same_process_fd_reuse", "the probe's message never arrived")
            return True
        _, fds, _ = got
        reused = r in fds
        _io.close_fds([fd for fd in fds if fd != r])
    return reused


@functools.cache
def close_after_send() -> bool:
    """Does an fd survive its sender closing it while the unix-socket GC runs?

    The sender closes its copy right after sendmsg; other unix sockets are then
    created and closed (which runs the collector on XNU, os-facts §2.4)
    before the receive.  True when the received pipe end still reads.
    """
    with _stream_pair() as (a, b):
        r, w = os.pipe()
        try:
            _send_rights(a, b"x", [r])
        finally:
            os.close(r)
        try:
            for _ in range(4):
                x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                x.close()
                y.close()
            got = _recv_rights(b, 1)
            if got is None:
                _note_undecided("close_after_send", "the probe's message never arrived")
                return False
            _, fds, _ = got
            try:
                os.write(w, b"!")
                return len(fds) == 1 and os.read(fds[0], 1) == b"!"
            except OSError:
                return False
            finally:
                _io.close_fds(fds)
        finally:
            os.close(w)


@functools.cache
def peek_installs_fds() -> bool:
    """Does a MSG_PEEK receive install the pending descriptors (as Linux does)?

    Elsewhere the peeked SCM_RIGHTS payload is not descriptors at all: NetBSD
    (seen on 7.99.34) and FreeBSD copy out the kernel's own file pointers,
    macOS zeroes it.  Read as descriptor numbers, those bytes name unrelated
    descriptors of the process, which must never be closed or handed out.
    False also when the message never arrives (the safe answer there).

    A number is a copy when it names the probe's own fresh pipe (no other
    descriptor of the process can): a diff of the table would count what other
    threads open or close meanwhile, answer False for a copy landing in a slot
    another thread just freed, and close descriptors another thread just opened.

    Raises:
        OSError: ``EMFILE`` (not cached) when the table has no room for the probe's own
            descriptors, or for the copy its peek would install: the kernel then
            installs nothing and truncates, which is no answer.
    """
    with _stream_pair() as (a, b), _pipe() as (r, w):
        _send_rights(a, b"x", [r])
        got = _receive(b, 1, socket.CMSG_SPACE(64), socket.MSG_PEEK)
        if got is None:
            _note_undecided("peek_installs_fds", "the probe's message never arrived")
            return False
        numbers = _rights(got[1])
        copies = _copies_of(r, w, numbers)
        _io.close_fds(copies)  # only our pipe's new descriptors, never the payload's numbers
        if got[2] & backend.MSG_CTRUNC and not numbers:
            _refuse_if_table_full(w)
        drained = _recv_rights(b, 1)
        if drained is not None:
            _io.close_fds(drained[1])
    return bool(numbers) and len(copies) == len(numbers)


def _copies_of(r: int, w: int, numbers: List[int]) -> List[int]:
    """The distinct ``numbers`` that are new descriptors of the pipe ``(r, w)``."""
    target = os.fstat(r)
    copies: List[int] = []
    for fd in sorted(set(numbers) - {r, w}):
        try:
            found = os.fstat(fd)
        except (OSError, OverflowError):
            continue
        if (found.st_dev, found.st_ino) == (target.st_dev, target.st_ino):
            copies.append(fd)
    return copies


def _refuse_if_table_full(fd: int) -> None:
    """Raise EMFILE (or ENFILE) if no descriptor can be made now (a truncated peek then says
    nothing about the kernel: its copy had nowhere to go)."""
    os.close(os.dup(fd))


@functools.cache
def ctrunc_behaviour() -> str:
    """What the kernel does with descriptors that do not fit the control buffer.

    Returns one of ``"excess-closed"`` (MSG_CTRUNC; the fds that did not fit
    were closed), ``"all-closed"`` (MSG_CTRUNC; none arrived),
    ``"excess-leaked"`` (MSG_CTRUNC, but new descriptors appeared that
    recvmsg did not report; the probe closes them), ``"emsgsize"`` (recvmsg
    failed with EMSGSIZE), ``"not-truncated"`` or ``"undecided"`` (the
    message never arrived).
    """
    with _stream_pair() as (a, b), _pipe() as (r, _w):
        _send_rights(a, b"x", [r, r, r, r])
        before = open_fds()
        try:
            got = _receive(b, 1, socket.CMSG_LEN(4))
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return "emsgsize"
            raise
        if got is None:
            _note_undecided("ctrunc_behaviour", "the probe's message never arrived")
            return "undecided"
        _, ancdata, flags, _ = got
        reported = _rights(ancdata)
        appeared = open_fds() - before
        _io.close_fds(sorted(appeared | set(reported)))
        if not flags & backend.MSG_CTRUNC:
            return "not-truncated"
        if appeared - set(reported):
            return "excess-leaked"
        return "excess-closed" if reported else "all-closed"


def _fits(kind: int, fd: int, count: int) -> Optional[bool]:
    """Does one message of ``count`` fds arrive whole on a fresh pair of ``kind``?

    False when sendmsg refuses it *or* accepts it and delivers fewer fds or
    nothing (a fresh pair each time: a dropped message leaves nothing behind);
    None when the send failed for another reason.
    """
    with _probe_pair(kind) as (a, b):
        try:
            _send_rights(a, b"x", [fd] * count)
        except OSError as exc:
            if exc.errno in _TOO_MANY:
                return False
            return None
        try:
            got = _recv_rights(b, count)
        except OSError as exc:
            if exc.errno in _TOO_MANY:  # e.g. EMSGSIZE: the receiver's table is too small
                return False
            return None
    if got is None:
        return False  # accepted, then silently dropped
    _io.close_fds(got[1])
    return len(got[1]) == count


def _largest_fitting(kind: int, fd: int, ceiling: int) -> Optional[int]:
    """Bisection for the most fds a message of ``kind`` carries, below ``ceiling``."""
    guess = backend.MAX_FDS_PER_MESSAGE
    # Confirm the header's cap with two sends before bisecting from scratch.
    if (
        guess is not None
        and guess < ceiling
        and _fits(kind, fd, guess)
        and _fits(kind, fd, guess + 1) is False
    ):
        return guess
    lo, hi = 1, ceiling  # lo fits; hi is the first count not yet known to fail
    if not _fits(kind, fd, lo):
        return None
    if _fits(kind, fd, hi):
        return ceiling  # no limit below the ceiling
    while hi - lo > 1:
        mid = (lo + hi) // 2
        ok = _fits(kind, fd, mid)
        if ok is None:
            return None
        lo, hi = (mid, hi) if ok else (lo, mid)
    return lo


@functools.cache
def max_fds_per_message(ceiling: int = 1024) -> Optional[int]:
    """The most descriptors one message carries whole, on datagram and stream sockets
    alike, found by bisection (None if unmeasurable; ``ceiling`` if no limit below it).

    A count counts as too many when sendmsg refuses it and when it accepts it
    but the message never arrives whole.  One descriptor is repeated in the
    array, so nothing needs opening; the ceiling is lowered to what the
    descriptor table can receive.
    """
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        ceiling = min(ceiling, soft - len(open_fds()) - 16)
    if ceiling < 2:
        _note_undecided("max_fds_per_message", f"RLIMIT_NOFILE {soft} leaves no room to measure")
        return None
    r, w = os.pipe()
    try:
        kinds = (socket.SOCK_DGRAM, socket.SOCK_STREAM)
        found = [_largest_fitting(kind, r, ceiling) for kind in kinds]
    finally:
        _io.close_fds([r, w])
    if None in found:
        _note_undecided("max_fds_per_message", "a send failed for a reason other than the count")
        return None
    return min(n for n in found if n is not None)


def _delivered(sock: socket.socket, peer: socket.socket, fd: int, count: int, pad: bool) -> int:
    """Send ``count`` copies of ``fd`` with one data byte (and, with ``pad``, the same array
    again as a second SCM_RIGHTS message); how many descriptors arrive (-1: send refused)."""
    rights = array.array("i", [fd] * count).tobytes()
    ancdata = [(backend.SOL_SOCKET, backend.SCM_RIGHTS, rights)]
    if pad:
        ancdata.append((backend.SOL_SOCKET, backend.SCM_RIGHTS, rights))
    try:
        sock.sendmsg([b"x"], ancdata)
    except OSError:
        return -1
    got = _receive(peer, 1, socket.CMSG_SPACE(8 * count + 64))
    if got is None:
        return 0
    fds = _rights(got[1])
    _io.close_fds(fds)
    return len(fds)


@functools.cache
def fd_control_padding() -> bool:
    """Must a stream send carrying descriptors pad its control data so nothing is lost?

    NetBSD stores a passed descriptor as an 8-byte file pointer, twice the 4
    bytes the sender's control data held, and drops a stream message --
    descriptors and data alike -- whose grown control no longer fits the
    receiver's buffer, while sendmsg reports success (uipc_usrreq.c rev 1.180:
    uipc_send ignores sbappendcontrol failing).  The sender's own check counts
    the smaller size.  Sending the descriptor array a second time, as a second
    SCM_RIGHTS message that such a kernel ignores, makes that check count the
    grown size, so the kernel waits (or says EAGAIN) instead of dropping.

    True where a probe saw a message vanish that way *and* saw a padded
    message arrive with exactly its descriptors; False elsewhere.
    """
    with _probe_pair() as (a, b), _pipe() as (r, _w):
        try:
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            room = b.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            return False
        # The fewest descriptors whose control fits the buffer at 4 bytes each, with the
        # data byte, but not at 8.
        count = next(
            (
                n
                for n in range(1, 1024)
                if socket.CMSG_SPACE(8 * n) + 1 > room >= socket.CMSG_SPACE(4 * n) + 1
            ),
            None,
        )
        cap = backend.MAX_FDS_PER_MESSAGE
        if count is None or (cap is not None and count > cap):
            return False
        if _delivered(a, b, r, count, pad=False) != 0:
            return False  # arrived (or refused): nothing is dropped silently
    with _probe_pair() as (a, b), _pipe() as (r, _w):
        if _delivered(a, b, r, 2, pad=True) == 2:
            return True
    _note_undecided(
        "fd_control_padding",
        "stream messages with descriptors can vanish here, and padding did not deliver them",
    )
    return False


class SeqpacketProbe(NamedTuple):
    """What the kernel's SOCK_SEQPACKET does, as far as a socketpair shows."""

    available: bool
    reason: str
    #: One send is one receive.
    keeps_boundaries: bool = False
    #: ``"discard"`` (MSG_TRUNC, rest dropped) or ``"partial"`` (rest queued, MSG_EOR at the end).
    short_read: Optional[str] = None
    #: ``"distinct"``, ``"same-as-eof"`` or ``"not-delivered"``.
    zero_length: Optional[str] = None
    #: Whether the backend's MESSAGE_MARKER option took effect.
    marker: bool = False
    #: A short read says so: MSG_TRUNC (discard), or MSG_EOR only on a record's last part.
    reports_truncation: bool = False
    #: Descriptors sent with a message arrive with that message.
    carries_fds: bool = False

    @property
    def conformant(self) -> bool:
        """Can the native type keep the whole seqpacket contract here?"""
        return (
            self.available
            and self.keeps_boundaries
            and self.reports_truncation
            and self.carries_fds
            and self.zero_length == "distinct"
        )


def _signalled(ancdata: List[Tuple[int, int, bytes]], flags: int) -> bool:
    """Does a receipt carry what the native connection reads as "a message, not EOF"?"""
    return bool(ancdata) or bool(flags & (backend.MSG_EOR | backend.MSG_TRUNC))


@functools.cache
def seqpacket() -> SeqpacketProbe:
    """Probe SOCK_SEQPACKET against the whole contract before anything relies on it.

    Checks, on a non-blocking socketpair and never waiting more than
    ``DELIVERY_WAIT`` per message: record boundaries; a short read reported
    (MSG_TRUNC, or the rest queued with MSG_EOR on the last part); a descriptor
    arriving with its message; a zero-length message delivered and told apart
    from end-of-stream (by flags or the backend's marker), and end-of-stream
    itself unmarked.  ``conformant`` only if all hold; ``reason`` names the
    first that does not.
    """
    try:
        a, b = socket.socketpair(socket.AF_UNIX, backend.SOCK_SEQPACKET)
    except OSError as exc:
        return SeqpacketProbe(
            False, f"socketpair(AF_UNIX, SOCK_SEQPACKET) fails with {_errno_name(exc)}"
        )
    with a, b, _pipe() as (r, _w):
        a.setblocking(False)
        b.setblocking(False)
        marker = enable_message_marker(b)
        flags = backend.SEQPACKET_SEND_FLAGS
        anc = socket.CMSG_SPACE(64)
        try:
            a.send(b"ab", flags)
            a.send(b"c", flags)
            first, second = _receive(b, 64, anc), _receive(b, 64, anc)
            boundaries = (
                first is not None and second is not None and (first[0], second[0]) == (b"ab", b"c")
            )
            # A sentinel message after each test message: what arrives next tells, without
            # waiting out a timeout, whether the rest of a record or a message was dropped.
            a.send(b"abcd", flags)
            a.send(b"e", flags)
            part = _receive(b, 2, anc)
            rest = _receive(b, 64, anc) if part is not None else None
            short_read, truncation = "discard", False
            if part is not None and rest is not None:
                if rest[0] == b"cd":
                    short_read = "partial"
                    truncation = bool(rest[2] & backend.MSG_EOR) and not part[2] & backend.MSG_EOR
                    rest = _receive(b, 64, anc)
                else:
                    truncation = bool(part[2] & backend.MSG_TRUNC)
                truncation = truncation and rest is not None and rest[0] == b"e"
            _send_rights(a, b"f", [r], flags)
            with_fd = _receive(b, 64, socket.CMSG_SPACE(16) + anc)
            fds = _rights(with_fd[1]) if with_fd is not None else []
            _io.close_fds(fds)
            carries_fds = with_fd is not None and with_fd[0] == b"f" and len(fds) == 1
            a.send(b"", flags)
            a.send(b"z", flags)
            zero_got = _receive(b, 64, anc)
            if zero_got is not None and zero_got[0] == b"z":
                zero_got = None  # the zero-length message never arrived
            elif zero_got is not None:
                _receive(b, 64, anc)
            a.close()
            eof = _receive(b, 64, anc)
        except OSError as exc:
            return SeqpacketProbe(True, f"probing seqpacket failed with {_errno_name(exc)}")
    if zero_got is None:
        zero = "not-delivered"
    elif not _signalled(zero_got[1], zero_got[2]) or (
        eof is not None and _signalled(eof[1], eof[2])
    ):
        zero = "same-as-eof"
    else:
        zero = "distinct"
    checks = [
        (boundaries, "does not keep message boundaries"),
        (truncation, "does not report a short read (no MSG_TRUNC, no MSG_EOR at a record's end)"),
        (carries_fds, "does not deliver a descriptor with its message"),
        (
            zero == "distinct",
            "never delivers a zero-length message"
            if zero == "not-delivered"
            else "cannot tell a zero-length message from end-of-stream",
        ),
    ]
    failed = [why for ok, why in checks if not ok]
    reason = (
        f"SOCK_SEQPACKET {failed[0]}"
        if failed
        else f"native SOCK_SEQPACKET keeps the contract (short reads: {short_read})"
    )
    return SeqpacketProbe(
        True, reason, boundaries, short_read, zero, marker, truncation, carries_fds
    )


def enable_message_marker(sock: socket.socket) -> bool:
    """Ask the kernel to tag every received message (see ``Backend.MESSAGE_MARKER``)."""
    if backend.MESSAGE_MARKER is None:
        return False
    level, optname, _ = backend.MESSAGE_MARKER
    try:
        sock.setsockopt(level, optname, 1)
    except OSError:
        return False
    return True
