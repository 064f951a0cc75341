"""Attacks on the I/O core that issue 12's own tests did not try (see coord notes attack-12).

Each test here failed without its fix (checked against main at 471b019).  The signal
tests place a real signal exactly: a profile hook sends SIGUSR1, whose handler raises,
after a chosen call made by the I/O modules, so the handler runs as it would for a
signal that arrived during that call (after it returned, before its result is used).
The random storms of test_signals.py hit these points only now and then; here each one
is tried in turn.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import sys
import threading
from typing import Any, Callable, Iterator, List, Sequence, Tuple

import pytest

from tests.conftest import open_fds
from udscompat import SeqpacketConn, _fdpass, _probes, _seqpacket
from udscompat._framing import HEADER, FrameEncoder

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "SIGUSR1") or not hasattr(os, "kill"), reason="needs SIGUSR1"
)

IO_MODULES = frozenset(
    {"udscompat._seqpacket", "udscompat._io", "udscompat._framing", "udscompat._fdpass"}
)
ENC = FrameEncoder()


@pytest.fixture(autouse=True)
def _python_emulated_methods(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emulation runs its Python send/recv_message here, whichever path is in use.

    These tests place a signal after a CPython socket call the Python methods make
    (``send``, ``recvmsg``), found by its profile event; the compiled methods
    (udscompat/_speedups.c) make their system calls in C, where no profile event shows
    them, so the tests would place their signals elsewhere.  The compiled methods' own
    windows are tried in tests/test_emulated_speedups.py.
    """
    monkeypatch.setattr(_seqpacket._EmulatedConn, "send", _seqpacket.PYTHON_EMULATED_SEND)
    monkeypatch.setattr(
        _seqpacket._EmulatedConn, "recv_message", _seqpacket.PYTHON_EMULATED_RECV_MESSAGE
    )


class Interrupted(BaseException):
    """What the test's SIGUSR1 handler raises (as a SIGINT handler raises KeyboardInterrupt)."""


# A call boundary the I/O modules pass: ("call", python function) or ("c_return", C function).
Event = Tuple[str, str]


class Interrupts:
    """Raise ``Interrupted`` from a real signal handler after chosen calls of the I/O modules.

    ``schedule`` counts call boundaries (a Python function starting, a C function
    returning) in the I/O modules: the first interrupt comes after ``schedule[0]`` of
    them, the next ``schedule[1]`` boundaries after the caller's ``rearm()``, and so on
    (a handler that raises ends the profile hook, so the test rearms it when it catches
    the interrupt).  An empty schedule only records the boundaries (``events``).
    """

    def __init__(self, schedule: Sequence[int] = ()) -> None:
        self.schedule = list(schedule)
        self.events: List[Event] = []
        #: The I/O-module function in which each boundary of ``events`` happened.
        self.frames: List[str] = []
        self.fired = 0
        self._count = 0

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if event not in ("call", "c_return") or frame.f_globals.get("__name__") not in IO_MODULES:
            return
        name = frame.f_code.co_name if event == "call" else getattr(arg, "__name__", "?")
        self.events.append((event, name))
        self.frames.append(frame.f_code.co_name)
        self._count += 1
        if self.fired < len(self.schedule) and self._count == self.schedule[self.fired]:
            self.fired += 1
            self._count = 0
            os.kill(os.getpid(), signal.SIGUSR1)

    def rearm(self) -> None:
        sys.setprofile(self._hook)

    @contextlib.contextmanager
    def active(self) -> Iterator[Interrupts]:
        def raise_interrupted(signum: int, frame: Any) -> None:
            raise Interrupted()

        previous = signal.signal(signal.SIGUSR1, raise_interrupted)
        self.rearm()
        try:
            yield self
        finally:
            sys.setprofile(None)
            signal.signal(signal.SIGUSR1, previous)


def _program(steps: Sequence[Callable[[], Any]], interrupts: Interrupts) -> List[str]:
    """Run ``steps`` in order as a program would: an interrupted or failed step is left."""
    outcomes = []
    with interrupts.active():
        for step in steps:
            try:
                step()
                outcomes.append("ok")
            except Interrupted:
                interrupts.rearm()
                outcomes.append("interrupted")
            except OSError as exc:
                outcomes.append(type(exc).__name__)
    return outcomes


