"""``UnixSocketAddr``: one value type for path, abstract and unnamed addresses.

Validation happens here, before any system call, with errors that name the
limit and the OS (CPython's own "AF_UNIX path too long" has errno None).

One rule turns what a caller passes into an address, the one the Rust ``uds``
crate's ``UnixSocketAddr::new`` applies to strings: a leading ``@`` or NUL
means abstract, ``""`` unnamed, anything else a path (``./@name`` is a path
that starts with ``@``).  Bytes and ``os.PathLike`` objects are paths, as for
the ``socket`` module, unless they start with NUL.  ``as_address`` applies it;
every udscompat call that takes an address goes through it.
"""

from __future__ import annotations

import os
from typing import Literal, Optional, Union

from udscompat import _probes
from udscompat._errors import UnsupportedError
from udscompat._platform import backend

__all__ = ["AddressArg", "AddressKind", "SockaddrLike", "UnixSocketAddr", "as_address"]

AddressKind = Literal["path", "abstract", "unnamed"]
PathLike = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]
#: What every udscompat call that takes an address accepts (see ``as_address``).
AddressArg = Union[
    "UnixSocketAddr", str, bytes, bytearray, "os.PathLike[str]", "os.PathLike[bytes]"
]
#: What Python's socket module returns for an AF_UNIX address.
SockaddrLike = Union[str, bytes, bytearray, None]

_PRINTABLE = frozenset(range(0x20, 0x7F)) - {ord("\\")}


