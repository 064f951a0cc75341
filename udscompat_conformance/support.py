"""Helpers for conformance cases: errno names, pairs of each socket kind, feature checks."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any, Callable, Optional, Tuple

from udscompat_conformance.plugin import unavailable


def errno_name(exc: OSError) -> str:
    """``EPIPE`` for an OSError with errno EPIPE; the class name where there is no errno."""
    if exc.errno is None:
        return type(exc).__name__
    # Where two names share a number, the socket one (as the catalogue and man pages say).
    if exc.errno == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    if exc.errno == errno.EAGAIN:
        return "EAGAIN"
    return errno.errorcode.get(exc.errno, str(exc.errno))


def attempt(operation: Callable[[], Any]) -> str:
    """``"ok"`` if ``operation()`` succeeds, else the errno name it failed with."""
    try:
        operation()
    except OSError as exc:
        return errno_name(exc)
    return "ok"


def has_seqpacket() -> Optional[str]:
    """None if this kernel creates AF_UNIX SOCK_SEQPACKET sockets, else the errno name."""
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).close()
    except OSError as exc:
        return errno_name(exc)
    return None


def require_seqpacket() -> None:
    failure = has_seqpacket()
    if failure is not None:
        unavailable(f"the kernel has no AF_UNIX SOCK_SEQPACKET ({failure})")


def abstract_name(tag: str) -> bytes:
    """A unique abstract name (leading NUL included)."""
    return (
        b"\0udsc-"
        + tag.encode()
        + b"-"
        + str(os.getpid()).encode()
        + b"-"
        + os.urandom(4).hex().encode()
    )


def require_abstract() -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.bind(abstract_name("probe"))
        except OSError as exc:
            unavailable(
                f"no abstract addresses: bind of a NUL-led name fails with {errno_name(exc)}"
            )


def pair(kind: int) -> Tuple[socket.socket, socket.socket]:
    """A socketpair of ``kind``; seqpacket cases call ``require_seqpacket`` first."""
    return socket.socketpair(socket.AF_UNIX, kind)


#: (LOCAL_CREDS at level 0, the SCM_CREDS it makes arrive) per system; CPython exposes neither.
#: FreeBSD sys/sys/un.h LOCAL_CREDS 2, sys/sys/socket.h SCM_CREDS 0x03 (struct cmsgcred).
#: NetBSD sys/sys/un.h rev 1.57 (2016, 7.99.34) LOCAL_CREDS 0x0004 (0x0001 is LOCAL_OCREDS,
#: the pre-7.0 one), sys/sys/socket.h rev 1.119 SCM_CREDS 0x10 (struct sockcred).
LOCAL_CREDS_OPTIONS = {"freebsd": (2, 0x03), "netbsd": (0x0004, 0x10)}

SOCKET_KINDS = {
    "stream": socket.SOCK_STREAM,
    "dgram": socket.SOCK_DGRAM,
    "seqpacket": socket.SOCK_SEQPACKET,
}


def kind_pair(name: str) -> Tuple[socket.socket, socket.socket]:
    if name == "seqpacket":
        require_seqpacket()
    return pair(SOCKET_KINDS[name])


def largest(works: Callable[[int], bool], low: int, high: int) -> int:
    """The largest n in [low, high] for which ``works(n)`` holds, by bisection.

    ``works`` must hold at ``low`` and be monotone (true up to a limit, false after).
    Returns ``high`` if it holds there too.

    Raises:
        AssertionError: ``works(low)`` is false, so there is nothing to measure.
    """
    assert works(low), f"the smallest value tried ({low}) already fails"
    if works(high):
        return high
    while high - low > 1:
        middle = (low + high) // 2
        if works(middle):
            low = middle
        else:
            high = middle
    return low


def send_rights(sock: socket.socket, data: bytes, fds: list[int], flags: int = 0) -> int:
    """One sendmsg with one SCM_RIGHTS message (standard library only)."""
    import array

    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
    return sock.sendmsg([data], ancdata, flags)


def recv_rights(
    sock: socket.socket, bufsize: int, ancbufsize: int, flags: int = 0
) -> Tuple[bytes, list[int], int]:
    """One recvmsg; returns the payload, every descriptor that arrived, and msg_flags."""
    import array

    data, ancdata, msg_flags, _ = sock.recvmsg(bufsize, ancbufsize, flags)
    fds: list[int] = []
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            whole = len(payload) - len(payload) % 4
            fds.extend(array.array("i", payload[:whole]))
    return data, fds, msg_flags


def close_all(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def flag_names(flags: int) -> list[str]:
    """The MSG_* names set in ``flags`` that this Python knows."""
    names = []
    for name in ("MSG_TRUNC", "MSG_CTRUNC", "MSG_EOR", "MSG_OOB", "MSG_PEEK"):
        value = getattr(socket, name, None)
        if value is not None and flags & value:
            names.append(name)
    return names


def same_file(a: int, b: int) -> bool:
    """Do two descriptors refer to the same file (device and inode)?"""
    sa, sb = os.fstat(a), os.fstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def timeval(seconds: float) -> bytes:
    """A ``struct timeval`` for SO_RCVTIMEO / SO_SNDTIMEO."""
    import struct

    whole = int(seconds)
    return struct.pack("@ll", whole, int((seconds - whole) * 1e6))


def send_until_refused(
    send: Callable[[], object], limit: int = 100000
) -> Tuple[int, Optional[str]]:
    """Call ``send()`` until it fails: how many calls succeeded, and the errno name of the failure
    (None if ``limit`` calls all succeeded)."""
    for count in range(limit):
        try:
            send()
        except OSError as exc:
            return count, errno_name(exc)
    return limit, None


def largest_message(sender: socket.socket, receiver: socket.socket) -> dict[str, Any]:
    """The largest message a non-blocking ``sender`` takes (bisection), and the error beyond it."""
    errors: dict[str, str] = {}

    def works(n: int) -> bool:
        try:
            sender.send(b"\0" * n)
        except OSError as exc:
            errors["beyond"] = errno_name(exc)
            return False
        receiver.recv(n)
        return True

    sender.setblocking(False)
    size = largest(works, 1, 1 << 24)
    return {"bytes": size, "beyond": errors.get("beyond")}


def endpoint(kind: str) -> Tuple[int, bytes]:
    """An fd of ``kind`` ("file", "pipe", "unix_socket") with data waiting, and that data."""
    import tempfile

    if kind == "file":
        fd, path = tempfile.mkstemp()
        os.unlink(path)
        os.write(fd, b"file")
        os.lseek(fd, 0, os.SEEK_SET)
        return fd, b"file"
    if kind == "pipe":
        r, w = os.pipe()
        os.write(w, b"pipe")
        os.close(w)
        return r, b"pipe"
    x, y = socket.socketpair(socket.AF_UNIX)
    y.send(b"unix")
    y.close()
    return x.detach(), b"unix"


def provoke_unix_gc(rounds: int = 20) -> None:
    """Close unix sockets that have a socket in flight: this runs the kernel's garbage
    collector for in-flight descriptors (os-facts §2.4)."""
    for _ in range(rounds):
        x, y = socket.socketpair(socket.AF_UNIX)
        send_rights(x, b"x", [y.fileno()])
        x.close()
        y.close()


def read_endpoint(fd: int, kind: str) -> bytes:
    """What waits on an ``endpoint(kind)`` descriptor (or a received copy of it)."""
    if kind == "unix_socket":
        # Family and type given: socket(fileno=) would ask SO_DOMAIN and SO_PROTOCOL, which
        # Linux-ABI layers may not know (NetBSD's compat_linux: EINVAL).
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0, fileno=os.dup(fd)) as sock:
            return sock.recv(10)
    return os.read(fd, 10)
