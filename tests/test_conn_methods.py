"""The connection methods from the uds crate, on both seqpacket implementations (issue 14).

``send`` with several buffers and credentials, ``peek``, ``recv_message_into``,
``dup``, ``take_error``, ``pass_credentials``, ``peer_security_label``,
``connect(local_addr=...)`` and the addresses, each on real sockets; the
credential tests that need a second identity fork a child that becomes
``nobody`` (root only).  Every test runs under the autouse descriptor-leak
check.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest

import udscompat
from tests.conftest import (
    SEQPACKET_IMPLEMENTATIONS,
    needs_abstract,
    only_on,
    open_fds,
    other_user,
    same_file,
)
from udscompat import (
    ControlTruncatedError,
    Message,
    ReceivedCredentials,
    UnsupportedError,
    _seqpacket,
)
from udscompat._ancillary import credentials_probe
from udscompat._framing import HEADER, KIND_DATA, FrameEncoder

Pair = Tuple[udscompat.SeqpacketConn, udscompat.SeqpacketConn]

needs_credentials = pytest.mark.skipif(
    credentials_probe().stream != "every message",
    reason=f"no credentials on every stream message here: {credentials_probe().reason}",
)


@pytest.fixture(params=SEQPACKET_IMPLEMENTATIONS)
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    a, b = udscompat.seqpacket_pair(implementation=request.param)
    with a, b:
        yield a, b


def close_all(fds: Tuple[int, ...]) -> None:
    for fd in fds:
        os.close(fd)


def mine(pid: int | None = None) -> ReceivedCredentials:
    """What Linux's SCM_CREDENTIALS reports for a sender with this process's real ids."""
    return ReceivedCredentials(
        os.getpid() if pid is None else pid, os.getuid(), os.getgid(), None, None, None
    )


# -- send: several buffers, credentials -----------------------------------------------------


def test_several_buffers_are_one_message(pair: Pair, pipe: Tuple[int, int]) -> None:
    a, b = pair
    assert a.send([b"one ", bytearray(b"two "), memoryview(b"three")]) == 13
    assert a.send((b"with ", b"fds"), [pipe[0]]) == 8
    big = [bytes([i]) * 5000 for i in range(12)]
    assert a.send(big) == 60000
    assert b.recv_message(64).data == b"one two three"
    message = b.recv_message(64, maxfds=1)
    try:
        assert message.data == b"with fds" and same_file(message.fds[0], pipe[0])
    finally:
        close_all(message.fds)
    assert b.recv_message(70000).data == b"".join(big)


def test_bad_buffers_are_refused_before_anything_is_sent(pair: Pair) -> None:
    a, b = pair
    with pytest.raises(TypeError, match="data: expected a bytes-like object"):
        a.send([b"x", "text"])
    with pytest.raises(TypeError, match="data: expected a bytes-like object"):
        a.send("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="data: expected a bytes-like object"):
        a.send(42, [0])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffers in one message"):
        a.send([b"x"] * 5000)
    b.settimeout(0)
    with pytest.raises(BlockingIOError):
        b.recv_message()


@only_on("Linux", "SCM_CREDENTIALS: one uid and gid, every message once SO_PASSCRED is on")
def test_credentials_come_with_every_message_after_pass_credentials(
    pair: Pair, pipe: Tuple[int, int]
) -> None:
    a, b = pair
    a.send(b"before")
    assert b.recv_message().credentials is None  # not asked for
    b.pass_credentials()
    a.send(b"plain")  # the kernel attaches the sender's real ids
    a.send(b"attached", credentials=udscompat.send_credentials(effective=True))
    a.send([b"with", b" fds"], [pipe[0]], udscompat.send_credentials())
    assert b.recv_message().credentials == mine()
    effective = ReceivedCredentials(os.getpid(), os.geteuid(), os.getegid(), None, None, None)
    assert b.recv_message().credentials == effective
    message = b.recv_message(maxfds=1)
    close_all(message.fds)
    assert (message.data, len(message.fds), message.credentials) == (b"with fds", 1, mine())
    b.pass_credentials(False)
    a.send(b"after")
    assert b.recv_message().credentials is None


@pytest.mark.root("claiming ids other than the real ones (CAP_SETUID/CAP_SETGID)")
@only_on("Linux", "a sender chooses the ids in SCM_CREDENTIALS")
@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_claimed_ids_cover_a_message_written_in_several_parts(impl: str) -> None:
    """The emulation attaches the claim to every write of a frame, or its rest would carry
    the sender's real ids and the receiver could give the message no single answer."""
    a, b = udscompat.seqpacket_pair(implementation=impl)
    claim = udscompat.SendCredentials(os.getpid(), 1, 1)
    got: List[Message] = []
    with a, b:
        b.pass_credentials()
        reader = threading.Thread(target=lambda: got.append(b.recv_message(1 << 20)))
        a.settimeout(10)
        reader.start()
        # The emulation's frame is far more than the socket buffer holds: several writes.
        size = 900_000 if impl == "emulated" else 100_000
        a.send(b"m" * size, credentials=claim)
        a.send(b"next")
        reader.join(10)
        assert got[0].data == b"m" * size
        assert got[0].credentials == ReceivedCredentials(os.getpid(), 1, 1, None, None, None)
        assert b.recv_message().credentials == mine()


