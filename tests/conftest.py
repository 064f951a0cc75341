"""Shared fixtures: an fd-leak check around every test, peers in other processes."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator, Set, Tuple

import pytest

from udscompat import _probes

# Probes are cached per process; run them before any test counts descriptors.
_probes.cmsg_cloexec_flag()
_probes.same_process_fd_reuse()
_probes.seqpacket()
_probes.abstract_addresses()


def open_fds() -> Set[int]:
    return _probes.open_fds()


@pytest.fixture(autouse=True)
def no_fd_leak() -> Iterator[None]:
    """Fail a test that leaves a descriptor open (or closes one it did not open)."""
    before = open_fds()
    yield
    after = open_fds()
    deadline = time.monotonic() + 2.0
    while after != before and time.monotonic() < deadline:
        # Give finalizers of sockets dropped by the test a chance to run.
        import gc

        gc.collect()
        time.sleep(0.01)
        after = open_fds()
    leaked = after - before
    lost = before - after
    assert not leaked, f"test leaked descriptors {sorted(leaked)}: {_describe(leaked)}"
    assert not lost, f"test closed descriptors it did not open: {sorted(lost)}"


def _describe(fds: Set[int]) -> str:
    out = []
    for fd in sorted(fds):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/self/fd/{fd}')}")
        except OSError:
            out.append(str(fd))
    return ", ".join(out)


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short, world-accessible temporary directory (socket paths must stay short)."""
    path = Path(tempfile.mkdtemp(prefix="udsc-", dir="/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def python_peer(code: str, *args: str, user: int | None = None) -> subprocess.Popen[bytes]:
    """Start ``code`` in a second Python process (optionally as another user)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parent.parent), *sys.path])
    kwargs = {}
    if user is not None:
        kwargs = {"user": user, "group": user, "extra_groups": []}
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        **kwargs,  # type: ignore[arg-type]
    )


@pytest.fixture
def hold_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Set UDSCOMPAT_HOLD_SENT_FDS through the returned monkeypatch; the policy is re-read."""
    from udscompat import _fdpass

    _fdpass.hold_sent_fds.cache_clear()
    yield monkeypatch
    monkeypatch.delenv("UDSCOMPAT_HOLD_SENT_FDS", raising=False)
    _fdpass.hold_sent_fds.cache_clear()


@pytest.fixture
def pipe() -> Iterator[Tuple[int, int]]:
    """A pipe (read end, write end), closed afterwards unless the test closed it."""
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        with contextlib.suppress(OSError):
            os.close(fd)


def apt_install(packages: list[str], *, recommends: bool = False) -> None:
    """Install the Debian packages a test needs, or skip the test saying why not.

    Only as root with apt-get.  The package lists are refreshed once if the
    first attempt fails (a fresh machine may have none).
    """
    wanted = " ".join(packages)
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip(f"needs {wanted}, and this is not root with apt-get to install it")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    options = [] if recommends else ["--no-install-recommends"]
    command = ["apt-get", "install", "-y", "-q", *options, *packages]

    def install() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)

    proc = install()
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, timeout=900)
        proc = install()
    if proc.returncode != 0:
        pytest.skip(f"could not install {wanted}: {(proc.stdout + proc.stderr)[-500:]}")


def same_file(fd1: int, fd2: int) -> bool:
    """Do two descriptors refer to the same file (device and inode)?"""
    s1, s2 = os.fstat(fd1), os.fstat(fd2)
    return (s1.st_dev, s1.st_ino) == (s2.st_dev, s2.st_ino)
