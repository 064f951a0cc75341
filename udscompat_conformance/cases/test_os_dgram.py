"""OS cases: AF_UNIX SOCK_DGRAM."""

from __future__ import annotations

import itertools
import os
import socket

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    abstract_name,
    attempt,
    flag_names,
    largest_message,
    require_abstract,
    send_until_refused,
    timeval,
)

case = pytest.mark.case


def _dgram() -> socket.socket:
    return socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)


@case(
    "os.dgram.addresses",
    "recvfrom() of a bound sender gives its path; of an unbound sender, what?",
    rows=["DG-02"],
)
def test_addresses(observe: Observer, short_tmp: str) -> None:
    receiver_path = os.path.join(short_tmp, "r")
    sender_path = os.path.join(short_tmp, "s")
    with _dgram() as receiver, _dgram() as bound, _dgram() as unbound:
        receiver.bind(receiver_path)
        bound.bind(sender_path)
        bound.sendto(b"a", receiver_path)
        unbound.sendto(b"b", receiver_path)
        _, first = receiver.recvfrom(10)
        _, second = receiver.recvfrom(10)
        observe({"bound_sender_is_path": first == sender_path, "unbound_sender": repr(second)})


@case("os.dgram.listen_accept", "listen() and accept() on a datagram socket", rows=["DG-04"])
def test_listen_accept(observe: Observer, short_tmp: str) -> None:
    with _dgram() as s:
        s.bind(os.path.join(short_tmp, "d"))
        observe({"listen": attempt(lambda: s.listen(1)), "accept": attempt(s.accept)})


@case(
    "os.dgram.self_connect",
    "A bound datagram socket connected to itself sends to itself",
    rows=["DG-05", "DG-06"],
)
def test_self_connect(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "self")
    with _dgram() as s:
        s.bind(path)
        s.connect(path)
        s.send(b"me")
        observe(
            {"received": s.recv(10) == b"me", "connect_twice": attempt(lambda: s.connect(path))}
        )


@case(
    "os.dgram.zero_length", "A zero-length datagram is delivered as one 0-byte read", rows=["DG-07"]
)
def test_zero_length(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"")
        a.send(b"after")
        observe([len(b.recv(10)), len(b.recv(10))])


