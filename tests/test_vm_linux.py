"""Tier ``vm-linux``: the real end-to-end VM run, a locally built Debian box under real Vagrant
and libvirt, ``udscompat-conformance vm linux``, a result from the guest's kernel, and nothing
left behind.

Needs root on Linux; installs Debian's vagrant, vagrant-libvirt, libvirt, qemu and debootstrap
when they are missing (skipped with the reason where that cannot happen).  Guests run under
QEMU's TCG (``UDSCOMPAT_LIBVIRT_DRIVER=qemu``): it works whether or not /dev/kvm can run a stock
kernel.

Everything a run uses is its own, so two runs on one host do not collide: a network namespace
``udsc-<pid>``, and a private libvirt (virtlogd and libvirtd, stopped by their PIDs) in a mount
namespace where /run/libvirt, /etc/libvirt (a copy), /var/lib/libvirt (with the host's boot/
kernels), /var/cache/libvirt and /var/log/libvirt are directories of this run; clients reach it
through ``LIBVIRT_DEFAULT_URI=qemu:///system?socket=...``.  Vagrant's home (boxes) and machine
state, and the domain names' prefix, are per run too.  Only the built box (content-addressed,
built under a lock) and /var/lib/libvirt/boot's kernels are shared.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from tests.conftest import apt_install

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = [
    "vagrant",
    "vagrant-libvirt",
    "libvirt-daemon-system",
    "qemu-system-x86",
    "qemu-utils",
    "debootstrap",
    "rsync",
    "e2fsprogs",
    "iproute2",
]
COMMANDS = [
    "vagrant",
    "libvirtd",
    "virtlogd",
    "virsh",
    "qemu-system-x86_64",
    "qemu-img",
    "debootstrap",
    "rsync",
    "ip",
]

pytestmark = [
    pytest.mark.tier("vm-linux"),
    pytest.mark.skipif(sys.platform != "linux", reason="libvirt and the Debian box need Linux"),
    pytest.mark.timeout(3600),
]


def _install() -> None:
    missing = [c for c in COMMANDS if not shutil.which(c) and not os.path.exists(f"/usr/sbin/{c}")]
    if not missing:
        return
    apt_install(PACKAGES, recommends=True)  # as vm-feasibility.md installed them


def _sysctl_forward() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def _iptables() -> str:
    if not shutil.which("iptables-save"):
        return ""
    out = subprocess.run(["iptables-save"], capture_output=True, text=True, timeout=60).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("#"))


#: What a run's private libvirt sees at the host's libvirt paths (mount points in its namespace).
PRIVATE_DIRS = {
    "run": "/run/libvirt",
    "etc": "/etc/libvirt",
    "lib": "/var/lib/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
_START = """
set -eu
mount --bind /var/lib/libvirt/boot "$RUN/lib/boot"
for pair in $DIRS; do mount --rbind "$RUN/${pair%%=*}" "${pair#*=}"; done
virtlogd -d -p "$RUN/virtlogd.pid"
libvirtd -d -p "$RUN/libvirtd.pid"
"""


def _pid_from(path: Path, seconds: float = 30) -> int:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().strip())
        time.sleep(0.2)
    raise AssertionError(f"{path.name} did not appear")


def _stop(pid: int) -> None:
    try:
        os.kill(pid, 15)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.kill(pid, 9)


def _virsh(uri: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["virsh", "-c", uri, *args], capture_output=True, text=True, timeout=120)


def _netns_pids(netns: str) -> List[str]:
    out = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True)
    return out.stdout.split()


@pytest.fixture
def libvirt_in_netns() -> Iterator[Dict[str, str]]:
    """A private libvirtd of this run, in its own network and mount namespaces."""
    if os.geteuid() != 0:
        pytest.skip("needs root: network and mount namespaces, libvirtd and debootstrap")
    _install()
    try:
        import vagrant  # noqa: F401  (python-vagrant drives the run)
    except ImportError:
        pytest.skip("python-vagrant is not installed (extra 'vm')")
    forward, rules = _sysctl_forward(), _iptables()
    tag = f"udsc-{os.getpid()}"
    # qemu runs as libvirt-qemu: the run's directory must be traversable (pytest's is not).
    run = Path(tempfile.mkdtemp(prefix=f"{tag}-", dir="/var/tmp"))
    run.chmod(0o755)
    for name in PRIVATE_DIRS:
        if name != "etc":
            (run / name).mkdir(mode=0o755)
    (run / "lib" / "boot").mkdir()
    shutil.copytree("/etc/libvirt", run / "etc", symlinks=True)
    for mount_point in PRIVATE_DIRS.values():
        os.makedirs(mount_point, exist_ok=True)  # /run/libvirt may not exist without systemd
    uri = f"qemu:///system?socket={run / 'run' / 'libvirt-sock'}"
    subprocess.run(["ip", "netns", "add", tag], check=True, timeout=60)
    subprocess.run(["ip", "netns", "exec", tag, "ip", "link", "set", "lo", "up"], check=True)
    pids: List[int] = []
    try:
        env = dict(
            os.environ,
            RUN=str(run),
            DIRS=" ".join(f"{k}={v}" for k, v in PRIVATE_DIRS.items()),
        )
        subprocess.run(
            ["ip", "netns", "exec", tag, "unshare", "--mount", "--propagation", "private",
             "sh", "-c", _START],
            check=True,
            env=env,
            timeout=60,
        )  # fmt: skip
        pids.append(_pid_from(run / "virtlogd.pid"))
        pids.append(_pid_from(run / "libvirtd.pid"))
        deadline = time.monotonic() + 30
        while _virsh(uri, "version").returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        yield {
            "netns": tag,
            "uri": uri,
            "run": str(run),
            "vagrant_home": str(run / "vagrant.d"),
            "dotfiles": str(run / "vagrant-state"),
            "prefix": f"{tag}-",
        }
    finally:
        # What this run's libvirt started (domains, networks with their dnsmasq) goes first.
        for domain in _virsh(uri, "list", "--all", "--name").stdout.split():
            _virsh(uri, "destroy", domain)
            _virsh(uri, "undefine", domain, "--nvram")
        for network in _virsh(uri, "net-list", "--all", "--name").stdout.split():
            _virsh(uri, "net-destroy", network)
        for pid in reversed(pids):
            _stop(pid)
        left = _netns_pids(tag)
        subprocess.run(["ip", "netns", "delete", tag], capture_output=True, timeout=60)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward + "\n")
        shutil.rmtree(run, ignore_errors=True)
    assert not left, f"processes left in the run's network namespace: {left}"
    assert tag not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert _sysctl_forward() == forward
    assert _iptables() == rules, "iptables of the root namespace changed"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_vm_linux_end_to_end(libvirt_in_netns: Dict[str, str], tmp_path: Path) -> None:
    env = dict(
        os.environ,
        VAGRANT_HOME=libvirt_in_netns["vagrant_home"],
        VAGRANT_DOTFILE_PATH=libvirt_in_netns["dotfiles"],
        LIBVIRT_DEFAULT_URI=libvirt_in_netns["uri"],
        UDSCOMPAT_DOMAIN_PREFIX=libvirt_in_netns["prefix"],
        UDSCOMPAT_LIBVIRT_DRIVER="qemu",
        UDSCOMPAT_VM_MEMORY="1536",
    )
    build = subprocess.run(
        ["sh", str(ROOT / "vagrant" / "build-linux-box.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    run = subprocess.run(
        [
            "ip",
            "netns",
            "exec",
            libvirt_in_netns["netns"],
            sys.executable,
            "-m",
            "udscompat_conformance",
            "vm",
            "linux",
            "--provider",
            "libvirt",
            "--timeout",
            "1800",
            "--out-dir",
            str(tmp_path / "results"),
            "--log-dir",
            str(tmp_path / "logs"),
            "-n",
            "2",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=3000,
    )
    log = "\n".join(p.read_text()[-3000:] for p in (tmp_path / "logs").glob("*.log"))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + log
    [result_file] = (tmp_path / "results").glob("*.json")
    result = json.loads(result_file.read_text())
    assert not result["run"].get("stage"), result["run"]
    assert result["host"]["os"] == "Linux"
    assert result["host"]["release"] != os.uname().release, "the result must come from the guest"
    assert result["summary"].get("observed", 0) > 100
    log_text = "\n".join(p.read_text() for p in (tmp_path / "logs").glob("*.log"))
    assert f"{libvirt_in_netns['prefix']}linux" in log_text  # the domain was named for this run
    domains = _virsh(libvirt_in_netns["uri"], "list", "--all", "--name").stdout.split()
    assert not domains, f"domains left behind: {domains}"
