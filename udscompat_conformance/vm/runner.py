"""The stages of one target, and several targets at once.

For every target the same stages run: up, connect, provision (a Python 3.9+), copy (the
payload), run (the suite, under the target's ``guard``), fetch.  A stage that fails or times
out is recorded as a result stub (``run.stage``, ``run.message``, ``run.log_tail``) and the
other targets go on.  Ctrl-C ends every command this run started (by process group), tears
each target down and records it.
"""

from __future__ import annotations

import concurrent.futures
import json
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import udscompat
from udscompat_conformance import SCHEMA_VERSION
from udscompat_conformance.hostinfo import git_commit, utc_time
from udscompat_conformance.plugin import write_atomically
from udscompat_conformance.vm import processes
from udscompat_conformance.vm.guard import TIMED_OUT
from udscompat_conformance.vm.payload import payload
from udscompat_conformance.vm.processes import Log
from udscompat_conformance.vm.targets import OS_OF_MACHINE, Remote, Target

_PYTHON_CHECK = (
    "import sys; assert sys.version_info >= (3, 9), sys.version; print(sys.version.split()[0])"
)
#: How much longer than the stage timeout the runner waits for the target's guard to report
#: before it closes the connection itself.
GUARD_GRACE = 15.0
#: Seconds each teardown step (vagrant halt, vagrant destroy) may take.
TEARDOWN_TIMEOUT = 300.0


class StageError(Exception):
    """A stage failed; ``stage`` names it and the message says why."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


class Progress:
    """One line per event per machine on stdout (the runner is a CLI, not the library)."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()
        self._start = time.monotonic()

    def update(self, name: str, text: str) -> None:
        with self._lock:
            print(
                f"[{time.monotonic() - self._start:7.1f}s] {name:24} {text}",
                file=self._stream,
                flush=True,
            )


def run_suite_command(
    remote: Remote,
    workdir: str,
    out: str,
    workers: str,
    timeout: float,
    pytest_args: Sequence[str] = (),
) -> str:
    """The run stage's command line: the suite under the target's guard (see ``guard``)."""
    python = shlex.quote(remote.python)
    sudo = "sudo -n " if remote.as_root else ""
    return (
        f"cd {workdir}/project && {sudo}env "
        f"PYTHONPATH={workdir}/project:{workdir}/deps "
        f"UDSCOMPAT_GIT_COMMIT={shlex.quote(git_commit() or '')} "
        f"{python} -m udscompat_conformance.vm.guard {timeout:g} "
        f"{python} -m udscompat_conformance run --out {out} -n {shlex.quote(workers)}"
    ) + ("".join(f" {shlex.quote(a)}" for a in ["--", *pytest_args]) if pytest_args else "")


