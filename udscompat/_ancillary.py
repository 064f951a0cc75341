"""Ancillary data beyond descriptors: the sender's credentials, the peer's security label.

``send_ancillary``/``recv_ancillary`` are ``send_fds``/``recv_fds`` that also
carry the sender's credentials, one value type on every OS that has them:

* Linux: the receiver sets ``SO_PASSCRED``; every message then brings an
  ``SCM_CREDENTIALS`` ucred, which the sender may choose (its own ids, or
  others with privilege) and the kernel checks.
* FreeBSD: the receiver sets ``LOCAL_CREDS_PERSISTENT`` (every message brings
  a sockcred2); a sender may also attach ``SCM_CREDS`` (a cmsgcred the kernel
  fills in).
* DragonFly: a sender attaches ``SCM_CREDS``; the receiver's ``SO_PASSCRED``
  adds one to datagrams.
* NetBSD: the receiver sets ``LOCAL_CREDS`` (every datagram; the first
  message of a stream).
* illumos: the receiver sets ``SO_RECVUCRED`` (every message, a ucred_t).
* macOS, OpenBSD: none (``UnsupportedError``).

The uds crate's names map as: ``send_ancillary``/``recv_ancillary`` ->
the same; ``SendCredentials::{Real, Effective, Custom}`` ->
``send_credentials(effective=...)``/``SendCredentials(pid, uid, gid)``;
``ReceivedCredentials`` -> the same name, with fields instead of
``effective_or_sent_uid()``-style accessors; ``initial_peer_selinux_context``
-> ``peer_security_label``.
"""

from __future__ import annotations

