"""The seqpacket contract, run in full for both implementations (the emulation forced)."""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

import udscompat
from tests.conftest import (
    SEQPACKET_IMPLEMENTATIONS,
    needs_abstract,
    needs_kernel_seqpacket,
    only_on,
)
from udscompat import (
    ControlTruncatedError,
    FramingError,
    SeqpacketConn,
    SeqpacketListener,
    UnixSocketAddr,
    _framing,
    _probes,
    _seqpacket,
)
from udscompat._fdpass import REGISTRY
from udscompat._framing import HEADER, FrameEncoder
from udscompat._platform import backend
from udscompat._seqpacket import _EmulatedConn, resolve_implementation

IMPLS = SEQPACKET_IMPLEMENTATIONS
Pair = Tuple[SeqpacketConn, SeqpacketConn]


@pytest.fixture(params=IMPLS)
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def pair(impl: str) -> Iterator[Pair]:
    a, b = udscompat.seqpacket_pair(implementation=impl)
    with a, b:
        yield a, b


def _close(fds: List[int]) -> None:
    for fd in fds:
        os.close(fd)


def test_implementation_is_what_was_asked(pair: Pair, impl: str) -> None:
    assert pair[0].implementation == pair[1].implementation == impl


def test_one_send_is_one_message_with_its_own_fds(pair: Pair, pipe: Tuple[int, int]) -> None:
    a, b = pair
    assert a.send(b"first") == 5
    assert a.send(b"second", [pipe[0]]) == 6
    assert a.send(b"third", [pipe[1], pipe[0]]) == 5
    m1, m2, m3 = (b.recv_message(maxfds=2) for _ in range(3))
    assert m1 is not None and m2 is not None and m3 is not None
    assert (m1.data, m1.fds, m1.truncated) == (b"first", (), False)
    assert m2.data == b"second" and len(m2.fds) == 1
    assert m3.data == b"third" and len(m3.fds) == 2
    assert all(not os.get_inheritable(fd) for fd in m2.fds + m3.fds)
    os.write(m3.fds[0], b"!")
    assert os.read(m2.fds[0], 1) == b"!"
    _close(m2.fds + m3.fds)


def test_long_message_is_cut_and_marked(pair: Pair) -> None:
    a, b = pair
    a.send(b"0123456789")
    a.send(b"next")
    m = b.recv_message(4)
    assert m is not None and (m.data, m.truncated) == (b"0123", True)
    m = b.recv_message(4)
    assert m is not None and (m.data, m.truncated) == (b"next", False)


def test_zero_length_messages_are_not_end_of_stream(pair: Pair, pipe: Tuple[int, int]) -> None:
    a, b = pair
    a.send(b"")
    a.send(b"", [pipe[0]])
    a.send(b"")
    a.close()
    m = b.recv_message(maxfds=1)
    assert m is not None and m.data == b"" and m.fds == ()
    m = b.recv_message(maxfds=1)
    assert m is not None and m.data == b"" and len(m.fds) == 1
    _close(m.fds)
    m = b.recv_message()
    assert m is not None and m.data == b""
    assert b.recv_message() is None
    assert b.recv_message() is None
    assert b.recv(10) == b""


def test_queued_messages_all_arrive_before_end_of_stream(pair: Pair) -> None:
    a, b = pair
    for i in range(50):
        a.send(b"m%d" % i)
    a.close()
    got = []
    while (m := b.recv_message()) is not None:
        got.append(m.data)
    assert got == [b"m%d" % i for i in range(50)]


def test_non_blocking_and_timeout(pair: Pair) -> None:
    a, b = pair
    b.setblocking(False)
    assert b.gettimeout() == 0.0
    with pytest.raises(BlockingIOError):
        b.recv_message()
    a.send(b"now")
    deadline = time.monotonic() + 5
    while True:
        try:
            m = b.recv_message()
            break
        except BlockingIOError:
            assert time.monotonic() < deadline
            time.sleep(0.001)
    assert m is not None and m.data == b"now"
    b.settimeout(0.05)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        b.recv_message()
    assert time.monotonic() - start >= 0.04
    threading.Timer(0.05, a.send, (b"late",)).start()
    b.settimeout(5)
    m = b.recv_message()
    assert m is not None and m.data == b"late"
    with pytest.raises(ValueError, match="out of range"):
        b.settimeout(-1)


