"""capabilities() and ``python -m udscompat``: values measured here, printed readably.

Expected values come from the probes and the backend of the running kernel; Linux's own
numbers are pinned separately (``only_on``).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys

import pytest

import udscompat
from tests.conftest import only_on
from udscompat import _probes
from udscompat._platform import backend


def test_capabilities_are_the_probes_of_this_kernel() -> None:
    caps = udscompat.capabilities()
    assert (caps.os_name, caps.os_release) == (backend.OS_NAME, platform.release())
    abstract = caps.features["abstract_addresses"].status
    assert abstract == ("native" if _probes.abstract_addresses()[0] else "unavailable")
    seqpacket = caps.features["seqpacket"].status
    assert seqpacket == ("native" if _probes.seqpacket().conformant else "emulated")
    assert caps.features["fd_passing"].status == "native"
    assert caps.features["peer_credentials"].status == "native"
    assert "euid, egid" in caps.features["peer_credentials"].detail
    measured, cap = _probes.max_fds_per_message(), backend.MAX_FDS_PER_MESSAGE
    expected = measured if measured is None or cap is None else min(measured, cap)
    assert caps.quirks["max_fds_per_message"] == expected
    assert caps.quirks["max_path_bytes"] == backend.MAX_PATH_BYTES
    assert caps.quirks["msg_cmsg_cloexec"] is (_probes.cmsg_cloexec_flag() is not None)
    assert caps.quirks["ctrunc"] == _probes.ctrunc_behaviour()
    assert caps.quirks["same_process_fd_reuse"] is _probes.same_process_fd_reuse()
    assert udscompat.capabilities() is caps  # probed once per process


@only_on("Linux", "the values of Linux's af_unix.c and scm.h")
def test_linux_capabilities_are_linuxs_values() -> None:
    caps = udscompat.capabilities()
    assert caps.features["abstract_addresses"].status == "native"
    assert caps.features["seqpacket"].status == "native"
    assert caps.features["peer_credentials"].detail == "reports pid, euid, egid, groups"
    assert caps.quirks["max_fds_per_message"] == 253
    assert caps.quirks["max_path_bytes"] == 108  # all of sun_path, through /proc/self/fd
    assert caps.quirks["msg_cmsg_cloexec"] is True
    assert caps.quirks["ctrunc"] == "excess-closed"
    assert caps.quirks["seqpacket_zero_length"] == "distinct"
    assert caps.quirks["seqpacket_short_read"] == "discard"
    assert caps.quirks["same_process_fd_reuse"] is False


def test_main_prints_table_and_json() -> None:
    caps = udscompat.capabilities()
    table = subprocess.run(
        [sys.executable, "-m", "udscompat"], capture_output=True, text=True, check=True
    )
    assert f"max_fds_per_message    {caps.quirks['max_fds_per_message']}" in table.stdout
    assert table.stdout.startswith(f"udscompat on {backend.OS_NAME}")
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "udscompat", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert data["quirks"]["max_path_bytes"] == backend.MAX_PATH_BYTES
    assert data["features"]["seqpacket"]["status"] == caps.features["seqpacket"].status


_NO_PROCESSES = """
import sys

def refuse(event, args):
    if event in ("subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.exec",
                 "os.system", "os.spawn", "pty.spawn"):
        raise RuntimeError(f"a library probe started a process: {event} {args!r:.200}")

sys.addaudithook(refuse)
import udscompat
caps = udscompat.capabilities()
print(sorted(caps.quirks))
"""


def test_capabilities_start_no_process() -> None:
    """No probe forks or executes anything: under an embedded interpreter sys.executable is
    the host (or empty), a seccomp'd daemon may forbid exec, a forked child of a threaded
    program may deadlock, and under a Linux-ABI hijack (NetBSD's librumphijack) a child
    broke the caller's stdout and stderr.  An audit hook refuses every process start."""
    proc = subprocess.run(
        [sys.executable, "-c", _NO_PROCESSES], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max_fds_per_message" in proc.stdout


def test_capabilities_never_promise_more_descriptors_than_the_backend_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Linux-ABI kernel may carry more descriptors per message than the Linux backend
    sends or makes room for (NetBSD's compat_linux: 509 against 253), and capabilities()
    reported the kernel's 509 while send_fds refused 254.  A STAND-IN for such a kernel:
    the backend's cap lowered below what this kernel carries."""
    from udscompat import _capabilities

    measured = _probes.max_fds_per_message()
    if measured is None or measured < 3:
        pytest.skip(f"this kernel's limit could not be measured: {_probes.undecided()}")
    monkeypatch.setattr(backend, "MAX_FDS_PER_MESSAGE", measured - 1)
    assert _capabilities._fds_per_message() == measured - 1
