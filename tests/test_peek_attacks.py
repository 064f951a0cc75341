"""A peek whose probe cannot run: the descriptor table is (nearly) full, the answer of
``_probes.peek_installs_fds()`` is not known yet, and the message may carry descriptors.

On Linux a MSG_PEEK installs copies of the descriptors (ours, to close); through NetBSD's
Linux ABI it reports numbers that are not ours (closing them would close someone else's).
The probe that tells the two apart needs free slots.  Without them, udscompat peeks with
control room for what Linux puts before SCM_RIGHTS only (``control_room_before_rights``):
nothing can be installed, a message without descriptors is returned as usual, and one with
them raises EMFILE and stays queued.  Before, the probe was asked after the receive, failed
with EMFILE, and the copies the peek had installed leaked (up to as many as there was room
for).  Every test here restores RLIMIT_NOFILE and forgets the probe's answer afterwards.
"""

from __future__ import annotations

import array
import contextlib
import errno
import os
import resource
import signal
import socket
import sys
import threading
import time
from typing import Any, Iterator, List, Optional, Set, Tuple

import pytest

import udscompat
from tests.conftest import open_fds
from tests.test_io_attacks import Interrupted, Interrupts
from tests.test_parity_attacks import _fill_table as fill_table
from udscompat import _probes
from udscompat._platform import backend

pytestmark = [
    pytest.mark.skipif(
        not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd"
    ),
    pytest.mark.skipif(not _probes.peek_installs_fds(), reason="a peek installs no copies here"),
]

SO_TIMESTAMP = 29  # asm-generic/socket.h (SO_TIMESTAMP_OLD): the marker udscompat sets
KINDS = {
    "stream": socket.SOCK_STREAM,
    "dgram": socket.SOCK_DGRAM,
    "seqpacket": socket.SOCK_SEQPACKET,
}
#: Free slots left in the table: none, room for three copies but not for the probe's
#: socketpair and pipe, or room for those four but not for the copy its own peek installs
#: (the probe then answered "installs nothing" and cached it: see below).
FREE_SLOTS = (0, 3, 4)


@contextlib.contextmanager
def table_with(free: int) -> Iterator[None]:
    """The descriptor table full but for ``free`` slots, the probe's answer forgotten; both
    restored afterwards (the answer forgotten again: the next test asks afresh)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 16, hard))
    held: List[int] = []
    _probes.peek_installs_fds.cache_clear()
    try:
        held = fill_table()
        for _ in range(free):
            os.close(held.pop())
        with pytest.raises(OSError) as probe_failed:
            _probes.peek_installs_fds()  # the premise: no room for the probe (not cached)
        assert probe_failed.value.errno == errno.EMFILE
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        _probes.peek_installs_fds.cache_clear()


@contextlib.contextmanager
def pair(kind: str, options: str) -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A connected pair of ``kind``; the receiver with SO_TIMESTAMP and/or SO_PASSCRED."""
    a, b = socket.socketpair(socket.AF_UNIX, KINDS[kind])
    with a, b:
        if options in ("timestamp", "both"):
            b.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        if options in ("credentials", "both"):
            b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        yield a, b


def peek(how: str, sock: socket.socket, maxfds: int) -> Tuple[bytes, List[int], Any]:
    """A peek through ``recv_fds`` or ``recv_ancillary``: (data, fds, credentials or None)."""
    if how == "recv_fds":
        data, fds, _, _ = udscompat.recv_fds(sock, 64, maxfds, socket.MSG_PEEK)
        return data, fds, None
    message = udscompat.recv_ancillary(sock, 64, maxfds, socket.MSG_PEEK)
    return message.data, list(message.fds), message.credentials


def receive_whole(sock: socket.socket, count: int) -> bytes:
    """Receive the queued message once there is room: all ``count`` descriptors (closed)."""
    data, fds, flags, _ = udscompat.recv_fds(sock, 64, max(count, 1))
    assert len(fds) == count and not flags & socket.MSG_CTRUNC
    for fd in fds:
        os.close(fd)
    return data