def test_send_blocks_then_times_out_when_peer_does_not_read(pair: Pair) -> None:
    a, b = pair
    a.settimeout(0.05)
    payload = b"x" * 4096
    sent = 0
    with pytest.raises(TimeoutError):
        while True:
            a.send(payload)
            sent += 1
            assert sent < 100000
    # Every message that send() accepted arrives whole.
    b.setblocking(False)
    received = 0
    while True:
        try:
            m = b.recv_message(8192)
        except BlockingIOError:
            break
        assert m is not None and m.data == payload
        received += 1
    if isinstance(a, _EmulatedConn):
        a.setblocking(True)
        a.send(b"flushes any committed rest first")
        b.setblocking(True)
        while (m := b.recv_message(8192)) is not None and m.data == payload:
            received += 1
        assert m is not None and m.data == b"flushes any committed rest first"
    assert received >= sent


def test_fd_limits(pair: Pair, pipe: Tuple[int, int]) -> None:
    a, b = pair
    too_many = (backend.MAX_FDS_PER_MESSAGE or _framing.DEFAULT_MAX_FDS) + 1
    with pytest.raises(ValueError, match=f"{too_many} descriptors"):
        a.send(b"x", [pipe[0]] * too_many)
    a.send(b"three", [pipe[0]] * 3)
    with pytest.raises(ControlTruncatedError) as info:
        b.recv_message(maxfds=2)
    assert info.value.data == b"three" and info.value.closed_fds == 3
    a.send(b"after")
    m = b.recv_message()
    assert m is not None and m.data == b"after"
    a.send(b"fd", [pipe[0]])
    with pytest.raises(ControlTruncatedError):
        b.recv(10)


def test_concurrent_senders_never_interleave(pair: Pair) -> None:
    a, b = pair
    senders, per_sender = 4, 200
    sizes = [1, 100, 5000, 60000]

    def send_all(sender: int) -> None:
        for seq in range(per_sender):
            size = sizes[(seq + sender) % len(sizes)]
            tag = b"%d:%d:" % (sender, seq)
            a.send(tag + bytes([sender]) * (size - len(tag) if size > len(tag) else 0))

    threads = [threading.Thread(target=send_all, args=(s,)) for s in range(senders)]
    for t in threads:
        t.start()
    last = [-1] * senders
    for _ in range(senders * per_sender):
        m = b.recv_message(65536)
        assert m is not None and not m.truncated
        sender_s, seq_s, body = m.data.split(b":", 2)
        sender, seq = int(sender_s), int(seq_s)
        assert seq == last[sender] + 1, "messages of one sender out of order"
        last[sender] = seq
        assert body == bytes([sender]) * len(body)
    for t in threads:
        t.join()
    assert last == [per_sender - 1] * senders


def test_listener_path_and_peer_credentials(impl: str, short_tmp: Path) -> None:
    path = short_tmp / "l.sock"
    with udscompat.SeqpacketListener(path, implementation=impl) as listener:
        assert listener.local_addr == UnixSocketAddr.from_path(path)
        with SeqpacketConn.connect(path, implementation=impl) as client:
            conn, peer = listener.accept()
            with conn:
                assert peer == UnixSocketAddr.unnamed()
                assert client.peer_addr == UnixSocketAddr.from_path(path)
                assert client.local_addr == UnixSocketAddr.unnamed()
                creds = conn.peer_credentials()
                assert (creds.pid, creds.euid) == (os.getpid(), os.geteuid())
                client.send(b"hi")
                m = conn.recv_message()
                assert m is not None and m.data == b"hi"
                client.shutdown(socket.SHUT_WR)
                assert conn.recv_message() is None
    assert not path.exists()  # removed on close


@needs_abstract
def test_listener_abstract_and_accept_timeout(impl: str) -> None:
    addr = UnixSocketAddr.from_abstract(f"udsc-seq-{os.getpid()}-{impl}")
    with udscompat.SeqpacketListener(addr, implementation=impl) as listener:
        listener.settimeout(0.02)
        with pytest.raises(TimeoutError):
            listener.accept()
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):
            listener.accept()
        with SeqpacketConn.connect(addr, implementation=impl) as client:
            listener.settimeout(5)
            conn, _ = listener.accept()
            with conn:
                conn.send(b"abstract")
                m = client.recv_message()
                assert m is not None and m.data == b"abstract"


