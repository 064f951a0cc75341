"""Shim cases: the connection methods from the uds crate (issue 14), on both implementations.

Each case takes the ``seqpacket_implementation`` fixture, so it runs on the
native and on the emulated implementation in every run.  The contract
(``SeqpacketConn``'s docstrings, README "Connection methods"): several
buffers are one message and ``recv_message_into`` scatters it; ``peek``
leaves the message queued and hands out descriptors the caller owns (or
refuses where the kernel installs none); ``dup`` is an independent object on
the same connection where the implementation shares a kernel socket;
``take_error`` reads and clears ``SO_ERROR``; ``connect(local_addr=)`` is seen
by the peer; messages carry the sender's credentials as ``capabilities()``
says (the kernel's, or -- labelled, unverified -- a claim); the free
functions take the connection itself.
"""

from __future__ import annotations

import os
from typing import List, Tuple

import pytest

import udscompat
from udscompat import _ancillary
from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import close_all, unavailable

case = pytest.mark.case


def _pair(implementation: str) -> Tuple[udscompat.SeqpacketConn, udscompat.SeqpacketConn]:
    return udscompat.seqpacket_pair(implementation=implementation)


@case(
    "shim.conn.vectored",
    "Several buffers are one message; recv_message_into scatters it and reports a cut",
    rows=["SEQ-08", "SEQ-05"],
)
def test_vectored(observe: Observer, seqpacket_implementation: str, pipe: Tuple[int, int]) -> None:
    a, b = _pair(seqpacket_implementation)
    with a, b:
        assert a.send([b"one ", b"", bytearray(b"two "), memoryview(b"three")], [pipe[0]]) == 13
        a.send(b"next")
        head, tail = bytearray(5), bytearray(4)
        got = b.recv_message_into([head, memoryview(tail)], maxfds=1)
        assert got is not None
        close_all(list(got.fds))
        assert (bytes(head), bytes(tail), got.nbytes, got.truncated, len(got.fds)) == (
            b"one t",
            b"wo t",
            9,
            True,
            1,
        )
        assert b.recv_message() == udscompat.Message(b"next")  # the cut rest was discarded
    observe({"nbytes": got.nbytes, "truncated": got.truncated})


@case(
    "shim.conn.peek",
    "peek leaves the message queued; its descriptors are new ones the caller owns, or refused",
    rows=["SEQ-06", "FD-25"],
)
def test_peek(observe: Observer, seqpacket_implementation: str, pipe: Tuple[int, int]) -> None:
    a, b = _pair(seqpacket_implementation)
    with a, b:
        a.send(b"peeked", [pipe[0]])
        short = b.peek(4, maxfds=1)
        assert short is not None and (short.data, short.truncated) == (b"peek", True)
        copies: List[int] = list(short.fds)
        outcome = "copies"
        try:
            again = b.peek(maxfds=1)
        except udscompat.UnsupportedError as exc:
            outcome = f"refused: {exc}"  # where the kernel's peek installs no descriptors
        else:
            assert again is not None
            copies += again.fds
        taken = b.recv_message(maxfds=1)
        assert taken is not None and taken.data == b"peeked" and len(taken.fds) == 1
        try:
            # New descriptors each time, the caller's: closing the copies leaves the taken one.
            assert len(set(copies) | set(taken.fds)) == len(copies) + 1
            close_all(copies)
            os.write(pipe[1], b"!")
            assert os.read(taken.fds[0], 1) == b"!"
        finally:
            close_all(list(taken.fds))
    observe({"descriptors": outcome, "copies": len(copies)})


@case(
    "shim.conn.dup",
    "dup() is an independent object on the same connection; the emulation refuses, saying why",
    rows=["SEQ-02"],
)
def test_dup(observe: Observer, seqpacket_implementation: str) -> None:
    a, b = _pair(seqpacket_implementation)
    with a, b:
        if seqpacket_implementation == "emulated":
            # The contract: refused, saying why (framing state lives in one object).
            with pytest.raises(udscompat.UnsupportedError, match="share this object") as info:
                a.dup()
            observe("refused", note=str(info.value))
            return
        twin = a.dup()
        with twin:
            assert twin.fileno() != a.fileno()
            a.send(b"from a")
            twin.send(b"from the twin")
            a.close()  # closing one object leaves the connection to the other
            assert b.recv_message() == udscompat.Message(b"from a")
            assert b.recv_message() == udscompat.Message(b"from the twin")
            b.send(b"back")
            assert twin.recv_message() == udscompat.Message(b"back")
    observe(True)


