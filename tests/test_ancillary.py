"""send_ancillary / recv_ancillary / pass_credentials / peer_security_label on real sockets.

Real peers throughout: socketpairs of every type, a second Python process, a
forked child, a process running as ``nobody`` (root only), and a C peer built
here that speaks SCM_CREDENTIALS through the kernel's own API.  The expected
values are Linux's (SCM_CREDENTIALS carries one uid and one gid).
"""

from __future__ import annotations

import errno
import os
import pickle
import pwd
import socket
import subprocess
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Iterator, Tuple

import pytest

import udscompat
from tests.conftest import (
    c_compiler,
    needs_c_compiler,
    only_on,
    open_fds,
    other_user,
    python_peer,
    same_file,
    send_with_the_table_full,
)
from udscompat import _ancillary
from udscompat._fdpass import REGISTRY

pytestmark = only_on("Linux", "SCM_CREDENTIALS carries one uid and one gid")

KINDS = {
    "stream": socket.SOCK_STREAM,
    "dgram": socket.SOCK_DGRAM,
    "seqpacket": socket.SOCK_SEQPACKET,
}


def mine(pid: int | None = None) -> udscompat.ReceivedCredentials:
    """What SCM_CREDENTIALS reports for a sender with this process's real ids."""
    return udscompat.ReceivedCredentials(
        os.getpid() if pid is None else pid, os.getuid(), os.getgid(), None, None, None
    )


@pytest.fixture(params=list(KINDS))
def pair(request: pytest.FixtureRequest) -> Iterator[Tuple[socket.socket, socket.socket]]:
    """A socketpair of each type; the second end has credentials passing on."""
    a, b = socket.socketpair(socket.AF_UNIX, KINDS[request.param])
    udscompat.pass_credentials(b)
    with a, b:
        yield a, b


def test_every_message_brings_the_senders_credentials(
    pair: Tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    a.send(b"plain send")  # no credentials attached: the kernel adds the real ones
    message = udscompat.recv_ancillary(b, 64)
    assert message.data == b"plain send"
    assert message.credentials == mine()
    assert message.fds == ()
    assert not message.truncated


def test_credentials_and_fds_travel_in_one_message(
    pair: Tuple[socket.socket, socket.socket], pipe: Tuple[int, int]
) -> None:
    a, b = pair
    r, w = pipe
    sent = udscompat.send_ancillary(a, [b"two ", b"buffers"], [r], udscompat.send_credentials())
    assert sent == 11
    message = udscompat.recv_ancillary(b, 64, maxfds=1)
    try:
        assert (message.data, message.credentials) == (b"two buffers", mine())
        assert len(message.fds) == 1 and not os.get_inheritable(message.fds[0])
        os.write(w, b"!")
        assert os.read(message.fds[0], 1) == b"!"
    finally:
        for fd in message.fds:
            os.close(fd)
    # The close-on-exec flag udscompat asked for is not reported as the caller's.
    assert not message.flags & socket.MSG_CMSG_CLOEXEC


def test_without_pass_credentials_none_arrive() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        udscompat.send_ancillary(a, b"x", credentials=udscompat.send_credentials())
        assert udscompat.recv_ancillary(b, 8).credentials is None
        udscompat.pass_credentials(b)
        udscompat.pass_credentials(b, False)
        a.send(b"y")
        assert udscompat.recv_ancillary(b, 8).credentials is None


def test_effective_ids_may_be_claimed() -> None:
    creds = udscompat.send_credentials(effective=True)
    assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.geteuid(), os.getegid())
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.pass_credentials(b)
        udscompat.send_ancillary(a, b"e", credentials=creds)
        got = udscompat.recv_ancillary(b, 8).credentials
        assert got is not None and (got.uid, got.gid) == (os.geteuid(), os.getegid())


def test_truncated_datagram_keeps_its_credentials_and_says_so() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.pass_credentials(b)
        a.send(b"0123456789")
        message = udscompat.recv_ancillary(b, 4)
        assert (message.data, message.truncated, message.credentials) == (b"0123", True, mine())


