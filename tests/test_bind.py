"""Path listeners: stale files removed, live sockets and non-sockets never."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Tuple, Union

import pytest

import udscompat
from tests.conftest import (
    c_compiler,
    needs_abstract,
    needs_kernel_seqpacket,
    other_user,
    python_peer,
)
from udscompat import UnixSocketAddr
from udscompat._platform import backend

ROOT = Path(__file__).resolve().parent.parent


def test_stale_socket_file_is_replaced(short_tmp: Path) -> None:
    path = short_tmp / "svc"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()  # the file stays behind: stale
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with socket.socket(socket.AF_UNIX) as sock:
        file = udscompat.bind(sock, path)
        sock.listen()
        assert file is not None
        assert file.remove()
        assert not path.exists()


def _peer_socket(short_tmp: Path, name: str, listen: bool) -> Tuple[str, Any]:
    """A socket bound in another process; a listener prints what each accepted client sent."""
    path = str(short_tmp / name)
    peer = python_peer(
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])\n"
        + ("s.listen()\n" if listen else "")
        + "print('ready', flush=True)\n"
        "while True:\n"
        + (
            "    c,_=s.accept(); print(repr(c.recv(16)), flush=True); c.close()\n"
            if listen
            else "    __import__('signal').pause()\n"
        ),
        path,
    )
    assert peer.stdout is not None
    assert peer.stdout.readline() == b"ready\n"
    return path, peer


def _stop(peer: Any) -> None:
    peer.kill()
    peer.wait()
    peer.stdout.close()
    peer.stderr.close()


def test_live_listener_in_another_process_is_never_removed_nor_disturbed(short_tmp: Path) -> None:
    """No socket file is taken for stale while a listener is behind it, and the check leaves
    nothing in its accept queue: the first client it sees is the real one."""
    path, peer = _peer_socket(short_tmp, "live", listen=True)
    try:
        inode = os.lstat(path).st_ino
        for _ in range(3):
            with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError) as info:
                udscompat.bind(sock, path)
            assert info.value.errno == errno.EADDRINUSE
            assert path in str(info.value)
        assert os.lstat(path).st_ino == inode
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            client.sendall(b"real")
            assert peer.stdout.readline() == b"b'real'\n"  # not b'' from a probe that left
    finally:
        _stop(peer)


def test_socket_bound_but_not_yet_listening_is_not_stale(short_tmp: Path) -> None:
    """A connect to it is refused just like one to a stale file, yet it is in use."""
    path, peer = _peer_socket(short_tmp, "starting", listen=False)
    try:
        inode = os.lstat(path).st_ino
        with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError) as info:
            udscompat.bind(sock, path)
        assert info.value.errno == errno.EADDRINUSE
        assert os.lstat(path).st_ino == inode
        assert udscompat._bind.is_live_socket_file(path.encode())
    finally:
        _stop(peer)


def test_live_listener_of_another_type_is_not_removed(short_tmp: Path) -> None:
    path = str(short_tmp / "seq")
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as live:
        live.bind(path)
        live.listen()
        with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError) as info:
            udscompat.bind(sock, path)
        assert info.value.errno == errno.EADDRINUSE


def test_regular_file_is_never_removed(short_tmp: Path) -> None:
    path = short_tmp / "data"
    path.write_bytes(b"precious")
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError) as info:
        udscompat.bind(sock, path)
    assert info.value.errno == errno.EADDRINUSE
    assert path.read_bytes() == b"precious"


def test_mode_applied_and_remove_respects_replacement(short_tmp: Path) -> None:
    path = short_tmp / "m"
    with socket.socket(socket.AF_UNIX) as sock:
        file = udscompat.bind(sock, path, mode=0o600)
        assert file is not None
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
    # A successor replaced the file: ours is gone, theirs must survive our cleanup.
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as successor:
        successor.bind(str(path))
        assert not file.remove()
        assert path.exists()


@pytest.mark.parametrize("mode", ["0600", 0o600 * 1.0, True])
def test_wrong_type_of_mode_is_a_type_error_before_anything_is_bound(
    short_tmp: Path, mode: Any
) -> None:
    path = short_tmp / "typed"
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(TypeError, match="mode must be"):
        udscompat.bind(sock, path, mode=mode)
    assert not path.exists()
    with socket.socket(socket.AF_UNIX) as sock:
        with pytest.raises(ValueError, match="between 0 and 0o7777"):
            udscompat.bind(sock, path, mode=0o10000)
        assert sock.getsockname() == ""  # still unbound
    with pytest.raises(TypeError, match="mode must be"):
        udscompat.SeqpacketListener(path, mode="0600")  # type: ignore[arg-type]
    assert not path.exists()


@needs_abstract
def test_mode_on_an_abstract_address_is_refused() -> None:
    with socket.socket(socket.AF_UNIX) as sock:
        with pytest.raises(ValueError, match="has no file"):
            udscompat.bind(sock, f"@udsc-mode-{os.getpid()}", mode=0o600)
        assert sock.getsockname() == ""


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test (the test is single-threaded); restored after."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


ROUTES = ["socket-inode", "private-directory"]


def _force_route(route: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if route == "socket-inode" and not backend.BIND_MODE_FROM_SOCKET:
        pytest.skip("this kernel takes a new socket file's mode from the umask alone")
    # The private directory is how kernels without the socket-inode mode do it; it works here too.
    monkeypatch.setattr(backend, "BIND_MODE_FROM_SOCKET", route == "socket-inode")


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o666), (0o000, 0o600), (0o077, 0o660)])
def test_mode_is_exact_whatever_the_umask(
    short_tmp: Path,
    umask: Callable[[int], None],
    monkeypatch: pytest.MonkeyPatch,
    route: str,
    mask: int,
    mode: int,
) -> None:
    _force_route(route, monkeypatch)
    umask(mask)
    path = short_tmp / "m"
    with socket.socket(socket.AF_UNIX) as sock:
        file = udscompat.bind(sock, path, mode=mode, backlog=1)
        assert file is not None and file.address == UnixSocketAddr.from_path(path)
        assert stat.S_IMODE(os.lstat(path).st_mode) == mode
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(path))  # reachable at the path, listening
        if route == "private-directory":
            # getsockname() names where it was bound; the SocketFile knows where it is.
            assert "/.udscompat-" in sock.getsockname()
        else:
            assert sock.getsockname() == str(path)
    assert file.remove()
    assert os.listdir(short_tmp) == []  # no private directory left behind


def test_stale_removal_can_be_disabled(short_tmp: Path) -> None:
    path = short_tmp / "s"
    old = socket.socket(socket.AF_UNIX)
    old.bind(str(path))
    old.close()
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError) as info:
        udscompat.bind(sock, path, remove_stale=False)
    assert info.value.errno == errno.EADDRINUSE


@needs_abstract
def test_abstract_bind_returns_no_file() -> None:
    name = UnixSocketAddr.from_abstract(f"udsc-test-{os.getpid()}")
    with socket.socket(socket.AF_UNIX) as sock:
        assert udscompat.bind(sock, name) is None
        assert UnixSocketAddr.from_sockaddr(sock.getsockname()) == name


# -- every API that takes an address applies the one rule ----------------------------------------


@needs_abstract
def test_every_api_reads_at_names_as_abstract(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "@name" is abstract everywhere, and creates no file called @name."""
    import asyncio

    from udscompat import aio

    monkeypatch.chdir(short_tmp)
    tag = f"udsc-rule-{os.getpid()}"
    with udscompat.SeqpacketListener(f"@{tag}-l") as listener:
        assert listener.local_addr == UnixSocketAddr.from_abstract(f"{tag}-l")
        conn = udscompat.SeqpacketConn.connect(f"@{tag}-l")
        with conn:
            assert conn.peer_addr == listener.local_addr
    with socket.socket(socket.AF_UNIX) as sock:
        assert udscompat.bind(sock, f"@{tag}-b") is None
        assert sock.getsockname() == f"\0{tag}-b".encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(f"\0{tag}-d".encode())
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            udscompat.send_fds(sender, b"to @name", [], address=f"@{tag}-d")
            assert receiver.recv(16) == b"to @name"

    async def handler(conn: aio.AsyncSeqpacketConn) -> None:
        await conn.send(b"hello")

    async def main() -> bytes:
        server = await aio.start_seqpacket_server(handler, f"@{tag}-a")
        async with server:
            conn = await aio.open_seqpacket_connection(f"@{tag}-a")
            async with conn:
                message = await conn.recv_message()
                assert message is not None
                return message.data

    assert asyncio.run(main()) == b"hello"
    assert os.listdir(short_tmp) == []