class UnixSocketAddr:
    """An AF_UNIX address: a filesystem path, an abstract name, or unnamed.

    Immutable, hashable, compared by value.  Build one with a ``from_*``
    constructor or ``parse``; hand ``to_sockaddr()`` to ``bind``,
    ``connect`` or ``sendto``.
    """

    __slots__ = ("_kind", "_raw")

    _kind: AddressKind
    _raw: bytes

    def __init__(self, kind: AddressKind, raw: bytes, *, _validated: bool = False) -> None:
        if not _validated:
            raise TypeError("use UnixSocketAddr.from_path, from_abstract, unnamed or parse")
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_raw", raw)

    # -- constructors -----------------------------------------------------------------

    @classmethod
    def from_path(cls, path: PathLike) -> UnixSocketAddr:
        """A filesystem path address.

        Raises:
            ValueError: the path is empty, contains a NUL byte, or is longer
                than this OS's ``sun_path`` allows (108 bytes on Linux, which
                takes a full sun_path without a NUL; 107 on illumos, 103 on
                macOS and the BSDs).
            TypeError: ``path`` is not a str, bytes or path-like object.
        """
        raw = os.fsencode(os.fspath(path))
        if not raw:
            raise ValueError("an AF_UNIX path may not be empty (use UnixSocketAddr.unnamed())")
        nul = raw.find(b"\0")
        if nul >= 0:
            raise ValueError(f"AF_UNIX path contains a NUL byte at offset {nul}")
        if len(raw) > backend.MAX_PATH_BYTES:
            plus = " plus its NUL" if backend.MAX_PATH_BYTES < backend.SUN_PATH_SIZE else ""
            raise ValueError(
                f"AF_UNIX path is {len(raw)} bytes; sun_path on {backend.OS_NAME} holds at most "
                f"{backend.MAX_PATH_BYTES} bytes{plus}"
            )
        return cls("path", raw, _validated=True)

    @classmethod
    def from_abstract(cls, name: Union[bytes, bytearray, str]) -> UnixSocketAddr:
        """An abstract-namespace address (Linux), without its leading NUL.

        A ``str`` name is encoded as CPython encodes socket addresses
        (the filesystem encoding).

        Raises:
            UnsupportedError: this kernel has no abstract namespace (probed).
            ValueError: the name is longer than sun_path allows.
        """
        if isinstance(name, str):
            raw = os.fsencode(name)
        elif isinstance(name, (bytes, bytearray)):
            raw = bytes(name)
        else:
            raise TypeError(f"abstract name must be bytes or str, not {type(name).__name__}")
        supported, reason = _probes.abstract_addresses()
        if not supported:
            raise UnsupportedError("abstract addresses", backend.OS_NAME, reason)
        if len(raw) > backend.SUN_PATH_SIZE - 1:
            raise ValueError(
                f"abstract name is {len(raw)} bytes; sun_path on {backend.OS_NAME} holds at "
                f"most {backend.SUN_PATH_SIZE - 1} after the leading NUL"
            )
        return cls("abstract", raw, _validated=True)

    @classmethod
    def unnamed(cls) -> UnixSocketAddr:
        """The address of a socket that is not bound (a socketpair end, a client)."""
        return _UNNAMED

    @classmethod
    def new(cls, text: str) -> UnixSocketAddr:
        """The ``uds`` crate's rule: ``"@x"`` or ``"\\0x"`` abstract, ``""`` unnamed, else a path.

        A path that starts with ``@`` is written ``./@name``.  Every
        udscompat call that takes an address applies this rule to a ``str``.

        Raises:
            TypeError: ``text`` is not a str (bytes are paths: ``from_path``).
            ValueError: as ``from_path`` and ``from_abstract``.
            UnsupportedError: an abstract name on a kernel without them.
        """
        if not isinstance(text, str):
            raise TypeError(f"UnixSocketAddr.new() takes str, not {type(text).__name__}")
        if not text:
            return _UNNAMED
        if text[0] in "@\0":
            return cls.from_abstract(text[1:])
        return cls.from_path(text)

    @classmethod
    def parse(cls, text: str) -> UnixSocketAddr:
        """Read back what ``str()`` wrote: ``new``'s rule, plus escapes in abstract names.

        ``str()`` writes an abstract name's unprintable bytes as ``\\xNN``
        and a backslash as ``\\\\``, so ``parse(str(addr)) == addr``;
        ``"(unnamed)"`` is the unnamed address.  Anything without those
        escapes parses exactly as ``new`` does.
        """
        if not isinstance(text, str):
            raise TypeError(f"parse() takes str, not {type(text).__name__}")
        if text == "(unnamed)":
            return _UNNAMED
        if text.startswith("@"):
            return cls.from_abstract(_unescape(text[1:]))
        return cls.new(text)

    @classmethod
    def from_sockaddr(cls, sockaddr: SockaddrLike) -> UnixSocketAddr:
        """Convert what ``getsockname``, ``getpeername``, ``accept`` or ``recvfrom`` return.

        ``''``, ``b''`` and ``None`` are unnamed; bytes starting with NUL are
        an abstract name; anything else is a path.  The kernel already
        accepted these, so no length limit is applied.
        """
        if sockaddr is None:
            return _UNNAMED
        if isinstance(sockaddr, str):
            raw = os.fsencode(sockaddr)
        elif isinstance(sockaddr, (bytes, bytearray)):
            raw = bytes(sockaddr)
        else:
            raise TypeError(f"not an AF_UNIX address: {sockaddr!r}")
        if not raw:
            return _UNNAMED
        if raw[0] == 0:
            return cls("abstract", raw[1:], _validated=True)
        # Linux pads a path that filled sun_path without a NUL; trim at the first NUL.
        return cls("path", raw.split(b"\0", 1)[0], _validated=True)

    # -- accessors --------------------------------------------------------------------

    @property
    def kind(self) -> AddressKind:
        """``"path"``, ``"abstract"`` or ``"unnamed"``."""
        return self._kind

    @property
    def path(self) -> Optional[str]:
        """The filesystem path (decoded as ``os.fsdecode`` does), or ``None``."""
        return os.fsdecode(self._raw) if self._kind == "path" else None

    @property
    def path_bytes(self) -> Optional[bytes]:
        """The filesystem path as bytes, or ``None``."""
        return self._raw if self._kind == "path" else None

    @property
    def name(self) -> Optional[bytes]:
        """The abstract name without its leading NUL, or ``None``."""
        return self._raw if self._kind == "abstract" else None

    def to_sockaddr(self) -> Union[str, bytes]:
        """What ``bind``, ``connect`` and ``sendto`` take for this address.

        A path as ``str`` (``os.fsdecode``, which CPython encodes back
        losslessly), an abstract name as bytes with the leading NUL, and
        ``""`` for unnamed (binding ``""`` autobinds on Linux).  CPython
        refuses a 108-byte Linux path that fills sun_path; udscompat's own
        ``bind``, connects and ``send_fds`` reach it through its directory.
        """
        if self._kind == "abstract":
            return b"\0" + self._raw
        if self._kind == "path":
            return os.fsdecode(self._raw)
        return ""

    # -- value semantics --------------------------------------------------------------

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("UnixSocketAddr is immutable")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, UnixSocketAddr):
            return NotImplemented
        return self._kind == other._kind and self._raw == other._raw

    def __hash__(self) -> int:
        return hash((self._kind, self._raw))

    def __str__(self) -> str:
        if self._kind == "abstract":
            return "@" + _escape(self._raw)
        if self._kind == "path":
            # A relative path that starts with "@" is shown as "./@..." (the same file), so
            # the text never reads as an abstract name.
            return ("./" if self._raw[:1] == b"@" else "") + os.fsdecode(self._raw)
        return "(unnamed)"

    def __repr__(self) -> str:
        if self._kind == "abstract":
            return f"UnixSocketAddr.from_abstract({self._raw!r})"
        if self._kind == "path":
            return f"UnixSocketAddr.from_path({os.fsdecode(self._raw)!r})"
        return "UnixSocketAddr.unnamed()"

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild, (self._kind, self._raw))


