"""The compiled accelerator against the pure-Python path: same inputs, same results, no leaks.

Property tests drive both innermost wrappers -- ``udscompat._speedups``'s
``sendmsg``/``recvmsg`` and ``_io.send_with_fds``/``_io.recv_with_fds`` --
with the same random messages over real socketpairs (stream, datagram,
seqpacket; payload sizes, descriptor counts up to and past the kernel's cap,
``maxfds``, short buffers, peeks, the seqpacket marker on and off,
MSG_CMSG_CLOEXEC honoured or not, control data truncated by a full
descriptor table) and compare what comes back and what is left open.
"""

from __future__ import annotations

import _socket
import array
import contextlib
import errno
import functools
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple
from unittest import mock

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import udscompat
from udscompat import _accel, _io, _probes
from udscompat._errors import ControlTruncatedError
from udscompat._platform import backend

from .conftest import c_compiler, needs_abstract, needs_c_compiler, only_on, open_fds, same_file

ROOT = Path(__file__).resolve().parent.parent

try:
    from udscompat import _speedups as _compiled
except ImportError:
    if os.environ.get(_accel.ENV) == "1":
        raise  # asked for the accelerator: its absence is a failure, not a skip
    _compiled = None

needs_compiled = pytest.mark.skipif(
    _compiled is None, reason="the compiled accelerator udscompat._speedups is not built here"
)
SPEEDUPS: Any = _io.configure_compiled(_compiled) if _compiled is not None else None
CLOEXEC = _probes.cmsg_cloexec_flag()
KINDS = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM}
if _probes.seqpacket().available:
    KINDS["seqpacket"] = backend.SOCK_SEQPACKET


def test_these_tests_run_the_accelerator_wherever_it_can_be_built() -> None:
    """Where CPython and a C compiler can build it, the accelerator is what these tests run.

    They import udscompat from the checkout, which holds a build only when installed
    editable: tox's `tests` env installed a wheel, so CI ran the pure path twice and
    skipped every compiled-only test, green.
    """
    if os.environ.get(_accel.ENV) == "0" or os.environ.get("UDSCOMPAT_BUILD_SPEEDUPS") == "0":
        pytest.skip("the pure-Python path was asked for")
    if platform.python_implementation() != "CPython" or c_compiler() is None:
        pytest.skip("the accelerator cannot be built here (CPython and a C compiler needed)")
    assert _compiled is not None, (
        f"udscompat is imported from {Path(udscompat.__file__).parent}, which holds no build of "
        "the accelerator: install the checkout editable (pip install -e .) to test it"
    )


# -- the selector -------------------------------------------------------------------------------


def test_choose_zero_is_pure_python() -> None:
    assert _accel.choose("0") == (None, "pure Python (UDSCOMPAT_SPEEDUPS=0)")


def test_choose_rejects_other_values() -> None:
    with pytest.raises(ValueError, match="UDSCOMPAT_SPEEDUPS='yes'"):
        _accel.choose("yes")


def test_speedups_1_fails_loudly_when_the_extension_is_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "udscompat._speedups", None)  # as if never built
    with pytest.raises(ImportError, match="UDSCOMPAT_SPEEDUPS=1 but the compiled accelerator"):
        _accel.choose("1")
    assert _accel.choose("")[0] is None
    assert _accel.choose("")[1].startswith("pure Python (the compiled accelerator is not installed")


@needs_compiled
def test_one_and_unset_take_the_compiled_module() -> None:
    assert _accel.choose("1")[0] is _compiled
    assert _accel.choose("")[0] is _compiled


