"""macOS, OpenBSD and an unknown POSIX: no ancillary credentials, no SO_PEERSEC.

XNU's ``unp_internalize`` accepts a single SCM_RIGHTS and nothing else
(SCM_CREDS is defined in ``bsd/sys/socket.h`` but refused with EINVAL);
OpenBSD's ``unp_externalize`` (uipc_usrreq.c rev 1.221): "SCM_RIGHTS is the
only supported control message type on unix sockets".  Each backend must say
so by name, and never read a credential out of control data.
"""

from __future__ import annotations

import socket
from types import ModuleType

import pytest

from udscompat import UnsupportedError
from udscompat._msgcreds import SendCredentials
from udscompat._os import _posix, macos, openbsd


@pytest.mark.parametrize(
    ("module", "os_name"),
    [(macos, "macOS"), (openbsd, "OpenBSD"), (_posix, _posix.OS_NAME)],
    ids=["macos", "openbsd", "posix"],
)
def test_every_entry_refuses_naming_the_os(module: ModuleType, os_name: str) -> None:
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        with pytest.raises(UnsupportedError, match="ancillary credentials") as info:
            module.pass_credentials(a, True)
        assert info.value.os_name == os_name
        with pytest.raises(UnsupportedError, match="ancillary credentials"):
            module.credentials_cmsg(SendCredentials(1, 2, 3))
        with pytest.raises(UnsupportedError, match="peer security labels") as info:
            module.peer_security_label(a)
        assert "Linux" in info.value.reason
    # Even a well-formed Linux or FreeBSD credential message is not read here.
    forged = [(0xFFFF, 0x03, bytes(84)), (1, 2, bytes(12))]
    assert module.credentials_from_cmsgs(forged) is None
    assert module.CREDENTIALS_ROOM == 0
