"""OS cases: stream sockets and the connection lifecycle shared by all socket types."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Dict

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    SOCKET_KINDS,
    attempt,
    errno_name,
    flag_names,
    kind_pair,
    require_seqpacket,
    timeval,
)

case = pytest.mark.case


@case(
    "os.stream.connect_refused",
    "connect() to a missing path, and to a socket file nobody listens on",
    rows=["STR-03"],
)
def test_connect_refused(observe: Observer, short_tmp: str) -> None:
    stale = os.path.join(short_tmp, "stale")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(stale)  # closed without listen: the file stays, nobody accepts
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        observe(
            {
                "missing": attempt(lambda: a.connect(os.path.join(short_tmp, "none"))),
                "stale_file": attempt(lambda: b.connect(stale)),
            }
        )


@case(
    "os.stream.listen_edges",
    "listen() unbound, again on a listener, and on a connected socket",
    rows=["STR-04", "STR-05", "STR-06"],
)
def test_listen_edges(observe: Observer, short_tmp: str) -> None:
    seen: Dict[str, str] = {}
    with socket.socket(socket.AF_UNIX) as unbound:
        seen["unbound"] = attempt(lambda: unbound.listen(1))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(os.path.join(short_tmp, "l"))
        listener.listen(1)
        seen["again"] = attempt(lambda: listener.listen(5))
        seen["backlog_0"] = attempt(lambda: listener.listen(0))
        seen["backlog_-1"] = attempt(lambda: listener.listen(-1))
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        seen["connected"] = attempt(lambda: a.listen(1))
    observe(seen)


@case(
    "os.stream.backlog_full",
    "A non-blocking connect() to a listener whose backlog (0) is full",
    rows=["STR-07"],
)
def test_backlog_full(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "l")
    clients = []
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(0)
        outcome = "no error after 256 connects"
        try:
            for count in range(256):
                c = socket.socket(socket.AF_UNIX)
                clients.append(c)
                c.setblocking(False)
                result = attempt(lambda c=c: c.connect(path))  # type: ignore[misc]
                if result != "ok":
                    outcome = f"{result} after {count} queued"
                    break
        finally:
            for c in clients:
                c.close()
        observe(outcome)


@case(
    "os.stream.close_with_unread_data",
    "The peer closes with our data unread: what our recv gets",
    rows=["STR-11", "SEQ-10"],
)
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_close_with_unread_data(observe: Observer, kind: str) -> None:
    a, b = kind_pair(kind)
    with a:
        a.send(b"unread")
        b.close()
        a.settimeout(2)
        try:
            data = a.recv(10)
        except OSError as exc:
            observe(errno_name(exc))
        else:
            observe(f"returned {len(data)} bytes")


@case(
    "os.stream.listener_closed_with_pending",
    "The listener closes with our connection unaccepted",
    rows=["STR-12", "SEQ-10"],
)
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_listener_closed_with_pending(observe: Observer, short_tmp: str, kind: str) -> None:
    if kind == "seqpacket":
        require_seqpacket()
    path = os.path.join(short_tmp, "l")
    with socket.socket(socket.AF_UNIX, SOCKET_KINDS[kind]) as client:
        with socket.socket(socket.AF_UNIX, SOCKET_KINDS[kind]) as listener:
            listener.bind(path)
            listener.listen(1)
            client.connect(path)
        client.settimeout(2)
        try:
            data = client.recv(10)
        except OSError as exc:
            observe(errno_name(exc))
        else:
            observe(f"returned {len(data)} bytes")


@case(
    "os.stream.sendto_with_address",
    "sendto() with an address on a connected and on an unconnected stream",
    rows=["STR-13"],
)
def test_sendto_with_address(observe: Observer, short_tmp: str) -> None:
    bogus = os.path.join(short_tmp, "nobody")
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, socket.socket(socket.AF_UNIX) as lone:
        observe(
            {
                "connected": attempt(lambda: a.sendto(b"x", bogus)),
                "unconnected": attempt(lambda: lone.sendto(b"x", bogus)),
            }
        )


@case(
    "os.stream.send_zero_bytes",
    "send(b'') on a connected stream returns 0 and delivers nothing",
    rows=["STR-14"],
)
def test_send_zero_bytes(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        sent = a.send(b"")
        b.setblocking(False)
        observe({"returned": sent, "peer_reads": attempt(lambda: b.recv(1))})


@case(
    "os.stream.socket_options",
    "SO_TYPE, SO_ACCEPTCONN, SO_DOMAIN and SO_PROTOCOL on unix sockets",
    rows=["STR-20"],
)
def test_socket_options(observe: Observer, short_tmp: str) -> None:
    seen: Dict[str, object] = {}
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(os.path.join(short_tmp, "l"))
        listener.listen(1)
        seen["SO_TYPE_is_stream"] = (
            listener.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        )
        for name in ("SO_ACCEPTCONN", "SO_DOMAIN", "SO_PROTOCOL"):
            option = getattr(socket, name, None)
            if option is None:
                seen[name] = "no constant in this Python"
                continue
            try:
                seen[name] = listener.getsockopt(socket.SOL_SOCKET, option)
            except OSError as exc:
                seen[name] = errno_name(exc)
    observe(seen)


@case(
    "os.stream.buffer_sizes",
    "Default SO_SNDBUF/SO_RCVBUF per type, and what setting 8192 reads back as",
    rows=["STR-19"],
)
def test_buffer_sizes(observe: Observer) -> None:
    seen: Dict[str, object] = {}
    for name in ("stream", "dgram", "seqpacket"):
        try:
            a, b = kind_pair(name)
        except pytest.skip.Exception:
            continue
        with a, b:
            seen[f"{name}_sndbuf"] = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            seen[f"{name}_rcvbuf"] = a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
            seen[f"{name}_sndbuf_set_8192"] = a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
    observe(seen)


@case(
    "os.stream.rcvtimeo",
    "SO_RCVTIMEO bounds a blocking recv, and accept() on a listener",
    rows=["STR-21", "STR-22"],
)
def test_rcvtimeo(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "l")
    seen: Dict[str, str] = {}
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, socket.socket(socket.AF_UNIX) as listener:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0.2))
        seen["recv"] = attempt(lambda: b.recv(1))
        listener.bind(path)
        listener.listen(1)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(0.2))
        # If the OS ignores the timeout, accept() would block: a late client ends it.
        rescuer = threading.Timer(3.0, _connect_and_close, (path,))
        rescuer.start()
        started = time.monotonic()
        try:
            conn, _ = listener.accept()
        except OSError as exc:
            seen["accept"] = f"{errno_name(exc)} after the timeout"
        else:
            conn.close()
            seen["accept"] = (
                f"not bounded (a client connected after {time.monotonic() - started:.0f} s)"
            )
        finally:
            rescuer.cancel()
            rescuer.join()
    observe(seen)


def _connect_and_close(path: str) -> None:
    with socket.socket(socket.AF_UNIX) as c:
        c.connect(path)


@case(
    "os.stream.peek_across_sends",
    "One MSG_PEEK after two sends: does it stop at the first send?",
    rows=["STR-26", "STR-24"],
)
def test_peek_across_sends(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.send(b"abc")
        a.send(b"defg")
        time.sleep(0.05)
        observe({"peek_bytes": len(b.recv(100, socket.MSG_PEEK)), "recv_bytes": len(b.recv(100))})


@case(
    "os.stream.linux_options",
    "Linux-only stream options: SO_PEEK_OFF, SO_INQ, MSG_OOB",
    rows=["STR-28", "STR-29", "STR-30"],
)
def test_linux_options(observe: Observer) -> None:
    so_peek_off, so_inq = 42, 84  # Linux's values (asm-generic/socket.h)
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        seen = {
            "SO_PEEK_OFF": attempt(lambda: b.setsockopt(socket.SOL_SOCKET, so_peek_off, 0)),
            "SO_INQ": attempt(lambda: b.setsockopt(socket.SOL_SOCKET, so_inq, 1)),
            "MSG_OOB_send": attempt(lambda: a.send(b"!", socket.MSG_OOB)),
        }
    observe(
        seen, note="Linux option numbers tried on every OS; other values mean other options there"
    )


@case(
    "os.stream.nonblocking_empty",
    "recv on an empty non-blocking socket of each type",
    rows=["STR-34"],
)
@pytest.mark.parametrize("kind", ["stream", "dgram", "seqpacket"])
def test_nonblocking_empty(observe: Observer, kind: str) -> None:
    a, b = kind_pair(kind)
    with a, b:
        b.setblocking(False)
        observe(attempt(lambda: b.recv(1)))


@case(
    "os.stream.poll_after_peer_shutdown",
    "poll() events after the peer's shutdown(SHUT_WR) and after its close",
    rows=["STR-18", "SEQ-18"],
)
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_poll_after_peer_shutdown(observe: Observer, kind: str) -> None:
    import select

    names = {
        select.POLLIN: "POLLIN",
        select.POLLOUT: "POLLOUT",
        select.POLLHUP: "POLLHUP",
        getattr(select, "POLLRDHUP", 0): "POLLRDHUP",
    }
    mask = 0
    for bit in names:
        mask |= bit

    def events(sock: socket.socket) -> list[str]:
        poller = select.poll()
        poller.register(sock, mask)
        found = poller.poll(0)
        got = found[0][1] if found else 0
        return sorted(name for bit, name in names.items() if bit and got & bit)

    a, b = kind_pair(kind)
    with a, b:
        a.shutdown(socket.SHUT_WR)
        after_shutdown = events(b)
        read = attempt(lambda: b.recv(1))
        a.close()
        observe(
            {"peer_shut_wr": after_shutdown, "recv_after_shut_wr": read, "peer_closed": events(b)}
        )


@case(
    "os.stream.socketpair_flags",
    "socketpair() with SOCK_NONBLOCK|SOCK_CLOEXEC in the type: flags set, lowest free fds",
    rows=["STR-33"],
)
def test_socketpair_flags(observe: Observer) -> None:
    import fcntl

    nonblock = getattr(socket, "SOCK_NONBLOCK", None)
    cloexec = getattr(socket, "SOCK_CLOEXEC", None)
    if nonblock is None or cloexec is None:
        observe("no SOCK_NONBLOCK/SOCK_CLOEXEC type flags in this Python")
        return
    lowest = os.dup(0)
    os.close(lowest)
    try:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | nonblock | cloexec)
    except OSError as exc:
        observe(errno_name(exc))
        return
    with a, b:
        observe(
            {
                "nonblocking": bool(fcntl.fcntl(a.fileno(), fcntl.F_GETFL) & os.O_NONBLOCK),
                "cloexec": bool(fcntl.fcntl(b.fileno(), fcntl.F_GETFD) & fcntl.FD_CLOEXEC),
                "lowest_free": sorted([a.fileno(), b.fileno()])[0] == lowest,
                "SOCK_CLOFORK_known": hasattr(socket, "SOCK_CLOFORK"),
            }
        )


@case(
    "os.stream.socketpair_default",
    "socketpair() with no arguments: its family, and a byte exchange both ways",
    rows=["STR-01"],
)
def test_socketpair_default(observe: Observer) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(b"ping")
        b.sendall(b"pong")
        observe(
            {
                "family_is_unix": a.family == socket.AF_UNIX,
                "exchange": (b.recv(4), a.recv(4)) == (b"ping", b"pong"),
            }
        )


@case(
    "os.stream.send_before_accept",
    "Data sent before accept() is queued and readable after it",
    rows=["STR-08"],
)
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_send_before_accept(observe: Observer, short_tmp: str, kind: str) -> None:
    if kind == "seqpacket":
        require_seqpacket()
    path = os.path.join(short_tmp, "l")
    with (
        socket.socket(socket.AF_UNIX, SOCKET_KINDS[kind]) as listener,
        socket.socket(socket.AF_UNIX, SOCKET_KINDS[kind]) as client,
    ):
        listener.bind(path)
        listener.listen(1)
        client.connect(path)
        sent = attempt(lambda: client.send(b"early"))
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(2)
            observe({"send": sent, "read_after_accept": attempt(lambda: conn.recv(10)) == "ok"})


@case(
    "os.stream.zero_length_recv",
    "recv(0): with data pending (nothing consumed), on an empty non-blocking socket, after SHUT_WR",
    rows=["STR-15"],
)
def test_zero_length_recv(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        b.setblocking(False)
        empty = attempt(lambda: b.recv(0))
        a.send(b"data")
        pending = b.recv(0)
        kept = b.recv(10)
        a.shutdown(socket.SHUT_WR)
        observe(
            {
                "empty_queue": empty,
                "pending_returns": len(pending),
                "data_kept": kept == b"data",
                "after_shut_wr": attempt(lambda: b.recv(0)),
            }
        )


@case(
    "os.stream.shutdown_directions",
    "shutdown(SHUT_WR) then send; shutdown(SHUT_RD) then the peer's send; queued data readable",
    rows=["STR-16"],
)
@pytest.mark.parametrize("kind", ["stream", "dgram", "seqpacket"])
def test_shutdown_directions(observe: Observer, kind: str) -> None:
    a, b = kind_pair(kind)
    c, d = kind_pair(kind)
    with a, b, c, d:
        b.send(b"queued")
        a.shutdown(socket.SHUT_WR)
        nosignal = getattr(socket, "MSG_NOSIGNAL", 0)
        write_after = attempt(lambda: a.send(b"x", nosignal))
        a.setblocking(False)
        still_readable = attempt(lambda: a.recv(10))
        c.shutdown(socket.SHUT_RD)
        peer_send = attempt(lambda: d.send(b"y", nosignal))
        observe(
            {
                "send_after_shut_wr": write_after,
                "queued_readable": still_readable,
                "peer_send_after_shut_rd": peer_send,
            }
        )


@case(
    "os.stream.writability",
    "poll(): a connected socket is writable, an unconnected one is not, a full one is not",
    rows=["STR-17"],
)
def test_writability(observe: Observer) -> None:
    import select

    def writable(sock: socket.socket) -> bool:
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        return bool(poller.poll(0))

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, socket.socket(socket.AF_UNIX) as lone:
        connected = writable(a)
        a.setblocking(False)
        try:
            while True:
                a.send(b"\0" * 65536)
        except BlockingIOError:
            pass
        full = writable(a)
        b.setblocking(False)
        try:
            while True:
                b.recv(1 << 20)
        except BlockingIOError:
            pass
        observe(
            {
                "connected": connected,
                "unconnected": writable(lone),
                "full": full,
                "drained": writable(a),
            }
        )


@case(
    "os.stream.msg_trunc_ignored",
    "MSG_TRUNC on a stream recv: the flags, and how many bytes come back",
    rows=["STR-25"],
)
def test_msg_trunc_ignored(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.send(b"0123456789")
        data, _, flags, _ = b.recvmsg(4, 0, socket.MSG_TRUNC)
        observe({"bytes": len(data), "flags": flag_names(flags), "rest": len(b.recv(100))})


@case(
    "os.stream.waitall",
    "MSG_WAITALL waits for the full length; with MSG_DONTWAIT it returns what is there",
    rows=["STR-27"],
)
def test_waitall(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.send(b"abc")
        dontwait = b.recv(10, socket.MSG_WAITALL | socket.MSG_DONTWAIT)
        timer = threading.Timer(0.2, lambda: a.send(b"0123456789"))
        timer.start()
        try:
            waited = b.recv(10, socket.MSG_WAITALL)
        finally:
            timer.join()
        observe({"with_dontwait": len(dontwait), "waitall": len(waited)})


@case(
    "os.stream.fionread",
    "FIONREAD and TIOCOUTQ on a stream count queued data bytes",
    rows=["STR-31"],
)
def test_fionread(observe: Observer) -> None:
    import array
    import fcntl
    import termios

    def ioctl_int(sock: socket.socket, request: int) -> object:
        value = array.array("i", [0])
        try:
            fcntl.ioctl(sock.fileno(), request, value, True)
        except OSError as exc:
            return errno_name(exc)
        return value[0]

    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.send(b"x" * 100)
        outq = getattr(termios, "TIOCOUTQ", None)
        observe(
            {
                "FIONREAD": ioctl_int(b, termios.FIONREAD),
                "TIOCOUTQ": ioctl_int(a, outq) if outq is not None else "no TIOCOUTQ here",
            }
        )


@case(
    "os.stream.boolean_options",
    "SO_LINGER, SO_KEEPALIVE and SO_OOBINLINE set and read back on a unix socket",
    rows=["STR-36"],
)
def test_boolean_options(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        seen = {}
        for name in ("SO_KEEPALIVE", "SO_OOBINLINE"):
            option = getattr(socket, name)
            result = attempt(lambda option=option: a.setsockopt(socket.SOL_SOCKET, option, 1))
            seen[name] = bool(a.getsockopt(socket.SOL_SOCKET, option)) if result == "ok" else result
        linger = struct.pack("ii", 1, 5)
        result = attempt(lambda: a.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger))
        seen["SO_LINGER"] = (
            struct.unpack("ii", a.getsockopt(socket.SOL_SOCKET, socket.SO_LINGER, 8)) == (1, 5)
            if result == "ok"
            else result
        )
        observe(seen)


@case(
    "os.stream.sock_diag_uid",
    "sock_diag (NETLINK_SOCK_DIAG, UDIAG_SHOW_UID) reports a unix socket's owner uid",
    rows=["STR-35"],
)
def test_sock_diag_uid(observe: Observer) -> None:
    import sys

    from udscompat_conformance.support import unavailable

    if not sys.platform.startswith("linux") or not hasattr(socket, "AF_NETLINK"):
        unavailable("sock_diag is Linux's netlink interface")
    # <linux/netlink.h>, <linux/sock_diag.h>, <linux/unix_diag.h>
    netlink_sock_diag, sock_diag_by_family = 4, 20
    nlm_f_request, nlmsg_error = 0x1, 0x2
    udiag_show_uid, unix_diag_uid = 0x40, 7
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        inode = os.fstat(a.fileno()).st_ino
        # struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2] (no cookie)
        request = struct.pack(
            "=BBHIII2I",
            socket.AF_UNIX,
            0,
            0,
            0xFFFFFFFF,
            inode,
            udiag_show_uid,
            0xFFFFFFFF,
            0xFFFFFFFF,
        )
        header = struct.pack("=IHHII", 16 + len(request), sock_diag_by_family, nlm_f_request, 1, 0)
        try:
            netlink = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, netlink_sock_diag)
        except OSError as exc:
            observe({"netlink": errno_name(exc)})
            return
        with netlink:
            netlink.send(header + request)
            reply = netlink.recv(65536)
        length, kind = struct.unpack_from("=IH", reply)
        if kind == nlmsg_error:
            error = -struct.unpack_from("=i", reply, 16)[0]
            observe({"reply": os.strerror(error)})
            return
        # struct unix_diag_msg is 16 bytes; the attributes (len, type, payload) follow, 4-aligned.
        offset, uid = 16 + 16, None
        while offset + 4 <= length:
            attr_len, attr_type = struct.unpack_from("=HH", reply, offset)
            if attr_len < 4:
                break
            if attr_type == unix_diag_uid:
                uid = struct.unpack_from("=I", reply, offset + 4)[0]
            offset += (attr_len + 3) & ~3
        observe({"uid_reported": uid is not None, "uid_is_owner": uid == os.geteuid()})