@pytest.mark.parametrize("how", ["recv_fds", "recv_ancillary"])
@pytest.mark.parametrize("options", ["none", "timestamp", "credentials", "both"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("count", [1, 200])
@pytest.mark.parametrize("free", FREE_SLOTS)
def test_a_first_peek_of_descriptors_without_room_for_the_probe_raises_emfile_and_leaks_nothing(
    free: int, count: int, kind: str, options: str, how: str, pipe: Tuple[int, int]
) -> None:
    """EMFILE, not one descriptor installed (with three free slots the kernel would install
    three copies with a full control buffer: main leaked them), and the message is still
    queued, received whole once there is room.  A stream socket with SO_TIMESTAMP on gets
    no timestamp (af_unix.c's stream read puts none): room for one would take copies."""
    with pair(kind, options) as (a, b):
        udscompat.send_fds(a, b"payload", [pipe[0]] * count)
        before = open_fds()
        error: Optional[OSError] = None
        with table_with(free):
            try:
                peek(how, b, count)
            except OSError as exc:
                error = exc
        assert open_fds() == before, "the peek left descriptors open"
        assert error is not None and type(error) is OSError, error
        assert error.errno == errno.EMFILE and "still queued" in str(error)
        assert receive_whole(b, count) == b"payload"


@pytest.mark.parametrize("how", ["recv_fds", "recv_ancillary"])
@pytest.mark.parametrize("options", ["none", "timestamp", "credentials", "both"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("free", FREE_SLOTS)
def test_a_first_peek_without_descriptors_works_whatever_the_options(
    free: int, kind: str, options: str, how: str
) -> None:
    """The same table, a message without descriptors: the peek returns it (with the sender's
    credentials where SO_PASSCRED is on), and it is still queued.  Room too small for the
    timestamp or the credentials would end in MSG_CTRUNC, which reads as descriptors."""
    with pair(kind, options) as (a, b):
        a.send(b"plain")
        with table_with(free):
            data, fds, creds = peek(how, b, 4)
        assert (data, fds) == (b"plain", [])
        if how == "recv_ancillary" and options in ("credentials", "both"):
            assert creds is not None and creds.pid == os.getpid()
        assert b.recv(64) == b"plain"


def test_a_native_connection_peek_raises_emfile_and_leaves_the_message(
    pipe: Tuple[int, int],
) -> None:
    """SeqpacketConn.peek (its SO_TIMESTAMP marker on) when the answer was forgotten after
    the connection ran the probe: EMFILE, not UnsupportedError (nothing says the kernel
    installs no copies), nothing installed, the message received whole afterwards."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn = udscompat.SeqpacketConn.from_socket(b)
    with a, conn:
        udscompat.send_fds(a, b"x", [pipe[0], pipe[1]])
        before = open_fds()
        with table_with(3), pytest.raises(OSError) as raised:
            conn.peek(8, 2)
        assert open_fds() == before
        assert type(raised.value) is OSError and raised.value.errno == errno.EMFILE
        message = conn.recv_message(8, 2)
        assert message is not None and message.data == b"x" and len(message.fds) == 2
        for fd in message.fds:
            os.close(fd)


def test_an_async_connection_peek_raises_emfile_and_leaves_the_message(
    pipe: Tuple[int, int],
) -> None:
    """AsyncSeqpacketConn.peek runs the connection's peek in its loop: the same EMFILE,
    nothing installed, and the message received whole afterwards."""
    import asyncio

    from udscompat import aio

    async def main() -> None:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn = aio.AsyncSeqpacketConn(udscompat.SeqpacketConn.from_socket(b))
        with a:
            try:
                udscompat.send_fds(a, b"x", [pipe[0], pipe[1]])
                before = open_fds()
                with table_with(3), pytest.raises(OSError) as raised:
                    await conn.peek(8, 2)
                assert open_fds() == before
                assert type(raised.value) is OSError and raised.value.errno == errno.EMFILE
                message = await conn.recv_message(8, 2)
                assert message is not None and message.data == b"x" and len(message.fds) == 2
                for fd in message.fds:
                    os.close(fd)
            finally:
                conn.close()

    asyncio.run(asyncio.wait_for(main(), 30))


class PeekInterrupts(Interrupts):
    """``Interrupts`` counting the boundaries of every module a peek passes through."""

    MODULES = frozenset(
        {
            "udscompat._io",
            "udscompat._fdpass",
            "udscompat._ancillary",
            "udscompat._probes",
            "udscompat._os.linux",
        }
    )

    def _hook(self, frame: Any, event: str, arg: Any) -> None:
        if event in ("call", "c_return") and frame.f_globals.get("__name__") in self.MODULES:
            self.events.append((event, frame.f_code.co_name))
            self._count += 1
            if self.fired < len(self.schedule) and self._count == self.schedule[self.fired]:
                self.fired += 1
                self._count = 0
                os.kill(os.getpid(), signal.SIGUSR1)


@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="needs SIGUSR1")
@pytest.mark.parametrize("how", ["recv_fds", "recv_ancillary"])
def test_a_signal_handler_raising_anywhere_in_the_peek_leaks_nothing(
    how: str, pipe: Tuple[int, int]
) -> None:
    """A real SIGUSR1 whose handler raises, after each call boundary of the peek in turn
    (the probe's failed attempt included), under a table with room for the copies only:
    no descriptor is left open, and the message stays queued throughout."""
    with pair("seqpacket", "both") as (a, b):
        udscompat.send_fds(a, b"x", [pipe[0], pipe[1]])
        before = open_fds()

        def run() -> Optional[OSError]:
            try:
                peek(how, b, 2)
            except OSError as exc:
                return exc
            return None

        recorder = PeekInterrupts()
        with table_with(3), recorder.active():
            assert run() is not None
        total = len(recorder.events)
        assert 10 < total < 2000, total
        outcomes: Set[str] = set()
        deadline = time.monotonic() + 60
        for point in range(1, total + 1):
            with table_with(3):
                try:
                    with PeekInterrupts((point,)).active():
                        error = run()
                    outcomes.add("emfile" if error and error.errno == errno.EMFILE else "other")
                except Interrupted:
                    outcomes.add("interrupted")
            assert open_fds() == before, f"descriptors left by an interrupt at boundary {point}"
            assert time.monotonic() < deadline, f"stopped at boundary {point} of {total}"
        assert "interrupted" in outcomes and outcomes <= {"interrupted", "emfile"}, outcomes
        assert receive_whole(b, 2) == b"x"


@contextlib.contextmanager
def lowered_table(free: int) -> Iterator[None]:
    """The table full but for ``free`` slots and the probe's answer forgotten, without
    asking the probe (``table_with`` asks it); both restored afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 16, hard))
    held: List[int] = []
    _probes.peek_installs_fds.cache_clear()
    try:
        held = fill_table()
        for _ in range(free):
            os.close(held.pop())
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.parametrize("how", ["recv_fds", "recv_ancillary"])
def test_a_probe_whose_own_copy_finds_no_slot_answers_nothing(
    how: str, pipe: Tuple[int, int]
) -> None:
    """Four free slots: the probe's socketpair and pipe fit, the copy its own peek would
    install does not, so the kernel truncates and installs nothing.  Main read that as
    "this kernel's peek installs no copies" and cached it for the process: the peek then
    (and every peek after, with a table of any size) dropped the copies Linux installed
    without closing them -- 2 leaked per peek here, and recv_fds reported no descriptors.
    Now the probe raises EMFILE (not cached): the peek refuses, and once there is room the
    probe answers and the peek returns the copies."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        udscompat.send_fds(a, b"x", [pipe[0], pipe[1]])
        before = open_fds()
        error: Optional[OSError] = None
        try:
            with lowered_table(4):
                try:
                    peek(how, b, 2)
                except OSError as exc:
                    error = exc
            assert open_fds() == before, "the peek under the full table left descriptors open"
            assert error is not None and error.errno == errno.EMFILE, error
            data, fds, _ = peek(how, b, 2)
            try:
                assert (data, len(fds)) == (b"x", 2), "a peek with room returned no copies"
                assert open_fds() == before | set(fds), "the copies were not returned"
            finally:
                for fd in fds:
                    os.close(fd)
        finally:
            _probes.peek_installs_fds.cache_clear()
        assert receive_whole(b, 2) == b"x"


def test_the_probe_neither_closes_nor_miscounts_another_threads_descriptors() -> None:
    """Another thread opens and closes pipes while the probe runs.  Main decided by the
    difference of two listings of the table: it closed what the other thread had just
    opened (its pipe's descriptors gone under it within a few hundred probes) and answered
    False for a copy that landed in a slot the other thread had just freed (1 in 2000).
    Now a number counts as a copy only if it names the probe's own pipe."""
    probe = _probes.peek_installs_fds.__wrapped__  # type: ignore[attr-defined]
    stop = threading.Event()
    disturbed: List[str] = []

    def churn() -> None:
        while not stop.is_set() and not disturbed:
            r, w = os.pipe()
            mine = os.fstat(r).st_ino
            for _ in range(3):
                for fd in (r, w):
                    try:
                        if os.fstat(fd).st_ino != mine:
                            disturbed.append(f"{fd} now names another file")
                    except OSError as exc:
                        disturbed.append(f"{fd} closed under its owner: {exc}")
                time.sleep(0)
            for fd in (r, w):
                with contextlib.suppress(OSError):
                    os.close(fd)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    worker = threading.Thread(target=churn)
    worker.start()
    answers: List[bool] = []
    try:
        deadline = time.monotonic() + 3
        while len(answers) < 1500 and time.monotonic() < deadline and not disturbed:
            answers.append(probe())
    finally:
        stop.set()
        worker.join(10)
        sys.setswitchinterval(interval)
    assert not disturbed, disturbed[:3]
    assert all(answers), f"{answers.count(False)} of {len(answers)} probes answered False"


@pytest.mark.parametrize("how", ["recv_fds", "recv_ancillary"])
@pytest.mark.parametrize("claimed", [socket.SOCK_DGRAM, socket.SOCK_SEQPACKET])
def test_a_socket_object_with_the_wrong_type_does_not_widen_the_room(
    claimed: int, how: str, pipe: Tuple[int, int]
) -> None:
    """socket.fromfd() takes the caller's word for the type: a stream socket with SO_TIMESTAMP
    on, wrapped as a datagram one.  Main sized the room from sock.type, counted a timestamp
    the stream read never puts, and the kernel installed copies in that room: 3 leaked
    with 3 free slots.  Now the room asks the kernel's SO_TYPE."""
    a, real = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, real:
        real.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMP, 1)
        with socket.fromfd(real.fileno(), socket.AF_UNIX, claimed) as b:
            assert b.type == claimed
            udscompat.send_fds(a, b"payload", [pipe[0]] * 6)
            before = open_fds()
            error: Optional[OSError] = None
            with table_with(3):
                try:
                    peek(how, b, 8)
                except OSError as exc:
                    error = exc
            assert open_fds() == before, "the peek left descriptors open"
            assert error is not None and error.errno == errno.EMFILE, error
            assert receive_whole(b, 6) == b"payload"


@pytest.mark.parametrize("how", ["recv_fds", "recv_ancillary"])
def test_a_process_toggling_the_receivers_options_gets_no_copy_left_open(
    how: str, pipe: Tuple[int, int]
) -> None:
    """A process sharing the socket (a forked child) turns SO_PASSCRED off and on while the
    probe-less peek sizes its room from it: a peek whose room was sized with credentials on
    and whose receive ran with them off left 32 bytes for copies, and the kernel installed
    3 (3 free slots).  Main raised EMFILE over them: 1851 of 7810 peeks left 3 open each.
    Now the copies, in slots the peek saw free just before, are closed before the EMFILE."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        udscompat.send_fds(a, b"x", [pipe[0]] * 6)
        child = os.fork()
        if child == 0:  # pragma: no cover - the toggler
            try:
                on = 0
                stop = time.monotonic() + 20
                while time.monotonic() < stop:
                    b.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, on)
                    on ^= 1
            finally:
                os._exit(0)
        peeks = raised = 0
        left: List[int] = []
        try:
            with table_with(3):
                before = open_fds()
                deadline = time.monotonic() + 3
                while peeks < 3000 and time.monotonic() < deadline and not left:
                    peeks += 1
                    try:
                        peek(how, b, 8)
                    except OSError as exc:
                        raised += exc.errno == errno.EMFILE
                    left = sorted(open_fds() - before)
                for fd in left:
                    os.close(fd)
        finally:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        assert not left, f"peek {peeks} left {len(left)} copies open"
        assert raised == peeks
        assert receive_whole(b, 6) == b"x"


SO_PASSPIDFD = 76  # asm-generic/socket.h (Linux 6.5): a pidfd of the sender with each message


@pytest.mark.parametrize("flags", [0, socket.MSG_PEEK], ids=["receive", "peek"])
@pytest.mark.parametrize("how", ["recv_fds", "recv_ancillary"])
@pytest.mark.parametrize("count", [0, 2])
def test_a_receiver_with_so_passpidfd_gets_no_pidfd_left_open(
    count: int, how: str, flags: int, pipe: Tuple[int, int]
) -> None:
    """With SO_PASSPIDFD on, Linux installs a pidfd of the sender with every message, peeks
    included (scm_pidfd_recv).  udscompat closes it (FD_CARRYING_CMSG_TYPES), but named
    its type 0x4C (SO_PASSPIDFD's own number is 76); the kernel sends SCM_PIDFD = 0x04
    (include/linux/socket.h): every receive and every peek left one pidfd open on main,
    on both paths."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with a, b:
        try:
            b.setsockopt(socket.SOL_SOCKET, SO_PASSPIDFD, 1)
        except OSError as exc:
            pytest.skip(f"no SO_PASSPIDFD here: {exc}")
        for _ in range(2):
            udscompat.send_fds(a, b"x", [pipe[0]] * count) if count else a.send(b"x")
        before = open_fds()
        data, fds, _ = peek(how, b, 4) if flags else _receive_once(how, b)
        try:
            assert (data, len(fds)) == (b"x", count)
            assert open_fds() == before | set(fds), "a pidfd was left open"
        finally:
            for fd in fds:
                os.close(fd)
        if not flags:  # what the kernel sends: the second message, raw
            _, raw, _, _ = b.recvmsg(8, 64)
            for _, _, payload in raw:
                for fd in array.array("i", payload):
                    os.close(fd)
            assert (socket.SOL_SOCKET, backend.SCM_PIDFD) in [c[:2] for c in raw], raw


def _receive_once(how: str, sock: socket.socket) -> Tuple[bytes, List[int], Any]:
    if how == "recv_fds":
        data, fds, _, _ = udscompat.recv_fds(sock, 64, 4)
        return data, fds, None
    message = udscompat.recv_ancillary(sock, 64, 4)
    return message.data, list(message.fds), message.credentials
