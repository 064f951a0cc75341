"""A signal handler that raises, at any point of a send or receive, never desynchronises a stream.

An interval timer fires every few hundred microseconds while the main thread sends or
receives; its handler raises ``Interrupt`` (a BaseException, like KeyboardInterrupt).  The
peer, another thread, checks every message.  Allowed outcomes: the call raises Interrupt
and the stream goes on; or (emulated only, when the interrupt fell between a system call
and the recording of its result) the connection is aborted with ConnectionAbortedError.
Never a corrupt or reordered message, never a FramingError on our side.  A message whose
hand-over to the caller is interrupted is lost, as with ``socket.recvmsg``; the
descriptors it carried are the only ones allowed to leak, and the test closes them.
"""

from __future__ import annotations

import errno
import gc
import os
import signal
import socket
import struct
import threading
import time
import zlib
from typing import Iterator, List, Tuple

import pytest

import udscompat
from tests.conftest import open_fds, same_file
from udscompat import FramingError

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "setitimer"), reason="needs setitimer (every POSIX Python has it)"
)

COUNT = 600
SIZES = [0, 7, 100, 5000, 70000, 200000]


KEPT: List[object] = []


class Interrupt(BaseException):
    """What the handler raises: not an Exception, so nothing may swallow it."""


def _message(i: int) -> bytes:
    size = SIZES[i % len(SIZES)]
    body = bytes([i % 251]) * size
    return struct.pack("!II", i, zlib.crc32(body)) + body


def _check(data: bytes) -> int:
    i, crc = struct.unpack_from("!II", data)
    assert zlib.crc32(data[8:]) == crc and len(data) - 8 == SIZES[i % len(SIZES)], (
        f"message {i} is corrupt"
    )
    return i


@pytest.fixture
def storm() -> Iterator[List[bool]]:
    """An interval timer whose handler raises Interrupt while ``armed[0]`` is True."""
    armed = [False]

    def handler(signum: int, frame: object) -> None:
        if armed[0]:
            raise Interrupt

    # Objects of finished rounds (threads, connections) are kept until the storm is over, and
    # the cyclic collector is off: a handler raising inside some finalizer or weakref callback
    # of the runtime (threading's WeakSets) is noise that tests nothing of ours.
    KEPT.clear()
    gc.disable()
    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.0003, 0.0004)
    try:
        yield armed
    finally:
        armed[0] = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        gc.enable()
        KEPT.clear()


def _receive_round(impl: str, storm: List[bool], first: int) -> Tuple[List[int], int, bool]:
    """Messages ``first``.. through one connection; returns (received, interrupts, aborted)."""
    a, b = udscompat.seqpacket_pair(implementation=impl)
    r, w = os.pipe()
    before = open_fds()

    def send_all() -> None:
        try:
            for i in range(first, COUNT):
                a.send(_message(i), [r] if i % 5 == 0 else ())
            a.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # our side aborted and closed

    got: List[int] = []
    aborted = False
    interrupts = since_last = 0  # since_last: interrupts after the last message received
    KEPT.extend((a, b))
    with a, b:
        sender = threading.Thread(target=send_all)
        KEPT.append(sender)
        sender.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                storm[0] = True
                message = b.recv_message(1 << 20, maxfds=1)
            except Interrupt:
                interrupts += 1
                since_last += 1
                continue
            except ConnectionAbortedError:
                aborted = True
                break
            finally:
                storm[0] = False
            if message is None:
                break
            i = _check(message.data)
            assert not got or i > got[-1], f"message {i} after {got[-1]}: reordered or repeated"
            got.append(i)
            since_last = 0
            assert len(message.fds) == (1 if i % 5 == 0 else 0)
            for fd in message.fds:
                os.close(fd)
        b.close()  # unblocks the sender if we stopped early
        sender.join(10)
    # Not aborted, everything was sent and is accounted for; aborted, up to the last seen.
    end = COUNT if not aborted else (got[-1] + 1 if got else first)
    lost = sorted(set(range(first, end)) - set(got))
    leaked = [fd for fd in open_fds() - before if same_file(fd, r)]
    for fd in leaked:
        os.close(fd)
    os.close(r)
    os.close(w)
    # Lost hand-overs only (as with socket.recvmsg); their descriptors are the only leaks.
    # Aborted, the messages after the last one seen are unknown: each interrupt since may
    # have lost one, and the chunk the abort found unrecorded holds at most one more.
    assert len(lost) <= interrupts
    unseen = since_last + 1 if aborted else 0
    assert len(leaked) <= sum(1 for i in lost if i % 5 == 0) + unseen
    return got, interrupts, aborted