def as_address(addr: AddressArg, what: str = "address") -> UnixSocketAddr:
    """The address ``addr`` names, by the one rule every udscompat call applies.

    A ``UnixSocketAddr`` as it is; a ``str`` by ``UnixSocketAddr.new`` (``@``
    or NUL first: abstract); bytes, bytearray and ``os.PathLike`` as a path
    unless the first byte is NUL (abstract, as for the ``socket`` module);
    empty bytes as unnamed.

    Raises:
        TypeError: ``addr`` is none of these; the message names ``what``.
        ValueError, UnsupportedError: as the ``UnixSocketAddr`` constructors.
    """
    if isinstance(addr, UnixSocketAddr):
        return addr
    if isinstance(addr, str):
        return UnixSocketAddr.new(addr)
    if isinstance(addr, os.PathLike):
        addr = os.fspath(addr)
        if isinstance(addr, str):
            return UnixSocketAddr.from_path(addr)
    if isinstance(addr, (bytes, bytearray)):
        if not addr:
            return _UNNAMED
        if addr[0] == 0:
            return UnixSocketAddr.from_abstract(bytes(addr[1:]))
        return UnixSocketAddr.from_path(bytes(addr))
    raise TypeError(
        f"{what} must be a UnixSocketAddr, str, bytes or os.PathLike, not {type(addr).__name__}"
    )


def _rebuild(kind: AddressKind, raw: bytes) -> UnixSocketAddr:
    return UnixSocketAddr(kind, raw, _validated=True)


def _escape(raw: bytes) -> str:
    return "".join(
        chr(b) if b in _PRINTABLE else ("\\\\" if b == 0x5C else f"\\x{b:02x}") for b in raw
    )


def _unescape(text: str) -> bytes:
    out = bytearray()
    i = 0
    while i < len(text):
        ch = text[i]
        if ch != "\\":
            out += ch.encode("utf-8", "surrogateescape")
            i += 1
        elif text.startswith("\\\\", i):
            out.append(0x5C)
            i += 2
        elif text.startswith("\\x", i) and len(text) >= i + 4:
            try:
                out.append(int(text[i + 2 : i + 4], 16))
            except ValueError:
                raise ValueError(f"bad escape {text[i : i + 4]!r} in abstract name") from None
            i += 4
        else:
            raise ValueError(f"bad escape at offset {i} in abstract name {text!r}")
    return bytes(out)


_UNNAMED = UnixSocketAddr("unnamed", b"", _validated=True)
UnixSocketAddr.__module__ = "udscompat"
