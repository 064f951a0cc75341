"""OS cases: credentials as ancillary data on every kernel that has them, and SO_PEERSEC.

Standard library only.  Each kernel's mechanism comes from its own headers:
Linux ``SO_PASSCRED`` 16 / ``SCM_CREDENTIALS`` 2 (``struct ucred {pid, uid,
gid}``, asm-generic/socket.h); FreeBSD ``LOCAL_CREDS_PERSISTENT`` 3 at level 0
/ ``SCM_CREDS2`` 8 (``struct sockcred2 {version, pid, ...}``) and a sender's
``SCM_CREDS`` 3 (``struct cmsgcred {pid, ...}``, sys/socket.h, sys/un.h);
DragonFly ``SO_PASSCRED`` 0x4000 / ``SCM_CREDS`` 3 (cmsgcred); NetBSD
``LOCAL_CREDS`` 4 at level 0 / ``SCM_CREDS`` 0x10 (``struct sockcred {pid,
...}``, un.h 1.60, socket.h 1.131); illumos ``SO_RECVUCRED`` 0x400 /
``SCM_UCRED`` 0x1012 (``struct ucred_s``, uc_pid at offset 12).  macOS and
OpenBSD carry only SCM_RIGHTS: their cases report unavailable.
"""

from __future__ import annotations

import array
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import pytest

from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import (
    attempt,
    close_all,
    errno_name,
    kind_pair,
    unavailable,
)

case = pytest.mark.case
_SOL = socket.SOL_SOCKET
_ROOM = 4096


class _Mechanism(NamedTuple):
    name: str
    #: (level, option) the receiver sets to 1, or None where only the sender attaches.
    receiver_option: Optional[Tuple[int, int]]
    #: (cmsg type, payload) a sender attaches at SOL_SOCKET, or None where it may not.
    sender_cmsg: Optional[Tuple[int, bytes]]
    #: cmsg type at SOL_SOCKET -> offset of the pid in its payload.
    pid_offsets: Dict[int, int]


def _mechanism() -> _Mechanism:
    if sys.platform.startswith("linux"):
        ucred = struct.pack("@iII", os.getpid(), os.getuid(), os.getgid())
        return _Mechanism("SO_PASSCRED/SCM_CREDENTIALS", (_SOL, 16), (2, ucred), {2: 0})
    if sys.platform.startswith("freebsd"):
        return _Mechanism("LOCAL_CREDS_PERSISTENT/SCM_CREDS2", (0, 3), (3, bytes(84)), {8: 4, 3: 0})
    if sys.platform.startswith("dragonfly"):
        return _Mechanism("SO_PASSCRED/SCM_CREDS", (_SOL, 0x4000), (3, bytes(84)), {3: 0})
    if sys.platform.startswith("netbsd"):
        return _Mechanism("LOCAL_CREDS/SCM_CREDS", (0, 4), None, {0x10: 0})
    if sys.platform.startswith("sunos"):
        return _Mechanism("SO_RECVUCRED/SCM_UCRED", (_SOL, 0x400), None, {0x1012: 12})
    unavailable(f"no ancillary-credential mechanism is known on {sys.platform}")
    raise AssertionError("unreachable")


def _creds_pids(mech: _Mechanism, ancdata: List[Tuple[int, int, bytes]]) -> List[int]:
    """The pid of every credential message in ``ancdata``; closes any descriptors."""
    pids = []
    for level, kind, data in ancdata:
        if level != _SOL:
            continue
        if kind == socket.SCM_RIGHTS:
            close_all(list(array.array("i", data[: len(data) - len(data) % 4])))
        elif kind in mech.pid_offsets and len(data) >= mech.pid_offsets[kind] + 4:
            pids.append(struct.unpack_from("@i", data, mech.pid_offsets[kind])[0])
    return pids


def _who(pids: List[int], child: Optional[int] = None) -> Any:
    """The pids seen, named: "self", "child", "none" or "other"."""
    names = ["self" if p == os.getpid() else "child" if p == child else "other" for p in pids]
    return names[0] if len(names) == 1 else (names or "none")


def _enable(mech: _Mechanism, sock: socket.socket) -> str:
    if mech.receiver_option is None:
        return "n/a"
    level, option = mech.receiver_option
    return attempt(lambda: sock.setsockopt(level, option, 1))


def _send_attached(mech: _Mechanism, sock: socket.socket, data: bytes) -> str:
    if mech.sender_cmsg is None:
        return "n/a"
    kind, payload = mech.sender_cmsg
    return attempt(lambda: sock.sendmsg([data], [(_SOL, kind, payload)]))


