"""Attacks on the compiled core's emulated-connection lock and its slot reads.

``udscompat._speedups.Lock`` (the emulated connections' send and receive locks where the
accelerator runs) and ``struct slot`` (the compiled methods read a connection's
``__slots__`` at their member offsets) tried as a hostile local user and a careless one
would: classes built to hand the C a wrong offset, a subinterpreter importing udscompat
beside the main interpreter, threads closing a connection whose lock a compiled call
holds, raising signal handlers around compiled calls, fork with the lock held.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple

import pytest

from udscompat import SeqpacketConn, _accel, _framing, _seqpacket

ROOT = Path(__file__).resolve().parent.parent
_Native = _seqpacket._NativeConn
_Emulated = _seqpacket._EmulatedConn
COMPILED = _Emulated.send is not _seqpacket.PYTHON_EMULATED_SEND
needs_compiled = pytest.mark.skipif(
    not COMPILED,
    reason="the compiled accelerator is not in use (not built, or UDSCOMPAT_SPEEDUPS=0)",
)


def _python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``code`` in a new interpreter process with this tree's udscompat (and environment)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- struct slot: the offset read must be one of the configured class's own slots -----------


class _Donor(SeqpacketConn):
    """A class whose slots sit elsewhere: its member descriptors carry its offsets."""

    __slots__ = ("_a", "_fast", "_inline_args", "_z", *(f"_pad{i:03d}" for i in range(64)))


class _Borrower(SeqpacketConn):
    """Its own ``_fast`` slot, and ``_Donor``'s descriptor as ``_inline_args``: for Python
    its objects have no such attribute (the descriptor refuses them), but the descriptor's
    offset is the donor's, here that of the ``payload`` slot (configured, the C sent on a
    socket put in ``payload``)."""

    __slots__ = ("_acks_sent", "_fast", "payload")
    _inline_args = _Donor.__dict__["_inline_args"]


@needs_compiled
def test_configure_native_refuses_a_slot_descriptor_of_another_class() -> None:
    """A member descriptor of another class in the configured class's dict gives that
    class's offset: read in the configured class's objects it is another slot or memory
    past the object.  Refused, naming the field, and the configuration stays."""
    speedups: Any = _accel.speedups
    send, recv = _seqpacket.PYTHON_NATIVE_SEND, _seqpacket.PYTHON_NATIVE_RECV_MESSAGE
    try:
        with pytest.raises(TypeError, match=r"_Borrower\._inline_args must be a writable slot"):
            speedups.configure_native(_Borrower, send, recv, _seqpacket._LARGE_BUFSIZE)
    finally:  # a configuration that went through is undone (for the rest of the session)
        speedups.configure_native(_Native, send, recv, _seqpacket._LARGE_BUFSIZE)
    x, y = _seqpacket.seqpacket_pair(implementation="native")
    with x, y:
        assert x.send(b"still") == 5
        assert y.recv_message().data == b"still"


@needs_compiled
def test_configure_emulated_refuses_a_slot_descriptor_of_another_class() -> None:
    speedups: Any = _accel.speedups
    arguments = (
        _seqpacket.PYTHON_EMULATED_SEND,
        _seqpacket.PYTHON_EMULATED_RECV_MESSAGE,
        _seqpacket._STREAM_CHUNK,
        _seqpacket._ANCBUF,
        _seqpacket._STREAM_SEND,
        _seqpacket._monotonic,
    )

    class Borrower(SeqpacketConn):  # the emulated connection's slots, but _unsent: the donor's
        __slots__ = tuple(name for name in _Emulated.__slots__ if name != "_unsent")
        _unsent = _Donor.__dict__["_z"]  # 68 slots in: past the end of these objects

    try:
        with pytest.raises(TypeError, match=r"Borrower\._unsent must be a writable slot"):
            speedups.configure_emulated(Borrower, _framing.FrameDecoder, *arguments)
    finally:
        speedups.configure_emulated(_Emulated, _framing.FrameDecoder, *arguments)
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    with a, b:
        assert a.send(b"still") == 5
        assert b.recv_message().data == b"still"


# -- subinterpreters: the configuration is the process's ---------------------------------------

_SUBINTERPRETER = """
    try:
        import _xxsubinterpreters as interpreters
    except ImportError:
        import _interpreters as interpreters
    from udscompat import _accel, _seqpacket

    emulated = _seqpacket.seqpacket_pair(implementation="emulated")
    native = _seqpacket.seqpacket_pair(implementation="native")
    sub = interpreters.create()
    interpreters.run_string(sub, '''if 1:
        from udscompat import _accel, _seqpacket
        x, y = _seqpacket.seqpacket_pair(implementation="emulated")
        x.send(b"in the subinterpreter")
        assert y.recv_message().data == b"in the subinterpreter"
        x.close()
        y.close()
        print("subinterpreter:", _accel.IMPLEMENTATION)
    ''')
    interpreters.destroy(sub)
    for x, y in (emulated, native):
        x.settimeout(5)
        y.settimeout(5)
        x.send(b"compiled")  # the C methods' own case
        assert y.recv_message().data == b"compiled", x.implementation
        x.send(b"handed to Python", fds=())  # keywords: the C hands these to the Python methods
        assert y.recv_message(bufsize=100).data == b"handed to Python", x.implementation
        x.close()
        y.close()
    print("main interpreter: fine")
