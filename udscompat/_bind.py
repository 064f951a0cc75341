"""Binding AF_UNIX sockets to paths in a way no other local user can turn against the host.

Daemons run this as root in shared directories, so every step assumes that
someone who owns a directory on the path is racing it.

*The directory is opened once.*  The socket file's directory is opened one
component at a time with ``O_NOFOLLOW``; a symbolic link is followed only
if root or this user owns it (nobody else can point it elsewhere).  Every
later look, rename, link, unlink and chmod is relative to that descriptor,
so swapping a directory on the path for a symbolic link between a check
and an act cannot redirect the act.  ``bind`` itself takes a path, which
the kernel walks again: the path is handed over as given only when no
other user can change a directory on it (owners and write bits say so; a
sticky directory protects the entries of root and this user).  Otherwise,
on Linux, the kernel gets ``/proc/self/fd/N/name``, which resolves to the
very directory opened; kernels without such a path refuse.

*Stale means no socket is bound to the file.*  A file left by a closed
socket is removed before binding; a live one never, nor anything that is
not a socket.  A socket that is bound but not yet listening is alive.  A
*datagram* socket connects to the file: every kernel read finds the socket
bound to the file and refuses a socket of another type with ``EPROTOTYPE``
(or ``ECONNREFUSED`` when none is bound) before it would queue a
connection, so unlike a stream probe this leaves no closed client in a
live listener's accept queue, and it tells a bound socket that is not
listening yet from a stale file -- in one system call, on every kernel,
for sockets of every network namespace.  (A bound datagram socket accepts
the probe's connect, which sends nothing.)  gVisor refuses a datagram
connect to a live stream or seqpacket socket with ``ECONNREFUSED`` too;
where a probe (``_probes.datagram_connect_tells_liveness``) sees a kernel
answer so, a refusal proves nothing and no file is removed on its word.
Linux's socket table (sock_diag) is read only where the probe cannot
answer (a refusal there, or ``EACCES``: a file whose mode keeps us out)
or where it must say *which* socket is bound: a dump costs ~12 us per
socket on the host, and any local user can add sockets.  It is matched
by inode number alone: on btrfs it reports the superblock's device, not
the subvolume's ``st_dev``.

*Removal decides on the entry it unlinks.*  The entry is looked at, at
once renamed aside to a random name (whatever is at the name then moves),
examined again there, and unlinked only if it is still the stale file (or,
for ``SocketFile.remove``, still ours); otherwise it is linked back.  A
successor that bound between our look and our rename keeps its socket; it
is missing from its path for the microseconds this takes.  Every udscompat
bind and removal in a directory holds the directory's ``flock`` meanwhile,
so no third instance binds into the name while it is empty (the put-back
would then find it taken and leave a listener unreachable); anyone who can
read the directory can hold that lock too, so it is waited for at most
50 ms and then done without -- also by an instance whose lock holder merely
lost the CPU, so even the holder's bind waits (up to a second) for a new
file found missing, which such an instance may be judging aside.  A
listener removes its file *before* closing, so its file never looks stale
to a successor starting meanwhile.

*A call that raises leaves nothing behind* -- also when a signal handler
raises right after any system call: no descriptor is lost or closed twice
(``_Descriptors``), an entry renamed aside is put back before the exception
leaves, a private directory is removed, and a ``bind`` that fails after the
kernel bound the socket removes the file it made.  SIGKILL between a
rename aside and its unlink or put-back leaves the entry at its
``.udscompat-`` name; the next bind in that directory that holds the lock
removes such an entry if it is a stale socket file of this user
(``_sweep_leftovers``).  A live one -- a successor's socket whose name
died with the killed process -- stays there: nothing tells where it
belongs.

*``mode=`` never follows a link and leaves no window.*  Linux creates the
file with the socket inode's own mode less the umask (``unix_bind_bsd``),
so ``fchmod`` on the unbound socket gives it at most ``mode`` from the
start; bits the umask took are added afterwards, through
``/proc/self/fd/N`` of an ``O_PATH`` descriptor, once the file is shown to
be this socket's: in a directory only root and this user may change, by
that alone; elsewhere by sock_diag.  Other kernels take the mode from the
umask alone, which is process-wide and so not thread-safe: there the
socket is bound in a private 0700 directory, chmodded there, made to
listen (``backlog=``) and only then linked into place (``link`` never
replaces).  Its
``getsockname()`` then names the private directory, as it names
``/proc/self/fd/N`` for a socket bound through a descriptor:
``SocketFile.address`` and the listeners' ``local_addr`` give the path.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import functools
import itertools
import os
import secrets
import socket
import stat
import time
import weakref
from typing import Any, Callable, Iterator, List, Optional, Tuple, Union

from udscompat import _probes
from udscompat._address import AddressArg, UnixSocketAddr, as_address
from udscompat._errors import UnsupportedError
from udscompat._os import BoundSocket
from udscompat._platform import backend

__all__ = [
    "AddressArg",
    "SocketFile",
    "as_address",
    "bind",
    "connect_error",
    "connect_unix",
    "is_live_socket_file",
    "sendmsg_to",
]

# A datagram connect's answers: no socket bound to the file (illumos reports a socket
# file without a socket as EDESTADDRREQ to a datagram socket, socksubr.c so_ux_lookup) ...
_STALE = {errno.ECONNREFUSED, errno.ENOENT, errno.EDESTADDRREQ}
# ... and a socket bound there: of another type, or a datagram socket connected elsewhere
# (EACCES -- we may not connect -- tells nothing either way).
_LIVE = {errno.EPROTOTYPE, errno.EPERM, errno.EAGAIN, errno.EISCONN}
_SEARCH = getattr(os, "O_PATH", 0) or getattr(os, "O_SEARCH", 0) or os.O_RDONLY
_DIRECTORY = os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC | _SEARCH
_MAX_LINKS = 40  # as the kernels' own path walks (Linux MAXSYMLINKS)
_PRIVATE_PREFIX = b".udscompat-"
_ASIDE_DIGITS = 16  # hex digits after the prefix in the name of an entry renamed aside
_HEX_DIGITS = frozenset(b"0123456789abcdef")
# Entries a bind looks at, and leftovers it removes, at most when it sweeps its directory for
# entries a killed process left aside: whoever may write the directory can fill it.  (The C
# library reads one 32 KiB getdents buffer whatever the count: ~15 us for a few entries,
# ~0.5 ms for a directory of thousands, measured at load 9.)
_SWEEP_ENTRIES = 128
_SWEEP_REMOVALS = 8
# Seconds a just-bound file may be missing, held aside by another instance's stale-file check
# (microseconds, unless that instance loses the CPU meanwhile) -- with or without our holding
# the directory's lock: an instance that waited for the lock in vain goes on without it.
_SETTLE_TIME = 1.0
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1  # listen()'s backlog is a C int
# Seconds to wait for the directory's lock: udscompat holds it for microseconds (a sock_diag
# dump, milliseconds); anyone else who can read the directory could hold it forever.
_LOCK_WAIT = 0.05
_NEEDS_DIR_FD = (os.open, os.stat, os.mkdir, os.rmdir, os.rename, os.link, os.unlink, os.readlink)
_TYPE_NAMES = {
    backend.SOCK_STREAM: "SOCK_STREAM",
    backend.SOCK_DGRAM: "SOCK_DGRAM",
    backend.SOCK_SEQPACKET: "SOCK_SEQPACKET",
}


class SocketFile:
    """The filesystem entry a bind created: its path, device and inode.

    ``remove()`` unlinks it only while the path still names this very
    socket file -- never a successor's, even one that binds while
    ``remove()`` runs.
    """

    __slots__ = ("_birth", "_socket", "_socket_inode", "ctime_ns", "dev", "ino", "path")

    def __init__(
        self,
        path: bytes,
        dev: int,
        ino: int,
        ctime_ns: int,
        *,
        birth: Optional[float] = None,
        sock: Optional[socket.socket] = None,
    ) -> None:
        self.path = path
        self.dev = dev
        self.ino = ino
        self.ctime_ns = ctime_ns
        self._birth = birth  # st_birthtime where the OS records one
        # The socket that made it, to tell ours from a stranger bound to a reused inode.
        self._socket = None if sock is None else weakref.ref(sock)
        self._socket_inode = None if sock is None else os.fstat(sock.fileno()).st_ino

    @classmethod
    def at(cls, path: bytes) -> SocketFile:
        """The socket file now at ``path``."""
        st = os.lstat(path)
        return cls(path, st.st_dev, st.st_ino, st.st_ctime_ns, birth=_birth(st))

    @property
    def address(self) -> UnixSocketAddr:
        """The path address this file is at (what ``getsockname()`` may not say)."""
        return UnixSocketAddr.from_sockaddr(self.path)

    def remove(self) -> bool:
        """Unlink the path if it still names this socket file.  True if removed.

        False when the path is gone, names another file (a successor's
        socket, even one bound while this runs), or no longer leads here
        through directories udscompat will walk.
        """
        head, name = _split(self.path)
        try:
            directory = _open_directory(head)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return False
            raise
        with directory, directory.exclusive():
            if self._socket_is_open():
                # Our socket pins its file's inode: the inode number alone is ours, and a
                # change time moved by another instance's rename-and-put-back does not stop us.
                pinned = (self.dev, self.ino, None, self._birth)
                return _remove_entry(directory, name, pinned, _never)
            key = (self.dev, self.ino, self.ctime_ns, self._birth)
            if self._socket is None:
                return _remove_entry(directory, name, key, _never)
            # Whose socket is bound there is judged now, while nothing is hidden (the kernel's
            # table is slow to read).  Once the entry is aside, only a newcomer bound to a
            # reused inode number could be there instead of ours, which one datagram connect
            # shows; the name is empty for no longer than that.
            try:
                st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISSOCK(st.st_mode) or not _looks_same(st, key):
                return False
            whose = self._whose(st, directory, name)
            if whose == "another's":
                return False
            return _remove_entry(directory, name, key, _never if whose == "ours" else _newcomer)

    def kept_by(self, sock: socket.socket) -> SocketFile:
        """This file, kept by ``sock``: a duplicate of the socket that bound it.

        For when the socket object that bound the file closes while a
        duplicate (``dup``) of it stays open: the inode cannot be reused
        while either is open, and ``remove()`` relies on that.
        """
        return SocketFile(
            self.path, self.dev, self.ino, self.ctime_ns, birth=self._birth, sock=sock
        )

    def _socket_is_open(self) -> bool:
        ours = None if self._socket is None else self._socket()
        return ours is not None and ours.fileno() >= 0

    def _whose(self, st: os.stat_result, directory: _Directory, name: bytes) -> str:
        """Is a socket bound to ``st``, our file, now that our socket is closed here?

        ``"none"``; ``"ours"`` (still open in another process, a forked child); or
        ``"another's"``: a stranger's bound to our inode number, reused.
        """
        bound = _probe(directory, name)
        if bound is False:
            return "none"
        table = backend.bound_unix_sockets()
        if table is None:
            return "another's"  # a socket is bound (or may be), and nothing tells whose
        there = {s.inode for s in _bound_to_inode(table, st)}
        if not there:
            # Bound, yet not in the table: a socket of another network namespace (this
            # one's table lists only its own), so not ours.
            return "another's" if bound else "none"
        return "ours" if there <= {self._socket_inode} else "another's"

    def __repr__(self) -> str:
        return f"SocketFile({os.fsdecode(self.path)!r}, dev={self.dev}, ino={self.ino})"


SocketFile.__module__ = "udscompat"


def bind(
    sock: socket.socket,
    addr: AddressArg,
    *,
    mode: Optional[int] = None,
    remove_stale: bool = True,
    backlog: Optional[int] = None,
) -> Optional[SocketFile]:
    """Like ``sock.bind(addr)``, but safe in shared directories and after a crash.

    Args:
        sock: an unbound AF_UNIX socket of any type.
        addr: where to bind, by udscompat's address rule (``"@name"`` is
            abstract; see ``as_address``).
        mode: permission bits for the socket file, in place before any
            peer can reach it and applied without following a symbolic link
            (see the module documentation for how, per OS).  As with
            ``chmod``, a default ACL on the directory still grants its named
            entries, limited by the group bits (the ACL mask).
        remove_stale: first remove a socket file no socket is bound to.
        backlog: if given, ``listen(backlog)`` too -- before the file
            appears at the path where the kernel has no socket table to
            tell a bound-but-not-listening socket from a stale file.

    Returns:
        The ``SocketFile`` for a path address (keep it to ``remove()`` the
        file later), ``None`` for abstract and unnamed addresses.

    Raises:
        TypeError: ``mode`` or ``backlog`` is not an int, before anything is bound.
        OverflowError: ``backlog`` does not fit in a C int, before anything is bound.
        ValueError: ``mode`` is outside 0..0o7777 or given for an address
            that is not a path; the path cannot be handed to the kernel
            (the message names the limit).
        UnsupportedError: the path runs through a directory another user
            can change, and this kernel cannot bind through a descriptor.
        OSError: ``EADDRINUSE`` when a live socket, or anything that is not
            a socket, is at the path (nothing is removed) -- or any socket
            file, where the kernel cannot tell a stale one from a live one
            (``capabilities().quirks["stale_socket_files"]``); ``ELOOP`` for a
            symbolic link on the way that another user owns; ``EBUSY`` when
            the file was replaced as soon as it was bound, or the working
            directory changed (another thread's ``chdir``) while a relative
            path was bound.  The address is named in every message.
    """
    mode = _check_mode(mode)
    backlog = _check_backlog(backlog)
    address = as_address(addr)
    path = address.path_bytes
    if path is None:
        if mode is not None:
            raise ValueError(f"mode= sets a socket file's permissions; {address} has no file")
        _call(address, sock.bind, address.to_sockaddr())
        if backlog is not None:
            sock.listen(backlog)
        return None
    head, name = _split(path)
    try:
        directory = _open_directory(head)
    except UnsupportedError:
        raise
    except OSError as exc:
        raise _with_address(exc, "cannot bind", address) from exc
    made: Optional[SocketFile] = None
    try:
        with directory, directory.exclusive() as locked:
            try:
                made = _bind_path(
                    sock, directory, name, path, address, mode, backlog, remove_stale, locked
                )
            except UnsupportedError:
                raise
            except OSError as exc:
                if str(address) in str(exc):
                    raise
                raise _with_address(exc, "cannot bind", address) from exc
    except BaseException:
        # Bound, but an exception (a raising signal handler) as the directory was let go:
        # the caller never gets the SocketFile, so the file would stay behind, stale.
        if made is not None:
            made.remove()
        raise
    return made


def _bind_path(
    sock: socket.socket,
    directory: _Directory,
    name: bytes,
    path: bytes,
    address: UnixSocketAddr,
    mode: Optional[int],
    backlog: Optional[int],
    remove_stale: bool,
    locked: bool,
) -> SocketFile:
    """``bind``'s work in the opened (and, where it could be, locked) directory."""
    private = mode is not None and not backend.BIND_MODE_FROM_SOCKET
    if private:  # only checks that some path reaches it, before anything is touched
        directory.reach(_PRIVATE_PREFIX + b"0" * 12 + b"/" + name)
        target = None
    else:
        target = directory.reach(name, path)
    if remove_stale:
        _remove_stale(directory, name)
        if locked:  # no udscompat removal that holds the lock is under way
            _sweep_leftovers(directory)
    unbound = sock.getsockname()
    try:
        if private:
            _bind_privately(sock, directory, name, mode, backlog, address)
        else:
            assert target is not None
            if mode is not None:
                os.fchmod(sock.fileno(), mode)  # the new file gets this less the umask
            _call(address, sock.bind, target)
            directory.check_start(address)
            if mode is not None:
                _add_masked_bits(directory, name, sock, mode, address)
            if backlog is not None:
                sock.listen(backlog)
        # Waited for even while we hold the lock: another instance may have given up waiting
        # for it (we lost the CPU holding it) and be judging our new file aside.
        st = _bound_file(directory, name, address)
        return SocketFile(path, st.st_dev, st.st_ino, st.st_ctime_ns, birth=_birth(st), sock=sock)
    except _BoundElsewhere:
        raise  # what is at our name is not ours: leave it
    except BaseException:
        _undo_bind(directory, name, sock, unbound)
        raise


class _BoundElsewhere(OSError):
    """The kernel's walk of a relative path started from another working directory."""


def close_listener(sock: Any, socket_file: Optional[SocketFile]) -> None:
    """Remove ``socket_file`` if it is still ours, then close ``sock``.

    In this order the file never looks stale to a successor starting
    meanwhile: it is live until it is gone, so no two instances ever
    compete for it.
    """
    try:
        if socket_file is not None:
            socket_file.remove()
    finally:
        sock.close()


def is_live_socket_file(path: bytes) -> bool:
    """Is a socket bound to the socket file at ``path`` (listening or not yet)?

    A datagram connect that no listener sees: refused means stale; success
    or a socket of another type mean live.  Where we may not connect, the
    kernel's socket table (Linux) answers, else live (what cannot be checked
    is not removed).
    """
    head, name = _split(path)
    with _open_directory(head) as directory:
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        return _is_live(directory, name, st)


# -- connecting and sending to an address ----------------------------------------------------------


def connect_unix(sock: socket.socket, address: UnixSocketAddr) -> None:
    """``sock.connect`` to ``address``, reaching a path CPython refuses through its directory.

    Errors are ``connect``'s own (wrap them with ``connect_error``).
    """
    if address.kind != "path" or len(address.path_bytes or b"") < backend.SUN_PATH_SIZE:
        sock.connect(address.to_sockaddr())
        return
    with _Reach(address) as target:
        sock.connect(target)


def sendmsg_to(
    sock: socket.socket, buffers: Any, ancdata: Any, flags: int, addr: AddressArg
) -> int:
    """``sock.sendmsg`` to ``addr``, an address by the one rule (``as_address``)."""
    address = as_address(addr)
    if address.kind != "path" or len(address.path_bytes or b"") < backend.SUN_PATH_SIZE:
        return sock.sendmsg(buffers, ancdata, flags, address.to_sockaddr())
    with _Reach(address) as target:
        return sock.sendmsg(buffers, ancdata, flags, target)


def connect_error(
    exc: OSError, address: UnixSocketAddr, sock: Optional[socket.socket] = None
) -> OSError:
    """``exc`` from connecting ``sock`` to ``address``, saying what was found there.

    A listener of another socket type -- udscompat's other seqpacket
    implementation among them -- answers EPROTOTYPE at a path, but
    ECONNREFUSED at an abstract name (Linux keys abstract names by socket
    type); the message says which, from the kernel's socket table where
    there is one.
    """
    message = f"{exc.strerror}: cannot connect to {address}"
    if sock is not None and exc.errno in (errno.EPROTOTYPE, errno.ECONNREFUSED):
        try:
            found = _explain_refusal(exc.errno, address, sock.type)
        except (OSError, ValueError):
            found = ""  # what could not be looked at is not described
        if found:
            message += f" ({found})"
    return OSError(exc.errno, message)


def _explain_refusal(code: int, address: UnixSocketAddr, sock_type: int) -> str:
    ours = _TYPE_NAMES.get(sock_type, str(sock_type))
    implementations = (
        "udscompat's native seqpacket uses SOCK_SEQPACKET, the emulated one SOCK_STREAM"
    )
    table = backend.bound_unix_sockets()
    if address.kind == "abstract":
        if table is None:
            if code != errno.ECONNREFUSED:
                return ""
            return (
                f"nothing of type {ours} listens there; Linux looks abstract names up per "
                f"socket type, so a listener of another type is refused too ({implementations})"
            )
        key = b"\0" + (address.name or b"")
        there = [s for s in table if s.name == key]
        if any(s.type == sock_type and s.listening for s in there):
            return ""
        others = sorted({_TYPE_NAMES.get(s.type, str(s.type)) for s in there if s.listening})
        if others:
            return (
                f"a {' and a '.join(others)} socket listens there, not a {ours} one: Linux looks "
                f"abstract names up per socket type and answers ECONNREFUSED, not EPROTOTYPE "
                f"({implementations})"
            )
        return "nothing listens on that abstract name"
    if address.kind != "path" or code != errno.EPROTOTYPE:
        return _explain_path_refusal(address) if code == errno.ECONNREFUSED else ""
    found = _sockets_at(address, table)
    kinds = sorted({_TYPE_NAMES.get(s.type, str(s.type)) for s in found})
    what = f"a {' and a '.join(kinds)} socket" if kinds else "a socket of another type"
    return f"{what} is bound there, and this one is {ours} ({implementations})"


def _explain_path_refusal(address: UnixSocketAddr) -> str:
    """What is at a path that refused a connect with ECONNREFUSED (Linux answers so for
    a file that is not a socket, too)."""
    assert address.path_bytes is not None
    st = os.stat(address.path_bytes)  # through symbolic links, as connect() went
    if not stat.S_ISSOCK(st.st_mode):
        return f"not a socket: {_file_kind(st.st_mode)} is there"
    with _Reach(address) as target:
        bound = _probe_at(target)
    if bound is False:
        return "a stale socket file: no socket is bound to it"
    if bound:
        return "a socket is bound there but does not listen (yet)"
    return ""


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return kind
    return f"a file of type {stat.S_IFMT(mode):#o}"


def _sockets_at(address: UnixSocketAddr, table: Optional[List[BoundSocket]]) -> List[BoundSocket]:
    if table is None or address.path_bytes is None:
        return []
    st = os.stat(address.path_bytes)
    return _answering(table, st) or _bound_to_inode(table, st)


class _Reach:
    """The sockaddr for a path: as given, or through its directory where CPython will not
    pass it (it fills sun_path)."""

    def __init__(self, address: UnixSocketAddr) -> None:
        path = address.path_bytes or b""
        self._path = path
        self._held = _Descriptors()

    def __enter__(self) -> Union[str, bytes]:
        if len(self._path) < backend.SUN_PATH_SIZE:
            return self._path
        limit = backend.SUN_PATH_SIZE - 1
        if backend.FD_PATH is None:
            raise ValueError(
                f"AF_UNIX path is {len(self._path)} bytes; CPython passes paths with a NUL, so "
                f"at most {limit} fit in sun_path on {backend.OS_NAME}, which has no "
                f"/proc/self/fd to reach the file through its directory"
            )
        head, name = _split(self._path)
        # connect and sendto follow symbolic links anyway: open the directory as they would.
        fd = self._held.open(head, os.O_DIRECTORY | os.O_CLOEXEC | _SEARCH)
        via = _fd_path(fd, self._path) + b"/" + name
        if len(via) > limit:
            raise ValueError(_too_long_via(self._path, name, via, limit))
        return via

    def __exit__(self, *exc_info: object) -> None:
        self._held.close()


def _fd_path(fd: int, path: bytes) -> bytes:
    """``FD_PATH`` for ``fd``, which must resolve (procfs may not be mounted)."""
    assert backend.FD_PATH is not None
    via = backend.FD_PATH.format(fd).encode()
    if not os.path.isdir(via):
        raise UnsupportedError(
            "paths reached through a directory descriptor",
            backend.OS_NAME,
            f"{os.fsdecode(path)!r} needs {os.fsdecode(via)}, which does not resolve here "
            "(is /proc mounted?)",
        )
    return via


def _too_long_via(path: bytes, name: bytes, via: bytes, limit: int) -> str:
    prefix = len(via) - len(name)
    return (
        f"AF_UNIX path {os.fsdecode(path)!r} is {len(path)} bytes, and its last component "
        f"({len(name)} bytes) is too long to reach through its directory's descriptor "
        f"({os.fsdecode(via[:prefix])}): sun_path holds {limit} bytes with CPython's NUL, "
        f"leaving {limit - prefix} for the name"
    )


# -- the directory, opened once --------------------------------------------------------------------


class _Descriptors:
    """The descriptors one call holds, kept safe from a signal handler that raises.

    CPython runs a pending Python signal handler right after a call returns and before
    its result is stored, so ``fd = os.open(...)`` can lose the descriptor, and
    ``os.close(fd)`` followed by forgetting ``fd`` can close it twice (the second time,
    perhaps, another thread's new descriptor).  Here an open and its recording, and a
    close and its forgetting, each happen inside one call made from C (``list.extend``
    over ``map``; a ``deque`` draining ``map``), where no handler runs.  Whatever is
    still held when the object goes away is closed.
    """

    __slots__ = ("_fds",)

    def __init__(self) -> None:
        self._fds: List[int] = []

    def open(self, path: bytes, flags: int, dir_fd: Optional[int] = None) -> int:
        self._fds.extend(map(functools.partial(os.open, dir_fd=dir_fd), (path,), (flags,)))
        return self._fds[-1]

    @property
    def first(self) -> int:
        return self._fds[0]

    @property
    def last(self) -> int:
        return self._fds[-1]

    def close_first(self) -> None:
        collections.deque(map(os.close, map(self._fds.pop, (0,))), maxlen=0)

    def close(self) -> None:
        fds, self._fds = self._fds, []  # no call between: nothing can run in between
        collections.deque(map(os.close, fds), maxlen=0)

    def __del__(self) -> None:
        try:
            held = self._fds
        except AttributeError:
            return  # __init__ never ran
        if held:
            self.close()


class _Directory:
    """An open directory, the path it was reached by, and whether others can change that path."""

    __slots__ = ("_held", "fixed", "path", "start")

    def __init__(
        self,
        held: _Descriptors,
        path: bytes,
        fixed: bool,
        start: Optional[Tuple[int, int]] = None,
    ) -> None:
        self._held = held
        self.path = path
        self.fixed = fixed
        #: The working directory (st_dev, st_ino) a relative path was walked from.
        self.start = start

    def check_start(self, address: UnixSocketAddr) -> None:
        """Raise if the working directory changed since the walk (another thread's chdir):
        the kernel then walked a relative path from elsewhere, and what is at our name
        here is not our socket's file.  (The socket stays bound, wherever that was.)"""
        if self.start is None:
            return
        now = os.stat(".")
        if (now.st_dev, now.st_ino) != self.start:
            raise _BoundElsewhere(
                errno.EBUSY,
                f"the working directory changed while binding {address}: the socket was "
                "bound relative to another directory; bind relative paths without a "
                "concurrent chdir(), or bind an absolute path",
            )

    @property
    def fd(self) -> int:
        return self._held.first

    def reach(self, name: bytes, given: Optional[bytes] = None) -> bytes:
        """The path to hand ``bind`` for ``name`` here: the kernel walks it again.

        Raises:
            ValueError: no path the kernel takes reaches it (the message
                names the limit).
            UnsupportedError: another user could redirect the walk, and
                this kernel cannot bind through a descriptor.
        """
        limit = backend.SUN_PATH_SIZE - 1
        if given is None:
            given = _join(self.path, name)
        if self.fixed and len(given) <= limit:
            return given
        if backend.FD_PATH is not None:
            via = _fd_path(self.fd, given)
            if len(via) + 1 + len(name) > limit:
                raise ValueError(_too_long_via(given, name, via + b"/" + name, limit))
            return via + b"/" + name
        if not self.fixed:
            raise UnsupportedError(
                "binds through a directory another user can change",
                backend.OS_NAME,
                f"{os.fsdecode(given)!r} runs through one, and the kernel would walk the path "
                "again, where that user could redirect it; there is no /proc/self/fd to bind "
                "through the directory udscompat opened",
            )
        raise ValueError(
            f"AF_UNIX path is {len(given)} bytes; CPython passes paths with a NUL, so at most "
            f"{limit} fit in sun_path on {backend.OS_NAME}"
        )

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[bool]:
        """Hold the directory's ``flock`` while udscompat changes a name in it.

        Every udscompat bind and removal here, in any thread or process, takes
        it, so none binds into a name another holds empty for a moment (an
        entry renamed aside to be judged) -- the put-back would find the name
        taken and a listener would be left unreachable.  Anyone who may read
        the directory can hold the lock too, so it is waited for at most
        ``_LOCK_WAIT`` seconds; then, or where the directory cannot be read
        or locked, the work goes on unlocked, which the removal protocol
        keeps safe, only not free of that rare displacement.  Yields whether
        the lock is held.
        """
        held = _Descriptors()
        try:
            try:
                fd = held.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, self.fd)
            except OSError:
                locked = False  # not readable by us: unlocked
            else:
                locked = _lock(fd)
            yield locked
        finally:
            held.close()  # releases the lock

    def close(self) -> None:
        self._held.close()

    def __enter__(self) -> _Directory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _lock(fd: int) -> bool:
    """``flock(fd, LOCK_EX)``, waiting at most ``_LOCK_WAIT`` seconds; False if not taken."""
    deadline = time.monotonic() + _LOCK_WAIT
    pause = 0.0001
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False  # no flock on this directory (EBADF, ENOLCK, EINVAL)
        if time.monotonic() >= deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.005)