def test_the_environment_is_read_at_import() -> None:
    """One interpreter (about 0.3 s): the choice is made once, when udscompat is imported."""
    code = (
        "import udscompat\n"
        "from udscompat import _accel, _io\n"
        "print(_accel.IMPLEMENTATION, udscompat.capabilities().features['speedups'].status,\n"
        "      _io.recv_with_fds is _io.pure_recv_with_fds)"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env[_accel.ENV] = "0"
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (proc.returncode, proc.stdout.split()) == (
        0,
        ["pure-python", "unavailable", "True"],
    ), proc.stderr


def test_capabilities_say_which_implementation_runs() -> None:
    feature = udscompat.capabilities().features["speedups"]
    assert feature.detail == _accel.REASON
    assert feature.status == ("native" if _accel.speedups is not None else "unavailable")
    compiled = _accel.speedups is not None
    assert (_io.recv_with_fds is _io.pure_recv_with_fds) is not compiled
    assert (_io.compiled_recvmsg is None) is not compiled


# -- the OS's own headers against the backend's hand-written values ---------------------------


@needs_compiled
def test_header_constants_match_the_backend() -> None:
    assert SPEEDUPS.SOL_SOCKET == backend.SOL_SOCKET == socket.SOL_SOCKET
    assert SPEEDUPS.SCM_RIGHTS == backend.SCM_RIGHTS == socket.SCM_RIGHTS
    assert SPEEDUPS.MSG_CTRUNC == backend.MSG_CTRUNC
    assert SPEEDUPS.MSG_TRUNC == backend.MSG_TRUNC
    assert SPEEDUPS.MSG_CMSG_CLOEXEC == backend.MSG_CMSG_CLOEXEC
    if backend.MESSAGE_MARKER is not None:
        assert backend.MESSAGE_MARKER[2] == SPEEDUPS.SCM_TIMESTAMP
    assert socket.CMSG_SPACE(4) == SPEEDUPS.CMSG_SPACE_INT
    assert socket.CMSG_LEN(0) == SPEEDUPS.CMSG_LEN_0


@needs_compiled
def test_receive_control_room_is_the_pure_paths() -> None:
    # Room for the kernel's cap plus the marker, by the OS's CMSG_SPACE on both paths.
    assert SPEEDUPS.control_size() == _io.ANCBUF_SIZE


# -- property tests: both paths, same inputs ----------------------------------------------------


def _pair(kind: str, marker: bool) -> Tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair(socket.AF_UNIX, KINDS[kind])
    a.setblocking(False)
    b.setblocking(False)
    if marker:
        _probes.enable_message_marker(b)
    return a, b


@contextlib.contextmanager
def _free_slots(count: Optional[int]) -> Iterator[None]:
    """Leave exactly ``count`` free descriptor numbers below RLIMIT_NOFILE (None: no change)."""
    if count is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    taken = open_fds()
    limit, free = 0, 0
    while free < count or limit in taken:
        if limit not in taken:
            free += 1
        limit += 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _outcome(call: Any) -> Dict[str, Any]:
    try:
        result = call()
    except OSError as exc:
        out: Dict[str, Any] = {"error": type(exc), "errno": exc.errno, "text": str(exc)}
        if isinstance(exc, ControlTruncatedError):
            out.update(data=exc.data, closed=exc.closed_fds)
        return out
    return {"result": result}


def _compare(c: Dict[str, Any], py: Dict[str, Any], sent_fd: int) -> List[int]:
    """Assert both outcomes agree; returns the descriptors they received, to close."""
    assert c.keys() == py.keys(), (c, py)
    if "error" in c:
        assert c == py
        return []
    c_result, py_result = c["result"], py["result"]
    if isinstance(c_result, int):
        assert c_result == py_result
        return []
    c_data, c_fds, c_flags, c_addr, c_marked = c_result
    py_data, py_fds, py_flags, py_addr, py_marked = py_result
    assert (c_data, len(c_fds), c_flags, c_addr, c_marked) == (
        py_data,
        len(py_fds),
        py_flags,
        py_addr,
        py_marked,
    )
    for fd in c_fds + py_fds:
        assert same_file(fd, sent_fd)
        assert not os.get_inheritable(fd), f"received fd {fd} is not close-on-exec"
    return c_fds + py_fds


message = st.fixed_dictionaries(
    {
        "kind": st.sampled_from(sorted(KINDS)),
        "size": st.one_of(st.integers(0, 300), st.sampled_from([4096, 65536, 70000])),
        "nfds": st.one_of(st.integers(0, 6), st.sampled_from([16, 252, 253, 254])),
        "extra_maxfds": st.integers(-3, 2),
        "short_by": st.one_of(st.just(0), st.integers(-2, 40)),
        "peek": st.booleans(),
        "marker": st.booleans(),
        "kernel_cloexec": st.booleans() if CLOEXEC is not None else st.just(False),
        "free_slots": st.one_of(st.none(), st.integers(0, 5)),
        "buffers": st.integers(1, 3),
    }
)


def _send_args(case: Dict[str, Any], r: int) -> Tuple[List[bytes], array.array[int]]:
    payload = bytes(range(256)) * (case["size"] // 256 + 1)
    payload = payload[: case["size"]]
    step = max(1, len(payload) // case["buffers"] + 1)
    buffers = [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]
    return buffers, array.array("I", [r] * case["nfds"])


def _receive(
    impl: str, sock: socket.socket, case: Dict[str, Any], bufsize: int, maxfds: int, flags: int
) -> Dict[str, Any]:
    if impl == "c":
        kernel = CLOEXEC if case["kernel_cloexec"] and CLOEXEC is not None else 0
        with _free_slots(case["free_slots"]):
            return _outcome(lambda: SPEEDUPS.recvmsg(sock, bufsize, maxfds, flags | kernel, True))
    patch = (
        contextlib.nullcontext()
        if case["kernel_cloexec"]
        else mock.patch.object(_probes, "cmsg_cloexec_flag", return_value=None)
    )
    with patch, _free_slots(case["free_slots"]):
        return _outcome(lambda: _io.pure_recv_with_fds(sock, bufsize, maxfds, flags))


@needs_compiled
@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=message)
def test_both_paths_agree_on_random_messages(case: Dict[str, Any]) -> None:
    """120 random messages, each over two fresh socketpairs (about 1.5 s).

    The pure path's peek asks ``_probes.peek_installs_fds()``, which opens descriptors; it
    is asked here first, with the table not full, as a connection or an earlier peek would
    have: this test compares the receives, not the probe under a full table (a first peek
    with no room for it raises EMFILE: tests/test_peek_attacks.py)."""
    _probes.peek_installs_fds()
    before = open_fds()
    r, w = os.pipe()
    pairs = {impl: _pair(case["kind"], case["marker"]) for impl in ("c", "py")}
    received: List[int] = []
    try:
        buffers, numbers = _send_args(case, r)
        sent = {
            "c": _outcome(lambda: SPEEDUPS.sendmsg(pairs["c"][0], buffers, numbers, 0)),
            "py": _outcome(lambda: _io.pure_send_with_fds(pairs["py"][0], buffers, numbers, 0)),
        }
        _compare(sent["c"], sent["py"], r)
        bufsize = max(0, case["size"] - case["short_by"])
        maxfds = max(0, case["nfds"] + case["extra_maxfds"])
        for flags in ([socket.MSG_PEEK] if case["peek"] else []) + [0]:
            got = {
                impl: _receive(impl, pairs[impl][1], case, bufsize, maxfds, flags)
                for impl in ("c", "py")
            }
            received += _compare(got["c"], got["py"], r)
    finally:
        _io.close_fds(received)
        for a, b in pairs.values():
            a.close()
            b.close()
        _io.close_fds([r, w])
    assert open_fds() == before


@needs_compiled
@needs_abstract
@pytest.mark.parametrize("kind", sorted(set(KINDS) - {"stream"}))  # streams report no sender
def test_addresses_come_back_as_the_socket_module_gives_them(kind: str) -> None:
    results = []
    for impl in ("c", "py"):
        a, b = _pair(kind, marker=False)
        with a, b:
            a.send(b"x")
            if impl == "c":
                results.append(SPEEDUPS.recvmsg(b, 10, 0, 0, True)[3])
            else:
                results.append(_io.pure_recv_with_fds(b, 10, 0)[3])
    assert results[0] == results[1]
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
    ):
        tag = os.urandom(6).hex().encode()
        receiver.bind(b"\0udsc-speedups-" + tag)
        sender.bind(b"\0udsc-speedups-sender-" + tag)
        for _ in range(2):
            sender.sendto(b"y", receiver.getsockname())
        c_addr = SPEEDUPS.recvmsg(receiver, 10, 0, 0, True)[3]
        py_addr = _io.pure_recv_with_fds(receiver, 10, 0)[3]
        assert c_addr == py_addr == sender.getsockname()
        sender.sendto(b"z", receiver.getsockname())
        assert SPEEDUPS.recvmsg(receiver, 10, 0, 0)[3] is None  # not asked for


# -- what the compiled path adds: signals, the order of closing and raising --------------------


@needs_compiled
def test_truncation_error_is_built_after_every_descriptor_is_closed(
    pipe: Tuple[int, int],
) -> None:
    a, b = socket.socketpair()
    seen: List[Any] = []

    def spy(reason: str, data: Optional[bytes], closed: int, maxfds: int) -> Exception:
        seen.append((reason, open_fds()))
        return _io.truncation_error(reason, data, closed, maxfds)

    with a, b:
        SPEEDUPS.sendmsg(a, b"abc", [pipe[0]] * 3, 0)
        before = open_fds()
        SPEEDUPS.configure(_io.FD_ROOM, None, (), spy)
        try:
            with pytest.raises(ControlTruncatedError) as info:
                SPEEDUPS.recvmsg(b, 10, 2, 0)
        finally:
            _io.configure_compiled(SPEEDUPS)
    assert seen == [("excess", before)]
    assert (info.value.data, info.value.closed_fds) == (b"abc", 3)


def _interrupt_main_thread_soon(signum: int) -> threading.Timer:
    """Deliver ``signum`` to the main thread in 50 ms, so its blocked system call fails with EINTR.

    (pthread_kill rather than an interval timer: pytest-timeout owns SIGALRM.)
    """
    timer = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signum))
    timer.start()
    return timer


