"""peer_credentials with real peers: this process, another process, another user."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Any, Tuple

import pytest

import udscompat
from tests.conftest import other_user, peer_pid, python_peer
from udscompat import ConnCredentials, _probes
from udscompat._platform import backend


def test_socketpair_reports_this_process() -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        creds = udscompat.peer_credentials(a)
        assert isinstance(creds, ConnCredentials)
        expected = (peer_pid(os.getpid()), os.geteuid(), os.getegid())
        assert (creds.pid, creds.euid, creds.egid) == expected
        assert creds.groups is not None
        assert set(creds.groups) == set(os.getgroups())


def test_unconnected_socket_is_enotconn_not_fake_credentials() -> None:
    kinds = [socket.SOCK_STREAM, socket.SOCK_DGRAM]
    if _probes.seqpacket().available:
        kinds.append(backend.SOCK_SEQPACKET)
    for kind in kinds:
        with socket.socket(socket.AF_UNIX, kind) as sock, pytest.raises(OSError) as info:
            udscompat.peer_credentials(sock)
        assert info.value.errno == errno.ENOTCONN


def test_wrong_socket_family() -> None:
    with socket.socket(socket.AF_INET) as sock, pytest.raises(ValueError, match="AF_UNIX"):
        udscompat.peer_credentials(sock)


CONNECTOR = (
    "import socket,sys,os,udscompat\n"
    "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
    "c=udscompat.peer_credentials(s)\n"
    "s.sendall(f'{c.pid} {c.euid} {c.egid}'.encode()); s.recv(1)\n"
)


def _serve_one(path: str, user: int | None) -> tuple[ConnCredentials, str, int]:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        os.chmod(path, 0o777)
        listener.listen()
        child = python_peer(CONNECTOR, path, user=user)
        conn, _ = listener.accept()
        with conn:
            creds = udscompat.peer_credentials(conn)
            seen = conn.recv(64).decode()
            conn.send(b"k")
        _, err = child.communicate(timeout=30)
        assert child.returncode == 0, err
        return creds, seen, child.pid


def test_other_process(short_tmp: Path) -> None:
    creds, seen_by_child, pid = _serve_one(str(short_tmp / "p"), None)
    assert (creds.pid, creds.euid, creds.egid) == (peer_pid(pid), os.geteuid(), os.getegid())
    assert seen_by_child == f"{peer_pid(os.getpid())} {os.geteuid()} {os.getegid()}"


def _fork_as(user: int, group: int, path: str) -> int:
    """Fork a child that drops to ``user`` and runs CONNECTOR's steps (the interpreter's
    own files may be unreadable to that user, so no exec)."""
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        os.setgroups([])
        os.setgid(group)
        os.setuid(user)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            c = udscompat.peer_credentials(s)
            s.sendall(f"{c.pid} {c.euid} {c.egid}".encode())
            s.recv(1)
        status = 0
    finally:
        os._exit(status)


@pytest.mark.root("runs a peer as another user")
def test_other_user(short_tmp: Path) -> None:
    nobody_entry = other_user()
    nobody, nobody_gid = nobody_entry.pw_uid, nobody_entry.pw_gid
    path = str(short_tmp / "u")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        os.chmod(path, 0o777)
        listener.listen()
        pid = _fork_as(nobody, nobody_gid, path)
        conn, _ = listener.accept()
        with conn:
            creds = udscompat.peer_credentials(conn)
            seen_by_child = conn.recv(64).decode()
            conn.send(b"k")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert (creds.pid, creds.euid, creds.egid) == (peer_pid(pid), nobody, nobody_gid)
    assert creds.groups == (nobody_gid,) or creds.groups == ()
    assert seen_by_child == f"{peer_pid(os.getpid())} 0 {os.getegid()}"


def test_listening_socket_is_enotconn_not_its_own_credentials(short_tmp: Path) -> None:
    """Linux answers SO_PEERCRED on a listener with the credentials listen() recorded."""
    kinds = [socket.SOCK_STREAM]
    if _probes.seqpacket().available:
        kinds.append(backend.SOCK_SEQPACKET)
    for kind in kinds:
        with socket.socket(socket.AF_UNIX, kind) as listener:
            listener.bind(str(short_tmp / f"l{kind}"))
            listener.listen()
            with pytest.raises(OSError) as info:
                udscompat.peer_credentials(listener)
            assert info.value.errno == errno.ENOTCONN
            assert "listening" in str(info.value)
    with (
        udscompat.SeqpacketListener(short_tmp / "seq") as seq,
        socket.socket(fileno=os.dup(seq.fileno())) as same,
        pytest.raises(OSError) as info,
    ):
        udscompat.peer_credentials(same)
    assert info.value.errno == errno.ENOTCONN


def _connect_then_hand_over(path: str, user: Any = None) -> Tuple[ConnCredentials, int]:
    """Connect to a listener at ``path`` from this process, then let a forked child (as
    ``user``, if given) hold the only copy and speak over it.  Returns what the listener's
    side reports, and the child's pid."""
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                if user is not None:
                    os.setgroups([])
                    os.setgid(user.pw_gid)
                    os.setuid(user.pw_uid)
                client.sendall(b"from the child")
                status = 0
            finally:
                os._exit(status)
        client.close()
        conn, _ = listener.accept()
        with conn:
            assert conn.recv(32) == b"from the child"
            creds = udscompat.peer_credentials(conn)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    return creds, pid


def test_credentials_are_the_connectors_even_after_the_socket_moves(short_tmp: Path) -> None:
    """The process that connected is reported, not the one that holds the socket now."""
    creds, child = _connect_then_hand_over(str(short_tmp / "moved"))
    assert creds.pid == peer_pid(os.getpid())
    assert creds.pid != child


@pytest.mark.root("hands a connection to another user")
def test_connection_made_by_root_still_reports_root_in_another_users_hands(
    short_tmp: Path,
) -> None:
    creds, _ = _connect_then_hand_over(str(short_tmp / "handed"), other_user())
    assert (creds.euid, creds.pid) == (0, peer_pid(os.getpid()))
