"""The shim's NetBSD backend and probes against a real NetBSD kernel (a rump kernel).

Heavy tier ``rump`` (``tox -e rump``): builds the rump kernel first when the
vendored sources are there (cached by the hash of its inputs), else uses a
build already in the cache, else skips saying why.  Every server is started
and stopped by PID by ``RumpServer``.

The backend's constants and layouts are checked against two independent
sources: the NetBSD headers of the tree the kernel was built from, and the
bytes and flags the running kernel hands back.
"""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Iterator

import pytest

from udscompat._os import cmsg_len, cmsg_space, linux, netbsd
from udscompat_conformance.kernels import columns, rumpbuild
from udscompat_conformance.kernels.netbsd_abi import NetBSDHeaders
from udscompat_conformance.kernels.rump import RumpServer
from udscompat_conformance.support import LOCAL_CREDS_OPTIONS

pytestmark = [pytest.mark.tier("rump"), pytest.mark.timeout(3600)]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def build() -> rumpbuild.Build:
    """The rump kernel: built (or found in the cache) from the vendored sources."""
    try:
        return columns.ensure_build()
    except columns.KernelError as exc:
        pytest.skip(f"no NetBSD rump kernel: {exc}")


@pytest.fixture(scope="module")
def server(
    build: rumpbuild.Build, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RumpServer]:
    with RumpServer(build, tmp_path_factory.mktemp("rump")) as running:
        yield running


