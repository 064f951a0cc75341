"""The seqpacket emulation's framing: a sans-IO codec over a byte stream.

No sockets here.  ``FrameEncoder`` turns one message into a frame header;
``FrameDecoder`` takes the bytes (and descriptors) a stream delivered and
hands back whole messages, as h11's ``Connection`` does for HTTP.

Wire format, big-endian, one frame per message::

    u32 length | u16 nfds | u8 kind | u8 flags | payload[length]

``kind`` is DATA (0) or ACK (1; ``length`` then counts acknowledged frames and
there is no payload).  ``flags`` bit 0 asks the receiver to acknowledge the
frame's descriptors; bit 1 (CLAIM) says the payload starts with the sender's
claimed credentials, ``u32 pid | u32 uid | u32 gid`` (counted in ``length``,
not part of the message).  A frame's descriptors travel in the same ``sendmsg`` as
its first byte, so they arrive with the chunk that holds that byte: the
kernels stop a stream read after the data that carried descriptors, so one
chunk brings the descriptors of at most one frame, and that frame starts in it.

What a hostile peer can make the decoder hold is bounded: bytes by
``max_message_size`` per frame, descriptors by the frame that owns them (a
chunk whose descriptors no frame starting in it declares is refused as it
arrives, not when the frame ends).

Verified credentials are never read from the frames: nothing a peer writes
into the stream can vouch for who wrote it.  A frame's verified
``Message.credentials`` are those the *kernel* attached to the chunks that
delivered it (``receive_data(..., credentials=...)``, from
``SCM_CREDENTIALS``/``SCM_CREDS``/``SCM_UCRED``).  A kernel attaches them
per write, and a stream read may join writes, so what is true of a frame is
only what is true of every byte of it: the frame gets credentials only if
every chunk that brought one of its bytes (header included) brought the same
ones, else ``None`` -- never the credentials of whoever wrote the header
while someone else wrote the payload.  The sender attaches its credentials
to every write of a frame, so its frames stay whole under this rule.

A CLAIM is what a sender wrote about itself, for kernels that attach no
credentials to stream writes.  The decoder always checks and strips it; it
becomes the message's credentials -- as ``ClaimedCredentials``, a type that
says it is unverified -- only when ``accept_claims`` is set, which the
connection does only where no kernel credentials exist to be given instead.
"""

from __future__ import annotations

import os
import struct
from collections import deque
from typing import Any, Deque, List, NamedTuple, Optional, Sequence, Tuple, Union

from udscompat._errors import FramingError
from udscompat._msgcreds import ClaimedCredentials, ReceivedCredentials, SendCredentials
from udscompat._records import Message, new_message

__all__ = [
    "DEFAULT_MAX_FDS",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "NEED_DATA",
    "Ack",
    "DescriptorsLost",
    "EndOfStream",
    "FrameDecoder",
    "FrameEncoder",
    "NeedData",
]

HEADER = struct.Struct("!IHBB")
_HEADER_SIZE = HEADER.size
_unpack_header = HEADER.unpack_from  # bound once: next_event runs per message
# The header as two numbers: length, then nfds/kind/flags together, which is 0 exactly for a
# DATA frame (kind 0) with no descriptors and no flags -- one test instead of three.
_unpack_length_and_rest = struct.Struct("!II").unpack_from
KIND_DATA = 0
KIND_ACK = 1
FLAG_ACK_REQUESTED = 0x01
FLAG_CLAIM = 0x02
_KNOWN_FLAGS = FLAG_ACK_REQUESTED | FLAG_CLAIM
#: A claim at the start of a CLAIM frame's payload: pid, uid, gid.
CLAIM = struct.Struct("!III")
_CLAIM_SIZE = CLAIM.size
#: The most frames one ACK frame can acknowledge (its length field).
MAX_ACK_COUNT = 0xFFFFFFFF

#: Largest message the emulation carries unless configured otherwise (1 MiB).
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
#: Most descriptors one emulated message may carry.
DEFAULT_MAX_FDS = 253
#: Most changes of credentials the decoder remembers in what it holds; past that the oldest
#: are merged into one range without an answer (its frames get None, never a wrong answer).
MAX_CREDENTIAL_RANGES = 64


class NeedData:
    """``next_event()`` needs more bytes before it can return anything."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()


class EndOfStream:
    """The peer closed the stream at a frame boundary."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "EndOfStream()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EndOfStream)

    def __hash__(self) -> int:
        return hash(EndOfStream)


class Ack(NamedTuple):
    """The peer confirms it received the descriptors of ``frames`` earlier frames."""

    frames: int


