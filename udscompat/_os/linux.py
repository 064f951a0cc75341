"""Linux: abstract addresses, SO_PEERCRED, MSG_CMSG_CLOEXEC, 253 fds per message.

Sources: glibc ``bits/socket.h``, ``sys/un.h``, ``asm-generic/socket.h`` on
Debian 12; ``net/unix/af_unix.c``; ``include/net/scm.h`` (os-facts §2);
``linux/netlink.h``, ``linux/sock_diag.h``, ``linux/unix_diag.h`` of
linux-libc-dev 6.1 (Debian 12) for the socket table.
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import struct
from typing import Iterator, List, Optional, Sequence, Tuple

from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._os import BoundSocket, cmsg_space
from udscompat._os._posix import (
    Cmsg,
    credentials_of,
    getsockopt_bytes,
    received,
    refuse,
    unpack_exact,
)
from udscompat._records import ConnCredentials

OS_NAME = "Linux"
SUN_PATH_SIZE = 108  # sys/un.h: char sun_path[108]
# A path that fills sun_path without a NUL is accepted (unix_mkname_bsd terminates it);
# CPython refuses one, so udscompat reaches it through /proc/self/fd of its directory.
MAX_PATH_BYTES = SUN_PATH_SIZE
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
SCM_PIDFD = 0x04  # include/linux/socket.h (not SO_PASSPIDFD's 76): a pidfd per message
FD_CARRYING_CMSG_TYPES: Tuple[int, ...] = (SCM_PIDFD,)
SEQPACKET_SEND_FLAGS = 0
SO_TIMESTAMP = 29  # asm-generic/socket.h: SO_TIMESTAMP_OLD == SCM_TIMESTAMP
# __unix_dgram_recvmsg adds SCM_TIMESTAMP to every message when SO_TIMESTAMP is set,
# and nothing at end-of-stream: that tells a zero-length message from EOF.
# (SO_PASSCRED would too, but makes every send autobind an abstract name.)
MESSAGE_MARKER: Optional[Tuple[int, int, int]] = (SOL_SOCKET, SO_TIMESTAMP, SO_TIMESTAMP)
HOLD_SENT_FDS = False
# af_unix.c unix_bind_bsd: mode = S_IFSOCK | (SOCK_INODE(sock)->i_mode & ~current_umask()).
BIND_MODE_FROM_SOCKET = True
# procfs: the magic link of an open descriptor resolves to that very file or directory.
FD_PATH: Optional[str] = "/proc/self/fd/{}"

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
            if exc.errno in (errno.ENOPROTOOPT, errno.ENODATA, errno.EINVAL):
                # Kernel before 4.13, no groups recorded, or a Linux-ABI layer without the
                # option (NetBSD's compat_linux answers EINVAL for options it does not map).
                return None
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
_UNKNOWN_OPTION = "the kernel does not know {} ({}): a Linux-ABI layer without it"
#: SO_PEERSEC buffer sizes to try: a label rarely passes 256 bytes; ERANGE asks for more.
_LABEL_SIZES = (256, 4096, 65536)


def pass_credentials(sock: socket.socket, enable: bool) -> None:
    """``SO_PASSCRED``: every message received carries the sender's ``ucred``.

    Side effect (af_unix.c): a socket with SO_PASSCRED that connects or sends
    while unbound is autobound to an abstract name.
    """
    try:
        sock.setsockopt(SOL_SOCKET, SO_PASSCRED, 1 if enable else 0)
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOPROTOOPT):
            refuse("ancillary credentials", OS_NAME, _no_passcred(exc))
        raise


def _no_passcred(exc: OSError) -> str:
    # Linux always has SO_PASSCRED; a Linux-ABI layer may not (NetBSD's compat_linux,
    # linux_socket.c rev 1.131: EINVAL) and then drops SCM_CREDENTIALS too.
    return _UNKNOWN_OPTION.format("SO_PASSCRED", exc)


@functools.cache
def _credentials_refusal() -> Optional[str]:
    """Why this kernel has no ancillary credentials, or None: SO_PASSCRED set (off) on a
    private socketpair, once."""
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        try:
            a.setsockopt(SOL_SOCKET, SO_PASSCRED, 0)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOPROTOOPT):
                return _no_passcred(exc)
            raise
    return None


def credentials_cmsg(creds: SendCredentials) -> Optional[Cmsg]:
    """``SCM_CREDENTIALS`` with ``struct ucred {pid, uid, gid}``; the kernel checks the claim.

    Raises ``UnsupportedError`` on a Linux-ABI layer without SO_PASSCRED.
    """
    refusal = _credentials_refusal()
    if refusal is not None:
        refuse("ancillary credentials", OS_NAME, refusal)
    return (SOL_SOCKET, SCM_CREDENTIALS, UCRED.pack(creds.pid, creds.uid, creds.gid))


def decode_scm_credentials(raw: bytes) -> ReceivedCredentials:
    """Decode the ``struct ucred`` of an ``SCM_CREDENTIALS`` message (one uid, one gid)."""
    pid, uid, gid = unpack_exact(UCRED, raw, "SCM_CREDENTIALS ucred")
    return received("SCM_CREDENTIALS ucred", pid, uid, gid, None, None, None)


def credentials_from_cmsgs(ancdata: Sequence[Cmsg]) -> Optional[ReceivedCredentials]:
    """The ``SCM_CREDENTIALS`` among ``ancdata`` (the kernel never merges two senders' data)."""
    return credentials_of(ancdata, SOL_SOCKET, SCM_CREDENTIALS, decode_scm_credentials)


# -- the control room before SCM_RIGHTS (a peek that must install no descriptor) ------------
#: struct __kernel_old_timeval {__kernel_long_t tv_sec, tv_usec}: SO_TIMESTAMP's payload.
_OLD_TIMEVAL_SIZE = struct.calcsize("2l")


def control_room_before_rights(sock: socket.socket) -> Optional[int]:
    """Control-buffer bytes that hold what Linux puts before SCM_RIGHTS on ``sock``, and no fd.

    A receive's control messages come in a fixed order: ``__unix_dgram_recvmsg``
    (datagram and seqpacket) puts SCM_TIMESTAMP first when SO_TIMESTAMP is on
    (``unix_stream_read_generic`` puts none), then ``scm_recv``
    (``__scm_recv_common``, net/core/scm.c) SCM_CREDENTIALS when SO_PASSCRED is
    on, SCM_SECURITY when SO_PASSSEC is, then ``scm_detach_fds``, then
    SCM_PIDFD.  ``scm_detach_fds`` installs ``scm_max_fds()`` descriptors, which
    is 0 when ``msg_controllen <= sizeof(struct cmsghdr)`` is left, and then
    sets MSG_CTRUNC if descriptors were pending; a peek leaves the message
    queued.  So a peek with exactly this room installs nothing and reports
    MSG_CTRUNC exactly when descriptors were there -- or when something this
    does not count (SO_PASSSEC's label, SO_PASSPIDFD's pidfd, SO_TIMESTAMPNS or
    the 64-bit-time timestamps) did not fit, which only takes room from the
    descriptors, never gives them more.  An option the kernel will not report
    (a Linux-ABI layer answering EINVAL) counts as off, for the same reason.
    NetBSD's Linux ABI (compat_linux, measured in a 7.99.34 rump kernel: EINVAL
    for SO_TIMESTAMP and SO_PASSCRED, so 0 here) installs nothing on a peek at
    all, and with 16 bytes or fewer reports neither its kernel pointers nor
    MSG_CTRUNC: there such a peek sees a message with descriptors as one
    without (tests/test_peek_attacks_rump.py).
    """
    room = 0
    # The kernel's type, not sock.type: socket.fromfd() and socket.socket(fileno=) take the
    # caller's word for it, and a timestamp counted on a stream socket leaves room for copies.
    kind = sock.getsockopt(SOL_SOCKET, socket.SO_TYPE)
    if kind != SOCK_STREAM and _option_on(sock, SO_TIMESTAMP):
        room += socket.CMSG_SPACE(_OLD_TIMEVAL_SIZE)
    if _option_on(sock, SO_PASSCRED):
        room += socket.CMSG_SPACE(UCRED.size)
    return room


def _option_on(sock: socket.socket, option: int) -> bool:
    try:
        return sock.getsockopt(SOL_SOCKET, option) != 0
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.ENOPROTOOPT):
            return False
        raise


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
            if exc.errno == errno.EINVAL:  # never Linux's answer: a layer without the option
                refuse("security labels", OS_NAME, _UNKNOWN_OPTION.format("SO_PEERSEC", exc))
            raise
        return decode_security_label(raw)
    raise OSError(errno.ERANGE, f"SO_PEERSEC label longer than {_LABEL_SIZES[-1]} bytes")


