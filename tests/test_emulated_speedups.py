"""The emulation's compiled send and recv_message against its Python methods.

Where the accelerator runs, ``_EmulatedConn.send`` and ``recv_message`` are C methods
(udscompat/_speedups.c, ``configure_emulated``); the Python methods stay as
``_seqpacket.PYTHON_EMULATED_SEND`` / ``PYTHON_EMULATED_RECV_MESSAGE``, the reference
(what ``UDSCOMPAT_SPEEDUPS=0`` runs) that the C hands every uncommon call to.  Hypothesis
drives both with the same input over real sockets against a raw-socket peer --
well-formed, split and hostile frames, descriptors, acknowledgements asked and owed,
partial sends to a slow reader, timeouts, bad arguments -- and compares every result,
exception and state field.  Real signals try the C windows: an LD_PRELOAD interposer
raises SIGUSR1 inside the system call (or fails it with EINTR), and a profile hook
raises at every Python continuation the C code calls.
"""

from __future__ import annotations

import array
import errno
import functools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from udscompat import Message, SeqpacketConn, _seqpacket
from udscompat._framing import CLAIM, FLAG_ACK_REQUESTED, FLAG_CLAIM, HEADER, KIND_ACK, KIND_DATA

from .conftest import c_compiler, needs_c_compiler, only_on, open_fds, same_file
from .test_io_attacks import Interrupts, _program

ROOT = Path(__file__).resolve().parent.parent
_Emulated = _seqpacket._EmulatedConn
COMPILED = _Emulated.send is not _seqpacket.PYTHON_EMULATED_SEND
needs_compiled = pytest.mark.skipif(
    not COMPILED,
    reason="the compiled accelerator is not in use (not built, or UDSCOMPAT_SPEEDUPS=0)",
)
#: Each path's (send, recv_message), called as functions with the connection first.
PATHS: Dict[str, Tuple[Callable[..., Any], Callable[..., Any]]] = {
    "compiled": (_Emulated.send, _Emulated.recv_message),
    "pure": (_seqpacket.PYTHON_EMULATED_SEND, _seqpacket.PYTHON_EMULATED_RECV_MESSAGE),
}
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def test_the_compiled_methods_are_installed_where_the_accelerator_runs() -> None:
    from udscompat import _accel

    assert (_accel.speedups is not None) == COMPILED
    if COMPILED:
        assert type(_Emulated.send).__name__ == "method_descriptor"
        assert type(_Emulated.recv_message).__name__ == "method_descriptor"


# -- what a call did ------------------------------------------------------------------------


def _state(conn: Any) -> Tuple[Any, ...]:
    """Every field of the emulation's state a call may change."""
    decoder = conn._decoder
    broken = conn._broken
    return (
        bytes(conn._unsent),
        conn._sending,
        conn._receiving,
        None if broken is None else (type(broken).__name__, str(broken)),
        conn._closed,
        conn.fileno() < 0,
        decoder.idle,
        decoder.ack_requests,
        decoder.held_fds,
        conn._acks_sent,
        conn._cmsgs is None,
        conn._peeked is None,
    )


def _outcome(call: Callable[[], Any], pipe_r: int) -> Any:
    """A call's result (a Message's descriptors checked and closed) or its exception."""
    try:
        value = call()
    except Exception as exc:  # every exception is compared, its words too
        return (
            "raised",
            type(exc).__name__,
            str(exc),
            getattr(exc, "data", None),
            getattr(exc, "closed_fds", None),
        )
    if isinstance(value, Message):
        for fd in value.fds:
            assert same_file(fd, pipe_r) and not os.get_inheritable(fd)
            os.close(fd)
        return (type(value), value.data, len(value.fds), value.truncated, value.credentials)
    return value


def _drain(raw: socket.socket, pipe_r: int) -> Tuple[bytes, int]:
    """What the peer can read now: the bytes and how many descriptors came (closed)."""
    raw.setblocking(False)
    out = bytearray()
    fds = 0
    while True:
        try:
            data, ancdata, _, _ = raw.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 512))
        except BlockingIOError:
            break
        except ConnectionResetError:  # closed with our writes unread (Linux)
            out += b"<reset>"
            break
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                numbers = array.array("i", payload[: len(payload) - len(payload) % 4])
                for fd in numbers:
                    assert same_file(fd, pipe_r)
                    os.close(fd)
                fds += len(numbers)
        if not data:
            break
        out += data
    return bytes(out), fds


# -- a raw peer writes, the connection receives (and sends what it owes) -------------------


def _frame(size: int, nfds: int, kind: int, flags: int) -> bytes:
    body = bytes([size % 251]) * size
    if flags & FLAG_CLAIM:
        body = CLAIM.pack(os.getpid(), os.getuid(), os.getgid()) + body
    if kind == KIND_ACK:
        return HEADER.pack(size, nfds, kind, flags)
    return HEADER.pack(len(body), nfds, kind, flags) + body