def _open_directory(path: bytes) -> _Directory:
    """Open directory ``path`` without following a symbolic link another user could change.

    Each component is opened with ``O_NOFOLLOW`` relative to the last; a
    symbolic link is read and followed only if root or this user owns it.
    A relative path that climbs above the working directory (``..``) is
    never handed to the kernel as given: whoever may move the working
    directory chooses what its ``..`` is when the kernel walks it again.

    Raises:
        OSError: as ``open`` would (``ENOENT``, ``ENOTDIR``, ``EACCES``);
            ``ELOOP`` for a link another user owns, or past 40 links.
        UnsupportedError: Python's ``os`` here cannot work relative to a
            directory descriptor (so cannot avoid following links).
    """
    missing = [f.__name__ for f in _NEEDS_DIR_FD if f not in os.supports_dir_fd]
    if missing:
        raise UnsupportedError(
            "socket files handled without following links",
            backend.OS_NAME,
            f"Python's os lacks dir_fd for {', '.join(missing)}",
        )
    euid = os.geteuid()
    at_root = path.startswith(b"/")
    held = _Descriptors()
    try:
        held.open(b"/" if at_root else b".", _DIRECTORY)
        if at_root:
            start = None
        else:
            cwd = os.fstat(held.last)
            start = (cwd.st_dev, cwd.st_ino)
        todo = [part for part in reversed(path.split(b"/")) if part not in (b"", b".")]
        fixed = True
        links = depth = 0
        while todo:
            part = todo.pop()
            here = os.fstat(held.last)
            try:
                held.open(part, _DIRECTORY, held.last)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                target, link = _read_link(held.last, part, euid, path, exc)
                links += 1
                if links > _MAX_LINKS:
                    raise OSError(errno.ELOOP, f"more than {_MAX_LINKS} symbolic links") from None
                fixed = fixed and _cannot_be_replaced(here, link, euid)
                if target.startswith(b"/"):
                    held.close()
                    held.open(b"/", _DIRECTORY)
                    at_root, depth = True, 0
                todo.extend(p for p in reversed(target.split(b"/")) if p not in (b"", b"."))
                continue
            if part != b"..":
                depth += 1
                fixed = fixed and _cannot_be_replaced(here, os.fstat(held.last), euid)
            elif depth:  # back up to a directory walked here, which no one else can move
                depth -= 1
            elif not at_root:
                fixed = False  # the working directory's parent: not walked, not checked
            held.close_first()
    except BaseException:
        held.close()
        raise
    return _Directory(held, path, fixed, start)


