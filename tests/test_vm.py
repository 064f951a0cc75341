"""The VM runner in the portable tier: the local target for real, process hygiene, failure paths.

The ssh tests against a real sshd are the ``sshd`` tier (test_vm_ssh.py); the real libvirt
and Vagrant run is the ``vm-linux`` tier (test_vm_linux.py).  Here Vagrant itself is a
stand-in (a shell script named ``vagrant`` on PATH, driven through the real python-vagrant),
since real Vagrant needs root, packages and libvirt: it checks what the runner asks of
Vagrant and that a timeout ends exactly the processes the runner started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest

from udscompat_conformance.vm import guard, payload, processes, runner, targets

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads((ROOT / "udscompat_conformance" / "result.schema.json").read_text())


def validate(result: Dict[str, Any]) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(result, SCHEMA)


def run_vm(
    tmp: Path, *args: str, timeout: float = 600, env: Dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
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
        env=env,
    )


def results(tmp: Path) -> Dict[str, Dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted((tmp / "results").glob("*.json"))}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0): reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def wait_gone(pids: List[int], seconds: float = 10.0) -> List[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [pid for pid in pids if alive(pid)]
        if not left:
            return []
        time.sleep(0.05)
    return [pid for pid in pids if alive(pid)]


# --- the local target, for real -------------------------------------------------------------


def test_local_target_runs_the_suite_and_brings_the_result_back(tmp_path: Path) -> None:
    """Runs part of the suite through the runner (test_conformance_suite runs all of it)."""
    proc = run_vm(
        tmp_path, "--target", "local", "-n", "1", "--timeout", "300", "--", "-k", "address"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    [result] = results(tmp_path).values()
    validate(result)
    assert result["host"]["release"] == os.uname().release
    ids = [case["id"] for case in result["cases"]]
    assert 10 < len(ids) < 60, ids  # -k address arrived: a part of the suite's ~180 cases
    assert result["summary"].get("observed", 0) > 5 and not result["run"].get("stage")
    assert "local" in proc.stdout and "done:" in proc.stdout  # live progress
    log = (tmp_path / "logs" / "local.log").read_text()
    assert log.count("$ ") >= 5
    assert "-m udscompat_conformance.vm.guard 300 " in log  # the suite ran under the guard
    assert "run --out" in log and " -- -k address" in log


def test_stage_timeout_ends_the_suite_on_the_target(tmp_path: Path) -> None:
    # The suite takes longer than 3 s: the target's guard ends it at the deadline.
    proc = run_vm(tmp_path, "local", "-n", "1", "--timeout", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [result] = results(tmp_path).values()
    assert (result["run"]["stage"], result["run"]["message"]) == ("run", "timed out after 3 s")
    # Progress lines carry the runner's clock: the run stage ended before the runner's own
    # grace would have closed the connection.
    clock = {
        line.split()[-1] if line.split()[-1] == "run" else "failed": float(line[1:8])
        for line in proc.stdout.splitlines()
        if line.split()[-1] == "run" or "FAILED at run" in line
    }
    assert clock["failed"] - clock["run"] < 3 + runner.GUARD_GRACE, proc.stdout
    log = (tmp_path / "logs" / "local.log").read_text()
    assert "guard: timed out after 3 s: ended process group" in log
    workdir = log.split("tar -xzf - -C ")[1].split()[0]
    assert not _processes_mentioning(workdir), "the suite still runs after its stage timed out"
    assert not Path(workdir).exists(), "the runner removes its work directory after a failure"


def _processes_mentioning(text: str) -> List[str]:
    ps = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, timeout=30)
    return [line for line in ps.stdout.splitlines()[1:] if text in line and "ps -eo" not in line]


def test_ctrl_c_stops_every_target_and_records_it(tmp_path: Path) -> None:
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
    assert not _processes_mentioning(workdir), "the suite still runs after Ctrl-C"


# --- the guard that runs the suite on the target ---------------------------------------------

_FAMILY = textwrap.dedent(
    """
    import os, subprocess, sys, time
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            for _ in range(2)]
    with open(sys.argv[1], "w") as out:
        out.write(" ".join(str(p) for p in [os.getpid()] + [k.pid for k in kids]))
    time.sleep(60)
    """
)


def _start_guard(tmp_path: Path, seconds: str) -> tuple[subprocess.Popen[bytes], Path]:
    pids = tmp_path / "pids"
    proc = subprocess.Popen(
        [sys.executable, "-m", guard.__name__, seconds, sys.executable, "-c", _FAMILY, str(pids)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 20
    while not (pids.exists() and pids.read_text().strip()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return proc, pids


def test_guard_ends_the_whole_group_at_its_deadline(tmp_path: Path) -> None:
    proc, pids = _start_guard(tmp_path, "1.5")
    family = [int(p) for p in pids.read_text().split()]
    assert proc.wait(30) == guard.TIMED_OUT
    assert proc.stderr is not None and b"timed out after 1.5 s" in proc.stderr.read()
    assert wait_gone(family) == [], "the command's children outlived the guard"
    proc.stdin.close()  # type: ignore[union-attr]
    proc.stderr.close()


def test_guard_ends_the_group_when_its_connection_closes(tmp_path: Path) -> None:
    proc, pids = _start_guard(tmp_path, "300")
    family = [int(p) for p in pids.read_text().split()]
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.close()  # what ssh passes on when the runner (or the connection) goes away
    assert proc.wait(30) == guard.TIMED_OUT
    assert b"its connection closed" in proc.stderr.read()
    assert wait_gone(family) == []
    proc.stderr.close()


def test_guard_passes_the_exit_status_on() -> None:
    done = subprocess.Popen(  # stdin stays open: the connection is there
        [sys.executable, "-m", guard.__name__, "60", sys.executable, "-c", "raise SystemExit(3)"],
        stdin=subprocess.PIPE,
    )
    assert done.wait(60) == 3
    done.stdin.close()  # type: ignore[union-attr]
    bad = subprocess.run(
        [sys.executable, "-m", guard.__name__, "soon", "true"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "SECONDS must be a number" in bad.stderr


# --- ending only what the runner started -----------------------------------------------------


def test_timeout_ends_the_commands_group_and_nothing_else(tmp_path: Path) -> None:
    # A process of ours whose command line says "vagrant", in another group: matching command
    # lines (the old pgrep -f vagrant) would have killed it.
    decoy = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)  # vagrant decoy"],
        start_new_session=True,
    )
    pids = tmp_path / "pids"
    code = f"{_FAMILY}"
    log = processes.Log(tmp_path / "x.log")
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            processes.run(
                [sys.executable, "-c", code + "  # vagrant", str(pids)], log, 2.0, stdin=b""
            )
        family = [int(p) for p in pids.read_text().split()]
        assert wait_gone(family) == [], "the timed-out command's group outlived it"
        assert decoy.poll() is None, "a process the runner did not start was killed"
    finally:
        decoy.kill()
        decoy.wait()


def _fake_vagrant(tmp_path: Path, *, hang: bool) -> Dict[str, str]:
    """A stand-in ``vagrant`` on PATH: records its calls, answers ssh-config, can hang in up."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    pids = tmp_path / "vagrant-pids"
    with socket.socket() as probe:  # a port where nothing listens: connect fails at once
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = bin_dir / "vagrant"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/sh
            echo "$*" >>{calls}
            case "$1" in
            up)
                if [ -n "{"1" if hang else ""}" ]; then
                    sleep 60 &
                    echo "$$ $!" >>{pids}
                    wait
                fi
                echo "fake up done";;
            ssh-config)
                printf 'Host %s\\n  HostName 127.0.0.1\\n  User nobody\\n  Port {port}\\n' "$2"
                printf '  IdentityFile /nonexistent/key\\n';;
            esac
            """
        )
    )
    script.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "calls": str(calls),
        "pids": str(pids),
    }


def test_vagrant_machine_up_connect_and_teardown_through_python_vagrant(tmp_path: Path) -> None:
    pytest.importorskip("vagrant", reason="python-vagrant (the vm extra) is not installed")
    fake = _fake_vagrant(tmp_path, hang=False)
    env = dict(os.environ, PATH=fake["PATH"])
    proc = run_vm(tmp_path, "freebsd", "--timeout", "60", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    [result] = results(tmp_path).values()
    assert result["run"]["stage"] == "connect"  # nothing listens where ssh-config points
    assert result["host"]["os"] == "FreeBSD"
    calls = Path(fake["calls"]).read_text().splitlines()
    assert calls == ["up freebsd", "ssh-config freebsd", "halt freebsd", "destroy freebsd --force"]
    log = (tmp_path / "logs" / "freebsd.log").read_text()
    assert "fake up done" in log  # vagrant's own output lands in the target's log


def test_vagrant_timeout_ends_only_what_it_started(tmp_path: Path) -> None:
    pytest.importorskip("vagrant", reason="python-vagrant (the vm extra) is not installed")
    fake = _fake_vagrant(tmp_path, hang=True)
    decoy = subprocess.Popen(["sh", "-c", "sleep 60 # vagrant up freebsd"], start_new_session=True)
    try:
        started = time.monotonic()
        proc = run_vm(
            tmp_path, "freebsd", "--timeout", "2", env=dict(os.environ, PATH=fake["PATH"])
        )
        assert time.monotonic() - started < 60
        assert proc.returncode == 1, proc.stdout + proc.stderr
        [result] = results(tmp_path).values()
        assert (result["run"]["stage"], result["run"]["message"]) == ("up", "timed out after 2 s")
        started_by_fake = [int(p) for p in Path(fake["pids"]).read_text().split()]
        assert wait_gone(started_by_fake) == [], "vagrant's processes outlived the timeout"
        assert decoy.poll() is None, "another vagrant on the machine was killed"
        calls = Path(fake["calls"]).read_text().splitlines()
        assert calls[-2:] == ["halt freebsd", "destroy freebsd --force"]  # teardown still runs
    finally:
        decoy.kill()
        decoy.wait()


def test_without_python_vagrant_vm_says_to_install_the_extra(tmp_path: Path) -> None:
    # From the checkout, `import vagrant` finds the repository's vagrant/ folder (a namespace
    # package) when python-vagrant is missing: simulate exactly that.
    code = textwrap.dedent(
        f"""
        import importlib.machinery, sys
        class Shadow:
            @staticmethod
            def find_spec(name, path=None, target=None):
                if name == "vagrant":
                    return importlib.machinery.PathFinder.find_spec(name, [{str(ROOT)!r}])
                return None
        sys.meta_path.insert(0, Shadow)
        import vagrant
        assert not hasattr(vagrant, "Vagrant")  # the folder, not python-vagrant
        from udscompat_conformance.cli import main
        sys.exit(main(["vm", "linux", "--out-dir", {str(tmp_path)!r}]))
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "pip install 'udscompat[vm]'" in proc.stderr
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.stderr
    assert not list(tmp_path.iterdir()), "nothing ran"