def test_connect_errors_name_the_address(impl: str, short_tmp: Path) -> None:
    with pytest.raises(OSError, match=r"cannot connect to .*nothing"):
        SeqpacketConn.connect(short_tmp / "nothing", implementation=impl)


@needs_kernel_seqpacket
def test_mismatched_implementations_are_refused(short_tmp: Path) -> None:
    with udscompat.SeqpacketListener(short_tmp / "n", implementation="native"):
        with pytest.raises(OSError) as info:
            SeqpacketConn.connect(short_tmp / "n", implementation="emulated")
        assert info.value.errno == errno.EPROTOTYPE


def test_environment_variable_chooses_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UDSCOMPAT_SEQPACKET", "emulated")
    assert resolve_implementation(None) == "emulated"
    a, b = udscompat.seqpacket_pair()
    with a, b:
        assert a.implementation == "emulated"
    monkeypatch.setenv("UDSCOMPAT_SEQPACKET", "auto")
    expected = "native" if _probes.seqpacket().conformant else "emulated"
    assert resolve_implementation(None) == expected  # what this kernel's probe allows
    assert resolve_implementation("emulated") == "emulated"
    monkeypatch.setenv("UDSCOMPAT_SEQPACKET", "fast")
    with pytest.raises(ValueError, match="UDSCOMPAT_SEQPACKET='fast'"):
        resolve_implementation(None)
    with pytest.raises(ValueError, match="implementation='x'"):
        resolve_implementation("x")


# -- the emulation against a raw peer that breaks the framing ---------------------------


@pytest.fixture
def raw_and_emulated() -> Iterator[Tuple[socket.socket, SeqpacketConn]]:
    raw, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = _EmulatedConn(other)
    with raw, conn:
        yield raw, conn


@pytest.mark.parametrize(
    ("wire", "match"),
    [
        (HEADER.pack(0xFFFFFFF0, 0, 0, 0), "declares 4294967280 bytes"),
        (FrameEncoder().encode(b"0123456789")[:12], "got 4 of 10 payload bytes"),
        (HEADER.pack(1, 3, 0, 0) + b"x", "declares 3 descriptors but 0 came"),
    ],
)
def test_framing_violations_close_the_connection(
    raw_and_emulated: Tuple[socket.socket, SeqpacketConn], wire: bytes, match: str
) -> None:
    raw, conn = raw_and_emulated
    raw.sendall(wire)
    raw.shutdown(socket.SHUT_WR)
    with pytest.raises(FramingError, match=match) as info:
        conn.recv_message()
    assert info.value.errno is not None
    assert conn.closed
    with pytest.raises(FramingError, match="earlier error"):
        conn.recv_message()
    with pytest.raises(FramingError, match="earlier error"):
        conn.send(b"after the error")


def test_framing_violation_in_a_chunk_with_fds_closes_them(
    raw_and_emulated: Tuple[socket.socket, SeqpacketConn], pipe: Tuple[int, int]
) -> None:
    raw, conn = raw_and_emulated
    # One descriptor rides with a frame that declares three: refused as the chunk is decoded.
    udscompat.send_fds(raw, HEADER.pack(1, 3, 0, 0) + b"x", [pipe[0]])
    os.close(pipe[0])
    with pytest.raises(FramingError, match="declares 3 descriptors but 1 came"):
        conn.recv_message(maxfds=3)
    assert conn.closed
    # The received duplicate was closed: the pipe's read side is gone, so writing fails.
    with pytest.raises(BrokenPipeError):
        os.write(pipe[1], b"x")


def test_fds_where_no_frame_declares_them(
    raw_and_emulated: Tuple[socket.socket, SeqpacketConn], pipe: Tuple[int, int]
) -> None:
    raw, conn = raw_and_emulated
    frame = FrameEncoder().encode(b"payload")
    raw.sendall(frame[:9])
    time.sleep(0.01)
    udscompat.send_fds(raw, frame[9:], [pipe[0]])  # mid-payload: no frame starts there
    os.close(pipe[0])
    # Refused as the chunk arrives, not when the frame ends: a peer cannot make us hold them.
    with pytest.raises(FramingError, match="start no frame"):
        conn.recv_message()
    with pytest.raises(BrokenPipeError):
        os.write(pipe[1], b"x")  # the received duplicate was closed