class DescriptorsLost(NamedTuple):
    """A whole frame whose descriptors the kernel did not deliver (``MSG_CTRUNC``).

    The chunk that carried them was truncated (typically: this process was out
    of descriptors); the descriptors that did arrive were closed.  The stream
    itself is intact, so the next frame decodes as usual.
    """

    data: bytes
    closed_fds: int


Event = Union[Message, Ack, DescriptorsLost, EndOfStream, NeedData]

# A chunk that came with descriptors: stream offsets [start, end), the descriptors, and -1, or
# (when the kernel truncated them) how many of them were closed before they got here.
_FdChunk = Tuple[int, int, List[int], int]


class FrameEncoder:
    """Builds frame headers, refusing what the peer's decoder would reject."""

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, max_fds: int = DEFAULT_MAX_FDS
    ):
        self.max_message_size = max_message_size
        self.max_fds = max_fds

    def header(
        self, length: int, nfds: int, *, ack_requested: bool = False, claimed: bool = False
    ) -> bytes:
        """The header of a DATA frame with a ``length``-byte payload and ``nfds`` descriptors.

        ``claimed``: the payload is a ``claim()`` followed by the message
        (``length`` counts both; the limit applies to the message alone).

        Raises:
            ValueError: ``length`` over ``max_message_size`` or ``nfds`` over ``max_fds``.
        """
        size = length - _CLAIM_SIZE if claimed else length
        if size > self.max_message_size:
            raise ValueError(f"message is {size} bytes; the limit is {self.max_message_size}")
        if nfds > self.max_fds:
            raise ValueError(f"{nfds} descriptors in one message; the limit is {self.max_fds}")
        flags = (FLAG_ACK_REQUESTED if ack_requested else 0) | (FLAG_CLAIM if claimed else 0)
        return HEADER.pack(length, nfds, KIND_DATA, flags)

    def encode(
        self,
        data: bytes,
        nfds: int = 0,
        *,
        ack_requested: bool = False,
        claim: Optional[SendCredentials] = None,
    ) -> bytes:
        """A whole DATA frame: header and payload (after ``claim``, if given)."""
        if claim is not None:
            data = self.claim(claim) + data
        return (
            self.header(len(data), nfds, ack_requested=ack_requested, claimed=claim is not None)
            + data
        )

    @staticmethod
    def claim(credentials: SendCredentials) -> bytes:
        """The bytes that start a CLAIM frame's payload."""
        return CLAIM.pack(credentials.pid, credentials.uid, credentials.gid)

    @staticmethod
    def ack(count: int) -> bytes:
        """An ACK frame for ``count`` frames (1 to ``MAX_ACK_COUNT``)."""
        return HEADER.pack(count, 0, KIND_ACK, 0)