def test_more_fds_than_asked_closes_them_all_and_raises(pipe: Tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.pass_credentials(b)
        udscompat.send_ancillary(a, b"x", [pipe[0], pipe[1], pipe[0]])
        with pytest.raises(udscompat.ControlTruncatedError) as info:
            udscompat.recv_ancillary(b, 8, maxfds=2)
        assert (info.value.data, info.value.closed_fds) == (b"x", 3)
    # The autouse no_fd_leak fixture proves none of the three stayed open.


def test_peek_clones_fds_the_caller_owns(pipe: Tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.pass_credentials(b)
        udscompat.send_ancillary(a, b"peeked", [pipe[0]])
        peeked = udscompat.recv_ancillary(b, 8, 1, socket.MSG_PEEK)
        taken = udscompat.recv_ancillary(b, 8, 1)
        try:
            assert peeked.data == taken.data == b"peeked"
            assert peeked.credentials == taken.credentials == mine()
            assert len(peeked.fds) == len(taken.fds) == 1 and peeked.fds != taken.fds
        finally:
            for fd in peeked.fds + taken.fds:
                os.close(fd)


@pytest.mark.parametrize("call", ["recv_ancillary", "recv_fds"])
def test_a_peek_never_reads_descriptors_the_kernel_did_not_install(
    monkeypatch: pytest.MonkeyPatch, pipe: Tuple[int, int], call: str
) -> None:
    """Stand-in for FreeBSD/NetBSD/macOS (kernel pointers or zeros where the fds would be).

    Linux installs copies anyway; the test closes exactly those, and checks that
    the library reported none of them and left every other descriptor alone.
    """
    monkeypatch.setattr(_ancillary._probes, "peek_installs_fds", lambda: False)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_ancillary(a, b"peeked", [pipe[0]])
        before = open_fds()
        if call == "recv_ancillary":
            data, fds = udscompat.recv_ancillary(b, 8, 1, socket.MSG_PEEK)[:2]
        else:
            data, fds = udscompat.recv_fds(b, 8, 1, socket.MSG_PEEK)[:2]
        appeared = open_fds() - before
        for fd in appeared:  # what Linux installed for the peek: nothing of ours saw it
            assert same_file(fd, pipe[0])
            os.close(fd)
        assert (data, tuple(fds)) == (b"peeked", ())
        with pytest.raises(udscompat.UnsupportedError, match="descriptors on a peek"):
            before = open_fds()
            try:
                _ancillary.receive(b, 8, 1, socket.MSG_PEEK, refuse_peeked_fds=True)
            finally:
                for fd in open_fds() - before:
                    os.close(fd)
        taken = udscompat.recv_ancillary(b, 8, 1)  # the receive itself is untouched
        assert taken.data == b"peeked" and len(taken.fds) == 1
        os.close(taken.fds[0])


def test_out_of_descriptors_fails_send_ancillary_before_anything_went_out(
    hold_env: pytest.MonkeyPatch,
) -> None:
    """Sent descriptors are held before sendmsg: EMFILE there means nothing went out (child)."""
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    outcome = send_with_the_table_full(
        'udscompat.send_ancillary(a, b"x", [r], udscompat.send_credentials())'
    )
    assert outcome == ["refused", "before", "sending", str(errno.EMFILE)]


def test_a_failed_send_ancillary_holds_nothing(
    hold_env: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    hold_env.setenv("UDSCOMPAT_HOLD_SENT_FDS", "1")
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.close()
        with pytest.raises(OSError):
            udscompat.send_ancillary(a, b"x", [pipe[0]])  # ECONNREFUSED: the peer is gone
        assert REGISTRY.held(a) == 0


def test_several_buffers_are_one_message(pair: Tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    sent = udscompat.send_ancillary(a, (b"one ", bytearray(b"two "), memoryview(b"three")))
    assert sent == 13
    assert udscompat.recv_ancillary(b, 64).data == b"one two three"


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        ("text", TypeError, "data: expected a bytes-like object"),
        ([b"a", 3], TypeError, "data: expected a bytes-like object"),
        ([b"a"] * 5000, ValueError, "data: 5000 buffers in one message"),
    ],
)
def test_bad_buffers_are_refused_before_sending(data: object, error: type, words: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(error, match=words):
            udscompat.send_ancillary(a, data)  # type: ignore[arg-type]
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv(1)


def test_sender_address_of_a_datagram(short_tmp: Path) -> None:
    path = str(short_tmp / "from")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
    ):
        sender.bind(path)
        receiver.bind(str(short_tmp / "to"))
        udscompat.pass_credentials(receiver)
        udscompat.send_ancillary(sender, b"hi", address=receiver.getsockname())
        message = udscompat.recv_ancillary(receiver, 8)
        assert message.address == udscompat.UnixSocketAddr.from_path(path)
        assert message.credentials == mine()


def test_pid_is_the_forked_senders() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.pass_credentials(b)
        child = os.fork()
        if child == 0:  # the child sends on the socket it inherited, then exits
            try:
                a.send(b"child")
                udscompat.send_ancillary(a, b"claimed", credentials=udscompat.send_credentials())
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        assert udscompat.recv_ancillary(b, 8).credentials == mine(child)
        assert udscompat.recv_ancillary(b, 8).credentials == mine(child)


def test_a_second_process_over_a_path(short_tmp: Path) -> None:
    path = str(short_tmp / "l")
    code = f"""
import os, socket, udscompat
s = socket.socket(socket.AF_UNIX)
s.connect({path!r})
r, w = os.pipe()
os.write(w, b"through")
udscompat.send_ancillary(s, b"hello", [r], udscompat.send_credentials())
print(os.getpid())
"""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        udscompat.pass_credentials(listener)  # inherited by accepted sockets
        listener.listen()
        child = python_peer(code)
        conn, _ = listener.accept()
        with conn:
            message = udscompat.recv_ancillary(conn, 16, 1)
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
    try:
        assert message.credentials == mine(int(out))
        assert os.read(message.fds[0], 7) == b"through"
    finally:
        for fd in message.fds:
            os.close(fd)


def _claims_as(user: int, path: str, report: int) -> int:
    """Fork a child that drops to ``user`` and tries three claims (no exec: the
    interpreter's files may be unreadable to that user); it writes the outcomes to ``report``."""
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        os.setgroups([])
        os.setgid(pwd.getpwuid(user).pw_gid)
        os.setuid(user)
        results = []
        own = udscompat.send_credentials()
        for creds in (
            own,
            udscompat.SendCredentials(own.pid, 0, 0),
            udscompat.SendCredentials(1, own.uid, own.gid),
        ):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                try:
                    udscompat.send_ancillary(s, b"x", credentials=creds, address=path)
                    results.append("ok")
                except OSError as exc:
                    results.append(errno.errorcode[exc.errno or 0])
        os.write(report, " ".join(results).encode())
        status = 0
    finally:
        os._exit(status)


@pytest.mark.root("a peer as another user; naming other pids and ids")
def test_another_user_cannot_claim_root_but_root_may_claim_others(
    short_tmp: Path, pipe: Tuple[int, int]
) -> None:
    nobody = other_user()
    path = str(short_tmp / "d")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)
        os.chmod(path, 0o666)
        udscompat.pass_credentials(receiver)
        pid = _claims_as(nobody.pw_uid, path, pipe[1])
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert os.read(pipe[0], 64).decode().split() == ["ok", "EPERM", "EPERM"]
        got = udscompat.recv_ancillary(receiver, 8).credentials
        ids = (nobody.pw_uid, nobody.pw_gid)
        assert got == udscompat.ReceivedCredentials(pid, *ids, None, None, None)
        # Root may name another live process and other ids (CAP_SYS_ADMIN, CAP_SETUID/GID).
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            claim = udscompat.SendCredentials(1, *ids)
            udscompat.send_ancillary(sender, b"as init", credentials=claim, address=path)
            assert udscompat.recv_ancillary(receiver, 8).credentials == (
                udscompat.ReceivedCredentials(1, *ids, None, None, None)
            )
            with pytest.raises(OSError) as info:
                gone = udscompat.SendCredentials(2**22 + 5, 0, 0)  # past PID_MAX_LIMIT: never a pid
                udscompat.send_ancillary(sender, b"x", credentials=gone, address=path)
            assert info.value.errno == errno.ESRCH


@needs_c_compiler
def test_c_peer_reads_and_sends_scm_credentials_with_fds(short_tmp: Path) -> None:
    binary = short_tmp / "credpeer"
    source = Path(__file__).parent / "peers" / "credpeer.c"
    compiler = c_compiler()
    assert compiler is not None
    subprocess.run(
        [compiler, "-Wall", "-Werror", "-o", str(binary), str(source)],
        check=True,
        capture_output=True,
    )
    path = str(short_tmp / "c.sock")
    r, w = os.pipe()
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        ids = [str(os.getpid()), str(os.getuid()), str(os.getgid())]
        child = subprocess.Popen([str(binary), path, *ids], stderr=subprocess.PIPE)
        conn, _ = listener.accept()
        with conn:
            udscompat.pass_credentials(conn)
            udscompat.send_ancillary(conn, b"to C", [w], udscompat.send_credentials())
            os.close(w)
            assert os.read(r, 6) == b"from C"
            os.close(r)
            message = udscompat.recv_ancillary(conn, 16, 1)
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err.decode()
    try:
        assert message.data == b"C creds"
        assert message.credentials == mine(child.pid)
        assert os.read(message.fds[0], 6) == b"C pipe"
    finally:
        for fd in message.fds:
            os.close(fd)


def test_control_truncation_from_a_full_descriptor_table_closes_and_raises() -> None:
    # In a child: RLIMIT_NOFILE lowered until the received fd cannot be installed.
    code = """
import os, resource, socket, udscompat
from udscompat import _probes
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
udscompat.pass_credentials(b)
r, w = os.pipe()
udscompat.send_ancillary(a, b"payload", [r, w])
_probes.cmsg_cloexec_flag()
opened = _probes.open_fds()
resource.setrlimit(resource.RLIMIT_NOFILE, (max(opened) + 2, max(opened) + 2))
filler = []
try:
    while True:
        filler.append(os.dup(0))
except OSError:
    pass
os.close(filler.pop())  # room for exactly one of the two
try:
    message = udscompat.recv_ancillary(b, 64, 2)
    print("no error", message)
except udscompat.ControlTruncatedError as exc:
    for fd in filler:
        os.close(fd)
    print("error", exc.data, sorted(_probes.open_fds() - opened))
"""
    child = python_peer(code)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    assert out.decode().split() == ["error", "b'payload'", "[]"], out


def test_ancillary_data_need_a_payload_byte_on_a_stream(pipe: Tuple[int, int]) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        for kwargs in ({"credentials": udscompat.send_credentials()}, {"fds": [pipe[0]]}):
            with pytest.raises(ValueError, match="payload byte"):
                udscompat.send_ancillary(a, b"", **kwargs)  # type: ignore[arg-type]
        # A datagram may be empty and still carry them.
        c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with c, d:
            udscompat.pass_credentials(d)
            udscompat.send_ancillary(c, b"", credentials=udscompat.send_credentials())
            assert udscompat.recv_ancillary(d, 8).credentials == mine()


def test_bad_arguments_are_refused_before_any_send() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b, socket.socket(socket.AF_INET) as inet:
        with pytest.raises(TypeError, match="SendCredentials"):
            udscompat.send_ancillary(a, b"x", credentials=(1, 2, 3))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="AF_UNIX"):
            udscompat.recv_ancillary(inet, 8)
        with pytest.raises(TypeError, match=r"socket\.socket"):
            udscompat.pass_credentials(object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="bufsize"):
            udscompat.recv_ancillary(b, -1)
        a.setblocking(False)
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            udscompat.recv_ancillary(b, 8)  # nothing was sent