@pytest.mark.parametrize("impl", ["native", "emulated"])
def test_receives_under_a_storm_of_raising_handlers(impl: str, storm: List[bool]) -> None:
    received = interrupts = aborts = 0
    first = 0
    end = time.monotonic() + 8
    while first < COUNT and time.monotonic() < end:
        got, interrupted, aborted = _receive_round(impl, storm, first)
        received += len(got)
        interrupts += interrupted
        aborts += aborted
        first = got[-1] + 1 if got else first + 1
    assert interrupts > 10, "the storm must interrupt receives"
    assert received > COUNT // 4
    assert not aborts or impl == "emulated", "a native stream is never aborted"
    print(f"{impl}: {received} received, {interrupts} interrupts, {aborts} aborted")


def _send_round(
    impl: str, storm: List[bool], first: int, holding: bool = False
) -> Tuple[int, int, bool]:
    """Send messages ``first``.. through one connection; returns (next, interrupts, aborted)."""
    a, b = udscompat.seqpacket_pair(implementation=impl)
    r, w = os.pipe()
    got: List[int] = []
    peer_error: List[BaseException] = []

    def receive_all() -> None:
        try:
            while True:
                message = b.recv_message(1 << 20, maxfds=1)
                if message is None:
                    return
                i = _check(message.data)
                assert not got or i > got[-1], f"message {i} after {got[-1]}"
                got.append(i)
                for fd in message.fds:
                    assert same_file(fd, r)
                    os.close(fd)
        except BaseException as exc:
            peer_error.append(exc)

    interrupts = 0
    aborted = False
    returned: List[int] = []
    i = first
    before = open_fds()
    KEPT.extend((a, b))
    with b:
        receiver = threading.Thread(target=receive_all)
        KEPT.append(receiver)
        receiver.start()
        with a:
            end = time.monotonic() + 10
            while i < COUNT and time.monotonic() < end:
                try:
                    storm[0] = True
                    a.send(_message(i), [r] if i % 5 == 0 else ())
                    storm[0] = False
                    returned.append(i)
                except Interrupt:
                    interrupts += 1
                except ConnectionAbortedError:
                    aborted = True
                    break
                finally:
                    storm[0] = False
                i += 1
            if not aborted:
                a.settimeout(10)
                try:
                    a.flush()  # a frame whose send was interrupted after it began is finished
                except ConnectionAbortedError:
                    aborted = True  # the last send was interrupted mid-system-call
        receiver.join(30)
    # The peer closed every descriptor it got, and those still in flight went with the
    # sockets: a copy of the sent descriptor still open was leaked on our side.
    stray = [fd for fd in open_fds() - before if fd not in (r, w) and same_file(fd, r)]
    for fd in stray:
        os.close(fd)
    os.close(r)
    os.close(w)
    assert not stray, f"{len(stray)} copies of the sent descriptor left open (aborted: {aborted})"
    assert not receiver.is_alive()
    if peer_error and holding and isinstance(peer_error[0], ConnectionResetError):
        # Linux resets a stream whose closing end left bytes unread: here acknowledgements
        # the sender never read (a known gap, see coord notes attack-12), aborted or not.
        pass
    elif peer_error:
        # Only our own abort may end the stream mid-frame, and the peer says just that.
        assert aborted and isinstance(peer_error[0], FramingError), peer_error
        assert "mid-frame" in str(peer_error[0])
    assert set(returned) <= set(got) | set(returned[-1:] if aborted else []), (
        "a send that returned was lost"
    )
    return i + 1, interrupts, aborted