def test_bytes_pathlike_and_dot_slash_at_are_paths(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(short_tmp)
    for addr in (b"@bytes", Path("@pathlike"), "./@escaped"):
        with socket.socket(socket.AF_UNIX) as sock:
            file = udscompat.bind(sock, addr)
            assert file is not None
            assert file.remove()
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(TypeError, match="address must be"):
        udscompat.bind(sock, 42)  # type: ignore[arg-type]


# -- races between instances: real processes, bounded in time -------------------------------------

# A daemon instance in its own process, driven over stdin.  "go T PATH RETRY API" starts a
# seqpacket listener at monotonic time T (retrying EADDRINUSE for RETRY seconds) through API
# ("listener": SeqpacketListener; "bind": udscompat.bind and listen) and answers "won" or
# "lost ERRNO"; "serve" accepts one connection and sends this pid; "close T" closes at T
# (SeqpacketListener.close, or for "bind" the socket and then SocketFile.remove()).
# "no-table" runs as on a kernel without sock_diag (BSD, macOS: datagram probes and the
# private-directory bind); "slow" makes every unlink and rename wait 2 ms first, as a
# process descheduled between its check and its act would; "stop-at=EVENT:NAME,..." stops
# it at those calls of udscompat._bind in turn until the test sends a line.
INSTANCE = """
import os, sys, time, errno, socket, udscompat
from udscompat._platform import backend
if "no-table" in sys.argv:
    backend.bound_unix_sockets = lambda: None
    backend.BIND_MODE_FROM_SOCKET = False
if "slow" in sys.argv:
    def pause(frame, event, arg):
        if event == "c_call" and getattr(arg, "__name__", "") in ("unlink", "rename"):
            time.sleep(0.002)
    sys.setprofile(pause)
# "stop-at=c_return:flock,c_call:rename": stop at each of these calls of udscompat._bind in
# turn, say so ("stopped c_return flock") and go on when the test sends a line.
stops = [tuple(s.split(":")) for a in sys.argv if a[:8] == "stop-at=" for s in a[8:].split(",")]
if stops:
    def stop(frame, event, arg):
        if frame.f_globals.get("__name__") != "udscompat._bind" or not stops:
            return
        if (event, getattr(arg, "__name__", "")) == stops[0]:
            print("stopped", *stops.pop(0), flush=True)
            sys.stdin.readline()
    sys.setprofile(stop)
def at(t):
    while time.monotonic() < t:
        pass
listener = sock = file = None
print("ready", flush=True)
for line in sys.stdin:
    cmd, *args = line.split()
    if cmd == "go":
        at(float(args[0]))
        give_up = time.monotonic() + float(args[2])
        while True:
            try:
                if args[3] == "listener":
                    listener = udscompat.SeqpacketListener(args[1], implementation="native")
                else:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    try:
                        file = udscompat.bind(sock, args[1])
                        sock.listen()
                    except OSError:
                        sock.close()
                        raise
                print("won", flush=True)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > give_up:
                    print("lost", exc.errno, flush=True)
                    break
    elif cmd == "serve":
        server = listener._sock if listener is not None else sock
        server.settimeout(10)  # the client connected first (see reach()): only a hang guard
        phantoms = 0
        while True:  # a client that is gone already (a connect probe) cannot be answered
            try:
                conn, _ = server.accept()
            except OSError:
                break
            try:
                conn.send(str(os.getpid()).encode())
                break
            except OSError:
                phantoms += 1
            finally:
                conn.close()
        print("served", phantoms, flush=True)
    elif cmd == "close":
        at(float(args[0]))
        if listener is not None:
            listener.close()
        if sock is not None:
            sock.close()
            file.remove()
        listener = sock = file = None
        print("closed", flush=True)
    elif cmd == "quit":
        break
"""


class Instance:
    def __init__(self, *flags: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), *sys.path]))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", INSTANCE, *flags],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.ask(None) == "ready", self.proc.stderr.read() if self.proc.stderr else ""

    def ask(self, command: str | None) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command.encode() + b"\n")
            self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            assert self.proc.stderr is not None
            raise AssertionError(f"instance died: {self.proc.stderr.read().decode()[-2000:]}")
        return line.decode().strip()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command.encode() + b"\n")
        self.proc.stdin.flush()

    def reply(self) -> str:
        return self.ask(None)

    def stop(self) -> None:
        try:
            self.send("quit")
            self.proc.wait(timeout=10)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