def test_kernels_that_fill_in_the_truth_refuse_other_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for FreeBSD/DragonFly/NetBSD/illumos (cannot run here): the shared check
    # before any send, driven by the backend's SENDER_NAMES_CREDENTIALS value.
    monkeypatch.setattr(_ancillary.backend, "SENDER_NAMES_CREDENTIALS", False)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        with pytest.raises(udscompat.UnsupportedError, match="other than the sender's own"):
            udscompat.send_ancillary(a, b"x", credentials=udscompat.SendCredentials(1, 0, 0))
        udscompat.send_ancillary(a, b"own", credentials=udscompat.send_credentials())
        assert b.recv(8) == b"own"


def test_dragonfly_refuses_credentials_with_fds(
    monkeypatch: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    # Stand-in for DragonFly (cannot run here): CREDENTIALS_WITH_FDS False refuses before sendmsg.
    monkeypatch.setattr(_ancillary.backend, "CREDENTIALS_WITH_FDS", False)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        b.setblocking(False)
        creds = udscompat.send_credentials()
        with pytest.raises(udscompat.UnsupportedError, match="descriptors in one message"):
            udscompat.send_ancillary(a, b"x", [pipe[0]], creds)
        with pytest.raises(BlockingIOError):
            b.recv(8)  # nothing went out


def _raw_peersec(sock: socket.socket) -> bytes | int:
    try:
        return sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERSEC, 256)
    except OSError as exc:
        return exc.errno or 0


