"""The exceptions udscompat raises beyond the standard library's own.

All are ``OSError`` subclasses, so code that already handles socket errors
keeps working; each carries the facts of the failure as attributes and
pickles with them (so they survive ``multiprocessing``).
"""

from __future__ import annotations

import errno
from typing import Any, Optional

__all__ = ["ControlTruncatedError", "FramingError", "UnsupportedError"]


class UnsupportedError(OSError):
    """A feature this operating system does not offer.

    Attributes:
        feature: what was asked for, e.g. ``"abstract addresses"``.
        os_name: the operating system, e.g. ``"macOS"``.
        reason: why it is unavailable, in words (the same text
            ``udscompat.capabilities()`` gives).
    """

    feature: str
    os_name: str
    reason: str

    def __init__(self, feature: str, os_name: str, reason: str) -> None:
        super().__init__(errno.EOPNOTSUPP, f"{feature} are not available on {os_name}: {reason}")
        self.feature = feature
        self.os_name = os_name
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.feature, self.os_name, self.reason))


class ControlTruncatedError(OSError):
    """Ancillary data did not fit: some descriptors were lost in the kernel.

    Raised by ``recv_fds`` and ``SeqpacketConn.recv_message`` when the kernel
    reports ``MSG_CTRUNC`` (or, on OpenBSD and DragonFly, fails ``recvmsg``
    with ``EMSGSIZE``).  Every descriptor that did arrive has already been
    closed, so none leaks; the payload is kept.

    Attributes:
        data: the payload bytes that came with the truncated control data
            (``b""`` where the kernel returned none, as OpenBSD does).
        closed_fds: how many received descriptors udscompat closed.
    """

    data: bytes
    closed_fds: int

    def __init__(self, message: str, data: bytes = b"", closed_fds: int = 0) -> None:
        super().__init__(errno.EMSGSIZE, message)
        self.data = data
        self.closed_fds = closed_fds

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.strerror, self.data, self.closed_fds))


class FramingError(OSError):
    """The peer of an emulated SOCK_SEQPACKET connection broke the framing.

    A bogus length, a frame cut short by end-of-stream, or descriptors where
    no frame declared any.  The connection is closed and every descriptor it
    held is closed with it.
    """

    def __init__(self, message: str, errno_value: Optional[int] = errno.EPROTO) -> None:
        super().__init__(errno_value, message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.strerror, self.errno))


for _cls in (UnsupportedError, ControlTruncatedError, FramingError):
    _cls.__module__ = "udscompat"
del _cls