def _read_link(
    dir_fd: int, part: bytes, euid: int, path: bytes, cause: OSError
) -> Tuple[bytes, os.stat_result]:
    link = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
    if not stat.S_ISLNK(link.st_mode):
        raise cause
    if link.st_uid not in (0, euid):
        raise OSError(
            errno.ELOOP,
            f"{os.fsdecode(path)!r}: {os.fsdecode(part)!r} is a symbolic link owned by uid "
            f"{link.st_uid}; udscompat follows only links of root or uid {euid}, which no "
            "other user can point elsewhere",
        )
    target = os.readlink(part, dir_fd=dir_fd)
    again = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
    if (again.st_ino, again.st_uid, again.st_ctime_ns) != (
        link.st_ino,
        link.st_uid,
        link.st_ctime_ns,
    ):
        raise OSError(errno.ELOOP, f"{os.fsdecode(path)!r}: {part!r} changed while it was read")
    return target, link


def _answering(table: List[BoundSocket], st: os.stat_result) -> List[BoundSocket]:
    """The sockets a connect or send to the file ``st`` would reach (or will, once listening)."""
    return [s for s in table if s.answers_at_name and s.is_bound_to(st.st_dev, st.st_ino)]


def _bound_to_inode(table: List[BoundSocket], st: os.stat_result) -> List[BoundSocket]:
    """``_answering``, by inode number alone.

    sock_diag reports the device of a file's superblock, which is not always the
    ``st_dev`` stat reports (btrfs gives each subvolume its own), so the device is
    not compared; a file of another filesystem with the same inode number only
    makes the answer more careful (bound, so kept).
    """
    return [
        s
        for s in table
        if s.answers_at_name and s.file is not None and s.file[1] == st.st_ino & s.file_ino_mask
    ]


