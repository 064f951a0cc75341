"""OS cases: errors across socket types and API edges."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import SOCKET_KINDS, attempt, require_seqpacket

case = pytest.mark.case


@case("os.errors.type_mismatch", "connect() to a listener of another type", rows=["ERR-03"])
@pytest.mark.parametrize(
    "pairing", ["stream_to_seqpacket", "seqpacket_to_stream", "stream_to_dgram"]
)
def test_type_mismatch(observe: Observer, short_tmp: str, pairing: str) -> None:
    client_kind, server_kind = pairing.split("_to_")
    if "seqpacket" in pairing:
        require_seqpacket()
    path = os.path.join(short_tmp, "l")
    with (
        socket.socket(socket.AF_UNIX, SOCKET_KINDS[server_kind]) as server,
        socket.socket(socket.AF_UNIX, SOCKET_KINDS[client_kind]) as client,
    ):
        server.bind(path)
        if server_kind != "dgram":
            server.listen(1)
        observe(attempt(lambda: client.connect(path)))


@case(
    "os.errors.sigpipe",
    "A write to a closed peer with SIGPIPE at its default: killed? and with MSG_NOSIGNAL",
    rows=["ERR-05", "STR-10"],
)
@pytest.mark.parametrize("kind", ["stream", "seqpacket"])
def test_sigpipe(observe: Observer, kind: str) -> None:
    if kind == "seqpacket":
        require_seqpacket()
    sock_type = "SOCK_STREAM" if kind == "stream" else "SOCK_SEQPACKET"
    script = textwrap.dedent(
        f"""
        import signal, socket, sys
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        a, b = socket.socketpair(socket.AF_UNIX, socket.{sock_type})
        b.close()
        if sys.argv[1] == "nosignal":
            try:
                a.send(b"x", getattr(socket, "MSG_NOSIGNAL", 0))
            except OSError as exc:
                sys.exit(3 if exc.errno == 32 else 4)
        else:
            try:
                a.send(b"x")
            except OSError:
                sys.exit(5)
        sys.exit(0)
        """
    )

    def outcome(mode: str) -> str:
        code = subprocess.run([sys.executable, "-c", script, mode], timeout=30).returncode
        if code == -signal.SIGPIPE:
            return "killed by SIGPIPE"
        return {0: "no error", 3: "EPIPE, no signal", 4: "other error", 5: "error, no signal"}.get(
            code, f"exit {code}"
        )

    observe({"default": outcome("plain"), "msg_nosignal": outcome("nosignal")})


@case(
    "os.errors.bad_options",
    "getsockopt with an unknown option, and at a wrong level",
    rows=["ERR-02"],
)
def test_bad_options(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        observe(
            {
                "unknown_option": attempt(lambda: a.getsockopt(socket.SOL_SOCKET, 9999)),
                "tcp_level": attempt(lambda: a.getsockopt(socket.IPPROTO_TCP, 1)),
            }
        )


@case(
    "os.errors.bad_descriptor",
    "A socket call on a descriptor number that is no longer open",
    rows=["ERR-01"],
)
def test_bad_descriptor(observe: Observer) -> None:
    with socket.socket(socket.AF_UNIX) as probe:
        number = probe.fileno()
    observe(attempt(lambda: socket.socket(fileno=number)))


@case(
    "os.errors.recvmsg_flags",
    "msg_flags after a plain recvmsg, after MSG_PEEK, and with MSG_CTRUNC passed as an input flag",
    rows=["ERR-06"],
)
def test_recvmsg_flags(observe: Observer) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.send(b"one")
        _, _, peek_flags, _ = b.recvmsg(10, 0, socket.MSG_PEEK)
        _, _, plain_flags, _ = b.recvmsg(10)
        a.send(b"two")
        _, _, ctrunc_in_flags, _ = b.recvmsg(10, 0, socket.MSG_CTRUNC)
        observe({"peek": peek_flags, "plain": plain_flags, "ctrunc_as_input": ctrunc_in_flags})