def test_peer_security_label_is_what_so_peersec_says() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        raw = _raw_peersec(a)
        if isinstance(raw, int):
            assert raw == errno.ENOPROTOOPT  # no LSM labels sockets here
            assert udscompat.peer_security_label(a) is None
        else:
            assert udscompat.peer_security_label(a) == raw.rstrip(b"\0")


def test_values_are_frozen_typed_and_pickle() -> None:
    creds = udscompat.ReceivedCredentials(5, 1, 2, 3, 4, (4, 9))
    with pytest.raises(FrozenInstanceError):
        creds.uid = 0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(creds)) == creds
    assert hash(creds) == hash(udscompat.ReceivedCredentials(5, 1, 2, 3, 4, (4, 9)))
    sent = udscompat.SendCredentials(os.getpid(), 0, 0)
    assert pickle.loads(pickle.dumps(sent)) == sent
    for bad in ((0, 0, 0), (1, -1, 0), (1, 0, 2**32 - 1), (True, 0, 0)):
        with pytest.raises((ValueError, TypeError)):
            udscompat.SendCredentials(*bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="tuple"):
        udscompat.ReceivedCredentials(None, 1, 1, None, None, [1])  # type: ignore[arg-type]
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.pass_credentials(b)
        a.send(b"v")
        message = udscompat.recv_ancillary(b, 8)
    with pytest.raises(AttributeError):
        message.data = b""  # type: ignore[misc]
    assert isinstance(message, udscompat.Message)
    assert pickle.loads(pickle.dumps(message)) == message
    assert "credentials=ReceivedCredentials(" in repr(message)


