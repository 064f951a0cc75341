"""Which credentials a decoded frame gets, with no sockets (the codec's credential rule).

The kernel attaches credentials per write; a stream read may join writes, and
a frame may span reads.  A frame gets credentials only if every chunk that
brought one of its bytes brought the same ones; otherwise None.  Nothing in
the bytes themselves can give a frame verified credentials; a CLAIM frame's
claim is checked and stripped always, and becomes ``ClaimedCredentials``
only where the decoder accepts claims.
"""

from __future__ import annotations

import os
from typing import List, Optional

import pytest

from udscompat import (
    ClaimedCredentials,
    FramingError,
    Message,
    ReceivedCredentials,
    SendCredentials,
)
from udscompat._framing import CLAIM as CLAIM_BYTES
from udscompat._framing import (
    FLAG_CLAIM,
    HEADER,
    KIND_DATA,
    MAX_CREDENTIAL_RANGES,
    NEED_DATA,
    FrameDecoder,
    FrameEncoder,
)

ALICE = ReceivedCredentials(100, 1000, 1000, None, None, None)
BOB = ReceivedCredentials(200, 2000, 2000, None, None, None)
ENC = FrameEncoder()


def messages(decoder: FrameDecoder) -> List[Message]:
    out = []
    while True:
        event = decoder.next_event()
        if event is NEED_DATA:
            return out
        assert isinstance(event, Message)
        out.append(event)


def test_frames_from_one_writer_get_its_credentials_however_the_reads_fall() -> None:
    stream = ENC.encode(b"one") + ENC.encode(b"two" * 100) + ENC.encode(b"")
    for cut in range(1, len(stream)):
        decoder = FrameDecoder()
        decoder.receive_data(stream[:cut], credentials=ALICE)
        decoder.receive_data(stream[cut:], credentials=ALICE)
        got = messages(decoder)
        assert [m.data for m in got] == [b"one", b"two" * 100, b""]
        assert {m.credentials for m in got} == {ALICE}, cut


@pytest.mark.parametrize("second", [BOB, None])
def test_a_frame_with_bytes_from_two_writers_gets_none(
    second: Optional[ReceivedCredentials],
) -> None:
    """Header by one, payload by another (or by a write without credentials): None, never
    the header writer's; the frames on either side keep their own."""
    before, shared, after = ENC.encode(b"a"), ENC.encode(b"shared"), ENC.encode(b"b")
    for cut in range(1, len(shared)):
        decoder = FrameDecoder()
        decoder.receive_data(before + shared[:cut], credentials=ALICE)
        decoder.receive_data(shared[cut:] + after, credentials=second)
        got = messages(decoder)
        assert [(m.data, m.credentials) for m in got] == [
            (b"a", ALICE),
            (b"shared", None),
            (b"b", second),
        ], cut


def test_bytes_that_came_before_any_credentials_get_none() -> None:
    """pass_credentials() turned on mid-frame: the frame's start came without, so None."""
    frame = ENC.encode(b"started before")
    decoder = FrameDecoder()
    decoder.receive_data(frame[:3])
    decoder.receive_data(frame[3:] + ENC.encode(b"after"), credentials=ALICE)
    got = messages(decoder)
    assert [(m.data, m.credentials) for m in got] == [
        (b"started before", None),
        (b"after", ALICE),
    ]


def test_credentials_are_never_read_from_the_bytes() -> None:
    forged = b"".join(n.to_bytes(4, "little") for n in (1, 0, 0))
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(forged))
    assert messages(decoder) == [Message(forged)]  # credentials None: none came with it


def test_a_writer_alternating_identities_is_bounded_and_never_misattributed() -> None:
    """One byte per write, two identities alternating: the decoder keeps at most
    MAX_CREDENTIAL_RANGES ranges, and no frame gets credentials it does not deserve."""
    frame = ENC.encode(b"x" * 300)
    decoder = FrameDecoder()
    for i, byte in enumerate(frame):
        decoder.receive_data(bytes([byte]), credentials=ALICE if i % 2 else BOB)
        assert len(decoder._credentials) <= MAX_CREDENTIAL_RANGES
    alone = ENC.encode(b"alice alone")
    decoder.receive_data(alone, credentials=ALICE)
    got = messages(decoder)
    assert [(m.data, m.credentials) for m in got] == [(b"x" * 300, None), (b"alice alone", ALICE)]