@case(
    "os.creds.ancillary_each_message",
    "With the receiver's option on, which messages carry the sender's credentials",
    rows=["CRED-09", "CRED-10", "CRED-16", "CRED-17"],
)
@pytest.mark.parametrize("kind", ["stream", "dgram", "seqpacket"])
def test_each_message(observe: Observer, kind: str) -> None:
    mech = _mechanism()
    a, b = kind_pair(kind)
    with a, b:
        option = _enable(mech, b)
        seen = []
        for data in (b"first", b"second"):  # read each before the next send: no coalescing
            a.send(data)
            _, ancdata, _, _ = b.recvmsg(16, _ROOM)
            seen.append(_who(_creds_pids(mech, ancdata)))
        sent = _send_attached(mech, a, b"attached")
        attached = "n/a"
        if sent == "ok":
            _, ancdata, _, _ = b.recvmsg(16, _ROOM)
            attached = _who(_creds_pids(mech, ancdata))
        observe(
            {
                "mechanism": mech.name,
                "option": option,
                "plain_messages": seen,
                "sender_attached": sent if sent != "ok" else attached,
            }
        )


@case(
    "os.creds.ancillary_pid_after_fork",
    "A child forked after the socket was made sends: whose pid do the credentials name",
    rows=["CRED-09", "CRED-16"],
)
def test_pid_after_fork(observe: Observer) -> None:
    mech = _mechanism()
    a, b = kind_pair("dgram")
    with a, b:
        option = _enable(mech, b)
        child = os.fork()
        if child == 0:
            try:
                a.send(b"plain")
                if mech.sender_cmsg is not None:
                    kind, payload = mech.sender_cmsg
                    if kind == 2:  # Linux: the child names its own pid, not the parent's
                        payload = struct.pack("@iII", os.getpid(), os.getuid(), os.getgid())
                    a.sendmsg([b"attached"], [(_SOL, kind, payload)])
            finally:
                os._exit(0)
        os.waitpid(child, 0)
        plain = _who(_creds_pids(mech, b.recvmsg(16, _ROOM)[1]), child)
        attached: Any = "n/a"
        if mech.sender_cmsg is not None:
            attached = _who(_creds_pids(mech, b.recvmsg(16, _ROOM)[1]), child)
        observe({"option": option, "plain": plain, "sender_attached": attached})


@case(
    "os.creds.ancillary_coalescing",
    "Two stream writes by one sender, then one read: one message or two, how many credentials",
    rows=["CRED-14"],
)
def test_coalescing(observe: Observer) -> None:
    mech = _mechanism()
    a, b = kind_pair("stream")
    with a, b:
        option = _enable(mech, b)
        a.send(b"ab")
        a.send(b"cd")
        data, ancdata, _, _ = b.recvmsg(64, _ROOM)
        pids = _creds_pids(mech, ancdata)
        observe(
            {
                "option": option,
                "first_read": data.decode(),
                "credential_messages_in_it": len(pids),
            }
        )


@case(
    "os.creds.ancillary_with_rights",
    "SCM_RIGHTS and the sender's credential message in one sendmsg: what arrives, "
    "with and without the receiver's option",
    rows=["CRED-12"],
)
def test_with_rights(observe: Observer, pipe: Tuple[int, int]) -> None:
    mech = _mechanism()
    if mech.sender_cmsg is None:
        unavailable(f"{mech.name}: a sender attaches no credential message here")
    kind, payload = mech.sender_cmsg
    results = {}
    for receiver_option in (False, True):
        a, b = kind_pair("dgram")
        with a, b:
            if receiver_option:
                _enable(mech, b)
            control = [
                (_SOL, socket.SCM_RIGHTS, array.array("i", [pipe[0]])),
                (_SOL, kind, payload),
            ]
            sent = attempt(lambda a=a, control=control: a.sendmsg([b"x"], control))
            outcome: Dict[str, Any] = {"send": sent}
            if sent == "ok":
                _, ancdata, flags, _ = b.recvmsg(16, _ROOM)
                rights_payloads = [
                    data for level, k, data in ancdata if level == _SOL and k == socket.SCM_RIGHTS
                ]
                outcome["fds"] = sum(len(data) // 4 for data in rights_payloads)
                outcome["credentials"] = _who(_creds_pids(mech, ancdata))  # closes the fds
                outcome["ctrunc"] = bool(flags & socket.MSG_CTRUNC)
            results["with_option" if receiver_option else "without_option"] = outcome
    observe(results)


def _lsms() -> Optional[List[str]]:
    try:
        text = Path("/sys/kernel/security/lsm").read_text()
    except OSError:
        return None
    return [name for name in text.strip().split(",") if name]


def _peersec(sock: socket.socket) -> str:
    try:
        label = sock.getsockopt(_SOL, 31, 256)  # <asm-generic/socket.h> SO_PEERSEC
    except OSError as exc:
        return errno_name(exc)
    return "label" if label.rstrip(b"\0") else "empty"


@case(
    "os.creds.peersec_without_lsm",
    "SO_PEERSEC on each socket kind, and which LSMs this kernel runs",
    rows=["CRED-19"],
)
def test_peersec(observe: Observer) -> None:
    if not sys.platform.startswith("linux"):
        unavailable("SO_PEERSEC is Linux's")
    results: Dict[str, Any] = {"lsms": _lsms()}
    for kind in ("stream", "dgram", "seqpacket"):
        a, b = kind_pair(kind)
        with a, b:
            results[kind] = _peersec(a)
    with socket.socket(socket.AF_UNIX) as unconnected:
        results["unconnected"] = _peersec(unconnected)
    observe(results)
