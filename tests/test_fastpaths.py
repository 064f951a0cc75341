"""Every inlined fast path equals the general path it short-cuts, on the same input.

Each connection inlines the common case of its receive routine (``_fast``); switched off,
the same call takes the general routine.  Hypothesis drives two pairs, one each way, with
the same messages, sizes, descriptors, truncations and end-of-stream, and compares what
comes out.  The native one includes a FreeBSD 15 stand-in (records read in parts), which
this Linux kernel cannot show.
"""

from __future__ import annotations

import os
import socket
from typing import Any, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import udscompat
from udscompat import ControlTruncatedError, SeqpacketConn, _seqpacket
from udscompat._platform import backend

# (payload size, descriptors, receive bufsize, receive maxfds)
Step = Tuple[int, int, int, int]
steps = st.lists(
    st.tuples(
        st.sampled_from([0, 1, 7, 64, 4095, 4096, 70000, 140000]),
        st.integers(0, 2),
        st.sampled_from([0, 5, 64, 65536, 300000]),
        st.integers(0, 2),
    ),
    max_size=8,
)


def _outcome(conn: SeqpacketConn, bufsize: int, maxfds: int) -> Any:
    try:
        message = conn.recv_message(bufsize, maxfds)
    except ControlTruncatedError as exc:
        return ("truncated-control", exc.data, exc.closed_fds)
    if message is None:
        return None
    for fd in message.fds:
        os.close(fd)
    return (message.data, len(message.fds), message.truncated)


def _run(impl: str, fast: bool, plan: List[Step], pipe: Tuple[int, int]) -> List[Any]:
    a, b = udscompat.seqpacket_pair(implementation=impl)
    b._fast = fast  # type: ignore[attr-defined]
    b.settimeout(5)
    results: List[Any] = []
    with a, b:
        for size, nfds, bufsize, maxfds in plan:
            if impl == "native" and size > 100000:
                size = 100000  # a native message must fit the socket's buffer
            a.send(bytes([size % 251]) * size, [pipe[0]] * nfds)
            results.append(_outcome(b, bufsize, maxfds))
        a.close()
        results.append(_outcome(b, 65536, 0))
        results.append(_outcome(b, 65536, 0))
    return results


@pytest.mark.parametrize("impl", ["native", "emulated"])
@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plan=steps)
def test_fast_receive_equals_the_general_receive(
    impl: str, plan: List[Step], pipe: Tuple[int, int]
) -> None:
    assert _run(impl, True, plan, pipe) == _run(impl, False, plan, pipe)


class _PartialRecords(socket.socket):
    """Stand-in for FreeBSD 15's SOCK_SEQPACKET, which cannot run here: a read shorter than
    the record returns the start without MSG_TRUNC and leaves the rest queued, and the
    record's last part carries MSG_EOR (os-facts §2.9).  Built on a real Linux seqpacket
    socket, whose whole records it cuts."""

    _rest: Optional[Tuple[bytes, List[Any]]] = None

    def recvmsg(self, bufsize: int, ancbufsize: int = 0, flags: int = 0) -> Any:  # type: ignore[override]
        if self._rest is None:
            data, ancdata, msg_flags, address = super().recvmsg(1 << 20, ancbufsize, flags)
            if not data and not ancdata:
                return data, ancdata, msg_flags, address
            self._rest = (data, ancdata)
        data, ancdata = self._rest
        part, rest = data[:bufsize], data[bufsize:]
        self._rest = (rest, []) if rest else None
        return part, ancdata, 0 if rest else backend.MSG_EOR, None


@pytest.mark.parametrize("fast", [True, False])
def test_a_partial_record_is_discarded_on_both_paths(fast: bool) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stand_in = _PartialRecords(socket.AF_UNIX, socket.SOCK_SEQPACKET, fileno=b.detach())
    sender = _seqpacket._wrap(a, "native")
    receiver = _seqpacket._wrap(stand_in, "native")
    receiver._partial_records = True  # type: ignore[attr-defined]
    receiver._fast = fast  # type: ignore[attr-defined]
    with sender, receiver:
        sender.send(b"0123456789")
        sender.send(b"next")
        sender.send(b"abcd")
        first = receiver.recv_message(4)
        assert first is not None and (first.data, first.truncated) == (b"0123", True)
        second = receiver.recv_message(4)  # exactly bufsize, and the record's end
        assert second is not None and (second.data, second.truncated) == (b"next", False)
        third = receiver.recv_message(2)
        assert third is not None and (third.data, third.truncated) == (b"ab", True)
        sender.close()
        assert receiver.recv_message(4) is None