def test_forgetting_old_ranges_never_gives_a_frame_someone_elses_credentials() -> None:
    """A whole frame from Alice, then a flood of alternating writes before it is decoded:
    merging the oldest ranges may leave Alice's frame without an answer, never with Bob's."""
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(b"alice"), credentials=ALICE)
    for i, byte in enumerate(ENC.encode(b"y" * (2 * MAX_CREDENTIAL_RANGES))):
        decoder.receive_data(bytes([byte]), credentials=BOB if i % 2 == 0 else ALICE)
    first = messages(decoder)[0]
    assert first.data == b"alice" and first.credentials in (ALICE, None)


def test_an_idle_decoder_holds_no_credential_ranges() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(b"m"), credentials=ALICE)
    assert messages(decoder)[0].credentials == ALICE
    assert decoder.idle and not decoder._credentials
    decoder.receive_data(ENC.encode(b"n"))  # no credentials with this one
    assert messages(decoder)[0].credentials is None


def test_close_forgets_the_ranges() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(b"m")[:4], credentials=ALICE)
    decoder.close()
    assert not decoder._credentials


# -- CLAIM frames: checked and stripped always, credentials only when accepted --------------

CLAIM = SendCredentials(4242, 1000, 1000)


def test_a_claim_is_stripped_and_given_only_when_accepted() -> None:
    stream = ENC.encode(b"claimed", claim=CLAIM) + ENC.encode(b"plain")
    for accept in (False, True):
        decoder = FrameDecoder()
        decoder.accept_claims = accept
        decoder.receive_data(stream)
        first, second = messages(decoder)
        assert first.data == b"claimed" and second == Message(b"plain")
        expected = ClaimedCredentials(4242, 1000, 1000) if accept else None
        assert first.credentials == expected


def test_kernel_credentials_are_kept_when_claims_are_not_accepted() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(ENC.encode(b"x", claim=CLAIM), credentials=ALICE)
    assert messages(decoder)[0].credentials == ALICE


def test_the_size_limit_is_the_messages_not_the_claims() -> None:
    encoder, decoder = FrameEncoder(max_message_size=8), FrameDecoder(max_message_size=8)
    decoder.accept_claims = True
    frame = encoder.encode(b"12345678", claim=CLAIM)
    decoder.receive_data(frame[:10])
    assert not decoder.has_message()  # a whole frame's header at the limit is no error
    decoder.receive_data(frame[10:])
    assert decoder.has_message() and messages(decoder)[0].data == b"12345678"
    with pytest.raises(ValueError, match="9 bytes"):
        encoder.encode(b"123456789", claim=CLAIM)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (HEADER.pack(11, 0, KIND_DATA, FLAG_CLAIM) + b"\0" * 11, "shorter than its claim"),
        (HEADER.pack(12, 0, KIND_DATA, FLAG_CLAIM) + CLAIM_BYTES.pack(0, 1, 1), "pid=0"),
        (HEADER.pack(12, 0, KIND_DATA, FLAG_CLAIM) + CLAIM_BYTES.pack(1, 2**32 - 1, 1), "uid="),
        (HEADER.pack(12, 0, KIND_DATA, FLAG_CLAIM) + CLAIM_BYTES.pack(1, 1, 2**32 - 1), "gid="),
    ],
)
def test_an_impossible_claim_breaks_the_framing(frame: bytes, reason: str) -> None:
    """Checked whether accepted or not: a peer writing impossible claims is broken."""
    decoder = FrameDecoder()
    decoder.receive_data(frame)
    with pytest.raises(FramingError, match=reason):
        decoder.next_event()


def test_an_impossible_claim_closes_the_frames_descriptors() -> None:
    r, w = os.pipe()
    os.close(w)
    decoder = FrameDecoder()
    decoder.receive_data(HEADER.pack(12, 1, KIND_DATA, FLAG_CLAIM), [r])
    decoder.receive_data(CLAIM_BYTES.pack(1, 2**32 - 1, 1))
    with pytest.raises(FramingError):
        decoder.next_event()
    with pytest.raises(OSError):
        os.fstat(r)  # closed by the decoder
