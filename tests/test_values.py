"""The public value types are immutable, validate their fields and pickle (issue 14, item 7)."""

from __future__ import annotations

import pickle
from typing import Tuple

import pytest

import udscompat
from udscompat import AncillaryMessage, Message, ReceivedCredentials, UnixSocketAddr

CREDS = ReceivedCredentials(42, 1000, 1000, None, None, None)


def test_message_is_immutable_and_holds_a_tuple_of_fds() -> None:
    message = Message(b"data", [4, 5], False, CREDS)
    assert (message.data, message.fds, message.truncated, message.credentials) == (
        b"data",
        (4, 5),
        False,
        CREDS,
    )
    for name in Message._fields:
        with pytest.raises(AttributeError):
            setattr(message, name, None)
    with pytest.raises(AttributeError):
        message.extra = 1  # type: ignore[attr-defined]
    assert type(message.fds) is tuple  # no list a consumer could append to
    data, fds, truncated, credentials = message
    assert (data, fds, truncated, credentials) == (b"data", (4, 5), False, CREDS)


def test_message_defaults_equality_hash_and_pickle() -> None:
    plain = Message(b"x")
    assert (plain.fds, plain.truncated, plain.credentials) == ((), False, None)
    assert plain == Message(b"x", (), False, None) != Message(b"x", (), True)
    assert hash(Message(b"x", [3], credentials=CREDS)) == hash(Message(b"x", (3,), False, CREDS))
    for message in (plain, Message(b"y" * 100, [7], True, CREDS)):
        copy = pickle.loads(pickle.dumps(message))
        assert copy == message and type(copy) is Message
    assert "credentials=ReceivedCredentials(" in repr(Message(b"x", credentials=CREDS))
    assert repr(Message(b"z" * 100)).count("z") == 32  # a long payload is cut in the repr


@pytest.mark.parametrize(
    ("args", "error", "words"),
    [
        ((bytearray(b"x"),), TypeError, "data must be bytes"),
        ((b"x", [True]), TypeError, "fds must hold ints"),
        ((b"x", ["3"]), TypeError, "fds must hold ints"),
        ((b"x", [-1]), ValueError, "invalid file descriptor -1"),
        ((b"x", [2**31]), ValueError, "invalid file descriptor"),
        ((b"x", (), 1), TypeError, "truncated must be a bool"),
        ((b"x", (), False, (1, 2, 3)), TypeError, "credentials must be a ReceivedCredentials"),
    ],
)
def test_message_refuses_bad_fields(args: Tuple[object, ...], error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        Message(*args)


def test_an_ancillary_message_is_a_message_with_flags_and_address() -> None:
    sender = UnixSocketAddr.from_abstract(b"sender")
    message = AncillaryMessage(b"d", [9], True, CREDS, 0x20, sender)
    assert isinstance(message, Message)
    assert tuple(message)[:4] == tuple(Message(b"d", [9], True, CREDS))
    assert (message.flags, message.address) == (0x20, sender)
    assert message != Message(b"d", [9], True, CREDS)  # more fields: never equal to a Message
    assert AncillaryMessage(b"d").address == UnixSocketAddr.unnamed()
    copy = pickle.loads(pickle.dumps(message))
    assert copy == message and type(copy) is AncillaryMessage
    with pytest.raises(AttributeError):
        message.flags = 0  # type: ignore[misc]
    with pytest.raises(TypeError, match="address must be a UnixSocketAddr"):
        AncillaryMessage(b"d", address="@x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="flags must be an int"):
        AncillaryMessage(b"d", flags=None)  # type: ignore[arg-type]
    assert repr(message).endswith(", flags=0x20, address=UnixSocketAddr.from_abstract(b'sender'))")


def test_conn_credentials_are_immutable() -> None:
    creds = udscompat.ConnCredentials(1, 2, 3, (4,))
    with pytest.raises(AttributeError):
        creds.euid = 0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(creds)) == creds
