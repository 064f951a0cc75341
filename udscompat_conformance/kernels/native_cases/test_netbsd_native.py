"""OS cases observed through NetBSD's own ABI (a rump kernel, ctypes over librumpclient).

Each case has the id, title and catalogue rows of the standard-library case
it mirrors (``udscompat_conformance/cases/``) and records its observation in
the same shape, so the two land in one matrix row.  The difference is the
path to the kernel: NetBSD constants, NetBSD struct layouts and NetBSD errno
names, with no Linux translation anywhere.  Extra keys are added where the
NetBSD kernel showed something the Linux-shaped observation cannot hold.

Every receive is non-blocking or bounded (``MSG_DONTWAIT``): a call blocked in
the rump kernel cannot be interrupted.
"""

from __future__ import annotations

import ctypes
import struct
from typing import Any, Dict, List, Optional

import pytest

from udscompat_conformance.kernels.netbsd_abi import RumpClient, RumpError, cmsg_space
from udscompat_conformance.plugin import Observer
from udscompat_conformance.support import largest

case = pytest.mark.case
_ROOM = cmsg_space(4 * 512)
_KINDS = ["stream", "dgram", "seqpacket"]


def kind(netbsd: RumpClient, name: str) -> int:
    return netbsd.h[
        {"stream": "SOCK_STREAM", "dgram": "SOCK_DGRAM", "seqpacket": "SOCK_SEQPACKET"}[name]
    ]


def pair(netbsd: RumpClient, name: str) -> List[int]:
    return list(netbsd.socketpair(kind(netbsd, name)))


def flag_names(netbsd: RumpClient, flags: int) -> List[str]:
    """The MSG_* names set in ``flags``, with NetBSD's values (same names as support.flag_names)."""
    return [
        n
        for n in ("MSG_TRUNC", "MSG_CTRUNC", "MSG_EOR", "MSG_OOB", "MSG_PEEK")
        if flags & netbsd.h[n]
    ]


def dontwait(netbsd: RumpClient) -> int:
    return netbsd.h["MSG_DONTWAIT"]


def recv_rights(netbsd: RumpClient, fd: int, size: int, room: int, flags: int = 0) -> Any:
    """Non-blocking recvmsg: (data, fds, msg_flags), or None when nothing is queued."""
    try:
        got = netbsd.recvmsg(fd, size, room, flags | dontwait(netbsd))
    except RumpError as exc:
        if exc.name == "EAGAIN":
            return None
        raise
    return got.data, netbsd.rights_in(got.cmsgs), got.flags


# --- SOCK_SEQPACKET -----------------------------------------------------------------------------


@case(
    "os.seqpacket.exists",
    "AF_UNIX SOCK_SEQPACKET: socket, socketpair, bind, listen, connect, accept",
    rows=["SEQ-01"],
)
def test_seqpacket_exists(observe: Observer, netbsd: RumpClient, rump_tmp: bytes) -> None:
    seq = netbsd.h["SOCK_SEQPACKET"]
    try:
        listener = netbsd.socket(seq)
    except RumpError as exc:
        observe(exc.name)
        return
    client = netbsd.socket(seq)
    try:
        netbsd.bind(listener, rump_tmp + b"/l")
        netbsd.listen(listener, 1)
        netbsd.connect(client, rump_tmp + b"/l")
        netbsd.close(netbsd.accept(listener))
        a, b = netbsd.socketpair(seq)
        netbsd.close(a, b)
    finally:
        netbsd.close(listener, client)
    observe("ok")


@case(
    "os.seqpacket.record_boundaries",
    "Two sends (no MSG_EOR) read with one large recv",
    rows=["SEQ-02", "SEQ-03"],
)
def test_seqpacket_record_boundaries(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "seqpacket")
    try:
        netbsd.send(a, b"first")
        netbsd.send(a, b"second")
        got = netbsd.recvmsg(b, 100, 0, dontwait(netbsd))
        observe({"first_recv": got.data.decode(), "flags": flag_names(netbsd, got.flags)})
    finally:
        netbsd.close(a, b)


@case(
    "os.seqpacket.eor_reported",
    "A send with MSG_EOR: is MSG_EOR reported on receipt?",
    rows=["SEQ-03"],
)
def test_seqpacket_eor_reported(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "seqpacket")
    try:
        netbsd.send(a, b"record", netbsd.h["MSG_EOR"])
        got = netbsd.recvmsg(b, 100, 0, dontwait(netbsd))
        observe(bool(got.flags & netbsd.h["MSG_EOR"]))
    finally:
        netbsd.close(a, b)


