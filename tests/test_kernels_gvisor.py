"""gVisor (``runsc``) as a column: heavy tier ``rump`` (``tox -e rump``).

As root, installs Debian's ``runsc`` when it is missing; skips, saying why,
where it cannot (not root, no apt-get).  One case through ``runsc do`` shows
the column's plumbing and labelling; the whole column is
``udscompat-conformance run --kernel gvisor``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import apt_install

pytestmark = [pytest.mark.tier("rump"), pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def runsc() -> str:
    if os.geteuid() != 0:
        pytest.skip("runsc do needs root")
    if shutil.which("runsc") is None:
        apt_install(["runsc"])
    found = shutil.which("runsc")
    if found is None:
        pytest.skip("runsc is not installed and could not be")
    return found


def test_a_case_under_runsc_makes_a_labelled_column(runsc: str, tmp_path: Path) -> None:
    out = tmp_path / "gvisor.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "udscompat_conformance",
            "run",
            "--kernel",
            "gvisor",
            "--out",
            str(out),
            "--",
            "-k",
            "seqpacket and exists",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["run"]["kernel"] == "gvisor"
    assert result["host"]["kernel"].startswith("gVisor (runsc version")
    assert result["host"]["gvisor"]["platform"] == "ptrace"
    # The sandbox reports its own Linux release, not the host's.
    assert result["host"]["release"] != os.uname().release
    assert [c["id"] for c in result["cases"]] == ["os.seqpacket.exists"]