def _in_client(server: RumpServer, code: str, timeout: float = 60) -> object:
    """Run ``code`` in a fresh process holding a RumpClient ``c`` (librumpclient allows one
    connection per process, and a blocked rump call cannot be interrupted: hence a process
    with a hard timeout).  ``code`` leaves its answer in ``out``."""
    program = (
        "import json, struct\n"
        "from pathlib import Path\n"
        "from udscompat_conformance.kernels.netbsd_abi import RumpClient, RumpError\n"
        f"c = RumpClient(Path({str(server.build.libdir)!r}), Path({str(server.build.headers)!r}), "
        f"{server.url!r})\n"
        "h = c.h\n" + code + "\nprint(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_server_is_started_and_stopped_by_pid(build: rumpbuild.Build, tmp_path: Path) -> None:
    server = RumpServer(build, tmp_path)
    server.start()
    pid = server.pid
    assert pid is not None and server.socket_path.exists()
    os.kill(pid, 0)
    server.stop()
    assert not server.socket_path.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # reaped: no zombie either


def test_patches_apply_to_the_pinned_tree(tmp_path: Path) -> None:
    vendor = rumpbuild.vendor_dir()
    if vendor is None:
        pytest.skip("the vendored src-netbsd tarball is not here (UDSCOMPAT_VENDOR_DIR)")
    touched = {
        re.search(r"^--- a/(\S+)", p.read_text(), re.M).group(1)  # type: ignore[union-attr]
        for p in rumpbuild.patch_files()
    }
    with tarfile.open(vendor / rumpbuild.SRC_NETBSD.filename) as archive:
        for name in touched:
            member = archive.getmember(f"src-netbsd/{name}")
            member.name = name
            archive.extract(member, tmp_path)
    for patch in rumpbuild.patch_files():
        subprocess.run(
            ["patch", "-p1", "--forward", "--batch", "-i", str(patch)],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )
    for name in touched:
        assert "udscompat" in (tmp_path / name).read_text()


# --- the backend's constants against NetBSD's headers -----------------------------------------


def test_backend_constants_match_the_headers(build: rumpbuild.Build) -> None:
    h = NetBSDHeaders(build.headers)
    for name in (
        "SOL_SOCKET",
        "SCM_RIGHTS",
        "SOCK_STREAM",
        "SOCK_DGRAM",
        "SOCK_SEQPACKET",
        "MSG_EOR",
        "MSG_TRUNC",
        "MSG_CTRUNC",
        "MSG_CMSG_CLOEXEC",
    ):
        assert getattr(netbsd, name) == h[name], name
    assert h["LOCAL_PEEREID"] == netbsd.LOCAL_PEEREID
    assert h["LOCAL_CREDS"] == netbsd.LOCAL_CREDS
    assert h["SCM_CREDS"] == netbsd.SCM_CREDS
    assert LOCAL_CREDS_OPTIONS["netbsd"] == (h["LOCAL_CREDS"], h["SCM_CREDS"])


# --- ... and against the running kernel ----------------------------------------------------------


def test_peereid_bytes_from_the_kernel_decode(server: RumpServer) -> None:
    got = _in_client(
        server,
        "a, b = c.socketpair(h['SOCK_STREAM'])\n"
        f"raw = c.getsockopt(a, 0, {netbsd.LOCAL_PEEREID}, {netbsd.UNPCBID.size})\n"
        "out = {'raw': raw.hex(), 'pid': c.getpid(), 'uid': c.call('geteuid'),"
        " 'gid': c.call('getegid'),"
        f" 'dgram': c.attempt(lambda: c.getsockopt(*c.socketpair(h['SOCK_DGRAM'])[:1], 0,"
        f" {netbsd.LOCAL_PEEREID}, 12)),"
        f" 'sol_socket': c.attempt(lambda: c.getsockopt(a, h['SOL_SOCKET'],"
        f" {netbsd.LOCAL_PEEREID}, 12))}}",
    )
    assert isinstance(got, dict)
    creds = netbsd.decode_peercred(bytes.fromhex(got["raw"]))
    assert (creds.pid, creds.euid, creds.egid) == (got["pid"], got["uid"], got["gid"])
    assert creds.groups is None
    # The level really is 0 and the option refuses other socket types, as the backend says.
    assert got["sol_socket"] == "ENOPROTOOPT"
    assert got["dgram"] == "EINVAL"


def test_cmsg_layout_and_flags_from_the_kernel(server: RumpServer) -> None:
    got = _in_client(
        server,
        "a, b = c.socketpair(h['SOCK_SEQPACKET'])\n"
        "r, w = c.pipe()\n"
        "c.send_rights(a, b'x' * 8, [r, w], h['MSG_EOR'])\n"
        "full = c.recvmsg(b, 64, 64, h['MSG_DONTWAIT'] | h['MSG_CMSG_CLOEXEC'])\n"
        "c.send_rights(a, b'y' * 8, [r, w, r])\n"
        "short = c.recvmsg(b, 4, 20, h['MSG_DONTWAIT'])\n"
        "fds = c.rights_in(full.cmsgs)\n"
        "out = {'control': full.control.hex(), 'flags': full.flags, 'short_flags': short.flags,"
        " 'short_control': len(short.control), 'cloexec': [c.cloexec(f) for f in fds],"
        " 'so_type': c.getsockopt_int(a, h['SOL_SOCKET'], h['SO_TYPE'])}",
    )
    assert isinstance(got, dict)
    control = bytes.fromhex(got["control"])
    length, level, kind = struct.unpack_from("=Iii", control)
    # cmsg_len = CMSG_LEN(8) computed with the backend's header size and alignment.
    assert length == cmsg_len(8, netbsd.CMSGHDR_SIZE, netbsd.CMSG_ALIGNMENT) == 24
    assert len(control) == cmsg_space(8, netbsd.CMSGHDR_SIZE, netbsd.CMSG_ALIGNMENT)
    assert (level, kind) == (netbsd.SOL_SOCKET, netbsd.SCM_RIGHTS)
    assert got["so_type"] == netbsd.SOCK_SEQPACKET
    assert got["flags"] & netbsd.MSG_EOR and not got["flags"] & netbsd.MSG_TRUNC
    # Data and control both too short: the kernel reports them with the backend's bits.
    assert got["short_flags"] & netbsd.MSG_TRUNC
    assert got["short_flags"] & netbsd.MSG_CTRUNC
    assert got["cloexec"] == [True, True]  # MSG_CMSG_CLOEXEC (0x800) honoured


def test_max_fds_per_message_is_what_arrives(server: RumpServer) -> None:
    """509 fds arrive; 510 are accepted by sendmsg and silently dropped (default buffers)."""
    limit = netbsd.MAX_FDS_PER_MESSAGE
    assert limit is not None
    got = _in_client(
        server,
        "c.setrlimit_nofile(4096, 4096)\n"
        "r, w = c.pipe()\n"
        "out = {}\n"
        "for kind in ('SOCK_STREAM', 'SOCK_SEQPACKET'):\n"
        f"    for n in ({limit}, {limit + 1}):\n"
        "        a, b = c.socketpair(h[kind])\n"
        "        sent = c.send_rights(a, b'x', [r] * n)\n"
        "        try:\n"
        "            fds = c.rights_in(c.recvmsg(b, 1, 8192, h['MSG_DONTWAIT']).cmsgs)\n"
        "        except RumpError as exc:\n"
        "            fds = exc.name\n"
        "        out[f'{kind} {n}'] = [sent, fds if isinstance(fds, str) else len(fds)]\n"
        "        c.close(*([] if isinstance(fds, str) else fds), a, b)\n",
    )
    assert got == {
        f"SOCK_STREAM {limit}": [1, limit],
        f"SOCK_STREAM {limit + 1}": [1, "EAGAIN"],
        f"SOCK_SEQPACKET {limit}": [1, limit],
        f"SOCK_SEQPACKET {limit + 1}": [1, "EAGAIN"],
    }


# --- the probes and capabilities() on the NetBSD kernel, through its Linux ABI -------------


@pytest.fixture(scope="module")
def linux_server(
    build: rumpbuild.Build, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RumpServer]:
    hidden = columns.hidden_from_hijacked_children()
    if hidden:  # e.g. a clone in /tmp: its children would look for it in the rump kernel
        pytest.skip(f"hijacked children see /tmp in the rump kernel: {', '.join(hidden)}")
    with RumpServer(build, tmp_path_factory.mktemp("rumplx"), linux_abi=True) as running:
        yield running


def _hijacked(
    server: RumpServer, code: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    libdir = server.build.libdir
    env = dict(
        os.environ,
        LD_LIBRARY_PATH=str(libdir),
        LD_PRELOAD=str(libdir / "librumphijack.so"),
        RUMP_SERVER=server.url,
        RUMPHIJACK=columns.RUMPHIJACK,
        RUMPHIJACK_UDSC_PIPES="1",
        RUMPHIJACK_UDSC_NOFILE="1024",
    )
    preamble = "from udscompat_conformance.kernels.child import prepare\nprepare()\n"
    return subprocess.run(
        [sys.executable, "-c", preamble + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_capabilities_never_block_and_auto_is_emulated(linux_server: RumpServer) -> None:
    """On NetBSD a zero-length seqpacket message is never delivered and a message of 510
    fds vanishes after a successful sendmsg: the probes must neither hang on either nor
    let ``auto`` pick the native type."""
    proc = _hijacked(
        linux_server,
        "import json, time, udscompat\n"
        "from udscompat import _seqpacket\n"
        "t = time.monotonic()\n"
        "caps = udscompat.capabilities().as_dict()\n"
        "caps['seconds'] = time.monotonic() - t\n"
        "caps['auto'] = _seqpacket.resolve_implementation('auto')\n"
        "print(json.dumps(caps))\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    caps = json.loads(proc.stdout.splitlines()[-1])
    assert caps["seconds"] < 30
    assert caps["features"]["seqpacket"]["status"] == "emulated"
    assert "never delivers a zero-length message" in caps["features"]["seqpacket"]["detail"]
    assert caps["quirks"]["seqpacket_zero_length"] == "not-delivered"
    assert caps["auto"] == "emulated"
    # The largest count that arrives whole on every socket type (not what sendmsg accepts),
    # and no more than the backend in use passes: through compat_linux, the Linux backend's
    # 253 on a kernel that carries 509 (it reported 509 while send_fds refused 254).
    assert caps["quirks"]["max_fds_per_message"] <= netbsd.MAX_FDS_PER_MESSAGE
    assert caps["quirks"]["max_fds_per_message"] == linux.MAX_FDS_PER_MESSAGE
    # A path limit, or why there is none (udscompat's bind cannot bind through the hijack).
    quirks = caps["quirks"]
    assert quirks["max_path_bytes"] is not None or "max_path_bytes" in quirks["undecided"]


def test_native_column_matches_the_committed_one(tmp_path: Path) -> None:
    """The CI check: the native-ABI NetBSD column, run now, shows what report/results holds."""
    committed = [
        p
        for p in sorted((ROOT / "report" / "results").glob("*.json"))
        if json.loads(p.read_text()).get("run", {}).get("kernel") == "netbsd-rump"
    ]
    assert len(committed) == 1, "exactly one committed native-ABI NetBSD column"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "udscompat_conformance",
            "run",
            "--kernel",
            "netbsd-rump",
            "--out",
            str(tmp_path / "now.json"),
            "--check",
            str(committed[0]),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "same outcomes and values" in proc.stdout


def test_no_stream_message_vanishes_for_its_descriptors(linux_server: RumpServer) -> None:
    """NetBSD drops a stream message whose descriptors (8 bytes each in the kernel, 4 in the
    sender's control data) no longer fit the receiver's buffer, data and all, while sendmsg
    reports success.  Through the shim every byte it says it sent arrives, with the fds."""
    proc = _hijacked(
        linux_server,
        "import json, os, socket, udscompat\n"
        "from udscompat import _probes\n"
        "a, b = socket.socketpair()\n"
        "r, w = os.pipe()\n"
        "a.send(b'q' * 1000)\n"  # unread: the receiver has 3096 bytes of room left
        "a.setblocking(False)\n"  # so the send returns what fitted instead of waiting for a reader
        "sent = udscompat.send_fds(a, b'D' * 2048, [r] * 200)\n"
        "b.setblocking(False)\n"
        "got, fds = b'', []\n"
        "while True:\n"
        "    try:\n"
        "        data, more, _, _ = udscompat.recv_fds(b, 65536, 256)\n"
        "    except BlockingIOError:\n"
        "        break\n"
        "    got += data\n"
        "    fds += more\n"
        "print(json.dumps({'padding': _probes.fd_control_padding(), 'sent': sent,"
        " 'received': len(got), 'fds': len(fds)}))\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen["padding"] is True
    assert 0 < seen["sent"] <= 2048
    assert (seen["received"], seen["fds"]) == (1000 + seen["sent"], 200)


def test_a_peek_never_hands_out_kernel_pointers_as_descriptors(linux_server: RumpServer) -> None:
    """NetBSD's MSG_PEEK copies out its file pointers where the fds would be: the shim must not
    read them as descriptor numbers (closing whatever they name), and must return none."""
    proc = _hijacked(
        linux_server,
        "import json, os, socket, udscompat\n"
        "from udscompat import _probes\n"
        "a, b = socket.socketpair()\n"
        "r, w = os.pipe()\n"
        "udscompat.send_fds(a, b'x', [r])\n"
        "_, peeked, _, _ = udscompat.recv_fds(b, 1, 4, socket.MSG_PEEK)\n"
        "_, read, _, _ = udscompat.recv_fds(b, 1, 4)\n"
        "print(json.dumps({'installs': _probes.peek_installs_fds(), 'peeked': peeked,"
        " 'read': len(read)}))\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.splitlines()[-1])
    assert seen == {"installs": False, "peeked": [], "read": 1}


def test_options_compat_linux_does_not_map_are_unsupported(linux_server: RumpServer) -> None:
    """compat_linux answers EINVAL for SO_PASSCRED and SO_PEERSEC (linux_to_bsd_so_sockopt
    maps neither): udscompat says UnsupportedError naming the option, not a bare EINVAL."""
    proc = _hijacked(
        linux_server,
        "import json, socket, udscompat\n"
        "a, b = socket.socketpair(socket.AF_UNIX)\n"
        "out = {}\n"
        "for name, call in (('pass_credentials', lambda: udscompat.pass_credentials(b)),\n"
        "                   ('peer_security_label', lambda: udscompat.peer_security_label(a)),\n"
        "                   ('send_credentials', udscompat.send_credentials)):\n"
        "    try:\n"
        "        out[name] = ['returned', repr(call())]\n"
        "    except OSError as exc:\n"
        "        out[name] = [type(exc).__name__, str(exc)]\n"
        "print(json.dumps(out))\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["pass_credentials"][0] == "UnsupportedError", out
    assert "SO_PASSCRED" in out["pass_credentials"][1]
    assert out["peer_security_label"][0] == "UnsupportedError", out
    assert "SO_PEERSEC" in out["peer_security_label"][1]
    assert out["send_credentials"][0] == "UnsupportedError", out
    assert "SO_PASSCRED" in out["send_credentials"][1]


def test_a_wrapped_socket_works_through_compat_linux(linux_server: RumpServer) -> None:
    """compat_linux answers SO_PROTOCOL with EINVAL; udscompat's free functions given an
    object whose fileno() is a socket's wrapped it with socket(fileno=), which asks it."""
    proc = _hijacked(
        linux_server,
        "import json, os, socket, udscompat\n"
        "class Wrapper:\n"
        "    def __init__(self, sock): self.sock = sock\n"
        "    def fileno(self): return self.sock.fileno()\n"
        "a, b = socket.socketpair(socket.AF_UNIX)\n"
        "r, w = os.pipe()\n"
        "udscompat.send_fds(Wrapper(a), b'x', [r])\n"
        "data, fds, _, _ = udscompat.recv_fds(Wrapper(b), 1, 1)\n"
        "print(json.dumps([data.decode(), len(fds)]))\n",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == ["x", 1]