PROBE_TIMEOUT = 10.0


def reach(server: Instance, path: str) -> Tuple[Union[int, str], int]:
    """Connect to ``path`` as a client, then have ``server`` accept and answer.

    Returns the pid that answered -- or why none did -- and how many clients that had
    gone already (phantoms) the server accepted first.  The client connects *before* the
    server is told to accept: the connection waits in the listen queue, so no accept
    timeout races the client, however late either process runs.  (Told first, the server
    gave up after 2 s while the client allowed itself 5: a client held up 2-5 s on a
    loaded machine reported a reachable server as unreachable.)
    """
    try:
        conn = udscompat.SeqpacketConn.connect(path, implementation="native", timeout=PROBE_TIMEOUT)
    except OSError as exc:
        return f"connect: {errno.errorcode.get(exc.errno or 0, exc)}", 0
    with conn:
        server.send("serve")
        answer: Union[int, str]
        try:
            data = conn.recv(32)
            answer = int(data) if data.isdigit() else f"recv: {data!r}"
        except OSError as exc:
            answer = f"recv: {errno.errorcode.get(exc.errno or 0, exc)}"
        served, phantoms = server.reply().split()
    assert served == "served"
    return answer, int(phantoms)


RACE_SECONDS = 2.0  # each race loop runs this long, and at least MIN_TRIES times ...
MIN_TRIES = 20
RACE_LIMIT = 10.0  # ... but never longer than this (a loaded machine)


