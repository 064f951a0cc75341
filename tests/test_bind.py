"""Path listeners: stale files removed, live sockets and non-sockets never."""

from __future__ import annotations

import errno
import os
import socket
import stat
from pathlib import Path

import pytest

import udscompat
from tests.conftest import needs_abstract, python_peer
from udscompat import UnixSocketAddr, _probes


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


def test_live_listener_in_another_process_is_never_removed(short_tmp: Path) -> None:
    path = str(short_tmp / "live")
    peer = python_peer(
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen()\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    c,_=s.accept()\n"
        "    try: c.sendall(b'still here')\n"
        "    except OSError: pass\n"
        "    c.close()\n",
        path,
    )
    try:
        assert peer.stdout is not None
        assert peer.stdout.readline() == b"ready\n"
        inode = os.lstat(path).st_ino
        with socket.socket(socket.AF_UNIX) as sock, pytest.raises(OSError) as info:
            udscompat.bind(sock, path)
        assert info.value.errno == errno.EADDRINUSE
        assert path in str(info.value)
        assert os.lstat(path).st_ino == inode
        # The probe connection was accepted; the listener still serves a real client.
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            assert client.recv(64) == b"still here"
    finally:
        peer.kill()
        peer.wait()
        assert peer.stdout is not None
        assert peer.stderr is not None
        peer.stdout.close()
        peer.stderr.close()


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


def test_every_api_reads_at_names_as_abstract(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's "@name" is abstract everywhere, and creates no file called "@name"."""
    import asyncio

    from udscompat import aio

    if not _probes.abstract_addresses()[0]:
        pytest.skip("no abstract namespace on this kernel")
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
