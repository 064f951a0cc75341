"""Attacks on issue 14's API that its own tests did not try (see coord notes attack-14).

Each test here failed on main (9b1c95f and later) without its fix.  The
signal tests place a real signal exactly (``tests.test_io_attacks.Interrupts``): a
profile hook sends SIGUSR1, whose handler raises, after a chosen call boundary in the
listed modules, and every boundary of the operation is tried in turn.
"""

from __future__ import annotations

import errno
import functools
import gc
import os
import resource
import signal
import socket
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

import udscompat
from tests.conftest import SEQPACKET_IMPLEMENTATIONS, only_on, open_fds
from tests.test_io_attacks import IO_MODULES, Interrupted, Interrupts
from udscompat import _probes, _seqpacket
from udscompat._ancillary import credentials_probe

# An interrupt that lands in a __del__ (bind's descriptor guard) is printed and dropped by
# Python itself, by design: the operation goes on, which these tests then check.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

needs_sigusr1 = pytest.mark.skipif(
    not hasattr(signal, "SIGUSR1") or not hasattr(os, "kill"), reason="needs SIGUSR1"
)

#: The I/O modules plus those that bind, wrap and make the connection objects.
MODULES = IO_MODULES | {"udscompat._bind", "udscompat._dgram", "udscompat._sockarg"}


class ModuleInterrupts(Interrupts):
    """``Interrupts`` counting the call boundaries of ``MODULES``."""

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_return") and frame.f_globals.get("__name__") in MODULES:
            # The parent counts boundaries in IO_MODULES: present this one as one of them.
            self._count += 1
            self.events.append((event, frame.f_code.co_name))
            if self.fired < len(self.schedule) and self._count == self.schedule[self.fired]:
                self.fired += 1
                self._count = 0
                os.kill(os.getpid(), signal.SIGUSR1)


def fds_back_to(before: set[int]) -> bool:
    """The open descriptors are ``before`` again (after a collection, if need be: an
    interrupted call's frames may hold a socket object in a reference cycle)."""
    if open_fds() == before:
        return True
    gc.collect()
    return open_fds() == before


def boundaries(run: Callable[[], Any]) -> int:
    """How many call boundaries ``run`` passes (run once to record, after a warm-up)."""
    recorder = ModuleInterrupts()
    with recorder.active():
        run()
    return len(recorder.events)


def interrupted_at(point: int, run: Callable[[], Any]) -> Optional[Any]:
    """``run()`` with an interrupt after boundary ``point``; its result, None if interrupted."""
    try:
        with ModuleInterrupts((point,)).active():
            return run()
    except Interrupted:
        return None


@pytest.fixture
def listener(short_tmp: Path, request: pytest.FixtureRequest) -> Iterator[Any]:
    lst = udscompat.SeqpacketListener(short_tmp / "srv", implementation=request.param)
    lst.settimeout(0)
    with lst:
        yield lst


def drain_accepts(lst: udscompat.SeqpacketListener) -> None:
    """Accept and close what connected (a client interrupted after its connect)."""
    while True:
        try:
            conn, _ = lst.accept()
        except BlockingIOError:
            return
        conn.close()


# -- connect(local_addr=...): the socket file is never left behind -----------------------------


