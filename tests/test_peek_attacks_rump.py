"""The peek without the probe's answer (tests/test_peek_attacks.py) through NetBSD's Linux
ABI, in a rump kernel: there a peek installs nothing and copies out kernel pointers, which
must never be handed out as descriptors.  compat_linux answers EINVAL for SO_TIMESTAMP and
SO_PASSCRED, so the room before SCM_RIGHTS is 0; and with 16 bytes or fewer of control room
it reports neither the pointers nor MSG_CTRUNC (measured on 7.99.34: MSG_CTRUNC from 20 bytes,
the pointers from 32), so there the peek returns a message with descriptors as one without
them -- what recv_fds's peek returns there anyway -- and the receive then gets them all.

Heavy tier ``rump`` (the fixtures of tests/test_kernels_netbsd.py).  Stand-in: the full
descriptor table is the probe raising EMFILE (the hijacked process's table is the rump
kernel's, which RLIMIT_NOFILE here does not bound); everything else is the real kernel.
"""

from __future__ import annotations

import json

import pytest

from tests.test_kernels_netbsd import _hijacked, build, linux_server
from udscompat_conformance.kernels.rump import RumpServer

pytestmark = [pytest.mark.tier("rump"), pytest.mark.timeout(3600)]
__all__ = ["build", "linux_server"]  # fixtures this module uses

PROGRAM = """
import errno, json, os, socket, udscompat
from udscompat import _probes
from udscompat._platform import backend

def full_table():
    raise OSError(errno.EMFILE, "stand-in: no room for the probe")

out = {"installs": _probes.peek_installs_fds()}
_probes.peek_installs_fds = full_table
r, w = os.pipe()
for kind in ("stream", "dgram", "seqpacket"):
    a, b = socket.socketpair(socket.AF_UNIX, getattr(socket, "SOCK_" + kind.upper()))
    try:
        b.setsockopt(socket.SOL_SOCKET, 29, 1)  # SO_TIMESTAMP, as a native connection's marker
    except OSError as exc:
        out[kind + " timestamp"] = exc.errno
    out[kind + " room"] = backend.control_room_before_rights(b)
    udscompat.send_fds(a, b"with", [r, w])
    try:
        data, fds, _, _ = udscompat.recv_fds(b, 16, 2, socket.MSG_PEEK)
        out[kind + " peek with fds"] = [data.decode(), fds]
    except OSError as exc:
        out[kind + " peek with fds"] = errno.errorcode.get(exc.errno, exc.errno)
    data, fds, _, _ = udscompat.recv_fds(b, 16, 2)
    out[kind + " received"] = [data.decode(), len(fds)]
    for fd in fds:
        os.close(fd)
    a.send(b"plain")
    data, fds, _, _ = udscompat.recv_fds(b, 16, 2, socket.MSG_PEEK)
    out[kind + " peek without fds"] = [data.decode(), fds]
    a.close(); b.close()
print(json.dumps(out))
"""


def test_a_peek_without_the_probe_refuses_descriptors_and_reads_messages_without_them(
    linux_server: RumpServer,
) -> None:
    proc = _hijacked(linux_server, PROGRAM)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["installs"] is False
    for kind in ("stream", "dgram", "seqpacket"):
        assert seen[f"{kind} room"] == 0, seen
        assert seen[f"{kind} peek with fds"] == ["with", []], seen
        assert seen[f"{kind} received"] == ["with", 2], seen
        assert seen[f"{kind} peek without fds"] == ["plain", []], seen
