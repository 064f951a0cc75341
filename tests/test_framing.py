"""The emulation's framing codec, without sockets (h11-style): whole, byte by byte, hostile."""

from __future__ import annotations

import os
import struct
from typing import List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import open_fds
from udscompat import FramingError, Message
from udscompat._framing import (
    HEADER,
    NEED_DATA,
    Ack,
    EndOfStream,
    FrameDecoder,
    FrameEncoder,
)

ENC = FrameEncoder()


def drain(decoder: FrameDecoder) -> List[object]:
    events: List[object] = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            return events
        events.append(event)
        if isinstance(event, EndOfStream):
            return events


def test_messages_whole_and_byte_by_byte() -> None:
    stream = ENC.encode(b"one") + ENC.encode(b"") + ENC.encode(b"three" * 100) + ENC.ack(2)
    expected = [Message(b"one"), Message(b""), Message(b"three" * 100), Ack(2)]
    whole = FrameDecoder()
    whole.receive_data(stream)
    assert drain(whole) == expected
    slow = FrameDecoder()
    seen: List[object] = []
    for i in range(len(stream)):
        slow.receive_data(stream[i : i + 1])
        seen += drain(slow)
    assert seen == expected
    slow.receive_data(b"")
    assert drain(slow) == [EndOfStream()]
    assert isinstance(slow.next_event(), EndOfStream)  # and stays there


def _pipe_fds(n: int) -> Tuple[List[int], List[int]]:
    fds: List[int] = []
    for _ in range(n):
        r, w = os.pipe()
        fds += [r, w]
    return fds[:n], fds[n:]


@pytest.mark.parametrize("split", range(1, 2 * HEADER.size + 6))
def test_fds_ride_with_their_own_frame_at_every_split(split: int) -> None:
    fds, extra = _pipe_fds(2)
    for fd in extra:
        os.close(fd)
    first = ENC.encode(b"a")
    second = ENC.encode(b"bb", 2)
    stream = first + second
    decoder = FrameDecoder()
    chunk1, chunk2 = stream[:split], stream[split:]
    # The fds travel with the chunk holding the second frame's first byte.
    owner = 0 if split > len(first) else 1
    decoder.receive_data(chunk1, fds if owner == 0 else [])
    events = drain(decoder)
    if chunk2:
        decoder.receive_data(chunk2, fds if owner == 1 else [])
        events += drain(decoder)
    assert events == [Message(b"a"), Message(b"bb", fds)]
    for fd in fds:
        os.close(fd)


def _assert_violation(chunks: List[Tuple[bytes, List[int]]], match: str) -> None:
    before = open_fds()
    decoder = FrameDecoder(max_message_size=1000, max_fds=4)
    with pytest.raises(FramingError, match=match):
        for data, fds in chunks:
            decoder.receive_data(data, fds)
            drain(decoder)
    assert open_fds() <= before, "descriptors held by the decoder were not closed"
    with pytest.raises(FramingError):
        decoder.next_event()  # broken for good
    with pytest.raises(FramingError):
        decoder.receive_data(b"x")


def test_bogus_length_is_refused_before_buffering() -> None:
    _assert_violation(
        [(HEADER.pack(0xFFFFFFFF, 0, 0, 0), [])], "declares 4294967295 bytes; the limit is 1000"
    )


def test_too_many_declared_fds() -> None:
    _assert_violation(
        [(HEADER.pack(1, 9, 0, 0) + b"x", [])], "declares 9 descriptors; the limit is 4"
    )


def test_fewer_fds_than_declared() -> None:
    fds, extra = _pipe_fds(1)
    os.close(extra[0])
    _assert_violation([(HEADER.pack(1, 2, 0, 0) + b"x", fds)], "declares 2 descriptors but 1 came")


def test_fds_where_none_belong() -> None:
    fds, extra = _pipe_fds(1)
    os.close(extra[0])
    frame = ENC.encode(b"abcdef")
    _assert_violation([(frame[:10], []), (frame[10:], fds)], "start no frame")


