"""Tier ``sshd`` (``tox -e sshd``): the VM runner against a real sshd on 127.0.0.1.

Root only: it installs Debian's openssh-server when sshd is missing, creates a throw-away
user for this run (``udsc<pid>``, removed afterwards), and starts sshd on a free port with
throw-away keys, stopped by its PID.  Host keys are checked the way users' hosts are: a
known_hosts file of this run's own (never ~/.ssh/known_hosts).  Two runs at once use
different users, ports and directories.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.conftest import apt_install
from tests.test_vm import results, run_vm, validate

pytestmark = [pytest.mark.tier("sshd"), pytest.mark.root("starts sshd and creates a user")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ensure_sshd() -> str:
    found = shutil.which("sshd") or (os.path.exists("/usr/sbin/sshd") and "/usr/sbin/sshd")
    if found:
        return str(found)
    apt_install(["openssh-server"])
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("openssh-server could not be installed")
    return "/usr/sbin/sshd"


def _user_processes(user: str) -> List[str]:
    ps = subprocess.run(
        ["ps", "-u", user, "-o", "pid=,args="], capture_output=True, text=True, timeout=30
    )
    lines = [line.strip() for line in ps.stdout.splitlines()]
    return [line for line in lines if line and "<defunct>" not in line]


@pytest.fixture(scope="module")
def sshd() -> Iterator[Dict[str, Any]]:
    """sshd on 127.0.0.1 for a throw-away key of a throw-away unprivileged user."""
    if os.geteuid() != 0:
        pytest.skip("needs root: starts sshd and creates a user")
    binary = _ensure_sshd()
    user = f"udsc{os.getpid()}"
    subprocess.run(
        ["useradd", "-m", "-s", "/bin/sh", user], check=True, capture_output=True, timeout=60
    )
    server = None
    directory = Path(tempfile.mkdtemp(prefix="udsc-sshd-", dir="/tmp"))
    try:
        # useradd leaves the account locked ("!"), which sshd refuses without PAM; "*" is
        # "no password" without the lock.
        subprocess.run(["usermod", "-p", "*", user], check=True, capture_output=True, timeout=60)
        # sshd reads authorized_keys as the user: pytest's own temporary tree is root's alone.
        os.chmod(directory, 0o755)
        key = directory / "client_key"
        for name in ("client_key", "host_key"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / name)],
                check=True,
                timeout=60,
            )
        authorized = directory / "authorized_keys"
        shutil.copy(f"{key}.pub", authorized)
        os.chmod(authorized, 0o644)
        port = _free_port()
        config = directory / "sshd_config"
        config.write_text(
            textwrap.dedent(
                f"""
                ListenAddress 127.0.0.1
                Port {port}
                HostKey {directory / "host_key"}
                AuthorizedKeysFile {authorized}
                PidFile {directory / "sshd.pid"}
                StrictModes no
                UsePAM no
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                AllowUsers {user}
                """
            )
        )
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        server = subprocess.Popen(
            [binary, "-D", "-f", str(config), "-E", str(directory / "sshd.log")]
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        os.chmod(key, 0o600)
        host_key = (directory / "host_key.pub").read_text().split()
        known_hosts = directory / "known_hosts"
        known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
        yield {
            "user": user,
            "port": port,
            "key": str(key),
            "dir": str(directory),
            "known_hosts": str(known_hosts),
            "url": f"ssh://{user}@127.0.0.1:{port}?key={key}&known_hosts={known_hosts}",
        }
    finally:
        if server is not None:
            server.terminate()  # by the PID we started
            server.wait(20)
        subprocess.run(["pkill", "-KILL", "-u", user], capture_output=True, timeout=30)
        subprocess.run(["userdel", "-r", user], capture_output=True, timeout=60)
        shutil.rmtree(directory, ignore_errors=True)
    with pytest.raises(KeyError):
        pwd.getpwnam(user)


def test_ssh_target_runs_the_suite_as_another_user(sshd: Dict[str, Any], tmp_path: Path) -> None:
    proc = run_vm(tmp_path, sshd["url"], "-n", "2", "--timeout", "300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [(_, result)] = results(tmp_path).items()
    validate(result)
    cases = {c["id"]: c for c in result["cases"]}
    assert result["host"]["release"] == os.uname().release
    # The guest ran unprivileged: the case needing root says so.
    assert cases["shim.creds.other_user"]["outcome"] == "unavailable"
    assert not [c["id"] for c in result["cases"] if c["outcome"] in ("fail", "error")]
    assert not _user_processes(sshd["user"]), "the run left processes on the host"


def test_failures_are_recorded_and_the_others_go_on(sshd: Dict[str, Any], tmp_path: Path) -> None:
    sleepy = Path(sshd["dir"]) / "sleepy-python"
    # Passes the provisioning check (python -c ...) and runs the guard, then hangs instead of
    # running the suite: the guard must end it on the host when the stage times out.
    sleepy.write_text(
        textwrap.dedent(
            """\
            #!/bin/sh
            case "$1$2" in -c*|-mudscompat_conformance.vm.guard) exec python3 "$@";; esac
            sleep 600
            """
        )
    )
    sleepy.chmod(0o755)
    closed = _free_port()
    targets = [
        "local",
        f"ssh://{sshd['user']}@127.0.0.1:{closed}?key={sshd['key']}",  # nothing there
        f"{sshd['url']}&python=/nonexistent/python3",  # provisioning fails
        f"{sshd['url']}&python={sleepy}",  # the suite hangs
    ]
    started = time.monotonic()
    proc = run_vm(tmp_path, *targets, "--parallel", "4", "--timeout", "45", "-n", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - started < 240
    found = results(tmp_path)
    for result in found.values():
        validate(result)
    stages = sorted(r["run"].get("stage") or "ok" for r in found.values())
    assert stages == ["connect", "ok", "provision", "run"], [
        (r["host"]["version"], r["run"].get("message")) for r in found.values()
    ]
    hung = next(r for r in found.values() if r["run"].get("stage") == "run")
    assert "timed out after 45 s" in hung["run"]["message"]
    assert hung["run"]["log_tail"]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert len(logs) == 4
    assert "FAILED at connect" in proc.stdout and "FAILED at provision" in proc.stdout
    deadline = time.monotonic() + 10
    while _user_processes(sshd["user"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _user_processes(sshd["user"]), "the hung suite still runs on the host"


def test_a_changed_host_key_is_refused(sshd: Dict[str, Any], tmp_path: Path) -> None:
    impostor = tmp_path / "impostor"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(impostor)], check=True)
    kind, blob = (tmp_path / "impostor.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd['port']} {kind} {blob}\n")
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?key={sshd['key']}&known_hosts={known}"
    proc = run_vm(tmp_path, url, "--timeout", "60")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [result] = results(tmp_path).values()
    assert result["run"]["stage"] == "connect"
    assert "host key" in result["run"]["log_tail"].lower()


def test_a_new_host_is_remembered(sshd: Dict[str, Any], tmp_path: Path) -> None:
    known = tmp_path / "known_hosts"
    known.write_text("")
    url = f"ssh://{sshd['user']}@127.0.0.1:{sshd['port']}?key={sshd['key']}&known_hosts={known}"
    proc = run_vm(tmp_path, url + "&python=/nonexistent/python3", "--timeout", "60")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [result] = results(tmp_path).values()
    assert result["run"]["stage"] == "provision"  # connected: the new host was accepted
    host_key = Path(sshd["dir"], "host_key.pub").read_text().split()[1]
    assert host_key in known.read_text()  # accept-new: remembered for the next run