"""


def test_a_subinterpreter_importing_udscompat_leaves_the_main_interpreters_connections_alone() -> (
    None
):
    """udscompat._speedups keeps its configuration (the Python methods the C hands calls
    to, the classes it reads) in C globals, one set per process.  A subinterpreter's
    ``import udscompat`` configured them again with its own objects: the main
    interpreter's connections then ran the subinterpreter's Python methods, and once it
    was destroyed every call that reached them failed (NameError: its builtins were
    gone).  The compiled module now refuses to load in a subinterpreter, which takes the
    pure-Python path."""
    try:
        import _xxsubinterpreters  # noqa: F401
    except ImportError:
        pytest.importorskip("_interpreters", reason="no low-level subinterpreter module")
    result = _python(_SUBINTERPRETER)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "main interpreter: fine" in result.stdout
    assert "subinterpreter: pure-python" in result.stdout


# -- Lock: acquire's checks in _thread.lock's order --------------------------------------------


def _error_of(make: Any, *args: Any) -> Any:
    lock = make()
    try:
        if lock.acquire(*args):
            lock.release()
    except Exception as exc:
        return type(exc)
    return None


@needs_compiled
@pytest.mark.parametrize("blocking", [True, False])
@pytest.mark.parametrize(
    "timeout",
    [-1e300, -(2**70), -9.3e9, 9.3e9, 1e10, 2**63, 2**100, float("inf"), float("-inf"), 9.2e9],
)
def test_lock_acquire_refuses_an_out_of_range_timeout_as_thread_lock(
    blocking: bool, timeout: float
) -> None:
    """A timeout beyond what _thread.lock converts (about 9.2e9 s either way) is its
    OverflowError whatever else is wrong; _speedups.Lock said ValueError when blocking was
    False or the value negative (13 of these 20 differed)."""
    speedups: Any = _accel.speedups
    assert _error_of(speedups.Lock, blocking, timeout) is _error_of(
        threading.Lock, blocking, timeout
    )


# -- a call that finds the lock held: its timeout is a deadline for the wait too -------------
#
# An emulated connection's send and receive each hold a lock (frames never interleave); a call
# that finds it held waits for it within the call's deadline, and that same deadline then bounds
# the call's I/O (CPython's deadline-once sock_call_ex).  Non-blocking, it never waits: it raises
# BlockingIOError, as a native socket's call does whatever another thread's call is doing.
# Before, the Python methods took the locks with a plain `with`: a recv_message under
# settimeout(0.3) behind another thread's untimed receive took 3.3 s, and a forked child whose
# parent had a thread inside send waited for ever (attack-lock's finding, notes/attack-lock.md).

_IMPLEMENTATIONS = [pytest.param("native", id="native"), pytest.param("emulated", id="emulated")]
#: The emulated connections' lock types: the compiled one where the accelerator runs, and
#: threading.Lock (the pure path's; forced on a compiled build, the C methods then always hand
#: the call to the Python methods, which take it).
_LOCK_TYPES = [
    pytest.param("speedups", id="speedups-lock", marks=needs_compiled),
    pytest.param("threading", id="threading-lock"),
]


def _emulated_pair(lock_type: str) -> Tuple[Any, Any]:
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    if lock_type == "threading":
        for conn in (a, b):
            conn._send_lock, conn._recv_lock = threading.Lock(), threading.Lock()
            conn._send_try = functools.partial(conn._send_lock.acquire, False)
            conn._recv_try = functools.partial(conn._recv_lock.acquire, False)
            sock, _, _, *rest = conn._inline_args
            conn._inline_args = (sock, conn._send_lock, conn._recv_lock, *rest)
    return a, b


def _in_thread(call: Callable[[], Any]) -> Tuple[threading.Thread, List[Any]]:
    """``call()`` in a new thread (SIGALRM blocked there: it is aimed at the main thread);
    its outcome, a value or the exception, lands in the list."""
    outcome: List[Any] = []

    def run() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        try:
            outcome.append(call())
        except BaseException as exc:  # the test reads it
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)  # a broken lock must not hang the run
    thread.start()
    return thread, outcome


@contextlib.contextmanager
def _rescue(conn: Any, after: float = 3.0) -> Iterator[None]:
    """Close ``conn`` if the block is still running ``after`` seconds on: where the code under
    test waits for ever, the test then fails (EBADF, elapsed time) instead of hanging."""
    timer = threading.Timer(after, conn.close)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join(5)


def _fill(conn: Any) -> None:
    """Fill ``conn``'s socket until a send would block (its peer does not read)."""
    conn._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn.settimeout(0)
    with pytest.raises(BlockingIOError):
        for _ in range(10000):
            conn.send(b"x" * 1000)
    conn.settimeout(None)


