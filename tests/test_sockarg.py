"""The free functions take any of our sockets (issue 14): socket.socket, SeqpacketConn (both
implementations), UnixDatagram, AsyncSeqpacketConn, and objects with fileno().

Real sockets throughout.  A data call on one of our types must go through the type's own
methods: on an emulated connection a raw sendmsg/recvmsg would break the framing, which the
follow-up receives here would notice.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Iterator, Tuple

import pytest

import udscompat
import udscompat.aio
from tests.conftest import SEQPACKET_IMPLEMENTATIONS, only_on, same_file
from udscompat import Message

Pair = Tuple[udscompat.SeqpacketConn, udscompat.SeqpacketConn]


@pytest.fixture(params=SEQPACKET_IMPLEMENTATIONS)
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    a, b = udscompat.seqpacket_pair(implementation=request.param)
    with a, b:
        yield a, b


class Fileno:
    """Something that is not a socket.socket but names one (as a framework's wrapper does)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def test_peer_credentials_of_every_kind(pair: Pair) -> None:
    a, b = pair
    expected = (os.getpid(), os.geteuid(), os.getegid())
    for sock in (a, b, Fileno(a.fileno())):
        got = udscompat.peer_credentials(sock)
        assert (got.pid, got.euid, got.egid) == expected
    d1, d2 = udscompat.UnixDatagram.pair()
    with d1, d2:
        try:
            got = udscompat.peer_credentials(d1)
        except OSError:
            pass  # kernels that record none for datagram pairs
        else:
            assert got.euid == os.geteuid()
    assert not a.closed and os.fstat(a.fileno())  # the borrowed descriptor stayed open


def test_fds_through_the_free_functions_keep_the_framing(pair: Pair, pipe: Tuple[int, int]) -> None:
    a, b = pair
    assert udscompat.send_fds(a, [b"with ", b"fd"], [pipe[0]]) == 7
    a.send(b"next")
    data, fds, flags, address = udscompat.recv_fds(b, 64, 1, socket.MSG_PEEK)
    try:
        assert (data, len(fds), flags, address) == (b"with fd", 1, 0, None)
    finally:
        os.close(fds[0])
    data, fds, flags, _ = udscompat.recv_fds(b, 4, 1)
    try:
        assert (data, len(fds), flags) == (b"with", 1, socket.MSG_TRUNC)
        assert same_file(fds[0], pipe[0])
    finally:
        os.close(fds[0])
    assert b.recv_message() == Message(b"next")  # the stream is still in step
    a.close()
    assert udscompat.recv_fds(b, 64, 0) == (b"", [], 0, None)  # end-of-stream


def test_flags_and_addresses_a_connection_cannot_honour_are_refused(pair: Pair) -> None:
    a, b = pair
    with pytest.raises(ValueError, match="flags: a SeqpacketConn"):
        udscompat.send_fds(a, b"x", [], socket.MSG_DONTWAIT)
    with pytest.raises(ValueError, match="address: a SeqpacketConn"):
        udscompat.send_fds(a, b"x", [], 0, "@elsewhere")
    with pytest.raises(ValueError, match=r"flags: .* but MSG_PEEK"):
        udscompat.recv_fds(b, 8, 0, socket.MSG_WAITALL)
    b.settimeout(0)
    with pytest.raises(BlockingIOError):
        b.recv_message()  # nothing went out


@only_on("Linux", "SO_PASSCRED attaches credentials to every message of every kind")
def test_ancillary_calls_on_connections(pair: Pair, pipe: Tuple[int, int]) -> None:
    """pass_credentials(conn) turns the connection's reporting on, not only the option:
    an emulated connection must also read credentials from each chunk."""
    a, b = pair
    udscompat.pass_credentials(b)
    sent = udscompat.send_ancillary(a, b"hi", [pipe[0]], udscompat.send_credentials())
    message = udscompat.recv_ancillary(b, 64, 1)
    for fd in message.fds:
        os.close(fd)
    assert (sent, message.data, len(message.fds)) == (2, b"hi", 1)
    assert message.credentials is not None and message.credentials.pid == os.getpid()
    assert udscompat.peer_security_label(b) == b.peer_security_label()


def test_datagrams_through_the_free_functions(pipe: Tuple[int, int]) -> None:
    a, b = udscompat.UnixDatagram.pair()
    with a, b:
        udscompat.send_fds(a, b"dgram", [pipe[0]])
        data, fds, flags, _ = udscompat.recv_fds(b, 64, 1)
        try:
            assert (data, len(fds), flags) == (b"dgram", 1, 0)
        finally:
            os.close(fds[0])
        udscompat.send_ancillary(a, b"anc")
        assert udscompat.recv_ancillary(b, 64).data == b"anc"
        with pytest.raises(ValueError, match="flags: a UnixDatagram"):
            udscompat.recv_fds(b, 8, 0, socket.MSG_PEEK)


def test_an_async_connection_takes_option_calls_and_names_the_coroutine_for_io() -> None:
    async def main() -> None:
        a, b = udscompat.aio.seqpacket_pair()
        try:
            assert udscompat.peer_credentials(a).euid == os.geteuid()
            with pytest.raises(TypeError, match=r"sock: send_fds\(\).*await conn.send"):
                udscompat.send_fds(a, b"x", [])
            with pytest.raises(TypeError, match=r"sock: recv_ancillary\(\).*await"):
                udscompat.recv_ancillary(b, 8)
        finally:
            a.close()
            b.close()

    asyncio.run(main())


def test_objects_with_fileno_are_borrowed_never_closed_or_changed() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        b.setblocking(False)
        udscompat.send_fds(Fileno(a.fileno()), b"raw", [a.fileno()])
        data, fds, _, _ = udscompat.recv_fds(Fileno(b.fileno()), 8, 1)
        os.close(fds[0])
        assert data == b"raw"
        assert os.get_blocking(b.fileno()) is False  # left as it was
        os.fstat(a.fileno())
        os.fstat(b.fileno())  # both still open: borrowed, detached, never closed


def test_anything_else_is_a_type_error_naming_the_parameter(pipe: Tuple[int, int]) -> None:
    with pytest.raises(TypeError, match=r"sock: expected a socket\.socket, a udscompat"):
        udscompat.peer_credentials(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"sock: expected a socket\.socket"):
        udscompat.send_fds("/tmp/sock", b"x", [])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sock: fileno\\(\\) returned str"):
        udscompat.recv_fds(Fileno("3"), 8, 0)  # type: ignore[arg-type]
    with pytest.raises(OSError, match=f"sock: descriptor {pipe[0]} is not a socket"):
        udscompat.pass_credentials(Fileno(pipe[0]))
    os.fstat(pipe[0])  # a descriptor that is no socket is not closed either
