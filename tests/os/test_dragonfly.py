"""DragonFly backend: the FreeBSD 4 ``xucred`` (no pid): layout tests for a kernel that
cannot run here."""

from __future__ import annotations

import struct

from udscompat._os import dragonfly


def test_xucred_has_no_pid() -> None:
    raw = struct.pack("=IIhxx16I", 0, 1002, 2, 1002, 5, *[0] * 14)
    assert dragonfly.XUCRED.size == 76
    assert dragonfly.decode_peercred(raw) == (None, 1002, 1002, (1002, 5))


def test_constants() -> None:
    assert dragonfly.LOCAL_PEERCRED == 1
    assert dragonfly.MAX_FDS_PER_MESSAGE == 254