# --- targets, stubs, payload -----------------------------------------------------------------


def test_target_specs_are_parsed_and_checked() -> None:
    target = targets.parse_target(
        "ssh://alice@example.invalid:2222?key=/k&python=/opt/py3&known_hosts=/kh", None, False
    )
    assert isinstance(target, targets.SshTarget)
    assert (target.user, target.host, target.port, target.key, target.python) == (
        "alice",
        "example.invalid",
        2222,
        "/k",
        "/opt/py3",
    )
    assert target.ssh_argv()[-1] == "alice@example.invalid" and "2222" in target.ssh_argv()
    assert isinstance(targets.parse_target("local", None, False), targets.LocalTarget)
    assert isinstance(targets.parse_target("freebsd", "libvirt", False), targets.VagrantTarget)
    with pytest.raises(ValueError, match="unknown Vagrant machine"):
        targets.parse_target("plan9", None, False)
    with pytest.raises(ValueError, match="ssh://"):
        targets.parse_target("ssh://", None, False)
    with pytest.raises(ValueError, match="unknown parameter"):
        targets.parse_target("ssh://h?hostkey=no", None, False)


def _options(argv: List[str]) -> Dict[str, str]:
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "-o"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_user_hosts_have_their_host_keys_checked() -> None:
    default = _options(targets.SshTarget("ssh://me@host").ssh_argv())
    assert default["StrictHostKeyChecking"] == "accept-new"
    assert "UserKnownHostsFile" not in default  # the user's own known_hosts
    given = _options(targets.SshTarget("ssh://me@host?known_hosts=/k/kh").ssh_argv())
    assert (given["StrictHostKeyChecking"], given["UserKnownHostsFile"]) == ("accept-new", "/k/kh")
    # Throw-away Vagrant guests (a new key on each up) are the only unchecked ones.
    assert _options(targets.THROWAWAY_HOST_KEYS)["StrictHostKeyChecking"] == "no"