def test_the_most_fds_and_credentials_fit_one_receive(pipe: Tuple[int, int]) -> None:
    # SCM_MAX_FD descriptors and a ucred: the control buffer has room for both.
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.pass_credentials(b)
        most = [pipe[0]] * 253
        udscompat.send_ancillary(a, b"full", most, udscompat.send_credentials())
        message = udscompat.recv_ancillary(b, 8, maxfds=253)
        try:
            assert (len(message.fds), message.credentials) == (253, mine())
        finally:
            for fd in message.fds:
                os.close(fd)


def test_unreadable_credentials_close_the_fds_first(
    monkeypatch: pytest.MonkeyPatch, pipe: Tuple[int, int]
) -> None:
    # Stand-in for a kernel whose credential message cannot be decoded (cannot be made to
    # happen here): the EPROTO reaches the caller and no received descriptor stays open.
    def undecodable(ancdata: object) -> None:
        raise OSError(errno.EPROTO, "stand-in: impossible credential message")

    monkeypatch.setattr(_ancillary.backend, "credentials_from_cmsgs", undecodable)
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        udscompat.send_ancillary(a, b"x", [pipe[0], pipe[1]])
        with pytest.raises(OSError, match="stand-in") as info:
            udscompat.recv_ancillary(b, 8, maxfds=2)
        assert info.value.errno == errno.EPROTO
    # no_fd_leak (autouse) fails the test if either received descriptor were still open.


def test_the_probe_reports_what_linux_does() -> None:
    probe = _ancillary.credentials_probe()
    assert probe == _ancillary.CredentialsProbe(
        True,
        "Linux: every message on datagrams, every message on streams",
        "every message",
        "every message",
        pid=True,
        effective_ids=False,
    )


def test_the_probe_says_none_when_nothing_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    # Stand-in for a kernel whose receiver option does nothing (cannot be had here).
    monkeypatch.setattr(_ancillary.backend, "pass_credentials", lambda sock, enable: None)
    _ancillary.credentials_probe.cache_clear()
    try:
        probe = _ancillary.credentials_probe()
    finally:
        _ancillary.credentials_probe.cache_clear()
    assert probe.available is False
    assert probe.reason == "no message carried the sender's credentials"


@pytest.mark.parametrize(
    ("arrivals", "stream"),
    [
        ([True, True, True, False], "first message"),  # NetBSD's LOCAL_CREDS
        ([True, True, False, False, True, True], "sender attaches"),  # DragonFly's SO_PASSCRED
    ],
    ids=["netbsd-like", "dragonfly-like"],
)
def test_the_probe_tells_the_bsd_stream_behaviours(
    monkeypatch: pytest.MonkeyPatch, arrivals: list[bool], stream: str
) -> None:
    # Stand-in for NetBSD and DragonFly (cannot run here): the credentials the kernel would
    # attach to the probe's messages, in order (two datagrams, two stream messages, and two
    # with the sender's own attached where the plain ones brought none).
    real = _ancillary.backend.credentials_from_cmsgs
    left = list(arrivals)

    def as_that_kernel(ancdata: object) -> object:
        found = real(ancdata)  # type: ignore[arg-type]
        return found if left.pop(0) else None

    monkeypatch.setattr(_ancillary.backend, "credentials_from_cmsgs", as_that_kernel)
    _ancillary.credentials_probe.cache_clear()
    try:
        probe = _ancillary.credentials_probe()
    finally:
        _ancillary.credentials_probe.cache_clear()
    assert (probe.available, probe.datagram, probe.stream) == (True, "every message", stream)
    assert not left