@case(
    "shim.conn.take_error",
    "take_error() reads SO_ERROR once and clears it",
    rows=["STR-12"],
)
def test_take_error(observe: Observer, seqpacket_implementation: str) -> None:
    a, b = _pair(seqpacket_implementation)
    with a:
        assert a.take_error() is None
        a.send(b"never read")
        b.close()  # with a message it never read
        first = a.take_error()
        assert a.take_error() is None  # cleared by reading it
    observe(None if first is None else os.strerror(first.errno or 0))


@case(
    "shim.conn.local_addr",
    "connect(local_addr=) binds first: the peer sees that path, which close removes",
    rows=["ADDR-26", "ADDR-01"],
)
def test_local_addr(observe: Observer, seqpacket_implementation: str, short_tmp: str) -> None:
    server, client = os.path.join(short_tmp, "server"), os.path.join(short_tmp, "client")
    with udscompat.SeqpacketListener(server, implementation=seqpacket_implementation) as listener:
        conn = udscompat.SeqpacketConn.connect(
            server, local_addr=client, implementation=seqpacket_implementation, timeout=10
        )
        with conn:
            accepted, seen = listener.accept()
            with accepted:
                assert conn.local_addr == udscompat.UnixSocketAddr.from_path(client)
                assert accepted.peer_addr == conn.local_addr
                assert conn.peer_addr == listener.local_addr == accepted.local_addr
        assert not os.path.exists(client)
    observe({"accept_names_the_client": seen == conn.local_addr})


@case(
    "shim.conn.message_credentials",
    "Messages carry the sender's credentials as capabilities() says: the kernel's or a claim",
    rows=["CRED-09", "CRED-10", "CRED-14"],
)
def test_message_credentials(observe: Observer, seqpacket_implementation: str) -> None:
    caps = _ancillary.features("native" if seqpacket_implementation == "native" else "emulated")
    status, detail = caps["seqpacket_credentials"]
    if status == "unavailable":
        unavailable(detail)
    claims = "claims only" in detail
    a, b = _pair(seqpacket_implementation)
    with a, b:
        b.pass_credentials(claimed=True)
        try:
            own = udscompat.send_credentials()
        except udscompat.UnsupportedError:
            if not claims:
                raise
            # A claim needs no kernel mechanism; send_credentials() says the kernel has none
            # (macOS, OpenBSD, NetBSD's compat_linux without SO_PASSCRED).
            own = udscompat.SendCredentials(os.getpid(), os.getuid(), os.getgid())
        a.send(b"attached", credentials=own)
        message = b.recv_message()
        assert message is not None and message.data == b"attached"
        creds = message.credentials
        assert creds is not None
        assert creds.verified is not claims  # a claim is never presented as verified
        assert creds.uid in (os.getuid(), os.geteuid())
        if claims:
            assert isinstance(creds, udscompat.ClaimedCredentials)
        else:
            assert isinstance(creds, udscompat.ReceivedCredentials)
    observe({"kind": type(creds).__name__, "stream": _ancillary.credentials_probe().stream})


@case(
    "shim.conn.free_functions",
    "peer_credentials, send_fds and recv_fds take the connection itself and keep its framing",
    rows=["FD-01", "CRED-06"],
)
def test_free_functions(
    observe: Observer, seqpacket_implementation: str, pipe: Tuple[int, int]
) -> None:
    a, b = _pair(seqpacket_implementation)
    with a, b:
        try:
            creds = udscompat.peer_credentials(b)
        except udscompat.UnsupportedError as exc:
            creds = None
            note = str(exc)
        else:
            assert creds.euid == os.geteuid()
            note = "peer_credentials answered"
        udscompat.send_fds(a, [b"with ", b"fd"], [pipe[0]])
        a.send(b"after")
        data, fds, _, _ = udscompat.recv_fds(b, 64, 1)
        close_all(fds)
        assert (data, len(fds)) == (b"with fd", 1)
        assert b.recv_message() == udscompat.Message(b"after")
    observe({"peer_credentials": creds is not None}, note=note)
