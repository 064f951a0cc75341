"""Shared fixtures: an fd-leak check around every test, peers in other processes; the tiers.

Tiers: a plain ``pytest`` (``tox -e tests``) runs the portable tier, which must
pass on every OS udscompat supports, as root or not, touching nothing outside
temporary directories.  Tests that install packages, create users or start
daemons carry ``pytest.mark.tier(NAME)`` and run only under ``--tier NAME``
(each tier is a tox environment of the same name; see README, "Tests").
Expected values come from the running kernel (``backend``, ``socket``,
``_probes``) or are gated with ``only_on``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, List, Set, Tuple

import pytest

from udscompat import _probes
from udscompat._platform import backend


def _enough_descriptors(wanted: int = 4096) -> None:
    """Raise the soft RLIMIT_NOFILE of the test process to ``wanted`` (or the hard limit).

    Users' shells start lower than the tests need: macOS at 256 (less than one message's
    worth of descriptors, 254), Linux at 1024 (less than a thousand connected pairs).  Tests
    that need a low limit set it in a child.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


_enough_descriptors()
# Probes are cached per process; run them before any test counts descriptors.
_probes.cmsg_cloexec_flag()
_probes.same_process_fd_reuse()
_probes.seqpacket()
_probes.abstract_addresses()


#: The tier of a test without a ``tier`` marker.
PORTABLE = "portable"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--tier",
        action="append",
        default=[],
        metavar="NAME",
        help="run this tier's tests instead of the portable tier (repeatable; 'portable' is the "
        "default tier: tests without a tier marker)",
    )


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per CPU (at most 16).  Most of the slowest tests wait --
    child suite runs, deadlines, peers -- rather than compute: on 2 CPUs, 4 workers ran
    the portable tier in 63 s where 2 took 72 s, for the same 100 s of CPU."""
    return min(2 * (os.cpu_count() or 1), 16)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tier(name): a heavy tier, run only with --tier NAME (its own tox environment)"
    )
    config.addinivalue_line("markers", "root(reason): needs root; skipped, saying why, otherwise")


def tier_of(item: pytest.Item) -> str:
    marker = item.get_closest_marker("tier")
    return str(marker.args[0]) if marker else PORTABLE


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    """Keep the tests of the selected tiers (the portable tier by default)."""
    wanted = set(config.getoption("--tier")) or {PORTABLE}
    keep = [item for item in items if tier_of(item) in wanted]
    if len(keep) != len(items):
        dropped = [item for item in items if tier_of(item) not in wanted]
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_runtest_setup(item: pytest.Item) -> None:
    marker = item.get_closest_marker("root")
    if marker is not None and os.geteuid() != 0:
        reason = marker.args[0] if marker.args else "this test"
        pytest.skip(f"needs root: {reason}")


def only_on(os_name: str, reason: str) -> Any:
    """Mark a test whose expected values are one OS's (``backend.OS_NAME``: Linux, macOS...)."""
    return pytest.mark.skipif(
        os_name != backend.OS_NAME, reason=f"{os_name} only ({reason}); this is {backend.OS_NAME}"
    )


needs_abstract = pytest.mark.skipif(
    not _probes.abstract_addresses()[0],
    reason=f"no abstract socket addresses on this kernel: {_probes.abstract_addresses()[1]}",
)
needs_kernel_seqpacket = pytest.mark.skipif(
    not _probes.seqpacket().available, reason=_probes.seqpacket().reason
)
#: Parameters for tests of both seqpacket implementations: the native one where this kernel's
#: SOCK_SEQPACKET keeps the whole contract (as ``auto`` would choose it), the emulation always.
SEQPACKET_IMPLEMENTATIONS = [
    pytest.param(
        "native",
        marks=pytest.mark.skipif(
            not _probes.seqpacket().conformant,
            reason=f"native seqpacket is not used here: {_probes.seqpacket().reason}",
        ),
    ),
    "emulated",
]


def c_compiler() -> str | None:
    """The C compiler on PATH (cc, gcc or clang), or None."""
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


needs_c_compiler = pytest.mark.skipif(c_compiler() is None, reason="no C compiler (cc) on PATH")


def peer_pid(pid: int) -> int | None:
    """What ``peer_credentials`` reports as a peer's pid here: ``pid``, or None on kernels
    whose credential call carries no pid (as ``capabilities()`` measured)."""
    from udscompat import capabilities

    detail = capabilities().features["peer_credentials"].detail
    return pid if "pid" in detail.replace(",", " ").split() else None


def other_user() -> pwd.struct_passwd:
    """An unprivileged account that is not ours: ``nobody`` (its uid differs per OS)."""
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' account on this machine")
    if entry.pw_uid == os.geteuid():
        pytest.skip("this test already runs as nobody")
    return entry


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


def send_with_the_table_full(send_call: str) -> List[str]:
    """Run ``send_call`` -- sending pipe end ``r`` over datagram socket ``a`` to ``b`` --
    in a child process whose descriptor table has no room left (held sent descriptors are
    duplicated first); the words it printed: ``refused before sending ERRNO``, ``error but
    sent ERRNO`` or ``sent``."""
    code = f"""
import os, resource, socket, udscompat
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
free = os.dup(0); os.close(free)
resource.setrlimit(resource.RLIMIT_NOFILE, (free, hard))
try:
    {send_call}
    print("sent")
except OSError as exc:
    b.setblocking(False)
    try:
        b.recv(10)
        print("error but sent", exc.errno)
    except BlockingIOError:
        print("refused before sending", exc.errno)
"""
    child = python_peer(code)
    out, err = child.communicate(timeout=30)
    assert child.returncode == 0, err
    return out.decode().split()


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
