"""The emulated connections' lock type, ``udscompat._speedups.Lock``, against threading.Lock.

Where the accelerator runs, ``_EmulatedConn._send_lock`` and ``_recv_lock`` are
``_speedups.Lock`` objects: the compiled send and recv_message take them in C without a
Python call.  For Python code (the reference methods, ``_holding``, ``with``) it must be
threading.Lock: the same arguments, errors, waits, timeouts as deadlines, and signal
handling (a handler runs during a blocking wait; one that raises ends the wait with the
lock not taken; a quiet one lets it go on with what is left of the timeout).  Each test
here runs on both types where they must agree, with real threads and real signals
(``signal.pthread_kill`` aimed at the waiting thread, so no other thread takes them).
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import threading
import time
import weakref
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest

from udscompat import _seqpacket
from udscompat._framing import HEADER, KIND_DATA

from .test_emulated_speedups import pair_and_lock

speedups = pytest.importorskip("udscompat._speedups", reason="the accelerator is not built")
Lock = speedups.Lock
TYPES: Dict[str, Callable[[], Any]] = {"threading": threading.Lock, "speedups": Lock}
both_types = pytest.mark.parametrize("make", list(TYPES.values()), ids=list(TYPES))
_Emulated = _seqpacket._EmulatedConn
COMPILED = _Emulated.send is not _seqpacket.PYTHON_EMULATED_SEND


class Interrupted(Exception):
    """What the raising signal handler raises."""


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except Exception as exc:
        return type(exc)


# -- arguments -------------------------------------------------------------------------------

ARGUMENTS: List[Tuple[Tuple[Any, ...], Dict[str, Any], str]] = [
    # (args, kwargs, the parameter an error must name, or "")
    ((), {}, ""),
    ((False,), {}, ""),
    ((True,), {}, ""),
    ((1, 0), {}, ""),
    ((True, 0.01), {}, ""),
    ((True, -1), {}, ""),
    ((True, -1.0), {}, ""),
    ((False, -1), {}, ""),
    ((True, True), {}, ""),
    ((), {"blocking": False}, ""),
    ((), {"timeout": 0.0}, ""),
    ((), {"timeout": -1, "blocking": False}, ""),
    ((False, 0.01), {}, "blocking"),
    ((True, -2), {}, "timeout"),
    ((True, -1.5), {}, "timeout"),
    ((True, float("nan")), {}, "timeout"),
    ((True, 1e300), {}, "timeout"),
    ((True, float("inf")), {}, "timeout"),
    ((True, 10**30), {}, "timeout"),
    ((True, "1"), {}, "timeout"),
    ((True, None), {}, "timeout"),
    (("x", 0), {}, "blocking"),
    ((0.0,), {}, "blocking"),
    ((), {"bogus": 1}, "bogus"),
    ((True,), {"blocking": False}, "blocking"),
    ((True, 0, 3), {}, "at most 2"),
]


@pytest.mark.parametrize(("args", "kwargs", "names"), ARGUMENTS)
def test_acquire_takes_what_threading_lock_takes(
    args: Tuple[Any, ...], kwargs: Dict[str, Any], names: str
) -> None:
    """The same results and exception types as threading.Lock's acquire, errors naming
    the parameter at fault; a refused call leaves the lock free."""
    outcomes = {}
    for name, make in TYPES.items():
        lock = make()
        outcomes[name] = _outcome(lambda: lock.acquire(*args, **kwargs))  # noqa: B023
        assert lock.locked() is (outcomes[name] is True)
    assert outcomes["speedups"] == outcomes["threading"]
    if names:
        with pytest.raises(outcomes["speedups"], match=names):
            Lock().acquire(*args, **kwargs)


@both_types
def test_release_with_and_locked_as_threading_lock(make: Callable[[], Any]) -> None:
    lock = make()
    assert lock.locked() is False
    with pytest.raises(RuntimeError):
        lock.release()
    assert lock.acquire() is True
    assert lock.locked() is True and "locked" in repr(lock) and "unlocked" not in repr(lock)
    assert lock.acquire(False) is False and lock.acquire(True, 0) is False
    assert lock.acquire(timeout=0.01) is False
    other = threading.Thread(target=lock.release)  # any thread may release it
    other.start()
    other.join()
    assert lock.locked() is False and "unlocked" in repr(lock)
    with pytest.raises(RuntimeError):
        lock.release()
    with pytest.raises(KeyError), lock as entered:
        assert entered is True and lock.locked()
        raise KeyError("left by an exception")
    assert lock.locked() is False
    assert list(map(lock.acquire, _seqpacket._NO_WAIT)) == [True]  # _holding's idiom
    assert list(map(lock.acquire, _seqpacket._NO_WAIT)) == [False]
    lock.release()


@both_types
def test_weak_references_yes_pickles_and_copies_no(make: Callable[[], Any]) -> None:
    import copy

    lock = make()
    ref = weakref.ref(lock)
    assert ref() is lock
    with pytest.raises(TypeError):
        pickle.dumps(lock)
    with pytest.raises(TypeError):
        copy.copy(lock)
    lock.acquire()
    del lock  # freed while held: released first
    assert ref() is None


def test_the_type_is_not_a_base_and_takes_no_arguments() -> None:
    with pytest.raises(TypeError):
        Lock(1)
    with pytest.raises(TypeError):
        type("Sub", (Lock,), {})


# -- threads ---------------------------------------------------------------------------------


@both_types
def test_contending_threads_never_share_it(make: Callable[[], Any]) -> None:
    """Four threads, each way of taking it: never two inside, no update lost."""
    lock = make()
    state = {"count": 0, "inside": 0, "overlaps": 0}
    rounds = 300

    def inside() -> None:
        state["inside"] += 1
        if state["inside"] != 1:
            state["overlaps"] += 1
        count = state["count"]
        time.sleep(0)  # let another thread in if the lock does not keep it out
        state["count"] = count + 1
        state["inside"] -= 1

    def with_statement() -> None:
        for _ in range(rounds):
            with lock:
                inside()

    def spinning() -> None:
        for _ in range(rounds):
            while not lock.acquire(False):
                time.sleep(0)
            try:
                inside()
            finally:
                lock.release()

    def timed() -> None:
        for _ in range(rounds):
            while not lock.acquire(True, 0.0005):
                pass
            try:
                inside()
            finally:
                lock.release()

    def holding() -> None:
        done = 0
        while done < rounds:
            got: List[bool] = []
            try:
                got.extend(map(lock.acquire, _seqpacket._NO_WAIT))
                if got[0]:
                    inside()
                    done += 1
            finally:
                if got and got[0]:
                    lock.release()

    threads = [threading.Thread(target=t) for t in (with_statement, spinning, timed, holding)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert state == {"count": 4 * rounds, "inside": 0, "overlaps": 0}
    assert not lock.locked()


# -- signals during a blocking acquire --------------------------------------------------------


class _Holder:
    """Another thread holding ``lock`` until ``release()`` (signals blocked there)."""

    def __init__(self, lock: Any) -> None:
        self.lock = lock
        self._go = threading.Event()
        self._taken = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        self.lock.acquire()
        self._taken.set()
        self._go.wait(30)
        self.lock.release()

    def __enter__(self) -> _Holder:
        self.thread.start()
        assert self._taken.wait(10)
        return self

    def release(self) -> None:
        self._go.set()
        self.thread.join(10)

    def __exit__(self, *exc: Any) -> None:
        self.release()


@pytest.fixture
def signals() -> Iterator[Callable[..., _Signaller]]:
    """``signals(handler, first, every=None)``: SIGUSR1 to this thread after ``first`` s
    (then every ``every`` s) until the test ends; the handler restored after."""
    started: List[_Signaller] = []
    previous = signal.getsignal(signal.SIGUSR1)

    def start(handler: Callable[..., Any], first: float, every: Any = None) -> _Signaller:
        signal.signal(signal.SIGUSR1, handler)
        sender = _Signaller(threading.get_ident(), first, every)
        started.append(sender)
        sender.thread.start()
        return sender

    yield start
    for sender in started:
        sender.stop()
    signal.signal(signal.SIGUSR1, previous)


class _Signaller:
    def __init__(self, target: int, first: float, every: Any) -> None:
        self.target, self.first, self.every = target, first, every
        self.sent = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
        delay = self.first
        while not self._stop.wait(delay):
            signal.pthread_kill(self.target, signal.SIGUSR1)
            self.sent += 1
            if self.every is None:
                return
            delay = self.every

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


@both_types
@pytest.mark.parametrize("timeout", [-1, 20.0])
def test_a_raising_handler_ends_the_wait_without_the_lock(
    make: Callable[[], Any], timeout: float, signals: Callable[..., _Signaller]
) -> None:
    lock = make()

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted

    with _Holder(lock) as holder:
        signals(handler, 0.1)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            lock.acquire(True, timeout)
        assert time.monotonic() - start < 5, "the wait went on after the handler raised"
        holder.release()
        assert not lock.locked(), "the interrupted acquire took the lock"
    assert lock.acquire(False)
    lock.release()


@both_types
def test_a_quiet_handler_lets_the_wait_go_on(
    make: Callable[[], Any], signals: Callable[..., _Signaller]
) -> None:
    lock = make()
    calls: List[int] = []
    with _Holder(lock) as holder:
        signals(lambda *_: calls.append(1), 0.02, 0.02)
        threading.Timer(0.4, holder.release).start()
        assert lock.acquire() is True
    assert len(calls) >= 3, "no signal interrupted the wait"
    lock.release()


@both_types
def test_the_timeout_is_a_deadline_across_quiet_signals(
    make: Callable[[], Any], signals: Callable[..., _Signaller]
) -> None:
    """Signals every 20 ms during acquire(timeout=0.3): False after 0.3 s, not a timeout
    started again after each handler (that would wait until the holder let go)."""
    lock = make()
    calls: List[int] = []
    with _Holder(lock) as holder:
        signals(lambda *_: calls.append(1), 0.02, 0.02)
        threading.Timer(3.0, holder.release).start()
        start = time.monotonic()
        assert lock.acquire(timeout=0.3) is False
        elapsed = time.monotonic() - start
    assert 0.29 <= elapsed < 2.0
    assert len(calls) >= 3, "no signal interrupted the wait"


# -- fork --------------------------------------------------------------------------------------


@both_types
def test_after_fork_as_threading_lock(make: Callable[[], Any]) -> None:
    """The child inherits each lock's state (one held at fork stays held there, free ones
    work), as threading.Lock's; _at_fork_reinit gives a free one."""
    held, free = make(), make()
    held.acquire()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover -- the child
        try:
            answer = [held.locked(), held.acquire(False), free.acquire(False), free.locked()]
            held._at_fork_reinit()
            answer += [held.locked(), held.acquire(False)]
            os.write(write, repr(answer).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        got = pipe.read()
    os.waitpid(pid, 0)
    assert got == repr([True, False, True, True, False, True]).encode()
    held.release()


# -- the connection's locks -------------------------------------------------------------------


def test_emulated_connections_use_it_where_the_compiled_methods_run() -> None:
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    with a, b:
        expected = Lock if COMPILED else type(threading.Lock())
        assert type(a._send_lock) is expected and type(a._recv_lock) is expected


@pytest.mark.parametrize("method", ["send", "recv_message"])
def test_a_raising_handler_while_a_call_waits_for_the_lock(
    method: str, signals: Callable[..., _Signaller]
) -> None:
    """A call that finds the lock held waits for it (the Python method's ``with``); a
    raising handler then ends the call with nothing sent or read and the connection fine."""
    a, b, lock = pair_and_lock(method)
    with a, b:
        a.send(b"first")
        call = (lambda: a.send(b"second")) if method == "send" else b.recv_message

        def handler(signum: int, frame: Any) -> None:
            raise Interrupted

        with _Holder(lock):
            signals(handler, 0.1)
            start = time.monotonic()
            with pytest.raises(Interrupted):
                call()
            assert time.monotonic() - start < 5
            assert lock.locked()
        assert not lock.locked()
        if method == "send":
            assert a.send(b"second") == 6
            assert [b.recv_message().data, b.recv_message().data] == [b"first", b"second"]
        else:
            assert b.recv_message().data == b"first"
        assert not a._sending and not b._receiving


def test_a_compiled_send_waiting_for_room_holds_the_lock() -> None:
    """A timed send on a full socket waits (in _start_frame) with the send lock taken in C:
    other threads see it held and cannot take it; it is free once the frame is out."""
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    small = HEADER.pack(1, 0, KIND_DATA, 0) + b"f"
    while True:  # whole frames until the socket is full (each one write, all or none)
        try:
            ours.send(small)
        except BlockingIOError:
            break
    conn = _seqpacket.SeqpacketConn.from_socket(ours)
    with raw, conn:
        assert conn.implementation == "emulated"
        conn.settimeout(10)
        results: List[Any] = []
        worker = threading.Thread(target=lambda: results.append(conn.send(b"s" * 1000)))
        worker.start()
        time.sleep(0.2)
        try:
            assert worker.is_alive() and not results
            assert conn._send_lock.locked() and not conn._send_lock.acquire(False)
        finally:
            raw.settimeout(5)
            while worker.is_alive():
                raw.recv(1 << 16)
                worker.join(0.01)
        assert results == [1000]
        assert not conn._send_lock.locked() and conn._send_lock.acquire(False)
        conn._send_lock.release()