def racing(started: float, tries: int) -> bool:
    """Go on with a race loop?  Bounded in time, with a floor on the count."""
    elapsed = time.monotonic() - started
    return elapsed < RACE_LIMIT and (elapsed < RACE_SECONDS or tries < MIN_TRIES)


KERNELS = ["kernel-table", "no-table"]


@needs_kernel_seqpacket
@pytest.mark.parametrize("kernel", KERNELS)
def test_two_instances_starting_at_once_exactly_one_wins(short_tmp: Path, kernel: str) -> None:
    """Both find a stale file and start at the same moment (jitter +-200 us): one wins."""
    path = str(short_tmp / "start")
    a = Instance(kernel)
    b = Instance(kernel)
    tries = both = none = phantoms = 0
    unreachable: List[Union[int, str]] = []  # what the probe got instead of the winner's pid
    try:
        started = time.monotonic()
        while racing(started, tries):
            stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            stale.bind(path)
            stale.close()  # a crashed instance's file
            t = time.monotonic() + 0.003
            a.send(f"go {t} {path} 0 listener")
            b.send(f"go {t + random.uniform(-200e-6, 200e-6)} {path} 0 listener")
            results = {inst: inst.reply() for inst in (a, b)}
            winners = [inst for inst, r in results.items() if r == "won"]
            for result in results.values():
                assert result == "won" or result == f"lost {errno.EADDRINUSE}", result
            tries += 1
            if len(winners) == 1:
                answer, count = reach(winners[0], path)
                if answer != winners[0].proc.pid:
                    unreachable.append(answer)
                phantoms += count
            both += len(winners) > 1
            none += not winners
            for inst in (a, b):
                assert inst.ask("close 0") == "closed"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    finally:
        a.stop()
        b.stop()
    print(
        f"{kernel}: {tries} starts, both came up {both}, none {none}, unreachable {unreachable}, "
        f"phantom clients {phantoms}"
    )
    assert (both, none, len(unreachable), phantoms) == (0, 0, 0, 0), (
        tries,
        both,
        none,
        unreachable,
    )


@needs_kernel_seqpacket
def test_the_lock_holder_survives_an_instance_that_went_on_without_the_lock(
    short_tmp: Path,
) -> None:
    """Two instances start on a stale file.  X takes the directory's lock and loses the CPU
    for longer than the lock is waited for, so Y goes on without it: Y looks at the stale
    file, judges it stale and loses the CPU before its rename.  X removes the stale file,
    binds and listens; Y's rename then takes X's fresh file aside, and X looks for its file
    while Y holds it there to judge it.  X must come up and be reached there; Y must lose
    with EADDRINUSE.  (X held the lock, so it took its missing file for gone: EBUSY, after
    which Y put it back stale and failed too -- neither came up.)  Stand-in for the
    scheduler: each instance stops at the named calls until the test lets it go on."""
    path = str(short_tmp / "start")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stale.bind(path)
    stale.close()
    x = Instance("stop-at=c_return:flock,c_return:listen")
    y = Instance("stop-at=c_call:rename,c_call:link")
    try:
        x.send(f"go 0 {path} 0 listener")
        assert x.reply() == "stopped c_return flock"  # X holds the lock
        y.send(f"go 0 {path} 0 listener")
        assert y.reply() == "stopped c_call rename"  # Y waited in vain, judged the file stale
        x.send("on")
        assert x.reply() == "stopped c_return listen"  # X replaced it and listens
        y.send("on")
        assert y.reply() == "stopped c_call link"  # Y took X's file aside, puts it back
        x.send("on")  # X looks for its file now, while it is aside
        time.sleep(0.2)
        y.send("on")
        results = (x.reply(), y.reply())
        assert results == ("won", f"lost {errno.EADDRINUSE}"), results
        assert sorted(os.listdir(short_tmp)) == ["start"]
        assert reach(x, path) == (x.proc.pid, 0)
        assert x.ask("close 0") == "closed"
        assert not os.path.lexists(path)
    finally:
        x.stop()
        y.stop()


@pytest.mark.parametrize(
    ("api", "kernel"),
    [("listener", "kernel-table"), ("bind", "kernel-table"), ("bind", "no-table")],
)
def test_restart_never_removes_the_successors_socket(
    short_tmp: Path, api: str, kernel: str
) -> None:
    """The old instance closes and removes its file -- slowly, 2 ms between its check and its
    act -- while the new one keeps trying to bind: the new one's socket must survive."""
    path = str(short_tmp / "restart")
    old = Instance(kernel, "slow")
    new = Instance(kernel)
    restarts = lost = 0
    try:
        started = time.monotonic()
        while racing(started, restarts):
            assert old.ask(f"go 0 {path} 0 {api}") == "won"
            t = time.monotonic() + 0.003
            old.send(f"close {t}")
            new.send(f"go {t + random.uniform(-100e-6, 100e-6)} {path} 1 {api}")
            assert new.reply() == "won"
            assert old.reply() == "closed"
            restarts += 1
            if not os.path.exists(path):
                lost += 1  # the old instance removed its successor's file
            else:
                assert reach(new, path) == (new.proc.pid, 0)
            assert new.ask("close 0") == "closed"
    finally:
        old.stop()
        new.stop()
    print(f"{api}/{kernel}: {restarts} restarts, successor's socket removed {lost}")
    assert lost == 0, (restarts, lost)


