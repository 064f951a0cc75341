"""Cheap probes of what this kernel really does, each run once per process.

The answers feed validation (abstract addresses), the fd-passing path
(MSG_CMSG_CLOEXEC, holding sent fds) and ``capabilities()``.  They are
found by trying the real call on a private socketpair, never from a table;
the backend only supplies the candidate values to try.  Every probe closes
everything it opened, whatever happens.
"""

from __future__ import annotations

import array
import contextlib
import errno
import functools
import os
import secrets
import socket
from typing import Iterator, List, NamedTuple, Optional, Set, Tuple

from udscompat import _io
from udscompat._platform import backend

__all__ = [
    "SeqpacketProbe",
    "abstract_addresses",
    "close_after_send",
    "cmsg_cloexec_flag",
    "ctrunc_behaviour",
    "max_fds_per_message",
    "open_fds",
    "same_process_fd_reuse",
    "seqpacket",
]

_TOO_MANY = {errno.EINVAL, errno.EMSGSIZE, errno.E2BIG, errno.ETOOMANYREFS, errno.ENOBUFS}


def _errno_name(exc: OSError) -> str:
    return errno.errorcode.get(exc.errno or 0, str(exc.errno))


def _send_rights(sock: socket.socket, data: bytes, fds: List[int], flags: int = 0) -> int:
    rights = array.array("i", fds).tobytes()
    return sock.sendmsg([data], [(backend.SOL_SOCKET, backend.SCM_RIGHTS, rights)], flags)


def _recv_rights(sock: socket.socket, nfds: int, flags: int = 0) -> Tuple[bytes, List[int], int]:
    data, ancdata, msg_flags, _ = sock.recvmsg(64, socket.CMSG_SPACE(4 * max(nfds, 1)), flags)
    fds: List[int] = []
    for level, kind, payload in ancdata:
        if level == backend.SOL_SOCKET and kind == backend.SCM_RIGHTS:
            usable = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:usable]))
    return data, fds, msg_flags


@contextlib.contextmanager
def _stream_pair() -> Iterator[Tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        yield a, b
    finally:
        a.close()
        b.close()


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


@functools.cache
def cmsg_cloexec_flag() -> Optional[int]:
    """The MSG_CMSG_CLOEXEC value if the kernel accepts and honours it, else None."""
    candidate = backend.MSG_CMSG_CLOEXEC or getattr(socket, "MSG_CMSG_CLOEXEC", None)
    if not candidate:
        return None
    with _stream_pair() as (a, b), _pipe() as (r, _w):
        _send_rights(a, b"x", [r])
        try:
            _, fds, _ = _recv_rights(b, 1, candidate)
        except OSError:
            return None
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
        _, fds, _ = _recv_rights(b, 1)
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
                socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)[0].close()
            _, fds, _ = _recv_rights(b, 1)
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
def ctrunc_behaviour() -> str:
    """What the kernel does with descriptors that do not fit the control buffer.

    Returns one of ``"excess-closed"`` (MSG_CTRUNC; the fds that did not fit
    were closed), ``"all-closed"`` (MSG_CTRUNC; none arrived),
    ``"excess-leaked"`` (MSG_CTRUNC, but new descriptors appeared that
    recvmsg did not report; the probe closes them), ``"emsgsize"`` (recvmsg
    failed with EMSGSIZE) or ``"not-truncated"``.
    """
    with _stream_pair() as (a, b), _pipe() as (r, _w):
        _send_rights(a, b"x", [r, r, r, r])
        before = open_fds()
        try:
            _, ancdata, flags, _ = b.recvmsg(1, socket.CMSG_LEN(4))
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                return "emsgsize"
            raise
        reported: List[int] = []
        for level, kind, payload in ancdata:
            if level == backend.SOL_SOCKET and kind == backend.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                reported.extend(array.array("i", payload[:usable]))
        appeared = open_fds() - before
        _io.close_fds(sorted(appeared | set(reported)))
        if not flags & backend.MSG_CTRUNC:
            return "not-truncated"
        if appeared - set(reported):
            return "excess-leaked"
        return "excess-closed" if reported else "all-closed"