@needs_compiled
def test_a_raising_signal_handler_interrupts_a_blocking_receive_and_loses_nothing(
    pipe: Tuple[int, int],
) -> None:
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread")

    class Interrupted(Exception):
        pass

    def handler(signum: int, frame: Any) -> None:
        raise Interrupted

    a, b = socket.socketpair()
    old = signal.signal(signal.SIGUSR1, handler)
    try:
        with a, b:
            timer = _interrupt_main_thread_soon(signal.SIGUSR1)
            with pytest.raises(Interrupted):
                SPEEDUPS.recvmsg(b, 10, 4, 0)  # blocking: recvmsg fails with EINTR
            timer.join()
            SPEEDUPS.sendmsg(a, b"m", [pipe[0]], 0)
            data, fds, _, _, _ = SPEEDUPS.recvmsg(b, 10, 4, 0)
            assert data == b"m" and len(fds) == 1  # the message was not consumed
            _io.close_fds(fds)
    finally:
        signal.signal(signal.SIGUSR1, old)


@needs_compiled
@pytest.mark.parametrize("direction", ["recv", "send", "public recv", "public send"])
def test_eintr_is_retried_after_a_quiet_signal_handler(
    direction: str, pipe: Tuple[int, int]
) -> None:
    """The innermost wrappers, and the public calls' compiled fast paths (a blocking socket).

    The handler runs inside the call, while it is still blocked (before the peer unblocks
    it), not after the call returns."""
    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers run in the main thread")
    sendmsg, recvmsg = SPEEDUPS.sendmsg, SPEEDUPS.recvmsg
    if direction.startswith("public"):
        if udscompat._fdpass._fast_send is None:
            pytest.skip("the compiled fast paths are not in use")
        sendmsg, recvmsg = udscompat.send_fds, udscompat.recv_fds
        direction = direction.split()[1]
    calls: List[Tuple[int, bool]] = []
    unblocked = threading.Event()
    old = signal.signal(
        signal.SIGUSR1, lambda signum, frame: calls.append((signum, unblocked.is_set()))
    )
    a, b = socket.socketpair()
    try:
        with a, b:
            if direction == "send":
                a.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while True:
                        a.send(b"f" * 65536)
                a.setblocking(True)

                def drain() -> None:
                    unblocked.set()
                    with contextlib.suppress(BlockingIOError):
                        while True:
                            b.recv(65536, socket.MSG_DONTWAIT)

                later = threading.Timer(0.5, drain)
                later.start()
                timer = _interrupt_main_thread_soon(signal.SIGUSR1)
                assert sendmsg(a, b"m", [pipe[0]], 0) == 1  # blocks until drained
            else:

                def send() -> None:
                    unblocked.set()
                    SPEEDUPS.sendmsg(a, b"m", [pipe[0]], 0)

                later = threading.Timer(0.5, send)
                later.start()
                timer = _interrupt_main_thread_soon(signal.SIGUSR1)
                data, fds, *_ = recvmsg(b, 10, 4, 0)
                assert data == b"m"
                _io.close_fds(fds)
            timer.join()
            later.join()
            with contextlib.suppress(BlockingIOError):
                while True:  # whatever the drain left, with its descriptors
                    _, fds, _, _, _ = SPEEDUPS.recvmsg(b, 65536, 4, socket.MSG_DONTWAIT)
                    _io.close_fds(fds)
    finally:
        signal.signal(signal.SIGUSR1, old)
    assert calls == [(signal.SIGUSR1, False)]


