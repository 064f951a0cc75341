"""Typed use of the public API: ``mypy --strict`` must accept it and infer these exact types.

Never imported or run by pytest (no ``test_`` prefix); ``tests/test_typing.py``
hands it to mypy.  Each ``assert_type`` pins a public signature: a return that
widens to ``Any``, or a parameter that stops accepting what users pass, fails.
"""

from __future__ import annotations

import socket
from typing import Optional, Tuple, Union

from typing_extensions import assert_type

import udscompat
import udscompat.aio
from udscompat import (
    AncillaryMessage,
    ClaimedCredentials,
    Message,
    ReceivedCredentials,
    ReceivedInto,
    SendCredentials,
    SeqpacketConn,
    UnixDatagram,
    UnixSocketAddr,
)


def ancillary(sock: socket.socket, fd: int) -> None:
    udscompat.pass_credentials(sock)
    udscompat.pass_credentials(sock, enable=False)
    creds = udscompat.send_credentials(effective=True)
    assert_type(creds, SendCredentials)
    assert_type(creds.pid, int)
    sent = udscompat.send_ancillary(sock, [b"a", bytearray(b"b")], [fd], creds, 0, "@peer")
    assert_type(sent, int)
    message = udscompat.recv_ancillary(sock, 64, maxfds=2, flags=0)
    assert_type(message, AncillaryMessage)
    assert_type(message.data, bytes)
    assert_type(message.fds, Tuple[int, ...])
    assert_type(message.credentials, Optional[ReceivedCredentials])
    assert_type(message.address, UnixSocketAddr)
    assert_type(message.truncated, bool)
    if message.credentials is not None:
        assert_type(message.credentials.uid, int)
        assert_type(message.credentials.euid, Optional[int])
        assert_type(message.credentials.groups, Optional[Tuple[int, ...]])
    assert_type(udscompat.peer_security_label(sock), Optional[bytes])


def datagrams(fd: int) -> None:
    with UnixDatagram.bind("@service") as server, UnixDatagram.unbound() as client:
        assert_type(server, UnixDatagram)
        server.pass_credentials()
        assert_type(client.send_to(server.local_addr, b"x", [fd], None), int)
        message, sender = server.recv_from(64, maxfds=1)
        assert_type(message, AncillaryMessage)
        assert_type(sender, UnixSocketAddr)
        assert_type(server.gettimeout(), Optional[float])
        assert_type(server.peer_credentials(), udscompat.ConnCredentials)
    a, b = UnixDatagram.pair()
    assert_type(a.recv_message(), AncillaryMessage)
    assert_type(b.send(memoryview(b"y")), int)


def connections(fd: int, path: str) -> None:
    with SeqpacketConn.connect("@server", local_addr=path, timeout=1.0) as conn:
        assert_type(conn.send([b"a", memoryview(b"b")], [fd], udscompat.send_credentials()), int)
        conn.pass_credentials(claimed=True)
        message = conn.recv_message(64, maxfds=1)
        assert_type(message, Optional[Message])
        if message is not None:
            assert_type(message.fds, Tuple[int, ...])
            creds = message.credentials
            assert_type(creds, Optional[Union[ReceivedCredentials, ClaimedCredentials]])
            if isinstance(creds, ClaimedCredentials):
                assert_type(creds.verified, bool)
        assert_type(conn.peek(16, 1), Optional[Message])
        buffer = bytearray(64)
        got = conn.recv_message_into([buffer, memoryview(buffer)], maxfds=1)
        assert_type(got, Optional[ReceivedInto])
        if got is not None:
            assert_type(got.nbytes, int)
        assert_type(conn.dup(), SeqpacketConn)
        assert_type(conn.take_error(), Optional[OSError])
        assert_type(conn.peer_security_label(), Optional[bytes])
        assert_type(conn.local_addr, UnixSocketAddr)
        # The free functions take our own types (and anything with fileno()).
        assert_type(udscompat.peer_credentials(conn), udscompat.ConnCredentials)
        assert_type(udscompat.send_fds(conn, b"x", [fd]), int)
        assert_type(udscompat.recv_ancillary(conn, 8), AncillaryMessage)
        assert_type(udscompat.peer_security_label(UnixDatagram.pair()[0]), Optional[bytes])


async def async_connections(fd: int) -> None:
    conn = await udscompat.aio.open_seqpacket_connection("@server", local_addr="@client")
    assert_type(await conn.send((b"a", b"b"), [fd], None), int)
    assert_type(await conn.peek(), Optional[Message])
    assert_type(await conn.recv_message_into(bytearray(8)), Optional[ReceivedInto])
    assert_type(conn.take_error(), Optional[OSError])
    conn.pass_credentials(claimed=True)
