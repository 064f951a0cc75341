"""The emulation against peers that do not play fair: a raw socket writing raw frames.

Each test is a scenario of issue 12: descriptor floods, acknowledgement floods and
amplification, slow drips against a timeout, running out of descriptors mid-stream, and
our own misuse.  The peer is a plain SOCK_STREAM socket end; timeouts are short and every
loop is bounded.  The fd-leak check of conftest.py runs around each.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import udscompat
from tests.conftest import open_fds
from udscompat import ControlTruncatedError, FramingError, SeqpacketConn
from udscompat._framing import HEADER, FrameEncoder

ROOT = Path(__file__).resolve().parent.parent
ENC = FrameEncoder()
ACK_REQUESTED = 0x01


@pytest.fixture
def raw_peer() -> Iterator[Tuple[socket.socket, SeqpacketConn]]:
    """A raw stream end (the hostile peer) and an emulated connection on the other end."""
    raw, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = SeqpacketConn.from_socket(other)
    with raw, conn:
        yield raw, conn


def _send_with_fds(sock: socket.socket, data: bytes, fds: List[int]) -> None:
    rights = struct.pack(f"{len(fds)}i", *fds)
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)])


# -- descriptor flood --------------------------------------------------------------------


def test_fd_flood_never_holds_more_than_the_frame_declared(
    raw_peer: Tuple[socket.socket, SeqpacketConn], pipe: Tuple[int, int]
) -> None:
    """One frame declares 1 descriptor and a long payload; every later chunk brings 200 more."""
    raw, conn = raw_peer
    conn.setblocking(False)
    before = len(open_fds())
    peak = 0
    _send_with_fds(raw, HEADER.pack(1 << 20, 1, 0, 0) + b"x", [pipe[0]])
    with pytest.raises(FramingError, match="start no frame"):
        for _ in range(50):  # bounded: the first flood chunk must already be refused
            try:
                conn.recv_message(maxfds=1)
            except BlockingIOError:
                pass
            peak = max(peak, len(open_fds()) - before, conn._decoder.held_fds)
            _send_with_fds(raw, b"y", [pipe[0]] * 200)
    assert conn.closed
    assert peak <= 1, f"held {peak} descriptors for a frame that declared 1"
    assert len(open_fds()) == before - 1  # the connection's own socket is closed too


def test_more_descriptors_than_the_frame_declares_are_refused_at_once(
    raw_peer: Tuple[socket.socket, SeqpacketConn], pipe: Tuple[int, int]
) -> None:
    raw, conn = raw_peer
    _send_with_fds(raw, HEADER.pack(4, 2, 0, 0), [pipe[0]] * 100)  # the body never comes
    conn.settimeout(1)
    with pytest.raises(FramingError, match="100 descriptors arrived with a frame that declares 2"):
        conn.recv_message(maxfds=2)


# -- acknowledgement floods ----------------------------------------------------------------


def test_acknowledgement_flood_is_a_framing_error(
    raw_peer: Tuple[socket.socket, SeqpacketConn],
) -> None:
    """Acknowledging frames nobody asked about is a lie: refused at the first one."""
    raw, conn = raw_peer
    raw.sendall(ENC.ack(1) * 10000)
    conn.settimeout(1)
    start = time.monotonic()
    with pytest.raises(FramingError, match="acknowledged 1 frames, more than awaited"):
        conn.recv_message()
    assert time.monotonic() - start < 0.5


def test_acknowledgement_of_zero_frames_is_a_framing_error(
    raw_peer: Tuple[socket.socket, SeqpacketConn],
) -> None:
    raw, conn = raw_peer
    raw.sendall(HEADER.pack(0, 0, 1, 0) * 100)
    conn.settimeout(1)
    with pytest.raises(FramingError, match="acknowledging 0 frames"):
        conn.recv_message()


def test_acknowledgement_requests_cost_a_count_not_memory(
    raw_peer: Tuple[socket.socket, SeqpacketConn],
) -> None:
    """Amplification: 40,000 tiny frames ask for acknowledgement; the peer never reads."""
    raw, conn = raw_peer
    count = 6000
    # Small buffers, so the acknowledgements back up after a few hundred.
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    request = HEADER.pack(0, 0, 0, ACK_REQUESTED)
    raw.sendall(request * count)  # 48 kB: the socket buffer holds it all
    conn.settimeout(5)
    growth: List[int] = []
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        for i in range(count):
            message = conn.recv_message()
            assert message is not None and message.data == b""
            if i % 1500 == 1499:
                growth.append(tracemalloc.get_traced_memory()[0] - baseline)
    finally:
        tracemalloc.stop()
    owed = conn._decoder.ack_requests - conn._acks_sent
    assert len(conn._unsent) <= HEADER.size, "owed acknowledgements must be a count"
    conn.setblocking(False)
    # Flat after the first quarter (a byte string of owed ACK frames would add 8 B per
    # request: 36 KB over the last three quarters); the level is about one read chunk.
    assert growth[-1] - growth[0] < 16 * 1024, f"memory grew with the requests: {growth}"
    assert max(growth) < 256 * 1024, growth
    # Reading now lets everything owed go out, in few frames (coalesced).
    raw.setblocking(False)
    acked = frames = 0
    deadline = time.monotonic() + 5
    while acked < count and time.monotonic() < deadline:
        try:
            conn.flush()
        except (BlockingIOError, TimeoutError):
            pass
        try:
            chunk = raw.recv(1 << 20)
        except BlockingIOError:
            continue
        for offset in range(0, len(chunk), HEADER.size):
            length, _, kind, _ = HEADER.unpack_from(chunk, offset)
            assert kind == 1
            acked += length
            frames += 1
    assert acked == count
    assert owed > 0, "the test must actually make acknowledgements wait"
    print(f"amplification: {count} requests, {owed} owed as a count, {frames} ACK frames, {growth}")


# -- slow peers against timeouts -------------------------------------------------------------


def _drip(sock: socket.socket, data: bytes, interval: float, stop: threading.Event) -> None:
    for i in range(len(data)):
        if stop.wait(interval):
            return
        try:
            sock.send(data[i : i + 1])
        except OSError:
            return


@pytest.mark.parametrize("part", ["header", "body"])
def test_slowloris_cannot_hold_a_receive_past_its_timeout(
    raw_peer: Tuple[socket.socket, SeqpacketConn], part: str
) -> None:
    raw, conn = raw_peer
    frame = ENC.encode(b"z" * 64)
    if part == "body":
        raw.sendall(frame[:10])  # the header is whole; the body drips
        frame = frame[10:]
    stop = threading.Event()
    dripper = threading.Thread(target=_drip, args=(raw, frame, 0.02, stop))
    dripper.start()
    try:
        conn.settimeout(0.3)
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            conn.recv_message()
        took = time.monotonic() - start
    finally:
        stop.set()
        dripper.join(5)
    assert 0.25 <= took < 0.6, f"a 0.3 s timeout took {took:.3f} s"


def test_slow_reader_cannot_hold_a_send_past_its_timeout() -> None:
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    stop = threading.Event()

    def read_slowly() -> None:
        b._sock.setblocking(True)
        while not stop.wait(0.02):
            b._sock.recv(4096)  # a trickle, far slower than the sender

    with a, b:
        big = b"q" * 900_000
        a.setblocking(False)
        with pytest.raises(BlockingIOError):
            while True:
                a.send(big)  # fill the buffers first
        reader = threading.Thread(target=read_slowly)
        reader.start()
        try:
            a.settimeout(0.3)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                a.send(b"more")  # the earlier rest must go first; the deadline holds
            took = time.monotonic() - start
        finally:
            stop.set()
            reader.join(5)
    assert 0.25 <= took < 0.6, f"a 0.3 s send timeout took {took:.3f} s"


# -- running out of descriptors mid-stream --------------------------------------------------

EMFILE_RECEIVER = r"""
import json, os, resource, socket, sys
import udscompat
from udscompat import _probes
sock = socket.socket(fileno=int(sys.argv[1]))
conn = udscompat.SeqpacketConn.from_socket(sock)
conn.settimeout(10)
before = _probes.open_fds()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(before) + 1, hard))
filler = []
try:
    while True:
        filler.append(os.dup(0))
