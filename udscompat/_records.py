"""Value types shared by the public API and the per-OS backends."""

from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

__all__ = ["ConnCredentials", "Message"]


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


class Message:
    """One SOCK_SEQPACKET message: payload, descriptors and truncation.

    Attributes:
        data: the payload, at most the ``bufsize`` asked for.
        fds: descriptors that came with this message.  They are new,
            close-on-exec descriptors owned by the caller, who must close them.
        truncated: ``True`` when the message was longer than ``bufsize`` and
            the rest was discarded.
    """

    __slots__ = ("data", "fds", "truncated")

    data: bytes
    fds: List[int]
    truncated: bool

    def __init__(self, data: bytes, fds: Optional[List[int]] = None, truncated: bool = False):
        self.data = data
        self.fds = [] if fds is None else fds
        self.truncated = truncated

    def __repr__(self) -> str:
        shown = self.data if len(self.data) <= 32 else self.data[:32] + b"..."
        return f"Message(data={shown!r}, fds={self.fds!r}, truncated={self.truncated!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Message):
            return NotImplemented
        return (self.data, self.fds, self.truncated) == (other.data, other.fds, other.truncated)

    __hash__ = None  # type: ignore[assignment]  # fds is a mutable list


ConnCredentials.__module__ = "udscompat"
Message.__module__ = "udscompat"