def _drain(conn: Any, until: Callable[[], bool]) -> List[bytes]:
    """Receive on ``conn`` until ``until()`` and nothing more is queued (bounded: 10 s)."""
    got: List[bytes] = []
    conn.settimeout(0.2)
    stop = time.monotonic() + 10
    while time.monotonic() < stop:
        try:
            message = conn.recv_message(1 << 21)
        except TimeoutError:
            if until():
                return got
            continue
        assert message is not None
        got.append(message.data)
    raise AssertionError("still receiving after 10 s")


@pytest.mark.parametrize("implementation", _IMPLEMENTATIONS)
def test_a_timed_receive_behind_an_untimed_one_keeps_its_deadline(implementation: str) -> None:
    """Another thread waits in an untimed recv_message; this thread's recv_message under
    settimeout(0.3) must end by its deadline, as on a native connection (measured on the
    emulated one, both paths: 3.3 s, the other call's whole wait)."""
    a, b = _seqpacket.seqpacket_pair(implementation=implementation)
    with a, b:
        first: list[Any] = []
        waiting = threading.Thread(target=lambda: first.append(b.recv_message()))
        waiting.start()
        late = threading.Timer(1.5, lambda: a.send(b"for the first call"))
        try:
            time.sleep(0.1)  # it is inside its wait (holding the receive lock, if any)
            late.start()
            b.settimeout(0.3)
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                b.recv_message()
            elapsed = time.monotonic() - start
        finally:
            late.join(5)
            waiting.join(5)
        assert [m.data for m in first] == [b"for the first call"]
        assert elapsed < 1.0, f"a 0.3 s receive took {elapsed:.2f} s behind another call"


@pytest.mark.parametrize("implementation", _IMPLEMENTATIONS)
def test_a_forked_child_keeps_the_deadline_of_a_send_the_parent_was_in(
    implementation: str,
) -> None:
    """fork() while a thread is inside send on a full socket (the send lock held, by a thread
    the child does not have): the child's send under settimeout(0.3) must end by its
    deadline (TimeoutError), as on a native connection; emulated, it waited for ever."""
    a, b = _seqpacket.seqpacket_pair(implementation=implementation)
    with a, b:
        _fill(a)
        sender = threading.Thread(target=lambda: a.send(b"y" * 1000))
        sender.start()
        read, write = os.pipe()
        try:
            time.sleep(0.1)  # the thread is inside send, waiting for room
            pid = os.fork()
            if pid == 0:  # pragma: no cover -- the child
                try:
                    a.settimeout(0.3)
                    start = time.monotonic()
                    try:
                        a.send(b"child")
                        outcome = "sent"
                    except TimeoutError:
                        outcome = "TimeoutError"
                    os.write(write, f"{outcome} {time.monotonic() - start:.2f}".encode())
                finally:
                    os._exit(0)
            os.close(write)
            write = -1
            answered = select.select([read], [], [], 2.0)[0]
            if not answered:
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            answer = os.read(read, 100).decode() if answered else "no answer in 2 s"
        finally:
            os.close(read)
            if write >= 0:
                os.close(write)
            b.settimeout(5)
            while sender.is_alive():
                b.recv_message()
                sender.join(0.01)
        outcome, _, seconds = answer.partition(" ")
        assert outcome == "TimeoutError" and float(seconds) < 1.0, answer