@needs_sigusr1
@pytest.mark.parametrize("listener", SEQPACKET_IMPLEMENTATIONS, indirect=True)
def test_connect_from_a_local_path_interrupted_anywhere_leaves_no_socket_file(
    listener: udscompat.SeqpacketListener, short_tmp: Path
) -> None:
    """A raising signal handler at any call boundary of connect(local_addr=...) -- binding,
    connecting, making the connection object -- leaves no socket file at local_addr and no
    descriptor (main left the file when the interrupt came after the connect, in the
    connection's constructor, or as bind() let its directory go)."""
    impl = listener.implementation
    local = short_tmp / "local"
    server = listener.local_addr

    def connect() -> udscompat.SeqpacketConn:
        return udscompat.SeqpacketConn.connect(server, local_addr=local, implementation=impl)

    connect().close()  # warm-up: the probes a first connection runs are cached now
    drain_accepts(listener)
    total = boundaries(lambda: connect().close())
    drain_accepts(listener)
    assert total > 20
    left = []
    for point in range(1, total + 1):
        before = open_fds()
        conn = interrupted_at(point, connect)
        if conn is not None:
            conn.close()
        drain_accepts(listener)
        if local.exists() or local.is_symlink():
            left.append(point)
            local.unlink()
        assert fds_back_to(before), point
    assert not left, f"socket file left after interrupts at boundaries {left} of {total}"


