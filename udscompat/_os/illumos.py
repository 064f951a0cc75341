"""illumos: getpeerucred(3C), SCM_RIGHTS 0x1010, SOCK_STREAM/SOCK_DGRAM swapped.

Sources: illumos-gate ``usr/src/uts/common/sys/un.h`` 1e109f45,
``sys/socket.h``, ``sock2path.d/system%2Fkernel`` 5f570424, sockfs
``socksubr.c`` (os-facts §2).  No credentials getsockopt exists: the
opaque ``ucred_t`` is read through libc with ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
from typing import Any, Optional, Tuple

from udscompat._records import ConnCredentials

OS_NAME = "illumos"
SUN_PATH_SIZE = 108  # sys/un.h: char sun_path[108]
MAX_PATH_BYTES = SUN_PATH_SIZE - 1
SOL_SOCKET = 0xFFFF
SCM_RIGHTS = 0x1010
SOCK_STREAM = 2  # the reverse of every other system here
SOCK_DGRAM = 1
SOCK_SEQPACKET = 6  # mapped to /dev/ticotsord, like STREAM: record boundaries are probed
MSG_EOR = 0x8
MSG_TRUNC = 0x20  # TRUNC and CTRUNC swapped compared with the BSDs
MSG_CTRUNC = 0x10
MSG_CMSG_CLOEXEC: Optional[int] = None  # not in the header read; Python's value is probed
CMSGHDR_SIZE = 12
CMSG_ALIGNMENT = 4  # _CMSG_HDR_ALIGNMENT on x86
MAX_FDS_PER_MESSAGE: Optional[int] = None
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = ()
SEQPACKET_SEND_FLAGS = 0
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = None
HOLD_SENT_FDS = False


def decode_ucred(libc: Any, ucred: ctypes.c_void_p) -> ConnCredentials:
    """Read euid, egid, pid and groups out of an opaque ``ucred_t``.

    ``libc`` provides ``ucred_geteuid``, ``ucred_getegid``, ``ucred_getpid``
    and ``ucred_getgroups`` with their ucred(3C) signatures; each reports
    "not available" as -1.
    """
    euid = libc.ucred_geteuid(ucred)
    egid = libc.ucred_getegid(ucred)
    if euid == -1 or egid == -1:
        raise OSError(errno.EPROTO, "getpeerucred returned no effective ids")
    pid = libc.ucred_getpid(ucred)
    groups_ptr = ctypes.POINTER(ctypes.c_uint)()
    count = libc.ucred_getgroups(ucred, ctypes.byref(groups_ptr))
    groups = tuple(groups_ptr[i] for i in range(count)) if count > 0 else None
    return ConnCredentials(pid if pid > 0 else None, euid, egid, groups)


def _load_libc() -> Any:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.1", use_errno=True)
    libc.getpeerucred.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_void_p)]
    for name in ("ucred_geteuid", "ucred_getegid", "ucred_getpid"):
        getattr(libc, name).argtypes = [ctypes.c_void_p]
        getattr(libc, name).restype = ctypes.c_int
    libc.ucred_getgroups.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    libc.ucred_free.argtypes = [ctypes.c_void_p]
    libc.ucred_free.restype = None
    return libc


def peer_credentials(sock: socket.socket) -> ConnCredentials:
    """``getpeerucred(3C)`` through ctypes, then ``ucred_free``."""
    libc = _load_libc()
    ucred = ctypes.c_void_p(None)
    if libc.getpeerucred(sock.fileno(), ctypes.byref(ucred)) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOTCONN, errno.EINVAL):
            raise OSError(errno.ENOTCONN, "socket has no connected peer")
        raise OSError(err, os.strerror(err))
    try:
        return decode_ucred(libc, ucred)
    finally:
        libc.ucred_free(ucred)