def _cannot_be_replaced(directory: os.stat_result, entry: os.stat_result, euid: int) -> bool:
    """Can only root and this user rename or replace ``entry`` in ``directory``?

    POSIX ACLs show in the group bits (their mask), so group-writable counts
    as writable by others.
    """
    if directory.st_uid not in (0, euid):
        return False
    if directory.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        # A sticky directory lets only an entry's owner (and root) rename it.
        return bool(directory.st_mode & stat.S_ISVTX) and entry.st_uid in (0, euid)
    return True


def _join(directory: bytes, name: bytes) -> bytes:
    return (b"" if directory == b"/" else directory) + b"/" + name


def _split(path: bytes) -> Tuple[bytes, bytes]:
    head, slash, name = path.rpartition(b"/")
    if not slash:
        head = b"."
    elif not head:
        head = b"/"
    if name in (b"", b".", b".."):
        raise ValueError(f"AF_UNIX path {os.fsdecode(path)!r} does not name a file in a directory")
    return head, name


# -- stale files, and removing an entry only after looking at it where no one else can ------------


def _remove_stale(directory: _Directory, name: bytes) -> None:
    try:
        seen = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(seen.st_mode) or _is_live(directory, name, seen):
        return  # bind() will fail with EADDRINUSE, which is the truth
    # A file once stale stays stale (binding makes a new one); the second look only
    # guards against its inode number being reused by a new socket meanwhile.
    _remove_entry(directory, name, _key(seen), _newcomer)