@pytest.mark.parametrize("lock_type", _LOCK_TYPES)
@pytest.mark.parametrize("method", ["recv_message", "peek"])
def test_one_deadline_bounds_the_wait_for_the_lock_and_the_read_after_it(
    method: str, lock_type: str
) -> None:
    """Another thread's untimed receive holds the lock for 0.2 s (its message arrives then);
    this thread's call under settimeout(0.3) then finds nothing to read: it must end 0.3 s
    after it started, not 0.3 s after it got the lock (0.5 s)."""
    a, b = _emulated_pair(lock_type)
    with a, b:
        holder, first = _in_thread(b.recv_message)
        time.sleep(0.05)  # the holder is in its wait, holding the receive lock
        late = threading.Timer(0.2, lambda: a.send(b"for the holder"))
        late.start()
        b.settimeout(0.3)
        start = time.monotonic()
        with _rescue(b), pytest.raises(TimeoutError):
            getattr(b, method)()
        elapsed = time.monotonic() - start
        late.join(5)
        holder.join(5)
        assert [m.data for m in first] == [b"for the holder"]
        assert 0.28 <= elapsed < 0.45, f"a 0.3 s {method} took {elapsed:.3f} s"
        a.send(b"next")  # nothing of the connection's state was changed by the timeout
        assert getattr(b, method)().data == b"next"


@pytest.mark.parametrize("lock_type", _LOCK_TYPES)
def test_a_timed_flush_behind_a_send_that_holds_the_lock_keeps_its_deadline(
    lock_type: str,
) -> None:
    """A thread's untimed send of a large message to a peer that does not read holds the send
    lock while it waits to finish it; flush() under settimeout(0.3) in another thread waits
    for that lock no longer than its deadline.  Then the peer reads: every byte arrives once."""
    a, b = _emulated_pair(lock_type)
    with a, b:
        a._sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        big = bytes(range(256)) * 2048  # 512 KiB: sent in parts
        holder, sent = _in_thread(lambda: a.send(big))
        deadline = time.monotonic() + 5
        while not a._unsent and time.monotonic() < deadline:
            time.sleep(0.01)  # the holder sent a first part and waits, holding the lock
        assert a._unsent and holder.is_alive()
        a.settimeout(0.3)
        start = time.monotonic()
        with _rescue(a), pytest.raises(TimeoutError):
            a.flush()
        elapsed = time.monotonic() - start
        assert 0.28 <= elapsed < 0.45, f"a 0.3 s flush took {elapsed:.3f} s"
        got = _drain(b, lambda: not holder.is_alive())
        holder.join(5)
        assert sent == [len(big)] and got == [big]


@pytest.mark.parametrize("lock_type", _LOCK_TYPES)
@pytest.mark.parametrize("method", ["send", "recv_message", "peek"])
def test_a_non_blocking_call_never_waits_for_a_lock_another_thread_holds(
    method: str, lock_type: str
) -> None:
    """settimeout(0) and the lock held by another thread's untimed call (waiting for the
    peer): BlockingIOError at once, as a native non-blocking call never waits for another
    thread's -- and nothing of the connection changes (every message arrives once, in order;
    the refused send's never)."""
    a, b = _emulated_pair(lock_type)
    with a, b:
        if method == "send":
            _fill(a)
            holder, outcome = _in_thread(lambda: a.send(b"held"))
            conn = a
        else:
            holder, outcome = _in_thread(b.recv_message)
            conn = b
        time.sleep(0.05)  # the holder waits, holding the lock
        conn.settimeout(0)
        start = time.monotonic()
        with _rescue(conn), pytest.raises(BlockingIOError):
            getattr(conn, method)(b"refused") if method == "send" else getattr(conn, method)()
        elapsed = time.monotonic() - start
        assert elapsed < 0.05, f"a non-blocking {method} waited {elapsed:.3f} s for the lock"
        if method == "send":
            got = _drain(b, lambda: not holder.is_alive())
            assert outcome == [4]
            assert got[-1] == b"held" and b"refused" not in got
            assert set(got[:-1]) == {b"x" * 1000}
        else:
            a.send(b"first")
            holder.join(5)
            assert [m.data for m in outcome] == [b"first"]
            a.send(b"second")
            conn.settimeout(1)
            assert conn.recv_message().data == b"second"
        holder.join(5)


class _Boom(Exception):
    """What the test's signal handler raises."""