@case(
    "os.seqpacket.short_read",
    "A 100-byte message read into 10 bytes: flags, and what the next recv returns",
    rows=["SEQ-05", "SEQ-04"],
)
def test_seqpacket_short_read(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "seqpacket")
    eor = netbsd.h["MSG_EOR"]
    try:
        netbsd.send(a, b"x" * 100, eor)
        netbsd.send(a, b"next", eor)
        first = netbsd.recvmsg(b, 10, 0, dontwait(netbsd))
        following = netbsd.recvmsg(b, 200, 0, dontwait(netbsd)).data
        observe(
            {
                "first": len(first.data),
                "flags": flag_names(netbsd, first.flags),
                "rest": "discarded"
                if following == b"next"
                else f"{len(following)} bytes of the same record",
            }
        )
    finally:
        netbsd.close(a, b)


@case(
    "os.seqpacket.zero_length",
    "A zero-length message: send's count, what recv returns, and whether it differs from EOF",
    rows=["SEQ-07"],
)
def test_seqpacket_zero_length(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "seqpacket")
    try:
        sent = netbsd.send(a, b"")
        try:
            zero: Any = netbsd.recvmsg(b, 10, 0, dontwait(netbsd))
        except RumpError as exc:
            zero = exc.name
        netbsd.send(a, b"z")
        after = netbsd.recvmsg(b, 10, 0, dontwait(netbsd)).data
        netbsd.close(a)
        eof = netbsd.recvmsg(b, 10, 0, dontwait(netbsd))
        if isinstance(zero, str):
            observe(
                {
                    "send_returns": sent,
                    "recv": f"nothing queued ({zero}): the message was never delivered",
                    "next_message": after.decode(),
                    "eof_flags": flag_names(netbsd, eof.flags),
                    "distinguishable_by_flags": False,
                }
            )
            return
        observe(
            {
                "send_returns": sent,
                "recv_bytes": len(zero.data),
                "recv_flags": flag_names(netbsd, zero.flags),
                "eof_flags": flag_names(netbsd, eof.flags),
                "distinguishable_by_flags": zero.flags != eof.flags or zero.data != eof.data,
            }
        )
    finally:
        netbsd.close(a, b)


def _largest_message(netbsd: RumpClient, a: int, b: int) -> Dict[str, Any]:
    errors: Dict[str, str] = {}

    def works(n: int) -> bool:
        try:
            netbsd.send(a, b"\0" * n, dontwait(netbsd))
        except RumpError as exc:
            errors["beyond"] = exc.name
            return False
        netbsd.recv(b, n, dontwait(netbsd))
        return True

    return {"bytes": largest(works, 1, 1 << 24), "beyond": errors.get("beyond")}


@case(
    "os.seqpacket.max_message",
    "Largest seqpacket message with default buffers, and the error beyond it",
    rows=["SEQ-22"],
)
def test_seqpacket_max_message(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "seqpacket")
    try:
        observe(_largest_message(netbsd, a, b))
    finally:
        netbsd.close(a, b)


@case(
    "os.dgram.max_size",
    "Largest datagram with default buffers, and the error beyond it",
    rows=["DG-08"],
)
def test_dgram_max_size(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "dgram")
    try:
        observe(_largest_message(netbsd, a, b))
    finally:
        netbsd.close(a, b)


# --- descriptor passing -------------------------------------------------------------------------