frames = st.one_of(
    # well-formed DATA frames, most of them plain (what the C path takes itself)
    st.builds(
        lambda size, nfds, flags: (_frame(size, nfds, KIND_DATA, flags), nfds),
        st.sampled_from([0, 1, 7, 64, 4095, 4096, 65536, 70000]),
        st.sampled_from([0, 0, 0, 1, 2]),
        st.sampled_from([0, 0, 0, FLAG_ACK_REQUESTED, FLAG_CLAIM]),
    ),
    # hostile: descriptors that do not match the header, unknown kinds and flags, bad
    # acknowledgements, garbage
    st.builds(
        lambda size, nfds, kind, flags, attached: (_frame(size, nfds, kind, flags), attached),
        st.sampled_from([0, 1, 64]),
        st.sampled_from([0, 1, 300]),
        st.sampled_from([KIND_DATA, KIND_ACK, 7]),
        st.sampled_from([0, 0x80, FLAG_CLAIM]),
        st.integers(0, 2),
    ),
    # a header past max_message_size (and a body that never comes)
    st.builds(
        lambda flags: (HEADER.pack(2 << 20, 0, KIND_DATA, flags) + b"x", 0), st.sampled_from([0, 1])
    ),
    st.builds(
        lambda junk, attached: (junk, attached),
        st.binary(min_size=1, max_size=20),
        st.integers(0, 1),
    ),
)


@st.composite
def receiving_plans(draw: Any) -> List[Tuple[Any, ...]]:
    """Writes of a raw peer (frames, split anywhere; descriptors with a piece) and calls."""
    plan: List[Tuple[Any, ...]] = []
    total = 0
    for frame, nfds in draw(st.lists(frames, min_size=1, max_size=6)):
        if total + len(frame) > 150000:
            break
        total += len(frame)
        cuts = sorted(set(draw(st.lists(st.integers(1, max(1, len(frame) - 1)), max_size=2))))
        pieces = [frame[i:j] for i, j in zip([0, *cuts], [*cuts, len(frame)]) if frame[i:j]]
        for index, piece in enumerate(pieces):
            plan.append(("write", piece, nfds if index == 0 else 0))
            for _ in range(draw(st.integers(0, 2))):
                plan.append(
                    (
                        "recv",
                        draw(st.sampled_from([0, 5, 64, 65536, 300000])),
                        draw(st.integers(0, 3)),
                    )
                )
            if draw(st.integers(0, 9)) == 0:
                plan.append(("send", draw(st.sampled_from([0, 3, 5000]))))
    if draw(st.booleans()):
        plan.append(("shut",))
    plan.extend([("recv", 65536, 3)] * 3)
    return plan


def _receiving_run(
    path: str, plan: List[Tuple[Any, ...]], timeout: float, pipe_r: int, limit: int
) -> List[Any]:
    send, recv = PATHS[path]
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = _Emulated(ours, max_message_size=limit)
    conn.settimeout(timeout)
    # Blocking writes (at most 150000 bytes wait unread, within the socket's send buffer): in
    # timeout mode CPython polls for writability first, which a Unix stream socket reports
    # only while under a quarter of its buffer is queued.
    raw.setblocking(True)
    log: List[Any] = []
    try:
        for step in plan:
            if step[0] == "write":
                _, data, nfds = step
                rights = array.array("i", [pipe_r] * nfds)
                try:
                    ancdata = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if nfds else []
                    sent = raw.sendmsg([data], ancdata)
                    raw.sendall(data[sent:])
                    log.append("written")
                except OSError as exc:
                    log.append(("write failed", exc.errno))  # the connection broke and closed
            elif step[0] == "recv":
                log.append(_outcome(functools.partial(recv, conn, step[1], step[2]), pipe_r))
            elif step[0] == "send":
                log.append(_outcome(functools.partial(send, conn, b"s" * step[1]), pipe_r))
            else:
                raw.shutdown(socket.SHUT_WR)
            log.append(_state(conn))
        log.append(_drain(raw, pipe_r))
    finally:
        conn.close()
        raw.close()
    return log


@needs_compiled
@SETTINGS
@given(
    plan=receiving_plans(),
    timeout=st.sampled_from([0.0, 0.0, 0.005]),
    limit=st.sampled_from([1 << 20, 1 << 20, 4095]),
)
@example(
    plan=[("write", _frame(64, 0, KIND_DATA, 0), 0), ("recv", 64, 0), ("recv", 65536, 0)],
    timeout=0.0,
    limit=1 << 20,
)
@example(
    plan=[("write", _frame(70000, 0, KIND_DATA, 0), 0), ("recv", 5, 0), ("recv", 65536, 0)],
    timeout=0.0,
    limit=1 << 20,
)
@example(
    plan=[("write", _frame(4096, 0, KIND_DATA, 0), 0), ("recv", 64, 0)], timeout=0.0, limit=4095
)
@example(
    plan=[
        ("write", _frame(5, 2, KIND_DATA, 0), 2),
        ("recv", 64, 1),
        ("write", _frame(5, 2, KIND_DATA, FLAG_ACK_REQUESTED), 2),
        ("recv", 3, 2),
    ],
    timeout=0.0,
    limit=1 << 20,
)
@example(
    plan=[
        ("write", _frame(3, 1, KIND_DATA, FLAG_ACK_REQUESTED), 1),
        ("recv", 64, 1),
        ("send", 5),
        ("write", _frame(0, 0, KIND_DATA, 0) + _frame(1, 0, KIND_DATA, 0), 0),
        ("recv", 64, 0),
        ("recv", 64, 0),
        ("shut",),
        ("recv", 64, 0),
    ],
    timeout=0.0,
    limit=1 << 20,
)
def test_both_paths_receive_the_same_from_a_hostile_peer(
    plan: List[Tuple[Any, ...]], timeout: float, limit: int, pipe: Tuple[int, int]
) -> None:
    """Same writes, same calls: same messages, errors, state, acknowledgements; no leak."""
    before = open_fds()
    compiled = _receiving_run("compiled", plan, timeout, pipe[0], limit)
    pure = _receiving_run("pure", plan, timeout, pipe[0], limit)
    assert compiled == pure
    assert open_fds() == before


