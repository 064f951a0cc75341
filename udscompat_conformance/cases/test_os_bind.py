"""OS cases: what binding safely relies on, observed through the standard library.

udscompat's ``bind`` chooses per kernel how to set a socket file's mode, how
to tell a stale socket file from a live one, and how to place a socket
bound elsewhere (see ``udscompat/_bind.py``); these cases measure the
kernel facts behind each choice, so the matrix shows where they hold.
"""

from __future__ import annotations

import os
import socket
import stat

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    SOCKET_KINDS,
    abstract_name,
    attempt,
    require_abstract,
    require_seqpacket,
)

case = pytest.mark.case


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@case(
    "os.address.mode_from_socket",
    "fchmod() on an unbound socket, then bind(): the file's mode (the socket's less the umask?)",
)
def test_mode_from_socket(observe: Observer, short_tmp: str) -> None:
    path = os.path.join(short_tmp, "m")
    mask = _current_umask()
    with socket.socket(socket.AF_UNIX) as sock:
        fchmod = attempt(lambda: os.fchmod(sock.fileno(), 0o600))
        sock.bind(path)
        mode = stat.S_IMODE(os.lstat(path).st_mode)
    if fchmod == "ok" and mode == 0o600 & ~mask:
        source = "the socket's mode less the umask"
    elif mode == 0o777 & ~mask:
        source = "the umask alone"
    else:
        source = f"neither ({mode:#o} with umask {mask:#o})"
    observe({"fchmod": fchmod, "file_mode": source})


@case(
    "os.address.probe_by_type",
    "A SOCK_DGRAM connect() to socket files: stale, bound but not listening, listening, dgram; "
    "does a listener's accept queue see it?",
    rows=["ERR-03"],
)
def test_probe_by_type(observe: Observer, short_tmp: str) -> None:
    def probe(path: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as dgram:
            dgram.setblocking(False)
            return attempt(lambda: dgram.connect(path))

    seen = {}
    stale = os.path.join(short_tmp, "stale")
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(stale)
    seen["stale_file"] = probe(stale)
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(os.path.join(short_tmp, "bound"))
        seen["bound_not_listening"] = probe(os.path.join(short_tmp, "bound"))
        # The same-type probe that cannot tell this socket from a stale file:
        with socket.socket(socket.AF_UNIX) as stream:
            seen["stream_probe_bound_not_listening"] = attempt(
                lambda: stream.connect(os.path.join(short_tmp, "bound"))
            )
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(os.path.join(short_tmp, "listening"))
        listener.listen(1)
        seen["listening"] = probe(os.path.join(short_tmp, "listening"))
        listener.setblocking(False)
        seen["queued_by_probe"] = attempt(lambda: listener.accept()[0].close()) == "ok"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(os.path.join(short_tmp, "dgram"))
        seen["dgram"] = probe(os.path.join(short_tmp, "dgram"))
    observe(seen)


@case(
    "os.address.hard_link_reaches_socket",
    "A hard link to a bound socket's file, made after bind and listen, reaches the socket",
)
def test_hard_link_reaches_socket(observe: Observer, short_tmp: str) -> None:
    private = os.path.join(short_tmp, "private")
    os.mkdir(private, 0o700)
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(os.path.join(private, "s"))
        listener.listen(1)
        link = attempt(lambda: os.link(os.path.join(private, "s"), os.path.join(short_tmp, "s")))
        if link != "ok":
            observe({"link": link})
            return
        os.unlink(os.path.join(private, "s"))
        with socket.socket(socket.AF_UNIX) as client:
            connect = attempt(lambda: client.connect(os.path.join(short_tmp, "s")))
        observe({"link": link, "connect_through_link": connect})


@case(
    "os.address.abstract_type_mismatch",
    "An abstract name bound by a listener of another type: connect() answers? both bind at once?",
    rows=["ADDR-21", "ERR-03"],
)
@pytest.mark.parametrize("pairing", ["stream_to_seqpacket", "seqpacket_to_stream"])
def test_abstract_type_mismatch(observe: Observer, pairing: str) -> None:
    require_abstract()
    require_seqpacket()
    client_kind, server_kind = pairing.split("_to_")
    name = abstract_name(f"mismatch-{pairing}")
    with (
        socket.socket(socket.AF_UNIX, SOCKET_KINDS[server_kind]) as server,
        socket.socket(socket.AF_UNIX, SOCKET_KINDS[client_kind]) as client,
        socket.socket(socket.AF_UNIX, SOCKET_KINDS[client_kind]) as twin,
    ):
        server.bind(name)
        server.listen(1)
        observed = {"connect": attempt(lambda: client.connect(name))}
        # udscompat's native and emulated seqpacket listeners can then share one @name.
        observed["other_type_binds_same_name"] = attempt(lambda: twin.bind(name))
        if observed["connect"] == "ok":
            observed["connect"] = "ok (connected across types)"
        observe(observed)