def test_fds_with_end_of_stream() -> None:
    fds, extra = _pipe_fds(1)
    os.close(extra[0])
    _assert_violation([(b"", fds)], "with end-of-stream")


def test_unknown_kind_and_flags() -> None:
    _assert_violation([(HEADER.pack(0, 0, 7, 0), [])], "unknown frame kind 7")
    _assert_violation([(HEADER.pack(0, 0, 0, 0x80), [])], "unknown frame flags 0x80")
    _assert_violation([(HEADER.pack(1, 1, 1, 0), [])], "ACK frame with 1 descriptors")


@pytest.mark.parametrize("cut", range(1, len(ENC.encode(b"0123456789"))))
def test_eof_at_every_offset_mid_frame(cut: int) -> None:
    frame = ENC.encode(b"0123456789")
    expected = (
        "header bytes" if cut < HEADER.size else f"got {cut - HEADER.size} of 10 payload bytes"
    )
    _assert_violation([(frame[:cut], []), (b"", [])], expected)


def test_close_releases_held_fds() -> None:
    fds, extra = _pipe_fds(1)
    os.close(extra[0])
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(b"x", 1)[:3], fds)
    assert drain(decoder) == []
    decoder.close()
    with pytest.raises(OSError):
        os.fstat(fds[0])


def test_encoder_limits_are_local_errors() -> None:
    enc = FrameEncoder(max_message_size=10, max_fds=1)
    with pytest.raises(ValueError, match="11 bytes; the limit is 10"):
        enc.header(11, 0)
    with pytest.raises(ValueError, match="2 descriptors"):
        enc.header(1, 2)


def test_ack_requests_are_counted() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(b"a", ack_requested=True) + ENC.encode(b"b"))
    assert len(drain(decoder)) == 2
    assert decoder.ack_requests == 1
    decoder.receive_data(ENC.encode(b"c", ack_requested=True))
    assert len(drain(decoder)) == 1
    assert decoder.ack_requests == 2  # a running total: the connection counts what it sent


def test_header_layout_is_big_endian() -> None:
    assert FrameEncoder(max_message_size=2**32 - 1).header(0x01020304, 5) == struct.pack(
        ">IHBB", 0x01020304, 5, 0, 0
    )


@settings(max_examples=200, deadline=None)  # no timing here: a loaded machine is slow
@given(st.lists(st.binary(max_size=300), max_size=12), st.lists(st.integers(1, 64), max_size=40))
def test_any_chunking_gives_the_same_messages(messages: List[bytes], cuts: List[int]) -> None:
    stream = b"".join(ENC.encode(m) for m in messages)
    decoder = FrameDecoder()
    got: List[object] = []
    pos = 0
    for cut in cuts:
        decoder.receive_data(stream[pos : pos + cut]) if stream[pos : pos + cut] else None
        pos += cut
        got += drain(decoder)
    if stream[pos:]:
        decoder.receive_data(stream[pos:])
    got += drain(decoder)
    decoder.receive_data(b"")
    got += drain(decoder)
    assert got == [Message(m) for m in messages] + [EndOfStream()]


@settings(max_examples=200, deadline=None)  # no timing here: a loaded machine is slow
@given(
    st.lists(st.tuples(st.binary(max_size=200), st.booleans()), max_size=10),
    st.lists(st.integers(1, 80), max_size=30),
)
def test_receive_and_next_equals_receive_then_next(
    messages: List[Tuple[bytes, bool]], cuts: List[int]
) -> None:
    """The one-step fast path leaves the decoder exactly as the two calls do."""
    stream = b"".join(ENC.encode(m, ack_requested=ack) for m, ack in messages)
    # Whole frames as chunks (the fast path's case), then arbitrary cuts of the same stream.
    chunks = [ENC.encode(m, ack_requested=ack) for m, ack in messages]
    pos = 0
    for cut in cuts:
        if pos < len(stream):
            chunks.append(stream[pos : pos + cut])
            pos += cut
    if pos < len(stream):
        chunks.append(stream[pos:])
    one, two = FrameDecoder(), FrameDecoder()
    got_one: List[object] = []
    got_two: List[object] = []
    for chunk in chunks:
        first = one.receive_and_next(chunk)
        if first is not NEED_DATA:
            got_one.append(first)
            got_one += drain(one)
        two.receive_data(chunk)
        got_two += drain(two)
        assert (one.buffered, one.ack_requests, one.idle) == (
            two.buffered,
            two.ack_requests,
            two.idle,
        )
    assert got_one == got_two
    assert got_one[: len(messages)] == [Message(m) for m, _ in messages]


