"""Package tier: the optional accelerator never fails an install (``tox -e package``).

A source build where no C compiler works goes on without ``udscompat._speedups``
and says so in ``pip -v``'s output; a build that requires it fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

pytestmark = pytest.mark.tier("package")

ROOT = Path(__file__).resolve().parent.parent
NOTE = "the optional C accelerator (udscompat._speedups) was not built"


def _tracked_copy(target: Path) -> Path:
    """The tracked tree alone, so no build output of the checkout is reused."""
    files = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = ROOT / os.fsdecode(name)
        if source.is_file():
            (target / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            (target / os.fsdecode(name)).write_bytes(source.read_bytes())
    return target


def _pip_install(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    source = _tracked_copy(tmp_path / "src")
    return subprocess.run(
        [str(home / "bin" / "python"), "-m", "pip", "install", "-v", "--no-deps", str(source)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_pip_install_without_a_compiler_falls_back_with_a_note(tmp_path: Path) -> None:
    proc = _pip_install(tmp_path, CC="/nonexistent/cc", UDSCOMPAT_BUILD_SPEEDUPS="")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert NOTE in proc.stdout + proc.stderr
    check = subprocess.run(
        [
            str(tmp_path / "venv" / "bin" / "python"),
            "-c",
            "from udscompat import _accel; print(_accel.IMPLEMENTATION)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.stdout.split() == ["pure-python"], check.stderr


def test_a_required_build_without_a_compiler_fails(tmp_path: Path) -> None:
    proc = _pip_install(tmp_path, CC="/nonexistent/cc", UDSCOMPAT_BUILD_SPEEDUPS="required")
    assert proc.returncode != 0
    assert sys.executable  # the checkout's interpreter was not touched