def test_partial_frames_are_kept_in_non_blocking_mode(
    raw_and_emulated: Tuple[socket.socket, SeqpacketConn],
) -> None:
    raw, conn = raw_and_emulated
    conn.setblocking(False)
    frame = FrameEncoder().encode(b"slowly")
    for i in range(len(frame) - 1):
        raw.send(frame[i : i + 1])
        with pytest.raises(BlockingIOError):
            conn.recv_message()
    raw.send(frame[-1:])
    m = conn.recv_message()
    assert m is not None and m.data == b"slowly"


def test_acknowledgement_releases_held_fds(hold_env: pytest.MonkeyPatch) -> None:
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    pipe = os.pipe()
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        a.send(b"fd", [pipe[0]])
        os.close(pipe[0])  # the sender lets go at once; the shim's duplicate keeps it alive
        assert REGISTRY.held(a._sock) == 1
        m = b.recv_message(maxfds=1)
        assert m is not None and len(m.fds) == 1
        os.write(pipe[1], b"k")
        assert os.read(m.fds[0], 1) == b"k"
        _close(m.fds)
        b.send(b"reply")  # carries nothing but lets the ACK go out first
        r = a.recv_message()
        assert r is not None and r.data == b"reply"
        assert REGISTRY.held(a._sock) == 0
    os.close(pipe[1])


