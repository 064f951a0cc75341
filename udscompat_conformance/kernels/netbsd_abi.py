"""NetBSD's own system-call ABI, from Python: ctypes over ``librumpclient``.

A ``RumpClient`` talks to a NetBSD rump kernel (``rump_server``, no Linux
emulation loaded) and makes its calls the way a NetBSD program would: with
NetBSD's constants, NetBSD's ``struct msghdr``/``cmsghdr``/``sockaddr_un``
layouts and NetBSD's errno numbers.  No Linux translation sits in between,
so what it observes is NetBSD's kernel, byte for byte.

Constants are read from the NetBSD headers of the very source tree the kernel
was built from (``NetBSDHeaders``), never retyped here; the few struct layouts
are written from the headers named beside them (src-netbsd 82f3a69,
NetBSD 7.99.34, amd64).

librumpclient keeps one connection per process, so one ``RumpClient`` per
process.  A call that blocks inside the rump kernel cannot be interrupted
(rumpclient blocks signals meanwhile): callers use non-blocking sockets or
``MSG_DONTWAIT`` and run under a hard, process-level timeout.
"""

from __future__ import annotations

import ctypes
import os
import re
import struct
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

__all__ = [
    "CMsg",
    "NetBSDHeaders",
    "Received",
    "RumpClient",
    "RumpError",
]

# <sys/socket.h> rev 1.119: struct cmsghdr { socklen_t cmsg_len; int cmsg_level; int cmsg_type; }
# and __CMSG_ALIGN(n) = ((n) + __ALIGNBYTES) & ~__ALIGNBYTES with __ALIGNBYTES = 7 on amd64
# (<amd64/include/param.h>: ALIGNBYTES (sizeof(long) - 1)).
CMSGHDR = struct.Struct("=Iii")
ALIGNBYTES = 7
# <sys/stat.h> struct stat: dev_t st_dev (8), mode_t st_mode (4), 4 bytes padding,
# ino_t st_ino (8): the three fields that tell whether two descriptors are one file.
STAT_HEAD = struct.Struct("=QI4xQ")
STAT_SIZE = 256  # larger than struct stat (152 bytes on amd64): the kernel writes the struct only
# <sys/resource.h> struct rlimit { rlim_t rlim_cur; rlim_t rlim_max; } (rlim_t: uint64_t)
RLIMIT = struct.Struct("=QQ")
# <sys/un.h> rev 1.57: struct sockaddr_un { uint8_t sun_len; sa_family_t sun_family;
# char sun_path[104]; } with sa_family_t a uint8_t.
SUN_PATH_OFFSET = 2
SUN_PATH_SIZE = 104


def cmsg_align(length: int) -> int:
    return (length + ALIGNBYTES) & ~ALIGNBYTES


def cmsg_len(length: int) -> int:
    return cmsg_align(CMSGHDR.size) + length


def cmsg_space(length: int) -> int:
    return cmsg_align(CMSGHDR.size) + cmsg_align(length)


class _Iovec(ctypes.Structure):
    # <sys/uio.h> struct iovec { void *iov_base; size_t iov_len; }
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    # <sys/socket.h> rev 1.119 struct msghdr: void *msg_name; socklen_t msg_namelen;
    # struct iovec *msg_iov; int msg_iovlen; void *msg_control; socklen_t msg_controllen;
    # int msg_flags.  (Linux has size_t for iovlen and controllen: a different layout.)
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(_Iovec)),
        ("iovlen", ctypes.c_int),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_uint32),
        ("flags", ctypes.c_int),
    ]


class _Pollfd(ctypes.Structure):
    # <sys/poll.h> struct pollfd { int fd; short events; short revents; }
    _fields_ = [("fd", ctypes.c_int), ("events", ctypes.c_short), ("revents", ctypes.c_short)]


