"""OS cases: peer credentials, as the kernel answers the standard library's getsockopt.

The option numbers come from each OS's headers (cited); a case tries every
mechanism this OS might have and records which answer and what they say.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import sys
import time
from typing import Any, Dict, Optional, Tuple

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    LOCAL_CREDS_OPTIONS,
    attempt,
    errno_name,
    kind_pair,
    unavailable,
)

case = pytest.mark.case

# (name, level, option, buffer size, struct layout of the fields (pid, uid, gid) or a parser)
# Linux <asm-generic/socket.h> SO_PEERCRED 17, struct ucred {pid, uid, gid};
# OpenBSD <sys/socket.h> SO_PEERCRED 0x1022, struct sockpeercred {uid, gid, pid};
# FreeBSD/macOS/DragonFly <sys/un.h> LOCAL_PEERCRED 1 at level 0, struct xucred;
# NetBSD <sys/un.h> LOCAL_PEEREID 3 at level 0, struct unpcbid {pid, euid, egid}.
_MECHANISMS = {
    "linux": ("SO_PEERCRED", socket.SOL_SOCKET, 17, 12, "pid uid gid"),
    "openbsd": ("SO_PEERCRED", socket.SOL_SOCKET, 0x1022, 12, "uid gid pid"),
    "netbsd": ("LOCAL_PEEREID", 0, 3, 12, "pid uid gid"),
    "freebsd": ("LOCAL_PEERCRED", 0, 1, 88, "xucred"),
    "darwin": ("LOCAL_PEERCRED", 0, 1, 76, "xucred"),
    "dragonfly": ("LOCAL_PEERCRED", 0, 1, 88, "xucred"),
}


def _mechanism() -> Tuple[str, int, int, int, str]:
    for prefix, mechanism in _MECHANISMS.items():
        if sys.platform.startswith(prefix):
            return mechanism
    unavailable(
        f"no getsockopt peer-credential mechanism known for {sys.platform} "
        "(illumos uses getpeerucred)"
    )
    raise AssertionError("unreachable")


def _peer(sock: socket.socket) -> Dict[str, Optional[int]]:
    """The peer's pid/uid/gid (pid None where the structure has none)."""
    _, level, option, size, layout = _mechanism()
    raw = sock.getsockopt(level, option, size)
    if layout == "xucred":
        # struct xucred: u_int cr_version; uid_t cr_uid; short cr_ngroups;
        # gid_t cr_groups[16]; then FreeBSD's pid union at offset 80.
        _, uid, _, gid = struct.unpack_from("@IIhxxI", raw)
        pid = (
            struct.unpack_from("@i", raw, 80)[0]
            if len(raw) >= 84 and sys.platform.startswith("freebsd")
            else None
        )
        return {"pid": pid, "uid": uid, "gid": gid}
    values = dict(
        zip(layout.split(), struct.unpack("@iII" if layout.startswith("pid") else "@IIi", raw))
    )
    return {"pid": values["pid"], "uid": values["uid"], "gid": values["gid"]}


def _matches_self(creds: Dict[str, Optional[int]]) -> Dict[str, Any]:
    return {
        "pid": "n/a" if creds["pid"] is None else creds["pid"] == os.getpid(),
        "uid": creds["uid"] == os.geteuid(),
        "gid": creds["gid"] == os.getegid(),
    }


@case(
    "os.creds.mechanism",
    "Which getsockopt gives peer credentials, and do they match this process",
    rows=["CRED-01", "CRED-07"],
)
def test_mechanism(observe: Observer) -> None:
    name = _mechanism()[0]
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        observe(
            {
                "mechanism": name,
                "matches_self": _matches_self(_peer(a)),
                "repeat_same": _peer(a) == _peer(b),
            }
        )


@case(
    "os.creds.socketpair",
    "Peer credentials on a socketpair of each type",
    rows=["CRED-05", "CRED-06", "CRED-08"],
)
@pytest.mark.parametrize("kind", ["stream", "seqpacket", "dgram"])
def test_socketpair(observe: Observer, kind: str) -> None:
    _mechanism()
    a, b = kind_pair(kind)
    with a, b:
        try:
            observe(_matches_self(_peer(a)))
        except OSError as exc:
            observe(errno_name(exc))


@case(
    "os.creds.unconnected", "Peer credentials of a socket that is not connected", rows=["CRED-03"]
)
def test_unconnected(observe: Observer) -> None:
    _mechanism()
    with socket.socket(socket.AF_UNIX) as s:
        try:
            creds = _peer(s)
        except OSError as exc:
            observe(errno_name(exc))
            return
        observe({"no_error": creds})


@case(
    "os.creds.captured_at_connect",
    "The server sees the connecting child's pid, also after the child exited",
    rows=["CRED-02", "CRED-04"],
)
def test_captured_at_connect(observe: Observer, short_tmp: str) -> None:
    name = _mechanism()[0]
    path = os.path.join(short_tmp, "l")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen(1)
        pid = os.fork()
        if pid == 0:  # the child connects and exits at once
            try:
                with socket.socket(socket.AF_UNIX) as c:
                    c.connect(path)
                    c.send(b"x")
            finally:
                os._exit(0)
        conn, _ = listener.accept()
        with conn:
            os.waitpid(pid, 0)
            time.sleep(0.01)
            creds = _peer(conn)
            observe(
                {
                    "mechanism": name,
                    "pid_is_child": "n/a" if creds["pid"] is None else creds["pid"] == pid,
                }
            )