def run_target(
    target: Target,
    out_dir: Path,
    log_dir: Path,
    timeout: float,
    workers: str,
    progress: Progress,
    pytest_args: Sequence[str] = (),
) -> Path:
    """Run every stage on ``target``; returns the result file (a real one or a stub)."""
    log = Log(log_dir / f"{target.name}.log")
    started = time.time()
    result_path = out_dir / f"{target.name}.json"
    stage = "up"
    remote: Optional[Remote] = None
    workdir = ""
    try:
        progress.update(target.name, "up")
        remote = target.up(log, timeout)
        stage = "connect"
        progress.update(target.name, stage)
        uname = remote.run("uname -sr", log, 120).decode().strip()
        stage = "provision"
        progress.update(target.name, f"{stage} ({uname})")
        python = shlex.quote(remote.python)
        checked = remote.run(f"{python} -c {shlex.quote(_PYTHON_CHECK)}", log, 300)
        version = checked.decode().strip()
        stage = "copy"
        progress.update(target.name, f"{stage} (Python {version})")
        made = remote.run("mktemp -d /tmp/udscompat-conformance.XXXXXX", log, 60)
        workdir = shlex.quote(made.decode().strip())
        remote.run(f"tar -xzf - -C {workdir}", log, 300, stdin=payload())
        stage = "run"
        progress.update(target.name, stage)
        remote_out = f"{workdir}/result.json"
        command = run_suite_command(remote, workdir, remote_out, workers, timeout, pytest_args)
        try:
            remote.run(command, log, timeout + GUARD_GRACE, guarded=True)
        except subprocess.CalledProcessError as exc:
            if exc.returncode == TIMED_OUT:  # the guard ended the suite on the target
                raise subprocess.TimeoutExpired(command, timeout) from exc
            raise
        stage = "fetch"
        progress.update(target.name, stage)
        sudo = "sudo -n " if remote.as_root else ""
        data = json.loads(remote.run(f"{sudo}cat {remote_out}", log, 120))
        remote.run(f"{sudo}rm -rf {workdir}", log, 120)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise StageError("fetch", f"unexpected schema_version {data.get('schema_version')!r}")
        result_path = out_dir / result_name(data)
        write_atomically(result_path, data)
        progress.update(
            target.name, f"done: {sum(data['summary'].values())} cases -> {result_path}"
        )
    except BaseException as exc:
        message = "interrupted" if processes.INTERRUPTED.is_set() else describe(exc)
        log.write(f"stage {stage} failed: {message}")
        write_atomically(result_path, stub(target, stage, message, log.tail(), started))
        progress.update(target.name, f"FAILED at {stage}: {message.splitlines()[0][:120]}")
        if isinstance(exc, KeyboardInterrupt):
            raise
        if workdir and remote is not None and not processes.INTERRUPTED.is_set():
            sudo = "sudo -n " if remote.as_root else ""
            try:  # leave nothing behind on a host that stays
                remote.run(f"{sudo}rm -rf {workdir}", log, 60)
            except (OSError, subprocess.SubprocessError):
                pass
    finally:
        try:
            target.down(log, TEARDOWN_TIMEOUT)
        except Exception as exc:  # recorded; the result stands
            log.write(f"teardown failed: {describe(exc)}")
    return result_path


def describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"timed out after {exc.timeout:.0f} s"
    if isinstance(exc, subprocess.CalledProcessError):
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"exit status {exc.returncode}" + (f": {err[-1]}" if err else "")
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, StageError):
        return str(exc).split(": ", 1)[1]
    return f"{type(exc).__name__}: {exc}"


def result_name(data: Dict[str, Any]) -> str:
    host = data["host"]
    return f"{host['os']}-{host['release']}-{host['machine']}.json".lower().replace("/", "_")


def stub(target: Target, stage: str, message: str, tail: str, started: float) -> Dict[str, Any]:
    """A result file that records where a target failed (no cases)."""
    os_name = OS_OF_MACHINE.get(target.name, target.name)
    return {
        "schema_version": SCHEMA_VERSION,
        "host": {
            "os": os_name,
            "release": "unknown",
            "version": f"target {target.name} failed at stage {stage}",
            "machine": "unknown",
            "kernel": "unknown",
            "libc": None,
            "python_implementation": "unknown",
            "python_version": "unknown",
            "udscompat_version": udscompat.__version__,
            "git_commit": git_commit(),
        },
        "run": {
            "started": utc_time(started),
            "duration_s": round(time.time() - started, 3),
            "seqpacket_implementation": "auto",
            "standin": None,
            "environment": {},
            "workers": 0,
            "stage": stage,
            "message": message,
            "log_tail": tail,
        },
        "summary": {},
        "cases": [],
    }


def run_targets(
    targets: Sequence[Target],
    out_dir: Path,
    log_dir: Path,
    *,
    parallel: int,
    timeout: float,
    workers: str = "auto",
    pytest_args: Sequence[str] = (),
) -> List[Path]:
    """Run ``targets``, at most ``parallel`` at a time; every one yields a result file."""
    progress = Progress()
    out_dir.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [
            pool.submit(run_target, t, out_dir, log_dir, timeout, workers, progress, pytest_args)
            for t in targets
        ]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            # End what runs now (by process group); each target's own finally then tears it
            # down (vagrant halt/destroy) and records the interruption.
            processes.INTERRUPTED.set()
            for future in futures:
                future.cancel()
            processes.end_all()
            pool.shutdown(wait=True)
            raise