_DEFINE = re.compile(r"^#\s*define\s+([A-Z_][A-Z0-9_]*)\s+(\(?-?(?:0x[0-9a-fA-F]+|\d+)\)?)", re.M)


class NetBSDHeaders:
    """Integer constants ``#define``d in NetBSD headers (plain literals only)."""

    def __init__(self, include: Path) -> None:
        self.include = include
        self.values: Dict[str, int] = {}
        self.errno_names: Dict[int, str] = {}
        for header in ("sys/socket.h", "sys/un.h", "sys/fcntl.h", "sys/resource.h", "sys/errno.h"):
            text = (include / header).read_text(encoding="latin-1")
            for name, literal in _DEFINE.findall(text):
                value = int(literal.strip("()"), 0)
                self.values.setdefault(name, value)
                if header == "sys/errno.h" and name.startswith("E"):
                    self.errno_names.setdefault(value, name)
        if (include / "sys/poll.h").is_file():  # pragma: no cover - not copied by older caches
            pass

    def __getitem__(self, name: str) -> int:
        try:
            return self.values[name]
        except KeyError:
            raise KeyError(f"{name} is not #defined as a number in {self.include}") from None

    def errno_name(self, number: int) -> str:
        return self.errno_names.get(number, f"errno {number}")


class RumpError(OSError):
    """A NetBSD system call failed; ``name`` is NetBSD's errno name (``EINVAL``)."""

    def __init__(self, call: str, number: int, name: str) -> None:
        super().__init__(number, f"{call}: {name}")
        self.call = call
        self.name = name


class CMsg(Tuple[int, int, bytes]):
    """(level, type, payload) of one control message, as NetBSD laid it out."""

    __slots__ = ()

    def __new__(cls, level: int, kind: int, payload: bytes) -> CMsg:
        return super().__new__(cls, (level, kind, payload))

    @property
    def level(self) -> int:
        return self[0]

    @property
    def kind(self) -> int:
        return self[1]

    @property
    def payload(self) -> bytes:
        return self[2]


class Received(Tuple[bytes, List[CMsg], int, bytes]):
    """What recvmsg returned: data, control messages, msg_flags, the raw control bytes."""

    __slots__ = ()

    def __new__(cls, data: bytes, cmsgs: List[CMsg], flags: int, control: bytes) -> Received:
        return super().__new__(cls, (data, cmsgs, flags, control))

    @property
    def data(self) -> bytes:
        return self[0]

    @property
    def cmsgs(self) -> List[CMsg]:
        return self[1]

    @property
    def flags(self) -> int:
        return self[2]

    @property
    def control(self) -> bytes:
        return self[3]


def parse_control(raw: bytes) -> List[CMsg]:
    """Walk NetBSD control data the way CMSG_FIRSTHDR/CMSG_NXTHDR do."""
    out: List[CMsg] = []
    offset = 0
    while offset + CMSGHDR.size <= len(raw):
        length, level, kind = CMSGHDR.unpack_from(raw, offset)
        if length < CMSGHDR.size:
            break
        start = offset + cmsg_align(CMSGHDR.size)
        out.append(CMsg(level, kind, raw[start : offset + length]))
        offset += cmsg_align(length)
    return out


def build_control(cmsgs: Iterable[Tuple[int, int, bytes]]) -> bytes:
    """Lay control messages out as NetBSD's CMSG_SPACE/CMSG_LEN do."""
    out = b""
    for level, kind, payload in cmsgs:
        header = CMSGHDR.pack(cmsg_len(len(payload)), level, kind)
        out += header.ljust(cmsg_align(CMSGHDR.size), b"\0")
        out += payload.ljust(cmsg_align(len(payload)), b"\0")
    return out


