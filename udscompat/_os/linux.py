"""Linux: abstract addresses, SO_PEERCRED, MSG_CMSG_CLOEXEC, 253 fds per message.

Sources: glibc ``bits/socket.h``, ``sys/un.h``, ``asm-generic/socket.h`` on
Debian 12; ``net/unix/af_unix.c``; ``include/net/scm.h`` (os-facts §2).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import cmsg_space
from udscompat._os._posix import (
    Cmsg,
    credentials_of,
    getsockopt_bytes,
    received,
    unpack_exact,
)
from udscompat._records import ConnCredentials

OS_NAME = "Linux"
SUN_PATH_SIZE = 108  # sys/un.h: char sun_path[108]
MAX_PATH_BYTES = SUN_PATH_SIZE - 1  # CPython needs room for the NUL
SOL_SOCKET = 1
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x80
MSG_TRUNC = 0x20
MSG_CTRUNC = 0x08
MSG_CMSG_CLOEXEC: Optional[int] = 0x40000000
CMSGHDR_SIZE = 16  # size_t cmsg_len; int cmsg_level; int cmsg_type
CMSG_ALIGNMENT = 8  # sizeof(size_t)
MAX_FDS_PER_MESSAGE: Optional[int] = 253  # include/net/scm.h: SCM_MAX_FD
SCM_PIDFD = 0x4C  # asm-generic/socket.h, with SO_PASSPIDFD a pidfd arrives per message
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = (SCM_PIDFD,)
SEQPACKET_SEND_FLAGS = 0
SO_TIMESTAMP = 29  # asm-generic/socket.h: SO_TIMESTAMP_OLD == SCM_TIMESTAMP
# __unix_dgram_recvmsg adds SCM_TIMESTAMP to every message when SO_TIMESTAMP is set,
# and nothing at end-of-stream: that tells a zero-length message from EOF.
# (SO_PASSCRED would too, but makes every send autobind an abstract name.)
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = (SOL_SOCKET, SO_TIMESTAMP, SO_TIMESTAMP)
HOLD_SENT_FDS = False

SO_PEERCRED = 17
SO_PEERGROUPS = 59
UCRED = struct.Struct("=iII")  # struct ucred { pid_t pid; uid_t uid; gid_t gid; }
_UNSET_ID = 0xFFFFFFFF  # (uid_t)-1: what SO_PEERCRED reports for a socket without a peer
_GID = struct.Struct("=I")


def decode_peercred(raw: bytes, groups_raw: Optional[bytes] = None) -> ConnCredentials:
    """Decode ``struct ucred`` (and the ``gid_t`` array of ``SO_PEERGROUPS``)."""
    pid, uid, gid = unpack_exact(UCRED, raw, "struct ucred")
    if uid == _UNSET_ID and gid == _UNSET_ID:
        raise OSError(errno.ENOTCONN, "socket has no connected peer (SO_PEERCRED is unset)")
    groups = None
    if groups_raw is not None:
        count = len(groups_raw) // _GID.size
        groups = struct.unpack(f"={count}I", groups_raw[: count * _GID.size])
    # pid 0: the peer is in a pid namespace this process cannot see.
    return ConnCredentials(pid if pid > 0 else None, uid, gid, groups)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``SO_PEERCRED``, plus ``SO_PEERGROUPS`` (Linux 4.13+) for the groups."""
    raw = getsockopt_bytes(sock, SOL_SOCKET, SO_PEERCRED, UCRED.size)
    return decode_peercred(raw, _peer_groups(sock))


def _peer_groups(sock: socket.socket) -> Optional[bytes]:
    # NGROUPS_MAX is 65536; start small and retry once at the size ERANGE implies.
    for size in (64 * _GID.size, 65536 * _GID.size):
        try:
            return sock.getsockopt(SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            if exc.errno in (errno.ENOPROTOOPT, errno.ENODATA):
                return None  # kernel before 4.13, or no groups recorded
            raise
    return None


# -- ancillary credentials (SCM_CREDENTIALS) and the security label (SO_PEERSEC) --------------
# asm-generic/socket.h: SO_PASSCRED 16, SO_PEERSEC 31; bits/socket.h: SCM_CREDENTIALS 0x02.
SO_PASSCRED = 16
SCM_CREDENTIALS = 2
SO_PEERSEC = 31
# net/core/scm.c __scm_send/scm_check_creds: the sender's own pid and any of its real,
# effective or saved ids; others with CAP_SYS_ADMIN (pid), CAP_SETUID, CAP_SETGID.
SENDER_NAMES_CREDENTIALS = True
CREDENTIALS_WITH_FDS = True
# One ucred, plus a pidfd should SO_PASSPIDFD be on (closed by the fd path).
CREDENTIALS_ROOM = cmsg_space(UCRED.size, CMSGHDR_SIZE, CMSG_ALIGNMENT) + cmsg_space(
    4, CMSGHDR_SIZE, CMSG_ALIGNMENT
)
#: SO_PEERSEC buffer sizes to try: a label rarely passes 256 bytes; ERANGE asks for more.
_LABEL_SIZES = (256, 4096, 65536)


def pass_credentials(sock: socket.socket, enable: bool) -> None:
    """``SO_PASSCRED``: every message received carries the sender's ``ucred``.

    Side effect (af_unix.c): a socket with SO_PASSCRED that connects or sends
    while unbound is autobound to an abstract name.
    """
    sock.setsockopt(SOL_SOCKET, SO_PASSCRED, 1 if enable else 0)


def credentials_cmsg(creds: SendCredentials) -> Optional[Cmsg]:
    """``SCM_CREDENTIALS`` with ``struct ucred {pid, uid, gid}``; the kernel checks the claim."""
    return (SOL_SOCKET, SCM_CREDENTIALS, UCRED.pack(creds.pid, creds.uid, creds.gid))


def decode_scm_credentials(raw: bytes) -> ReceivedCredentials:
    """Decode the ``struct ucred`` of an ``SCM_CREDENTIALS`` message (one uid, one gid)."""
    pid, uid, gid = unpack_exact(UCRED, raw, "SCM_CREDENTIALS ucred")
    return received("SCM_CREDENTIALS ucred", pid, uid, gid, None, None, None)


def credentials_from_cmsgs(ancdata: Sequence[Cmsg]) -> Optional[ReceivedCredentials]:
    """The ``SCM_CREDENTIALS`` among ``ancdata`` (the kernel never merges two senders' data)."""
    return credentials_of(ancdata, SOL_SOCKET, SCM_CREDENTIALS, decode_scm_credentials)


def decode_security_label(raw: bytes) -> Optional[bytes]:
    """An ``SO_PEERSEC`` label without the C string's NUL; ``None`` for an empty one."""
    label = raw.rstrip(b"\0")
    return label or None


def peer_security_label(sock: socket.socket) -> Optional[bytes]:
    """``SO_PEERSEC``; ``None`` when no LSM gave the peer a label (ENOPROTOOPT)."""
    for size in _LABEL_SIZES:
        try:
            raw = sock.getsockopt(SOL_SOCKET, SO_PEERSEC, size)
        except OSError as exc:
            if exc.errno == errno.ERANGE:
                continue
            if exc.errno == errno.ENOPROTOOPT:
                return None
            raise
        return decode_security_label(raw)
    raise OSError(errno.ERANGE, f"SO_PEERSEC label longer than {_LABEL_SIZES[-1]} bytes")
