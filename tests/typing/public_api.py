"""Typed use of the public API: ``mypy --strict`` must accept it and infer these exact types.

Never imported or run by pytest (no ``test_`` prefix); ``tests/test_typing.py``
hands it to mypy.  Each ``assert_type`` pins a public signature: a return that
widens to ``Any``, or a parameter that stops accepting what users pass, fails.
"""

from __future__ import annotations

import socket
from typing import Optional, Tuple

from typing_extensions import assert_type

import udscompat
from udscompat import (
    AncillaryMessage,
    ReceivedCredentials,
    SendCredentials,
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