@needs_compiled
def test_fds_are_made_close_on_exec_by_hand_without_msg_cmsg_cloexec(
    pipe: Tuple[int, int],
) -> None:
    a, b = socket.socketpair()
    with a, b:
        SPEEDUPS.sendmsg(a, b"x", [pipe[0]] * 4, 0)
        _, fds, _, _, _ = SPEEDUPS.recvmsg(b, 1, 4, 0)
        try:
            assert [os.get_inheritable(fd) for fd in fds] == [False] * 4
        finally:
            _io.close_fds(fds)


_EMSGSIZE_STANDIN = r"""
/* Stand-in for OpenBSD/DragonFly, which fail recvmsg with EMSGSIZE when the control data
 * does not fit, the descriptors discarded and the message consumed (os-facts).  Linux never
 * does, so this interposer makes every recvmsg that asks for control data behave so. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>
ssize_t recvmsg(int fd, struct msghdr *msg, int flags) {
    static ssize_t (*real)(int, struct msghdr *, int);
    if (!real) real = (ssize_t (*)(int, struct msghdr *, int))dlsym(RTLD_NEXT, "recvmsg");
    ssize_t n = real(fd, msg, flags);
    if (n < 0 || msg->msg_controllen == 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c; c = CMSG_NXTHDR(msg, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
            for (int *p = (int *)CMSG_DATA(c); (char *)p < (char *)c + c->cmsg_len; p++) close(*p);
    errno = EMSGSIZE;
    return -1;
}
"""