def _sweep_leftovers(directory: _Directory) -> None:
    """Remove stale socket files that killed udscompat processes left aside here.

    SIGKILL between ``_remove_entry``'s rename and its unlink or put-back leaves
    the entry at ``.udscompat-`` and 16 hex digits, where no bind looks.  Called
    with the directory's lock held, so no udscompat removal that holds it is under
    way (one that gave up waiting for it may be: a stale entry it has aside is then
    removed here first, which that removal counts as done).  Only an entry of
    exactly that name form, a socket file (``lstat``: no link is followed), owned
    by this user, with no socket bound to it, is removed -- through
    ``_remove_entry``, so an entry swapped in meanwhile is left alone.  A live
    one is a successor's socket whose name died with the killed process: nothing
    tells where it belongs, so it stays.  At most ``_SWEEP_ENTRIES`` entries are
    read and ``_SWEEP_REMOVALS`` removed; what cannot be read or judged stays.
    """
    if os.scandir not in os.supports_fd:
        return
    held = _Descriptors()
    try:
        fd = held.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, directory.fd)
        with os.scandir(fd) as entries:
            names = [os.fsencode(e.name) for e in itertools.islice(entries, _SWEEP_ENTRIES)]
    except OSError:
        return  # not readable by us: nothing swept
    finally:
        held.close()
    euid = os.geteuid()
    removed = 0
    for name in filter(_is_aside_name, names):
        try:
            st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            ours = stat.S_ISSOCK(st.st_mode) and st.st_uid == euid
            if ours and not _is_live(directory, name, st):
                removed += _remove_entry(directory, name, _key(st), _newcomer)
        except OSError:
            continue  # gone meanwhile, or not to be judged now: left
        if removed >= _SWEEP_REMOVALS:
            return