def test_credentials_refused_where_the_kernel_has_none_or_the_type_is_wrong(pair: Pair) -> None:
    a, b = pair
    with pytest.raises(TypeError, match="SendCredentials"):
        a.send(b"x", credentials=(1, 2, 3))  # type: ignore[arg-type]
    if not credentials_probe().available:
        with pytest.raises(UnsupportedError):
            b.pass_credentials()
    b.settimeout(0)
    with pytest.raises(BlockingIOError):
        b.recv_message()  # nothing went out


# -- the emulation's credentials are the kernel's, per frame ------------------------------


def _raw_frame(payload: bytes) -> Tuple[bytes, bytes]:
    return HEADER.pack(len(payload), 0, KIND_DATA, 0), payload


@only_on("Linux", "SO_PASSCRED attaches the writer's credentials to every stream write")
def test_a_raw_peer_cannot_write_credentials_into_a_frame() -> None:
    """Bytes that look like a ucred claiming root, in the payload or past the header, are
    payload or a framing error: the frame's credentials are what the kernel saw."""
    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = udscompat.SeqpacketConn.from_socket(theirs)
    with raw, conn:
        conn.pass_credentials()
        forged = b"".join(n.to_bytes(4, "little") for n in (1, 0, 0))  # pid 1, uid 0, gid 0
        header, payload = _raw_frame(forged)
        raw.sendall(header + payload)
        message = conn.recv_message()
        assert message.data == forged and message.credentials == mine()
        raw.sendall(HEADER.pack(len(forged), 0, KIND_DATA, 0x04) + forged)  # an unknown flag
        with pytest.raises(udscompat.FramingError, match="unknown frame flags 0x4"):
            conn.recv_message()


def _write_as(user: pwd.struct_passwd, sock: socket.socket, data: bytes) -> None:
    """Fork a child that becomes ``user`` and writes ``data`` on ``sock`` (inherited)."""
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.setgroups([])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            sock.sendall(data)
            status = 0
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.root("a second writer that is another user")
@only_on("Linux", "SO_PASSCRED: the kernel attaches each writer's credentials to its writes")
def test_a_frame_written_by_two_identities_gets_no_credentials() -> None:
    """A header written by one process and a payload by another (sharing the socket) is a
    message none of them wrote alone: None, never the header writer's, never the payload's."""
    nobody = other_user()
    theirs = mine()
    other = ReceivedCredentials(None, nobody.pw_uid, nobody.pw_gid, None, None, None)
    raw, ours = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = udscompat.SeqpacketConn.from_socket(ours)
    with raw, conn:
        conn.pass_credentials()
        header, payload = _raw_frame(b"who wrote this?")
        raw.sendall(header)
        _write_as(nobody, raw, payload)  # root's header, nobody's payload
        mixed = conn.recv_message()
        assert (mixed.data, mixed.credentials) == (payload, None)
        _write_as(nobody, raw, header)
        raw.sendall(payload)  # nobody's header, root's payload
        assert conn.recv_message().credentials is None
        _write_as(nobody, raw, header + payload)  # nobody alone
        alone = conn.recv_message().credentials
        assert alone is not None and (alone.uid, alone.gid) == (other.uid, other.gid)
        raw.sendall(header + payload)  # and root alone again
        assert conn.recv_message().credentials == theirs


# -- claims: what a sender writes about itself where the kernel attaches nothing ------------

ROOT_CLAIM = udscompat.SendCredentials(1, 0, 0)  # pid 1, root: what a hostile peer would claim