def _fits(sock: socket.socket, peer: socket.socket, fd: int, count: int) -> Optional[bool]:
    try:
        _send_rights(sock, b"x", [fd] * count)
    except OSError as exc:
        if exc.errno in _TOO_MANY:
            return False
        return None
    _, fds, _ = _recv_rights(peer, count)
    _io.close_fds(fds)
    return len(fds) == count


@functools.cache
def max_fds_per_message(ceiling: int = 1024) -> Optional[int]:
    """The most descriptors one sendmsg takes, found by bisection (None if unmeasurable).

    One descriptor is repeated in the array, so nothing needs opening; the
    ceiling is lowered to what the descriptor table can receive.
    """
    import resource

    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        ceiling = min(ceiling, soft - len(open_fds()) - 16)
    if ceiling < 2:
        return None
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    try:
        guess = backend.MAX_FDS_PER_MESSAGE
        # Confirm the header's cap with two sends before bisecting from scratch.
        confirmed = guess is not None and guess < ceiling and _fits(a, b, r, guess)
        if confirmed and guess is not None and _fits(a, b, r, guess + 1) is False:
            return guess
        lo, hi = 1, ceiling  # lo fits; hi is the first count not yet known to fail
        if not _fits(a, b, r, lo):
            return None
        if _fits(a, b, r, hi):
            return None  # no limit below the ceiling
        while hi - lo > 1:
            mid = (lo + hi) // 2
            ok = _fits(a, b, r, mid)
            if ok is None:
                return None
            lo, hi = (mid, hi) if ok else (lo, mid)
        return lo
    finally:
        a.close()
        b.close()
        _io.close_fds([r, w])


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

    @property
    def conformant(self) -> bool:
        """Can the native type keep the whole seqpacket contract here?"""
        return self.available and self.keeps_boundaries and self.zero_length == "distinct"


@functools.cache
def seqpacket() -> SeqpacketProbe:
    """Probe SOCK_SEQPACKET: exists? record boundaries? short reads? zero-length?"""
    try:
        a, b = socket.socketpair(socket.AF_UNIX, backend.SOCK_SEQPACKET)
    except OSError as exc:
        return SeqpacketProbe(
            False, f"socketpair(AF_UNIX, SOCK_SEQPACKET) fails with {_errno_name(exc)}"
        )
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        marker = enable_message_marker(b)
        flags = backend.SEQPACKET_SEND_FLAGS
        anc = socket.CMSG_SPACE(64)
        try:
            a.send(b"ab", flags)
            a.send(b"c", flags)
            first = b.recvmsg(64, anc)[0]
            b.recvmsg(64, anc)
            boundaries = first == b"ab"
            a.send(b"abcd", flags)
            _part, _, _msg_flags, _ = b.recvmsg(2, anc)
            try:
                rest = b.recvmsg(64, anc)[0]
            except BlockingIOError:
                rest = b""
            short_read = "partial" if rest == b"cd" else "discard"
            a.send(b"", flags)
            try:
                _data, ancdata, zflags, _ = b.recvmsg(64, anc)
                signalled = bool(ancdata) or bool(zflags & (backend.MSG_EOR | backend.MSG_TRUNC))
                zero = "distinct" if signalled else "same-as-eof"
            except BlockingIOError:
                zero = "not-delivered"
        except OSError as exc:
            return SeqpacketProbe(True, f"probing seqpacket failed with {_errno_name(exc)}")
    reason = "native SOCK_SEQPACKET"
    if not boundaries:
        reason = "SOCK_SEQPACKET exists but does not keep message boundaries"
    elif zero != "distinct":
        reason = f"SOCK_SEQPACKET cannot tell a zero-length message from end-of-stream ({zero})"
    return SeqpacketProbe(True, reason, boundaries, short_read, zero, marker)


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