def _position(events: List[Event], wanted: Event, after: int = 0) -> int:
    """The 1-based index of the first boundary ``wanted`` after ``after`` boundaries."""
    for index in range(after, len(events)):
        if events[index] == wanted:
            return index + 1
    raise AssertionError(f"{wanted} never happened: {events}")


def _drain(raw: socket.socket) -> bytes:
    raw.setblocking(False)
    out = bytearray()
    while True:
        try:
            chunk = raw.recv(1 << 20)
        except BlockingIOError:
            return bytes(out)
        if not chunk:
            return bytes(out)
        out += chunk


# -- an abort cut short: the send side ------------------------------------------------------

BODY = bytes(range(256)) * 800  # 200 KiB, no run of equal bytes: a resent byte shows


def _send_scenario(schedule: Sequence[int]) -> Tuple[bytes, List[str], List[Event]]:
    """A frame partly sent; then flush, send, close, as a program does, under interrupts.

    Returns what the peer received, each step's outcome and the call boundaries seen.
    """
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = SeqpacketConn.from_socket(ours)
    conn.setblocking(False)
    with raw, conn:
        conn.send(BODY)  # the start goes out, the rest waits in the connection
        received = bytearray(_drain(raw))

        def read() -> None:  # the peer reads all the time
            received.extend(_drain(raw))

        interrupts = Interrupts(schedule)
        steps = [conn.flush, read, lambda: conn.send(b"next"), read, conn.close, read]
        outcomes = _program(steps, interrupts)
        conn.close()
        received += _drain(raw)
    return bytes(received), outcomes, interrupts.events


def test_an_abort_cut_short_never_sends_a_byte_twice() -> None:
    """A flush interrupted right after its send, then the abort interrupted at each step.

    The first interrupt leaves the bytes sent but not recorded, so the next send aborts
    the connection.  If a second interrupt cut that abort short, close() went on to
    "finish the frame" from the stale record and sent those bytes again: the peer read
    the repeat as frame headers ("unknown frame kind", or a forged message).
    """
    stream = ENC.encode(BODY) + ENC.encode(b"next")
    _, _, events = _send_scenario(())
    after_send = _position(events, ("c_return", "send"), after=0)
    failures = []
    for gap in range(1, 25):
        received, outcomes, _ = _send_scenario((after_send, gap))
        if not stream.startswith(received):
            failures.append((gap, outcomes))
    assert not failures, f"the peer received bytes we never meant to send: {failures}"


# -- an abort cut short: the receive side ---------------------------------------------------

FORGED = HEADER.pack(6, 0, 0, 0) + b"forged"  # what the second half of the body looks like


def _receive_scenario(schedule: Sequence[int]) -> Tuple[List[Any], List[Event]]:
    """A chunk read then lost to an interrupt; then two more receives under interrupts.

    Returns each receive's outcome (message data or exception type) and the boundaries.
    """
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = SeqpacketConn.from_socket(ours)
    conn.setblocking(False)
    half = b"h" * 100
    rest = FORGED * 10
    results: List[Any] = []
    with raw, conn:
        raw.sendall(HEADER.pack(len(half) + len(rest), 0, 0, 0) + half)
        interrupts = Interrupts(schedule)

        def receive() -> None:
            try:
                message = conn.recv_message()
            except BlockingIOError:
                results.append("would block")
                raw.sendall(rest)  # the frame's second half arrives only now
                return
            except Exception as exc:
                results.append(type(exc).__name__)
                return
            results.append(None if message is None else message.data)

        outcomes = _program([receive, receive, receive], interrupts)
        with contextlib.suppress(OSError):
            raw.sendall(rest)
        try:
            message = conn.recv_message()
            results.append(None if message is None else message.data)
        except Exception as exc:
            results.append(type(exc).__name__)
        results.append(outcomes)
    return results, interrupts.events


