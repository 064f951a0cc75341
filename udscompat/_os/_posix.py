"""What every POSIX backend shares, and the backend for an unknown POSIX.

An unknown POSIX system gets the 4.4BSD values where they are universal and
``UnsupportedError`` for everything that differs by kernel (credentials).
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from typing import Callable, List, NamedTuple, NoReturn, Optional, Sequence, Tuple

from udscompat._errors import UnsupportedError
from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import BoundSocket
from udscompat._records import ConnCredentials

OS_NAME = os.uname().sysname if hasattr(os, "uname") else "unknown POSIX"
SUN_PATH_SIZE = 104
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x8
MSG_TRUNC = 0x10
MSG_CTRUNC = 0x20
MSG_CMSG_CLOEXEC: Optional[int] = None
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8
MAX_FDS_PER_MESSAGE: Optional[int] = None
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False
# 4.4BSD's unp_bind creates the file with ACCESSPERMS less the umask: the socket's
# own mode is not used (the conformance case os.address.mode_from_socket measures it).
BIND_MODE_FROM_SOCKET = False
FD_PATH: Optional[str] = None


def bound_unix_sockets() -> Optional[List[BoundSocket]]:
    """No socket-table query udscompat knows on this kernel (Linux has sock_diag)."""
    return None


def control_room_before_rights(sock: socket.socket) -> Optional[int]:
    """None: no fixed order of this kernel's control messages is known to udscompat (the
    BSDs keep the sender's), so no receive can be sized to hold them and no descriptor."""
    return None


#: One ``(level, type, data)`` control message, as ``socket.recvmsg`` returns it.
Cmsg = Tuple[int, int, bytes]

SENDER_NAMES_CREDENTIALS = False
CREDENTIALS_WITH_FDS = False
CREDENTIALS_ROOM = 0
_NO_MECHANISM = "no known mechanism on this kernel"
#: Why ``peer_security_label`` is unavailable everywhere but Linux.
NO_SECURITY_LABEL = "SO_PEERSEC, the peer's LSM label (SELinux, AppArmor, Smack), is Linux's"


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """No known mechanism on an unrecognised kernel."""
    raise UnsupportedError("peer credentials", OS_NAME, _NO_MECHANISM)


class AncillaryEntries(NamedTuple):
    """A backend's four ancillary entries, for kernels that have no ancillary credentials."""

    pass_credentials: Callable[[socket.socket, bool], None]
    credentials_cmsg: Callable[[SendCredentials], Optional[Cmsg]]
    credentials_from_cmsgs: Callable[[Sequence[Cmsg]], Optional[ReceivedCredentials]]
    peer_security_label: Callable[[socket.socket], Optional[bytes]]


def without_ancillary_credentials(os_name: str, reason: str) -> AncillaryEntries:
    """Entries that refuse by name (``UnsupportedError`` saying ``reason``) and read nothing."""

    def pass_credentials(sock: socket.socket, enable: bool) -> None:
        refuse("ancillary credentials", os_name, reason)

    def credentials_cmsg(creds: SendCredentials) -> Optional[Cmsg]:
        refuse("ancillary credentials", os_name, reason)

    def credentials_from_cmsgs(ancdata: Sequence[Cmsg]) -> Optional[ReceivedCredentials]:
        return None  # whatever arrives, no credential message is known here

    def peer_security_label(sock: socket.socket) -> Optional[bytes]:
        refuse("peer security labels", os_name, NO_SECURITY_LABEL)

    return AncillaryEntries(
        pass_credentials, credentials_cmsg, credentials_from_cmsgs, peer_security_label
    )


pass_credentials, credentials_cmsg, credentials_from_cmsgs, peer_security_label = (
    without_ancillary_credentials(OS_NAME, _NO_MECHANISM)
)


def refuse(feature: str, os_name: str, reason: str) -> NoReturn:
    """Raise ``UnsupportedError`` for ``feature`` on ``os_name``."""
    raise UnsupportedError(feature, os_name, reason)


def payloads(ancdata: Sequence[Cmsg], level: int, kind: int) -> List[bytes]:
    """The data of every control message of ``level`` and ``kind``, in order."""
    return [data for lvl, typ, data in ancdata if typ == kind and lvl == level]


def credentials_of(
    ancdata: Sequence[Cmsg], level: int, kind: int, decode: Callable[[bytes], ReceivedCredentials]
) -> Optional[ReceivedCredentials]:
    """The sender every ``level``/``kind`` message in ``ancdata`` names (``one_sender``)."""
    found = payloads(ancdata, level, kind)
    return one_sender([decode(raw) for raw in found]) if found else None


def one_sender(found: Sequence[ReceivedCredentials]) -> Optional[ReceivedCredentials]:
    """The credentials if every credential message of one receive names the same sender.

    One read of a stream may span several sends; if those were made under
    different identities no single answer is true, so there is none.
    """
    if not found or any(c != found[0] for c in found[1:]):
        return None
    return found[0]


def received(
    what: str,
    pid: Optional[int],
    uid: int,
    gid: int,
    euid: Optional[int],
    egid: Optional[int],
    groups: Optional[Tuple[int, ...]],
) -> ReceivedCredentials:
    """``ReceivedCredentials`` from a kernel structure, EPROTO if its values are impossible.

    A pid of 0 (Linux: a sender in a pid namespace we cannot see) or -1
    (illumos: not available) becomes ``None``.
    """
    try:
        return ReceivedCredentials(pid if pid and pid > 0 else None, uid, gid, euid, egid, groups)
    except ValueError as exc:
        raise OSError(errno.EPROTO, f"kernel sent an impossible {what}: {exc}") from None


def group_array(raw: bytes, offset: int, ngroups: int, limit: int, what: str) -> Tuple[int, ...]:
    """``ngroups`` gid_t values at ``offset`` in ``raw``; EPROTO if they cannot be there."""
    if not 0 <= ngroups <= limit or len(raw) < offset + 4 * ngroups:
        raise OSError(
            errno.EPROTO,
            f"{what} of {len(raw)} bytes claims {ngroups} groups (at most {limit} fit)",
        )
    return struct.unpack_from(f"={ngroups}I", raw, offset)


def getsockopt_bytes(sock: socket.socket, level: int, optname: int, size: int) -> bytes:
    """``getsockopt`` returning raw bytes, with ``ENOTCONN`` for the unconnected.

    Kernels answer an unconnected socket with ENOTCONN (connection types) or
    EINVAL (datagram types); both mean "no peer" to the caller.
    """
    try:
        return sock.getsockopt(level, optname, size)
    except OSError as exc:
        if exc.errno in (errno.ENOTCONN, errno.EINVAL):
            raise OSError(errno.ENOTCONN, "socket has no connected peer") from exc
        raise


def unpack_exact(layout: struct.Struct, raw: bytes, what: str) -> Tuple[int, ...]:
    """Unpack ``raw`` with ``layout``, naming the struct when the size is wrong."""
    if len(raw) < layout.size:
        raise OSError(
            errno.EPROTO, f"kernel returned {len(raw)} bytes for {what}; expected {layout.size}"
        )
    return layout.unpack_from(raw)


def xucred_groups(ngroups: int, groups: Tuple[int, ...]) -> Tuple[int, ...]:
    """The valid prefix of an ``xucred.cr_groups`` array (``cr_groups[0]`` is the egid)."""
    if not 0 < ngroups <= len(groups):
        raise OSError(
            errno.EPROTO, f"xucred reports {ngroups} groups; the array holds {len(groups)}"
        )
    return groups[:ngroups]
