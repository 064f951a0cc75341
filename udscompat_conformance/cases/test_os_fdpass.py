"""OS cases: SCM_RIGHTS descriptor passing, observed with sendmsg/recvmsg only."""

from __future__ import annotations

import array
import gc
import os
import socket
import time
from typing import Any, Dict, List

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    attempt,
    close_all,
    endpoint,
    errno_name,
    flag_names,
    kind_pair,
    largest,
    provoke_unix_gc,
    read_endpoint,
    recv_rights,
    same_file,
    send_rights,
)

case = pytest.mark.case
_ROOM = socket.CMSG_SPACE(4 * 512)
_CLOEXEC = getattr(socket, "MSG_CMSG_CLOEXEC", 0)
_KINDS = ["stream", "dgram", "seqpacket"]


@case(
    "os.fdpass.one_fd",
    "One pipe fd passed: the received fd is a new number for the same file",
    rows=["FD-01", "FD-02", "FD-34"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_one_fd(observe: Observer, pipe: tuple[int, int], kind: str) -> None:
    a, b = kind_pair(kind)
    with a, b:
        try:
            send_rights(a, b"x", [pipe[0]])
        except OSError as exc:
            observe(f"send fails: {errno_name(exc)}")
            return
        _, fds, _ = recv_rights(b, 1, _ROOM)
        try:
            observe({"received": len(fds), "same_file": bool(fds) and same_file(fds[0], pipe[0])})
        finally:
            close_all(fds)


@case(
    "os.fdpass.order",
    "Several fds in one SCM_RIGHTS arrive in order; two messages stay separate",
    rows=["FD-03", "FD-04", "FD-35"],
)
def test_order(observe: Observer) -> None:
    pipes = [os.pipe() for _ in range(3)]
    try:
        a, b = socket.socketpair(socket.AF_UNIX)
        with a, b:
            send_rights(a, b"1", [p[0] for p in pipes])
            send_rights(a, b"2", [pipes[0][1]])
            time.sleep(0.02)
            data1, fds1, _ = recv_rights(b, 10, _ROOM)
            _, fds2, _ = recv_rights(b, 10, _ROOM)
            try:
                in_order = len(fds1) == 3 and all(same_file(f, p[0]) for f, p in zip(fds1, pipes))
                observe({"in_order": in_order, "separate": (data1, len(fds2)) == (b"1", 1)})
            finally:
                close_all(fds1 + fds2)
    finally:
        close_all([fd for p in pipes for fd in p])


@case(
    "os.fdpass.several_cmsgs",
    "Two SCM_RIGHTS cmsgs in one sendmsg: how many fds arrive",
    rows=["FD-05"],
)
def test_several_cmsgs(observe: Observer, pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        rights = [
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe[0]])),
            (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe[1]])),
        ]
        try:
            a.sendmsg([b"x"], rights)
        except OSError as exc:
            observe(f"send fails: {errno_name(exc)}")
            return
        _, ancdata, _, _ = b.recvmsg(1, _ROOM)
        fds = [fd for _, _, p in ancdata for fd in array.array("i", p[: len(p) - len(p) % 4])]
        close_all(fds)
        observe({"fds": len(fds), "cmsgs": len(ancdata)})


@case(
    "os.fdpass.max_per_message",
    "Most fds one sendmsg takes (bisection), and the error one more gives",
    rows=["FD-07", "FD-06"],
)
def test_max_per_message(observe: Observer, pipe: tuple[int, int]) -> None:
    errors: Dict[str, str] = {}

    def works(n: int) -> bool:
        # A fresh pair per try, and a receive that does not wait: NetBSD accepts some sends
        # it never delivers (and, after refusing one with ENOBUFS, loses later ones).
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with a, b:
            try:
                send_rights(a, b"x", [pipe[0]] * n)
            except OSError as exc:
                errors["beyond"] = errno_name(exc)
                return False
            b.setblocking(False)
            try:
                _, fds, _ = recv_rights(b, 1, socket.CMSG_SPACE(4 * n))
            except BlockingIOError:
                errors["beyond"] = "sendmsg succeeds, nothing arrives"
                return False
            close_all(fds)
            return len(fds) == n

    observe({"fds": largest(works, 1, 4096), "beyond": errors.get("beyond")})