def _claim_frame(claim: udscompat.SendCredentials, payload: bytes) -> bytes:
    """A CLAIM frame as any peer can write it: nothing checks the ids."""
    return FrameEncoder().encode(payload, claim=claim)


@pytest.fixture
def claims_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand-in for macOS, OpenBSD and NetBSD past the first message: a kernel that attaches
    no credentials to stream writes (on Linux it does, so the emulation would use those)."""
    monkeypatch.setattr(_seqpacket, "kernel_stream_credentials", lambda: False)


@only_on("Linux", "SO_PASSCRED attaches the writer's credentials to every stream write")
def test_a_hostile_claim_never_replaces_the_kernels_credentials() -> None:
    """A raw peer writes CLAIM frames saying pid 1 / root.  Where the kernel attaches the
    writer's credentials, the receiver gets the kernel's (verified) even after asking for
    claims; without asking, nothing; the claim's bytes are never part of the message."""
    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = udscompat.SeqpacketConn.from_socket(theirs)
    with raw, conn:
        raw.sendall(_claim_frame(ROOT_CLAIM, b"not asked"))
        assert conn.recv_message() == Message(b"not asked")  # stripped, dropped
        conn.pass_credentials(claimed=True)
        raw.sendall(_claim_frame(ROOT_CLAIM, b"asked"))
        message = conn.recv_message()
        assert message.data == b"asked" and message.credentials == mine()
        assert isinstance(message.credentials, ReceivedCredentials)
        assert message.credentials.verified


def test_claims_travel_labelled_unverified_where_the_kernel_attaches_none(
    claims_only: None, pipe: Tuple[int, int]
) -> None:
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        own = udscompat.send_credentials()
        a.send(b"before", credentials=own)
        assert b.recv_message() == Message(b"before")  # not asked for: dropped
        b.pass_credentials(claimed=True)
        a.send([b"with ", b"claim"], [pipe[0]], own)
        a.send(b"without")
        message = b.recv_message(maxfds=1)
        close_all(message.fds)
        assert (message.data, len(message.fds)) == (b"with claim", 1)
        claim = message.credentials
        assert claim == udscompat.ClaimedCredentials(own.pid, own.uid, own.gid)
        assert not isinstance(claim, ReceivedCredentials) and claim.verified is False
        assert "ClaimedCredentials" in repr(claim)
        assert b.recv_message() == Message(b"without")  # a frame without a claim: None
        a.send(b"into", credentials=own)
        got = b.recv_message_into(bytearray(8))
        assert got is not None and got.credentials == claim
        a.send(b"peeked", credentials=own)
        assert b.peek().credentials == claim and b.recv_message().credentials == claim
        b.pass_credentials(False, claimed=True)
        a.send(b"off", credentials=own)
        assert b.recv_message() == Message(b"off")
        b.send(b"reply")  # a claim asks for no acknowledgement: none reached the sender
        assert a.recv_message() == Message(b"reply")


def test_a_hostile_claim_is_only_ever_a_labelled_claim(claims_only: None) -> None:
    """Where only claims exist, a raw peer's claim of root arrives -- as ClaimedCredentials,
    never as ReceivedCredentials; impossible ids break the connection (FramingError)."""
    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = udscompat.SeqpacketConn.from_socket(theirs)
    with raw, conn:
        conn.pass_credentials(claimed=True)
        raw.sendall(_claim_frame(ROOT_CLAIM, b"I am root"))
        message = conn.recv_message()
        assert message.data == b"I am root"
        assert message.credentials == udscompat.ClaimedCredentials(1, 0, 0)
        assert message.credentials is not None and not message.credentials.verified
        impossible = HEADER.pack(12, 0, KIND_DATA, 0x02) + struct.pack("!III", 7, 2**32 - 1, 0)
        raw.sendall(impossible)
        with pytest.raises(udscompat.FramingError, match="impossible claimed credentials"):
            conn.recv_message()