# -- the connection sends to a slow raw reader -----------------------------------------------


def _payload(form: str, size: int) -> Any:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    if form == "bytearray":
        return bytearray(data)
    if form == "memoryview":
        return memoryview(data)
    if form == "ints":
        return memoryview(array.array("i", range(size // 4)))
    if form == "strided":
        return memoryview(data)[::2]
    if form == "list":
        return [data[:3], data[3:]]
    if form == "str":
        return "text"
    return data


sends = st.tuples(
    st.just("send"),
    st.sampled_from(
        ["bytes", "bytes", "bytearray", "memoryview", "ints", "strided", "list", "str"]
    ),
    st.sampled_from([0, 1, 64, 4095, 4096, 9000, 70000, 100001]),
    st.sampled_from(["none", "()", "[]", "None", "pipe", "credentials=None", "(), None"]),
    st.sampled_from([0.0, 0.0, 0.01]),
)
sending_steps = st.lists(
    st.one_of(
        sends,
        st.tuples(st.just("read"), st.sampled_from([1, 7, 4096, 1 << 20])),
        st.tuples(st.just("flush")),
    ),
    min_size=1,
    max_size=8,
)


def _send_call(send: Callable[..., Any], conn: Any, step: Tuple[Any, ...], pipe_r: int) -> Any:
    _, form, size, fds, _ = step
    data = _payload(form, size)
    if fds == "none":
        return lambda: send(conn, data)
    if fds == "credentials=None":
        return lambda: send(conn, data, credentials=None)
    if fds == "(), None":
        return lambda: send(conn, data, (), None)
    value = {"()": (), "[]": [], "None": None, "pipe": [pipe_r]}[fds]
    return lambda: send(conn, data, value)


def _sending_run(path: str, steps: List[Tuple[Any, ...]], pipe_r: int) -> List[Any]:
    send, _ = PATHS[path]
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = _Emulated(ours, max_message_size=100000)
    log: List[Any] = []
    received = bytearray()
    fds = 0
    try:
        for step in steps:
            if step[0] == "send":
                conn.settimeout(step[4])
                log.append(_outcome(_send_call(send, conn, step, pipe_r), pipe_r))
            elif step[0] == "flush":
                log.append(_outcome(conn.flush, pipe_r))
            else:
                raw.setblocking(False)
                try:
                    data, ancdata, _, _ = raw.recvmsg(step[1], socket.CMSG_SPACE(4 * 16))
                except BlockingIOError:
                    data, ancdata = b"", []
                for _, _, payload in ancdata:
                    for fd in array.array("i", payload):
                        os.close(fd)
                        fds += 1
                received += data
                log.append(len(data))
            log.append(_state(conn))
        conn.close()
        rest, more = _drain(raw, pipe_r)
        log.append((bytes(received + rest), fds + more))
    finally:
        conn.close()
        raw.close()
    return log


@needs_compiled
@SETTINGS
@given(steps=sending_steps)
@example(steps=[("send", "bytes", 70000, "none", 0.0), ("send", "bytes", 1, "none", 0.0)])
@example(steps=[("send", "bytes", 70000, "none", 0.01), ("read", 1 << 20), ("flush",)])
@example(steps=[("send", "bytes", 100001, "none", 0.0), ("send", "ints", 64, "()", 0.0)])
def test_both_paths_send_the_same_to_a_slow_reader(
    steps: List[Tuple[Any, ...]], pipe: Tuple[int, int]
) -> None:
    """Same sends, partial writes and refusals: same results, unsent rest, bytes on the wire."""
    before = open_fds()
    assert _sending_run("compiled", steps, pipe[0]) == _sending_run("pure", steps, pipe[0])
    assert open_fds() == before


# -- the locks -------------------------------------------------------------------------------


def pair_and_lock(method: str) -> Tuple[Any, Any, Any]:
    """An emulated pair a, b (5 s timeouts) and the lock ``method`` takes on it: a's send
    lock for "send", b's receive lock for "recv_message"."""
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    a.settimeout(5)
    b.settimeout(5)
    return a, b, (a._send_lock if method == "send" else b._recv_lock)


@needs_compiled
@pytest.mark.parametrize("method", ["send", "recv_message"])
def test_a_call_waits_for_the_lock_another_thread_holds(method: str) -> None:
    """The compiled call takes the connection's lock: held elsewhere, it waits (in Python)."""
    a, b, lock = pair_and_lock(method)
    with a, b:
        if method == "recv_message":
            a.send(b"waiting")
        results: List[Any] = []
        lock.acquire()
        try:
            call = (lambda: a.send(b"x")) if method == "send" else b.recv_message
            worker = threading.Thread(target=lambda: results.append(call()))
            worker.start()
            worker.join(0.2)
            assert worker.is_alive() and not results, "the call ran without the lock"
        finally:
            lock.release()
        worker.join(5)
        expected = 1 if method == "send" else b"waiting"
        got = results[0] if method == "send" else results[0].data
        assert got == expected
        assert not a._sending and not b._receiving


# -- real signals in the C windows (an LD_PRELOAD interposer) ---------------------------------

_SIGNAL_STANDIN = r"""
/* Raises SIGUSR1 inside the next armed send/sendmsg/recvmsg: mode 1, the call then runs
 * and succeeds (a signal that arrived during a system call that completed); mode 2, it
 * fails with EINTR without running (a signal that interrupted it).  Armed through ctypes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>
static int armed_mode, armed_sends, armed_recvs;
void standin_arm(int mode, int sends, int recvs) {
    armed_mode = mode; armed_sends = sends; armed_recvs = recvs;
}
static int hit(int *left) {
    if (*left <= 0) return 0;
    (*left)--;
    raise(SIGUSR1);
    return armed_mode;
}
ssize_t sendmsg(int fd, const struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, const struct msghdr *, int);
    if (!real) real = (ssize_t (*)(int, const struct msghdr *, int))dlsym(RTLD_NEXT, "sendmsg");
    if (hit(&armed_sends) == 2) { errno = EINTR; return -1; }
    return real(fd, msg, flags);
}
ssize_t send(int fd, const void *buf, size_t len, int flags) {
    static ssize_t (*real)(int, const void *, size_t, int);
    if (!real) real = (ssize_t (*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    if (hit(&armed_sends) == 2) { errno = EINTR; return -1; }
    return real(fd, buf, len, flags);
}
ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, struct msghdr *, int);
    if (!real) real = (ssize_t (*)(int, struct msghdr *, int))dlsym(RTLD_NEXT, "recvmsg");
    if (hit(&armed_recvs) == 2) { errno = EINTR; return -1; }
    return real(fd, msg, flags);
}
"""

_SIGNAL_PROGRAM = r"""
import ctypes, signal, sys
from udscompat import _seqpacket
lib = ctypes.CDLL(sys.argv[1])
class Interrupted(BaseException):
    pass
def handler(signum, frame):
    if raising:
        raise Interrupted()
signal.signal(signal.SIGUSR1, handler)
paths = {
    "compiled": (_seqpacket._EmulatedConn.send, _seqpacket._EmulatedConn.recv_message),
    "pure": (_seqpacket.PYTHON_EMULATED_SEND, _seqpacket.PYTHON_EMULATED_RECV_MESSAGE),
}
def attempt(call):
    try:
        value = call()
        return repr(getattr(value, "data", value))
    except Interrupted:
        return "interrupted"
    except OSError as exc:
        return type(exc).__name__
for path, (send, recv) in paths.items():
    for where in ("send", "recv"):
        for mode in (1, 2):
            for raising in (True, False):
                a, b = _seqpacket.seqpacket_pair(implementation="emulated")
                a.setblocking(False)
                b.setblocking(False)
                if where == "recv":
                    send(a, b"first")
                lib.standin_arm(mode, int(where == "send"), int(where == "recv"))
                first = attempt(lambda: send(a, b"first") if where == "send" else recv(b))
                lib.standin_arm(0, 0, 0)
                state = (a._sending, b._receiving)
                second = attempt(lambda: send(a, b"second"))
                got = []
                for _ in range(3):
                    got.append(attempt(lambda: recv(b)))
                print(path, where, mode, raising, first, state, second, "|".join(got))
                a.close()
                b.close()
"""


@needs_compiled
@needs_c_compiler
@only_on("Linux", "the interposer is built with glibc's dlsym")
def test_signals_inside_the_system_calls(tmp_path: Path) -> None:
    """A signal during the C methods' system calls never leaves the stream position unknown.

    Mode 1, a signal arriving during a system call that succeeds: the compiled method
    records the result before any Python code runs, so a raising handler (run as the call
    returns) costs the caller only the return value -- the sent frame went out once and
    the connection goes on; a received message is lost, as ``socket.recvmsg``'s result is.
    The Python method runs the handler between the call and the recording, so its next
    call aborts the connection (ConnectionAbortedError, never a corrupt message).  Mode 2,
    EINTR: nothing was sent or read; the compiled method runs the handlers with no flag
    set, so a raising one leaves the connection usable, and a quiet one is retried.
    """
    source = tmp_path / "signals.c"
    source.write_text(_SIGNAL_STANDIN)
    library = tmp_path / "signals.so"
    subprocess.run(
        [str(c_compiler()), "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    preload = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(library)]))
    env = dict(os.environ, PYTHONPATH=str(ROOT), LD_PRELOAD=preload)
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_PROGRAM, str(library)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = set(proc.stdout.splitlines())
    both = "b'first'|b'second'|BlockingIOError"
    second = "b'second'|BlockingIOError|BlockingIOError"
    aborted = "ConnectionAbortedError|ConnectionAbortedError|ConnectionAbortedError"
    expected = {
        # compiled, a signal during a successful send: recorded first, the handler raises
        # as the call returns (the frame went out once, the connection goes on)
        f"compiled send 1 True interrupted (False, False) 6 {both}",
        f"compiled send 1 False 5 (False, False) 6 {both}",
        # compiled, EINTR: nothing sent; the handler ran with nothing half-recorded
        f"compiled send 2 True interrupted (False, False) 6 {second}",
        f"compiled send 2 False 5 (False, False) 6 {both}",
        # compiled, a signal during a successful receive: the message is handed over (lost
        # to the raising handler, as socket.recvmsg's result is); the stream stays in step
        f"compiled recv 1 True interrupted (False, False) 6 {second}",
        f"compiled recv 1 False b'first' (False, False) 6 {second}",
        # compiled, EINTR on the receive: nothing read, nothing lost
        f"compiled recv 2 True interrupted (False, False) 6 {both}",
        f"compiled recv 2 False b'first' (False, False) 6 {second}",
        # pure: a raising handler inside socket.send/recvmsg leaves the flag set, and the
        # next call aborts the connection (the peer reads the end)
        "pure send 1 True interrupted (True, False) ConnectionAbortedError b'first'|None|None",
        f"pure send 1 False 5 (False, False) 6 {both}",
        "pure send 2 True interrupted (True, False) ConnectionAbortedError None|None|None",
        f"pure send 2 False 5 (False, False) 6 {both}",
        f"pure recv 1 True interrupted (False, True) 6 {aborted}",
        f"pure recv 1 False b'first' (False, False) 6 {second}",
        f"pure recv 2 True interrupted (False, True) 6 {aborted}",
        f"pure recv 2 False b'first' (False, False) 6 {second}",
    }
    assert lines == expected, "\n".join(sorted(lines ^ expected))


# -- raising handlers at every Python continuation the C code calls --------------------------

STREAM_FRAMES = [
    (b"a" * 10, 1, FLAG_ACK_REQUESTED),  # descriptors: the Python continuation (_ingest)
    (b"b" * 70000, 0, 0),  # split over writes: the decoder holds a partial frame
    (b"c" * 64, 0, 0),  # plain: built in C
    (b"d" * 5, 2, 0),
]


def _interrupted_receives(schedule: Sequence[int], pipe_r: int) -> Tuple[List[Any], List[str], int]:
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = SeqpacketConn.from_socket(ours)
    conn.setblocking(False)
    results: List[Any] = []
    writes: List[Tuple[bytes, int]] = []
    for data, nfds, flags in STREAM_FRAMES:
        frame = HEADER.pack(len(data), nfds, KIND_DATA, flags) + data
        writes += (
            [(frame[:30000], nfds), (frame[30000:], 0)] if len(frame) > 30000 else [(frame, nfds)]
        )
    with raw:
        interrupts = Interrupts(schedule)

        def receive() -> None:
            if writes:
                data, nfds = writes.pop(0)
                rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe_r] * nfds))]
                raw.sendmsg([data], rights if nfds else [])
            try:
                message = conn.recv_message(1 << 20, 4)
            except BlockingIOError:
                results.append("would block")
                return
            except OSError as exc:
                results.append(type(exc).__name__)
                return
            results.append(message.data[:1] + bytes([len(message.fds)]))
            for fd in message.fds:
                os.close(fd)

        outcomes = _program([receive] * 8, interrupts)
        conn.close()
    return results, outcomes, len(interrupts.events)


@needs_compiled
def test_an_interrupt_at_any_continuation_never_forges_a_message(pipe: Tuple[int, int]) -> None:
    """The C receive calls _ingest, _receive and _acknowledge for what it does not decode.

    A raising handler at each Python call boundary in turn: every message delivered is
    one that was sent, in order, with its descriptors; an interrupt that lost a chunk
    makes the next receive abort (ConnectionAbortedError), never a FramingError; no
    descriptor leaks.
    """
    results, _, boundaries = _interrupted_receives((), pipe[0])
    sent = [data[:1] + bytes([nfds]) for data, nfds, _ in STREAM_FRAMES]
    assert [r for r in results if isinstance(r, bytes)] == sent
    assert boundaries > 10  # the continuations were called (and seen by the hook)
    failures = []
    before = open_fds()
    for point in range(1, boundaries + 1):
        results, outcomes, _ = _interrupted_receives((point,), pipe[0])
        delivered = [r for r in results if isinstance(r, bytes)]
        errors = {r for r in results if isinstance(r, str)} - {"would block"}
        in_order = all(m in sent for m in delivered) and delivered == sorted(
            delivered, key=sent.index
        )
        if not in_order or errors - {"ConnectionAbortedError"}:
            failures.append((point, results, outcomes))
    assert not failures, failures
    # Each frame with descriptors arrives whole in its own chunk: the C receive builds its
    # Message, so no handler runs while the descriptors are only in the call (at
    # _acknowledge, owed for the first frame, it closes them), and none leaks.
    assert open_fds() == before


def _interrupted_sends(schedule: Sequence[int]) -> Tuple[bytes, List[str], int]:
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    conn = SeqpacketConn.from_socket(ours)
    received = bytearray()

    def read() -> None:
        received.extend(_drain(raw, -1)[0])

    def start() -> None:
        conn.settimeout(0.001)  # the C send starts the frame, records the rest, calls _flush
        try:
            conn.send(BODY)
        finally:
            conn.settimeout(0)

    interrupts = Interrupts(schedule)
    steps = [start, read, conn.flush, read, lambda: conn.send(b"next"), read, conn.close, read]
    outcomes = _program(steps, interrupts)
    conn.close()
    received += _drain(raw, -1)[0]
    raw.close()
    return bytes(received), outcomes, len(interrupts.events)


BODY = bytes(range(256)) * 800  # 200 KiB, no run of equal bytes: a resent byte shows


@needs_compiled
def test_an_interrupt_at_any_step_of_a_partial_send_never_sends_a_byte_twice() -> None:
    """A frame the C send starts and records as unsent, then _flush under interrupts.

    The C send calls _flush (committed) for the rest; a raising handler at each Python
    boundary in turn, then flush, send and close as a program would: the peer reads a
    prefix of the frames meant for it, never a byte twice or out of place.  (75
    boundaries; each run ~2 ms.)
    """
    last = HEADER.pack(4, 0, KIND_DATA, 0) + b"next"
    stream = HEADER.pack(len(BODY), 0, KIND_DATA, 0) + BODY + last
    _, _, boundaries = _interrupted_sends(())
    assert boundaries > 5
    failures = []
    for point in range(1, boundaries + 1):
        received, outcomes, _ = _interrupted_sends((point,))
        # (an interrupt before the first send started leaves only the last frame)
        if not stream.startswith(received) and not last.startswith(received):
            failures.append((point, outcomes))
    assert not failures, failures


# -- another thread closes the connection and the number is reused ---------------------------

RACE_ROUNDS = 100


def _call_until_error(method: str, conn: Any, started: threading.Event, results: List[Any]) -> None:
    started.set()
    while True:
        try:
            results.append(conn.send(b"mine") if method == "send" else conn.recv_message())
        except BlockingIOError:
            continue
        except OSError as exc:
            results.append(exc)
            return


def _reached_another_socket(method: str) -> Tuple[int, List[Any]]:
    """RACE_ROUNDS times: a thread loops a call on a fresh non-blocking pair while this one
    closes it and opens a socketpair that takes its number (as tests/test_native_attacks.py
    does for native connections).  Returns how many calls worked on the new socketpair,
    and anything unexpected they raised."""
    frame = HEADER.pack(9, 0, KIND_DATA, 0) + b"not yours"
    hits, odd = 0, []
    for _ in range(RACE_ROUNDS):
        x, y = _seqpacket.seqpacket_pair(implementation="emulated")
        x.settimeout(0)
        y.settimeout(0)
        conn = x if method == "send" else y
        results: List[Any] = []
        started = threading.Event()

        worker = threading.Thread(target=_call_until_error, args=(method, conn, started, results))
        worker.start()
        started.wait()
        conn.close()
        p, q = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)  # takes the number
        try:
            p.send(frame)
            q.send(frame)
            worker.join(5)
            assert not worker.is_alive(), "the call blocked on the new socket"
            for end in (p, q):
                end.setblocking(False)
                try:
                    hits += b"mine" in end.recv(1 << 16)  # a send went to the new peer
                except BlockingIOError:
                    pass
            for result in results:
                if isinstance(result, OSError):
                    if result.errno != errno.EBADF:
                        odd.append(result)
                elif isinstance(result, Message) and result.data == b"not yours":
                    hits += 1  # a receive took the new socket's message
        finally:
            for end in (p, q):
                end.shutdown(socket.SHUT_RDWR)
            worker.join(5)
            p.close()
            q.close()
            x.close()
            y.close()
    return hits, odd