# Linux-only SCM_CREDENTIALS machinery (<asm-generic/socket.h>): SO_PASSCRED 16, SCM_CREDENTIALS 2.
_SO_PASSCRED = 16
_SCM_CREDENTIALS = 2


def _require_scm_credentials() -> None:
    if not sys.platform.startswith("linux"):
        unavailable("SCM_CREDENTIALS is Linux's (the BSDs have SCM_CREDS or LOCAL_CREDS)")


@case(
    "os.creds.scm_credentials",
    "SCM_CREDENTIALS: the sender's ucred arrives when the receiver set SO_PASSCRED",
    rows=["CRED-09", "CRED-12"],
)
def test_scm_credentials(observe: Observer, pipe: tuple[int, int]) -> None:
    _require_scm_credentials()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        ucred = struct.pack("@iII", os.getpid(), os.geteuid(), os.getegid())
        a.sendmsg(
            [b"x"],
            [
                (socket.SOL_SOCKET, _SCM_CREDENTIALS, ucred),
                (socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [pipe[0]])),
            ],
        )
        _, ancdata, _, _ = b.recvmsg(1, 512)
        kinds = sorted(kind for _, kind, _ in ancdata)
        for _, kind, data in ancdata:
            if kind == socket.SCM_RIGHTS:
                for fd in array.array("i", data):
                    os.close(fd)
        creds = [data for _, kind, data in ancdata if kind == _SCM_CREDENTIALS]
        observe({"cmsg_types": kinds, "ucred_matches": bool(creds) and creds[0] == ucred})


@case(
    "os.creds.passcred_implicit",
    "With SO_PASSCRED on, a plain send still brings credentials; without it, none",
    rows=["CRED-10", "CRED-15"],
)
def test_passcred_implicit(observe: Observer, short_tmp: str) -> None:
    _require_scm_credentials()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        a.send(b"plain")
        _, without, _, _ = b.recvmsg(10, 512)
        b.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        a.send(b"plain")
        _, with_option, _, _ = b.recvmsg(10, 512)
    path = os.path.join(short_tmp, "l")
    with socket.socket(socket.AF_UNIX) as listener, socket.socket(socket.AF_UNIX) as client:
        listener.bind(path)
        listener.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        listener.listen(1)
        client.connect(path)
        conn, _ = listener.accept()
        with conn:
            inherited = conn.getsockopt(socket.SOL_SOCKET, _SO_PASSCRED)
    observe(
        {
            "without_option": len(without),
            "with_option": len(with_option),
            "accept_inherits": bool(inherited),
        }
    )


@case(
    "os.creds.forged_pid",
    "SCM_CREDENTIALS naming another pid: a live one (pid 1) and one that does not exist",
    rows=["CRED-11"],
)
def test_forged_pid(observe: Observer) -> None:
    _require_scm_credentials()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)

        def send_as(pid: int) -> None:
            a.sendmsg(
                [b"x"],
                [
                    (
                        socket.SOL_SOCKET,
                        _SCM_CREDENTIALS,
                        struct.pack("@iII", pid, os.geteuid(), os.getegid()),
                    )
                ],
            )

        observe(
            {
                "as_root": os.geteuid() == 0,
                "pid_1": attempt(lambda: send_as(1)),
                "no_such_pid": attempt(lambda: send_as(2**22 + 12345)),
                "empty_cmsg": attempt(
                    lambda: a.sendmsg([b"x"], [(socket.SOL_SOCKET, _SCM_CREDENTIALS, b"")])
                ),
            }
        )


@case(
    "os.creds.scm_creds_bsd",
    "SCM_CREDS (FreeBSD/DragonFly): the kernel fills in an empty cmsgcred",
    rows=["CRED-16"],
)
def test_scm_creds_bsd(observe: Observer) -> None:
    scm_creds = getattr(socket, "SCM_CREDS", None)
    if scm_creds is None or sys.platform.startswith("linux"):
        unavailable("no SCM_CREDS on this OS")
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        # struct cmsgcred is 84 bytes on FreeBSD (pid, uid, euid, gid, ngroups, groups[16]).
        result = attempt(lambda: a.sendmsg([b"x"], [(socket.SOL_SOCKET, scm_creds, bytes(84))]))
        if result != "ok":
            observe({"send": result})
            return
        _, ancdata, _, _ = b.recvmsg(1, 512)
        observe({"send": "ok", "cmsgs": [kind for _, kind, _ in ancdata]})


