"""FreeBSD: LOCAL_PEERCRED with a pid (13+), MSG_EOR-marked seqpacket records (15+).

Sources: freebsd-src ``sys/sys/un.h``, ``sys/sys/socket.h``, ``sys/sys/ucred.h``;
``sys/kern/uipc_usrreq.c`` (2025 HEAD and b7a3af0b) (os-facts §2).  Ancillary
credentials: ``sys/sys/socket.h`` and ``sys/sys/un.h`` as shipped in
ziglang/zig ``lib/libc/include/generic-freebsd`` @1bde4cb4 (a header set with
MSG_CMSG_CLOFORK, so 15-era); ``uipc_usrreq.c`` ``unp_internalize`` and
``unp_addsockcred(td, control, mode, ...)`` (13+, the LOCAL_CREDS_PERSISTENT one).
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Optional, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import cmsg_space
from udscompat._os._bsd import CMGROUP_MAX, CMSGCRED, SCM_CREDS, decode_cmsgcred
from udscompat._os._posix import (
    NO_SECURITY_LABEL,
    Cmsg,
    credentials_of,
    getsockopt_bytes,
    group_array,
    payloads,
    received,
    refuse,
    unpack_exact,
    xucred_groups,
)
from udscompat._os._posix import bound_unix_sockets as bound_unix_sockets
from udscompat._os._posix import control_room_before_rights as control_room_before_rights
from udscompat._records import ConnCredentials

OS_NAME = "FreeBSD"
SUN_PATH_SIZE = 104  # sys/un.h: SUNPATHLEN 104
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x8
MSG_TRUNC = 0x10
MSG_CTRUNC = 0x20
MSG_CMSG_CLOEXEC: Optional[int] = 0x00040000  # since FreeBSD 10 (jilles, c9066bd)
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8  # _ALIGNBYTES + 1 on amd64 and arm64
# unp_internalize: CMSG_SPACE(n * sizeof(void *)) > MCLBYTES (2048) -> EMSGSIZE: 254 (inferred).
MAX_FDS_PER_MESSAGE: Optional[int] = 254
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
# FreeBSD 15 ends a seqpacket record only where the sender passed MSG_EOR
# (tokio-seqpacket 0.8.1, bfffs#370); older kernels accept and ignore the flag.
SEQPACKET_SEND_FLAGS = MSG_EOR
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False
# unp_bind: ACCESSPERMS less the umask (inferred; os.address.mode_from_socket measures it).
BIND_MODE_FROM_SOCKET = False
FD_PATH: Optional[str] = None

SOL_LOCAL = 0  # uipc_ctloutput rejects any other level with EINVAL
LOCAL_PEERCRED = 1
# struct xucred { u_int cr_version; uid_t cr_uid; short cr_ngroups; gid_t cr_groups[16];
#                 union { void *_cr_unused1; pid_t cr_pid; }; }  -- 88 bytes on LP64
XUCRED = struct.Struct("=IIh2x16I4xi4x")
XUCRED_VERSION = 0


def decode_peercred(raw: bytes) -> ConnCredentials:
    """Decode FreeBSD's ``struct xucred``; ``cr_pid`` is 0 before FreeBSD 13."""
    version, uid, ngroups, *rest = unpack_exact(XUCRED, raw, "struct xucred")
    if version != XUCRED_VERSION:
        raise OSError(errno.EPROTO, f"unknown xucred version {version}")
    groups, pid = tuple(rest[:16]), rest[16]
    valid = xucred_groups(ngroups, groups)
    return ConnCredentials(pid if pid > 0 else None, uid, valid[0], valid)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getsockopt(0, LOCAL_PEERCRED)``."""
    return decode_peercred(getsockopt_bytes(sock, SOL_LOCAL, LOCAL_PEERCRED, XUCRED.size))


# -- ancillary credentials (SCM_CREDS, SCM_CREDS2) ----------------------------------------------
# sys/un.h: LOCAL_CREDS 2, LOCAL_CREDS_PERSISTENT 3 (level SOL_LOCAL);
# sys/socket.h: SCM_CREDS2 0x08 (SCM_CREDS, CMGROUP_MAX and struct cmsgcred: _os/_bsd.py).
LOCAL_CREDS = 2
LOCAL_CREDS_PERSISTENT = 3
SCM_CREDS2 = 0x08
# struct sockcred { uid_t sc_uid; uid_t sc_euid; gid_t sc_gid; gid_t sc_egid; int sc_ngroups;
#                   gid_t sc_groups[1]; }  -- SOCKCREDSIZE(n) = 20 + 4n
SOCKCRED = struct.Struct("=IIIIi")
# struct sockcred2 { int sc_version; pid_t sc_pid; uid_t sc_uid; uid_t sc_euid; gid_t sc_gid;
#                    gid_t sc_egid; int sc_ngroups; gid_t sc_groups[1]; }  -- 28 + 4n
SOCKCRED2 = struct.Struct("=iiIIIIi")
SOCKCRED2_VERSION = 0
# unp_internalize overwrites whatever a sender puts in an SCM_CREDS cmsgcred.
SENDER_NAMES_CREDENTIALS = False
CREDENTIALS_WITH_FDS = True  # unp_internalize walks every cmsg of the message
# A sender's cmsgcred and the receiver's sockcred2 may both come with one message.
CREDENTIALS_ROOM = cmsg_space(CMSGCRED.size, CMSGHDR_SIZE, CMSG_ALIGNMENT) + cmsg_space(
    SOCKCRED2.size + 4 * CMGROUP_MAX, CMSGHDR_SIZE, CMSG_ALIGNMENT
)


def pass_credentials(sock: socket.socket, enable: bool) -> None:
    """``LOCAL_CREDS_PERSISTENT``: every message brings an ``SCM_CREDS2`` sockcred2.

    The one-shot ``LOCAL_CREDS`` is switched off first: the two are
    exclusive (EINVAL), and its ``SCM_CREDS`` sockcred has the type number of
    a sender's cmsgcred.  Needs FreeBSD 13.
    """
    if not enable:
        sock.setsockopt(SOL_LOCAL, LOCAL_CREDS_PERSISTENT, 0)
        return
    sock.setsockopt(SOL_LOCAL, LOCAL_CREDS, 0)
    try:
        sock.setsockopt(SOL_LOCAL, LOCAL_CREDS_PERSISTENT, 1)
    except OSError as exc:
        if exc.errno in (errno.ENOPROTOOPT, errno.EINVAL):
            refuse(
                "per-message credentials",
                OS_NAME,
                f"setsockopt(LOCAL_CREDS_PERSISTENT) failed with errno {exc.errno} "
                "(it came with FreeBSD 13)",
            )
        raise


def credentials_cmsg(creds: SendCredentials) -> Optional[Cmsg]:
    """An empty ``SCM_CREDS`` cmsgcred: the kernel fills it in with the sender's own."""
    return (SOL_SOCKET, SCM_CREDS, bytes(CMSGCRED.size))