except OSError:
    pass
events = []
def take():
    try:
        m = conn.recv_message(1 << 20, maxfds=1)
    except udscompat.ControlTruncatedError as exc:
        return ["truncated", len(exc.data), exc.data[:8].hex()]
    except OSError as exc:
        return ["error", type(exc).__name__, str(exc)]
    if m is None:
        return ["eof"]
    for fd in m.fds:
        os.close(fd)
    return ["message", len(m.data), m.data[:8].hex(), len(m.fds)]
sys.stdout.write("ready\n"); sys.stdout.flush()
events.append(take())   # A, whose descriptor cannot be received
events.append(take())   # B
for fd in filler:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
sys.stdout.write("raised\n"); sys.stdout.flush()
events.append(take())   # C, received with its descriptor now
events.append(take())   # end-of-stream
conn.close()
leaked = sorted(_probes.open_fds() - before)
print(json.dumps({"events": events, "leaked": leaked}))
"""


def test_out_of_descriptors_mid_stream_never_builds_a_message_from_two() -> None:
    import json

    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with raw:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        child = subprocess.Popen(
            [sys.executable, "-c", EMFILE_RECEIVER, str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        theirs.close()
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            r, w = os.pipe()
            try:
                # A: 300 KiB of zeros with a descriptor.  Were its first chunk dropped, the
                # zeros after it would read as empty frames: messages made of A's bytes.
                _send_with_fds(raw, ENC.encode(bytes(300 * 1024), 1), [r])
                raw.sendall(ENC.encode(b"B is whole"))
                assert child.stdout.readline() == b"raised\n"
                _send_with_fds(raw, ENC.encode(b"C has an fd", 1), [w])
            finally:
                os.close(r)
                os.close(w)
            raw.shutdown(socket.SHUT_WR)
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0, err.decode()
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["events"] == [
        ["truncated", 300 * 1024, "00" * 8],
        ["message", 10, b"B is whole"[:8].hex(), 0],
        ["message", 11, b"C has an fd"[:8].hex(), 1],
        ["eof"],
    ]
    assert report["leaked"] == []


# -- close and our own misuse -----------------------------------------------------------------


@pytest.mark.parametrize("impl", ["native", "emulated"])
def test_close_with_a_partly_sent_frame_and_the_peer_gone(impl: str) -> None:
    a, b = udscompat.seqpacket_pair(implementation=impl)
    a.setblocking(False)
    try:
        a.send(b"p" * (200_000 if impl == "native" else 600_000))
    except (BlockingIOError, OSError):
        pass  # native: larger than the socket takes at once
    b.close()
    fd = a.fileno()
    with a:
        pass  # __exit__ must not raise for a peer that is gone
    assert a.closed
    with pytest.raises(OSError):
        os.fstat(fd)


@pytest.mark.parametrize("impl", ["native", "emulated"])
@pytest.mark.parametrize("side", ["recv", "send"])
def test_close_wakes_a_thread_blocked_on_the_connection(impl: str, side: str) -> None:
    a, b = udscompat.seqpacket_pair(implementation=impl)
    outcome: List[BaseException] = []

    def blocked() -> None:
        try:
            if side == "recv":
                a.recv_message()
            else:
                while True:
                    a.send(b"f" * 60000)  # the peer never reads: blocks soon
        except BaseException as exc:
            outcome.append(exc)

    with b:
        thread = threading.Thread(target=blocked)
        thread.start()
        time.sleep(0.2)
        assert thread.is_alive(), "the thread must really be blocked"
        a.close()
        thread.join(2)
        assert not thread.is_alive(), "close() did not wake the blocked thread"
    assert len(outcome) == 1 and isinstance(outcome[0], OSError), outcome
    assert not isinstance(outcome[0], FramingError)


@pytest.mark.parametrize("impl", ["native", "emulated"])
def test_receiving_after_our_own_close_is_ebadf_not_the_peers_fault(impl: str) -> None:
    import errno

    a, b = udscompat.seqpacket_pair(implementation=impl)
    with b:
        b.send(b"unread")
        a.close()
        for call in (a.recv_message, lambda: a.send(b"x")):
            with pytest.raises(OSError) as info:
                call()
            assert info.value.errno == errno.EBADF
            assert not isinstance(info.value, FramingError)
        a.close()  # twice is fine


def test_truncated_control_data_reports_that_message_and_keeps_the_stream(
    raw_peer: Tuple[socket.socket, SeqpacketConn],
) -> None:
    """The decoder side of EMFILE, in process: a chunk whose descriptors were lost."""
    raw, conn = raw_peer
    decoder = conn._decoder
    decoder.receive_data(ENC.encode(b"lost", 1)[:6], (), fds_lost=0)
    decoder.receive_data(ENC.encode(b"lost", 1)[6:] + ENC.encode(b"next"))
    raw.close()
    with pytest.raises(ControlTruncatedError) as info:
        conn.recv_message()
    assert info.value.data == b"lost"
    message = conn.recv_message()
    assert message is not None and message.data == b"next"


class _DrippingSocket(socket.socket):
    """Stand-in for a peer that drips faster than we read (a second process writing a byte
    at a time can do this, but not reliably on a loaded machine): every read finds one byte
    of a frame that declares 1 MiB, so no read ever waits.  The socket itself is real."""

    def recvmsg(self, *args: object) -> Tuple[bytes, list, int, object]:  # type: ignore[override]
        self._sent = getattr(self, "_sent", -1) + 1
        if self._sent == 0:
            return HEADER.pack(1 << 20, 0, 0, 0), [], 0, None
        return b"d", [], 0, None


def test_a_receive_that_never_waits_still_ends_at_its_deadline() -> None:
    raw, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with raw:
        stand_in = _DrippingSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=other.detach())
        with SeqpacketConn.from_socket(stand_in) as conn:
            conn.settimeout(0.2)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                conn.recv_message()
            took = time.monotonic() - start
    assert took < 0.5, f"a 0.2 s timeout took {took:.3f} s"