@pytest.mark.parametrize("lock_type", _LOCK_TYPES)
def test_a_raising_handler_during_timed_waits_for_the_lock_never_leaves_it_held(
    lock_type: str,
) -> None:
    """A thread takes and releases the receive lock over and over; the main thread makes timed
    receives (2 ms, nothing to read) while SIGALRM, aimed at it every 3 ms, runs a handler that
    raises.  Each handler lands somewhere: in the try or the wait for the lock (the wait must
    end, lock not taken), right after the lock was taken, in the wait for data, in the release.
    Afterwards every lock is free and a call works at once: no interruption left one taken.
    (One landing between a read and the recording of its result aborts the connection, as
    documented: the storm goes on with a new one.)"""
    pairs = [_emulated_pair(lock_type)]
    stop = threading.Event()

    def cycle() -> None:
        while not stop.is_set():
            with pairs[-1][1]._recv_lock:
                time.sleep(0.002)
            time.sleep(0.0005)

    main = threading.get_ident()

    def fire() -> None:
        while not stop.wait(0.003):
            signal.pthread_kill(main, signal.SIGALRM)

    armed = [False]

    def boom(signum: int, frame: Any) -> None:
        if armed[0]:  # once per arming: never in the loop's own bookkeeping
            armed[0] = False
            raise _Boom

    previous = signal.signal(signal.SIGALRM, boom)
    cycler, _ = _in_thread(cycle)
    firer, _ = _in_thread(fire)
    outcomes = {"boom": 0, "timeout": 0, "aborted": 0, "stray": 0}
    end = time.monotonic() + 1.5
    try:
        for _ in range(2000):
            if time.monotonic() > end:
                break
            b = pairs[-1][1]
            if b._broken is not None:
                outcomes["aborted"] += 1
                pairs.append(_emulated_pair(lock_type))
                continue
            b.settimeout(0.002)
            try:
                armed[0] = True
                try:
                    b.recv_message()
                except _Boom:
                    outcomes["boom"] += 1
                except TimeoutError:
                    outcomes["timeout"] += 1
                except ConnectionAbortedError:
                    pass  # counted at the next round, which replaces the connection
                finally:
                    armed[0] = False
            except _Boom:  # landed after the call, in the test's own code
                outcomes["stray"] += 1
    finally:
        armed[0] = False  # no handler raises from here on
        stop.set()
        cycler.join(5)
        firer.join(5)
        signal.signal(signal.SIGALRM, previous)
    try:
        assert outcomes["boom"] > 20 and outcomes["timeout"] > 5, outcomes
        assert outcomes["aborted"] < 20, outcomes
        held = [i for i, (_, b) in enumerate(pairs) if b._recv_lock.locked()]
        assert not held, f"receive locks left held: {held} ({outcomes})"
        a, b = pairs[-1]
        if b._broken is None:
            a.send(b"after the storm")
            b.settimeout(0.5)
            start = time.monotonic()
            assert b.recv_message().data == b"after the storm"
            assert time.monotonic() - start < 0.1
    finally:
        for a, b in pairs:
            a.close()
            b.close()


@pytest.mark.parametrize("lock_type", _LOCK_TYPES)
@pytest.mark.parametrize("method", ["send", "recv_message"])
def test_closing_while_a_timed_call_waits_for_the_lock_ends_it_with_ebadf(
    method: str, lock_type: str
) -> None:
    """One thread's untimed call holds the lock (a send on a full socket, a receive with
    nothing to read); another's call under settimeout(5) waits for the lock; close() from a
    third: both end with EBADF ("the connection is closed") within a second, not at the
    deadline, and the lock is free."""
    a, b = _emulated_pair(lock_type)
    conn = a if method == "send" else b
    if method == "send":
        _fill(a)
    call = (lambda: conn.send(b"y")) if method == "send" else conn.recv_message
    holder, held = _in_thread(call)
    time.sleep(0.05)
    conn.settimeout(5)
    waiter, waited = _in_thread(call)
    time.sleep(0.1)  # the waiter waits for the lock
    start = time.monotonic()
    conn.close()
    holder.join(2)
    waiter.join(2)
    elapsed = time.monotonic() - start
    b.close()
    a.close()
    assert not holder.is_alive() and not waiter.is_alive(), f"still waiting {elapsed:.2f} s"
    for outcome in (held, waited):
        assert isinstance(outcome[0], OSError) and outcome[0].errno == errno.EBADF, outcome
    assert elapsed < 1.0
    assert not conn._send_lock.locked() and not conn._recv_lock.locked()