def test_async_connect_from_a_local_path_interrupted_leaves_no_socket_file(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for aio.open_seqpacket_connection once connected.  Stand-in for the signal:
    the AsyncSeqpacketConn constructor raises what a handler would (the profile-hook
    interrupts do not run under an event loop here); main left the file and the socket."""
    import asyncio

    from udscompat import aio

    def interrupted(self: Any, conn: Any) -> None:
        raise Interrupted()

    local = short_tmp / "local"
    lst = udscompat.SeqpacketListener(short_tmp / "srv", implementation="emulated")
    lst.settimeout(0)
    monkeypatch.setattr(aio.AsyncSeqpacketConn, "__init__", interrupted)
    with lst:
        before = open_fds()
        with pytest.raises(Interrupted):
            asyncio.run(
                aio.open_seqpacket_connection(
                    lst.local_addr, local_addr=local, implementation="emulated"
                )
            )
        drain_accepts(lst)
        assert not local.exists()
        assert open_fds() == before


def _maker(kind: str) -> Callable[[Path], Any]:
    if kind == "datagram":
        return lambda path: udscompat.UnixDatagram.bind(path)
    return lambda path: udscompat.SeqpacketListener(path, implementation=kind)


@needs_sigusr1
@pytest.mark.parametrize("kind", ["datagram", *SEQPACKET_IMPLEMENTATIONS])
def test_binding_interrupted_anywhere_leaves_no_socket_file(short_tmp: Path, kind: str) -> None:
    """UnixDatagram.bind and SeqpacketListener (native, emulated), interrupted at each
    boundary: main left the file after an interrupt as bind() let its directory go (all
    three) or while the UnixDatagram object was made."""
    make = _maker(kind)
    path = short_tmp / "bound"
    make(path).close()
    total = boundaries(lambda: make(path).close())
    left = []
    for point in range(1, total + 1):
        before = open_fds()
        made = interrupted_at(point, lambda: make(path))
        if made is not None:
            made.close()
        if path.exists():
            left.append(point)
            path.unlink()
        assert fds_back_to(before), point
    assert not left, f"socket file left after interrupts at boundaries {left} of {total}"


# -- dup(): a member nobody holds never keeps the connection ----------------------------------


def native_only() -> Any:
    return pytest.mark.skipif(
        udscompat.capabilities().features["seqpacket"][0] != "native",
        reason="dup() is for native connections",
    )


def _ends(peer: udscompat.SeqpacketConn) -> bool:
    """The peer reads end-of-stream within a second (the connection really ended)."""
    peer.settimeout(1.0)
    try:
        return peer.recv_message() is None
    except TimeoutError:
        return False


@needs_sigusr1
@native_only()
@pytest.mark.parametrize("listener", ["native"], indirect=True)
def test_close_of_a_duplicated_connection_interrupted_anywhere_is_finished_by_the_next(
    listener: udscompat.SeqpacketListener, short_tmp: Path
) -> None:
    """close() of one of two dup() objects, interrupted at each boundary, then closed again,
    then the other closed: nothing raises, no descriptor stays, the peer sees the end and
    the socket file of local_addr is gone.  On main an interrupt as the group was left made
    the other object's close raise EBADF, keep its descriptor and the file, and the peer
    never saw the end; an interrupt inside the hand-over left the file."""
    local = short_tmp / "local"

    def scenario(point: int) -> List[str]:
        before = open_fds()
        conn = udscompat.SeqpacketConn.connect(
            listener.local_addr, local_addr=local, implementation="native"
        )
        listener.settimeout(None)
        peer, _ = listener.accept()
        twin = conn.dup()
        problems = []
        with peer:
            if point:
                interrupted_at(point, conn.close)
            for obj in (conn, twin):
                try:
                    obj.close()
                except OSError as exc:
                    problems.append(f"close raised {exc!r}")
            if not _ends(peer):
                problems.append("the peer never saw the end")
        gc.collect()
        if open_fds() != before:
            problems.append(f"descriptors left: {sorted(open_fds() - before)}")
        if local.exists():
            problems.append("socket file left")
            local.unlink()
        return problems

    recorder = ModuleInterrupts()
    conn = udscompat.SeqpacketConn.connect(
        listener.local_addr, local_addr=local, implementation="native"
    )
    twin = conn.dup()
    with recorder.active():
        conn.close()
    twin.close()
    listener.settimeout(0)
    drain_accepts(listener)
    total = len(recorder.events)
    assert total > 5
    failures = {}
    for point in range(0, total + 1):
        got = scenario(point)
        if got:
            failures[point] = got
    assert not failures, f"of {total} boundaries: {failures}"


@needs_sigusr1
@native_only()
@pytest.mark.parametrize("listener", ["native"], indirect=True)
def test_dup_interrupted_anywhere_leaves_no_member_behind(
    listener: udscompat.SeqpacketListener, short_tmp: Path
) -> None:
    """dup() interrupted at each boundary while an earlier duplicate exists: once every
    object the caller holds is closed, the peer sees the end and the socket file of
    local_addr is gone (main kept the half-made duplicate's socket in the group, so the
    last close handed the file to it and never removed it)."""
    local = short_tmp / "local"
    failures = {}
    total = 0
    point = 0
    while point <= total:
        conn = udscompat.SeqpacketConn.connect(
            listener.local_addr, local_addr=local, implementation="native"
        )
        listener.settimeout(None)
        peer, _ = listener.accept()
        first = conn.dup()
        before = open_fds()
        if point == 0:
            recorder = ModuleInterrupts()
            with recorder.active():
                second: Optional[udscompat.SeqpacketConn] = conn.dup()
            total = len(recorder.events)
        else:
            second = interrupted_at(point, conn.dup)
        for obj in (conn, first, second):
            if obj is not None:
                obj.close()
        gc.collect()
        problems = []
        with peer:
            if not _ends(peer):
                problems.append("the peer never saw the end")
        if local.exists():
            problems.append("socket file left")
            local.unlink()
        if not open_fds() < before:
            problems.append("descriptors left")
        if problems:
            failures[point] = problems
        point += 1
    assert total > 5
    assert not failures, f"of {total} boundaries: {failures}"


# -- free functions given an object with fileno() ---------------------------------------------


class Fileno:
    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


@pytest.fixture
def default_timeout() -> Iterator[float]:
    socket.setdefaulttimeout(0.2)
    try:
        yield 0.2
    finally:
        socket.setdefaulttimeout(None)


def test_a_borrowed_descriptor_keeps_its_blocking_mode_under_a_default_timeout(
    default_timeout: float,
) -> None:
    """An application that set socket.setdefaulttimeout() hands a blocking socket's fileno()
    to the free functions: main left the caller's descriptor non-blocking for good (CPython
    switches it when it wraps a descriptor under a default timeout; the mode belongs to the
    open file, so the caller's own socket changed under it) and ran the call with the
    default timeout instead of the caller's blocking mode."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.settimeout(None)
    b.settimeout(None)
    with a, b:
        udscompat.send_fds(Fileno(a.fileno()), b"x", [])
        udscompat.peer_credentials(Fileno(a.fileno()))
        udscompat.pass_credentials(Fileno(b.fileno()))
        data, fds, _, _ = udscompat.recv_fds(Fileno(b.fileno()), 8, 0)
        assert (data, fds) == (b"x", [])
        assert os.get_blocking(a.fileno()) and os.get_blocking(b.fileno())
        b.setblocking(False)  # a non-blocking caller's stays non-blocking
        with pytest.raises(BlockingIOError):
            udscompat.recv_fds(Fileno(b.fileno()), 8, 0)
        assert not os.get_blocking(b.fileno())


# -- UnixDatagram timeouts, as SeqpacketConn's ------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "error"),
    [(float("nan"), ValueError), (float("inf"), OverflowError), (-1, ValueError), ("1", TypeError)],
)
def test_a_datagram_refuses_a_timeout_it_cannot_keep_when_it_is_set(
    timeout: Any, error: type
) -> None:
    """main took NaN and infinity and failed each later receive with ValueError/OverflowError
    from the poll instead (SeqpacketConn refuses them in settimeout)."""
    a, b = udscompat.UnixDatagram.pair()
    with a, b:
        with pytest.raises(error):
            a.settimeout(timeout)
        assert a.gettimeout() is None
    conn_a, conn_b = udscompat.seqpacket_pair()
    with conn_a, conn_b, pytest.raises(error):
        conn_a.settimeout(timeout)  # the same refusal