def test_after_an_abort_cut_short_no_receive_reads_on() -> None:
    """A receive loses its chunk to an interrupt; the abort that follows is cut short.

    The first interrupt comes right after recvmsg returned the frame's first half, so
    the stream position is lost and the next receive must abort.  If a second interrupt
    cut that abort short, the receive after it read on from the middle of the frame and
    decoded its payload: a forged message, or a FramingError blaming the peer.
    """
    _, events = _receive_scenario(())
    after_read = _position(events, ("c_return", "recvmsg"))
    failures = []
    for gap in range(1, 25):
        results, _ = _receive_scenario((after_read, gap))
        delivered = [r for r in results[:-1] if isinstance(r, bytes)]
        errors = [r for r in results[:-1] if isinstance(r, str) and r != "would block"]
        if delivered or any(e != "ConnectionAbortedError" for e in errors):
            failures.append((gap, results))
    assert not failures, f"read on after an abort: {failures}"


def test_an_aborted_connection_waiting_says_aborted_not_closed() -> None:
    """A receive that finds the connection aborted while it waits says ECONNABORTED."""
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    with a, b:
        # What an abort cut short after its first step leaves: then select users must call
        # recv_message (which raises) rather than wait, ...
        b._broken = ConnectionAbortedError(errno.ECONNABORTED, "aborted")
        assert b.pending()
        b._closed = True  # ... and a wait says why the connection closed
        with pytest.raises(ConnectionAbortedError):
            b._wait(False, None)


@pytest.mark.parametrize("call", ["send", "flush", "recv_message"])
def test_a_call_after_an_abort_cut_short_finishes_it(call: str) -> None:
    """The next call that finds an abort cut short finishes it: the peer reads the end.

    Before, it raised but left the socket open, so a peer waiting for the next frame
    waited until the program closed the connection (or forever, if it never did).
    """
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    with a, b:
        # What an abort cut short after its first step leaves (the tests above reach it
        # through real interrupts).
        a._broken = ConnectionAbortedError(errno.ECONNABORTED, "aborted")
        operation = {"send": lambda: a.send(b"x"), "flush": a.flush, "recv_message": a.recv_message}
        with pytest.raises(ConnectionAbortedError):
            operation[call]()
        assert a.fileno() == -1
        b.settimeout(5)
        assert b.recv_message() is None


# -- the sent-fd registry under interrupts -------------------------------------------------


def _registry_round(schedule: Sequence[int], pipe: Tuple[int, int]) -> List[Event]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        interrupts = Interrupts(schedule)
        _program(
            [
                lambda: _fdpass.send_fds(a, b"x", [pipe[0]]),
                lambda: _fdpass.send_fds(a, b"y", [pipe[0], pipe[0]]),
                lambda: _fdpass.release_sent_fds(a),
            ],
            interrupts,
        )
        _fdpass.release_sent_fds(a)
        b.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                _, fds, _, _ = _fdpass.recv_fds(b, 10, 4)
                _fdpass._io.close_fds(fds)
    return interrupts.events