@needs_compiled
@needs_c_compiler
@only_on("Linux", "the stand-in is an LD_PRELOAD interposer built with glibc's dlsym")
def test_emsgsize_becomes_control_truncated_error_on_both_paths(tmp_path: Path) -> None:
    """Two interpreters start under the stand-in (about 0.3 s)."""
    source = tmp_path / "emsgsize.c"
    source.write_text(_EMSGSIZE_STANDIN)
    library = tmp_path / "emsgsize.so"
    subprocess.run(
        [str(c_compiler()), "-shared", "-fPIC", "-o", str(library), str(source), "-ldl"],
        check=True,
        capture_output=True,
    )
    code = (
        "import os, socket\n"
        "from udscompat import _accel, _io\n"
        "from udscompat import _speedups as s\n"
        "_io.configure_compiled(s)\n"
        "r, w = os.pipe()\n"
        "for name, call in [('c', lambda b: s.recvmsg(b, 10, 4, 0)),\n"
        "                   ('py', lambda b: _io.pure_recv_with_fds(b, 10, 4))]:\n"
        "    a, b = socket.socketpair()\n"
        "    s.sendmsg(a, b'x', [r], 0)\n"
        "    before = set(os.listdir('/proc/self/fd'))\n"
        "    try:\n"
        "        call(b)\n"
        "    except OSError as exc:\n"
        "        cause = exc.__cause__\n"
        "        print(name, type(exc).__name__, exc.errno, exc.data, exc.closed_fds,\n"
        "              cause.errno, set(os.listdir('/proc/self/fd')) == before, '|', exc)\n"
    )
    # After any preload already there (a sanitizer runtime must stay first).
    preload = " ".join(filter(None, [os.environ.get("LD_PRELOAD"), str(library)]))
    env = dict(os.environ, PYTHONPATH=str(ROOT), LD_PRELOAD=preload)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    c_line, py_line = proc.stdout.splitlines()
    code_ = errno.EMSGSIZE
    expected = (
        f"ControlTruncatedError {code_} b'' 0 {code_} True | [Errno {code_}] recvmsg failed with "
        "EMSGSIZE"
    )
    assert c_line.startswith("c " + expected)
    assert py_line == "py" + c_line[1:]


@needs_compiled
def test_bad_arguments_are_refused_before_the_system_call() -> None:
    a, b = socket.socketpair()
    with a, b:
        with pytest.raises(ValueError, match="bufsize must be >= 0, got -1"):
            SPEEDUPS.recvmsg(b, -1, 0, 0)
        with pytest.raises(ValueError, match="maxfds must be >= 0, got -2"):
            SPEEDUPS.recv_message(b, 1, -2, 0, False)
        with pytest.raises(TypeError, match="takes 5 arguments"):
            SPEEDUPS.recv_message(b, 1, 0, 0)
        with pytest.raises(ValueError, match="invalid file descriptor -3"):
            SPEEDUPS.sendmsg(a, b"x", [-3], 0)
        with pytest.raises(TypeError, match="expected a file descriptor"):
            SPEEDUPS.sendmsg(a, b"x", ["0"], 0)
        with pytest.raises(TypeError, match="must hold C ints"):
            SPEEDUPS.sendmsg(a, b"x", array.array("q", [0]), 0)
        with pytest.raises(TypeError):
            SPEEDUPS.sendmsg(a, [b"x", 3], None, 0)
        with pytest.raises(TypeError, match="takes 4 arguments"):
            SPEEDUPS.sendmsg(a, b"x", None)
    with pytest.raises(OSError) as info:
        SPEEDUPS.recvmsg(a, 1, 0, 0)  # closed: fileno() is -1
    assert info.value.errno == errno.EBADF


@needs_compiled
def test_any_object_with_fileno_names_the_socket() -> None:
    # Sockets are read through CPython's socket object (checked at import, see READS_SOCKET_FD);
    # anything else goes through its fileno() method, as the socket module's functions do.
    class Holder:
        def __init__(self, fileno: Any) -> None:
            self._fileno = fileno

        def fileno(self) -> Any:
            return self._fileno

    a, b = socket.socketpair()
    with a, b:
        assert SPEEDUPS.sendmsg(Holder(a.fileno()), b"x", None, 0) == 1
        assert SPEEDUPS.recvmsg(Holder(b.fileno()), 1, 0, 0)[0] == b"x"
        assert SPEEDUPS.sendmsg(a.fileno(), b"y", None, 0) == 1
        assert SPEEDUPS.recvmsg(b, 1, 0, 0)[0] == b"y"
        with pytest.raises(TypeError, match="fileno\\(\\) returned a non-integer"):
            SPEEDUPS.recvmsg(Holder("3"), 1, 0, 0)
        with pytest.raises(AttributeError):
            SPEEDUPS.recvmsg(object(), 1, 0, 0)
    assert SPEEDUPS.READS_SOCKET_FD == 1  # the layout check passed on this CPython