# -- recv_message_into: one contract for both implementations ---------------------------------


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_strided_buffer_is_refused_by_both_implementations(impl: str) -> None:
    """A memoryview with a step: the native receive refused it (recvmsg_into) while the
    emulation wrote every other byte and reported the message truncated.  Now both refuse
    it naming the parameter, and the message stays for the next receive."""
    a, b = udscompat.seqpacket_pair(implementation=impl)
    with a, b:
        a.send(b"abcdef")
        buffer = bytearray(12)
        with pytest.raises(TypeError, match="buffers: memoryview is not C-contiguous"):
            b.recv_message_into(memoryview(buffer)[::2])
        with pytest.raises(TypeError, match="buffers: memoryview is not C-contiguous"):
            b.recv_message_into([bytearray(2), memoryview(buffer)[::3]])
        assert buffer == bytearray(12)
        b.settimeout(0)
        got = b.recv_message_into(memoryview(buffer)[2:10])
        assert got is not None and (got.nbytes, got.truncated) == (6, False)
        assert bytes(buffer) == b"\0\0abcdef\0\0\0\0"


# -- credentials switched on behind a connection's back ---------------------------------------

MAX_FDS: Optional[int] = udscompat.capabilities().quirks["max_fds_per_message"]


def _full_message(
    sender: udscompat.SeqpacketConn,
    receiver: udscompat.SeqpacketConn,
    fd: int,
    receive: Optional[Callable[..., Optional[udscompat.Message]]] = None,
) -> Tuple[int, ...]:
    """The descriptors of a message with the most, through ``receive`` (the public method by
    default, called positionally: the compiled method's own case where it runs)."""
    assert MAX_FDS is not None
    sender.send(b"full", [fd] * MAX_FDS)
    receiver.settimeout(1.0)
    message = (receive or receiver.recv_message)(65536, MAX_FDS)
    assert message is not None
    for number in message.fds:
        os.close(number)
    return message.fds