def _is_aside_name(name: bytes) -> bool:
    """Is ``name`` one ``_remove_entry`` renames an entry to?"""
    digits = name[len(_PRIVATE_PREFIX) :]
    return (
        name.startswith(_PRIVATE_PREFIX)
        and len(digits) == _ASIDE_DIGITS
        and _HEX_DIGITS.issuperset(digits)
    )


def _is_live(directory: _Directory, name: bytes, st: os.stat_result) -> bool:
    """Is a socket bound to ``st``, the socket file at ``name`` in ``directory``?

    The datagram probe answers in one system call, on every kernel, for sockets of
    every network namespace.  The kernel's table -- a dump whose cost grows with
    every socket on the host, ~12 us each, and any local user can add sockets --
    only where the probe may not connect (a file whose mode keeps us out).
    """
    bound = _probe(directory, name)
    if bound is not None:
        return bound
    table = backend.bound_unix_sockets()
    if table is None:
        return True  # cannot be checked: not removed
    return bool(_bound_to_inode(table, st))


def _probe(directory: _Directory, name: bytes) -> Optional[bool]:
    try:
        target = directory.reach(name)
    except (ValueError, UnsupportedError):
        return None
    return _probe_at(target)


def _probe_at(target: Union[str, bytes]) -> Optional[bool]:
    """Is a socket bound to the socket file at ``target``?  ``None``: the probe may not tell.

    A datagram connect: every kernel read finds the socket bound to the file and
    refuses a socket of another type (``EPROTOTYPE``), or answers ``ECONNREFUSED``
    when none is bound, before it would queue a connection -- no listener sees it.
    Where a live socket gets the stale answer too (gVisor), that answer tells nothing.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(target)
        except OSError as exc:
            if exc.errno in _STALE:
                tells, _ = _probes.datagram_connect_tells_liveness()
                return False if tells or exc.errno == errno.ENOENT else None
            if exc.errno in _LIVE:
                return True
            if exc.errno == errno.EACCES:
                return None
            raise
        return True  # a bound datagram socket


#: ``keep(entry's lstat, the directory it is now in, its name there)``: leave it?
_Keep = Callable[[os.stat_result, "_Directory", bytes], bool]


def _never(taken: os.stat_result, directory: _Directory, name: bytes) -> bool:
    return False


def _newcomer(taken: os.stat_result, directory: _Directory, name: bytes) -> bool:
    """A socket bound to an entry that was stale when judged: a newcomer on its inode number."""
    return _is_live(directory, name, taken)


#: What identifies one socket file over time: device, inode, change time (ns; None: do not
#: compare) and birth time where the OS records one.
_FileKey = Tuple[int, int, Optional[int], Optional[float]]


def _remove_entry(directory: _Directory, name: bytes, key: _FileKey, keep: _Keep) -> bool:
    """Unlink ``name`` if it is the socket file ``key`` and ``keep`` does not object.

    The entry is looked at just before it is renamed aside to a random name
    (atomic: whatever is at the name then moves), judged again there, and
    only then unlinked or put back.  Something else at the name is left
    alone, and one that arrived between the look and the rename is put back
    at once.  Whatever interrupts after the rename -- a failed check, a signal
    handler that raises -- puts the entry back before the call ends.  (Only
    someone who may change the directory could swap the random name, and they
    could unlink anything in it themselves.)
    """
    aside = _PRIVATE_PREFIX + secrets.token_hex(_ASIDE_DIGITS // 2).encode()
    try:
        now = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        if not stat.S_ISSOCK(now.st_mode) or not _looks_same(now, key):
            return False  # not that file (any more): someone else's, untouched
        os.rename(name, aside, src_dir_fd=directory.fd, dst_dir_fd=directory.fd)
        taken = os.stat(aside, dir_fd=directory.fd, follow_symlinks=False)
        # The rename moved its change time; an inode number reused since the look above is
        # caught by the birth time where there is one, else by ``keep``.
        if not _same_after_rename(taken, key) or keep(taken, directory, aside):
            _put_back(directory, aside, name)
            return False
        try:
            os.unlink(aside, dir_fd=directory.fd)
        except FileNotFoundError:
            pass  # a sweep (_sweep_leftovers) by an instance that held the lock took it first
        return True
    except BaseException as exc:
        _put_back(directory, aside, name)
        if isinstance(exc, FileNotFoundError):
            return False  # the name, or the entry aside, was gone
        raise


def _put_back(directory: _Directory, aside: bytes, name: bytes) -> None:
    """Return the entry at ``aside`` to ``name``, never replacing what is there now.

    Idempotent (an interrupted put-back is finished by calling it again); a
    name taken meanwhile keeps its new entry, and ours stays beside it as
    ``.name.displaced-XXXX``.
    """
    fd = directory.fd
    try:
        taken = os.stat(aside, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return  # unlinked, or put back already
    try:
        os.link(aside, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    except FileExistsError:
        if not _same_inode(fd, name, taken):
            _displace(fd, aside, name)
            return
    except OSError as exc:
        if exc.errno not in _NO_LINK:
            raise
        # Not ours to link (Linux's protected_hardlinks: another user's file), or no
        # hard links here: move it back.  rename() replaces, so only onto a free name;
        # an entry arriving in the microseconds between this look and the rename is
        # replaced -- narrower than leaving the entry aside for good.
        if _exists(fd, name):
            _displace(fd, aside, name)
        else:
            os.rename(aside, name, src_dir_fd=fd, dst_dir_fd=fd)
        return
    os.unlink(aside, dir_fd=fd)


#: ``link`` refused for the file, not for the name: no permission to link it (EPERM),
#: too many links, no hard links on this filesystem.
_NO_LINK = {errno.EPERM, errno.EACCES, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP}


def _displace(fd: int, aside: bytes, name: bytes) -> None:
    """Someone took the name while it was empty: keep our entry beside it."""
    spare = b"." + name + b".displaced-" + secrets.token_hex(4).encode()
    os.rename(aside, spare, src_dir_fd=fd, dst_dir_fd=fd)


def _exists(fd: int, name: bytes) -> bool:
    try:
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _same_inode(fd: int, name: bytes, st: os.stat_result) -> bool:
    try:
        there = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return (there.st_dev, there.st_ino) == (st.st_dev, st.st_ino)


def _key(st: os.stat_result) -> _FileKey:
    return (st.st_dev, st.st_ino, st.st_ctime_ns, _birth(st))


def _looks_same(st: os.stat_result, key: _FileKey) -> bool:
    """Is ``st`` the file ``key`` was taken from (before anything renamed it)?

    The birth time where the OS records one; else the change time, which also
    moves on a chmod or a link made or removed -- after which udscompat leaves
    the file alone, the safe side.
    """
    dev, ino, ctime_ns, birth = key
    if (st.st_dev, st.st_ino) != (dev, ino):
        return False
    if birth is not None:
        return _birth(st) == birth
    return ctime_ns is None or st.st_ctime_ns == ctime_ns


def _same_after_rename(st: os.stat_result, key: _FileKey) -> bool:
    dev, ino, _, birth = key
    return (st.st_dev, st.st_ino) == (dev, ino) and birth in (None, _birth(st))


class _PrivateDirectory(_Directory):
    """A directory only this user can enter, made beside the target (same filesystem, so a
    socket bound in it can be linked into place)."""

    __slots__ = ("_name", "_parent")

    def __init__(self, parent: _Directory) -> None:
        self._parent = parent
        self._name = _PRIVATE_PREFIX + secrets.token_hex(6).encode()
        held = _Descriptors()
        try:
            os.mkdir(self._name, 0o700, dir_fd=parent.fd)
            fd = held.open(self._name, _DIRECTORY, parent.fd)
            st = os.fstat(fd)
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise OSError(errno.EPERM, "the private directory udscompat made was replaced")
        except FileExistsError:
            raise  # a name of 48 random bits taken: not ours to remove
        except BaseException:
            held.close()
            self._remove()
            raise
        super().__init__(held, _join(parent.path, self._name), parent.fixed, parent.start)

    def _remove(self) -> None:
        try:
            os.rmdir(self._name, dir_fd=self._parent.fd)
        except OSError:
            pass  # not empty (an entry could not be put back) or already gone

    def close(self) -> None:
        self._remove()  # by name, while the descriptor still pins this directory
        super().close()

    def __enter__(self) -> _PrivateDirectory:
        return self


# -- mode -----------------------------------------------------------------------------------------


def _bound_file(directory: _Directory, name: bytes, address: UnixSocketAddr) -> os.stat_result:
    """The socket file just bound at ``name``.

    Another instance's stale-file check may hold it aside for a moment -- longer
    when that instance loses the CPU there -- so a missing file is waited for,
    ``_SETTLE_TIME`` seconds at most.  Holding the directory's lock does not rule that
    out: an instance that waited ``_LOCK_WAIT`` for it in vain (we lost the CPU
    while holding it) goes on without it, and its rename can come after our bind
    when its look came before.
    """
    deadline = time.monotonic() + _SETTLE_TIME
    pause = 0.0005
    while True:
        try:
            st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        except FileNotFoundError:
            if time.monotonic() < deadline:
                time.sleep(pause)
                pause = min(pause * 2, 0.02)
                continue
            st = None
        if st is None or not stat.S_ISSOCK(st.st_mode):
            raise OSError(
                errno.EBUSY,
                f"the socket file at {address} was moved or replaced as soon as it was bound",
            )
        return st


def _check_mode(mode: Optional[int]) -> Optional[int]:
    if mode is None:
        return None
    if not isinstance(mode, int) or isinstance(mode, bool):
        raise TypeError(f"mode must be an int (permission bits) or None, not {type(mode).__name__}")
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"mode must be permission bits between 0 and 0o7777, not {mode:#o}")
    return mode


def _check_backlog(backlog: Optional[int]) -> Optional[int]:
    if backlog is None:
        return None
    if not isinstance(backlog, int) or isinstance(backlog, bool):
        raise TypeError(f"backlog must be an int or None, not {type(backlog).__name__}")
    if not _INT_MIN <= backlog <= _INT_MAX:
        raise OverflowError(f"backlog must fit in a C int, not {backlog}")
    return backlog


def _add_masked_bits(
    directory: _Directory, name: bytes, sock: socket.socket, mode: int, address: UnixSocketAddr
) -> None:
    """Give the file the bits of ``mode`` the umask removed, if it is provably this socket's."""
    held = _Descriptors()
    try:
        fd = held.open(name, os.O_NOFOLLOW | os.O_CLOEXEC | getattr(os, "O_PATH", 0), directory.fd)
        st = os.fstat(fd)
        if stat.S_IMODE(st.st_mode) == mode:
            return
        if backend.FD_PATH is None:
            raise UnsupportedError(
                "socket file modes the umask does not allow",
                backend.OS_NAME,
                f"the umask took {stat.S_IMODE(st.st_mode) ^ mode:#o} from mode {mode:#o} at "
                f"{address}, and without /proc/self/fd udscompat cannot change the mode of "
                "that very file; use a umask that keeps those bits",
            )
        if not _provably_ours(directory, st, sock, address):
            raise OSError(
                errno.EBUSY,
                f"the socket file at {address} was replaced as soon as it was bound; its mode "
                "was left alone",
            )
        os.chmod(backend.FD_PATH.format(fd), mode)  # this inode: no path walk, no link
    finally:
        held.close()