# -- the socket table: sock_diag (linux/sock_diag.h, linux/unix_diag.h) ------------------------

NETLINK_SOCK_DIAG = 4  # linux/netlink.h; not in Python's socket module
SOCK_DIAG_BY_FAMILY = 20  # linux/sock_diag.h
NLM_F_REQUEST = 0x01  # linux/netlink.h
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSGHDR = struct.Struct("=IHHII")  # nlmsg_len, nlmsg_type, nlmsg_flags, nlmsg_seq, nlmsg_pid
NLATTR = struct.Struct("=HH")  # struct nlattr { __u16 nla_len; __u16 nla_type; }
# struct unix_diag_req { __u8 sdiag_family, sdiag_protocol; __u16 pad; __u32 udiag_states,
# udiag_ino, udiag_show, udiag_cookie[2]; }
UNIX_DIAG_REQ = struct.Struct("=BBHIIIII")
# struct unix_diag_msg { __u8 udiag_family, udiag_type, udiag_state, pad; __u32 udiag_ino,
# udiag_cookie[2]; }
UNIX_DIAG_MSG = struct.Struct("=BBBBIII")
UNIX_DIAG_VFS_ = struct.Struct(
    "=II"
)  # struct unix_diag_vfs { __u32 udiag_vfs_ino, udiag_vfs_dev; }
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_VFS = 0x02
UNIX_DIAG_NAME = 0  # attribute types: the enum starts at UNIX_DIAG_NAME = 0
UNIX_DIAG_VFS = 1
TCP_ESTABLISHED = 1  # netinet/tcp.h: a unix socket's sk_state reuses the TCP state numbers
TCP_LISTEN = 10
ALL_STATES = 0xFFFFFFFF
# udiag_vfs_dev is the kernel's dev_t (MAJOR << 20 | MINOR, include/linux/kdev_t.h), not
# the st_dev encoding; udiag_vfs_ino carries only the low 32 bits of i_ino.
_KDEV_MINOR_BITS = 20
_VFS_INO_MASK = 0xFFFFFFFF
_DUMP_TIMEOUT = 5.0  # seconds; the kernel answers a dump at once
_OUT_OF_RESOURCES = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