@pytest.mark.parametrize("method", ["send", "recv_message"])
def test_a_call_racing_close_rarely_reaches_the_socket_that_took_the_number(method: str) -> None:
    """The compiled methods read the socket's number after letting go of the GIL, as CPython's
    socket methods do: close() has then almost always set it to -1 (EBADF) first."""
    hits, odd = _reached_another_socket(method)
    assert not odd
    assert hits <= 4, f"{hits} of {RACE_ROUNDS} calls racing close() reached another socket"


# -- the rare turns of the common case ------------------------------------------------------


@needs_compiled
@pytest.mark.parametrize("path", ["compiled", "pure"])
def test_acknowledgements_owed_go_out_with_the_next_call(path: str, pipe: Tuple[int, int]) -> None:
    """An acknowledgement that could not go out (another thread held the send lock) is owed:
    the next receive sends it, and the next send sends it before its own frame."""
    send, recv = PATHS[path]
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = SeqpacketConn.from_socket(ours)
    conn.setblocking(False)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe[0]]))]
    ack = HEADER.pack(1, 0, KIND_ACK, 0)
    with raw, conn:
        for then in ("receive", "send"):
            raw.sendmsg([_frame(1, 1, KIND_DATA, FLAG_ACK_REQUESTED)], rights)
            with conn._send_lock:  # held elsewhere: the acknowledgement waits
                message = recv(conn, 64, 1)
            os.close(message.fds[0])
            assert conn._decoder.ack_requests - conn._acks_sent == 1
            assert _drain(raw, pipe[0]) == (b"", 0)
            if then == "receive":
                raw.send(_frame(64, 0, KIND_DATA, 0))  # a plain frame: the C receive's own
                assert recv(conn).data == bytes([64]) * 64
                assert _drain(raw, pipe[0]) == (ack, 0)
            else:
                assert send(conn, b"next") == 4
                assert _drain(raw, pipe[0]) == (ack + _frame(4, 0, KIND_DATA, 0)[:8] + b"next", 0)


