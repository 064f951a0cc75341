"""What FreeBSD and DragonFly BSD share byte for byte: ``struct cmsgcred``.

Both headers define it identically (FreeBSD ``sys/sys/socket.h`` as shipped
in ziglang/zig ``generic-freebsd`` @1bde4cb4; DragonFlyBSD ``sys/sys/socket.h``
03d6a592, "$DragonFly: src/sys/sys/socket.h,v 1.12"), and both kernels'
``unp_internalize`` fill it in for a sender that attaches an ``SCM_CREDS``:
pid, real uid, effective uid, real gid and up to ``CMGROUP_MAX`` groups, of
which ``cmcred_groups[0]`` is the effective gid.
"""

from __future__ import annotations

import struct

from udscompat._msgcreds import ReceivedCredentials
from udscompat._os._posix import group_array, received, unpack_exact

__all__ = ["CMGROUP_MAX", "CMSGCRED", "SCM_CREDS", "decode_cmsgcred"]

SCM_CREDS = 0x03
CMGROUP_MAX = 16
# struct cmsgcred { pid_t cmcred_pid; uid_t cmcred_uid; uid_t cmcred_euid; gid_t cmcred_gid;
#                   short cmcred_ngroups; gid_t cmcred_groups[CMGROUP_MAX]; }  -- 84 bytes
CMSGCRED = struct.Struct("=iIIIh2x16I")
_GROUPS_OFFSET = 20  # after the short and its 2 bytes of padding


def decode_cmsgcred(raw: bytes) -> ReceivedCredentials:
    """Decode ``struct cmsgcred`` (``cmcred_groups[0]`` is the effective gid)."""
    pid, uid, euid, gid, ngroups = unpack_exact(CMSGCRED, raw, "struct cmsgcred")[:5]
    groups = group_array(raw, _GROUPS_OFFSET, ngroups, CMGROUP_MAX, "struct cmsgcred")
    egid = groups[0] if groups else None
    return received("struct cmsgcred", pid, uid, gid, euid, egid, groups)