@case("os.creds.peer_pidfd", "SO_PEERPIDFD: a pidfd for the peer (Linux 6.5+)", rows=["CRED-18"])
def test_peer_pidfd(observe: Observer) -> None:
    if not sys.platform.startswith("linux"):
        unavailable("SO_PEERPIDFD is Linux's")
    so_peerpidfd = 77  # <asm-generic/socket.h>
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        try:
            pidfd = a.getsockopt(socket.SOL_SOCKET, so_peerpidfd)
        except OSError as exc:
            observe(errno_name(exc))
            return
        os.close(pidfd)
        observe("ok")


@case("os.creds.peer_security", "SO_PEERSEC (the peer's security context)", rows=["CRED-19"])
def test_peer_security(observe: Observer) -> None:
    if not sys.platform.startswith("linux"):
        unavailable("SO_PEERSEC is Linux's")
    so_peersec = 31  # <asm-generic/socket.h>
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        observe(attempt(lambda: a.getsockopt(socket.SOL_SOCKET, so_peersec, 256)))


@case(
    "os.creds.sendto_unconnected",
    "SCM_CREDENTIALS with sendto() from an unbound, unconnected datagram socket",
    rows=["CRED-20"],
)
def test_sendto_unconnected(observe: Observer, short_tmp: str) -> None:
    _require_scm_credentials()
    path = os.path.join(short_tmp, "r")
    with (
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender,
    ):
        receiver.bind(path)
        receiver.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        ucred = struct.pack("@iII", os.getpid(), os.geteuid(), os.getegid())
        sent = attempt(
            lambda: sender.sendmsg([b"x"], [(socket.SOL_SOCKET, _SCM_CREDENTIALS, ucred)], 0, path)
        )
        if sent != "ok":
            observe({"sendto": sent})
            return
        _, ancdata, _, source = receiver.recvmsg(1, 512)
        creds = [data for _, kind, data in ancdata if kind == _SCM_CREDENTIALS]
        observe(
            {
                "sendto": "ok",
                "ucred_matches": bool(creds) and creds[0] == ucred,
                "sender_autobound": isinstance(source, bytes) and source.startswith(b"\0"),
            }
        )


@case(
    "os.creds.ucred_truncated",
    "SCM_CREDENTIALS into a control buffer too small for a ucred: MSG_CTRUNC? a partial ucred?",
    rows=["CRED-13"],
)
def test_ucred_truncated(observe: Observer) -> None:
    _require_scm_credentials()
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)
        a.send(b"x")
        a.send(b"y")
        _, small, small_flags, _ = b.recvmsg(1, socket.CMSG_LEN(4))
        _, _, enough_flags, _ = b.recvmsg(1, socket.CMSG_SPACE(12))
        observe(
            {
                "small_flags": [n for n in ("MSG_CTRUNC",) if small_flags & socket.MSG_CTRUNC],
                "small_payload_bytes": len(small[0][2]) if small else 0,
                "enough_flags": [n for n in ("MSG_CTRUNC",) if enough_flags & socket.MSG_CTRUNC],
            }
        )


@case(
    "os.creds.not_coalesced",
    "Stream data sent with different credentials is not merged into one read",
    rows=["CRED-14"],
)
def test_not_coalesced(observe: Observer) -> None:
    _require_scm_credentials()
    if os.geteuid() != 0:
        unavailable("naming another pid in SCM_CREDENTIALS needs root")
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        b.setsockopt(socket.SOL_SOCKET, _SO_PASSCRED, 1)

        def send_as(pid: int, data: bytes) -> None:
            ucred = struct.pack("@iII", pid, os.geteuid(), os.getegid())
            a.sendmsg([data], [(socket.SOL_SOCKET, _SCM_CREDENTIALS, ucred)])

        send_as(os.getpid(), b"mine")
        send_as(1, b"init")
        send_as(1, b"more")
        first, _, _, _ = b.recvmsg(100, 512)
        second, _, _, _ = b.recvmsg(100, 512)
        observe({"first_read": first.decode(), "second_read": second.decode()})


@case(
    "os.creds.local_creds_bsd",
    "LOCAL_CREDS (FreeBSD, NetBSD): the receiver's first message carries the sender's sockcred",
    rows=["CRED-17"],
)
def test_local_creds_bsd(observe: Observer) -> None:
    system = next((name for name in LOCAL_CREDS_OPTIONS if sys.platform.startswith(name)), None)
    if system is None:
        unavailable("LOCAL_CREDS exists on FreeBSD and NetBSD only")
    local_creds, scm_creds = LOCAL_CREDS_OPTIONS[system]
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        option = attempt(lambda: b.setsockopt(0, local_creds, 1))
        if option != "ok":
            observe({"setsockopt": option})
            return
        b.setblocking(False)
        a.send(b"x")
        _, first, _, _ = b.recvmsg(1, 1024)
        a.send(b"y")
        _, second, _, _ = b.recvmsg(1, 1024)
        observe(
            {
                "setsockopt": "ok",
                "scm_creds_arrived": any(k == scm_creds for _, k, _ in first),
                "on_second_message": any(k == scm_creds for _, k, _ in second),
                "local_creds": local_creds,
                "scm_creds": hex(scm_creds),
            }
        )
