"""send_fds / recv_fds on stream, datagram and seqpacket sockets, in and across processes."""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import udscompat
from tests.conftest import (
    c_compiler,
    needs_c_compiler,
    open_fds,
    peer_pid,
    python_peer,
    same_file,
    send_with_the_table_full,
)
from tests.test_sockarg import Fileno
from udscompat import ControlTruncatedError, UnixSocketAddr, _probes
from udscompat._fdpass import REGISTRY
from udscompat._platform import backend

TYPES = {
    "stream": socket.SOCK_STREAM,
    "dgram": socket.SOCK_DGRAM,
    "seqpacket": backend.SOCK_SEQPACKET,
}


@pytest.fixture(params=sorted(TYPES))
def pair(request: pytest.FixtureRequest) -> Iterator[Tuple[socket.socket, socket.socket]]:
    if request.param == "seqpacket" and not _probes.seqpacket().available:
        pytest.skip(f"no kernel SOCK_SEQPACKET here: {_probes.seqpacket().reason}")
    a, b = socket.socketpair(socket.AF_UNIX, TYPES[request.param])
    with a, b:
        yield a, b


def test_round_trip_gives_new_cloexec_descriptors(
    pair: Tuple[socket.socket, socket.socket], pipe: Tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    assert udscompat.send_fds(a, b"hello", [r, w]) == 5
    data, fds, flags, _ = udscompat.recv_fds(b, 64, 4)
    try:
        assert data == b"hello"
        assert len(fds) == 2
        assert not {r, w} & set(fds)
        assert same_file(fds[0], r)
        assert same_file(fds[1], w)
        assert not any(os.get_inheritable(fd) for fd in fds)
        assert flags & backend.MSG_CTRUNC == 0
        os.write(fds[1], b"!")
        assert os.read(r, 1) == b"!"
    finally:
        for fd in fds:
            os.close(fd)


def test_sender_may_close_right_after_send(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    r, w = os.pipe()
    udscompat.send_fds(a, b"x", [r, w])
    os.close(r)
    os.close(w)
    # Run the unix-socket garbage collector while the fds are in flight (os-facts §2.4).
    for _ in range(8):
        for end in socket.socketpair(socket.AF_UNIX):
            end.close()  # both: an end left to the garbage collector is a ResourceWarning
    _, fds, _, _ = udscompat.recv_fds(b, 8, 2)
    try:
        os.write(fds[1], b"alive")
        assert os.read(fds[0], 5) == b"alive"
    finally:
        for fd in fds:
            os.close(fd)


def test_too_many_fds_is_refused_before_sending(
    pair: Tuple[socket.socket, socket.socket], pipe: Tuple[int, int]
) -> None:
    a, b = pair
    limit = backend.MAX_FDS_PER_MESSAGE
    if limit is None:
        pytest.skip(f"{backend.OS_NAME}'s headers state no limit")
    if backend.OS_NAME == "Linux":
        assert limit == 253  # include/net/scm.h: SCM_MAX_FD
    message = f"{limit + 1} descriptors in one message; {backend.OS_NAME} takes at most {limit}"
    with pytest.raises(ValueError, match=message):
        udscompat.send_fds(a, b"x", [pipe[0]] * (limit + 1))
    b.setblocking(False)
    with pytest.raises(BlockingIOError):
        b.recv(1)  # nothing was sent
    udscompat.send_fds(a, b"x", [pipe[0]] * limit)
    _, fds, _, _ = udscompat.recv_fds(b, 8, limit)
    assert len(fds) == limit
    for fd in fds:
        os.close(fd)


def test_stream_refuses_fds_without_payload(pipe: Tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b, pytest.raises(ValueError, match="at least one payload byte"):
        udscompat.send_fds(a, b"", [pipe[0]])


def test_zero_length_datagram_carries_fds(pipe: Tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_fds(a, b"", [pipe[0]])
        data, fds, _, _ = udscompat.recv_fds(b, 8, 1)
        assert data == b""
        assert len(fds) == 1
        os.close(fds[0])


@pytest.mark.parametrize("maxfds", [0, 1, 2])
def test_more_fds_than_asked_are_closed_and_raised(
    pair: Tuple[socket.socket, socket.socket], pipe: Tuple[int, int], maxfds: int
) -> None:
    a, b = pair
    before = open_fds()
    udscompat.send_fds(a, b"payload", [pipe[0]] * 3)
    with pytest.raises(ControlTruncatedError) as info:
        udscompat.recv_fds(b, 64, maxfds)
    assert info.value.data == b"payload"
    assert info.value.closed_fds == 3
    assert info.value.errno == errno.EMSGSIZE
    assert open_fds() == before


def test_bad_arguments(pipe: Tuple[int, int]) -> None:
    with socket.socket(socket.AF_INET) as inet, pytest.raises(ValueError, match="AF_UNIX"):
        udscompat.send_fds(inet, b"x", [pipe[0]])
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        with pytest.raises(ValueError, match="invalid file descriptor -1"):
            udscompat.send_fds(a, b"x", [-1])
        with pytest.raises(TypeError, match="file descriptor"):
            udscompat.send_fds(a, b"x", ["3"])
        with pytest.raises(ValueError, match=">= 0"):
            udscompat.recv_fds(b, -1, 1)
        with pytest.raises(TypeError):
            udscompat.send_fds(object(), b"x", [])  # type: ignore[arg-type]


def test_file_objects_are_accepted(
    pair: Tuple[socket.socket, socket.socket], tmp_path: Path
) -> None:
    a, b = pair
    target = tmp_path / "f"
    target.write_bytes(b"content")
    with open(target, "rb") as f:
        udscompat.send_fds(a, b"f", [f])
    _, fds, _, _ = udscompat.recv_fds(b, 8, 1)
    with os.fdopen(fds[0], "rb") as received:
        assert received.read() == b"content"


def test_flags_are_honoured_msg_peek(pipe: Tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_fds(a, b"peeked", [pipe[0]])
        data, peeked, _, _ = udscompat.recv_fds(b, 64, 1, socket.MSG_PEEK)
        assert data == b"peeked"
        # Linux clones descriptors on peek: the caller owns these too.
        for fd in peeked:
            assert same_file(fd, pipe[0])
            os.close(fd)
        data, fds, _, _ = udscompat.recv_fds(b, 64, 1)
        assert data == b"peeked"
        assert len(fds) == 1
        os.close(fds[0])
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            udscompat.recv_fds(b, 64, 1)
        # MSG_DONTWAIT is honoured on a blocking socket too.
        b.setblocking(True)
        with pytest.raises(BlockingIOError):
            udscompat.recv_fds(b, 64, 1, socket.MSG_DONTWAIT)


def test_address_is_honoured_on_unconnected_datagram(
    short_tmp: Path, pipe: Tuple[int, int]
) -> None:
    path = short_tmp / "dgram"
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as client,
    ):
        server.bind(str(path))
        client.bind(str(short_tmp / "client"))
        assert udscompat.send_fds(client, b"to", [pipe[1]], 0, UnixSocketAddr.from_path(path)) == 2
        data, fds, _, address = udscompat.recv_fds(server, 8, 1)
        assert data == b"to"
        assert UnixSocketAddr.from_sockaddr(address) == UnixSocketAddr.from_path(
            short_tmp / "client"
        )
        os.close(fds[0])
        # The standard library ignores address (CPython #107898): ENOTCONN.
        if hasattr(socket, "send_fds"):
            with pytest.raises(OSError) as info:
                socket.send_fds(client, [b"x"], [pipe[1]], 0, str(path))
            assert info.value.errno in (errno.ENOTCONN, errno.EDESTADDRREQ)


def test_held_duplicates_when_forced(hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]) -> None:
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    a, b = socket.socketpair(socket.AF_UNIX)
    with b:
        before = open_fds()
        udscompat.send_fds(a, b"x", [pipe[0], pipe[1]])
        assert REGISTRY.held(a) == 2
        assert len(open_fds() - before) == 2
        assert udscompat.release_sent_fds(a) == 2
        assert open_fds() == before
        udscompat.send_fds(a, b"y", [pipe[0]])
        assert REGISTRY.held(a) == 1
        a_fd = a.fileno()
        a.close()
        del a  # the finalizer closes what was still held
        import gc

        gc.collect()
        assert open_fds() == before - {a_fd}
        for _ in range(2):
            _, fds, _, _ = udscompat.recv_fds(b, 1, 2)
            for fd in fds:
                os.close(fd)


def test_hold_env_rejects_nonsense(hold_env: pytest.MonkeyPatch) -> None:
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "maybe")
    with pytest.raises(ValueError, match="expected 1 or 0"):
        udscompat._fdpass.hold_sent_fds()


def test_fds_from_another_process(short_tmp: Path) -> None:
    """A child sends its stdin, stdout and stderr with a message; we read through them."""
    path = str(short_tmp / "srv")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        child = python_peer(
            "import socket,sys,udscompat\n"
            "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "udscompat.send_fds(s, b'stdio', [0,1,2])\n"
            "s.recv(1)\n",
            path,
        )
        conn, _ = listener.accept()
        with conn:
            data, fds, _, _ = udscompat.recv_fds(conn, 16, 3)
            try:
                assert data == b"stdio"
                assert len(fds) == 3
                os.write(fds[1], b"via-stdout\n")
                os.write(fds[2], b"via-stderr\n")
            finally:
                for fd in fds:
                    os.close(fd)
            conn.send(b"k")
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        assert out == b"via-stdout\n"
        assert err == b"via-stderr\n"


def test_receiver_out_of_descriptors_gets_clear_error_and_leaks_nothing() -> None:
    code = r"""
import os, resource, socket, sys, udscompat
from udscompat import _probes
a, b = socket.socketpair(socket.AF_UNIX)
r, w = os.pipe()
udscompat.send_fds(a, b"payload", [r, w, r])
before = _probes.open_fds()
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (max(before) + 2, hard))
filler = []
try:
    while True:
        filler.append(os.dup(0))
except OSError:
    pass
fill = set(filler)
try:
    udscompat.recv_fds(b, 64, 3)
    print("no error")
except udscompat.ControlTruncatedError as exc:
    for fd in filler: os.close(fd)
    after = _probes.open_fds()
    print("error", exc.errno, exc.data, sorted(after - before))
"""
    child = python_peer(code)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.decode().split(maxsplit=1)[0] == "error", out
    parts = out.decode().split()
    assert parts[2] == "b'payload'"
    assert parts[3] == "[]", f"descriptors leaked in the receiver: {out!r}"


@needs_c_compiler
def test_c_peer_exchanges_fds_and_checks_credentials(short_tmp: Path) -> None:
    binary = short_tmp / "fdpeer"
    source = Path(__file__).parent / "peers" / "fdpeer.c"
    subprocess.run(
        [str(c_compiler()), "-Wall", "-Werror", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
    )
    path = str(short_tmp / "c.sock")
    r, w = os.pipe()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        child = subprocess.Popen([str(binary), path, str(os.getpid())], stderr=subprocess.PIPE)
        conn, _ = listener.accept()
        with conn:
            creds = udscompat.peer_credentials(conn)
            expected = (peer_pid(child.pid), os.geteuid(), os.getegid())
            assert (creds.pid, creds.euid, creds.egid) == expected
            udscompat.send_fds(conn, b"two fds", [w, r])
            os.close(w)
            assert os.read(r, 6) == b"from C"
            os.close(r)
            data, fds, _, _ = udscompat.recv_fds(conn, 16, 1)
            assert data == b"back"
            assert os.read(fds[0], 6) == b"C pipe"
            os.close(fds[0])
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err.decode()


# -- the sent-fd hold registry: before the send, bounded, released by acknowledgement --------


def test_held_duplicates_are_bounded_per_socket(
    hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    """2,000 sends on a socket nobody acknowledges hold at most the bound, oldest closed first."""
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    hold_env.setattr(REGISTRY, "max_per_socket", 64)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        before = open_fds()
        evicted = REGISTRY.evicted
        peak = 0
        for sent in range(2000):
            udscompat.send_fds(a, b"x", [pipe[0]])
            _, fds, _, _ = udscompat.recv_fds(b, 1, 1)
            os.close(fds[0])
            if sent % 50 == 0:
                peak = max(peak, len(open_fds() - before))
        assert REGISTRY.held(a) == 64
        assert peak <= 64
        assert REGISTRY.evicted - evicted == 2000 - 64
        big = [pipe[0]] * 100  # one batch over the bound is kept whole: it is the newest
        udscompat.send_fds(a, b"y", big)
        assert REGISTRY.held(a) == 100
        _, fds, _, _ = udscompat.recv_fds(b, 1, 100)
        for fd in fds:
            os.close(fd)
        assert udscompat.release_sent_fds(a) == 100


def test_a_failed_send_holds_nothing(hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]) -> None:
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a:
        b.close()
        before = open_fds()
        with pytest.raises(BrokenPipeError):
            udscompat.send_fds(a, b"x", [pipe[0]], socket.MSG_NOSIGNAL)
        assert REGISTRY.held(a) == 0
        assert open_fds() == before


def test_out_of_descriptors_fails_the_send_before_anything_went_out(
    hold_env: pytest.MonkeyPatch,
) -> None:
    """The duplicate is made first: EMFILE there means nothing was sent (child process)."""
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    outcome = send_with_the_table_full('udscompat.send_fds(a, b"x", [r])')
    assert outcome == ["refused", "before", "sending", str(errno.EMFILE)]


def test_one_way_sender_releases_as_acknowledgements_arrive(hold_env: pytest.MonkeyPatch) -> None:
    """The shim's own connection: the sender never calls recv_message, and holds only a few."""
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    r, w = os.pipe()
    peak = 0
    with a, b:
        for i in range(2000):
            a.send(b"fd %d" % i, [r])
            message = b.recv_message(maxfds=1)
            assert message is not None and len(message.fds) == 1
            os.close(message.fds[0])
            peak = max(peak, REGISTRY.held(a._sock))
        assert peak <= 2, f"a one-way sender held {peak} duplicates"
        assert REGISTRY.evicted == 0 or peak <= 2
    os.close(r)
    os.close(w)


def test_a_forked_child_starts_with_an_empty_registry_and_a_free_lock(
    hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_fds(a, b"x", [pipe[0]])
        held_dup = REGISTRY._held[a].batches[0][0]
        locked, release = threading.Event(), threading.Event()

        def hold_the_lock() -> None:
            with REGISTRY._lock:
                locked.set()
                release.wait(10)

        holder = threading.Thread(target=hold_the_lock)
        holder.start()
        locked.wait(5)
        pid = os.fork()
        if pid == 0:  # the child: must neither deadlock nor keep the parent's duplicates
            code = 1
            try:
                signal.alarm(5)
                ok = REGISTRY.held(a) == 0
                try:
                    os.fstat(held_dup)
                    ok = False  # the inherited duplicate should be closed
                except OSError:
                    pass
                udscompat.send_fds(a, b"child", [pipe[0]])
                code = 0 if ok and REGISTRY.held(a) == 1 else 2
            finally:
                os._exit(code)
        release.set()
        holder.join(5)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert REGISTRY.held(a) == 1  # the parent's own is untouched
        for _ in range(2):
            _, fds, _, _ = udscompat.recv_fds(b, 8, 1)
            for fd in fds:
                os.close(fd)
        udscompat.release_sent_fds(a)


# -- input checks, before any system call -----------------------------------------------------


def test_several_descriptors_with_0_and_1_are_sent(pipe: Tuple[int, int]) -> None:
    """0 and 1 are what a bool holds, so check_fds's quick test for several descriptors
    leaves them to the item-by-item one, which takes them as the descriptors they are."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_fds(a, b"x", [pipe[0], 0, 1, pipe[1]])
        _, fds, _, _ = udscompat.recv_fds(b, 8, 4)
        assert [same_file(x, y) for x, y in zip(fds, [pipe[0], 0, 1, pipe[1]])] == [True] * 4
        for fd in fds:
            os.close(fd)


class _Index:
    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


@pytest.mark.parametrize(
    ("bufsize", "maxfds", "error", "match"),
    [
        (-1, 1, ValueError, "bufsize must be >= 0, got -1"),
        ("8", 1, TypeError, "bufsize must be an int, not str"),
        (1.5, 1, TypeError, "bufsize must be an int, not float"),
        (None, 1, TypeError, "bufsize must be an int, not NoneType"),
        (8, -1, ValueError, "maxfds must be >= 0, got -1"),
        (8, 1.0, TypeError, "maxfds must be an int, not float"),
    ],
)
def test_bad_sizes_leave_the_message_where_it_was(
    pipe: Tuple[int, int], bufsize: object, maxfds: object, error: type, match: str
) -> None:
    """recv_fds refuses a bad size before it receives anything (bufsize: the receive itself
    refuses it before its system call, and recv_fds says so in its words)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_fds(a, b"kept", [pipe[0]])
        with pytest.raises(error, match=match):
            udscompat.recv_fds(b, bufsize, maxfds)  # type: ignore[arg-type]
        data, fds, _, _ = udscompat.recv_fds(b, 8, 1)
        assert data == b"kept" and len(fds) == 1 and same_file(fds[0], pipe[0])
        os.close(fds[0])


@pytest.mark.parametrize("which", ["bufsize", "maxfds", "both"])
def test_sizes_may_be_any_integer_like_object(pipe: Tuple[int, int], which: str) -> None:
    """An object with __index__ is an int to recv_fds, as to socket.recvmsg (the compiled
    receive takes ints only: recv_fds converts it first there)."""
    bufsize = _Index(3) if which != "maxfds" else 3
    maxfds = _Index(1) if which != "bufsize" else 1
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_fds(a, b"indexed", [pipe[0]])
        data, fds, _, _ = udscompat.recv_fds(b, bufsize, maxfds)  # type: ignore[arg-type]
        assert data == b"ind" and len(fds) == 1 and same_file(fds[0], pipe[0])
        os.close(fds[0])


def test_fds_from_a_generator_are_read_once(pipe: Tuple[int, int], tmp_path: Path) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, open(tmp_path / "f", "wb") as f:
        udscompat.send_fds(a, b"g", (x for x in [pipe[0], f, pipe[1]]))
        _, fds, _, _ = udscompat.recv_fds(b, 8, 3)
        assert [same_file(x, y) for x, y in zip(fds, [pipe[0], f.fileno(), pipe[1]])] == [True] * 3
        for fd in fds:
            os.close(fd)


@pytest.mark.parametrize(
    ("fds", "error", "match"),
    [
        ([True], TypeError, "True is not a file descriptor"),
        ([False], TypeError, "False is not a file descriptor"),
        ([2**31], ValueError, "invalid file descriptor 2147483648"),
        ([-(2**31) - 1], ValueError, "invalid file descriptor"),
        ([2**40], ValueError, "invalid file descriptor"),
        ([1.5], TypeError, "fds: expected a file descriptor"),
        # Several descriptors take check_fds's other quick test (an unsigned array, then the
        # least and greatest number): what it lets through must still be refused.
        ([7, True], TypeError, "True is not a file descriptor"),
        ([False, 7, 8], TypeError, "False is not a file descriptor"),
        ([7, 2**31], ValueError, "invalid file descriptor 2147483648"),
        ([7, 2**32], ValueError, "invalid file descriptor 4294967296"),
        ([7, -1], ValueError, "invalid file descriptor -1"),
        ([7, 1.5], TypeError, "fds: expected a file descriptor"),
        ([Fileno(7), 2**40], ValueError, "invalid file descriptor 1099511627776"),
    ],
)
def test_bad_descriptors_are_refused_naming_fds(fds: list, error: type, match: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(error, match=match):
            udscompat.send_fds(a, b"x", fds)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)  # nothing was sent


@pytest.mark.parametrize(
    ("bufsize", "maxfds", "match"),
    [("10", 0, "bufsize must be an int, not str"), (10, 1.5, "maxfds must be an int, not float")],
)
def test_bad_sizes_are_type_errors_naming_them(bufsize: object, maxfds: object, match: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b, pytest.raises(TypeError, match=match):
        udscompat.recv_fds(b, bufsize, maxfds)  # type: ignore[arg-type]
