"""Value types shared by the public API and the per-OS backends."""

from __future__ import annotations

import array
import operator
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, List, NamedTuple, Optional, Tuple, Union

from udscompat._msgcreds import ClaimedCredentials, ReceivedCredentials

#: What ``Message.credentials`` holds: the kernel's, a peer's unverified claim, or None.
MessageCredentials = Optional[Union[ReceivedCredentials, ClaimedCredentials]]

__all__ = [
    "ConnCredentials",
    "Message",
    "MessageCredentials",
    "ReceivedInto",
    "WritableBuffers",
    "new_message",
]


def tuplegetter(index: int, doc: str) -> Any:
    """A read-only attribute for item ``index`` of a tuple subclass."""
    return property(operator.itemgetter(index), doc=doc)


if not TYPE_CHECKING:
    # The C accessor namedtuple uses (CPython 3.8+): reading a field costs no Python call.
    try:
        from collections import _tuplegetter as tuplegetter
    except ImportError:  # pragma: no cover
        pass

_MAX_FD = 2**31 - 1


class ConnCredentials(NamedTuple):
    """The credentials of a connected peer, as the kernel recorded them.

    Attributes:
        pid: the peer's process id, or ``None`` where the OS cannot tell
            (macOS gives it through a second option; DragonFly and FreeBSD
            before 13 give none; Linux gives 0 for a peer in a pid
            namespace we cannot see, reported here as ``None``).
        euid: the peer's effective user id.
        egid: the peer's effective group id.
        groups: the peer's supplementary groups where the OS reports them
            (Linux ``SO_PEERGROUPS``, the ``xucred`` of macOS, FreeBSD and
            DragonFly, illumos ``ucred_getgroups``), else ``None``.
    """

    pid: Optional[int]
    euid: int
    egid: int
    groups: Optional[Tuple[int, ...]] = None


class Message(Tuple[Any, ...]):
    """One message: payload, descriptors, truncation and the sender's credentials.

    Immutable (a named tuple: ``data, fds, truncated, credentials = message``
    works), so a message handed to several consumers cannot be changed by
    one of them.

    Attributes:
        data: the payload, at most the ``bufsize`` asked for.
        fds: descriptors that came with this message, as a tuple.  They are
            new, close-on-exec descriptors owned by the caller, who must
            close them.
        truncated: ``True`` when the message was longer than ``bufsize`` and
            the rest was discarded (for ``peek``: will be, if received with
            that ``bufsize``).
        credentials: the sender's credentials as the *kernel* attached them
            to this message (``ReceivedCredentials``, see ``pass_credentials``),
            else ``None``.  On an emulated connection they are the credentials
            the kernel attached to every write that carried a byte of this
            message, and ``None`` if those writes did not all carry the same
            ones.  Only after ``pass_credentials(claimed=True)`` on a kernel
            that attaches none to stream writes, a ``ClaimedCredentials``:
            what the peer wrote into the frame, NOT verified (``.verified``
            is False: a peer can lie).
    """

    __slots__ = ()
    _fields: ClassVar[Tuple[str, ...]] = ("data", "fds", "truncated", "credentials")

    if TYPE_CHECKING:

        @property
        def data(self) -> bytes: ...
        @property
        def fds(self) -> Tuple[int, ...]: ...
        @property
        def truncated(self) -> bool: ...
        @property
        def credentials(self) -> MessageCredentials: ...

    else:
        data = tuplegetter(0, "the payload")
        fds = tuplegetter(1, "descriptors that came with the message (the caller's to close)")
        truncated = tuplegetter(2, "the message was longer than bufsize; the rest was discarded")
        credentials = tuplegetter(3, "the kernel's credentials of the sender, a claim, or None")

    def __new__(
        cls,
        data: bytes,
        fds: Iterable[int] = (),
        truncated: bool = False,
        credentials: MessageCredentials = None,
    ) -> Message:
        """Build a message, checking every field (the library's own use skips the checks)."""
        return tuple.__new__(cls, _checked_fields(cls, data, fds, truncated, credentials))

    def __getnewargs__(self) -> Tuple[Any, ...]:
        return tuple(self)

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 32 else self.data[:32] + b"..."
        return (
            f"{type(self).__name__}(data={shown!r}, fds={self.fds!r}, "
            f"truncated={self.truncated!r}, credentials={self.credentials!r})"
        )


class ReceivedInto(NamedTuple):
    """What ``recv_message_into`` received; the payload is in the caller's buffers.

    Attributes:
        nbytes: how many bytes of the message were written into the buffers.
        fds: descriptors that came with the message (the caller's to close).
        truncated: the message was longer than the buffers; the rest was discarded.
        credentials: as ``Message.credentials``.
    """

    nbytes: int
    fds: Tuple[int, ...]
    truncated: bool
    credentials: MessageCredentials


#: What ``recv_message_into`` takes: one writable bytes-like object (bytearray,
#: memoryview, array) or a list or tuple of them.
WritableBuffers = Union[bytearray, memoryview, "array.array[Any]", List[Any], Tuple[Any, ...]]


def _checked_fields(
    cls: type, data: Any, fds: Any, truncated: Any, credentials: Any
) -> Tuple[bytes, Tuple[int, ...], bool, MessageCredentials]:
    name = cls.__name__
    if not isinstance(data, bytes):
        raise TypeError(f"{name}.data must be bytes, not {type(data).__name__}")
    numbers = tuple(fds)
    for fd in numbers:
        if type(fd) is not int:
            raise TypeError(f"{name}.fds must hold ints, not {type(fd).__name__}")
        if not 0 <= fd <= _MAX_FD:
            raise ValueError(f"{name}.fds: invalid file descriptor {fd}")
    if type(truncated) is not bool:
        raise TypeError(f"{name}.truncated must be a bool, not {type(truncated).__name__}")
    if credentials is not None and not isinstance(
        credentials, (ReceivedCredentials, ClaimedCredentials)
    ):
        raise TypeError(
            f"{name}.credentials must be a ReceivedCredentials, ClaimedCredentials or None, "
            f"not {type(credentials).__name__}"
        )
    return bytes(data), numbers, truncated, credentials


def _new_message(fields: Tuple[bytes, Tuple[int, ...], bool, Any]) -> Message:
    """A ``Message`` from ``(data, fds, truncated, credentials)``, unchecked (hot paths)."""
    return tuple.__new__(Message, fields)


if not TYPE_CHECKING:
    # The same, as one C call: the receive paths build a Message per message.
    import functools

    _new_message = functools.partial(tuple.__new__, Message)

#: Build a ``Message`` from a ``(data, fds, truncated, credentials)`` tuple without checks.
new_message = _new_message

ConnCredentials.__module__ = "udscompat"
Message.__module__ = "udscompat"
ReceivedInto.__module__ = "udscompat"