def test_receive_and_next_fast_path_keeps_fd_offsets() -> None:
    r, w = os.pipe()
    try:
        decoder = FrameDecoder()
        assert decoder.receive_and_next(ENC.encode(b"plain")) == Message(b"plain")
        event = decoder.receive_and_next(ENC.encode(b"with", nfds=1), [r])
        assert isinstance(event, Message) and event.data == b"with" and event.fds == (r,)
    finally:
        os.close(w)
        os.close(r)


def test_idle_means_nothing_held() -> None:
    """``idle`` (the fast path's and asyncio's test) is true exactly when nothing waits."""
    decoder = FrameDecoder()
    assert decoder.idle
    frame = ENC.encode(b"abcdef")
    decoder.receive_data(frame[:5])  # part of a header
    assert not decoder.idle and decoder.next_event() is NEED_DATA and not decoder.idle
    decoder.receive_data(frame[5:] + frame[:9])  # the rest, and the next frame begun
    assert decoder.next_event() == Message(b"abcdef")
    assert not decoder.idle  # the second frame's start is buffered
    decoder.receive_data(frame[9:])
    assert decoder.next_event() == Message(b"abcdef") and decoder.idle
    assert decoder.receive_and_next(frame) == Message(b"abcdef") and decoder.idle
    r, w = os.pipe()
    try:
        decoder.receive_data(ENC.encode(b"fd", nfds=1)[:3], [r])  # the fd waits for its frame
        assert not decoder.idle and decoder.next_event() is NEED_DATA and not decoder.idle
        decoder.receive_data(ENC.encode(b"fd", nfds=1)[3:])
        event = decoder.next_event()
        assert isinstance(event, Message) and event.fds == (r,) and decoder.idle
    finally:
        os.close(w)
        os.close(r)
    decoder.receive_data(b"")  # end-of-stream waits to be reported
    assert not decoder.idle and decoder.next_event() == EndOfStream() and not decoder.idle
    broken = FrameDecoder()
    with pytest.raises(FramingError):
        broken.receive_and_next(struct.pack("!IHBB", 1, 0, 9, 0) + b"x")  # unknown kind
    assert not broken.idle
    closed = FrameDecoder()
    closed.close()
    assert not closed.idle


def test_end_of_stream_twice_is_not_a_violation() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(b"last"))
    decoder.receive_data(b"")
    decoder.receive_data(b"")  # our own second read of end-of-stream: not the peer's fault
    assert drain(decoder) == [Message(b"last"), EndOfStream()]
    with pytest.raises(FramingError, match="data after end-of-stream"):
        decoder.receive_data(b"x")


def test_a_chunk_of_descriptors_no_frame_starts_in_is_refused_on_arrival() -> None:
    fds, extra = _pipe_fds(1)
    os.close(extra[0])
    before = open_fds()
    decoder = FrameDecoder()
    decoder.receive_data(HEADER.pack(100, 1, 0, 0) + b"a")  # declares one, brings none yet
    with pytest.raises(FramingError, match="start no frame"):
        decoder.receive_data(b"b", fds)  # mid-payload: cannot be that frame's
    assert decoder.held_fds == 0
    assert open_fds() <= before - set(fds)


def test_next_ack_takes_acknowledgements_and_leaves_messages() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(ENC.ack(2) + ENC.ack(3) + ENC.encode(b"m") + ENC.ack(1))
    assert decoder.next_ack() == Ack(2)
    assert decoder.next_ack() == Ack(3)
    assert decoder.next_ack() is None  # a message is next: left for next_event
    assert decoder.has_message()
    assert drain(decoder) == [Message(b"m"), Ack(1)]