def test_failed_targets_show_as_failed_columns(tmp_path: Path) -> None:
    from udscompat_conformance.matrix import build_matrix

    stub = runner.stub(
        targets.VagrantTarget("openbsd", None, False), "up", "exit status 1", "tail", time.time()
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


def test_vagrant_dir_is_not_a_python_package() -> None:
    # A vagrant/__init__.py would shadow python-vagrant's `vagrant` module.
    assert not (ROOT / "vagrant" / "__init__.py").exists()
    assert sorted(p.stem for p in (ROOT / "vagrant" / "provision").glob("*.sh")) == sorted(
        targets.VAGRANT_MACHINES
    )
    text = (ROOT / "vagrant" / "Vagrantfile").read_text()
    for machine in targets.VAGRANT_MACHINES:
        assert f'"{machine}"' in text
    assert 'ssh.shell = "sh"' in text and "UDSCOMPAT_BOX_URL_" in text


def test_provisioning_scripts_are_valid_sh() -> None:
    for script in sorted((ROOT / "vagrant").rglob("*.sh")):
        proc = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, f"{script}: {proc.stderr}"


def test_payload_carries_both_packages_and_the_suites_dependencies() -> None:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(payload.payload()), mode="r:gz") as tar:
        names = tar.getnames()
    assert "project/udscompat/__init__.py" in names
    assert "project/udscompat_conformance/cases/pytest.ini" in names
    assert "project/udscompat_conformance/standin/kernel_standin.c" in names
    assert "project/udscompat_conformance/vm/guard.py" in names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    # pytest finds xdist and timeout through their entry points: the dist-info must travel.
    for dist in ("pytest", "pytest_xdist", "pytest_timeout", "pluggy"):
        metadata = [n for n in names if n.startswith(f"deps/{dist}-") and n.endswith("METADATA")]
        assert metadata, f"{dist}'s dist-info is missing"
    assert "deps/_pytest/__init__.py" in names and "deps/xdist/__init__.py" in names