def unix_diag_request(seq: int = 1) -> bytes:
    """A SOCK_DIAG_BY_FAMILY dump request for every AF_UNIX socket, with names and files."""
    body = UNIX_DIAG_REQ.pack(
        socket.AF_UNIX, 0, 0, ALL_STATES, 0, UDIAG_SHOW_NAME | UDIAG_SHOW_VFS, 0, 0
    )
    header = NLMSGHDR.pack(
        NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    return header + body


def decode_unix_diag(data: bytes) -> Tuple[List[BoundSocket], bool]:
    """Decode one datagram of a unix_diag dump: the sockets in it, and whether the dump ended.

    Raises:
        OSError: the kernel answered with an error (its errno), or sent a
            truncated message (``EPROTO``).
    """
    sockets: List[BoundSocket] = []
    for kind, payload in _netlink_messages(data):
        if kind == NLMSG_DONE:
            return sockets, True
        if kind == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", payload)
            raise OSError(-error, f"sock_diag refused the dump: {os.strerror(-error)}")
        if kind != SOCK_DIAG_BY_FAMILY:
            continue
        if len(payload) < UNIX_DIAG_MSG.size:
            raise OSError(errno.EPROTO, f"unix_diag_msg of {len(payload)} bytes")
        _, sock_type, state, _, inode, _, _ = UNIX_DIAG_MSG.unpack_from(payload)
        name: Optional[bytes] = None
        file: Optional[Tuple[int, int]] = None
        for attr_type, value in _attributes(payload[UNIX_DIAG_MSG.size :]):
            if attr_type == UNIX_DIAG_NAME:
                # A path is stored with the NUL its addrlen counted; an abstract name exactly.
                name = value if value[:1] == b"\0" else value.split(b"\0", 1)[0]
            elif attr_type == UNIX_DIAG_VFS and len(value) >= UNIX_DIAG_VFS_.size:
                vfs_ino, vfs_dev = UNIX_DIAG_VFS_.unpack_from(value)
                dev = os.makedev(
                    vfs_dev >> _KDEV_MINOR_BITS, vfs_dev & ((1 << _KDEV_MINOR_BITS) - 1)
                )
                file = (dev, vfs_ino)
        sockets.append(
            BoundSocket(
                inode,
                sock_type,
                state == TCP_LISTEN,
                state == TCP_ESTABLISHED,
                name,
                file,
                _VFS_INO_MASK,
            )
        )
    return sockets, False


def _netlink_messages(data: bytes) -> Iterator[Tuple[int, bytes]]:
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, kind, _, _, _ = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise OSError(errno.EPROTO, f"netlink message of {length} bytes at offset {offset}")
        yield kind, data[offset + NLMSGHDR.size : offset + length]
        offset += (length + 3) & ~3  # NLMSG_ALIGN


def _attributes(data: bytes) -> Iterator[Tuple[int, bytes]]:
    offset = 0
    while offset + NLATTR.size <= len(data):
        length, kind = NLATTR.unpack_from(data, offset)
        if length < NLATTR.size or offset + length > len(data):
            raise OSError(errno.EPROTO, f"netlink attribute of {length} bytes at offset {offset}")
        yield kind & 0x3FFF, data[offset + NLATTR.size : offset + length]  # less NLA_F_* flags
        offset += (length + 3) & ~3  # NLA_ALIGN


def bound_unix_sockets() -> Optional[List[BoundSocket]]:
    """Every AF_UNIX socket of this network namespace, from a sock_diag dump.

    ``None`` when the kernel will not answer (no ``unix_diag``, netlink
    refused by a sandbox): callers fall back to what they would do without.

    Raises:
        OSError: no descriptor or memory for the netlink socket (``EMFILE``,
            ``ENFILE``, ``ENOBUFS``, ``ENOMEM``) -- not a kernel without the table.
    """
    try:
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
    except OSError as exc:
        if exc.errno in _OUT_OF_RESOURCES:
            raise
        return None
    with diag:
        try:
            diag.settimeout(_DUMP_TIMEOUT)
            diag.sendto(unix_diag_request(), (0, 0))
            sockets: List[BoundSocket] = []
            while True:
                more, done = decode_unix_diag(diag.recv(65536))
                sockets.extend(more)
                if done:
                    return sockets
        except OSError:
            return None
