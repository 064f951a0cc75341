"""Attacks on binding that issue 13's own tests did not try (see coord notes attack-13).

Each test here failed on main at b4db944.  Stand-ins for what cannot be arranged on
demand are named as such: a signal delivered right after a chosen system call (a real
SIGUSR1, sent from a profile hook at that moment), a kernel socket table that does not
list a socket (as for one bound from another network namespace) or reports another
device number for its file (as btrfs does), a process descheduled at a chosen call.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

import pytest

import udscompat
from udscompat._platform import backend

# -- what a refused connect says ----------------------------------------------------------------


def test_refused_connect_never_calls_a_non_socket_a_stale_socket_file(short_tmp: Path) -> None:
    """Linux refuses a connect to a regular file or a FIFO with ECONNREFUSED, as for a stale
    socket file; the message must say what is really there."""
    regular = short_tmp / "regular"
    regular.write_bytes(b"data")
    fifo = short_tmp / "fifo"
    os.mkfifo(fifo)
    for path, kind in ((regular, "a regular file"), (fifo, "a FIFO")):
        with pytest.raises(OSError) as info:
            udscompat.SeqpacketConn.connect(path, implementation="emulated")
        message = str(info.value)
        assert "stale" not in message, message
        if info.value.errno == errno.ECONNREFUSED:
            assert f"not a socket: {kind} is there" in message, message


def test_refusal_by_a_socket_the_table_does_not_list_is_not_called_stale(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A socket bound from another network namespace (or on a filesystem whose device
    numbers sock_diag reports differently) is missing from this namespace's table.  Stand-in:
    a table that leaves it out.  Bound but not listening, it refuses connects: not stale."""
    path = str(short_tmp / "bound")
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(path)
        monkeypatch.setattr(backend, "bound_unix_sockets", lambda: [])
        with pytest.raises(OSError) as info:
            udscompat.SeqpacketConn.connect(path, implementation="emulated")
        assert info.value.errno == errno.ECONNREFUSED
        assert "stale" not in str(info.value)
        assert "bound there but does not listen" in str(info.value)