@needs_compiled
@pytest.mark.parametrize("path", ["compiled", "pure"])
def test_a_timed_send_waits_for_room_and_finishes_its_frame(path: str) -> None:
    """A full socket under a timeout: the send waits for room (not BlockingIOError), and a
    frame that goes out in parts is finished within the same call."""
    send, _ = PATHS[path]
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    conn = SeqpacketConn.from_socket(ours)
    small = _frame(1, 0, KIND_DATA, 0)
    filled = 0
    with raw, conn:
        while True:  # whole frames until the socket is full (each one write, all or none)
            try:
                ours.send(small)
                filled += 1
            except BlockingIOError:
                break
        received = bytearray()

        def reader() -> None:
            time.sleep(0.05)
            raw.settimeout(5)
            while len(received) < filled * len(small) + 8 + len(BODY):
                received.extend(raw.recv(1 << 20))

        worker = threading.Thread(target=reader)
        worker.start()
        conn.settimeout(5)
        try:
            assert send(conn, BODY) == len(BODY)
            assert bytes(conn._unsent) == b""
        finally:
            worker.join(10)
        assert bytes(received) == small * filled + HEADER.pack(len(BODY), 0, KIND_DATA, 0) + BODY


@needs_compiled
def test_received_descriptors_are_guarded_while_sent_ones_are_held(
    pipe: Tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """While sent descriptors are held (REGISTRY.originals), a frame with descriptors takes
    the Python continuation, whose _fit guards them (guard_reused), as the Python method."""
    from udscompat import _fdpass

    guarded: List[List[int]] = []
    real = _fdpass.guard_reused
    monkeypatch.setattr(_fdpass, "guard_reused", lambda fds: guarded.append(fds) or real(fds))
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = SeqpacketConn.from_socket(ours)
    conn.setblocking(False)
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe[0]]))]
    with raw, conn:
        for held in (False, True):
            if held:
                monkeypatch.setattr(_fdpass.REGISTRY, "originals", {1 << 30})
            raw.sendmsg([_frame(3, 1, KIND_DATA, 0)], rights)
            message = conn.recv_message(64, 1)
            assert message.data == bytes([3]) * 3 and same_file(message.fds[0], pipe[0])
            os.close(message.fds[0])
            assert len(guarded) == held