@case(
    "os.fdpass.one_fd",
    "One pipe fd passed: the received fd is a new number for the same file",
    rows=["FD-01", "FD-02", "FD-34"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_fdpass_one_fd(
    observe: Observer, netbsd: RumpClient, rump_pipe: List[int], kind: str
) -> None:
    a, b = pair(netbsd, kind)
    try:
        try:
            netbsd.send_rights(a, b"x", [rump_pipe[0]])
        except RumpError as exc:
            observe(f"send fails: {exc.name}")
            return
        got = recv_rights(netbsd, b, 1, _ROOM)
        fds = got[1] if got else []
        try:
            observe(
                {
                    "received": len(fds),
                    "same_file": bool(fds) and netbsd.same_file(fds[0], rump_pipe[0]),
                    "new_number": bool(fds) and fds[0] != rump_pipe[0],
                }
            )
        finally:
            netbsd.close(*fds)
    finally:
        netbsd.close(a, b)


@case(
    "os.fdpass.several_cmsgs",
    "Two SCM_RIGHTS cmsgs in one sendmsg: how many fds arrive",
    rows=["FD-05"],
)
def test_fdpass_several_cmsgs(observe: Observer, netbsd: RumpClient, rump_pipe: List[int]) -> None:
    a, b = pair(netbsd, "stream")
    rights = (netbsd.h["SOL_SOCKET"], netbsd.h["SCM_RIGHTS"])
    try:
        try:
            netbsd.sendmsg(
                a,
                [b"x"],
                [
                    (*rights, struct.pack("=i", rump_pipe[0])),
                    (*rights, struct.pack("=i", rump_pipe[1])),
                ],
            )
        except RumpError as exc:
            observe(f"send fails: {exc.name}")
            return
        got = netbsd.recvmsg(b, 1, _ROOM, dontwait(netbsd))
        fds = netbsd.rights_in(got.cmsgs)
        netbsd.close(*fds)
        observe({"fds": len(fds), "cmsgs": len(got.cmsgs)})
    finally:
        netbsd.close(a, b)


def _fds_limit(netbsd: RumpClient, kind_name: str, fd: int, ceiling: int) -> Dict[str, Any]:
    """Largest count of fds one message carries on a fresh ``kind_name`` pair each try, and
    what happens beyond: an error from sendmsg, or a send that succeeds and delivers nothing."""
    beyond: Dict[str, str] = {}

    def works(n: int) -> bool:
        a, b = pair(netbsd, kind_name)
        # Non-blocking by O_NONBLOCK: NetBSD's sosend() ignores MSG_DONTWAIT (it tests only
        # SS_NBIO and MSG_NBIO), and a seqpacket message whose control fills the whole send
        # buffer waits for room that never comes.
        netbsd.set_nonblocking(a)
        try:
            try:
                netbsd.send_rights(a, b"x", [fd] * n)
            except RumpError as exc:
                beyond["beyond"] = f"sendmsg fails: {exc.name}"
                return False
            try:
                got = recv_rights(netbsd, b, 1, cmsg_space(4 * n))
            except RumpError as exc:
                beyond["beyond"] = f"sendmsg succeeds, recvmsg fails: {exc.name}"
                return False
            if got is None:
                beyond["beyond"] = "sendmsg succeeds, the message is silently dropped"
                return False
            netbsd.close(*got[1])
            if len(got[1]) != n:
                beyond["beyond"] = f"sendmsg succeeds, {len(got[1])} of {n} fds arrive"
                return False
            return True
        finally:
            netbsd.close(a, b)

    return {"fds": largest(works, 1, ceiling), "beyond": beyond.get("beyond")}


@case(
    "os.fdpass.max_per_message",
    "Most fds one sendmsg takes (bisection), and the error one more gives",
    rows=["FD-07", "FD-06"],
)
def test_fdpass_max_per_message(
    observe: Observer, netbsd: RumpClient, rump_pipe: List[int]
) -> None:
    soft, hard = netbsd.getrlimit_nofile()
    raised = min(hard, 8192)
    netbsd.setrlimit_nofile(raised, hard)
    try:
        dgram = _fds_limit(netbsd, "dgram", rump_pipe[0], 4096)
        observe(
            {
                **dgram,
                "stream": _fds_limit(netbsd, "stream", rump_pipe[0], 4096),
                "seqpacket": _fds_limit(netbsd, "seqpacket", rump_pipe[0], 1020),
                "rlimit_nofile": raised,
            }
        )
    finally:
        netbsd.setrlimit_nofile(soft, hard)


@case(
    "os.fdpass.control_too_small",
    "Four fds, control room for two: MSG_CTRUNC or an error; how many arrive",
    rows=["FD-09", "FD-13", "FD-31"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_fdpass_control_too_small(
    observe: Observer, netbsd: RumpClient, rump_pipe: List[int], kind: str
) -> None:
    a, b = pair(netbsd, kind)
    try:
        netbsd.send_rights(a, b"x", [rump_pipe[0], rump_pipe[1], rump_pipe[0], rump_pipe[1]])
        before = set(netbsd.open_count(256))
        try:
            got = recv_rights(netbsd, b, 1, cmsg_space(8))
        except RumpError as exc:
            observe({"recvmsg": exc.name})
            return
        appeared = set(netbsd.open_count(256)) - before
        netbsd.close(*(appeared | set(got[1])))
        observe(
            {
                "recvmsg": "ok",
                "flags": flag_names(netbsd, got[2]),
                "delivered": len(got[1]),
                "installed_but_unreported": len(appeared - set(got[1])),
            }
        )
    finally:
        netbsd.close(a, b)


@case(
    "os.fdpass.no_control_buffer",
    "Fds pending, recvmsg without a control buffer: flags; the fds are dropped",
    rows=["FD-10", "FD-11"],
)
def test_fdpass_no_control_buffer(
    observe: Observer, netbsd: RumpClient, rump_pipe: List[int]
) -> None:
    a, b = pair(netbsd, "stream")
    try:
        netbsd.send_rights(a, b"xy", [rump_pipe[0]])
        before = set(netbsd.open_count(256))
        got = netbsd.recvmsg(b, 1, 0, dontwait(netbsd))
        later = recv_rights(netbsd, b, 1, _ROOM)
        later_fds = later[1] if later else []
        appeared = set(netbsd.open_count(256)) - before
        netbsd.close(*(appeared | set(later_fds)))
        observe(
            {
                "flags": flag_names(netbsd, got.flags),
                "cmsgs": len(got.cmsgs),
                "fds_on_later_read": len(later_fds),
                "installed_but_unreported": len(appeared - set(later_fds)),
            }
        )
    finally:
        netbsd.close(a, b)


@case("os.fdpass.empty_rights", "An SCM_RIGHTS cmsg with zero fds", rows=["FD-15"])
def test_fdpass_empty_rights(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "stream")
    try:
        observe(netbsd.attempt(lambda: netbsd.send_rights(a, b"x", [])))
    finally:
        netbsd.close(a, b)


@case("os.fdpass.invalid_fd", "An invalid fd number in SCM_RIGHTS", rows=["FD-17"])
def test_fdpass_invalid_fd(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "stream")
    try:
        observe(netbsd.attempt(lambda: netbsd.send_rights(a, b"x", [2**31 - 1])))
    finally:
        netbsd.close(a, b)


@case(
    "os.fdpass.cloexec",
    "A received fd: FD_CLOEXEC by default, and with MSG_CMSG_CLOEXEC",
    rows=["FD-19"],
)
def test_fdpass_cloexec(observe: Observer, netbsd: RumpClient, rump_pipe: List[int]) -> None:
    a, b = pair(netbsd, "stream")
    try:
        netbsd.send_rights(a, b"x", [rump_pipe[0]])
        plain = recv_rights(netbsd, b, 1, _ROOM)[1]
        netbsd.send_rights(a, b"x", [rump_pipe[0]])
        try:
            flagged = recv_rights(netbsd, b, 1, _ROOM, netbsd.h["MSG_CMSG_CLOEXEC"])[1]
        except RumpError as exc:
            with_flag: Any = exc.name
            flagged = []
        else:
            with_flag = netbsd.cloexec(flagged[0])
        default = netbsd.cloexec(plain[0])
        netbsd.close(*plain, *flagged)
        observe(
            {
                "default_cloexec": default,
                "with_msg_cmsg_cloexec": with_flag,
                "msg_cmsg_cloexec_value": hex(netbsd.h["MSG_CMSG_CLOEXEC"]),
            }
        )
    finally:
        netbsd.close(a, b)


def _endpoint(netbsd: RumpClient, kind_name: str, directory: bytes) -> Any:
    """An fd of ``kind_name`` with data waiting (as support.endpoint), and a reader for it."""
    if kind_name == "pipe":
        r, w = netbsd.pipe()
        netbsd.write(w, b"pipe")
        netbsd.close(w)
        return r
    if kind_name == "file":
        path = directory + b"/f"
        fd = netbsd.call("open", path, netbsd.h["O_RDWR"] | netbsd.h["O_CREAT"], 0o600)
        netbsd.write(fd, b"file")
        netbsd.unlink(path)
        netbsd.call("lseek", fd, ctypes.c_int64(0), 0)  # SEEK_SET 0
        return fd
    x, y = pair(netbsd, "stream")
    netbsd.send(y, b"unix")
    netbsd.close(y)
    return x


def _provoke_unix_gc(netbsd: RumpClient, rounds: int = 20) -> None:
    """Close unix sockets with a socket in flight: runs NetBSD's unp_gc (as support does)."""
    for _ in range(rounds):
        x, y = pair(netbsd, "stream")
        netbsd.send_rights(x, b"x", [y])
        netbsd.close(x, y)


@case(
    "os.fdpass.close_after_send",
    "The sender closes the fd before the receiver takes it (GC provoked meanwhile)",
    rows=["FD-20", "FD-22"],
)
@pytest.mark.parametrize("kind", ["file", "pipe", "unix_socket"])
def test_fdpass_close_after_send(
    observe: Observer, netbsd: RumpClient, rump_tmp: bytes, kind: str
) -> None:
    fd = _endpoint(netbsd, kind, rump_tmp)
    a, b = pair(netbsd, "stream")
    try:
        netbsd.send_rights(a, b"x", [fd])
        netbsd.close(fd)
        _provoke_unix_gc(netbsd)
        got = recv_rights(netbsd, b, 1, _ROOM)
        fds = got[1] if got else []
        try:
            if not fds:
                observe("lost: no fd arrived")
                return
            data = (
                netbsd.read(fds[0], 10)
                if kind != "unix_socket"
                else netbsd.recv(fds[0], 10, dontwait(netbsd))
            )
            observe("works" if data else "arrived but empty")
        finally:
            netbsd.close(*fds)
    finally:
        netbsd.close(a, b)


@case(
    "os.fdpass.same_process_reuse",
    "A receive in the sending process: does it return the sender's own, still open, fd number?",
    rows=["FD-21"],
)
def test_fdpass_same_process_reuse(
    observe: Observer, netbsd: RumpClient, rump_pipe: List[int]
) -> None:
    a, b = pair(netbsd, "stream")
    try:
        netbsd.send_rights(a, b"x", [rump_pipe[0]])
        fds = recv_rights(netbsd, b, 1, _ROOM)[1]
        netbsd.close(*[fd for fd in fds if fd != rump_pipe[0]])
        observe(rump_pipe[0] in fds)
    finally:
        netbsd.close(a, b)


@case(
    "os.fdpass.peek",
    "MSG_PEEK on a message with an fd: fds on the peek, and on the read after it",
    rows=["FD-25"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_fdpass_peek(
    observe: Observer, netbsd: RumpClient, rump_pipe: List[int], kind: str
) -> None:
    a, b = pair(netbsd, kind)
    try:
        netbsd.send_rights(a, b"x", [rump_pipe[0]])
        before = set(netbsd.open_count(256))
        peeked = netbsd.recvmsg(b, 1, _ROOM, netbsd.h["MSG_PEEK"] | dontwait(netbsd))
        installed = set(netbsd.open_count(256)) - before
        read = recv_rights(netbsd, b, 1, _ROOM)
        read_fds = read[1] if read else []
        netbsd.close(*installed, *read_fds)
        rights = [c for c in peeked.cmsgs if c.kind == netbsd.h["SCM_RIGHTS"]]
        observe(
            {
                "on_peek": len(installed),
                "on_read": len(read_fds),
                "distinct_numbers": bool(installed and read_fds),
                # What the peeked SCM_RIGHTS held instead of descriptor numbers.
                "peek_payload_bytes": len(rights[0].payload) if rights else None,
            }
        )
    finally:
        netbsd.close(a, b)


# --- addresses ----------------------------------------------------------------------------------


def _bind_path_of_length(netbsd: RumpClient, directory: bytes, length: int) -> bool:
    """Does a stream socket bind (and read back) an absolute path of ``length`` bytes?"""
    path = directory + b"/" + b"p" * (length - len(directory) - 1)
    fd = netbsd.socket(kind(netbsd, "stream"))
    try:
        try:
            netbsd.bind(fd, path)
        except RumpError:
            return False
        try:
            return netbsd.sun_path(netbsd.getsockname(fd)) == path
        finally:
            netbsd.unlink(path)
    finally:
        netbsd.close(fd)


@case(
    "os.address.longest_path",
    "Longest pathname (bytes, no NUL) that binds and reads back",
    rows=["ADDR-03", "ADDR-06"],
)
def test_address_longest_path(observe: Observer, netbsd: RumpClient, rump_tmp: bytes) -> None:
    # sun_len is one byte: 255 bounds every sockaddr, so 253 path bytes at most.
    observe(largest(lambda n: _bind_path_of_length(netbsd, rump_tmp, n), len(rump_tmp) + 2, 300))


@case("os.address.abstract_supported", "bind() to a NUL-led (abstract) name", rows=["ADDR-17"])
def test_address_abstract_supported(observe: Observer, netbsd: RumpClient) -> None:
    fd = netbsd.socket(kind(netbsd, "stream"))
    try:
        observe(netbsd.attempt(lambda: netbsd.bind(fd, b"\0udsc-supported")))
    finally:
        netbsd.close(fd)


@case("os.address.autobind", "bind() with only the family (Linux autobind)", rows=["ADDR-12"])
def test_address_autobind(observe: Observer, netbsd: RumpClient) -> None:
    fd = netbsd.socket(kind(netbsd, "stream"))
    try:
        # sockaddr_un with sun_len 2: the family and no path at all.
        failure = netbsd.attempt(lambda: netbsd.bind_raw(fd, bytes([2, 1])))
        if failure != "ok":
            observe({"bind": failure})
            return
        observe({"bind": "ok", "name": netbsd.getsockname(fd).hex()})
    finally:
        netbsd.close(fd)


@case(
    "os.address.unbound_name",
    "getsockname() of a socketpair end, as Python returns it",
    rows=["ADDR-24"],
)
def test_address_unbound_name(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "stream")
    try:
        raw = netbsd.getsockname(a)
        observe(
            f"{len(raw)}-byte sockaddr: sun_len {raw[0]}, family {raw[1]}, "
            f"path {netbsd.sun_path(raw)!r}"
        )
    finally:
        netbsd.close(a, b)


# --- stream -------------------------------------------------------------------------------------


@case(
    "os.stream.listen_edges",
    "listen() unbound, again on a listener, and on a connected socket",
    rows=["STR-04", "STR-05", "STR-06"],
)
def test_stream_listen_edges(observe: Observer, netbsd: RumpClient, rump_tmp: bytes) -> None:
    stream = kind(netbsd, "stream")
    seen: Dict[str, str] = {}
    unbound = netbsd.socket(stream)
    seen["unbound"] = netbsd.attempt(lambda: netbsd.listen(unbound, 1))
    netbsd.close(unbound)
    listener = netbsd.socket(stream)
    try:
        netbsd.bind(listener, rump_tmp + b"/l")
        netbsd.listen(listener, 1)
        seen["again"] = netbsd.attempt(lambda: netbsd.listen(listener, 5))
        seen["backlog_0"] = netbsd.attempt(lambda: netbsd.listen(listener, 0))
        seen["backlog_-1"] = netbsd.attempt(lambda: netbsd.listen(listener, -1))
    finally:
        netbsd.close(listener)
    a, b = pair(netbsd, "stream")
    seen["connected"] = netbsd.attempt(lambda: netbsd.listen(a, 1))
    netbsd.close(a, b)
    observe(seen)


@case(
    "os.stream.buffer_sizes",
    "Default SO_SNDBUF/SO_RCVBUF per type, and SO_SNDBUF after setting 8192",
    rows=["STR-19"],
)
def test_stream_buffer_sizes(observe: Observer, netbsd: RumpClient) -> None:
    sol = netbsd.h["SOL_SOCKET"]
    seen: Dict[str, int] = {}
    for name in _KINDS:
        a, b = pair(netbsd, name)
        try:
            seen[f"{name}_sndbuf"] = netbsd.getsockopt_int(a, sol, netbsd.h["SO_SNDBUF"])
            seen[f"{name}_rcvbuf"] = netbsd.getsockopt_int(a, sol, netbsd.h["SO_RCVBUF"])
            netbsd.setsockopt_int(a, sol, netbsd.h["SO_SNDBUF"], 8192)
            seen[f"{name}_sndbuf_set_8192"] = netbsd.getsockopt_int(a, sol, netbsd.h["SO_SNDBUF"])
        finally:
            netbsd.close(a, b)
    observe(seen)


# --- credentials --------------------------------------------------------------------------------


def _peereid(netbsd: RumpClient, fd: int, size: int = 12) -> Dict[str, Optional[int]]:
    """getsockopt(0, LOCAL_PEEREID) as struct unpcbid {pid_t, uid_t, gid_t} (<sys/un.h>)."""
    raw = netbsd.getsockopt(fd, 0, netbsd.h["LOCAL_PEEREID"], size)
    if len(raw) < 12:
        return {"optlen": len(raw)}
    pid, uid, gid = struct.unpack("=iII", raw[:12])
    return {"pid": pid, "uid": uid, "gid": gid}


def _matches_self(netbsd: RumpClient, creds: Dict[str, Optional[int]]) -> Dict[str, Any]:
    # The rump kernel's view of this process: its pid and credentials there.
    uid = netbsd.call("geteuid")
    gid = netbsd.call("getegid")
    return {
        "pid": creds.get("pid") == netbsd.getpid(),
        "uid": creds.get("uid") == uid,
        "gid": creds.get("gid") == gid,
    }


@case(
    "os.creds.mechanism",
    "Which getsockopt gives peer credentials, and do they match this process",
    rows=["CRED-01", "CRED-07"],
)
def test_creds_mechanism(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "stream")
    try:
        observe(
            {
                "mechanism": "LOCAL_PEEREID",
                "matches_self": _matches_self(netbsd, _peereid(netbsd, a)),
                "repeat_same": _peereid(netbsd, a) == _peereid(netbsd, b),
                "level": 0,
                "option": netbsd.h["LOCAL_PEEREID"],
                "at_sol_socket": netbsd.attempt(
                    lambda: netbsd.getsockopt(
                        a, netbsd.h["SOL_SOCKET"], netbsd.h["LOCAL_PEEREID"], 12
                    )
                ),
                "optlen_with_8_byte_buffer": len(
                    netbsd.getsockopt(a, 0, netbsd.h["LOCAL_PEEREID"], 8)
                ),
            }
        )
    finally:
        netbsd.close(a, b)


@case(
    "os.creds.socketpair",
    "Peer credentials on a socketpair of each type",
    rows=["CRED-05", "CRED-06", "CRED-08"],
)
@pytest.mark.parametrize("kind", _KINDS)
def test_creds_socketpair(observe: Observer, netbsd: RumpClient, kind: str) -> None:
    a, b = pair(netbsd, kind)
    try:
        try:
            observe(_matches_self(netbsd, _peereid(netbsd, a)))
        except RumpError as exc:
            observe(exc.name)
    finally:
        netbsd.close(a, b)


@case(
    "os.creds.unconnected", "Peer credentials of a socket that is not connected", rows=["CRED-03"]
)
def test_creds_unconnected(observe: Observer, netbsd: RumpClient) -> None:
    fd = netbsd.socket(kind(netbsd, "stream"))
    try:
        try:
            creds = _peereid(netbsd, fd)
        except RumpError as exc:
            observe(exc.name)
            return
        observe({"no_error": creds})
    finally:
        netbsd.close(fd)


@case(
    "os.creds.local_creds_bsd",
    "LOCAL_CREDS (FreeBSD, NetBSD): the receiver's first message carries the sender's sockcred",
    rows=["CRED-17"],
)
def test_creds_local_creds(observe: Observer, netbsd: RumpClient) -> None:
    a, b = pair(netbsd, "stream")
    scm_creds = netbsd.h["SCM_CREDS"]
    try:
        option = netbsd.attempt(lambda: netbsd.setsockopt_int(b, 0, netbsd.h["LOCAL_CREDS"], 1))
        if option != "ok":
            observe({"setsockopt": option})
            return
        netbsd.send(a, b"x")
        first = netbsd.recvmsg(b, 1, 1024, dontwait(netbsd))
        netbsd.send(a, b"y")
        second = netbsd.recvmsg(b, 1, 1024, dontwait(netbsd))
        creds = [c for c in first.cmsgs if c.kind == scm_creds]
        observe(
            {
                "setsockopt": "ok",
                "scm_creds_arrived": bool(creds),
                "on_second_message": any(c.kind == scm_creds for c in second.cmsgs),
                # struct sockcred {pid_t sc_pid; uid_t sc_uid, sc_euid; gid_t sc_gid, sc_egid;
                # int sc_ngroups; gid_t sc_groups[1];} (<sys/socket.h> rev 1.119)
                "sockcred_pid_is_sender": bool(creds)
                and struct.unpack_from("=i", creds[0].payload)[0] == netbsd.getpid(),
                "local_creds": netbsd.h["LOCAL_CREDS"],
                "scm_creds": hex(scm_creds),
            }
        )
    finally:
        netbsd.close(a, b)