def _every_receive(
    sender: udscompat.SeqpacketConn, receiver: udscompat.SeqpacketConn, fd: int
) -> List[int]:
    """How many descriptors a full message brings through each receive path of ``receiver``:
    the public method (compiled where built), the Python method with the compiled receive
    inside and without it (native connections), recv_message_into and peek."""
    counts = [len(_full_message(sender, receiver, fd))]
    if isinstance(receiver, _seqpacket._NativeConn):
        python = functools.partial(_seqpacket.PYTHON_NATIVE_RECV_MESSAGE, receiver)
        counts.append(len(_full_message(sender, receiver, fd, python)))
        compiled = receiver._compiled_recv  # type: ignore[attr-defined]
        receiver._compiled_recv = None  # type: ignore[attr-defined]
        try:
            counts.append(len(_full_message(sender, receiver, fd, python)))
        finally:
            receiver._compiled_recv = compiled  # type: ignore[attr-defined]
    assert MAX_FDS is not None
    sender.send(b"full", [fd] * MAX_FDS)
    peeked = receiver.peek(8, MAX_FDS)
    got = receiver.recv_message_into(bytearray(8), MAX_FDS)
    assert peeked is not None and got is not None
    for number in peeked.fds + got.fds:
        os.close(number)
    return [*counts, len(peeked.fds), len(got.fds)]


CREDENTIALS_ON = "Linux: SO_PASSCRED set behind the connection's back (SO_TIMESTAMP marker too)"


@only_on("Linux", CREDENTIALS_ON)
def test_a_dup_receives_the_most_fds_after_another_object_passes_credentials(
    pipe: Tuple[int, int],
) -> None:
    """b.pass_credentials(), then b.dup()'s twin receives a message with the most
    descriptors: main's control room (1064 B on Linux) held the marker (32) and the
    credentials (32) the kernel now attaches, and 246 of 253 descriptors: ControlTruncated-
    Error blaming a full descriptor table.  Every receive has room for credentials now."""
    a, b = udscompat.seqpacket_pair(implementation="native")
    twin = b.dup()
    with a, b, twin:
        b.pass_credentials()  # the kernel socket is shared: twin's messages bring them too
        assert _every_receive(a, twin, pipe[0]) == [MAX_FDS] * 5


@only_on("Linux", CREDENTIALS_ON)
def test_connections_accepted_from_a_listener_passing_credentials_receive_the_most_fds(
    short_tmp: Path, pipe: Tuple[int, int]
) -> None:
    """udscompat.pass_credentials(listener) (a SeqpacketListener has fileno()): Linux gives
    every accepted socket SO_PASSCRED too; and a socket handed to from_socket() with it on."""
    lst = udscompat.SeqpacketListener(short_tmp / "srv", implementation="native")
    with lst:
        udscompat.pass_credentials(lst)
        client = udscompat.SeqpacketConn.connect(lst.local_addr, implementation="native")
        server, _ = lst.accept()
        with client, server:
            assert _every_receive(client, server, pipe[0]) == [MAX_FDS] * 5
    x, y = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    y.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    with (
        udscompat.SeqpacketConn.from_socket(x) as left,
        udscompat.SeqpacketConn.from_socket(y) as right,
    ):
        assert _every_receive(left, right, pipe[0]) == [MAX_FDS] * 5


# -- asyncio: a message kept for a cancelled caller obeys the next caller's limits ------------


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_message_kept_after_a_cancelled_receive_obeys_the_next_callers_limits(
    impl: str, pipe: Tuple[int, int]
) -> None:
    """A receive cancelled as its message arrived (asyncio.wait_for's timeout) keeps the
    message for the next receive -- which on main got it as received under the cancelled
    caller's limits: three descriptors for a caller that asked for none (never closed by
    it: leaked) and 100 bytes for one that asked for 8, not marked truncated."""
    import asyncio

    from tests.test_aio_conn_methods import _cancel_after_it_completed
    from udscompat import aio

    async def kept_message(
        a: aio.AsyncSeqpacketConn, b: aio.AsyncSeqpacketConn, data: bytes
    ) -> None:
        task = asyncio.ensure_future(b.recv_message(65536, 3))
        await asyncio.sleep(0)
        a.conn.send(data, [pipe[0]] * 3)
        await _cancel_after_it_completed(task)

    async def main() -> None:
        a, b = aio.seqpacket_pair(implementation=impl)
        async with a, b:
            await kept_message(a, b, b"x" * 100)
            with pytest.raises(udscompat.ControlTruncatedError, match="at most 0"):
                await b.recv_message(8)
            await kept_message(a, b, b"y" * 100)
            with pytest.raises(udscompat.ControlTruncatedError, match="at most 2"):
                await b.recv_message_into(bytearray(8), 2)
            await kept_message(a, b, b"z" * 100)
            message = await b.recv_message(8, 3)
            assert message is not None
            for fd in message.fds:
                os.close(fd)
            assert (message.data, len(message.fds), message.truncated) == (b"z" * 8, 3, True)

    asyncio.run(asyncio.wait_for(main(), 30))