@case(
    "os.dgram.max_size",
    "Largest datagram with default buffers, and the error beyond it",
    rows=["DG-08"],
)
def test_max_size(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        observe(largest_message(a, b))


@case(
    "os.dgram.truncation",
    "A datagram read into a short buffer: flags (also with MSG_PEEK), and the rest",
    rows=["DG-09"],
)
def test_truncation(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"x" * 100)
        a.send(b"next")
        _, _, peek_flags, _ = b.recvmsg(10, 0, socket.MSG_PEEK)
        data, _, flags, _ = b.recvmsg(10)
        observe(
            {
                "peek_flags": flag_names(peek_flags),
                "flags": flag_names(flags),
                "bytes": len(data),
                "rest_discarded": b.recv(200) == b"next",
            }
        )


@case(
    "os.dgram.receiver_full",
    "The receiver's queue is full: a non-blocking send, then a blocking one (SO_SNDTIMEO 0.3 s)",
    rows=["DG-12"],
)
def test_receiver_full(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setblocking(False)
        _, refused = send_until_refused(lambda: a.send(b"\0" * 64))
        a.setblocking(True)
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(0.3))
        blocking = attempt(lambda: a.send(b"\0" * 64))
        observe({"nonblocking": refused or "never full", "blocking": blocking})


@case(
    "os.dgram.peer_closed",
    "The connected peer closed: our send, and our non-blocking recv",
    rows=["DG-13"],
)
def test_peer_closed(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a:
        b.close()
        a.setblocking(False)
        observe({"send": attempt(lambda: a.send(b"x")), "recv": attempt(lambda: a.recv(1))})


@case(
    "os.dgram.shutdown_rd_unconnected",
    "shutdown(SHUT_RD) on an unconnected datagram socket",
    rows=["DG-16"],
)
def test_shutdown_rd_unconnected(observe: Observer, short_tmp: str) -> None:
    with _dgram() as s:
        s.bind(os.path.join(short_tmp, "d"))
        observe(attempt(lambda: s.shutdown(socket.SHUT_RD)))


@case(
    "os.dgram.shut_wr",
    "shutdown(SHUT_WR) on a datagram pair: our send; the peer reads queued data, then?",
    rows=["DG-17"],
)
def test_shut_wr(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"queued")
        a.shutdown(socket.SHUT_WR)
        b.setblocking(False)
        observe(
            {
                "send": attempt(lambda: a.send(b"x")),
                "queued_read": b.recv(10) == b"queued",
                "then": attempt(lambda: b.recv(10)),
            }
        )


@case(
    "os.dgram.abstract_connect",
    "A datagram socket connects to an abstract name and sends",
    rows=["DG-21"],
)
def test_abstract_connect(observe: Observer) -> None:
    require_abstract()
    name = abstract_name("dg")
    with _dgram() as receiver, _dgram() as sender:
        receiver.bind(name)
        sender.connect(name)
        sender.send(b"hi")
        observe(receiver.recv(10) == b"hi")


@case("os.dgram.boundaries", "A datagram socketpair keeps message boundaries", rows=["DG-01"])
def test_boundaries(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"one")
        a.send(b"two")
        observe([b.recv(100).decode(), b.recv(100).decode()])


@case(
    "os.dgram.many_clients",
    "20 clients connect() to one bound receiver; how many datagrams queue before senders block",
    rows=["DG-03"],
)
def test_many_clients(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "r")
    with _dgram() as receiver:
        receiver.bind(path)
        clients = [_dgram() for _ in range(20)]
        try:
            got = []
            for i, client in enumerate(clients):
                client.connect(path)
                client.send(b"%d" % i)
                got.append(int(receiver.recv(10)))
            # Now fill the receiver from the connected clients, in turn, without reading.
            for client in clients:
                client.setblocking(False)
            turns = itertools.cycle(clients)
            queued, error = send_until_refused(lambda: next(turns).send(b"q"), len(clients) * 3)
        finally:
            for client in clients:
                client.close()
        observe(
            {
                "all_delivered": got == list(range(20)),
                "queue_limit": f"{error or 'none'} after {queued}",
            }
        )


@case(
    "os.dgram.dontwait",
    "An empty queue: recv with MSG_DONTWAIT, and on a non-blocking socket",
    rows=["DG-11"],
)
def test_dontwait(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        flag = attempt(lambda: b.recv(1, socket.MSG_DONTWAIT))
        b.setblocking(False)
        observe({"MSG_DONTWAIT": flag, "O_NONBLOCK": attempt(lambda: b.recv(1))})


@case(
    "os.dgram.fionread",
    "FIONREAD on a datagram socket with SO_TIMESTAMP on: data bytes only, or more?",
    rows=["DG-15"],
)
def test_fionread(observe: Observer) -> None:
    import array
    import fcntl
    import termios

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        timestamp = getattr(socket, "SO_TIMESTAMP", None)
        if timestamp is not None:
            b.setsockopt(socket.SOL_SOCKET, timestamp, 1)
        a.send(b"x" * 100)
        a.send(b"y" * 50)
        value = array.array("i", [0])
        fcntl.ioctl(b.fileno(), termios.FIONREAD, value, True)
        observe(value[0], note="100 is the first datagram, 150 all of them")


@case(
    "os.dgram.truncated_length",
    "recv_into(MSG_TRUNC) with a short buffer returns the datagram's real length",
    rows=["DG-10"],
)
def test_truncated_length(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"x" * 300)
        a.send(b"y" * 300)
        scratch = bytearray(10)
        peeked = b.recv_into(scratch, 10, socket.MSG_PEEK | socket.MSG_TRUNC)
        read = b.recv_into(scratch, 10, socket.MSG_TRUNC)
        observe({"peek": peeked, "read": read, "next_intact": len(b.recv(1000)) == 300})


@case(
    "os.dgram.peek_from",
    "sendto with several buffers; recvmsg with MSG_PEEK and the source address, then the read",
    rows=["DG-18"],
)
def test_peek_from(observe: Observer, short_tmp: str) -> None:
    receiver_path = os.path.join(short_tmp, "r")
    sender_path = os.path.join(short_tmp, "s")
    with _dgram() as receiver, _dgram() as sender:
        receiver.bind(receiver_path)
        sender.bind(sender_path)
        sender.sendmsg([b"ab", b"cd"], [], 0, receiver_path)
        peek, _, _, source = receiver.recvmsg(10, 0, socket.MSG_PEEK)
        data, _, _, again = receiver.recvmsg(10)
        observe(
            {
                "peek": peek.decode(),
                "read": data.decode(),
                "source_is_sender": source == sender_path == again,
            }
        )


@case(
    "os.dgram.abstract_sendto_loop",
    "4096 unconnected sendto/recv cycles to an abstract name exhaust nothing",
    rows=["DG-19"],
)
def test_abstract_sendto_loop(observe: Observer) -> None:
    require_abstract()
    name = abstract_name("loop")
    with _dgram() as receiver, _dgram() as sender:
        receiver.bind(name)
        for i in range(4096):
            sender.sendto(b"%d" % i, name)
            if receiver.recv(10) != b"%d" % i:
                observe(f"wrong datagram at {i}")
                return
        observe("ok")


@case(
    "os.dgram.from_child",
    "A forked child sends a datagram with an fd to its parent",
    rows=["DG-20"],
)
def test_from_child(observe: Observer) -> None:
    import array

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    r, w = os.pipe()
    with a, b:
        pid = os.fork()
        if pid == 0:
            try:
                os.write(w, b"child")
                a.sendmsg([b"hi"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
        data, ancdata, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4))
        fds = [fd for _, _, p in ancdata for fd in array.array("i", p[: len(p) - len(p) % 4])]
        try:
            observe(
                {"data": data.decode(), "fd_reads": os.read(fds[0], 10).decode() if fds else None}
            )
        finally:
            for fd in [*fds, r, w]:
                os.close(fd)


@case(
    "os.dgram.flood_fairness",
    "A connected sender floods a receiver: can another send? Does a closed sender's data stay?",
    rows=["DG-14"],
)
def test_flood_fairness(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "r")
    with _dgram() as receiver, _dgram() as flooder, _dgram() as other:
        receiver.bind(path)
        flooder.connect(path)
        other.connect(path)
        flooder.setblocking(False)
        other.setblocking(False)
        flooded, error = send_until_refused(lambda: flooder.send(b"f"))
        other_result = attempt(lambda: other.send(b"o"))
        flooder.close()  # its datagrams are still in the receiver's queue
        receiver.setblocking(False)
        drained = 0
        while True:
            try:
                receiver.recv(10)
            except BlockingIOError:
                break
            drained += 1
        observe(
            {
                "flooder": f"{error or 'none'} after {flooded}",
                "other_sender": other_result,
                "queued_after_flooder_closed": drained,
            }
        )