@case(
    "os.fdpass.control_too_small",
    "Four fds, control room for two: MSG_CTRUNC or an error; how many arrive",
    rows=["FD-09", "FD-13", "FD-31"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_control_too_small(observe: Observer, pipe: tuple[int, int], kind: str) -> None:
    a, b = kind_pair(kind)
    with a, b:
        send_rights(a, b"x", [pipe[0], pipe[1], pipe[0], pipe[1]])
        try:
            _, fds, flags = recv_rights(b, 1, socket.CMSG_SPACE(8))
        except OSError as exc:
            observe({"recvmsg": errno_name(exc)})
            return
        close_all(fds)
        observe({"recvmsg": "ok", "flags": flag_names(flags), "delivered": len(fds)})


@case(
    "os.fdpass.no_control_buffer",
    "Fds pending, recvmsg without a control buffer: flags; the fds are dropped",
    rows=["FD-10", "FD-11"],
)
def test_no_control_buffer(observe: Observer, pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        send_rights(a, b"xy", [pipe[0]])
        _, ancdata, flags, _ = b.recvmsg(1)
        _, later, _ = recv_rights(b, 1, _ROOM)
        close_all(later)
        observe(
            {"flags": flag_names(flags), "cmsgs": len(ancdata), "fds_on_later_read": len(later)}
        )


@case(
    "os.fdpass.stream_boundaries",
    "Stream: a recv stops at an SCM_RIGHTS boundary; two fd messages are not merged",
    rows=["FD-12"],
)
def test_stream_boundaries(observe: Observer, pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.send(b"plain")
        send_rights(a, b"with-fd", [pipe[0]])
        send_rights(a, b"second", [pipe[1]])
        time.sleep(0.02)
        reads: List[Any] = []
        all_fds: List[int] = []
        b.setblocking(False)
        for _ in range(4):
            try:
                data, fds, _ = recv_rights(b, 100, _ROOM)
            except BlockingIOError:
                break
            reads.append([data.decode(), len(fds)])
            all_fds += fds
        close_all(all_fds)
        observe(reads)


@case("os.fdpass.zero_byte_payload", "Fds with a zero-byte payload", rows=["FD-14"])
@pytest.mark.parametrize("kind", _KINDS)
def test_zero_byte_payload(observe: Observer, pipe: tuple[int, int], kind: str) -> None:
    a, b = kind_pair(kind)
    with a, b:
        try:
            sent = send_rights(a, b"", [pipe[0]])
        except OSError as exc:
            observe(f"send fails: {errno_name(exc)}")
            return
        b.setblocking(False)
        try:
            data, fds, _ = recv_rights(b, 10, _ROOM)
        except BlockingIOError:
            observe({"send_returns": sent, "receiver": "nothing arrives (fds dropped)"})
            return
        close_all(fds)
        observe({"send_returns": sent, "receiver": f"{len(data)} bytes, {len(fds)} fds"})


@case("os.fdpass.empty_rights", "An SCM_RIGHTS cmsg with zero fds", rows=["FD-15"])
def test_empty_rights(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        observe(attempt(lambda: a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, b"")])))


@case(
    "os.fdpass.partial_int",
    "An SCM_RIGHTS payload that is not a whole number of ints",
    rows=["FD-16"],
)
def test_partial_int(observe: Observer, pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        payload = array.array("i", [pipe[0]]).tobytes() + b"\0"
        result = attempt(
            lambda: a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, payload)])
        )
        if result == "ok":
            _, fds, _ = recv_rights(b, 1, _ROOM)
            close_all(fds)
            result = f"accepted, {len(fds)} fds arrive"
        observe(result)


