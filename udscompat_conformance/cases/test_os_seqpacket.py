"""OS cases: the kernel's own AF_UNIX SOCK_SEQPACKET, where there is one."""

from __future__ import annotations

import os
import socket
import time

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    abstract_name,
    attempt,
    errno_name,
    flag_names,
    has_seqpacket,
    largest_message,
    require_abstract,
    require_seqpacket,
    send_until_refused,
)

case = pytest.mark.case
_EOR = getattr(socket, "MSG_EOR", 0)


def _pair() -> tuple[socket.socket, socket.socket]:
    require_seqpacket()
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


@case(
    "os.seqpacket.exists",
    "AF_UNIX SOCK_SEQPACKET: socket, socketpair, bind, listen, connect, accept",
    rows=["SEQ-01"],
)
def test_exists(observe: Observer, short_tmp: str) -> None:
    failure = has_seqpacket()
    if failure is not None:
        observe(failure)
        return
    path = os.path.join(short_tmp, "l")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client,
    ):
        listener.bind(path)
        listener.listen(1)
        client.connect(path)
        conn, _ = listener.accept()
        conn.close()
    observe("ok")


@case(
    "os.seqpacket.record_boundaries",
    "Two sends (no MSG_EOR) read with one large recv",
    rows=["SEQ-02", "SEQ-03"],
)
def test_record_boundaries(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.send(b"first")
        a.send(b"second")
        time.sleep(0.02)
        data, _, flags, _ = b.recvmsg(100)
        observe({"first_recv": data.decode(), "flags": flag_names(flags)})


@case(
    "os.seqpacket.eor_reported",
    "A send with MSG_EOR: is MSG_EOR reported on receipt?",
    rows=["SEQ-03"],
)
def test_eor_reported(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.send(b"record", _EOR)
        _, _, flags, _ = b.recvmsg(100)
        observe(bool(_EOR and flags & _EOR))


@case(
    "os.seqpacket.short_read",
    "A 100-byte message read into 10 bytes: flags, and what the next recv returns",
    rows=["SEQ-05", "SEQ-04"],
)
def test_short_read(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.send(b"x" * 100, _EOR)
        a.send(b"next", _EOR)
        data, _, flags, _ = b.recvmsg(10)
        following, _, _, _ = b.recvmsg(200)
        observe(
            {
                "first": len(data),
                "flags": flag_names(flags),
                "rest": "discarded"
                if following == b"next"
                else f"{len(following)} bytes of the same record",
            }
        )


@case(
    "os.seqpacket.peek_partial",
    "A partial MSG_PEEK: flags, and the message stays queued whole",
    rows=["SEQ-06"],
)
def test_peek_partial(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.send(b"x" * 50, _EOR)
        _, _, flags, _ = b.recvmsg(10, 0, socket.MSG_PEEK)
        observe({"peek_flags": flag_names(flags), "then_recv": len(b.recv(100))})


@case(
    "os.seqpacket.zero_length",
    "A zero-length message: send's count, what recv returns, and whether it differs from EOF",
    rows=["SEQ-07"],
)
def test_zero_length(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        sent = a.send(b"")
        data, _, flags, _ = b.recvmsg(10)
        a.close()
        eof, _, eof_flags, _ = b.recvmsg(10)
        observe(
            {
                "send_returns": sent,
                "recv_bytes": len(data),
                "recv_flags": flag_names(flags),
                "eof_flags": flag_names(eof_flags),
                "distinguishable_by_flags": flags != eof_flags or len(data) != len(eof),
            }
        )


@case(
    "os.seqpacket.zero_length_recv",
    "recv(0) with a message pending: consumed? MSG_TRUNC?",
    rows=["SEQ-19"],
)
def test_zero_length_recv(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.send(b"pending", _EOR)
        _, _, flags, _ = b.recvmsg(0)
        b.setblocking(False)
        observe({"flags": flag_names(flags), "then": attempt(lambda: b.recv(100))})


@case("os.seqpacket.send_to_closed_peer", "send() after the peer closed", rows=["SEQ-09"])
def test_send_to_closed_peer(observe: Observer) -> None:
    a, b = _pair()
    with a:
        b.close()
        observe(attempt(lambda: a.send(b"x", getattr(socket, "MSG_NOSIGNAL", 0))))


@case(
    "os.seqpacket.sendto_unconnected",
    "sendto() with an address on an unconnected seqpacket socket",
    rows=["SEQ-11"],
)
def test_sendto_unconnected(observe: Observer, short_tmp: str) -> None:
    require_seqpacket()
    path = os.path.join(short_tmp, "l")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as lone,
    ):
        listener.bind(path)
        listener.listen(1)
        observe(
            {
                "valid": attempt(lambda: lone.sendto(b"x", path)),
                "bogus": attempt(lambda: lone.sendto(b"x", path + "-no")),
            }
        )


@case(
    "os.seqpacket.sendto_connected",
    "sendto() with a bogus address on a connected seqpacket socket",
    rows=["SEQ-12"],
)
def test_sendto_connected(observe: Observer, short_tmp: str) -> None:
    a, b = _pair()
    with a, b:
        observe(attempt(lambda: a.sendto(b"x", os.path.join(short_tmp, "nobody"))))


@case(
    "os.seqpacket.recvfrom_source",
    "recvfrom() on an accepted seqpacket connection: the source address",
    rows=["SEQ-13"],
)
def test_recvfrom_source(observe: Observer, short_tmp: str) -> None:
    require_seqpacket()
    path = os.path.join(short_tmp, "l")
    client_path = os.path.join(short_tmp, "c")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client,
    ):
        listener.bind(path)
        listener.listen(1)
        client.bind(client_path)
        client.connect(path)
        conn, _ = listener.accept()
        with conn:
            client.send(b"x")
            _, source = conn.recvfrom(10)
            observe("client path" if source == client_path else repr(source))


@case(
    "os.seqpacket.shutdown",
    "After shutdown(SHUT_RDWR): our send, and the peer's recv",
    rows=["SEQ-17"],
)
def test_shutdown(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.shutdown(socket.SHUT_RDWR)
        b.setblocking(False)
        observe(
            {
                "send": attempt(lambda: a.send(b"x", getattr(socket, "MSG_NOSIGNAL", 0))),
                "peer_recv": _recv_result(b),
            }
        )


def _recv_result(sock: socket.socket) -> str:
    try:
        data = sock.recv(10)
    except OSError as exc:
        return errno_name(exc)
    return f"{len(data)} bytes"


@case(
    "os.seqpacket.abstract",
    "Seqpacket listen/connect/accept over an abstract name",
    rows=["SEQ-21"],
)
def test_abstract(observe: Observer) -> None:
    require_seqpacket()
    require_abstract()
    name = abstract_name("seq")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as listener,
        socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as client,
    ):
        listener.bind(name)
        listener.listen(1)
        client.connect(name)
        conn, _ = listener.accept()
        with conn:
            client.send(b"hi")
            observe(conn.recv(10) == b"hi")


@case(
    "os.seqpacket.max_message",
    "Largest seqpacket message with default buffers, and the error beyond it",
    rows=["SEQ-22"],
)
def test_max_message(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        observe(largest_message(a, b))


@case(
    "os.seqpacket.vectored",
    "sendmsg with several buffers (an empty one too) makes one packet; recvmsg_into scatters it",
    rows=["SEQ-08"],
)
def test_vectored(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.sendmsg([b"ab", b"", b"cde"])
        first, second = bytearray(2), bytearray(10)
        count, _, _, _ = b.recvmsg_into([first, second])
        observe({"bytes": count, "joined": bytes(first) + bytes(second[: count - 2]) == b"abcde"})


@case(
    "os.seqpacket.fill_nonblocking",
    "Non-blocking 1 KiB sends until EAGAIN, for SO_SNDBUF x SO_RCVBUF of 8k and 128k",
    rows=["SEQ-14"],
)
def test_fill_nonblocking(observe: Observer) -> None:
    seen = {}
    for snd in (8192, 131072):
        for rcv in (8192, 131072):
            a, b = _pair()
            with a, b:
                a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, snd)
                b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcv)
                a.setblocking(False)
                count, error = send_until_refused(lambda a=a: a.send(b"\0" * 1024))  # type: ignore[misc]
                seen[f"{snd // 1024}k_{rcv // 1024}k"] = f"{error or 'none'} after {count}"
    observe(seen)


@case(
    "os.seqpacket.half_buffer_packet",
    "One packet of half the buffer size, for buffers of 8k to 128k, read with MSG_WAITALL",
    rows=["SEQ-15"],
)
def test_half_buffer_packet(observe: Observer) -> None:
    seen = {}
    for size in (8192, 16384, 32768, 65536, 131072):
        a, b = _pair()
        with a, b:
            a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            payload = b"\1" * (size // 2)
            sent = attempt(lambda a=a, payload=payload: a.send(payload))  # type: ignore[misc]
            got = len(b.recv(size, socket.MSG_WAITALL)) if sent == "ok" else 0
            seen[f"{size // 1024}k"] = got if sent == "ok" else sent
    observe(seen)


@case(
    "os.seqpacket.next_length",
    "recv_into(1 byte, MSG_PEEK|MSG_TRUNC) gives the next packet's full length",
    rows=["SEQ-20"],
)
def test_next_length(observe: Observer) -> None:
    a, b = _pair()
    with a, b:
        a.send(b"x" * 5000)
        scratch = bytearray(1)
        length = b.recv_into(scratch, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
        observe({"reported": length, "still_queued": len(b.recv(10000))})


@case(
    "os.seqpacket.fd_round_trip",
    "The socket keeps working through dup, detach and a new socket object for its fd",
    rows=["SEQ-24"],
)
def test_fd_round_trip(observe: Observer) -> None:
    a, b = _pair()
    with b:
        again = socket.socket(fileno=a.detach())
        with again, socket.socket(fileno=os.dup(b.fileno())) as twin:
            again.send(b"through")
            observe(
                {
                    "type_kept": again.type == socket.SOCK_SEQPACKET,
                    "works": twin.recv(10) == b"through",
                }
            )