# -- what a killed instance left aside ----------------------------------------------------------


def _aside(tag: str) -> str:
    """A name of the form udscompat renames an entry aside to (16 hex digits)."""
    return ".udscompat-" + tag * (16 // len(tag))


def _stale_at(path: Path) -> Path:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    return path


def _aside_entries(directory: Path) -> List[str]:
    return sorted(n for n in os.listdir(directory) if n.startswith(".udscompat-"))


@needs_kernel_seqpacket
def test_the_next_bind_removes_what_a_killed_removal_left_aside(short_tmp: Path) -> None:
    """SIGKILL between a removal's rename aside and its unlink left the (now stale) socket
    file at .udscompat-XXXX for good -- 5 of 60 kills of a tight bind/remove loop here,
    and no later bind looked.  The next bind in that directory removes it."""
    path = short_tmp / "svc"
    old = Instance("stop-at=c_call:unlink")
    try:
        assert old.ask(f"go 0 {path} 0 listener") == "won"
        assert old.ask("close 0") == "stopped c_call unlink"  # renamed aside, judged: ours
    finally:
        old.proc.kill()  # SIGKILL there; its socket closes with it
        old.stop()
    [left] = _aside_entries(short_tmp)
    assert stat.S_ISSOCK(os.lstat(short_tmp / left).st_mode)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        file = udscompat.bind(sock, path, backlog=1)
        assert file is not None
        assert os.listdir(short_tmp) == ["svc"]
        assert file.remove()


def test_the_sweep_for_leftovers_touches_nothing_else(short_tmp: Path) -> None:
    """What bind() leaves alone while it removes a leftover: a live socket at an aside name
    (a successor whose name died with a killed remover), a link there (to our stale socket
    file elsewhere), a hard link there to a live socket, a regular file, another user's
    stale socket there (made ours-then-chowned: ownership is what is judged; root only),
    our stale sockets at names that are not exactly udscompat's aside form, and a private
    bind directory.  Only our stale socket at an aside name goes."""
    elsewhere = short_tmp / "elsewhere"
    elsewhere.mkdir()
    target = _stale_at(elsewhere / "stale")
    kept: List[str] = []
    with contextlib.ExitStack() as stack:
        live = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        live.bind(str(short_tmp / _aside("1")))
        live.listen()
        other = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        other.bind(str(short_tmp / "other-live"))
        other.listen()
        os.link(short_tmp / "other-live", short_tmp / _aside("2"))
        os.symlink(target, short_tmp / _aside("3"))
        (short_tmp / _aside("4")).write_bytes(b"not a socket")
        kept += [_aside(tag) for tag in "1234"] + ["other-live"]
        if os.geteuid() == 0:
            nobody = other_user()
            os.lchown(_stale_at(short_tmp / _aside("5")), nobody.pw_uid, nobody.pw_gid)
            kept.append(_aside("5"))
        for near_miss in (
            ".udscompat-" + "6" * 15,
            ".udscompat-" + "6" * 17,
            ".udscompat-" + "A" * 16,
            ".udscompat-" + "6" * 12,
            _aside("6") + ".x",
            ".udscompat" + "6" * 16,
        ):
            kept.append(_stale_at(short_tmp / near_miss).name)
        private = short_tmp / (".udscompat-" + "7" * 12)
        private.mkdir(mode=0o700)
        _stale_at(private / "svc")
        kept.append(private.name)
        _stale_at(short_tmp / _aside("8"))  # the one leftover that goes
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            file = udscompat.bind(sock, short_tmp / "svc", backlog=1)
            assert file is not None and file.remove()
        assert sorted(os.listdir(short_tmp)) == sorted([*kept, "elsewhere"])
        assert os.listdir(private) == ["svc"] and stat.S_ISSOCK(os.lstat(target).st_mode)
        for name in (_aside("1"), _aside("2")):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(short_tmp / name))  # still reaches its listener