@case("os.fdpass.invalid_fd", "An invalid fd number in SCM_RIGHTS", rows=["FD-17"])
def test_invalid_fd(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        observe(attempt(lambda: send_rights(a, b"x", [2**31 - 1])))


@case(
    "os.fdpass.cloexec",
    "A received fd: FD_CLOEXEC by default, and with MSG_CMSG_CLOEXEC",
    rows=["FD-19"],
)
def test_cloexec(observe: Observer, pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        send_rights(a, b"x", [pipe[0]])
        _, plain, _ = recv_rights(b, 1, _ROOM)
        with_flag: Any = "no MSG_CMSG_CLOEXEC in this Python"
        if _CLOEXEC:
            send_rights(a, b"x", [pipe[0]])
            try:
                _, fds, _ = recv_rights(b, 1, _ROOM, _CLOEXEC)
            except OSError as exc:
                with_flag = errno_name(exc)
            else:
                with_flag = not os.get_inheritable(fds[0])
                close_all(fds)
        default = not os.get_inheritable(plain[0])
        close_all(plain)
        observe({"default_cloexec": default, "with_msg_cmsg_cloexec": with_flag})


@case(
    "os.fdpass.close_after_send",
    "The sender closes the fd before the receiver takes it (GC provoked meanwhile)",
    rows=["FD-20", "FD-22"],
)
@pytest.mark.parametrize("kind", ["file", "pipe", "unix_socket"])
def test_close_after_send(observe: Observer, kind: str) -> None:
    fd, _ = endpoint(kind)
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        send_rights(a, b"x", [fd])
        os.close(fd)
        provoke_unix_gc()
        gc.collect()
        _, fds, _ = recv_rights(b, 1, _ROOM)
        try:
            if not fds:
                observe("lost: no fd arrived")
                return
            observe("works" if read_endpoint(fds[0], kind) else "arrived but empty")
        finally:
            close_all(fds)


@case(
    "os.fdpass.same_process_reuse",
    "A receive in the sending process: does it return the sender's own, still open, fd number?",
    rows=["FD-21"],
)
def test_same_process_reuse(observe: Observer, pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        send_rights(a, b"x", [pipe[0]])
        _, fds, _ = recv_rights(b, 1, _ROOM)
        reused = pipe[0] in fds
        close_all([fd for fd in fds if fd != pipe[0]])
        observe(reused)


@case(
    "os.fdpass.peek",
    "MSG_PEEK on a message with an fd: fds on the peek, and on the read after it",
    rows=["FD-25"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_peek(observe: Observer, pipe: tuple[int, int], kind: str) -> None:
    a, b = kind_pair(kind)
    with a, b:
        send_rights(a, b"x", [pipe[0]])
        _, peeked, _ = recv_rights(b, 1, _ROOM, socket.MSG_PEEK)
        _, read, _ = recv_rights(b, 1, _ROOM)
        distinct = bool(peeked and read) and peeked[0] != read[0]
        close_all(peeked + read)
        observe({"on_peek": len(peeked), "on_read": len(read), "distinct_numbers": distinct})


@case(
    "os.fdpass.passed_socket_works",
    "A passed socket still works; a passed unbound dgram socket is unnamed",
    rows=["FD-29"],
)
def test_passed_socket_works(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, x, y:
        send_rights(a, b"x", [x.fileno()])
        _, fds, _ = recv_rights(b, 1, _ROOM)
        with socket.socket(fileno=fds[0]) as received:
            received.send(b"through")
            observe({"sends": y.recv(10) == b"through", "local_name": repr(received.getsockname())})


@case(
    "os.fdpass.zero_length_recv",
    "A zero-length recvmsg with an fd pending: fd delivered? data consumed?",
    rows=["FD-32"],
)
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_zero_length_recv(observe: Observer, pipe: tuple[int, int], kind: str) -> None:
    a, b = kind_pair(kind)
    with a, b:
        send_rights(a, b"x", [pipe[0]])
        _, fds, flags = recv_rights(b, 0, _ROOM)
        close_all(fds)
        b.setblocking(False)
        observe({"fds": len(fds), "flags": flag_names(flags), "then": attempt(lambda: b.recv(1))})


@case(
    "os.fdpass.receiver_out_of_fds",
    "The receiver is at RLIMIT_NOFILE: what recvmsg does, and nothing leaks",
    rows=["FD-08"],
)
def test_receiver_out_of_fds(observe: Observer, pipe: tuple[int, int]) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    a, b = socket.socketpair(socket.AF_UNIX)
    fillers: List[int] = []
    with a, b:
        send_rights(a, b"x", [pipe[0]])
        highest = max(a.fileno(), b.fileno(), *pipe) + 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 8, hard))
        try:
            while True:
                try:
                    fillers.append(os.dup(0))
                except OSError:
                    break
            try:
                data, fds, flags = recv_rights(b, 1, _ROOM)
            except OSError as exc:
                outcome: Any = errno_name(exc)
            else:
                outcome = {"data": len(data), "fds": len(fds), "flags": flag_names(flags)}
                close_all(fds)
        finally:
            close_all(fillers)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        observe(outcome)


@case(
    "os.fdpass.passrights_off",
    "The receiver turns SO_PASSRIGHTS off (Linux 6.16+): what the sender's SCM_RIGHTS gets",
    rows=["FD-26"],
)
def test_passrights_off(observe: Observer, pipe: tuple[int, int]) -> None:
    import sys

    if not sys.platform.startswith("linux"):
        from udscompat_conformance.support import unavailable

        unavailable("SO_PASSRIGHTS is Linux's")
    so_passrights = 83  # <asm-generic/socket.h>
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        option = attempt(lambda: b.setsockopt(socket.SOL_SOCKET, so_passrights, 0))
        if option != "ok":
            observe({"setsockopt": option})
            return
        observe(
            {"setsockopt": "ok", "send_with_fd": attempt(lambda: send_rights(a, b"x", [pipe[0]]))}
        )


@case(
    "os.fdpass.with_oob",
    "SCM_RIGHTS sent together with an MSG_OOB byte on a stream",
    rows=["FD-27", "STR-29"],
)
def test_with_oob(observe: Observer, pipe: tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        result = attempt(lambda: send_rights(a, b"!", [pipe[0]], socket.MSG_OOB))
        if result != "ok":
            observe({"send": result})
            return
        b.setblocking(False)
        try:
            data, fds, flags = recv_rights(b, 10, _ROOM)
        except OSError as exc:
            observe({"send": "ok", "recv": errno_name(exc)})
            return
        close_all(fds)
        observe(
            {"send": "ok", "recv": f"{len(data)} bytes, {len(fds)} fds", "flags": flag_names(flags)}
        )


@case(
    "os.fdpass.shutdown_rd_disposes",
    "shutdown(SHUT_RD) with an fd (a pipe's write end) queued: is the in-flight fd released?",
    rows=["FD-23"],
)
def test_shutdown_rd_disposes(observe: Observer) -> None:
    import select

    r, w = os.pipe()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        send_rights(a, b"x", [w])
        os.close(w)  # the only writer left is the one in flight
        b.shutdown(socket.SHUT_RD)
        poller = select.poll()
        poller.register(r, select.POLLIN | select.POLLHUP)
        released = bool(poller.poll(500))
        b.setblocking(False)
        try:
            _, later, _ = recv_rights(b, 1, _ROOM)
        except OSError as exc:
            later_read: Any = errno_name(exc)
        else:
            later_read = f"{len(later)} fds"
            close_all(later)
        os.close(r)
        observe({"write_end_released": released, "recv_after": later_read})


@case(
    "os.fdpass.threads",
    "Four threads pass 50 fds each over one datagram pair at the same time",
    rows=["FD-33"],
)
def test_threads(observe: Observer, pipe: tuple[int, int]) -> None:
    import threading

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    errors: List[BaseException] = []

    def sender() -> None:
        try:
            for _ in range(50):
                send_rights(a, b"x", [pipe[0]])
        except BaseException as exc:  # reported below
            errors.append(exc)

    with a, b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        threads = [threading.Thread(target=sender) for _ in range(4)]
        for thread in threads:
            thread.start()
        good = 0
        for _ in range(200):
            _, fds, _ = recv_rights(b, 1, _ROOM)
            good += sum(1 for fd in fds if same_file(fd, pipe[0]))
            close_all(fds)
        for thread in threads:
            thread.join()
        observe({"received": good, "errors": [repr(e) for e in errors]})


@case(
    "os.fdpass.rights_with_local_creds",
    "FreeBSD: rights plus LOCAL_CREDS on an almost full non-blocking stream; fd and creds arrive",
    rows=["FD-28"],
)
def test_rights_with_local_creds(observe: Observer, pipe: tuple[int, int]) -> None:
    import sys

    from udscompat_conformance.support import unavailable

    if not sys.platform.startswith("freebsd"):
        unavailable("LOCAL_CREDS with SCM_RIGHTS on a stream is a FreeBSD case (PR 181741)")
    local_creds, scm_creds = 2, 3  # <sys/un.h> (level 0), <sys/socket.h>
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        b.setsockopt(0, local_creds, 1)
        a.setblocking(False)
        try:
            while True:
                a.send(b"\0" * 4096)
        except BlockingIOError:
            pass
        b.recv(2048)  # leave a little room: the next send can only be partial
        try:
            sent = send_rights(a, b"\1" * 65536, [pipe[0]])
        except OSError as exc:
            observe({"send": errno_name(exc)})
            return
        b.setblocking(False)
        fds: List[int] = []
        creds = False
        while True:
            try:
                data, ancdata, _, _ = b.recvmsg(1 << 20, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            for _, kind, payload in ancdata:
                if kind == socket.SCM_RIGHTS:
                    fds += list(array.array("i", payload[: len(payload) - len(payload) % 4]))
                creds = creds or kind == scm_creds
        close_all(fds)
        observe({"partial_send": sent < 65536, "fd_arrived": len(fds) == 1, "creds_arrived": creds})