@pytest.mark.parametrize("path", ["compiled", "pure"])
@pytest.mark.parametrize("method", ["send", "recv_message"])
def test_a_timeout_holds_when_another_holder_clears_o_nonblocking(path: str, method: str) -> None:
    """O_NONBLOCK belongs to the open file description: another holder of the descriptor (a
    forked child, a process it was passed to) can clear it.  Every system call carries
    MSG_DONTWAIT, so a timed call still ends at its deadline (it waited in the kernel for a
    message, or for room, until one came: for ever without)."""
    if path == "compiled" and not COMPILED:
        pytest.skip("the compiled accelerator is not in use")
    send, recv = PATHS[path]
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    conn = a if method == "send" else b
    if method == "send":
        a.setblocking(False)
        while not a._unsent:  # the peer never reads: fill the socket, a frame left in part
            a.send(b"f" * 65536)
        a._unsent = b""  # forget the rest (the stream is junk to this test's peer anyway)
    other = os.dup(conn.fileno())
    os.set_blocking(other, True)  # another holder clears O_NONBLOCK for both
    conn.settimeout(0.2)
    outcome: List[Any] = []
    call = (
        functools.partial(send, a, b"x" * 1000) if method == "send" else functools.partial(recv, b)
    )
    worker = threading.Thread(target=lambda: outcome.append(_outcome(call, -1)))
    started = time.monotonic()
    worker.start()
    worker.join(3)
    try:
        assert not worker.is_alive(), "the call waited in the kernel past its timeout"
        assert outcome[0][:2] == ("raised", "TimeoutError")
        assert time.monotonic() - started < 2
    finally:
        a.close()
        b.close()
        os.close(other)
        worker.join(5)