def test_a_removal_whose_entry_a_sweep_took_first_counts_it_removed(short_tmp: Path) -> None:
    """A removal that went on without the lock has renamed its stale file aside and judged
    it when an instance holding the lock sweeps the directory and removes that entry first.
    remove() must say True -- the file is gone -- not False ("still there, not ours").
    Stand-in for the sweeping instance: a profile hook unlinks the entry just before the
    removal's own unlink."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        file = udscompat.bind(sock, short_tmp / "svc")
        assert file is not None
    swept: List[str] = []

    def sweep_first(frame: Any, event: str, arg: Any) -> None:
        ours = frame.f_globals.get("__name__") == "udscompat._bind"
        if ours and event == "c_call" and getattr(arg, "__name__", "") == "unlink" and not swept:
            swept.extend(_aside_entries(short_tmp))
            for name in swept:
                os.unlink(short_tmp / name)

    sys.setprofile(sweep_first)
    try:
        removed = file.remove()
    finally:
        sys.setprofile(None)
    assert len(swept) == 1 and os.listdir(short_tmp) == []
    assert removed


@pytest.mark.root("another user swaps an entry in a directory root binds in")
@needs_kernel_seqpacket
def test_the_sweep_leaves_an_entry_swapped_in_before_its_rename(short_tmp: Path) -> None:
    """nobody renames its own live socket over our leftover after the sweep judged the
    leftover stale and just before the sweep renames it aside: the sweep must find what it
    took is not what it judged, put it back, and remove nothing.  Stand-in for the
    scheduler: the binding instance stops before that rename until nobody has moved."""
    from tests.test_bind_attacks import _python_for  # one finder of a Python nobody may run

    nobody = other_user()
    leftover = _stale_at(short_tmp / _aside("9"))
    path = short_tmp / "svc"
    swap = (
        "import os, socket, sys\n"
        "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
        "s.bind(sys.argv[1]); s.listen()\n"
        "sys.stdin.readline(); os.rename(sys.argv[1], sys.argv[2])\n"
        "print('moved', flush=True); sys.stdin.readline()\n"
    )
    python = _python_for(nobody)
    if python is None:
        pytest.skip("no Python interpreter that nobody may run here")
    attacker = subprocess.Popen(
        [python, "-c", swap, str(short_tmp / "nobody.sock"), str(leftover)],
        user=nobody.pw_uid,
        group=nobody.pw_gid,
        extra_groups=[],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd="/",
    )
    binder = Instance("stop-at=c_call:rename")
    try:
        assert attacker.stdin is not None and attacker.stdout is not None
        binder.send(f"go 0 {path} 0 listener")
        assert binder.reply() == "stopped c_call rename"  # the sweep judged the leftover stale
        attacker.stdin.write(b"go\n")
        attacker.stdin.flush()
        assert attacker.stdout.readline() == b"moved\n"  # nobody's live socket is there now
        binder.send("on")
        assert binder.reply() == "won"
        assert _aside_entries(short_tmp) == [leftover.name]
        assert os.lstat(leftover).st_uid == nobody.pw_uid
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(str(leftover))  # nobody's listener, still reached there
        assert reach(binder, str(path)) == (binder.proc.pid, 0)
        assert binder.ask("close 0") == "closed"
    finally:
        binder.stop()
        attacker.kill()
        attacker.communicate()


# -- a second user who owns a directory on the path races the library --------------------------


@pytest.fixture(scope="module")
def racer() -> Iterator[str]:
    """tests/peers/racer.c, built where another user can run it."""
    compiler = c_compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc) on PATH")
    home = tempfile.mkdtemp(prefix="udsc-racer-")
    os.chmod(home, 0o755)
    binary = os.path.join(home, "racer")
    source = Path(__file__).parent / "peers" / "racer.c"
    subprocess.run(
        [compiler, "-O2", "-Wall", "-Werror", "-o", binary, str(source)],
        check=True,
        capture_output=True,
    )
    try:
        yield binary
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def attack(racer: str) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start the racer as another user: ``attack(user, MODE, ARGS...)``; stopped afterwards."""
    started: List[subprocess.Popen[bytes]] = []

    def start(user: Any, *args: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(
            [racer, *args, str(RACE_SECONDS)],
            user=user.pw_uid,
            group=user.pw_gid,
            extra_groups=[],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def attacker_result(attacker: subprocess.Popen[bytes]) -> Tuple[int, int]:
    """(iterations, hits) the attacker reports when its time is up."""
    out, err = attacker.communicate(timeout=RACE_LIMIT + 10)
    assert attacker.returncode == 0, err.decode()
    _, iterations, _, hits = out.decode().split()
    return int(iterations), int(hits)


def owned_by(user: Any, path: Path, mode: int = 0o755) -> Path:
    path.mkdir(mode=mode)
    os.chmod(path, mode)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


@contextlib.contextmanager
def descheduled_before(*calls: str, seconds: float = 0.002) -> Iterator[None]:
    """Pause before each of these ``os`` calls in this thread, as if the scheduler ran
    something else there: the window between a check and its act becomes milliseconds."""

    def pause(frame: Any, event: str, arg: Any) -> None:
        if event == "c_call" and getattr(arg, "__name__", "") in calls:
            time.sleep(seconds)

    sys.setprofile(pause)
    try:
        yield
    finally:
        sys.setprofile(None)


def until_attacker_ends(attacker: subprocess.Popen[bytes]) -> Iterator[int]:
    """Count the library's turns while the attacker runs (it stops itself on time)."""
    turns = 0
    while attacker.poll() is None:
        yield turns
        turns += 1


@pytest.mark.root("a second user has to own a directory on the path")
def test_stale_removal_never_deletes_through_a_swapped_directory(
    short_tmp: Path, attack: Callable[..., subprocess.Popen[bytes]]
) -> None:
    """nobody swaps its directory on the path for a link to root's directory, all the time,
    while root restarts a listener there (each start removes the stale file of the last)."""
    nobody = other_user()
    home = owned_by(nobody, short_tmp / "home")
    owned_by(nobody, home / "sub", 0o777)
    os.symlink(short_tmp / "root", home / "alt")
    os.lchown(home / "alt", nobody.pw_uid, nobody.pw_gid)
    rootdir = short_tmp / "root"
    rootdir.mkdir(mode=0o755)
    precious = rootdir / "svc.sock"
    precious.write_bytes(b"root's own file")
    path = home / "sub" / "svc.sock"
    attacker = attack(nobody, "swapdir", str(home), "sub", "alt")
    bound = refused = 0
    with descheduled_before("unlink", "rename"):
        for _ in until_attacker_ends(attacker):
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    udscompat.bind(sock, path)  # closing it leaves a stale file for the next start
                    bound += 1
                except OSError:
                    refused += 1  # the path led through nobody's link: refused, not followed
    tries, swaps = attacker_result(attacker)
    print(
        f"{bound + refused} starts ({bound} bound, {refused} refused); "
        f"nobody: {tries} tries, {swaps} swaps"
    )
    assert precious.read_bytes() == b"root's own file"
    assert sorted(os.listdir(rootdir)) == ["svc.sock"]
    assert bound > 0 and swaps > 0


@pytest.mark.root("a second user has to own the directory the socket is in")
@pytest.mark.parametrize("mode", [0o666, 0o640])
def test_mode_never_follows_a_link_planted_over_the_socket(
    short_tmp: Path,
    attack: Callable[..., subprocess.Popen[bytes]],
    umask: Callable[[int], None],
    mode: int,
) -> None:
    """Whenever the socket file appears, nobody renames a link to a root file over it."""
    nobody = other_user()
    umask(0o022)  # so 0o666 takes the path that adds the bits the umask removed
    home = owned_by(nobody, short_tmp / "home")
    secret = short_tmp / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o600)
    path = home / "svc.sock"
    attacker = attack(nobody, "plantlink", str(home), "svc.sock", str(secret))
    bound = refused = 0
    with descheduled_before("chmod"):
        for _ in until_attacker_ends(attacker):
            with socket.socket(socket.AF_UNIX) as sock:
                try:
                    file = udscompat.bind(sock, path, mode=mode)
                except OSError:
                    refused += 1
                    continue
            bound += 1
            assert file is not None
            file.remove()
    tries, planted = attacker_result(attacker)
    print(
        f"{bound + refused} binds ({bound} bound, {refused} refused); "
        f"nobody: {tries} tries, {planted} links planted"
    )
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert secret.read_bytes() == b"root only"
    # Every planted link was a chance to chmod the secret.  A bind succeeds only while
    # nobody's racer is off the CPU, so some runs have none (main's code too: 0 of 19 once);
    # test_mode_is_exact_whatever_the_umask covers the binds that succeed.
    assert planted > 0


@pytest.mark.root("the peer has to be another user")
def test_no_peer_of_another_user_connects_or_sends_before_the_mode_applies(
    short_tmp: Path,
    attack: Callable[..., subprocess.Popen[bytes]],
    umask: Callable[[int], None],
) -> None:
    """With umask 0, a file born 0o777 and chmodded to 0o600 after bind() lets nobody in."""
    nobody = other_user()
    umask(0)
    dgram_path, stream_path = short_tmp / "d.sock", short_tmp / "s.sock"
    senders = attack(nobody, "sendto", str(dgram_path))
    connectors = attack(nobody, "connect", str(stream_path))
    binds = received = 0
    for _ in until_attacker_ends(senders):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
            dgram_file = udscompat.bind(dgram, dgram_path, mode=0o600)
            with socket.socket(socket.AF_UNIX) as stream:
                stream_file = udscompat.bind(stream, stream_path, mode=0o600, backlog=8)
                binds += 1
                time.sleep(0.0005)
                dgram.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    while dgram.recv(8):
                        received += 1
                assert stream_file is not None
                stream_file.remove()
            assert dgram_file is not None
            dgram_file.remove()
    _, sent = attacker_result(senders)
    _, connected = attacker_result(connectors)
    print(
        f"{binds} binds; nobody's datagrams accepted {sent} (received {received}), "
        f"connections {connected}"
    )
    assert (sent, received, connected) == (0, 0, 0)
    assert binds > 0


@pytest.mark.root("a second user has to own a directory on the path")
def test_path_through_another_users_directory(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bind() there goes through the directory it opened; the listener still reports the
    path.  A link that user owns is not followed; root's own links are."""
    nobody = other_user()
    home = owned_by(nobody, short_tmp / "home", 0o777)
    path = home / "svc.sock"
    with udscompat.SeqpacketListener(path) as listener:
        assert listener.local_addr == UnixSocketAddr.from_path(path)
        if backend.FD_PATH is not None:
            assert listener._sock.getsockname().startswith("/proc/self/fd/")
        with udscompat.SeqpacketConn.connect(path) as conn:
            conn.send(b"ok")
            peer, _ = listener.accept()
            with peer:
                assert peer.recv(8) == b"ok"
    assert not path.exists()
    os.symlink(short_tmp, home / "link")
    os.lchown(home / "link", nobody.pw_uid, nobody.pw_gid)
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError) as info:
        udscompat.bind(sock, home / "link" / "svc.sock")
    assert info.value.errno == errno.ELOOP and "owned by uid" in str(info.value)
    os.symlink(short_tmp, short_tmp / "rootlink")  # root's: followed
    with socket.socket(socket.AF_UNIX) as sock:
        file = udscompat.bind(sock, short_tmp / "rootlink" / "via.sock")
        assert file is not None and (short_tmp / "via.sock").exists()
        assert file.remove()
    # A kernel with no /proc/self/fd cannot bind through the directory it opened: refused.
    monkeypatch.setattr(backend, "FD_PATH", None)
    with socket.socket(socket.AF_UNIX) as sock, pytest.raises(udscompat.UnsupportedError):
        udscompat.bind(sock, path)
    assert not path.exists()


# -- what a refused connect found ----------------------------------------------------------------


@needs_kernel_seqpacket
@pytest.mark.parametrize(
    ("listener_impl", "client_impl"), [("emulated", "native"), ("native", "emulated")]
)
def test_connect_to_the_other_implementation_says_what_listens_there(
    short_tmp: Path, listener_impl: str, client_impl: str
) -> None:
    """At a path the kernel answers EPROTOTYPE; at an abstract name (Linux keys those by
    socket type) ECONNREFUSED, as if nothing listened: the message says what does."""
    theirs, ours = (
        ("SOCK_STREAM", "SOCK_SEQPACKET")
        if listener_impl == "emulated"
        else ("SOCK_SEQPACKET", "SOCK_STREAM")
    )
    path = str(short_tmp / "impl")
    with udscompat.SeqpacketListener(path, implementation=listener_impl):
        with pytest.raises(OSError) as info:
            udscompat.SeqpacketConn.connect(path, implementation=client_impl)
        assert info.value.errno == errno.EPROTOTYPE
        assert f"a {theirs} socket is bound there, and this one is {ours}" in str(info.value)
        assert "emulated one SOCK_STREAM" in str(info.value)
    if not _abstract():
        return
    name = f"@udsc-impl-{os.getpid()}-{listener_impl}"
    with udscompat.SeqpacketListener(name, implementation=listener_impl):
        with pytest.raises(OSError) as info:
            udscompat.SeqpacketConn.connect(name, implementation=client_impl)
        assert info.value.errno == errno.ECONNREFUSED
        message = str(info.value)
        assert f"a {theirs} socket listens there, not a {ours} one" in message
        assert "per socket type" in message and "ECONNREFUSED, not EPROTOTYPE" in message

        async def via_asyncio() -> OSError:
            from udscompat import aio

            try:
                await aio.open_seqpacket_connection(name, implementation=client_impl)
            except OSError as exc:
                return exc
            raise AssertionError("connected across implementations")

        import asyncio

        assert "per socket type" in str(asyncio.run(via_asyncio()))


def test_refused_connect_to_a_path_says_stale_or_not_listening(short_tmp: Path) -> None:
    path = str(short_tmp / "refusing")
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(path)
        with pytest.raises(OSError) as info:
            udscompat.SeqpacketConn.connect(path, implementation="emulated")
        assert info.value.errno == errno.ECONNREFUSED
        if backend.bound_unix_sockets() is not None:
            assert "bound there but does not listen" in str(info.value)
    with pytest.raises(OSError) as info:
        udscompat.SeqpacketConn.connect(path, implementation="emulated")
    if backend.bound_unix_sockets() is not None:
        assert "stale socket file: no socket is bound to it" in str(info.value)


def _abstract() -> bool:
    from udscompat import _probes

    return bool(_probes.abstract_addresses()[0])
