"""The real end-to-end VM run: a locally built Debian box, libvirt in a fresh network namespace,
``udscompat-conformance vm linux``, a result from the guest's kernel, and nothing left behind.

Needs root on Linux; installs Debian's vagrant, vagrant-libvirt, libvirt, qemu and debootstrap
when they are missing (skipped with the reason where that cannot happen).  Guests run under
QEMU's TCG (``UDSCOMPAT_LIBVIRT_DRIVER=qemu``): it works whether or not /dev/kvm can run a stock
kernel.  libvirtd and virtlogd are started here and stopped by their PIDs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator

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


def _daemon(pid_file: Path, argv: list, netns: str | None = None) -> int:
    prefix = ["ip", "netns", "exec", netns] if netns else []
    subprocess.run([*prefix, *argv, "-d", "-p", str(pid_file)], check=True, timeout=60)
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    return int(pid_file.read_text().strip())


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


@pytest.fixture
def libvirt_in_netns(tmp_path: Path) -> Iterator[Dict[str, str]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network namespaces, libvirtd and debootstrap")
    _install()
    try:
        import vagrant  # noqa: F401  (python-vagrant drives the run)
    except ImportError:
        pytest.skip("python-vagrant is not installed (extra 'vm')")
    forward, rules = _sysctl_forward(), _iptables()
    netns = f"udsc-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True, timeout=60)
    subprocess.run(
        ["ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up"], check=True, timeout=60
    )
    pids = []
    try:
        pids.append(_daemon(tmp_path / "virtlogd.pid", ["virtlogd"]))
        pids.append(_daemon(tmp_path / "libvirtd.pid", ["libvirtd"], netns))
        time.sleep(2)
        yield {
            "netns": netns,
            "vagrant_home": str(Path.home() / ".cache" / "udscompat" / "vagrant.d"),
        }
    finally:
        for network in ("vagrant-libvirt", "default"):
            subprocess.run(
                ["virsh", "-c", "qemu:///system", "net-destroy", network],
                capture_output=True,
                timeout=60,
            )
        for pid in reversed(pids):
            _stop(pid)
        subprocess.run(["ip", "netns", "delete", netns], capture_output=True, timeout=60)
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forward + "\n")
    assert (
        netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    )
    assert _sysctl_forward() == forward
    assert _iptables() == rules, "iptables of the root namespace changed"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_vm_linux_end_to_end(libvirt_in_netns: Dict[str, str], tmp_path: Path) -> None:
    env = dict(
        os.environ,
        VAGRANT_HOME=libvirt_in_netns["vagrant_home"],
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
    domains = subprocess.run(
        ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True, text=True
    ).stdout.split()
    assert not [d for d in domains if "linux" in d], f"domains left behind: {domains}"