@pytest.mark.parametrize("method", ["as called", "Python"])
def test_a_truncated_message_keeps_its_claim(claims_only: None, method: str) -> None:
    """A claimed message cut to ``bufsize`` still carries its claim, whichever receive takes
    it: the compiled method (where the accelerator runs) or the Python method, whose inline
    receive cut it to ``data[:bufsize]`` and dropped the claim, where ``_fit`` keeps it."""
    raw, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    conn = udscompat.SeqpacketConn.from_socket(theirs)
    with raw, conn:
        conn.pass_credentials(claimed=True)
        for payload in (b"I am root, and this is cut", b"whole"):
            raw.sendall(_claim_frame(ROOT_CLAIM, payload))
            if method == "as called":
                message = conn.recv_message(8)
            else:
                message = _seqpacket.PYTHON_EMULATED_RECV_MESSAGE(conn, 8)
            assert message is not None
            assert (message.data, message.truncated) == (payload[:8], len(payload) > 8)
            assert message.credentials == udscompat.ClaimedCredentials(1, 0, 0)


def test_a_sender_claims_only_its_own_ids(claims_only: None) -> None:
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        other = udscompat.SendCredentials(os.getpid(), os.getuid() + 1, os.getgid())
        with pytest.raises(UnsupportedError, match="claim"):
            a.send(b"x", credentials=other)
        with pytest.raises(TypeError, match="credentials: expected a SendCredentials"):
            a.send(b"x", credentials=(1, 2, 3))  # type: ignore[arg-type]
        b.settimeout(0)
        with pytest.raises(BlockingIOError):
            b.recv_message()  # nothing went out


# -- peek -----------------------------------------------------------------------------------


def test_peek_leaves_the_message_for_the_receive(pair: Pair) -> None:
    a, b = pair
    a.send(b"first message")
    assert b.peek() == Message(b"first message")
    short = b.peek(5)
    assert (short.data, short.truncated) == (b"first", True)
    # select users: an emulated connection holds the peeked message, the socket is empty.
    assert b.pending() == (b.implementation == "emulated")
    a.send(b"")
    assert b.recv_message() == Message(b"first message")
    assert b.peek() == Message(b"")  # a zero-length message, not end-of-stream
    assert b.recv_message() == Message(b"")
    a.close()
    assert b.peek() is None and b.recv_message() is None


def test_peek_hands_out_copies_the_caller_owns(pair: Pair, pipe: Tuple[int, int]) -> None:
    """As Linux's MSG_PEEK: every peek gives new descriptors; the receive its own."""
    a, b = pair
    a.send(b"fd", [pipe[0]])
    first = b.peek(maxfds=1)
    second = b.peek(maxfds=1)
    taken = b.recv_message(maxfds=1)
    try:
        fds = first.fds + second.fds + taken.fds
        assert len(set(fds)) == 3 and all(same_file(fd, pipe[0]) for fd in fds)
        close_all(first.fds + second.fds)  # closing the copies leaves the received one
        os.write(pipe[1], b"!")
        assert os.read(taken.fds[0], 1) == b"!"
    finally:
        close_all(taken.fds)


def test_peek_with_too_few_fds_allowed_raises_and_keeps_the_message(
    pair: Pair, pipe: Tuple[int, int]
) -> None:
    a, b = pair
    a.send(b"two", [pipe[0], pipe[1]])
    with pytest.raises(ControlTruncatedError) as info:
        b.peek(maxfds=1)
    assert (info.value.data, info.value.closed_fds) == (b"two", 2)
    message = b.recv_message(maxfds=2)
    close_all(message.fds)
    assert (message.data, len(message.fds)) == (b"two", 2)


def test_peek_waits_like_a_receive(pair: Pair) -> None:
    a, b = pair
    b.settimeout(0)
    with pytest.raises(BlockingIOError):
        b.peek()
    b.settimeout(0.05)
    with pytest.raises(TimeoutError):
        b.peek()
    b.settimeout(None)
    threading.Timer(0.05, lambda: a.send(b"late")).start()
    assert b.peek() == Message(b"late")
    assert b.recv_message() == Message(b"late")


def test_close_after_a_peek_closes_the_held_descriptors(pipe: Tuple[int, int]) -> None:
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a:
        a.send(b"held", [pipe[0]])
        close_all(b.peek(maxfds=1).fds)
        b.close()  # the autouse leak check sees the emulation's held copy closed


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_a_native_peek_never_reads_fds_the_kernel_did_not_install(
    monkeypatch: pytest.MonkeyPatch, impl: str, pipe: Tuple[int, int]
) -> None:
    """Stand-in for FreeBSD/NetBSD/macOS, whose MSG_PEEK puts kernel pointers or zeros where
    the descriptors would be: the native peek refuses; the emulation makes its own copies."""
    from udscompat import _ancillary

    monkeypatch.setattr(_ancillary._probes, "peek_installs_fds", lambda: False)
    a, b = udscompat.seqpacket_pair(implementation=impl)
    with a, b:
        a.send(b"fd", [pipe[0]])
        if impl == "native":
            before = open_fds()
            with pytest.raises(UnsupportedError, match="descriptors on a peek"):
                b.peek(maxfds=1)
            for fd in open_fds() - before:  # what Linux installed anyway, unseen by the library
                assert same_file(fd, pipe[0])
                os.close(fd)
        else:
            close_all(b.peek(maxfds=1).fds)
        message = b.recv_message(maxfds=1)
        close_all(message.fds)
        assert len(message.fds) == 1


