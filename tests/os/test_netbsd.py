"""NetBSD backend, from ``sys/sys/un.h`` (``unpcbid``): layout tests for a kernel that
cannot run here."""

from __future__ import annotations

import struct

from udscompat._os import freebsd, netbsd


def test_unpcbid_is_pid_euid_egid() -> None:
    assert netbsd.decode_peercred(struct.pack("=iII", 99, 1000, 100)) == (99, 1000, 100, None)


def test_constants() -> None:
    assert netbsd.LOCAL_PEEREID == 3
    assert netbsd.SUN_PATH_SIZE == 104


# The definitions as NetBSD's headers write them (src-netbsd 82f3a69, NetBSD 7.99.34, the rump
# kernel's tree): sys/sys/un.h rev 1.57 (2016/04/06) and sys/sys/socket.h rev 1.119 (2016/04/06).
_UN_H = """
#define	LOCAL_OCREDS	0x0001		/* pass credentials to receiver */
#define	LOCAL_CONNWAIT	0x0002		/* connects block until accepted */
#define	LOCAL_PEEREID	0x0003		/* get peer identification */
#define	LOCAL_CREDS	0x0004		/* pass credentials to receiver */
"""
_SOCKET_H = """
#define	SCM_RIGHTS	0x01		/* access rights (array of int) */
#define	SCM_TIMESTAMP	0x08		/* timestamp (struct timeval) */
#define	SCM_CREDS	0x10		/* credentials (struct sockcred) */
"""


def _defines(text: str) -> dict[str, int]:
    return {
        words[1]: int(words[2], 0)
        for words in (line.split() for line in text.splitlines())
        if words[:1] == ["#define"]
    }


def test_local_creds_values_are_the_headers() -> None:
    """The backend and the conformance case os.creds.local_creds_bsd use the headers'
    LOCAL_CREDS and SCM_CREDS (the case used 2 and 4: LOCAL_CONNWAIT and nothing)."""
    from udscompat_conformance.support import LOCAL_CREDS_OPTIONS

    un_h, socket_h = _defines(_UN_H), _defines(_SOCKET_H)
    expected = (un_h["LOCAL_CREDS"], socket_h["SCM_CREDS"])
    assert expected == (netbsd.LOCAL_CREDS, netbsd.SCM_CREDS)
    assert LOCAL_CREDS_OPTIONS["netbsd"] == expected
    assert un_h["LOCAL_PEEREID"] == netbsd.LOCAL_PEEREID
    # FreeBSD's row: the backend's values, pinned from its headers in tests/os/test_freebsd.py.
    assert LOCAL_CREDS_OPTIONS["freebsd"] == (freebsd.LOCAL_CREDS, freebsd.SCM_CREDS)
