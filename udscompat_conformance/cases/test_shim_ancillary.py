"""Shim cases: ancillary credentials, the peer's security label and datagrams keep the contract.

The contract (README, ``udscompat.pass_credentials``): where the kernel has
ancillary credentials, a receiver that called ``pass_credentials`` gets the
sender's with every datagram, as one ``ReceivedCredentials`` whose pid (where
reported) is the sender's and whose uid is one of its ids; descriptors come
with them in the same message where the kernel allows; where the kernel has
none, every entry raises ``UnsupportedError`` naming the OS, and
``credentials_probe()`` says the same thing the entries do.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator, Tuple

import pytest

import udscompat
from udscompat import _ancillary
from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import kind_pair, unavailable

case = pytest.mark.case
_KINDS = ["stream", "dgram", "seqpacket"]


def _require_credentials() -> _ancillary.CredentialsProbe:
    probe = _ancillary.credentials_probe()
    if not probe.available:
        unavailable(probe.reason)
    return probe


def _is_mine(creds: udscompat.ReceivedCredentials, probe: _ancillary.CredentialsProbe) -> bool:
    ids_ok = creds.uid in (os.getuid(), os.geteuid()) and creds.gid in (os.getgid(), os.getegid())
    return ids_ok and (creds.pid == os.getpid() if probe.pid else creds.pid in (None, os.getpid()))


@case(
    "shim.ancillary.unavailable_says_so",
    "Without ancillary credentials every entry raises UnsupportedError naming this OS",
    rows=["CRED-09", "CRED-16", "CRED-17"],
)
def test_unavailable_says_so(observe: Observer) -> None:
    probe = _ancillary.credentials_probe()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        if probe.available:
            udscompat.pass_credentials(b)
            udscompat.send_credentials()
            observe({"available": True, "datagram": probe.datagram, "stream": probe.stream})
            return
        with pytest.raises(udscompat.UnsupportedError) as info:
            udscompat.pass_credentials(b)
        with pytest.raises(udscompat.UnsupportedError):
            udscompat.send_credentials()
    assert info.value.reason in probe.reason
    assert info.value.os_name and info.value.os_name in str(info.value)
    observe({"available": False})


@case(
    "shim.ancillary.every_datagram",
    "After pass_credentials every datagram brings the sender's credentials",
    rows=["CRED-09", "CRED-10", "CRED-17"],
)
def test_every_datagram(observe: Observer) -> None:
    probe = _require_credentials()
    with _datagram_pair() as (a, b):
        b.pass_credentials()
        got = []
        for data in (b"one", b"two", b"three"):
            a.send(data)
            message = b.recv_message(16)
            assert message.data == data
            assert message.credentials is not None, f"{data!r} came without credentials"
            assert _is_mine(message.credentials, probe), message.credentials
            got.append(message.credentials)
        assert got[0] == got[1] == got[2]
    observe({"pid": probe.pid, "effective_ids": probe.effective_ids})


@case(
    "shim.ancillary.stream_as_probed",
    "On each connection type, which messages bring credentials is what the probe reports",
    rows=["CRED-10", "CRED-14", "CRED-17"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_stream_as_probed(observe: Observer, kind: str) -> None:
    probe = _require_credentials()
    a, b = kind_pair(kind)
    with a, b:
        udscompat.pass_credentials(b)
        seen = []
        for data in (b"first", b"second"):
            a.send(data)
            seen.append(udscompat.recv_ancillary(b, 16).credentials is not None)
    expected = {
        "every message": [True, True],
        "first message": [True, False],
        "sender attaches": [False, False],
        "none": [False, False],
    }
    if kind != "dgram":
        assert seen == expected[probe.stream], (seen, probe)
    observe(seen)


@case(
    "shim.ancillary.credentials_with_fds",
    "A sender's own credentials and descriptors in one message arrive together",
    rows=["CRED-12", "FD-01"],
)
def test_credentials_with_fds(observe: Observer, pipe: Tuple[int, int]) -> None:
    probe = _require_credentials()
    with _datagram_pair() as (a, b):
        b.pass_credentials()
        try:
            a.send(b"both", [pipe[0]], udscompat.send_credentials())
        except udscompat.UnsupportedError as exc:
            observe({"together": False, "why": exc.reason})
            return
        message = b.recv_message(16, maxfds=1)
        try:
            assert len(message.fds) == 1 and message.credentials is not None
            assert _is_mine(message.credentials, probe)
            os.write(pipe[1], b"!")
            assert os.read(message.fds[0], 1) == b"!"
        finally:
            for fd in message.fds:
                os.close(fd)
    observe({"together": True})


@case(
    "shim.ancillary.peer_security_label",
    "peer_security_label: the SO_PEERSEC label, None without an LSM, UnsupportedError off Linux",
    rows=["CRED-19"],
)
def test_peer_security_label(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        try:
            label = udscompat.peer_security_label(a)
        except udscompat.UnsupportedError as exc:
            unavailable(str(exc))
    assert label is None or (isinstance(label, bytes) and label and not label.endswith(b"\0"))
    observe("label" if label else "none")


@contextlib.contextmanager
def _datagram_pair() -> Iterator[Tuple[udscompat.UnixDatagram, udscompat.UnixDatagram]]:
    a, b = udscompat.UnixDatagram.pair()
    with a, b:
        yield a, b