# -- recv_message_into -----------------------------------------------------------------------


def test_recv_message_into_fills_the_buffers_in_order(pair: Pair, pipe: Tuple[int, int]) -> None:
    a, b = pair
    a.send(b"hello world")
    first, second = bytearray(5), memoryview(bytearray(10))
    got = b.recv_message_into([first, second])
    assert got == udscompat.ReceivedInto(11, (), False, None)
    assert (first, bytes(second[:6])) == (b"hello", b" world")
    a.send(b"too long for it", [pipe[0]])
    small = bytearray(3)
    got = b.recv_message_into(small, maxfds=1)
    close_all(got.fds)
    assert (small, got.nbytes, got.truncated, len(got.fds)) == (b"too", 3, True, 1)
    a.send(b"")
    assert b.recv_message_into(bytearray(4)) == udscompat.ReceivedInto(0, (), False, None)
    a.send(b"after")  # the truncated rest was discarded: the next message is whole
    assert b.recv_message(16).data == b"after"
    a.close()
    assert b.recv_message_into(bytearray(4)) is None


def test_recv_message_into_refuses_what_it_cannot_write(pair: Pair) -> None:
    a, b = pair
    a.send(b"x")
    with pytest.raises(TypeError, match="read-only"):
        b.recv_message_into(b"bytes are read-only")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="writable bytes-like"):
        b.recv_message_into([bytearray(2), 5])
    assert b.recv_message() == Message(b"x")  # nothing was taken


# -- dup ------------------------------------------------------------------------------------


def test_dup_is_an_independent_object_on_the_same_connection() -> None:
    if udscompat.capabilities().features["seqpacket"].status != "native":
        pytest.skip("native seqpacket is not used here")
    a, b = udscompat.seqpacket_pair(implementation="native")
    with a, b:
        b.settimeout(5)
        twin = b.dup()
        assert twin.gettimeout() == 5 and twin.fileno() != b.fileno()
        twin.settimeout(0)
        assert b.gettimeout() == 5
        a.send(b"one")
        assert twin.recv_message() == Message(b"one")
        twin.close()
        a.send(b"two")  # closing the twin left the connection open
        assert b.recv_message() == Message(b"two")
        with pytest.raises(OSError) as info:
            twin.recv_message()
        assert info.value.errno == errno.EBADF


def test_closing_a_dup_wakes_only_the_thread_blocked_on_it() -> None:
    """Threads: one blocked on the twin is woken by its close (EBADF); the other object's
    blocked receive is untouched and gets the next message."""
    if udscompat.capabilities().features["seqpacket"].status != "native":
        pytest.skip("native seqpacket is not used here")
    a, b = udscompat.seqpacket_pair(implementation="native")
    with a, b:
        twin = b.dup()
        outcome: List[object] = []

        def receive(conn: udscompat.SeqpacketConn) -> None:
            try:
                outcome.append(conn.recv_message())
            except OSError as exc:
                outcome.append(exc.errno)

        blocked = threading.Thread(target=receive, args=(twin,))
        blocked.start()
        time.sleep(0.1)
        start = time.monotonic()
        twin.close()
        blocked.join(5)
        assert outcome == [errno.EBADF] and time.monotonic() - start < 1
        waiting = threading.Thread(target=receive, args=(b,))
        waiting.start()
        time.sleep(0.05)
        a.send(b"for b")
        waiting.join(5)
        assert outcome[1] == Message(b"for b")