def test_acknowledgement_owed_while_sending_goes_out_with_the_next_send(
    hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        a.send(b"fd", [pipe[0]])
        assert REGISTRY.held(a._sock) == 1
        # Another sender holds b's send side as the message arrives (here: this thread), so
        # the receive cannot acknowledge at once; the acknowledgement is owed, not lost.
        b._send_lock.acquire()
        try:
            m = b.recv_message(maxfds=1)
        finally:
            b._send_lock.release()
        assert m is not None and len(m.fds) == 1
        _close(m.fds)
        assert b._decoder.ack_requests - b._acks_sent == 1  # owed, a count
        b.send(b"reply")  # the owed ACK goes out first
        r = a.recv_message()
        assert r is not None and r.data == b"reply"
        assert REGISTRY.held(a._sock) == 0


def test_send_after_a_partly_sent_frame_finishes_it_first() -> None:
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        a.setblocking(False)
        big = bytes(range(256)) * 2048  # 512 KiB: more than the socket buffers hold
        assert a.send(big) == len(big)  # accepted whole; the rest waits in the connection
        with pytest.raises(BlockingIOError, match="still being sent"):
            a.flush()
        with pytest.raises(BlockingIOError, match="still being sent"):
            a.send(b"next")  # nothing of it was sent: the peer has not read
        received: List[bytes] = []
        reader = threading.Thread(
            target=lambda: received.extend(
                m.data for m in iter(lambda: b.recv_message(len(big)), None) if m
            )
        )
        b.settimeout(10)
        reader.start()
        a.settimeout(10)
        a.send(b"next")  # finishes the big frame, then sends this one
        a.close()
        reader.join(10)
        assert not reader.is_alive()
        assert received == [big, b"next"]


class _EmsgsizeSocket(socket.socket):
    """Stand-in for OpenBSD/DragonFly, which cannot run here: recvmsg fails with EMSGSIZE
    when the control data does not fit (os-facts §1).  The socket itself is real."""

    def recvmsg(self, *args: object) -> Tuple[bytes, list, int, object]:  # type: ignore[override]
        raise OSError(errno.EMSGSIZE, "Message too long")


@pytest.mark.parametrize("implementation", SEQPACKET_IMPLEMENTATIONS)
def test_emsgsize_from_recvmsg_is_control_truncation(implementation: str) -> None:
    kind = backend.SOCK_SEQPACKET if implementation == "native" else socket.SOCK_STREAM
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a:
        stand_in = _EmsgsizeSocket(socket.AF_UNIX, kind, fileno=b.detach())
        conn = _seqpacket._wrap(stand_in, implementation)
        with conn, pytest.raises(ControlTruncatedError) as info:
            conn.recv_message(maxfds=1)
        assert info.value.errno == errno.EMSGSIZE


# -- public seams and input checks ---------------------------------------------------------


def test_pending_says_a_decoded_message_waits_while_the_socket_is_empty(
    raw_and_emulated: Tuple[socket.socket, SeqpacketConn],
) -> None:
    """select() on fileno() would sleep here; pending() tells the caller to receive first."""
    import select

    raw, conn = raw_and_emulated
    assert not conn.pending()
    raw.sendall(FrameEncoder().encode(b"one") + FrameEncoder().encode(b"two"))
    m = conn.recv_message()
    assert m is not None and m.data == b"one"
    assert select.select([conn.fileno()], [], [], 0.05)[0] == []  # the socket is empty ...
    assert conn.pending()  # ... but a message waits
    m = conn.recv_message()
    assert m is not None and m.data == b"two"
    assert not conn.pending()
    raw.sendall(FrameEncoder().encode(b"three")[:5])  # a partial frame is not a message
    time.sleep(0.01)
    conn.setblocking(False)
    with pytest.raises(BlockingIOError):
        conn.recv_message()
    assert not conn.pending()


def test_from_socket_takes_over_a_connected_socket(pipe: Tuple[int, int]) -> None:
    s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    t1, t2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with SeqpacketConn.from_socket(s1) as a, SeqpacketConn.from_socket(s2) as b:
        assert (a.implementation, b.implementation) == ("native", "native")
        a.send(b"n", [pipe[0]])
        m = b.recv_message(maxfds=1)
        assert m is not None and len(m.fds) == 1
        _close(m.fds)
    with SeqpacketConn.from_socket(t1) as a, SeqpacketConn.from_socket(t2) as b:
        assert (a.implementation, b.implementation) == ("emulated", "emulated")
        a.send(b"e")
        m = b.recv_message()
        assert m is not None and m.data == b"e"


def test_from_socket_refuses_what_it_cannot_wrap_naming_it() -> None:
    with (
        socket.socket(socket.AF_INET, socket.SOCK_STREAM) as inet,
        pytest.raises(ValueError, match="AF_UNIX socket, not family AF_INET"),
    ):
        SeqpacketConn.from_socket(inet)
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram,
        pytest.raises(ValueError, match="not type SOCK_DGRAM"),
    ):
        SeqpacketConn.from_socket(dgram)
    with pytest.raises(TypeError, match=r"sock must be a socket\.socket, not int"):
        SeqpacketConn.from_socket(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("real", "claimed"),
    [
        ((socket.AF_UNIX, socket.SOCK_STREAM), (socket.AF_UNIX, "seqpacket")),
        ((socket.AF_UNIX, "seqpacket"), (socket.AF_UNIX, socket.SOCK_STREAM)),
        ((socket.AF_INET, socket.SOCK_STREAM), (socket.AF_UNIX, socket.SOCK_STREAM)),
    ],
    ids=["stream-as-seqpacket", "seqpacket-as-stream", "inet-as-unix"],
)
def test_from_socket_believes_the_kernel_not_the_socket_object(real: Any, claimed: Any) -> None:
    """socket.socket(family, type, fileno=fd) is believed by CPython: a stream taken for a
    seqpacket socket would be a native connection without message boundaries (a peer's
    two messages read as one), a seqpacket socket would get the emulation's framing."""
    family, kind = real[0], backend.SOCK_SEQPACKET if real[1] == "seqpacket" else real[1]
    if kind == backend.SOCK_SEQPACKET and not _probes.seqpacket().available:
        pytest.skip("no native SOCK_SEQPACKET here")
    if family == socket.AF_INET and not hasattr(socket, "SO_DOMAIN"):
        pytest.skip("the kernel's family cannot be asked here (no SO_DOMAIN)")
    original = socket.socket(family, kind)
    claimed_kind = backend.SOCK_SEQPACKET if claimed[1] == "seqpacket" else claimed[1]
    with socket.socket(claimed[0], claimed_kind, fileno=original.detach()) as liar:
        with pytest.raises(ValueError, match="but the kernel's socket is family"):
            SeqpacketConn.from_socket(liar)
        assert liar.fileno() >= 0  # refused, so still the caller's


def test_timeouts_are_checked_as_the_standard_library_checks_them(pair: Pair) -> None:
    a, _ = pair
    with pytest.raises(ValueError, match="NaN"):
        a.settimeout(float("nan"))
    with pytest.raises(OverflowError):
        a.settimeout(float("inf"))
    with pytest.raises(ValueError, match="out of range"):
        a.settimeout(-0.5)
    with pytest.raises(TypeError, match="timeout must be a number or None, not str"):
        a.settimeout("1")  # type: ignore[arg-type]
    assert a.gettimeout() is None  # unchanged by the refusals
    a.settimeout(10**9)  # long, but within what the stdlib takes: one poll of ~24 days at most
    assert a.gettimeout() == 1e9