# -- the state the compiled methods read as slots --------------------------------------------

#: (object, attribute) of every slot the compiled methods read.
STATE_SLOTS = [("conn", name) for name in _Emulated.__slots__] + [
    ("decoder", "ack_requests"),
    ("decoder", "idle"),
]


@needs_compiled
@pytest.mark.parametrize("method", ["send", "recv_message"])
@pytest.mark.parametrize(("owner", "name"), STATE_SLOTS)
def test_a_state_slot_left_unset_gives_what_the_python_method_gives(
    method: str, owner: str, name: str, pipe: Tuple[int, int]
) -> None:
    """The C reads the state from the slots directly: an unset one (deleted: NULL there) must
    hand the call to the Python method (its AttributeError, or the call done as it does it),
    never be read as a value.  Same outcome, state and bytes on the wire on both paths."""
    runs = []
    for path in ("compiled", "pure"):
        send, recv_message = PATHS[path]
        raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        conn = SeqpacketConn.from_socket(ours)
        with raw, conn:
            conn.settimeout(5)
            raw.sendall(_frame(2, 0, KIND_DATA, 0))  # one whole frame: the C builds it
            target = conn if owner == "conn" else conn._decoder
            kept = getattr(target, name)
            delattr(target, name)
            try:
                call = (
                    functools.partial(send, conn, b"out")
                    if method == "send"
                    else functools.partial(recv_message, conn)
                )
                outcome = _outcome(call, pipe[0])
                still_unset = not hasattr(target, name)  # or set by the call, as Python sets it
            finally:
                if not hasattr(target, name):
                    setattr(target, name, kept)
            runs.append((outcome, still_unset, _state(conn), _drain(raw, pipe[0])))
    assert runs[0] == runs[1]