@pytest.mark.parametrize("holding", [False, True], ids=["", "held"])
@pytest.mark.parametrize("impl", ["native", "emulated"])
def test_sends_under_a_storm_of_raising_handlers(
    impl: str, holding: bool, hold_env: pytest.MonkeyPatch, storm: List[bool]
) -> None:
    """Also with sent descriptors held (macOS's default): the registry loses none to a handler.

    Held, an interrupt in the registry's close loops (the release at an abort, an
    acknowledgement) left the rest of a batch open for good.
    """
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1" if holding else "0")
    udscompat._fdpass.hold_sent_fds()  # the policy is read before the storm
    interrupts = aborts = 0
    first = 0
    end = time.monotonic() + (5 if holding else 8)
    while first < COUNT and time.monotonic() < end:
        first, interrupted, aborted = _send_round(impl, storm, first, holding)
        interrupts += interrupted
        aborts += aborted
    assert interrupts > 10, "the storm must interrupt sends"
    assert not aborts or impl == "emulated", "a native stream is never aborted"
    print(f"{impl}: sends, {interrupts} interrupts, {aborts} aborted")


def test_an_aborted_connection_says_so_and_not_that_the_peer_broke_framing() -> None:
    """The abort path itself, made certain: the receive window is left marked open."""
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        a.send(b"never seen")
        b._receiving = True  # what an interrupt between recvmsg and the decoder leaves
        with pytest.raises(ConnectionAbortedError, match="interrupted an earlier receive"):
            b.recv_message()
        assert b.closed
        with pytest.raises(OSError) as info:
            b.recv_message()
        assert info.value.errno == errno.ECONNABORTED
        assert not isinstance(info.value, FramingError)


def test_lock_is_never_left_held_by_an_interrupt(storm: List[bool]) -> None:
    """Thousands of interrupted calls; afterwards another thread can still use the connection."""
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        b.setblocking(False)
        for _ in range(20000):
            try:
                storm[0] = True
                a.send(b"x")
                b.recv_message()
            except (Interrupt, BlockingIOError, ConnectionAbortedError):
                pass
            finally:
                storm[0] = False
            if a.closed or b.closed:
                break
        done = threading.Event()

        def use() -> None:
            try:
                a.send(b"y")
            except OSError:
                pass  # aborted earlier: fine, it answered
            done.set()

        threading.Thread(target=use).start()
        assert done.wait(5), "the send lock was left held"


def test_an_interrupt_while_waiting_loses_nothing_and_aborts_nothing() -> None:
    """Waiting (poll) is the safe place: most Ctrl-C land there, and the connection goes on."""
    from udscompat._framing import FrameEncoder

    raw, other = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = udscompat.SeqpacketConn.from_socket(other)
    frame = FrameEncoder().encode(b"whole")

    def handler(signum: int, frame: object) -> None:
        raise Interrupt

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        with raw, conn:
            raw.sendall(frame[:5])  # half a header: the receive reads it, then waits
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Interrupt):
                conn.recv_message()
            raw.sendall(frame[5:] + FrameEncoder().encode(b"after"))
            first = conn.recv_message()
            second = conn.recv_message()
            assert first is not None and first.data == b"whole"
            assert second is not None and second.data == b"after"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_holding_never_leaves_its_lock_held(storm: List[bool]) -> None:
    """The try-acquire used for acknowledgements and close, under 20,000 interrupts."""
    from udscompat._seqpacket import _holding

    lock = threading.Lock()
    for _ in range(20000):
        try:
            storm[0] = True
            _holding(lock, lambda: None)
        except Interrupt:
            pass
        finally:
            storm[0] = False
    assert not lock.locked(), "an interrupt left the lock held"