def test_sizes_and_descriptors_are_checked_naming_the_parameter(
    pair: Pair, pipe: Tuple[int, int]
) -> None:
    a, b = pair
    with pytest.raises(TypeError, match="bufsize must be an int, not str"):
        b.recv_message("10")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="maxfds must be an int, not float"):
        b.recv_message(10, 1.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="True is not a file descriptor"):
        a.send(b"x", [True])
    with pytest.raises(ValueError, match="invalid file descriptor 2147483648"):
        a.send(b"x", [2**31])
    a.send(b"gen", (fd for fd in [pipe[0], pipe[1]]))  # a generator, read once
    m = b.recv_message(maxfds=2)
    assert m is not None and m.data == b"gen" and len(m.fds) == 2
    _close(m.fds)


def test_send_returns_bytes_not_items(pair: Pair) -> None:
    import array

    a, b = pair
    ints = array.array("i", [1, 2, 3])
    assert a.send(ints) == 12
    assert a.send(ints, [0]) == 12
    for _ in range(2):
        m = b.recv_message(maxfds=1)
        assert m is not None and m.data == ints.tobytes()
        _close(m.fds)


def test_a_huge_bufsize_is_not_allocated() -> None:
    a, b = udscompat.seqpacket_pair(implementation="native")
    with a, b:
        b.settimeout(5)
        a.send(b"small")
        a.send(b"")
        a.send(b"x" * 100000)
        for expected in (b"small", b"", b"x" * 100000):
            m = b.recv_message(2**40)  # would be a MemoryError if allocated
            assert m is not None and m.data == expected and not m.truncated
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv_message(2**40)
        a.close()
        assert b.recv_message(2**40) is None


def test_close_wakes_a_thread_blocked_in_accept(impl: str, tmp_path: Path) -> None:
    """close() from another thread: the accepting thread raises EBADF instead of blocking
    forever, and a copy of the listening socket held elsewhere (a pre-forked child's) is
    not shut down by it: it still accepts."""
    path = str(tmp_path / "l.sock")
    listener = SeqpacketListener(path, implementation=impl, remove_on_close=False)
    copy = socket.socket(fileno=os.dup(listener.fileno()))
    errors: List[OSError] = []

    def accept() -> None:
        try:
            listener.accept()
        except OSError as exc:
            errors.append(exc)

    waiter = threading.Thread(target=accept)
    with copy:
        waiter.start()
        time.sleep(0.2)  # the thread is in its wait (a wait entered later is woken too)
        listener.close()
        waiter.join(3)
        alive = waiter.is_alive()
        if alive:  # unblock it for the test's sake; the assertion below says what happened
            with socket.socket(socket.AF_UNIX, copy.type) as unblock:
                unblock.connect(path)
            waiter.join(5)
        assert not alive, "close() left the accepting thread blocked"
        assert errors and errors[0].errno == errno.EBADF, errors
        client = SeqpacketConn.connect(path, implementation=impl)
        with client:
            conn, _ = copy.accept()
            conn.close()


@only_on("Linux", "a full backlog makes a timed connect fail with EAGAIN at once; BSDs refuse")
def test_a_timed_connect_waits_for_room_in_a_full_backlog(tmp_path: Path) -> None:
    """connect(timeout=) to a listener whose queue is full waits for room until its deadline
    (the timeout is for the whole call): it raised BlockingIOError at once, so a client of
    a busy server failed where a blocking connect would have waited."""
    path = str(tmp_path / "busy.sock")
    listener = SeqpacketListener(path, backlog=0, implementation="native")
    queued: List[SeqpacketConn] = []
    try:
        while True:  # fill the queue: a non-blocking connect says when it is full
            try:
                queued.append(SeqpacketConn.connect(path, implementation="native", timeout=0))
            except BlockingIOError:
                break
            assert len(queued) < 64, "the backlog never filled"
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            SeqpacketConn.connect(path, implementation="native", timeout=0.3)
        assert 0.25 < time.monotonic() - started < 2.0

        def make_room() -> None:
            time.sleep(0.2)
            conn, _ = listener.accept()
            conn.close()

        helper = threading.Thread(target=make_room)
        helper.start()
        try:
            with SeqpacketConn.connect(path, implementation="native", timeout=5):
                pass
        finally:
            helper.join(5)
    finally:
        for conn in queued:
            conn.close()
        listener.close()