@needs_compiled
def test_configure_emulated_takes_only_slots() -> None:
    """configure_emulated refuses a class whose state is not in __slots__ (the C would read
    the object at a wrong offset), naming the attribute, and leaves the methods installed."""
    from udscompat import _accel, _framing

    class Plain(SeqpacketConn):
        pass

    class Decoder:
        __slots__ = ("ack_requests",)

    arguments = (
        _seqpacket.PYTHON_EMULATED_SEND,
        _seqpacket.PYTHON_EMULATED_RECV_MESSAGE,
        131072,
        1024,
        0,
        time.monotonic,
    )
    configure = _accel.speedups.configure_emulated
    with pytest.raises(TypeError, match=r"Plain\._[a-z_]+ must be a writable slot"):
        configure(Plain, _framing.FrameDecoder, *arguments)
    with pytest.raises(TypeError, match=r"Decoder\.idle must be a writable slot"):
        configure(_Emulated, Decoder, *arguments)
    a, b = _seqpacket.seqpacket_pair(implementation="emulated")
    with a, b:
        assert a.send(b"still") == 5
        assert b.recv_message().data == b"still"


class _BrokenByProperty(_Emulated):
    """A subclass whose ``_broken`` is its own property: the slot the C reads is not it."""

    @property  # type: ignore[override]
    def _broken(self) -> OSError:
        return OSError(errno.EPIPE, "broken, says the subclass")

    @_broken.setter
    def _broken(self, value: Any) -> None:
        pass


@needs_compiled
@pytest.mark.parametrize("method", ["send", "recv_message"])
def test_a_subclass_with_its_own_state_takes_the_python_method(
    method: str, pipe: Tuple[int, int]
) -> None:
    """The C reads the slots of exactly _EmulatedConn and FrameDecoder: a subclass of either
    (which may make any of them a property) gets what the Python method makes of it."""
    from udscompat import _framing

    class AckOwed(_framing.FrameDecoder):
        ack_requests = property(lambda self: 1, lambda self, value: None)  # type: ignore[assignment]

    for owner in ("conn", "decoder"):
        runs = []
        for path in ("compiled", "pure"):
            send, recv_message = PATHS[path]
            raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            conn: Any = (_BrokenByProperty if owner == "conn" else _Emulated)(ours)
            # The slots under the properties hold what an idle connection holds there.
            _Emulated._broken.__set__(conn, None)  # type: ignore[attr-defined]
            if owner == "decoder":
                decoder = AckOwed(conn._decoder.max_message_size, conn._decoder.max_fds)
                _framing.FrameDecoder.ack_requests.__set__(decoder, 0)  # type: ignore[attr-defined]
                conn._decoder = decoder
                conn._inline_args = (*conn._inline_args[:3], decoder, *conn._inline_args[4:])
            with raw, conn:
                conn.settimeout(5)
                raw.sendall(_frame(2, 0, KIND_DATA, 0) + _frame(3, 0, KIND_DATA, 0))
                call = (
                    functools.partial(send, conn, b"out")
                    if method == "send"
                    else functools.partial(recv_message, conn)
                )
                outcome = _outcome(call, pipe[0])
                runs.append((outcome, _state(conn), _drain(raw, pipe[0])))
        assert runs[0] == runs[1], owner