class RumpClient:
    """NetBSD system calls in a rump kernel, through librumpclient (one per process)."""

    #: Calls returning ssize_t; everything else returns int.
    _SSIZE = frozenset({"read", "write", "sendto", "recvfrom", "sendmsg", "recvmsg"})

    def __init__(self, libdir: Path, headers: Path, server: str) -> None:
        os.environ["RUMP_SERVER"] = server  # read by rumpclient_init()
        self.lib = ctypes.CDLL(str(libdir / "librumpclient.so"), use_errno=True)
        self.h = NetBSDHeaders(headers)
        self.server = server
        if self.lib.rumpclient_init() != 0:
            raise OSError(ctypes.get_errno(), f"rumpclient_init({server}) failed")
        self._calls: Dict[str, Any] = {}

    # -- plumbing ------------------------------------------------------------------------------

    def call(self, name: str, *args: Any) -> int:
        """``rump_sys_<name>(*args)``: the result, or RumpError with NetBSD's errno name."""
        fn = self._calls.get(name)
        if fn is None:
            fn = getattr(self.lib, "rump___sysimpl_" + name)
            fn.restype = ctypes.c_long if name in self._SSIZE else ctypes.c_int
            self._calls[name] = fn
        ctypes.set_errno(0)
        result = int(fn(*args))
        if result == -1:
            number = ctypes.get_errno()
            raise RumpError(name, number, self.h.errno_name(number))
        return result

    def attempt(self, operation: Any) -> str:
        """``"ok"`` or the NetBSD errno name ``operation()`` failed with."""
        try:
            operation()
        except RumpError as exc:
            return exc.name
        return "ok"

    # -- descriptors ---------------------------------------------------------------------------

    def socket(self, kind: int, flags: int = 0) -> int:
        return self.call("socket30", self.h["AF_LOCAL"], kind | flags, 0)

    def socketpair(self, kind: int, flags: int = 0) -> Tuple[int, int]:
        fds = (ctypes.c_int * 2)()
        self.call("socketpair", self.h["AF_LOCAL"], kind | flags, 0, fds)
        return fds[0], fds[1]

    def pipe(self, flags: int = 0) -> Tuple[int, int]:
        fds = (ctypes.c_int * 2)()
        self.call("pipe2", fds, flags)
        return fds[0], fds[1]

    def close(self, *fds: int) -> None:
        """Close each descriptor, ignoring the ones already closed."""
        for fd in fds:
            try:
                self.call("close", fd)
            except RumpError:
                pass

    def fcntl(self, fd: int, cmd: int, arg: int = 0) -> int:
        return self.call("fcntl", fd, cmd, ctypes.c_long(arg))

    def set_nonblocking(self, fd: int) -> None:
        flags = self.fcntl(fd, self.h["F_GETFL"])
        self.fcntl(fd, self.h["F_SETFL"], flags | self.h["O_NONBLOCK"])

    def cloexec(self, fd: int) -> bool:
        return bool(self.fcntl(fd, self.h["F_GETFD"]) & self.h["FD_CLOEXEC"])

    def read(self, fd: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(max(size, 1))
        count = self.call("read", fd, buf, ctypes.c_size_t(size))
        return buf.raw[:count]

    def write(self, fd: int, data: bytes) -> int:
        return self.call("write", fd, data, ctypes.c_size_t(len(data)))

    def fstat_identity(self, fd: int) -> Tuple[int, int, int]:
        """(st_dev, st_mode, st_ino) from NetBSD's ``struct stat``."""
        buf = ctypes.create_string_buffer(STAT_SIZE)
        self.call("fstat50", fd, buf)
        dev, mode, ino = STAT_HEAD.unpack_from(buf.raw)
        return dev, mode, ino

    def same_file(self, a: int, b: int) -> bool:
        first, second = self.fstat_identity(a), self.fstat_identity(b)
        return (first[0], first[2]) == (second[0], second[2])

    def getrlimit_nofile(self) -> Tuple[int, int]:
        buf = ctypes.create_string_buffer(RLIMIT.size)
        self.call("getrlimit", self.h["RLIMIT_NOFILE"], buf)
        soft, hard = RLIMIT.unpack(buf.raw)
        return soft, hard

    def setrlimit_nofile(self, soft: int, hard: int) -> None:
        self.call("setrlimit", self.h["RLIMIT_NOFILE"], RLIMIT.pack(soft, hard))

    def mkdir(self, path: bytes, mode: int = 0o700) -> None:
        self.call("mkdir", path, mode)

    def unlink(self, path: bytes) -> None:
        self.call("unlink", path)

    def rmdir(self, path: bytes) -> None:
        self.call("rmdir", path)

    def open_count(self, upto: int = 4096) -> List[int]:
        """Descriptors open in this rump process (F_GETFD succeeds), up to ``upto``."""
        found = []
        for fd in range(upto):
            try:
                self.fcntl(fd, self.h["F_GETFD"])
            except RumpError:
                continue
            found.append(fd)
        return found

    # -- sockets -------------------------------------------------------------------------------

    @staticmethod
    def sockaddr_un(path: bytes, sun_len: Optional[int] = None) -> bytes:
        """NetBSD ``sockaddr_un`` bytes for ``path``: sun_len, AF_LOCAL, the path (no padding
        to 104 bytes, so longer paths are expressible as the kernel allows)."""
        body = bytes([1]) + path  # sun_family = AF_LOCAL (1)
        length = len(body) + 1 if sun_len is None else sun_len
        return bytes([min(length, 255)]) + body

    def _addr(self, path: bytes) -> Tuple[Any, int]:
        raw = self.sockaddr_un(path)
        return ctypes.create_string_buffer(raw, len(raw)), len(raw)

    def bind(self, fd: int, path: bytes) -> None:
        buf, length = self._addr(path)
        self.call("bind", fd, buf, length)

    def bind_raw(self, fd: int, raw: bytes) -> None:
        buf = ctypes.create_string_buffer(raw, max(len(raw), 1))
        self.call("bind", fd, buf, len(raw))

    def connect(self, fd: int, path: bytes) -> None:
        buf, length = self._addr(path)
        self.call("connect", fd, buf, length)

    def listen(self, fd: int, backlog: int = 5) -> None:
        self.call("listen", fd, backlog)

    def accept(self, fd: int) -> int:
        return self.call("accept", fd, None, None)

    def shutdown(self, fd: int, how: int) -> None:
        self.call("shutdown", fd, how)

    def _name(self, call: str, fd: int) -> bytes:
        buf = ctypes.create_string_buffer(512)
        length = ctypes.c_uint32(512)
        self.call(call, fd, buf, ctypes.byref(length))
        return buf.raw[: length.value]

    def getsockname(self, fd: int) -> bytes:
        """The raw ``struct sockaddr`` bytes the kernel wrote (its own length)."""
        return self._name("getsockname", fd)

    def getpeername(self, fd: int) -> bytes:
        return self._name("getpeername", fd)

    @staticmethod
    def sun_path(raw: bytes) -> bytes:
        """The path in sockaddr_un bytes, up to sun_len and the first NUL."""
        if len(raw) < SUN_PATH_OFFSET:
            return b""
        end = min(len(raw), raw[0]) if raw[0] else len(raw)
        return raw[SUN_PATH_OFFSET:end].split(b"\0", 1)[0]

    def getsockopt(self, fd: int, level: int, option: int, size: int) -> bytes:
        buf = ctypes.create_string_buffer(max(size, 1))
        length = ctypes.c_uint32(size)
        self.call("getsockopt", fd, level, option, buf, ctypes.byref(length))
        return buf.raw[: length.value]

    def getsockopt_int(self, fd: int, level: int, option: int) -> int:
        value: int = struct.unpack("=i", self.getsockopt(fd, level, option, 4))[0]
        return value

    def setsockopt_int(self, fd: int, level: int, option: int, value: int) -> None:
        data = ctypes.c_int(value)
        self.call("setsockopt", fd, level, option, ctypes.byref(data), 4)

    def send(self, fd: int, data: bytes, flags: int = 0) -> int:
        return self.call("sendto", fd, data, ctypes.c_size_t(len(data)), flags, None, 0)

    def recv(self, fd: int, size: int, flags: int = 0) -> bytes:
        buf = ctypes.create_string_buffer(max(size, 1))
        count = self.call("recvfrom", fd, buf, ctypes.c_size_t(size), flags, None, None)
        return buf.raw[:count]

    def sendmsg(
        self,
        fd: int,
        buffers: Sequence[bytes],
        cmsgs: Iterable[Tuple[int, int, bytes]] = (),
        flags: int = 0,
        control: Optional[bytes] = None,
    ) -> int:
        """sendmsg with NetBSD control layout (``control`` gives raw bytes instead)."""
        keep: List[Any] = []
        iovs = (_Iovec * max(len(buffers), 1))()
        for i, data in enumerate(buffers):
            holder = ctypes.create_string_buffer(data, max(len(data), 1))
            keep.append(holder)
            iovs[i] = _Iovec(ctypes.cast(holder, ctypes.c_void_p), len(data))
        raw = build_control(cmsgs) if control is None else control
        cbuf = ctypes.create_string_buffer(raw, max(len(raw), 1))
        msg = _Msghdr(
            None,
            0,
            ctypes.cast(iovs, ctypes.POINTER(_Iovec)),
            len(buffers),
            ctypes.cast(cbuf, ctypes.c_void_p) if raw else None,
            len(raw),
            0,
        )
        return self.call("sendmsg", fd, ctypes.byref(msg), flags)

    def send_rights(self, fd: int, data: bytes, fds: Sequence[int], flags: int = 0) -> int:
        payload = struct.pack(f"={len(fds)}i", *fds)
        return self.sendmsg(
            fd, [data], [(self.h["SOL_SOCKET"], self.h["SCM_RIGHTS"], payload)], flags
        )

    def recvmsg(self, fd: int, size: int, control_size: int, flags: int = 0) -> Received:
        buf = ctypes.create_string_buffer(max(size, 1))
        iov = _Iovec(ctypes.cast(buf, ctypes.c_void_p), size)
        cbuf = ctypes.create_string_buffer(max(control_size, 1))
        msg = _Msghdr(
            None,
            0,
            ctypes.pointer(iov),
            1,
            ctypes.cast(cbuf, ctypes.c_void_p) if control_size else None,
            control_size,
            0,
        )
        count = self.call("recvmsg", fd, ctypes.byref(msg), flags)
        control = cbuf.raw[: msg.controllen] if control_size else b""
        return Received(buf.raw[:count], parse_control(control), msg.flags, control)

    def rights_in(self, cmsgs: Iterable[CMsg]) -> List[int]:
        """The descriptor numbers in every SCM_RIGHTS message."""
        fds: List[int] = []
        for cmsg in cmsgs:
            if cmsg.level == self.h["SOL_SOCKET"] and cmsg.kind == self.h["SCM_RIGHTS"]:
                whole = len(cmsg.payload) // 4
                fds.extend(struct.unpack(f"={whole}i", cmsg.payload[: whole * 4]))
        return fds

    def poll_readable(self, fd: int, timeout_ms: int) -> bool:
        """Is ``fd`` readable within ``timeout_ms``?  (A bounded wait inside the kernel.)"""
        pfd = _Pollfd(fd, 0x0001, 0)  # <sys/poll.h> POLLIN 0x0001
        return self.call("poll", ctypes.byref(pfd), 1, timeout_ms) > 0

    def getpid(self) -> int:
        """This client's pid inside the rump kernel."""
        fn = getattr(self.lib, "rump_sys_getpid", None) or self.lib.rump___sysimpl_getpid
        fn.restype = ctypes.c_int
        return int(fn())