import array
import errno
import functools
import os
import socket
from typing import (
    TYPE_CHECKING,
    Any,
    Dict,
    Iterable,
    List,
    NamedTuple,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from udscompat import _fdpass, _io, _probes, _sockarg
from udscompat._address import AddressArg, UnixSocketAddr
from udscompat._bind import sendmsg_to
from udscompat._errors import UnsupportedError
from udscompat._msgcreds import ReceivedCredentials, SendCredentials
from udscompat._platform import backend
from udscompat._records import Message, _checked_fields, tuplegetter
from udscompat._sockarg import SocketLike

__all__ = [
    "AncillaryMessage",
    "CredentialsProbe",
    "credentials_probe",
    "pass_credentials",
    "peer_security_label",
    "recv_ancillary",
    "send_ancillary",
    "send_credentials",
]

#: What ``send_ancillary`` and the connections' ``send`` take as ``data``: one bytes-like
#: object, or a list or tuple of them sent as one message.
Buffers = Union[bytes, bytearray, memoryview, List[Any], Tuple[Any, ...]]

_SOL_SOCKET = backend.SOL_SOCKET
_MSG_PEEK = int(socket.MSG_PEEK)  # a plain int: IntFlag arithmetic is a Python call
_FD_CMSG_TYPES = frozenset({backend.SCM_RIGHTS, *backend.FD_CARRYING_CMSG_TYPES})
#: Room for the kernel's descriptor cap, the marker and this kernel's credential messages
#: (every receive's room: see ``_io.ANCBUF_SIZE``).
ANCILLARY_ROOM = _io.ANCBUF_SIZE


class AncillaryMessage(Message):
    """One ``recv_ancillary``: a ``Message`` plus the ``msg_flags`` and the sender's address.

    A ``Message`` (``data``, ``fds``, ``truncated``, ``credentials``, in that
    order) with two more fields, so code that takes a ``Message`` takes this.

    Attributes:
        data: the payload, at most the ``bufsize`` asked for (``b""`` with
            nothing else: end-of-stream on a stream socket).
        fds: descriptors that came with it: new, close-on-exec, the caller's
            to close.
        truncated: the kernel cut the payload to ``bufsize`` (MSG_TRUNC).
        credentials: the sender's credentials where the kernel attached them
            (``pass_credentials``, or a sender that attached its own), else
            ``None``; also ``None`` when one read of a stream spans sends
            made under different identities (no single answer is true).
        flags: the ``msg_flags`` recvmsg returned.
        address: the sender's address (datagrams); unnamed otherwise.
    """

    __slots__ = ()
    _fields = (*Message._fields, "flags", "address")

    if TYPE_CHECKING:

        @property
        def flags(self) -> int: ...
        @property
        def address(self) -> UnixSocketAddr: ...
        @property
        def credentials(self) -> Optional[ReceivedCredentials]: ...  # the kernel's, never a claim

    else:
        flags = tuplegetter(4, "the msg_flags recvmsg returned")
        address = tuplegetter(5, "the sender's address (unnamed where it has none)")

    def __new__(  # a Message with two more fields
        cls,
        data: bytes,
        fds: Iterable[int] = (),
        truncated: bool = False,
        credentials: Optional[ReceivedCredentials] = None,
        flags: int = 0,
        address: Optional[UnixSocketAddr] = None,
    ) -> AncillaryMessage:
        """Build one, checking every field (the library's own use skips the checks)."""
        if credentials is not None and not isinstance(credentials, ReceivedCredentials):
            raise TypeError(
                "AncillaryMessage.credentials must be a ReceivedCredentials or None (the "
                f"kernel's; claims exist only in emulated frames), not {type(credentials).__name__}"
            )
        fields = _checked_fields(cls, data, fds, truncated, credentials)
        if type(flags) is not int:
            raise TypeError(f"AncillaryMessage.flags must be an int, not {type(flags).__name__}")
        if address is None:
            address = UnixSocketAddr.unnamed()
        elif not isinstance(address, UnixSocketAddr):
            raise TypeError(
                f"AncillaryMessage.address must be a UnixSocketAddr, not {type(address).__name__}"
            )
        return tuple.__new__(cls, (*fields, flags, address))

    def __repr__(self) -> str:
        return f"{Message.__repr__(self)[:-1]}, flags={self.flags:#x}, address={self.address!r})"


def pass_credentials(sock: SocketLike, enable: bool = True) -> None:
    """Ask the kernel to attach the sender's credentials to what ``sock`` receives.

    Linux ``SO_PASSCRED``; FreeBSD ``LOCAL_CREDS_PERSISTENT`` (13+);
    DragonFly ``SO_PASSCRED`` (datagrams: a stream sender attaches its own
    with ``send_credentials()``); NetBSD ``LOCAL_CREDS`` (every datagram,
    only the first message on a stream or seqpacket socket); illumos
    ``SO_RECVUCRED``.  Set it before the peer sends: what is already queued
    came without.  On Linux a socket with it set that connects or sends
    while unbound is autobound to an abstract name.

    Raises:
        UnsupportedError: macOS and OpenBSD have no such mechanism.
        ValueError / TypeError: ``sock`` is not an AF_UNIX socket.

    Availability: Linux, FreeBSD 13+, DragonFly, NetBSD 7+, illumos.
    """
    if not isinstance(sock, socket.socket):
        _sockarg.pass_credentials(sock, enable)
        return
    _fdpass._check_unix(sock)
    backend.pass_credentials(sock, bool(enable))


def send_credentials(*, effective: bool = False) -> SendCredentials:
    """This process's own credentials, to attach with ``send_ancillary(credentials=...)``.

    Args:
        effective: claim the effective uid and gid rather than the real
            ones (which is what Linux attaches when the sender names none).
            Only Linux carries the choice: the BSDs and illumos send both.

    Raises:
        UnsupportedError: the OS has no ancillary credentials.

    Availability: Linux, FreeBSD, DragonFly, NetBSD, illumos.
    """
    if effective:
        creds = SendCredentials(os.getpid(), os.geteuid(), os.getegid())
    else:
        creds = SendCredentials(os.getpid(), os.getuid(), os.getgid())
    backend.credentials_cmsg(creds)  # raises where there is no mechanism at all
    return creds


def send_ancillary(
    sock: SocketLike,
    data: Buffers,
    fds: Sequence[Any] = (),
    credentials: Optional[SendCredentials] = None,
    flags: int = 0,
    address: Optional[AddressArg] = None,
) -> int:
    """Like ``send_fds``, but may attach the sender's credentials too.

    Args:
        sock: an AF_UNIX socket of any type, a ``SeqpacketConn`` or
            ``UnixDatagram`` (their ``send``), or an object whose ``fileno()``
            is a socket's (see ``udscompat._sockarg``).
        data: a bytes-like object, or a sequence of them sent as one message.
        fds: descriptors (ints or objects with ``fileno()``); they may be
            closed as soon as this returns.
        credentials: what to claim (``send_credentials()``, or on Linux with
            privilege a ``SendCredentials`` naming others).  The receiver
            sees them only if it called ``pass_credentials`` (on FreeBSD and
            DragonFly: also without).  Where the receiver alone decides
            (NetBSD, illumos) nothing is attached, but the claim is checked.
        flags: ``sendmsg`` flags.
        address: destination of an unconnected datagram socket, by udscompat's
            one address rule (a ``UnixSocketAddr``; ``"@name"`` is abstract).

    Returns:
        The number of payload bytes sent (a stream may take fewer; the
        ancillary data travel with the first byte).

    Raises:
        UnsupportedError: no ancillary credentials on this OS; credentials
            other than this process's own where the kernel fills in the
            truth; credentials together with descriptors on DragonFly.
        ValueError: too many or invalid descriptors, or ancillary data with
            no payload on a stream socket (Linux would drop it silently).
        TypeError: ``credentials`` is not a ``SendCredentials``.
        OSError: from ``sendmsg`` (on Linux ``EPERM``/``ESRCH`` for ids the
            sender may not claim).
    """
    if not isinstance(sock, socket.socket):
        return _sockarg.send_ancillary(sock, data, fds, credentials, flags, address)
    _fdpass._check_unix(sock)
    buffers, _ = as_buffers(data)
    numbers = _io.check_fds(fds)
    ancdata = ancillary_data(sock, numbers, credentials)
    if (
        ancdata
        and _fdpass._raw_type(sock) & 0xF == socket.SOCK_STREAM
        and not _fdpass._has_payload(buffers)
    ):
        raise ValueError("ancillary data need at least one payload byte on a stream socket")
    # Held before the send (a full descriptor table fails it before anything went out, and
    # an acknowledgement can never arrive before its batch is held).
    batch = _fdpass.REGISTRY.hold(sock, numbers) if numbers and _fdpass.hold_sent_fds() else None
    try:
        if address is None:
            return sock.sendmsg(buffers, ancdata, flags)
        return sendmsg_to(sock, buffers, ancdata, flags, address)
    except OSError:
        if batch is not None:
            _fdpass.REGISTRY.unhold(sock, batch)
        raise


def ancillary_data(
    sock: socket.socket, numbers: array.array[int], credentials: Optional[SendCredentials]
) -> List[Tuple[int, int, Any]]:
    """The control messages of one send: the credentials (if any), then the descriptors.

    Raises:
        As ``credentials_data``.
    """
    ancdata = [] if credentials is None else credentials_data(credentials, bool(numbers))
    if numbers:
        ancdata += _io.rights(sock, numbers)
    return ancdata


def credentials_data(credentials: SendCredentials, with_fds: bool) -> List[Tuple[int, int, Any]]:
    """The control message that attaches ``credentials`` (none where the receiver decides).

    Raises:
        TypeError: ``credentials`` is not a ``SendCredentials``.
        UnsupportedError: no ancillary credentials here; ids other than this
            process's own where the kernel fills in the truth; credentials
            together with descriptors where the kernel reads only one control
            message (DragonFly).
    """
    cmsg = _credentials_cmsg(credentials)
    if cmsg is None:
        return []
    if with_fds and not backend.CREDENTIALS_WITH_FDS:
        raise UnsupportedError(
            "credentials and descriptors in one message",
            backend.OS_NAME,
            "the kernel reads only the first control message of a send",
        )
    return [cmsg]


#: One receive with room for credentials: ``(data, fds, msg_flags, address, marked,
#: credentials)``; ``msg_flags`` without the MSG_CMSG_CLOEXEC udscompat added.
Received = Tuple[bytes, List[int], int, Any, bool, Optional[ReceivedCredentials]]


def receive(
    sock: socket.socket,
    bufsize: int,
    maxfds: int,
    flags: int = 0,
    *,
    refuse_peeked_fds: bool = False,
) -> Received:
    """One ``recvmsg`` with room for the credentials; like ``_io.recv_with_fds`` otherwise.

    The receive of every path that reports credentials (``recv_ancillary``,
    ``UnixDatagram``, seqpacket connections after ``pass_credentials``, and
    the native seqpacket ``peek``).  A ``MSG_PEEK`` reads descriptors only
    where the kernel installed copies for the peeker
    (``_probes.peek_installs_fds``); elsewhere the control data holds kernel
    pointers or zeros, which are never read as descriptors: they are left
    out, or with ``refuse_peeked_fds`` the peek raises ``UnsupportedError``.

    Raises:
        ControlTruncatedError: as ``recv_with_fds``; every descriptor closed first.
        UnsupportedError: (``refuse_peeked_fds``) the peeked message carries
            descriptors and the kernel installed no copies of them.
        OSError: ``EMFILE`` for a peek of a message with descriptors when the
            descriptor table is too full to learn whether the kernel installs
            copies (``_io.peek_recvmsg``): nothing installed, the message queued.
        OSError: ``EPROTO`` for a credential message that cannot be what the
            kernel's headers say (descriptors closed first).
    """
    cloexec = _io.cloexec_flag()
    added = (cloexec or 0) & ~flags  # reported back in msg_flags; not the caller's
    if flags & _MSG_PEEK:
        data, ancdata, msg_flags, source, installed = _io.peek_recvmsg(
            sock, bufsize, ANCILLARY_ROOM, flags | added
        )
        if not installed and ancdata and _io.carries_fds(ancdata):
            ancdata = _uninstalled_peek(ancdata, refuse_peeked_fds)
    else:
        try:
            data, ancdata, msg_flags, source = sock.recvmsg(bufsize, ANCILLARY_ROOM, flags | added)
        except OSError as exc:
            if exc.errno == errno.EMSGSIZE:
                raise _io.emsgsize_error() from exc
            raise
    fds, marked = _io.collect_fds(data, ancdata, msg_flags, maxfds, cloexec is None)
    try:
        creds = backend.credentials_from_cmsgs(ancdata)
    except BaseException:
        _io.close_fds(fds)
        raise
    if fds and _fdpass.REGISTRY.originals:
        fds = _fdpass.guard_reused(fds)
    return data, fds, msg_flags & ~added, source, marked, creds


def _uninstalled_peek(
    ancdata: List[Tuple[int, int, Any]], refuse: bool
) -> List[Tuple[int, int, Any]]:
    """A peek's control data without the descriptor messages the kernel did not install."""
    kept = [c for c in ancdata if not (c[0] == _SOL_SOCKET and c[1] in _FD_CMSG_TYPES)]
    if refuse and len(kept) != len(ancdata):
        raise UnsupportedError(
            "descriptors on a peek",
            backend.OS_NAME,
            "the kernel installs no copies of a peeked message's descriptors (its control "
            "data holds kernel pointers or zeros); receive the message to get them",
        )
    return kept


def recv_ancillary(
    sock: SocketLike, bufsize: int, maxfds: int = 0, flags: int = 0
) -> AncillaryMessage:
    """Like ``recv_fds``, but also returns the sender's credentials, flags and address.

    Args:
        sock: an AF_UNIX socket.
        bufsize: most payload bytes to receive.
        maxfds: most descriptors the caller accepts.
        flags: ``recvmsg`` flags.  ``MSG_PEEK``: where the kernel installs
            copies of the descriptors for a peek (Linux) the caller owns and
            must close them; where it does not (FreeBSD, NetBSD, macOS copy
            out kernel pointers or zeros, OpenBSD leaves them out) the peek
            reports no descriptors, as ``recv_fds`` does.

    Raises:
        ControlTruncatedError: control data truncated, or more than
            ``maxfds`` descriptors; every received descriptor was closed.
        OSError: ``EPROTO`` when a credential message cannot be what the
            kernel's headers say it is (descriptors closed first); ``EMFILE``
            for a ``MSG_PEEK`` of a message with descriptors under a table too
            full to learn whether the kernel's peek installs copies, as
            ``recv_fds`` (nothing installed, the message still queued).
        ValueError: negative ``bufsize`` or ``maxfds``, or not AF_UNIX.
    """
    if not isinstance(sock, socket.socket):
        return _sockarg.recv_ancillary(sock, bufsize, maxfds, flags)
    _fdpass._check_unix(sock)
    bufsize, maxfds = _io.check_sizes(bufsize, maxfds)
    data, fds, msg_flags, source, _, creds = receive(sock, bufsize, maxfds, flags)
    return tuple.__new__(
        AncillaryMessage,
        (
            data,
            tuple(fds),
            bool(msg_flags & backend.MSG_TRUNC),
            creds,
            msg_flags,
            UnixSocketAddr.from_sockaddr(source),
        ),
    )


def peer_security_label(sock: SocketLike) -> Optional[bytes]:
    """The connected peer's security label (SELinux context, AppArmor profile, Smack label).

    ``SO_PEERSEC``: the label of the peer as the LSM recorded it at
    connect or socketpair time, without the C string's NUL.  Never guessed.

    Returns:
        The label, or ``None`` where no LSM gave the peer one (the kernel
        answers ENOPROTOOPT, as it does on a machine without SELinux,
        AppArmor or Smack).

    Raises:
        UnsupportedError: not Linux.
        OSError: from ``getsockopt`` (e.g. ``ENOTCONN``).

    Availability: Linux.
    """
    if not isinstance(sock, socket.socket):
        return _sockarg.peer_security_label(sock)
    _fdpass._check_unix(sock)
    return backend.peer_security_label(sock)


def features(seqpacket: str) -> Dict[str, Tuple[str, str]]:
    """``capabilities()``' rows for issue 14's features: name -> (status, detail).

    ``seqpacket`` is the seqpacket feature's status (``"native"`` or
    ``"emulated"``).  Probes on private socketpairs; nothing blocks.
    """
    probe = credentials_probe()
    rows: Dict[str, Tuple[str, str]] = {}
    rows["ancillary_credentials"] = ("native" if probe.available else "unavailable", probe.reason)
    try:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    except OSError as exc:
        rows["peer_security_label"] = ("unavailable", f"socketpair failed: {exc}")
    else:
        with a, b:
            try:
                label = backend.peer_security_label(a)
            except (UnsupportedError, OSError) as exc:
                rows["peer_security_label"] = ("unavailable", str(exc))
            else:
                seen = "none here (no labelling LSM)" if label is None else f"{label!r} here"
                rows["peer_security_label"] = (
                    "native",
                    f"SO_PEERSEC; a socketpair's label: {seen}",
                )
    rows["datagram"] = ("native", "UnixDatagram: bind, send_to/recv_from with fds and credentials")
    emulated = seqpacket != "native"
    if not emulated:
        rows["seqpacket_dup"] = ("native", "dup(): a new descriptor for the kernel socket")
    else:
        rows["seqpacket_dup"] = (
            "unavailable",
            "emulated connections refuse dup(): their framing state lives in one object",
        )
    if emulated:
        peek = "emulated: the next frame is held; each peek hands out F_DUPFD_CLOEXEC copies"
    elif _probes.peek_installs_fds():
        peek = "MSG_PEEK; the kernel installs new descriptors per peek (the caller's)"
    else:
        peek = "MSG_PEEK; a message with descriptors raises UnsupportedError (no copies here)"
    rows["seqpacket_peek"] = ("emulated" if emulated else "native", peek)
    if not emulated:
        rows["seqpacket_credentials"] = (
            ("native", "the kernel's, per message")
            if probe.available
            else ("unavailable", probe.reason)
        )
    elif probe.stream in ("every message", "sender attaches"):
        rows["seqpacket_credentials"] = (
            "emulated",
            f"the kernel's, per frame (stream writes: {probe.stream})",
        )
    else:
        rows["seqpacket_credentials"] = (
            "emulated",
            "the sender's claims only (ClaimedCredentials, NOT verified): the kernel attaches "
            f"none to stream writes ({probe.reason})",
        )
    return rows


class CredentialsProbe(NamedTuple):
    """What this kernel does with ancillary credentials, as a socketpair shows."""

    #: Some message carried the sender's credentials.
    available: bool
    #: The mechanism, or why there is none.
    reason: str
    #: Which datagrams carry them once ``pass_credentials`` is on: ``"every message"``,
    #: ``"none"``.
    datagram: str = "none"
    #: Which stream messages do: ``"every message"``, ``"first message"`` (NetBSD's
    #: LOCAL_CREDS), ``"sender attaches"`` (DragonFly: only with ``send_credentials()``),
    #: ``"none"``.
    stream: str = "none"
    #: The credentials name the sending pid.
    pid: bool = False
    #: Real and effective ids come separately (not Linux's one uid, one gid).
    effective_ids: bool = False


@functools.cache
def credentials_probe() -> CredentialsProbe:
    """Probe ancillary credentials once: pass them on, send, and see what arrives.

    Private socketpairs, non-blocking, two plain messages per type (and one
    with ``send_credentials()`` attached on a stream where plain ones bring
    none); everything is closed whatever happens.
    """
    try:
        own = send_credentials()
    except UnsupportedError as exc:
        return CredentialsProbe(False, exc.reason)
    seen: List[ReceivedCredentials] = []
    try:
        datagram = _probe_kind(socket.SOCK_DGRAM, seen, None)
        stream = _probe_kind(socket.SOCK_STREAM, seen, None)
        if stream == "none" and _probe_kind(socket.SOCK_STREAM, seen, own) != "none":
            stream = "sender attaches"
    except OSError as exc:
        return CredentialsProbe(False, f"probing failed: {exc}")
    if not seen:
        return CredentialsProbe(False, "no message carried the sender's credentials")
    return CredentialsProbe(
        True,
        f"{backend.OS_NAME}: {datagram} on datagrams, {stream} on streams",
        datagram,
        stream,
        all(c.pid == own.pid for c in seen),
        all(c.euid is not None for c in seen),
    )


def _probe_kind(
    kind: int, seen: List[ReceivedCredentials], attach: Optional[SendCredentials]
) -> str:
    a, b = socket.socketpair(socket.AF_UNIX, kind)
    with a, b:
        a.setblocking(False)
        b.setblocking(False)
        pass_credentials(b)
        carried = []
        for data in (b"1", b"2"):
            send_ancillary(a, data, credentials=attach)
            creds = recv_ancillary(b, 8).credentials
            if creds is not None:
                seen.append(creds)
            carried.append(creds is not None)
    if all(carried):
        return "every message"
    return "first message" if carried[0] else "none"


def _credentials_cmsg(creds: SendCredentials) -> Optional[Tuple[int, int, bytes]]:
    if not isinstance(creds, SendCredentials):
        raise TypeError(f"credentials must be a SendCredentials, got {type(creds).__name__}")
    cmsg = backend.credentials_cmsg(creds)
    if not backend.SENDER_NAMES_CREDENTIALS and not creds.is_own():
        raise UnsupportedError(
            "credentials other than the sender's own",
            backend.OS_NAME,
            "the kernel attaches the sending process's own pid and ids",
        )
    return cmsg


def as_buffers(data: Buffers) -> Tuple[List[Any], int]:
    """``data`` as the buffer list of one ``sendmsg``, and the number of bytes in it.

    One bytes-like object, or a list or tuple of them (several buffers, one
    message).

    Raises:
        TypeError: ``data`` (or one of its items) is not bytes-like.
        ValueError: more buffers than one ``sendmsg`` takes (IOV_MAX).
    """
    if type(data) is bytes:
        return [data], len(data)
    if isinstance(data, (list, tuple)):
        if _IOV_MAX is not None and len(data) > _IOV_MAX:
            raise ValueError(
                f"data: {len(data)} buffers in one message; sendmsg takes at most {_IOV_MAX}"
            )
        size = 0
        for item in data:
            size += _nbytes(item)
        return list(data), size
    return [data], _nbytes(data)


def _nbytes(item: Any) -> int:
    try:
        view = memoryview(item)
    except TypeError:
        raise TypeError(
            f"data: expected a bytes-like object or a list of them, not {type(item).__name__}"
        ) from None
    if not view.c_contiguous:
        # sendmsg refuses it (BufferError), the emulation's join too: one error for both.
        raise TypeError(f"data: {type(item).__name__} is not C-contiguous")
    return view.nbytes


def _iov_max() -> Optional[int]:
    try:
        value = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        return None  # the kernel's own EMSGSIZE then
    return value if value > 0 else None


_IOV_MAX = _iov_max()


AncillaryMessage.__module__ = "udscompat"