def test_dups_share_the_messages_between_threads() -> None:
    """Two objects read one queue: every message is received exactly once."""
    if udscompat.capabilities().features["seqpacket"].status != "native":
        pytest.skip("native seqpacket is not used here")
    a, b = udscompat.seqpacket_pair(implementation="native")
    count = 2000
    seen: List[List[bytes]] = [[], []]
    with a, b:
        twin = b.dup()

        def drain(conn: udscompat.SeqpacketConn, into: List[bytes]) -> None:
            conn.settimeout(2)
            while True:
                message = conn.recv_message()
                if message is None or message.data == b"end":
                    return
                into.append(message.data)

        threads = [threading.Thread(target=drain, args=(c, s)) for c, s in zip((b, twin), seen)]
        for t in threads:
            t.start()
        for i in range(count):
            a.send(b"%d" % i)
        a.send(b"end")
        a.send(b"end")
        for t in threads:
            t.join(10)
        twin.close()
    assert sorted(seen[0] + seen[1], key=int) == [b"%d" % i for i in range(count)]


def test_dup_of_an_emulated_connection_is_refused() -> None:
    a, b = udscompat.seqpacket_pair(implementation="emulated")
    with a, b:
        with pytest.raises(UnsupportedError, match="share this object between threads"):
            b.dup()
        a.send(b"still fine")
        assert b.recv_message() == Message(b"still fine")


# -- take_error, peer_security_label, addresses, connect(local_addr) -----------------------


@only_on("Linux", "a peer closing with unread messages sets ECONNRESET (af_unix.c)")
def test_take_error_reports_and_clears_so_error(pair: Pair) -> None:
    a, b = pair
    assert a.take_error() is None
    a.send(b"never read")
    b.close()
    error = a.take_error()
    assert error is not None and error.errno == errno.ECONNRESET
    assert a.take_error() is None  # reading it cleared it
    a.close()
    with pytest.raises(OSError) as info:
        a.take_error()
    assert info.value.errno == errno.EBADF


def test_peer_security_label_is_the_sockets(pair: Pair) -> None:
    a, _ = pair
    try:
        expected = udscompat.peer_security_label(socket.socket(fileno=os.dup(a.fileno())))
    except UnsupportedError:
        with pytest.raises(UnsupportedError):
            a.peer_security_label()
        return
    assert a.peer_security_label() == expected


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_connect_from_a_bound_local_path(short_tmp: Path, impl: str) -> None:
    server, client = str(short_tmp / "server"), str(short_tmp / "client")
    with udscompat.SeqpacketListener(server, implementation=impl) as listener:
        conn = udscompat.SeqpacketConn.connect(server, local_addr=client, implementation=impl)
        accepted, peer = listener.accept()
        with conn, accepted:
            assert peer.path == client and accepted.peer_addr.path == client
            assert conn.local_addr.path == client and conn.peer_addr.path == server
            assert accepted.local_addr.path == server
            assert os.path.exists(client)
        assert not os.path.exists(client)  # removed on close


def test_connect_local_addr_replaces_a_stale_file_never_a_live_one(short_tmp: Path) -> None:
    server, client = str(short_tmp / "server"), str(short_tmp / "client")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(client)
    stale.close()  # a stale socket file: replaced
    with (
        udscompat.SeqpacketListener(server) as listener,
        udscompat.SeqpacketConn.connect(server, local_addr=client) as conn,
    ):
        listener.accept()[0].close()
        with pytest.raises(OSError) as info:
            udscompat.SeqpacketConn.connect(server, local_addr=client)  # live: refused
        assert info.value.errno == errno.EADDRINUSE and "client" in str(info.value)
        assert conn.local_addr.path == client


def test_a_failed_connect_leaves_no_local_socket_file(short_tmp: Path) -> None:
    client = str(short_tmp / "client")
    with pytest.raises(OSError) as info:
        udscompat.SeqpacketConn.connect(str(short_tmp / "nobody-here"), local_addr=client)
    assert info.value.errno == errno.ENOENT
    assert not os.path.exists(client)


@needs_abstract
def test_connect_from_an_abstract_name() -> None:
    tag = f"@udsc-local-{os.getpid()}-{time.monotonic_ns()}"
    with (
        udscompat.SeqpacketListener(tag + "-server") as listener,
        udscompat.SeqpacketConn.connect(tag + "-server", local_addr=tag) as conn,
    ):
        accepted, peer = listener.accept()
        with accepted:
            assert str(peer) == str(conn.local_addr) == tag