# -- peek out of descriptors -------------------------------------------------------------------


def _fill_table() -> List[int]:
    """Descriptors until EMFILE (the caller lowered RLIMIT_NOFILE first); the caller closes."""
    held: List[int] = []
    for _ in range(4096):
        try:
            held.append(os.dup(0))
        except OSError as exc:
            if exc.errno != errno.EMFILE:
                raise
            return held
    raise AssertionError("RLIMIT_NOFILE did not bound the table")


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_peek_out_of_descriptors_leaves_the_message_for_the_receive(
    impl: str, pipe: Tuple[int, int]
) -> None:
    """A peek that cannot install the message's descriptors (the table is full) must leave
    the message for the next receive, as the native one does (Linux: EMFILE, the message
    still queued, received whole once there is room).  The emulation's peek consumed it on
    main: the next receive returned the message after it, so the payload was lost too.  Now
    the next receive reports the loss again, with the payload."""
    a, b = udscompat.seqpacket_pair(implementation=impl)
    with a, b:
        b.settimeout(1.0)
        a.send(b"precious", [pipe[0], pipe[1]])
        a.send(b"next")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 8, hard))
        held = []
        try:
            held = _fill_table()
            with pytest.raises(OSError):  # native: EMFILE; emulated: ControlTruncatedError
                b.peek(maxfds=2)
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert b.pending() or impl == "native"
        try:
            message = b.recv_message(maxfds=2)
        except udscompat.ControlTruncatedError as exc:
            assert impl == "emulated"
            data = exc.data
        else:
            assert message is not None
            for fd in message.fds:
                os.close(fd)
            data = message.data
        assert data == b"precious"
        assert b.recv_message() == udscompat.Message(b"next")


def test_a_peek_with_room_for_its_copies_but_not_for_the_probe_leaks_nothing(
    pipe: Tuple[int, int],
) -> None:
    """The first peek of a process asked _probes.peek_installs_fds() AFTER its recvmsg had
    installed the copies; the probe opens four descriptors, and failing with EMFILE (or
    interrupted) it lost the copies: two leaked per such peek on main.  A connection now
    runs the probe when it is made, and a peek asks it before its receive.  (The answer is
    cached: the test forgets it before making the connection, as in a fresh process.)"""
    _probes.peek_installs_fds.cache_clear()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn = udscompat.SeqpacketConn.from_socket(b)
    with a, conn:
        udscompat.send_fds(a, b"x", [pipe[0], pipe[1]])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 8, hard))
        held: List[int] = []
        try:
            held = _fill_table()
            for _ in range(2):
                os.close(held.pop())  # room for the peek's two copies, none for a probe
            before = open_fds()
            peeked = conn.peek(8, 2)
            assert peeked is not None and len(peeked.fds) == 2
            for fd in peeked.fds:
                os.close(fd)
            leaked = open_fds() - before
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert not leaked, f"the peek's copies {sorted(leaked)} leaked"
        message = conn.recv_message(8, 2)  # and the message is still there
        assert message is not None and len(message.fds) == 2
        for fd in message.fds:
            os.close(fd)


