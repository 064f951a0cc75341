"""Shim cases: the seqpacket contract, on both implementations in every run.

Each case takes the ``seqpacket_implementation`` fixture, so it runs on the
native and on the emulated implementation (native is ``unavailable`` where the
kernel has none that keeps the contract); the result file keeps one case per
id, with each implementation's evidence.  ``shim.seqpacket.implementation``
records which one ``auto`` picks here (``--seqpacket`` forces that default).
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from typing import List, Optional

import pytest

import udscompat
from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import close_all, unavailable

case = pytest.mark.case


def _pair(implementation: str) -> tuple[udscompat.SeqpacketConn, udscompat.SeqpacketConn]:
    return udscompat.seqpacket_pair(implementation=implementation)


@case(
    "shim.seqpacket.implementation",
    "Which implementation the shim uses here, and why",
    rows=["SEQ-01", "ERR-10"],
)
def test_implementation(observe: Observer) -> None:
    a, b = udscompat.seqpacket_pair()
    with a, b:
        chosen = a.implementation
    feature = udscompat.capabilities().features["seqpacket"]
    forced = os.environ.get("UDSCOMPAT_SEQPACKET", "auto") or "auto"
    assert forced == "auto" or chosen == forced
    observe(
        {"implementation": chosen, "forced": forced, "auto_would_be": feature.status},
        note=feature.detail,
    )


@case(
    "shim.seqpacket.one_message_per_send",
    "One send is one message; fds ride with their own message",
    rows=["SEQ-02", "SEQ-03", "FD-02"],
)
def test_one_message_per_send(observe: Observer, seqpacket_implementation: str) -> None:
    r, w = os.pipe()
    a, b = _pair(seqpacket_implementation)
    with a, b:
        try:
            a.send(b"first")
            a.send(b"second", [r])
            a.send(b"third")
            got = [b.recv_message(maxfds=1) for _ in range(3)]
        finally:
            close_all([r, w])
        assert [m.data for m in got if m] == [b"first", b"second", b"third"]
        assert [len(m.fds) for m in got if m] == [0, 1, 0]
        assert all(not os.get_inheritable(fd) for m in got if m for fd in m.fds)
        close_all([fd for m in got if m for fd in m.fds])
    observe(True)


@case(
    "shim.seqpacket.truncation",
    "A message longer than bufsize is cut, flagged, and the rest discarded",
    rows=["SEQ-05", "SEQ-04"],
)
def test_truncation(observe: Observer, seqpacket_implementation: str) -> None:
    a, b = _pair(seqpacket_implementation)
    with a, b:
        a.send(b"x" * 100)
        a.send(b"next")
        cut = b.recv_message(10)
        after = b.recv_message(100)
    assert cut is not None and cut.data == b"x" * 10 and cut.truncated
    assert after is not None and after.data == b"next" and not after.truncated
    observe(True)


@case(
    "shim.seqpacket.zero_length_vs_eof",
    "Zero-length messages (with and without fds) are not end-of-stream; None only at EOF",
    rows=["SEQ-07", "FD-14"],
)
def test_zero_length_vs_eof(observe: Observer, seqpacket_implementation: str) -> None:
    r, w = os.pipe()
    a, b = _pair(seqpacket_implementation)
    with b:
        try:
            a.send(b"")
            a.send(b"", [r])
            a.close()
        finally:
            close_all([r, w])
        empty = b.recv_message()
        with_fd = b.recv_message(maxfds=1)
        end = b.recv_message()
        again = b.recv_message()
    assert empty is not None and empty.data == b"" and empty.fds == ()
    assert with_fd is not None and with_fd.data == b"" and len(with_fd.fds) == 1
    close_all(with_fd.fds)
    assert end is None and again is None
    observe(True)


@case(
    "shim.seqpacket.queued_before_close",
    "Every message queued before the peer closed is delivered before None",
    rows=["SEQ-10", "STR-09"],
)
def test_queued_before_close(observe: Observer, seqpacket_implementation: str) -> None:
    a, b = _pair(seqpacket_implementation)
    with b:
        for i in range(50):
            a.send(str(i).encode())
        a.close()
        got: List[bytes] = []
        while True:
            message = b.recv_message()
            if message is None:
                break
            got.append(message.data)
    assert got == [str(i).encode() for i in range(50)]
    observe(len(got))


@case(
    "shim.seqpacket.nonblocking_and_timeout",
    "Non-blocking raises BlockingIOError; a timeout raises TimeoutError",
    rows=["STR-34", "SEQ-23"],
)
def test_nonblocking_and_timeout(observe: Observer, seqpacket_implementation: str) -> None:
    a, b = _pair(seqpacket_implementation)
    with a, b:
        b.setblocking(False)
        with pytest.raises(BlockingIOError):
            b.recv_message()
        b.settimeout(0.1)
        with pytest.raises(TimeoutError):
            b.recv_message()
        a.send(b"late")
        message = b.recv_message()
        assert message is not None and message.data == b"late"
        # Fill the sender until it would block: a non-blocking send never splits a message.
        a.setblocking(False)
        sent = 0
        with pytest.raises(BlockingIOError):
            for _ in range(100000):
                a.send(b"y" * 1000)
                sent += 1
        # Every receive below is bounded: a message that never comes fails the case, not hangs.
        b.settimeout(10)
        whole = sum(
            1
            for _ in range(sent - 1)
            if (m := b.recv_message()) is not None and m.data == b"y" * 1000
        )
        # The last send may have been accepted in part (emulated, on a kernel that takes partial
        # stream writes: gVisor does); its rest goes out with the next send, flush or close.
        a.settimeout(10)
        a.flush()
        last = b.recv_message()
        whole += last is not None and last.data == b"y" * 1000
    assert whole == sent
    observe(True)


@case(
    "shim.seqpacket.threads",
    "Threads sending large and small messages at once: every message arrives whole",
    rows=["SEQ-16", "STR-23"],
)
def test_threads(observe: Observer, seqpacket_implementation: str) -> None:
    a, b = _pair(seqpacket_implementation)
    sizes = [1, 70000, 10, 200000, 0, 5000]
    errors: List[BaseException] = []

    def sender(tag: int) -> None:
        try:
            for i in range(20):
                size = sizes[(tag + i) % len(sizes)]
                a.send(bytes([tag]) * size)
        except BaseException as exc:  # reported below
            errors.append(exc)

    with a, b:
        threads = [threading.Thread(target=sender, args=(t,)) for t in range(1, 5)]
        for thread in threads:
            thread.start()
        received: List[Optional[udscompat.Message]] = [b.recv_message(300000) for _ in range(80)]
        for thread in threads:
            thread.join(30)
    assert not errors, errors
    for message in received:
        assert message is not None and not message.truncated
        assert len(set(message.data)) <= 1, "a message mixes two senders' bytes"
        assert len(message.data) in sizes
    observe(len(received))


@case(
    "shim.seqpacket.listener",
    "SeqpacketListener on a path: accept, peer_addr, peer credentials, stale file reused",
    rows=["SEQ-01", "STR-02", "CRED-06"],
)
def test_listener(observe: Observer, short_tmp: str, seqpacket_implementation: str) -> None:
    caps = udscompat.capabilities()
    removes_stale = caps.quirks["stale_socket_files"].startswith("removed")
    truthful_creds = caps.features["peer_credentials"].status != "unavailable"
    path = os.path.join(short_tmp, "l")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(path)  # a stale socket file the listener must replace
    if not removes_stale:
        # A kernel that cannot tell it from a live one: the listener must leave it alone.
        with pytest.raises(OSError) as info:
            udscompat.SeqpacketListener(path, implementation=seqpacket_implementation)
        assert info.value.errno == errno.EADDRINUSE
        os.unlink(path)
    with (
        udscompat.SeqpacketListener(path, implementation=seqpacket_implementation) as listener,
        udscompat.SeqpacketConn.connect(path, implementation=seqpacket_implementation) as client,
    ):
        conn, peer = listener.accept()
        with conn:
            if truthful_creds:
                creds = conn.peer_credentials()
            else:
                with pytest.raises(udscompat.UnsupportedError):
                    conn.peer_credentials()
            client.send(b"ping")
            message = conn.recv_message()
            assert message is not None and message.data == b"ping"
            assert client.peer_addr == udscompat.UnixSocketAddr.from_path(path)
    missing = []
    if not removes_stale:
        missing.append(f"stale socket files are {caps.quirks['stale_socket_files']}")
    if not truthful_creds:
        missing.append(f"peer credentials: {caps.features['peer_credentials'].detail}")
    if missing:
        # Accept and peer_addr hold; what this kernel cannot give was refused, not faked.
        unavailable("; ".join(missing))
    assert (creds.euid, creds.egid) == (os.geteuid(), os.getegid())
    observe({"peer": str(peer)})


@case(
    "shim.seqpacket.send_after_peer_closed",
    "send() after the peer closed: BrokenPipeError, and no SIGPIPE",
    rows=["SEQ-09", "ERR-05"],
)
def test_send_after_peer_closed(observe: Observer, seqpacket_implementation: str) -> None:
    a, b = _pair(seqpacket_implementation)
    with a:
        b.close()
        with pytest.raises((BrokenPipeError, ConnectionResetError)) as info:
            for _ in range(3):  # the emulation may take one send to notice
                a.send(b"x")
    observe(type(info.value).__name__)
