"""capabilities() and ``python -m udscompat``: values measured here, printed readably."""

from __future__ import annotations

import json
import subprocess
import sys

import udscompat


def test_linux_capabilities_are_measured_values() -> None:
    caps = udscompat.capabilities()
    assert caps.os_name == "Linux"
    assert caps.features["abstract_addresses"].status == "native"
    assert caps.features["seqpacket"].status == "native"
    assert caps.features["peer_credentials"].detail == "reports pid, euid, egid, groups"
    assert caps.quirks["max_fds_per_message"] == 253
    assert caps.quirks["max_path_bytes"] == 107
    assert caps.quirks["msg_cmsg_cloexec"] is True
    assert caps.quirks["ctrunc"] == "excess-closed"
    assert caps.quirks["seqpacket_zero_length"] == "distinct"
    assert caps.quirks["seqpacket_short_read"] == "discard"
    assert caps.quirks["same_process_fd_reuse"] is False
    assert udscompat.capabilities() is caps  # probed once per process


def test_main_prints_table_and_json() -> None:
    table = subprocess.run(
        [sys.executable, "-m", "udscompat"], capture_output=True, text=True, check=True
    )
    assert "max_fds_per_message    253" in table.stdout
    assert table.stdout.startswith("udscompat on Linux")
    data = json.loads(
        subprocess.run(
            [sys.executable, "-m", "udscompat", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert data["quirks"]["max_path_bytes"] == 107
    assert data["features"]["seqpacket"]["status"] == "native"