@needs_compiled
def test_many_buffers_and_large_fd_counts_take_the_heap_paths(pipe: Tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        buffers = [bytes([i]) for i in range(40)]  # more iovecs than the stack holds
        assert SPEEDUPS.sendmsg(a, buffers, [pipe[0]] * 253, 0) == 40
        data, fds, _, _, _ = SPEEDUPS.recvmsg(b, 100, 253, 0)
        assert data == bytes(range(40)) and len(fds) == 253
        _io.close_fds(fds)


@needs_c_compiler
def test_bench_limit_program_compiles_and_runs() -> None:
    """Compiles bench/limit.c (about 0.3 s) and runs each round trip 50 times."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import climit
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results, note = climit.measure(50, 1)
    if not results:
        pytest.skip(note)
    assert {"fdpass1", "fdpass16", "emu64", "emu65536"} <= results.keys()
    assert all(0 < seconds < 0.01 for seconds in results.values())


@needs_compiled
def test_a_peek_where_the_kernel_installs_nothing_takes_the_pure_path(
    pipe: Tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # NetBSD, FreeBSD and macOS copy out numbers that are not descriptors of ours on MSG_PEEK;
    # the compiled call would hand them back (and a truncation would close them), so such a
    # peek goes the pure way, which drops them.  Linux installs real ones: stand in for the others.
    monkeypatch.setattr(_probes, "peek_installs_fds", lambda: False)
    if _io.recv_with_fds is _io.pure_recv_with_fds:
        pytest.skip("the compiled wrappers are not in use (UDSCOMPAT_SPEEDUPS=0)")
    a, b = socket.socketpair()
    with a, b:
        SPEEDUPS.sendmsg(a, b"x", [pipe[0]], 0)
        before = open_fds()
        data, fds, _, _, _ = _io.recv_with_fds(b, 1, 1, socket.MSG_PEEK)
        _io.close_fds(sorted(open_fds() - before))  # Linux did install them: the stand-in's cost
        assert (data, fds) == (b"x", [])
        data, fds, _, _ = udscompat.recv_fds(b, 1, 1, int(socket.MSG_PEEK))  # public, a plain int
        _io.close_fds(sorted(open_fds() - before))
        assert (data, fds) == (b"x", [])
        data, fds, _, _, _ = _io.recv_with_fds(b, 1, 1)
        assert data == b"x" and len(fds) == 1
        _io.close_fds(fds)


# -- the public calls' compiled fast paths against their Python code ------------------------------


class _HasFileno:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def _data_forms(payload: bytes) -> Dict[str, Any]:
    """Each way a caller may pass ``payload`` (factories: a generator is read once)."""
    half = len(payload) // 2
    return {
        "bytes": lambda: payload,
        "bytearray": lambda: bytearray(payload),
        "memoryview": lambda: memoryview(payload),
        "list": lambda: [payload[:half], payload[half:]],
        "list_one": lambda: [payload],
        "list_empty": lambda: [],
        "list_many": lambda: [payload[i : i + 1] for i in range(len(payload))] + [b""] * 9,
        "list_mixed": lambda: [bytearray(payload[:half]), payload[half:]],
        "tuple": lambda: (payload,),
        "generator": lambda: (part for part in [payload]),
        "not_bytes": lambda: [payload, 3],
        "str": lambda: "text",
    }


def _fd_item(kind: str, r: int) -> Any:
    return {
        "int": r,
        "bool": True,
        "negative": -1,
        "huge": 2**31,
        "huger": 2**70,
        "fileno": _HasFileno(r),
        "str": "0",
    }[kind]


public_call = st.fixed_dictionaries(
    {
        "kind": st.sampled_from([*sorted(KINDS), "inet"]),
        "plain": st.booleans(),  # socket.socket, or _socket.socket underneath it
        "size": st.one_of(st.integers(0, 40), st.just(4096)),
        "data": st.sampled_from(sorted(_data_forms(b""))),
        "items": st.lists(
            st.sampled_from(["int"] * 6 + ["bool", "negative", "huge", "huger", "fileno", "str"]),
            max_size=4,
        ),
        "count": st.sampled_from([None, 16, 253, 254]),  # None: the items above
        "container": st.sampled_from(["list", "tuple", "generator", "array"]),
        "send_flags": st.sampled_from(
            [0, socket.MSG_DONTWAIT, int(socket.MSG_DONTWAIT), True, 2**40]
        ),
        "bufsize": st.one_of(st.integers(-1, 50), st.sampled_from([True, 4096, 2**70])),
        "maxfds": st.one_of(st.integers(-1, 5), st.sampled_from([16, 253, True, 2**70])),
        "recv_flags": st.sampled_from(
            [0, socket.MSG_DONTWAIT, socket.MSG_PEEK, int(socket.MSG_PEEK), 2**40]
        ),
        "hold": st.booleans(),
        "repeat_recv": st.booleans(),
    }
)


def _public_case(**changes: Any) -> Dict[str, Any]:
    """A ``public_call`` example: a plain stream send of 5 bytes, no descriptors, ``changes``."""
    case = {
        "kind": "stream",
        "plain": True,
        "size": 5,
        "data": "bytes",
        "items": [],
        "count": None,
        "container": "list",
        "send_flags": 0,
        "bufsize": 10,
        "maxfds": 5,
        "recv_flags": 0,
        "hold": False,
        "repeat_recv": False,
    }
    case.update(changes)
    return case


def _public_pair(case: Dict[str, Any]) -> Tuple[socket.socket, socket.socket]:
    if case["kind"] == "inet":
        # Never connected nor used: the call refuses it before any system call.
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM), socket.socket(socket.AF_INET)
    a, b = socket.socketpair(socket.AF_UNIX, KINDS[case["kind"]])
    if not case["plain"]:
        # The C type underneath socket.socket: same layout, also a plain socket.
        a, b = (_socket.socket(fileno=s.detach()) for s in (a, b))  # type: ignore[assignment]
    b.setblocking(False)
    return a, b


def _fds_arg(case: Dict[str, Any], r: int) -> Any:
    items = [r] * case["count"] if case["count"] is not None else case["items"]
    values = [_fd_item(i, r) if isinstance(i, str) else i for i in items]
    container = case["container"]
    if container == "array":
        if not all(type(v) is int and 0 <= v < 2**31 for v in values):
            return values
        return array.array("i", values)
    if container == "generator":
        return (v for v in values)
    return tuple(values) if container == "tuple" else values


def _held(sock: socket.socket) -> Optional[int]:
    """How many duplicates are held for ``sock``, all released (None: it cannot be weakly
    referenced, as ``_socket.socket``, so nothing can be held for it)."""
    from udscompat import _fdpass

    try:
        held = _fdpass.REGISTRY.held(sock)
    except TypeError:
        return None
    _fdpass.release_sent_fds(sock)
    return held


def _public_outcome(call: Any) -> Dict[str, Any]:
    try:
        return {"result": call()}
    except Exception as exc:  # the point is to compare any exception
        out: Dict[str, Any] = {"error": type(exc), "text": str(exc)}
        if isinstance(exc, ControlTruncatedError):
            out.update(data=exc.data, closed=exc.closed_fds)
        return out


@needs_compiled
@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=public_call)
@example(case=_public_case(items=["int", "negative"]))
@example(case=_public_case(items=["int"], hold=True))
@example(case=_public_case(kind="stream", items=["int"], size=0))
@example(case=_public_case(kind="stream", items=["int"], data="list_empty"))
@example(case=_public_case(count=254))
@example(case=_public_case(items=["int", "bool"]))
@example(case=_public_case(items=["huger"]))
@example(case=_public_case(items=["int"] * 3, maxfds=2))
@example(case=_public_case(items=["int"], recv_flags=int(socket.MSG_PEEK), repeat_recv=True))
def test_public_send_fds_recv_fds_agree_with_their_python_code(case: Dict[str, Any]) -> None:
    """``udscompat.send_fds``/``recv_fds`` with their compiled fast paths and with the Python
    code below them (``_fdpass._fast_send``/``_fast_recv`` off), same random arguments, valid
    and not: same results or the same exception and words, the same descriptors held, nothing
    left open."""
    from udscompat import _fdpass

    hold = mock.patch.dict(os.environ, {"UDSCOMPAT_HOLD_SENT_FDS": "1" if case["hold"] else "0"})
    hold.start()
    _fdpass.hold_sent_fds.cache_clear()
    before = open_fds()
    r, w = os.pipe()
    payload = bytes(range(256)) * 17
    payload = payload[: case["size"]]
    outcomes: Dict[str, List[Dict[str, Any]]] = {}
    received: List[int] = []
    pairs = []
    try:
        for impl in ("c", "py"):
            a, b = _public_pair(case)
            pairs.append((a, b))
            send_args = (
                _data_forms(payload)[case["data"]](),
                _fds_arg(case, r),
                case["send_flags"],
            )
            recv_args = (case["bufsize"], case["maxfds"], case["recv_flags"])
            fast: Any = (
                contextlib.nullcontext()
                if impl == "c"
                else mock.patch.multiple(_fdpass, _fast_send=None, _fast_recv=None)
            )
            with fast:
                sent = _public_outcome(functools.partial(udscompat.send_fds, a, *send_args))
                steps = [sent, {"held": _held(a)}]
                for _ in range(2 if case["repeat_recv"] else 1):
                    got = _public_outcome(functools.partial(udscompat.recv_fds, b, *recv_args))
                    if "result" in got:
                        data, fds, flags, address = got["result"]
                        received += fds
                        for fd in fds:
                            assert same_file(fd, r)
                            assert not os.get_inheritable(fd)
                        got["result"] = (data, len(fds), flags, address)
                    steps.append(got)
            outcomes[impl] = steps
        assert outcomes["c"] == outcomes["py"]
    finally:
        _io.close_fds(received)
        for a, b in pairs:
            _held(a)
            a.close()
            b.close()
        _io.close_fds([r, w])
        hold.stop()
        _fdpass.hold_sent_fds.cache_clear()
    assert open_fds() == before


# The native receive's compiled, Python-with-compiled and pure layers are compared in
# tests/test_speedups_native.py.


@needs_compiled
def test_configure_refuses_what_the_c_cannot_read() -> None:
    with pytest.raises(TypeError, match="tuple subclass"):
        SPEEDUPS.configure_message(list)
    with pytest.raises(TypeError, match=r"subtypes of _socket\.socket"):
        SPEEDUPS.configure_fast((int,), None, lambda: None, lambda: False, object())
    SPEEDUPS.configure_message(udscompat.Message)  # as _io left it


@needs_compiled
def test_a_receive_that_must_guard_sent_slots_takes_the_python_path(
    pipe: Tuple[int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a same-process receive was seen to hand back the sender's own slot, ``recv_fds``
    replaces such numbers by duplicates (``guard_reused``); the compiled fast path leaves every
    receive to the Python code while any sent number is tracked."""
    from udscompat import _fdpass

    a, b = socket.socketpair()
    with a, b:
        udscompat.send_fds(a, b"x", [pipe[0]])
        slot = os.dup(pipe[0])
        os.close(slot)  # the lowest free number: the one the receive installs
        monkeypatch.setattr(_fdpass.REGISTRY, "originals", {slot})
        _, fds, _, _ = udscompat.recv_fds(b, 1, 1)
        _io.close_fds([slot, *fds])
    assert len(fds) == 1 and fds[0] != slot


def test_a_socket_timeout_is_waited_for_on_both_paths(pipe: Tuple[int, int]) -> None:
    """``send_fds``/``recv_fds`` honour the socket's own timeout as its methods do: they wait
    for a message or room, and raise TimeoutError once it passes (the compiled calls make one
    system call on a descriptor that timeout mode made non-blocking, so they must wait here)."""
    a, b = socket.socketpair()
    with a, b:
        b.settimeout(0.05)
        with pytest.raises(TimeoutError):
            udscompat.recv_fds(b, 10, 1)
        b.settimeout(30)
        later = threading.Timer(0.1, udscompat.send_fds, (a, b"late", [pipe[0]]))
        later.start()
        data, fds, _, _ = udscompat.recv_fds(b, 10, 1)
        later.join()
        _io.close_fds(fds)
        assert data == b"late" and len(fds) == 1
        a.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                a.send(b"f" * 65536)
        a.settimeout(0.05)
        with pytest.raises(TimeoutError):
            udscompat.send_fds(a, b"x", [pipe[0]])
        drained = threading.Timer(0.1, lambda: b.recv(1 << 20))
        a.settimeout(30)
        drained.start()
        assert udscompat.send_fds(a, b"y", [pipe[0]]) == 1  # waits for the room the drain makes
        drained.join()
        b.settimeout(0)
        with contextlib.suppress(BlockingIOError):
            while True:
                _io.close_fds(udscompat.recv_fds(b, 1 << 20, 4)[1])


@needs_compiled
@pytest.mark.skipif("seqpacket" not in KINDS, reason="no native SOCK_SEQPACKET here")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(
        st.tuples(
            st.one_of(st.integers(0, 70), st.sampled_from([4095, 4096, 4097, 65536, 200000])),
            st.sampled_from([0, 1, 64, 4096, 65536, 262144, 300000]),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_every_received_payload_is_its_own_object(steps: List[Tuple[int, int]]) -> None:
    """The compiled receive copies small payloads out of one kept buffer: whatever the sizes
    and buffer sizes in a row, every payload handed out keeps its bytes after later receives
    (none is the kept buffer), cut exactly where ``bufsize`` cuts it."""
    a, b = socket.socketpair(socket.AF_UNIX, KINDS["seqpacket"])
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    kept: List[Tuple[bytes, bytes]] = []
    with a, b:
        for i, (size, bufsize) in enumerate(steps):
            payload = bytes([i + 1]) * size
            if size == 0 and bufsize != 0:
                continue  # a zero-length message: nothing to tell apart
            a.send(payload)
            data = SPEEDUPS.recvmsg(b, bufsize, 0, 0)[0]
            assert data == payload[:bufsize]
            kept.append((data, payload[:bufsize]))
    for data, expected in kept:
        assert data == expected