def test_held_duplicates_survive_interrupts_at_every_step(
    hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    """Where sent descriptors are held (macOS), an interrupt anywhere loses no duplicate.

    A duplicate made before its batch was registered, or forgotten before it was closed
    (the batch list cleared, then the close loop interrupted), stayed open for good.
    """
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    _probes.same_process_fd_reuse()  # the probe itself is not under test here
    before = open_fds()
    events = _registry_round((), pipe)
    assert open_fds() == before
    leaks = []
    for point in range(1, len(events) + 1):
        _registry_round((point,), pipe)
        leaked = open_fds() - before
        if leaked:
            leaks.append((point, events[point - 1], len(leaked)))
            _fdpass._io.close_fds(sorted(leaked))
    assert not leaks, f"held duplicates lost to an interrupt: {leaks}"


def test_a_send_interrupted_while_waiting_holds_nothing(
    hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    """Nothing went out, so no duplicate is held and no acknowledgement awaited.

    The batch stayed held (until close) and counted as a frame awaiting acknowledgement,
    so every later batch was released one acknowledgement late and a peer acknowledging
    one frame more than it received went unnoticed.
    """
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")

    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted()

    previous = signal.signal(signal.SIGALRM, raise_interrupted)
    try:
        with a, b:
            a._sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                while True:  # fill the socket (b never reads): the next send waits
                    a._sock.send(b"\0" * 65536)
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            with pytest.raises(Interrupted):
                a.send(b"x", [pipe[0]])
            assert _fdpass.REGISTRY.held(a._sock) == 0
            assert not _fdpass.REGISTRY.acknowledge(a._sock, 1), "awaits an acknowledgement"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_unhold_never_closes_a_batch_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """A send that fails after a newer send evicted its batch must not close it again.

    Thread A holds a batch and sends; thread B's send on the same socket evicts A's batch
    at the bound (closing it); A's send fails and unholds.  unhold closed the batch's
    numbers a second time -- by then perhaps another thread's new descriptors.
    """
    monkeypatch.setattr(_fdpass.REGISTRY, "max_per_socket", 1)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    with a, b:
        first = _fdpass.REGISTRY.hold(a, [r])  # thread A, about to send
        _fdpass.REGISTRY.hold(a, [r])  # thread B: the bound evicts A's batch
        reused = os.open(os.devnull, os.O_RDONLY)  # another thread: gets the freed number
        try:
            _fdpass.REGISTRY.unhold(a, first)  # A's send failed
            os.fstat(reused)  # still open
            # ... and its frame, never sent, no longer awaits an acknowledgement.
            assert not _fdpass.REGISTRY.acknowledge(a, 2), "awaits the unsent frame's too"
        finally:
            with contextlib.suppress(OSError):
                os.close(reused)
            _fdpass.REGISTRY.release(a)
            os.close(r)
            os.close(w)


# -- probes inside a send --------------------------------------------------------------------


def test_no_probe_runs_inside_a_send(hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]) -> None:
    """The probes a descriptor send consults run when the connection is made.

    Run inside the send, between setting and clearing its system-call window, a probe
    interrupted by a raising handler leaked its pipe (or a socket) and left the window
    marked, so the next send aborted the connection.  test_signals.py's emulated send
    storm, first in a fresh process, leaked a socket in one run and both ends of a pipe
    in the next.
    """
    caches = [_probes.fd_control_padding, _probes.same_process_fd_reuse, _fdpass.hold_sent_fds]
    for cache in caches:
        cache.cache_clear()
    probed: List[str] = []

    def hook(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_globals.get("__name__") == "udscompat._probes":
            probed.append(frame.f_code.co_name)

    for implementation in ("emulated", "native"):
        a, b = _seqpacket.seqpacket_pair(implementation=implementation)
        with a, b:
            sys.setprofile(hook)
            try:
                a.send(b"x", [pipe[0]])
            finally:
                sys.setprofile(None)
            message = b.recv_message(maxfds=1)
            assert message is not None
            for fd in message.fds:
                os.close(fd)
        assert not probed, f"{implementation} send ran probes: {probed}"


# -- a listener under construction -----------------------------------------------------------


@pytest.mark.parametrize("implementation", ["native", "emulated"])
def test_a_listener_interrupted_while_made_leaves_no_socket_file(
    implementation: str, tmp_path: Any
) -> None:
    """An interrupt at any boundary of ``SeqpacketListener(path)`` leaves no file behind.

    setblocking(False) ran after the try that closes a half-built listener: a handler
    raising there dropped the bound, listening socket, and its file stayed at the path
    (stale: the next bind had to probe and remove it; a client meanwhile was refused).
    """
    path = str(tmp_path / "listener")
    recorder = Interrupts()
    with recorder.active():
        _seqpacket.SeqpacketListener(path, implementation=implementation).close()
    before = open_fds()
    failures = []
    for point in range(1, len(recorder.events) + 1):
        try:
            with Interrupts((point,)).active():
                listener = _seqpacket.SeqpacketListener(path, implementation=implementation)
        except Interrupted:
            pass
        else:
            listener.close()
        if os.path.lexists(path):
            failures.append(recorder.events[point - 1])
            os.unlink(path)
        leaked = open_fds() - before
        if leaked:
            failures.append(recorder.events[point - 1])
            _fdpass._io.close_fds(sorted(leaked))
    assert not failures, f"interrupted after these, a listener was left behind: {failures}"


# -- a peek's copies -------------------------------------------------------------------------


def test_a_peek_interrupted_while_copying_leaks_no_copy(pipe: Tuple[int, int]) -> None:
    """An emulated peek copies the held message's descriptors; an interrupt never leaks one.

    Each copy was appended after the call that made it returned: a handler raising in
    between dropped that copy (the except clause closes only what the list holds).
    """
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    with a, b:
        a.send(b"x", [pipe[0], pipe[0]])
        b.settimeout(5)
        first = b.peek(maxfds=2)  # the message is held from now on; each peek copies
        assert first is not None
        _fdpass._io.close_fds(first.fds)
        recorder = Interrupts()
        with recorder.active():
            _fdpass._io.close_fds(b.peek(maxfds=2).fds)  # type: ignore[union-attr]
        points = [i + 1 for i, f in enumerate(recorder.frames) if f == "_peek_copy"]
        assert points, recorder.events
        before = open_fds()
        leaks = []
        for point in points:
            try:
                with Interrupts((point,)).active():
                    peeked = b.peek(maxfds=2)
            except Interrupted:
                pass
            else:
                assert peeked is not None
                _fdpass._io.close_fds(peeked.fds)
            leaked = open_fds() - before
            if leaked:
                leaks.append(recorder.events[point - 1])
                _fdpass._io.close_fds(sorted(leaked))
        message = b.recv_message(maxfds=2)
        assert message is not None and len(message.fds) == 2
        _fdpass._io.close_fds(message.fds)
    assert not leaks, f"a copy was leaked by an interrupt after: {leaks}"


# -- another thread closes the connection -----------------------------------------------------


@pytest.mark.parametrize("implementation", ["native", "emulated"])
def test_close_wakes_a_wait_that_lost_its_descriptor_number(implementation: str) -> None:
    """close() lands between a wait reading the socket's number and polling it.

    The number is free then and the next descriptor opened takes it (here a pipe; in a
    program, often a descriptor another thread just received), so the wait polled an
    unrelated file and never woke: close() had no waiter to shut down for yet.
    """
    a, b = _seqpacket.seqpacket_pair(implementation=implementation)
    reached, closed = threading.Event(), threading.Event()
    errors: List[OSError] = []

    def hook(frame: Any, event: str, arg: Any) -> None:
        if (
            event == "c_return"
            and getattr(arg, "__name__", "") == "fileno"
            and frame.f_code.co_name == "wait_ready"
        ):
            sys.setprofile(None)
            reached.set()
            closed.wait(5)

    def receive() -> None:
        sys.setprofile(hook)
        try:
            b.recv_message()
        except OSError as exc:
            errors.append(exc)
        finally:
            sys.setprofile(None)

    waiter = threading.Thread(target=receive)
    with a:
        waiter.start()
        assert reached.wait(5)
        number = b.fileno()
        b.close()
        r, w = os.pipe()  # takes the number the wait is about to poll
        try:
            closed.set()
            waiter.join(4)
            assert number in (r, w), "the pipe did not take the number (test setup)"
            assert not waiter.is_alive(), "the wait polls another file and never wakes"
            assert errors and errors[0].errno == errno.EBADF, errors
        finally:
            os.write(w, b"x")  # wakes a poll left on the pipe, whichever end it took
            os.close(r)
            os.close(w)
            waiter.join(5)


def test_a_large_native_receive_after_close_says_ebadf() -> None:
    """recv_message with a bufsize that sizes by FIONREAD, on a closed connection: EBADF.

    The FIONREAD ioctl got the closed socket's -1 and raised ValueError, which the
    contract does not allow (seen when another thread closed the connection).
    """
    a, b = _seqpacket.seqpacket_pair(implementation="native")
    with a:
        b.close()
        with pytest.raises(OSError) as info:
            b.recv_message(1 << 20)
        assert info.value.errno == errno.EBADF