def test_a_first_peek_on_a_plain_socket_with_room_for_its_copies_only_leaks_nothing(
    pipe: Tuple[int, int],
) -> None:
    """As the connection test above, through recv_fds on a socket udscompat did not make:
    nothing ran the probe before (a connection does at construction), and the probe asked
    after the receive fails with EMFILE while the peek's two copies are open."""
    _probes.peek_installs_fds.cache_clear()
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        udscompat.send_fds(a, b"x", [pipe[0], pipe[1]])
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 8, hard))
        held: List[int] = []
        leaked: set[int] = set()
        try:
            held = _fill_table()
            for _ in range(2):
                os.close(held.pop())  # room for the peek's two copies, none for the probe
            before = open_fds()
            try:
                _, fds, _, _ = udscompat.recv_fds(Fileno(b.fileno()), 8, 2, socket.MSG_PEEK)
                for fd in fds:
                    os.close(fd)
            except OSError:
                pass  # refusing is fine; leaving the copies open is not
            leaked = open_fds() - before
            for fd in leaked:
                os.close(fd)
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            _probes.peek_installs_fds.cache_clear()
        assert not leaked, f"the peek's copies {sorted(leaked)} leaked"


@pytest.mark.parametrize("how", ["peek", "recv_fds"])
def test_a_peek_without_descriptors_never_fails_on_the_probe(how: str) -> None:
    """A full table and no probe answer yet: a peek of a message WITHOUT descriptors works
    (the probe is asked after the receive only when descriptors came), as on main."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn = udscompat.SeqpacketConn.from_socket(b)
    with a, conn:
        a.send(b"plain")
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 8, hard))
        held: List[int] = []
        _probes.peek_installs_fds.cache_clear()
        try:
            held = _fill_table()
            if how == "peek":
                peeked = conn.peek(8)
                assert peeked is not None and peeked.data == b"plain"
            else:
                data, fds, _, _ = udscompat.recv_fds(Fileno(conn.fileno()), 8, 0, socket.MSG_PEEK)
                assert (data, fds) == (b"plain", [])
        finally:
            for fd in held:
                os.close(fd)
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            _probes.peek_installs_fds.cache_clear()


@native_only()
@pytest.mark.parametrize("listener", ["native"], indirect=True)
def test_dup_racing_a_close_in_another_thread_leaves_nothing_open(
    listener: udscompat.SeqpacketListener, short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another thread's close() lands while dup() makes the twin (stand-in for the thread
    interleaving: the twin's constructor closes the original, exactly there).  On main the
    twin's close raised EBADF (its group handed the file to the closed original), kept its
    descriptor, and the peer never saw the end."""
    before = open_fds()
    conn = udscompat.SeqpacketConn.connect(
        listener.local_addr, local_addr=short_tmp / "local", implementation="native"
    )
    listener.settimeout(None)
    peer, _ = listener.accept()
    real = _seqpacket._run_send_probes

    def closed_meanwhile() -> None:
        monkeypatch.setattr(_seqpacket, "_run_send_probes", real)
        conn.close()

    monkeypatch.setattr(_seqpacket, "_run_send_probes", closed_meanwhile)
    with peer:
        twin = conn.dup()
        assert conn.closed and not twin.closed
        twin.close()
        assert _ends(peer)
    assert not (short_tmp / "local").exists()
    assert fds_back_to(before)