def test_the_last_dup_removes_the_local_socket_file(short_tmp: Path) -> None:
    if udscompat.capabilities().features["seqpacket"].status != "native":
        pytest.skip("native seqpacket is not used here")
    server, client = str(short_tmp / "server"), str(short_tmp / "client")
    with udscompat.SeqpacketListener(server) as listener:
        conn = udscompat.SeqpacketConn.connect(server, local_addr=client)
        listener.accept()[0].close()
        twin = conn.dup()
        conn.close()
        assert os.path.exists(client)  # the twin still uses it
        twin.close()
        assert not os.path.exists(client)


def _full_length_path(directory: Path) -> str:
    """A path of all of sun_path (108 bytes): the kernel gets /proc/self/fd/N/name for it."""
    base = str(directory) + "/"
    return base + "p" * (108 - len(base))


@only_on("Linux", "a 108-byte path is reached through /proc/self/fd (MAX_PATH_BYTES 108)")
def test_local_addr_is_the_path_even_when_the_kernel_was_given_another(short_tmp: Path) -> None:
    path = _full_length_path(short_tmp)
    with udscompat.UnixDatagram.bind(path) as datagram:
        assert datagram.local_addr.path == path
        assert "/proc/self/fd/" in datagram._sock.getsockname()
    with (
        udscompat.SeqpacketListener(str(short_tmp / "s")) as listener,
        udscompat.SeqpacketConn.connect(listener.local_addr, local_addr=path) as conn,
    ):
        listener.accept()[0].close()
        assert conn.local_addr.path == path


# -- recv_message_into out of descriptors --------------------------------------------------

_EMFILE_RECEIVER = r"""
import json, os, resource, socket, sys
import udscompat
from udscompat import _probes

impl = sys.argv[2]
sock = socket.socket(fileno=int(sys.argv[1]))
conn = udscompat.SeqpacketConn.from_socket(sock)
assert conn.implementation == impl
conn.settimeout(10)
before = _probes.open_fds()
buffer = bytearray(64)
events = []
def take():
    try:
        got = conn.recv_message_into([memoryview(buffer)[:3], memoryview(buffer)[3:]], maxfds=1)
    except udscompat.ControlTruncatedError as exc:
        return ["truncated", exc.data.decode(), exc.closed_fds]
    if got is None:
        return ["eof"]
    for fd in got.fds:
        os.close(fd)
    return ["message", bytes(buffer[: got.nbytes]).decode(), len(got.fds), got.truncated]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(before) + 1, hard))
filler = []
try:
    while True:
        filler.append(os.dup(0))
except OSError:
    pass
sys.stdout.write("ready\n"); sys.stdout.flush()
events.append(take())   # its descriptor cannot be installed
events.append(take())   # the next message is whole
for fd in filler:
    os.close(fd)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
sys.stdout.write("raised\n"); sys.stdout.flush()
events.append(take())   # with its descriptor, now that there is room
events.append(take())
conn.close()
print(json.dumps({"events": events, "leaked": sorted(_probes.open_fds() - before)}))
"""


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_recv_message_into_out_of_descriptors_loses_only_that_messages_fds(
    impl: str, pipe: Tuple[int, int]
) -> None:
    """EMFILE while a message with a descriptor arrives: ControlTruncatedError with its
    payload, nothing leaked, and the stream stays in step (the next messages are whole)."""
    import json
    import subprocess
    import sys

    ours, theirs = udscompat.seqpacket_pair(implementation=impl)
    fd = os.dup(theirs.fileno())  # the child's end
    theirs.close()
    root = Path(__file__).resolve().parent.parent
    with ours:
        try:
            child = subprocess.Popen(
                [sys.executable, "-c", _EMFILE_RECEIVER, str(fd), impl],
                pass_fds=[fd],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=dict(os.environ, PYTHONPATH=str(root)),
            )
        finally:
            os.close(fd)
        try:
            assert child.stdout is not None
            assert child.stdout.readline() == b"ready\n"
            ours.send(b"lost fd", [pipe[0]])
            ours.send(b"plain")
            # Only once the child has room: an emulated read may take several frames at once.
            assert child.stdout.readline() == b"raised\n"
            ours.send(b"with fd", [pipe[0]])
            ours.close()
            out, err = child.communicate(timeout=30)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert child.returncode == 0, err.decode()
    report = json.loads(out)
    assert report["events"] == [
        ["truncated", "lost fd", 0],
        ["message", "plain", 0, False],
        ["message", "with fd", 1, False],
        ["eof"],
    ]
    assert report["leaked"] == []
