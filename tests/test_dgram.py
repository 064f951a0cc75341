"""UnixDatagram: binding (path, abstract, autobind), fds and credentials per datagram, modes."""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import udscompat
from tests.conftest import needs_abstract, only_on, python_peer
from udscompat import UnixDatagram, UnixSocketAddr
from udscompat._ancillary import credentials_probe

needs_credentials = pytest.mark.skipif(
    not credentials_probe().available,
    reason=f"no ancillary credentials: {credentials_probe().reason}",
)


@pytest.fixture
def pair() -> Iterator[Tuple[UnixDatagram, UnixDatagram]]:
    a, b = UnixDatagram.pair()
    with a, b:
        yield a, b


@needs_credentials
def test_send_to_and_recv_from_carry_fds_credentials_and_the_sender(
    short_tmp: Path, pipe: Tuple[int, int]
) -> None:
    with (
        UnixDatagram.bind(short_tmp / "srv") as server,
        UnixDatagram.bind(short_tmp / "cli") as client,
    ):
        server.pass_credentials()
        sent = client.send_to(server.local_addr, [b"one ", b"datagram"], [pipe[0]], None)
        assert sent == 12
        message, sender = server.recv_from(64, maxfds=1)
        try:
            assert message.data == b"one datagram"
            assert sender == client.local_addr == UnixSocketAddr.from_path(short_tmp / "cli")
            assert message.credentials is not None and message.credentials.pid == os.getpid()
            os.write(pipe[1], b"?")
            assert os.read(message.fds[0], 1) == b"?"
        finally:
            for fd in message.fds:
                os.close(fd)


def test_truncation_is_reported_and_the_rest_discarded(
    pair: Tuple[UnixDatagram, UnixDatagram],
) -> None:
    a, b = pair
    a.send(b"0123456789")
    a.send(b"next")
    first = b.recv_message(4)
    assert (first.data, first.truncated) == (b"0123", True)
    second = b.recv_message(4)
    assert (second.data, second.truncated) == (b"next", False)


def test_zero_length_datagram_is_a_message(pair: Tuple[UnixDatagram, UnixDatagram]) -> None:
    a, b = pair
    assert a.send(b"") == 0
    message = b.recv_message()
    assert (message.data, message.truncated, message.fds) == (b"", False, ())


def test_excess_fds_are_closed_and_raise(
    pair: Tuple[UnixDatagram, UnixDatagram], pipe: Tuple[int, int]
) -> None:
    a, b = pair
    a.send(b"x", [pipe[0], pipe[1]])
    with pytest.raises(udscompat.ControlTruncatedError) as info:
        b.recv_message(8, maxfds=1)
    assert info.value.closed_fds == 2


def test_blocking_nonblocking_and_timeout(pair: Tuple[UnixDatagram, UnixDatagram]) -> None:
    a, b = pair
    assert b.gettimeout() is None
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv_message()
    b.settimeout(0.05)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        b.recv_message()
    assert 0.04 <= time.monotonic() - started < 2
    b.settimeout(None)
    threading.Timer(0.05, lambda: a.send(b"late")).start()
    assert b.recv_message().data == b"late"
    with pytest.raises(ValueError, match="out of range"):
        b.settimeout(-1)


@only_on("Linux", "a full datagram queue blocks there; the BSDs and macOS answer ENOBUFS")
def test_a_full_queue_blocks_or_refuses_by_mode(pair: Tuple[UnixDatagram, UnixDatagram]) -> None:
    a, _ = pair
    a.setblocking(False)
    with pytest.raises(BlockingIOError):
        for _ in range(100_000):  # bounded: Linux queues max_dgram_qlen (default 10+)
            a.send(b"x" * 1024)
    a.settimeout(0.05)
    with pytest.raises(TimeoutError):
        a.send(b"still full")


def test_stale_path_is_replaced_and_a_live_one_refused(short_tmp: Path) -> None:
    path = short_tmp / "svc"
    old = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    old.bind(str(path))
    old.close()  # a stale socket file stays behind
    with UnixDatagram.bind(path) as first:
        with pytest.raises(OSError) as info:
            UnixDatagram.bind(path)
        assert info.value.errno == errno.EADDRINUSE and str(path) in str(info.value)
        assert first.local_addr.path == str(path)
    assert not path.exists()  # removed on close: it was ours


def test_a_replaced_socket_file_is_not_removed_on_close(short_tmp: Path) -> None:
    path = short_tmp / "svc"
    dgram = UnixDatagram.bind(path, mode=0o600)
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as successor:
        successor.bind(str(path))
        dgram.close()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # the successor's file stays
    os.unlink(path)
    with UnixDatagram.bind(path, remove_on_close=False):
        pass
    assert path.exists()


