"""NetBSD: LOCAL_PEEREID at level 0.

Sources: NetBSD/src ``sys/sys/un.h`` rev 1.46.12.1 and rev 1.57 (2016),
``sys/sys/socket.h`` rev 1.119, ``sys/kern/uipc_usrreq.c`` rev 1.124 and
rev 1.180 (2016); unix(4) of NetBSD 7.0.2 and current (os-facts §2).  Every
value below was also checked against a running NetBSD 7.99.34 kernel (a rump
kernel built from src-netbsd 82f3a69; ``tests/test_kernels_netbsd.py``).
"""

from __future__ import annotations

import socket
import struct
from typing import Optional, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import cmsg_space
from udscompat._os._posix import (
    NO_SECURITY_LABEL,
    Cmsg,
    credentials_of,
    getsockopt_bytes,
    group_array,
    received,
    refuse,
    unpack_exact,
)
from udscompat._os._posix import bound_unix_sockets as bound_unix_sockets
from udscompat._os._posix import control_room_before_rights as control_room_before_rights
from udscompat._records import ConnCredentials

OS_NAME = "NetBSD"
SUN_PATH_SIZE = 104
# The kernel itself takes paths up to 253 bytes in an oversized sockaddr (sun_len is one
# byte); CPython refuses anything that does not fit sizeof(sun_path) with its NUL.
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 1
SOCK_STREAM = 1
SOCK_DGRAM = 2
SOCK_SEQPACKET = 5
MSG_EOR = 0x8
MSG_TRUNC = 0x10
MSG_CTRUNC = 0x20
MSG_CMSG_CLOEXEC: Optional[int] = 0x800  # socket.h rev 1.119; honoured by the 7.99.34 kernel
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 8
# uipc_usrreq.c rev 1.180: unp_internalize() turns each 4-byte fd into an 8-byte file
# pointer, so n fds take CMSG_SPACE(8 * n) bytes of the receiver's buffer, and uipc_send()
# ignores sbappendcontrol() failing for lack of room: the message is dropped while sendmsg
# reports success.  With the default 4096-byte stream/seqpacket buffers (and one data byte)
# 509 fds arrive and 510 vanish (measured).  A partly filled receive buffer lowers the
# count further; no sender-side limit can prevent that.
MAX_FDS_PER_MESSAGE: Optional[int] = 509
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False
# unp_bind: ACCESSPERMS less the umask (inferred; os.address.mode_from_socket measures it).
BIND_MODE_FROM_SOCKET = False
FD_PATH: Optional[str] = None

LOCAL_PEEREID = 3  # level 0: "SOL_SOCKET will not work" (ENOPROTOOPT there)
UNPCBID = struct.Struct("=iII")  # struct unpcbid { pid_t unp_pid; uid_t unp_euid; gid_t unp_egid; }


def decode_peercred(raw: bytes) -> ConnCredentials:
    """Decode ``struct unpcbid``."""
    pid, euid, egid = unpack_exact(UNPCBID, raw, "struct unpcbid")
    return ConnCredentials(pid if pid > 0 else None, euid, egid, None)


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getsockopt(0, LOCAL_PEEREID)``."""
    return decode_peercred(getsockopt_bytes(sock, 0, LOCAL_PEEREID, UNPCBID.size))


# -- ancillary credentials (LOCAL_CREDS -> SCM_CREDS sockcred) ----------------------------------
# Sources: NetBSD/src sys/sys/un.h rev 1.60 (2021; LOCAL_OCREDS 0x0001 is the pre-7.0
# LOCAL_CREDS, LOCAL_CREDS 0x0004); sys/sys/socket.h rev 1.131.4.1 (2024, netbsd-10):
# SCM_CREDS 0x10, struct sockcred, SOCKCREDSIZE; sys/kern/uipc_usrreq.c rev 1.180 (2016,
# the rump kernel's): unp_addsockcred, and "unp_internalize() rejects any control message
# other than SCM_RIGHTS ... preventing a caller from forging SCM_CREDS".
LOCAL_CREDS = 0x0004  # level 0 (SOL_LOCAL)
SCM_CREDS = 0x10
NGROUPS_MAX = 16  # sys/syslimits.h; kauth_cred_ngroups() never exceeds it
# struct sockcred { pid_t sc_pid; uid_t sc_uid; uid_t sc_euid; gid_t sc_gid; gid_t sc_egid;
#                   int sc_ngroups; gid_t sc_groups[1]; }  -- SOCKCREDSIZE(n) = 24 + 4n
SOCKCRED = struct.Struct("=iIIIIi")
SENDER_NAMES_CREDENTIALS = False
CREDENTIALS_WITH_FDS = True  # the kernel adds its sockcred next to the sender's SCM_RIGHTS
CREDENTIALS_ROOM = cmsg_space(SOCKCRED.size + 4 * NGROUPS_MAX, CMSGHDR_SIZE, CMSG_ALIGNMENT)


def pass_credentials(sock: socket.socket, enable: bool) -> None:
    """``LOCAL_CREDS``: the kernel adds an ``SCM_CREDS`` sockcred to what arrives.

    To every datagram; on a stream or seqpacket socket only to the first
    message sent after the option is set (uipc_send clears UNP_WANTCRED).
    """
    sock.setsockopt(0, LOCAL_CREDS, 1 if enable else 0)


def credentials_cmsg(creds: SendCredentials) -> Optional[Cmsg]:
    """Nothing to attach: the receiver's LOCAL_CREDS makes the kernel add them."""
    return None


def decode_sockcred(raw: bytes) -> ReceivedCredentials:
    """Decode NetBSD's ``struct sockcred`` (pid first, unlike FreeBSD's)."""
    pid, uid, euid, gid, egid, ngroups = unpack_exact(SOCKCRED, raw, "struct sockcred")
    groups = group_array(raw, SOCKCRED.size, ngroups, NGROUPS_MAX, "struct sockcred")
    return received("struct sockcred", pid, uid, gid, euid, egid, groups)


def credentials_from_cmsgs(ancdata: Sequence[Cmsg]) -> Optional[ReceivedCredentials]:
    """The ``SCM_CREDS`` sockcred among ``ancdata`` (only the kernel can put one there)."""
    return credentials_of(ancdata, SOL_SOCKET, SCM_CREDS, decode_sockcred)


def peer_security_label(sock: socket.socket) -> Optional[bytes]:
    """No SO_PEERSEC."""
    refuse("peer security labels", OS_NAME, NO_SECURITY_LABEL)
