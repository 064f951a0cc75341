"""capabilities() and ``python -m udscompat`` report issue 14's features, read-only, and what
they say is what the API then does (each row is checked against a real call)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Tuple

import pytest

import udscompat
from tests.conftest import SEQPACKET_IMPLEMENTATIONS
from udscompat import UnsupportedError, _ancillary

NEW_FEATURES = (
    "ancillary_credentials",
    "peer_security_label",
    "datagram",
    "seqpacket_dup",
    "seqpacket_peek",
    "seqpacket_credentials",
)


def test_the_answer_is_read_only() -> None:
    """capabilities() is cached: a caller changing its answer would change everyone's."""
    caps = udscompat.capabilities()
    with pytest.raises(TypeError):
        caps.features["seqpacket"] = caps.features["datagram"]  # type: ignore[index]
    with pytest.raises(TypeError):
        caps.quirks["max_fds_per_message"] = 10**6  # type: ignore[index]
    assert udscompat.capabilities().quirks["max_fds_per_message"] != 10**6
    json.dumps(caps.as_dict())  # still plain data


def test_the_new_rows_say_what_the_calls_do() -> None:
    caps = udscompat.capabilities()
    for name in NEW_FEATURES:
        assert caps.features[name].status in ("native", "emulated", "unavailable"), name
        assert caps.features[name].detail, name
    probe = _ancillary.credentials_probe()
    assert (caps.features["ancillary_credentials"].status == "native") == probe.available
    assert caps.quirks["stream_credentials"] == probe.stream
    a, b = udscompat.seqpacket_pair()
    with a, b:
        try:
            twin = a.dup()
        except UnsupportedError:
            assert caps.features["seqpacket_dup"].status == "unavailable"
        else:
            twin.close()
            assert caps.features["seqpacket_dup"].status == "native"
        try:
            label = a.peer_security_label()
        except UnsupportedError:
            assert caps.features["peer_security_label"].status == "unavailable"
        else:
            assert caps.features["peer_security_label"].status == "native"
            assert ("none here" in caps.features["peer_security_label"].detail) == (label is None)
        if probe.available:
            b.pass_credentials()
            a.send(b"x")
            message = b.recv_message()
            assert message is not None and message.credentials is not None
            assert caps.features["seqpacket_credentials"].status != "unavailable"


@pytest.mark.parametrize("impl", SEQPACKET_IMPLEMENTATIONS)
def test_the_rows_for_each_seqpacket_implementation(impl: str) -> None:
    rows = _ancillary.features("native" if impl == "native" else "emulated")
    a, b = udscompat.seqpacket_pair(implementation=impl)
    with a, b:
        status, _ = rows["seqpacket_dup"]
        if status == "native":
            a.dup().close()
        else:
            with pytest.raises(UnsupportedError):
                a.dup()
        r, w = os.pipe()
        try:
            a.send(b"peek", [r])
            peeked: Tuple[int, ...] = ()
            try:
                message = b.peek(maxfds=1)
                assert message is not None
                peeked = message.fds
            except UnsupportedError:
                assert "raises UnsupportedError" in rows["seqpacket_peek"][1]
            else:
                assert len(peeked) == 1 and "UnsupportedError" not in rows["seqpacket_peek"][1]
            finally:
                for fd in peeked:
                    os.close(fd)
                taken = b.recv_message(maxfds=1)
                assert taken is not None
                for fd in taken.fds:
                    os.close(fd)
        finally:
            os.close(r)
            os.close(w)


def test_python_m_udscompat_lists_them() -> None:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    table = subprocess.run(
        [sys.executable, "-m", "udscompat"], capture_output=True, text=True, env=env, check=True
    ).stdout
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "udscompat", "--json"],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout
    )
    for name in NEW_FEATURES:
        assert name in table and name in data["features"]
    assert "stream_credentials" in table and "stream_credentials" in data["quirks"]