def _provably_ours(
    directory: _Directory, st: os.stat_result, sock: socket.socket, address: UnixSocketAddr
) -> bool:
    """Is ``st``, the entry at our name just after we bound there, our socket's file?

    In a directory only root and this user may change, no one else can have
    replaced it.  Elsewhere the kernel's table says which file our socket is
    bound to, compared by inode number within the directory's filesystem (its
    device number is not the one sock_diag reports on btrfs).

    Raises:
        UnsupportedError: there is no table to ask, or it did not answer.
    """
    if not stat.S_ISSOCK(st.st_mode):
        return False
    where = os.fstat(directory.fd)
    if st.st_dev != where.st_dev:
        return False  # not an entry of that filesystem: a mount point
    if _cannot_be_replaced(where, st, os.geteuid()):
        return True
    table = backend.bound_unix_sockets()
    if table is None:
        raise UnsupportedError(
            "socket files proved to be a socket's own in directories others may change",
            backend.OS_NAME,
            f"the kernel's socket table (sock_diag) did not answer for {address}, so "
            "udscompat cannot tell its own socket file from one put in its place",
        )
    inode = os.fstat(sock.fileno()).st_ino
    return any(
        s.inode == inode and s.file is not None and s.file[1] == st.st_ino & s.file_ino_mask
        for s in table
    )