def decode_sockcred(raw: bytes) -> ReceivedCredentials:
    """Decode ``struct sockcred`` (LOCAL_CREDS: no pid)."""
    uid, euid, gid, egid, ngroups = unpack_exact(SOCKCRED, raw, "struct sockcred")
    groups = group_array(raw, SOCKCRED.size, ngroups, CMGROUP_MAX, "struct sockcred")
    return received("struct sockcred", None, uid, gid, euid, egid, groups)


def decode_sockcred2(raw: bytes) -> ReceivedCredentials:
    """Decode ``struct sockcred2`` (LOCAL_CREDS_PERSISTENT)."""
    version, pid, uid, euid, gid, egid, ngroups = unpack_exact(SOCKCRED2, raw, "struct sockcred2")
    if version != SOCKCRED2_VERSION:
        raise OSError(errno.EPROTO, f"unknown sockcred2 version {version}")
    groups = group_array(raw, SOCKCRED2.size, ngroups, CMGROUP_MAX, "struct sockcred2")
    return received("struct sockcred2", pid, uid, gid, euid, egid, groups)


def decode_scm_creds(raw: bytes) -> ReceivedCredentials:
    """An ``SCM_CREDS`` payload: a sender's cmsgcred (84 bytes) or a LOCAL_CREDS sockcred.

    The two share a type number.  A sockcred is 20 + 4n bytes, so only one
    with exactly 16 groups has a cmsgcred's size; ``pass_credentials``
    never enables LOCAL_CREDS (it switches it off), so on a socket it set up
    an 84-byte SCM_CREDS is always a cmsgcred.
    """
    return decode_cmsgcred(raw) if len(raw) == CMSGCRED.size else decode_sockcred(raw)


def credentials_from_cmsgs(ancdata: Sequence[Cmsg]) -> Optional[ReceivedCredentials]:
    """The receiver's ``SCM_CREDS2`` if present, else any ``SCM_CREDS``.

    A sender cannot forge either: unp_internalize rebuilds every control
    message, and rejects SCM_CREDS2 with EINVAL.
    """
    persistent = credentials_of(ancdata, SOL_SOCKET, SCM_CREDS2, decode_sockcred2)
    if persistent is not None or payloads(ancdata, SOL_SOCKET, SCM_CREDS2):
        return persistent
    return credentials_of(ancdata, SOL_SOCKET, SCM_CREDS, decode_scm_creds)


def peer_security_label(sock: socket.socket) -> Optional[bytes]:
    """No SO_PEERSEC."""
    refuse("peer security labels", OS_NAME, NO_SECURITY_LABEL)
