"""Probes never block, and say when they cannot decide (issue 16: NetBSD showed both).

The real evidence is the NetBSD kernel's (``tests/test_kernels_netbsd.py``, tier
``rump``: a zero-length seqpacket message never delivered, a message of 510
descriptors accepted and dropped).  Here: the bounded receive every probe uses,
the whole-contract rule ``auto`` follows, and what ``capabilities()`` reports.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.conftest import only_on
from udscompat import _probes, capabilities


def test_a_probe_receive_gives_up_instead_of_blocking() -> None:
    with _probes._probe_pair() as (a, b):
        started = time.monotonic()
        assert _probes._receive(b, 16) is None
        waited = time.monotonic() - started
        assert _probes.DELIVERY_WAIT <= waited < _probes.DELIVERY_WAIT + 1.0
        a.send(b"x")
        got = _probes._receive(b, 16)
        assert got is not None and got[0] == b"x"


@pytest.mark.parametrize(
    ("fields", "conformant"),
    [
        ({}, True),
        ({"keeps_boundaries": False}, False),
        ({"reports_truncation": False}, False),
        ({"carries_fds": False}, False),
        ({"zero_length": "not-delivered"}, False),
        ({"zero_length": "same-as-eof"}, False),
        ({"available": False}, False),
    ],
)
def test_auto_needs_the_whole_contract(fields: dict, conformant: bool) -> None:
    complete = dict(
        available=True,
        reason="r",
        keeps_boundaries=True,
        short_read="discard",
        zero_length="distinct",
        marker=False,
        reports_truncation=True,
        carries_fds=True,
    )
    assert _probes.SeqpacketProbe(**{**complete, **fields}).conformant is conformant


def test_capabilities_name_undecided_probes() -> None:
    caps = capabilities()
    assert isinstance(caps.quirks["undecided"], dict)
    assert caps.quirks["undecided"] == _probes.undecided()
    assert isinstance(caps.quirks["stream_fd_padding"], bool)
    if not caps.quirks["undecided"]:
        probe = _probes.seqpacket()
        if probe.available:
            assert probe.carries_fds and probe.reports_truncation


@only_on("Linux", "a stream message with descriptors is never dropped for its control size")
def test_no_padding_where_nothing_is_dropped() -> None:
    assert _probes.fd_control_padding() is False
    a, b = socket.socketpair()
    with a, b:
        from udscompat import _io

        rights = _io.rights(a, _io.check_fds([a.fileno()]))
        assert len(rights) == 1