def test_a_closed_object_is_ebadf_for_every_free_function() -> None:
    """A closed UnixDatagram (or any wrapper of a closed socket: fileno() is -1) given to a
    free function that borrows its descriptor: main raised ValueError("negative file
    descriptor") from CPython where every other closed case says EBADF."""
    a, b = udscompat.UnixDatagram.pair()
    b.close()
    with a:
        for call in (
            lambda: udscompat.peer_security_label(b),
            lambda: udscompat.peer_credentials(Fileno(-1)),
            lambda: udscompat.recv_fds(Fileno(-1), 8, 0),
        ):
            with pytest.raises(OSError, match=r"sock: fileno\(\) returned -1") as caught:
                call()
            assert caught.value.errno == errno.EBADF


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_strided_buffer_to_send_is_a_type_error_naming_data_everywhere(impl: str) -> None:
    """main: BufferError from the native send and send_ancillary (not the documented
    TypeError), and three different TypeErrors from the emulation, none naming `data`."""
    strided = memoryview(bytearray(b"abcdef"))[::2]
    a, b = udscompat.seqpacket_pair(implementation=impl)
    d1, d2 = udscompat.UnixDatagram.pair()
    with a, b, d1, d2:
        sends = [
            lambda: a.send(strided),
            lambda: a.send([b"x", strided]),
            lambda: d1.send(strided),
            lambda: udscompat.send_ancillary(d1, [strided]),
        ]
        if credentials_probe().available:
            sends.append(lambda: a.send(strided, credentials=udscompat.send_credentials()))
        for send in sends:
            with pytest.raises(TypeError, match="data: memoryview is not C-contiguous"):
                send()
        b.settimeout(0)
        with pytest.raises(BlockingIOError):
            b.recv_message()  # nothing went out


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_failed_receive_into_lets_the_callers_buffer_go(impl: str) -> None:
    """Growing the buffer in ``except TimeoutError:`` (or after a refused list) works with
    the standard library's recv_into/recvmsg_into, which release the buffer before they
    raise.  main kept it exported while the exception lived (its frames held our views):
    BufferError 'Existing exports of data: object cannot be re-sized', sync and asyncio."""
    import asyncio

    from udscompat import aio

    a, b = udscompat.seqpacket_pair(implementation=impl)
    with a, b:
        buffer = bytearray(4)
        b.settimeout(0.01)
        with pytest.raises(TimeoutError):
            try:
                b.recv_message_into(buffer)
            except TimeoutError:
                buffer.extend(b"room")  # the exception is alive here
                raise
        b.settimeout(0)
        with pytest.raises(BlockingIOError):
            try:
                b.recv_message_into([buffer, bytearray(2)])
            except BlockingIOError:
                buffer.extend(b"more")
                raise
        with pytest.raises(TypeError, match="read-only"):
            try:
                b.recv_message_into([buffer, b"read-only"])
            except TypeError:
                buffer.extend(b"again")
                raise
        assert len(buffer) == 17

    async def main() -> None:
        x, y = aio.seqpacket_pair(implementation=impl)
        async with x, y:
            grown = bytearray(4)
            with pytest.raises(asyncio.TimeoutError):
                try:
                    await asyncio.wait_for(y.recv_message_into(grown), 0.01)
                except asyncio.TimeoutError:
                    grown.extend(b"room")
                    raise
            assert len(grown) == 8

    asyncio.run(asyncio.wait_for(main(), 30))


def test_the_compiled_receive_has_the_same_room_for_credentials() -> None:
    from udscompat import _io
    from udscompat._platform import backend

    # Configured here as udscompat configures it (not yet under UDSCOMPAT_SPEEDUPS=0).
    speedups = _io.configure_compiled(pytest.importorskip("udscompat._speedups"))

    room = socket.CMSG_SPACE(4 * _io.FD_ROOM) + socket.CMSG_SPACE(16) + backend.CREDENTIALS_ROOM
    assert room == _io.ANCBUF_SIZE
    assert speedups.control_size() == _io.ANCBUF_SIZE
    try:
        for extra in (-1, 8193):
            with pytest.raises(ValueError, match=r"extra_room must be 0\.\.8192"):
                speedups.configure(_io.FD_ROOM, None, (), None, extra)
        assert speedups.control_size() == _io.ANCBUF_SIZE  # refused before anything changed
    finally:
        _io.configure_compiled(speedups)