def _undo_bind(directory: _Directory, name: bytes, sock: socket.socket, unbound: Any) -> None:
    """A bind() that raises leaves no socket file: remove the one our socket made, if any.

    ``unbound`` is what ``getsockname()`` said before binding; what cannot be
    looked at is left alone (the exception being raised says what failed).
    """
    try:
        if sock.getsockname() == unbound:
            return  # the kernel bound nothing: whatever is at the name is not ours
        st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
        if _provably_ours(directory, st, sock, UnixSocketAddr.from_sockaddr(name)):
            _remove_entry(directory, name, _key(st), _never)
    except (OSError, ValueError):
        pass


def _bind_privately(
    sock: socket.socket,
    directory: _Directory,
    name: bytes,
    mode: Optional[int],
    backlog: Optional[int],
    address: UnixSocketAddr,
) -> None:
    """Bind in a private directory, set the mode and listen there, then link into place."""
    with _PrivateDirectory(directory) as private:
        try:
            _call(address, sock.bind, private.reach(name))
            private.check_start(address)
            if mode is not None:
                os.chmod(name, mode, dir_fd=private.fd)  # our own 0700 directory: nothing to swap
            if backlog is not None:
                sock.listen(backlog)
            try:
                os.link(
                    name,
                    name,
                    src_dir_fd=private.fd,
                    dst_dir_fd=directory.fd,
                    follow_symlinks=False,
                )
            except FileExistsError as exc:
                raise _with_address(
                    OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)), "cannot bind", address
                ) from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=private.fd)


# -- small helpers ---------------------------------------------------------------------------------


def _call(address: UnixSocketAddr, bind_call: Callable[[Any], None], target: Any) -> None:
    try:
        bind_call(target)
    except OSError as exc:
        error = _with_address(exc, "cannot bind", address)
        if exc.errno == errno.EADDRINUSE and address.kind == "path":
            removes, why = _probes.stale_socket_files()
            if not removes:  # say why a stale file may be what is in the way
                error = OSError(exc.errno, f"{error.strerror}; socket files are {why}")
        raise error from exc


def _with_address(exc: OSError, what: str, address: UnixSocketAddr) -> OSError:
    return OSError(exc.errno, f"{exc.strerror}: {what} {address}")


def _birth(st: os.stat_result) -> Optional[float]:
    birth: Optional[float] = getattr(st, "st_birthtime", None)
    return birth