def test_regular_file_at_the_path_is_never_replaced(short_tmp: Path) -> None:
    path = short_tmp / "data"
    path.write_bytes(b"precious")
    with pytest.raises(OSError) as info:
        UnixDatagram.bind(path)
    assert info.value.errno == errno.EADDRINUSE
    assert path.read_bytes() == b"precious"


@needs_abstract
def test_abstract_and_autobind() -> None:
    name = f"udsc-dgram-{os.getpid()}".encode()
    with (
        UnixDatagram.bind(UnixSocketAddr.from_abstract(name)) as named,
        UnixDatagram.bind(UnixSocketAddr.unnamed()) as auto,
    ):
        assert named.local_addr == UnixSocketAddr.from_abstract(name)
        assert auto.local_addr.kind == "abstract" and len(auto.local_addr.name or b"") == 5
        auto.send_to(named.local_addr, b"reply to me")
        message, sender = named.recv_from()
        assert (message.data, sender) == (b"reply to me", auto.local_addr)
        named.send_to(sender, b"replied")
        assert auto.recv_message().data == b"replied"


def test_unbound_sender_and_connect(short_tmp: Path) -> None:
    with UnixDatagram.bind(short_tmp / "s") as server, UnixDatagram.unbound() as client:
        client.connect(short_tmp / "s")
        assert client.peer_addr == server.local_addr
        client.send(b"connected")
        assert server.recv_from()[0].data == b"connected"
        with pytest.raises(OSError) as info:
            client.connect(short_tmp / "nobody-here")
        assert "nobody-here" in str(info.value)


def test_send_to_nobody_is_an_error_naming_no_guess(short_tmp: Path) -> None:
    with UnixDatagram.unbound() as client, pytest.raises(OSError) as info:
        client.send_to(short_tmp / "absent", b"x")
    assert info.value.errno in (errno.ENOENT, errno.ECONNREFUSED)


@needs_credentials
def test_another_process_sends_a_datagram_with_a_descriptor(short_tmp: Path) -> None:
    path = str(short_tmp / "srv")
    code = f"""
import os, udscompat
r, w = os.pipe()
os.write(w, b"from the child")
with udscompat.UnixDatagram.unbound() as d:
    d.send_to({path!r}, b"hello", [r], udscompat.send_credentials())
print(os.getpid())
"""
    with UnixDatagram.bind(path) as server:
        server.pass_credentials()
        child = python_peer(code)
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        message, _ = server.recv_from(16, 1)
    try:
        assert message.data == b"hello"
        assert message.credentials is not None and message.credentials.pid == int(out)
        assert os.read(message.fds[0], 14) == b"from the child"
    finally:
        for fd in message.fds:
            os.close(fd)


@only_on("Linux", "datagram socketpairs have peer credentials there")
def test_peer_credentials_of_a_pair(pair: Tuple[UnixDatagram, UnixDatagram]) -> None:
    a, _ = pair
    creds = a.peer_credentials()
    assert (creds.pid, creds.euid) == (os.getpid(), os.geteuid())


def test_close_is_idempotent_and_reported() -> None:
    d = UnixDatagram.unbound()
    assert "UnixDatagram fd=" in repr(d)
    d.close()
    d.close()
    assert d.closed and repr(d) == "<UnixDatagram closed>"
    with pytest.raises(OSError):
        d.send_to("/nonexistent", b"x")


def test_wrapping_refuses_other_sockets() -> None:
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream,
        pytest.raises(ValueError, match="SOCK_DGRAM"),
    ):
        UnixDatagram(stream)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as inet,
        pytest.raises(ValueError, match="AF_UNIX"),
    ):
        UnixDatagram(inet)


def test_close_wakes_a_thread_blocked_in_a_receive() -> None:
    """close() from another thread: the receiving thread raises EBADF within about a
    second instead of blocking forever (its poll may even be left on the closed socket's
    number, which the next descriptor opened takes: here a pipe that never becomes ready)."""
    a, b = UnixDatagram.pair()
    errors: List[OSError] = []

    def receive() -> None:
        try:
            b.recv_message()
        except OSError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=receive)
    with a:
        waiter.start()
        time.sleep(0.2)  # the thread is in its wait
        b.close()
        r, w = os.pipe()  # may take b's number: a poll left on it never wakes
        try:
            waiter.join(3)
            alive = waiter.is_alive()
        finally:
            os.write(w, b"x")
            os.close(r)
            os.close(w)
        waiter.join(5)
        assert not alive, "close() left the receiving thread blocked"
        assert errors and errors[0].errno == errno.EBADF, errors