class FrameDecoder:
    """Reassembles messages from stream chunks; owns received descriptors until handed out.

    Feed it with ``receive_data(chunk, fds)`` (``b""`` means end-of-stream),
    then call ``next_event()`` until it returns ``NEED_DATA``;
    ``receive_and_next`` does both at once, and ``idle`` tells whether
    anything (bytes, descriptors, end-of-stream, an error) is held.  After any
    ``FramingError`` the decoder is broken: every held descriptor is closed
    and every later call raises again.
    """

    # The compiled emulated receive (udscompat/_speedups.c) reads these two on every call:
    # as slots, at a fixed offset.  Everything else stays in the instance dictionary.
    __slots__ = ("__dict__", "__weakref__", "ack_requests", "idle")

    def __init__(
        self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, max_fds: int = DEFAULT_MAX_FDS
    ):
        self.max_message_size = max_message_size
        self.max_fds = max_fds
        # The last chunk as received (bytes) while frames are parsed straight out of it; a
        # bytearray once a frame spans chunks.  Either way, _buffer[_pos:] is unparsed.
        self._buffer: Union[bytes, bytearray] = b""
        self._pos = 0  # start of the unparsed data in _buffer
        self._base = 0  # stream offset of _buffer[0]
        self._received = 0  # stream offset of the end of the data received
        self._chunks: Deque[_FdChunk] = deque()  # chunks whose descriptors await their frame
        #: [start, end, credentials] of the held bytes once some chunk came with credentials:
        #: contiguous, neighbours differ (None: none came, or no single answer).
        self._credentials: Deque[List[Any]] = deque()
        self._eof = False
        self._error: FramingError | None = None
        self._closed = False
        #: How many descriptors the decoder holds right now (at most one frame's worth,
        #: plus the next frame's when its first bytes already arrived).
        self.held_fds = 0
        #: Frames delivered whose sender asked for an acknowledgement: a running total that
        #: only grows (the connection counts what it sent, so no two threads write one field).
        self.ack_requests = 0
        #: A CLAIM becomes the message's ``ClaimedCredentials`` (else it is checked and dropped).
        self.accept_claims = False
        #: True while the decoder holds nothing: no undecoded bytes, no descriptors, no
        #: end-of-stream, no error.  A plain attribute (read per message): ``receive_data``,
        #: ``close`` and errors clear it, consuming the last buffered byte sets it again.
        self.idle = True

    @property
    def buffered(self) -> bool:
        """Whether received data (or end-of-stream) waits to be turned into events."""
        return len(self._buffer) > self._pos or self._eof or self._error is not None

    def has_message(self) -> bool:
        """Whether ``next_event()`` would return a message, end-of-stream or an error now.

        Acknowledgements at the head are looked past; a partial frame is not a message.
        """
        if self._error is not None or self._closed:
            return True
        buffer, offset = self._buffer, self._pos
        while len(buffer) - offset >= _HEADER_SIZE:
            length, nfds, kind, flags = _unpack_header(buffer, offset)
            if kind != KIND_ACK:
                # A message when whole; an error (also returned at once) when the header is bad.
                return (
                    len(buffer) - offset >= _HEADER_SIZE + length
                    or kind != KIND_DATA
                    or bool(flags & ~_KNOWN_FLAGS)
                    or length > self.max_message_size + (_CLAIM_SIZE if flags & FLAG_CLAIM else 0)
                    or nfds > self.max_fds
                )
            offset += _HEADER_SIZE
        return self._eof

    def receive_data(
        self,
        data: bytes,
        fds: Sequence[int] = (),
        *,
        fds_lost: int = -1,
        credentials: Optional[ReceivedCredentials] = None,
    ) -> None:
        """Take one chunk of the stream and ownership of the descriptors that came with it.

        ``fds_lost`` (0 or more) says the kernel truncated this chunk's control data:
        its descriptors are gone (that many were closed), and the frame they belonged
        to is reported as ``DescriptorsLost``.  ``credentials``: what the kernel
        attached to this chunk (see the module documentation for how a frame gets
        them).  ``b""`` is end-of-stream; saying so again is harmless.

        Raises:
            FramingError: descriptors no frame starting in this chunk can own (or more
                than its header declares), or data after end-of-stream.
        """
        self.idle = False
        if self._error is not None or self._closed:
            _close(fds)
            self._raise()
        if self._eof:
            if not data and not fds and fds_lost < 0:
                return  # end-of-stream again: nothing new
            _close(fds)
            self._fail("data after end-of-stream")
        start = self._received
        if not data:
            self._eof = True
            if fds or fds_lost >= 0:
                _close(fds)
                self._fail("descriptors arrived with end-of-stream")
            return
        if self._pos >= len(self._buffer):
            # Everything before is parsed: keep the chunk itself, no copy.
            self._base = start
            self._buffer = data if type(data) is bytes else bytes(data)
            self._pos = 0
        else:
            if type(self._buffer) is bytes:
                self._base += self._pos
                self._buffer = bytearray(self._buffer[self._pos :])
                self._pos = 0
            self._buffer += data  # a bytearray here
        self._received += len(data)
        if credentials is not None or self._credentials:
            self._note_credentials(start, self._received, credentials)
        if fds or fds_lost >= 0:
            owned = list(fds)
            self._chunks.append((start, self._received, owned, fds_lost))
            self.held_fds += len(owned)
            self._check_owner(start, max(len(owned), fds_lost))

    def receive_and_next(self, data: bytes, fds: Sequence[int] = ()) -> Event:
        """``receive_data(data, fds)`` then ``next_event()``, in one step.

        Equivalent to the two calls; faster when the decoder is ``idle`` and
        the chunk is exactly one plain frame (what small messages look like).
        """
        if self.idle and not fds and type(data) is bytes and len(data) >= _HEADER_SIZE:
            length, rest = _unpack_length_and_rest(data, 0)
            if not rest and length == len(data) - _HEADER_SIZE and length <= self.max_message_size:
                # Idle before and after: nothing to store (the stream offsets only place
                # descriptors, and none are held).
                return new_message((data[_HEADER_SIZE:], (), False, None))
        self.receive_data(data, fds)
        return self.next_event()

    def next_ack(self) -> Optional[Ack]:
        """Take the next frame if it is a whole, valid ACK; else None (nothing is consumed).

        For a sender that never receives: it releases what the peer
        acknowledged without decoding (or buffering beyond one chunk) messages
        meant for a later ``next_event``.
        """
        if self._error is not None or self._closed or len(self._buffer) - self._pos < _HEADER_SIZE:
            return None
        length, nfds, kind, flags = _unpack_header(self._buffer, self._pos)
        if kind != KIND_ACK or nfds or flags or not length:
            return None  # a message, or a bad ACK that next_event reports
        if self._chunks:
            self._check_stray(self._base + self._pos)
        self._consume(_HEADER_SIZE)
        return Ack(length)

    def next_event(self) -> Event:
        """The next ``Message``, ``Ack``, ``DescriptorsLost``, ``EndOfStream`` or ``NEED_DATA``.

        Raises:
            FramingError: the peer broke the framing; the decoder is now broken.
        """
        if self._error is not None or self._closed:
            self._raise()
        if self._chunks:
            self._check_stray(self._base + self._pos)
        available = len(self._buffer) - self._pos
        if available < _HEADER_SIZE:
            return self._at_boundary(available)
        length, nfds, kind, flags = _unpack_header(self._buffer, self._pos)
        if kind == KIND_ACK:
            if nfds or flags:
                self._fail(f"ACK frame with {nfds} descriptors and flags {flags:#x}")
            if not length:
                self._fail("ACK frame acknowledging 0 frames")
            self._consume(_HEADER_SIZE)
            return Ack(length)
        self._check_header(length, nfds, kind, flags)
        if available < _HEADER_SIZE + length:
            return self._at_boundary(available, length)
        frame_start = self._base + self._pos
        lost = -1
        fds: List[int] = []
        if nfds:
            fds, lost = self._claim(frame_start, nfds)
        body_start = self._pos + _HEADER_SIZE
        creds: Union[ReceivedCredentials, ClaimedCredentials, None] = None
        if self._credentials:
            creds = self._credentials_of(frame_start, frame_start + _HEADER_SIZE + length)
        if flags & FLAG_CLAIM:
            claim = self._read_claim(body_start, fds)
            if self.accept_claims:
                creds = claim
            body = self._buffer[body_start + _CLAIM_SIZE : body_start + length]
        else:
            body = self._buffer[body_start : body_start + length]
        data = body if type(body) is bytes else bytes(body)
        self._consume(_HEADER_SIZE + length)
        if flags & FLAG_ACK_REQUESTED:
            self.ack_requests += 1
        if lost >= 0:
            return DescriptorsLost(data, lost)
        return new_message((data, tuple(fds), False, creds))

    def close(self) -> None:
        """Close every descriptor still held; the decoder can no longer be used."""
        self._closed = True
        self.idle = False
        for _, _, fds, _ in self._chunks:
            _close(fds)
        self._chunks.clear()
        self._credentials.clear()
        self.held_fds = 0
        self._buffer = b""
        self._pos = 0

    # -- internals ---------------------------------------------------------------------

    def _check_header(self, length: int, nfds: int, kind: int, flags: int) -> None:
        if kind != KIND_DATA:
            self._fail(f"unknown frame kind {kind}")
        if flags & ~_KNOWN_FLAGS:
            self._fail(f"unknown frame flags {flags:#x}")
        if flags & FLAG_CLAIM:
            if length < _CLAIM_SIZE:
                self._fail(f"CLAIM frame of {length} bytes: shorter than its claim")
            length -= _CLAIM_SIZE
        if length > self.max_message_size:
            self._fail(f"frame declares {length} bytes; the limit is {self.max_message_size}")
        if nfds > self.max_fds:
            self._fail(f"frame declares {nfds} descriptors; the limit is {self.max_fds}")

    def _check_owner(self, start: int, count: int) -> None:
        """Refuse a chunk's descriptors at once unless a frame starting in it may own them.

        Walks the frame boundaries from the first unparsed frame (in the
        connection's read loop that is at most one frame back, since it reads
        only when every whole frame has been decoded).  A header cut by the
        end of the buffer leaves the owner undecided only if it starts inside
        this chunk; ``next_event`` then checks the count when the frame is whole.
        """
        if count > self.max_fds:
            self._fail(
                f"{count} descriptors arrived in one chunk; a frame carries at most {self.max_fds}"
            )
        buffer = self._buffer
        offset = self._pos
        frame_start = self._base + offset
        end = self._received
        while frame_start < end:
            if len(buffer) - offset < _HEADER_SIZE:
                if frame_start >= start:
                    return  # a frame starts here; its header is not whole yet
                break
            length, nfds, kind, _ = _unpack_header(buffer, offset)
            if kind != KIND_ACK and kind != KIND_DATA:
                return  # next_event reports the bad header itself
            size = _HEADER_SIZE + (length if kind == KIND_DATA else 0)
            if frame_start >= start and nfds:
                if count > nfds:
                    self._fail(f"{count} descriptors arrived with a frame that declares {nfds}")
                return
            offset += size
            frame_start += size
        self._fail("descriptors arrived with bytes that start no frame")

    def _at_boundary(self, available: int, length: int | None = None) -> Event:
        if not self._eof:
            return NEED_DATA
        if available == 0:
            self._check_stray(self._received)
            return EndOfStream()
        if length is None:
            self._fail(f"peer closed mid-frame: got {available} of {HEADER.size} header bytes")
        self._fail(
            f"peer closed mid-frame: got {available - HEADER.size} of {length} payload bytes"
        )
        raise AssertionError("unreachable")  # pragma: no cover

    def _claim(self, frame_start: int, nfds: int) -> Tuple[List[int], int]:
        """The descriptors of the frame at ``frame_start``, and how many were lost (-1: none)."""
        self._check_stray(frame_start)
        chunks = self._chunks
        if not chunks or not chunks[0][0] <= frame_start < chunks[0][1]:
            self._fail(f"frame declares {nfds} descriptors but 0 came with it")
        _, _, fds, lost = chunks[0]
        if lost >= 0:
            chunks.popleft()
            self.held_fds -= len(fds)
            _close(fds)
            return [], lost + len(fds)
        if len(fds) != nfds:
            self._fail(f"frame declares {nfds} descriptors but {len(fds)} came with it")
        chunks.popleft()
        self.held_fds -= nfds
        return fds, -1

    def _read_claim(self, offset: int, fds: List[int]) -> ClaimedCredentials:
        """The claim at ``offset`` of the buffer, checked (the frame's ``fds`` closed if bad)."""
        pid, uid, gid = CLAIM.unpack_from(self._buffer, offset)
        try:
            return ClaimedCredentials(pid, uid, gid)
        except ValueError as exc:
            _close(fds)
            self._fail(f"impossible claimed credentials: {exc}")
            raise AssertionError("unreachable") from None  # pragma: no cover

    def _note_credentials(
        self, start: int, end: int, credentials: Optional[ReceivedCredentials]
    ) -> None:
        ranges = self._credentials
        if ranges and ranges[-1][2] == credentials and ranges[-1][1] == start:
            ranges[-1][1] = end  # the same writer (or none) goes on
            return
        ranges.append([start, end, credentials])
        if len(ranges) > MAX_CREDENTIAL_RANGES:
            # A peer alternating identities: forget the oldest distinction, never the answer
            # "no single answer" (merging two different ranges can only turn answers to None).
            first = ranges.popleft()
            ranges[0][0] = first[0]
            ranges[0][2] = None

    def _credentials_of(self, start: int, end: int) -> Optional[ReceivedCredentials]:
        """The credentials every chunk holding stream bytes [start, end) came with, or None."""
        ranges = self._credentials
        while ranges and ranges[0][1] <= start:
            ranges.popleft()  # bytes already decoded
        if not ranges or ranges[0][0] > start or ranges[0][1] < end:
            return None  # bytes from before any credentials came, or from two writers
        credentials: Optional[ReceivedCredentials] = ranges[0][2]
        return credentials

    def _check_stray(self, frame_start: int) -> None:
        # Descriptors whose chunk ended before this frame began belong to no frame.
        if self._chunks and self._chunks[0][1] <= frame_start:
            self._fail("descriptors arrived with bytes that start no frame")

    def _consume(self, size: int) -> None:
        self._pos += size
        buffer = self._buffer
        if self._pos >= len(buffer):
            if not self._chunks and not self._eof:
                # All decoded: drop the chunk, so an idle decoder holds no bytes.
                self._base += self._pos
                self._buffer = b""
                self._pos = 0
                self.idle = True
                if self._credentials:
                    self._credentials.clear()
        elif isinstance(buffer, bytearray) and self._pos > 65536 and self._pos * 2 > len(buffer):
            # Compact now and then, so a long stream does not keep every byte.
            del buffer[: self._pos]
            self._base += self._pos
            self._pos = 0

    def _fail(self, reason: str) -> None:
        self._error = FramingError(f"framing violated by peer: {reason}")
        self.close()
        self._closed = False  # keep reporting the error, not "closed"
        raise self._error

    def _raise(self) -> None:
        if self._error is not None:
            raise FramingError(str(self._error.strerror))
        raise FramingError("decoder is closed", None)


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
