"""``udscompat-conformance vm``: run the suite on other machines and bring the results home.

    udscompat-conformance vm [TARGET...] [--target TARGET] [--parallel N] [--provider P]
                             [--keep] [--timeout S] [--out-dir DIR] [--log-dir DIR]

A TARGET is one of:

* a machine of ``vagrant/Vagrantfile`` (``linux``, ``freebsd``, ``openbsd``,
  ``netbsd``, ``dragonfly``, ``omnios``): brought up with python-vagrant,
  reached over plain ssh with what ``Vagrant.conf()`` says, halted and
  destroyed afterwards (``--keep`` leaves it running);
* ``ssh://user@host[:port][?key=FILE&python=PATH]``: any reachable host (a
  Mac, a BSD box);
* ``local``: this machine.

For every target the same stages run: connect, provision (a Python 3.9+),
copy (the project and the suite's pure-Python dependencies, taken from this
environment, so the guest needs no package index), run, fetch.  A stage that
fails or times out is recorded as a result stub (``run.stage``,
``run.log_tail``) in the output directory, and the other targets go on.
Each target writes its own log file.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import importlib.metadata
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set

import udscompat
from udscompat_conformance import SCHEMA_VERSION
from udscompat_conformance.hostinfo import git_commit, utc_time
from udscompat_conformance.plugin import write_atomically

PROJECT = Path(__file__).resolve().parent.parent


def vagrant_dir() -> Path:
    """The Vagrantfile's directory: ``UDSCOMPAT_VAGRANT_DIR``, ``./vagrant``, or the checkout's."""
    forced = os.environ.get("UDSCOMPAT_VAGRANT_DIR")
    if forced:
        return Path(forced)
    here = Path.cwd() / "vagrant"
    return here if (here / "Vagrantfile").exists() else PROJECT / "vagrant"


VAGRANT_MACHINES = ("linux", "freebsd", "openbsd", "netbsd", "dragonfly", "omnios")
#: The suite's own requirements; they and everything they require (as installed here, all pure
#: Python) are copied to the target, so it needs no package index.
SUITE_REQUIREMENTS = ("pytest", "pytest-xdist", "pytest-timeout")
_PYTHON_CHECK = (
    "import sys; assert sys.version_info >= (3, 9), sys.version; print(sys.version.split()[0])"
)
_OS_OF_MACHINE = {
    "linux": "Linux",
    "freebsd": "FreeBSD",
    "openbsd": "OpenBSD",
    "netbsd": "NetBSD",
    "dragonfly": "DragonFly",
    "omnios": "SunOS",
}
_LOG_TAIL = 4000
_SSH_OPTIONS = [
    "-o", "BatchMode=yes",
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=20",
]  # fmt: skip


class StageError(Exception):
    """A stage failed; ``stage`` names it and the message says why."""

    def __init__(self, stage: str, message: str) -> None:
        super().__init__(f"{stage}: {message}")
        self.stage = stage


# --- where commands run ---------------------------------------------------------------------------


#: Commands running on some target now, so that Ctrl-C can stop them all.
_RUNNING: Set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()
_INTERRUPTED = threading.Event()


class Remote:
    """Runs ``sh`` command lines on a target (here, or over ssh)."""

    def __init__(
        self, ssh: Optional[List[str]] = None, python: str = "python3", *, as_root: bool = False
    ) -> None:
        self.ssh = ssh  # the ssh argv up to the remote command; None means this machine
        self.python = python
        #: Run the suite with ``sudo -n`` (throw-away Vagrant guests): the cases that need
        #: root (another user's credentials, network namespaces) then run too.
        self.as_root = as_root

    def argv(self, command: str) -> List[str]:
        # Always through sh -c: `vagrant ssh`, and plain ssh, use the login shell (csh on BSDs).
        if self.ssh is None:
            return ["sh", "-c", command]
        return [*self.ssh, "sh -c " + shlex.quote(command)]

    def run(self, command: str, log: Log, timeout: float, stdin: Optional[bytes] = None) -> bytes:
        """Run ``command``; its output goes to the log; returns stdout.

        Raises:
            subprocess.TimeoutExpired / subprocess.CalledProcessError
        """
        log.write(f"$ {command}\n")
        proc = subprocess.Popen(
            self.argv(command),
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,  # so a timeout kills the whole tree
        )
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            out, err = proc.communicate()
            log.write(err.decode(errors="replace"))
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
        log.write(err.decode(errors="replace"))
        if proc.returncode != 0:
            log.write(out.decode(errors="replace")[-_LOG_TAIL:])
            raise subprocess.CalledProcessError(proc.returncode, command, out, err)
        return out


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Log:
    """One target's log file; thread-safe appends, and the tail for a result stub."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        path.write_text("", encoding="utf-8")

    def write(self, text: str) -> None:
        if not text:
            return
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(text if text.endswith("\n") else text + "\n")

    def tail(self) -> str:
        return self.path.read_text(encoding="utf-8", errors="replace")[-_LOG_TAIL:]


# --- targets ------------------------------------------------------------------------------------


class Target:
    """Where the suite runs: brought up, used through a ``Remote``, then torn down."""

    name = "target"

    def up(self, log: Log, timeout: float) -> Remote:
        raise NotImplementedError

    def down(self, log: Log, timeout: float) -> None:
        """Undo what ``up`` started (nothing for hosts that were already there)."""


class LocalTarget(Target):
    name = "local"

    def up(self, log: Log, timeout: float) -> Remote:
        return Remote(None, sys.executable)


class SshTarget(Target):
    """``ssh://user@host[:port][?key=FILE&python=PATH]``."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "ssh" or not parsed.hostname:
            raise ValueError(f"{url!r}: expected ssh://user@host[:port]")
        query = urllib.parse.parse_qs(parsed.query)
        self.user = parsed.username
        self.host = parsed.hostname
        self.port = parsed.port or 22
        self.key = query.get("key", [None])[0]
        self.python = query.get("python", ["python3"])[0]
        self.name = f"ssh-{self.user + '@' if self.user else ''}{self.host}-{self.port}"
        if self.python != "python3":  # several interpreters on one host are several targets
            self.name += "-" + re.sub(r"[^A-Za-z0-9.]+", "_", self.python).strip("_")

    def ssh_argv(self) -> List[str]:
        argv = ["ssh", *_SSH_OPTIONS, "-p", str(self.port)]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        return [*argv, f"{self.user}@{self.host}" if self.user else self.host]

    def up(self, log: Log, timeout: float) -> Remote:
        return Remote(self.ssh_argv(), self.python)


_FIRST_UP_LOCK = threading.Lock()
_FIRST_UP_BY_BOX: Dict[str, threading.Lock] = {}
_WARMED_BOXES: Set[str] = set()


class VagrantTarget(Target):
    """A machine of ``vagrant/Vagrantfile``, driven by python-vagrant, reached by plain ssh."""

    def __init__(self, machine: str, provider: Optional[str], keep: bool) -> None:
        if machine not in VAGRANT_MACHINES:
            known = ", ".join(VAGRANT_MACHINES)
            raise ValueError(f"unknown Vagrant machine {machine!r}; known: {known}")
        self.name = machine
        self.provider = provider
        self.keep = keep
        self._vagrant: Any = None

    def _driver(self, log: Log) -> Any:
        try:
            import vagrant
        except ImportError as exc:
            raise StageError("up", "python-vagrant is not installed (pip install '.[vm]')") from exc
        # python-vagrant's env= replaces the environment: start from ours.
        env = dict(os.environ)
        return vagrant.Vagrant(
            str(vagrant_dir()),
            env=env,
            out_cm=vagrant.make_file_cm(str(log.path)),
            err_cm=vagrant.make_file_cm(str(log.path)),
        )

    def up(self, log: Log, timeout: float) -> Remote:
        self._vagrant = self._driver(log)
        # Two first `up`s of one newly added box race while uploading it into the provider
        # (vm-feasibility.md): the first `up` of each box runs alone.
        box = os.environ.get(f"UDSCOMPAT_BOX_{self.name.upper()}", self.name)
        with _FIRST_UP_LOCK:
            lock = _FIRST_UP_BY_BOX.setdefault(box, threading.Lock())
        with lock:
            first = box not in _WARMED_BOXES
            if first:
                self._up(log, timeout)
                _WARMED_BOXES.add(box)
        if not first:
            self._up(log, timeout)
        conf = self._vagrant.conf(vm_name=self.name)
        ssh = [
            "ssh", *_SSH_OPTIONS,
            "-p", str(conf["Port"]),
            "-i", conf["IdentityFile"],
            "-o", "IdentitiesOnly=yes",
            f"{conf['User']}@{conf['HostName']}",
        ]  # fmt: skip
        return Remote(ssh, "python3", as_root=True)

    def _up(self, log: Log, timeout: float) -> None:
        lines = self._vagrant.up(vm_name=self.name, provider=self.provider, stream_output=True)
        _consume_with_timeout(lines, log, timeout, "vagrant")  # python-vagrant has no timeout

    def down(self, log: Log, timeout: float) -> None:
        if self._vagrant is None or self.keep:
            return
        for step in (self._vagrant.halt, self._vagrant.destroy):
            worker = threading.Thread(target=step, kwargs={"vm_name": self.name}, daemon=True)
            worker.start()
            worker.join(timeout)
            if worker.is_alive():
                _kill_children("vagrant")
                log.write(f"{step.__name__} timed out after {timeout:.0f} s")


def _consume_with_timeout(lines: Iterator[str], log: Log, timeout: float, program: str) -> None:
    """Read a streamed command to its end, killing it (and failing) after ``timeout`` seconds."""
    finished = threading.Event()
    failure: List[BaseException] = []

    def consume() -> None:
        try:
            for line in lines:
                log.write(line)
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
        finally:
            finished.set()

    threading.Thread(target=consume, daemon=True).start()
    if not finished.wait(timeout):
        _kill_children(program)
        finished.wait(30)
        raise subprocess.TimeoutExpired(program, timeout)
    if failure:
        raise failure[0]


def _kill_children(program: str) -> None:
    """Kill this process's children running ``program`` (python-vagrant keeps no handle)."""
    try:
        out = subprocess.run(
            ["pgrep", "-P", str(os.getpid()), "-f", program],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return
    for pid in out.stdout.split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def parse_target(spec: str, provider: Optional[str], keep: bool) -> Target:
    if spec == "local":
        return LocalTarget()
    if spec.startswith("ssh://"):
        return SshTarget(spec)
    return VagrantTarget(spec, provider, keep)


# --- the payload ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)  # one tar for every target of a run
def payload() -> bytes:
    """A gzipped tar of the two packages (library and suite) and the suite's dependencies.

    The dependencies are the installed files of ``SUITE_DEPENDENCIES`` (those
    present here), placed under ``deps/`` with their dist-info, so pytest
    finds its plugins through entry points on the target.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        # The two packages wherever they are imported from (a checkout or site-packages).
        for package in _project_packages():
            tar.add(str(package), arcname=f"project/{package.name}", filter=_skip_caches)
        for dist in suite_distributions():
            for file in dist.files or []:
                if file.suffix == ".pyc" or "__pycache__" in file.parts or ".." in file.parts:
                    continue
                source = Path(str(file.locate()))
                if source.is_file():
                    tar.add(str(source), arcname=f"deps/{file}")
    return buffer.getvalue()


def _project_packages() -> List[Path]:
    return [Path(udscompat.__file__).resolve().parent, Path(__file__).resolve().parent]


def suite_distributions() -> List[importlib.metadata.Distribution]:
    """The installed distributions the suite needs: its requirements, recursively.

    Requirements that apply only to an extra are left out; ones limited to
    other Python versions are taken when installed (a target may be older).
    """
    found: Dict[str, importlib.metadata.Distribution] = {}
    pending = list(SUITE_REQUIREMENTS)
    while pending:
        name = _normalise(pending.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement.replace("extra==", "extra =="):
                continue
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if match:
                pending.append(match.group(1))
    return [found[name] for name in sorted(found)]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _skip_caches(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
    name = info.name
    if "__pycache__" in name or name.endswith((".pyc", ".so")) or "/.pytest_cache" in name:
        return None
    return info


# --- one target, all stages ---------------------------------------------------------------------


def run_target(
    target: Target, out_dir: Path, log_dir: Path, timeout: float, workers: str, progress: Progress
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
        sudo = "sudo -n " if remote.as_root else ""
        command = (
            f"cd {workdir}/project && {sudo}env "
            f"PYTHONPATH={workdir}/project:{workdir}/deps "
            f"UDSCOMPAT_GIT_COMMIT={shlex.quote(git_commit() or '')} "
            f"{python} -m udscompat_conformance run --out {remote_out} -n {shlex.quote(workers)}"
        )
        remote.run(command, log, timeout)
        stage = "fetch"
        progress.update(target.name, stage)
        data = json.loads(remote.run(f"{sudo}cat {remote_out}", log, 120))
        remote.run(f"{sudo}rm -rf {workdir}", log, 120)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise StageError("fetch", f"unexpected schema_version {data.get('schema_version')!r}")
        name = _result_name(data)
        result_path = out_dir / name
        write_atomically(result_path, data)
        progress.update(
            target.name, f"done: {sum(data['summary'].values())} cases -> {result_path}"
        )
    except BaseException as exc:
        message = "interrupted" if _INTERRUPTED.is_set() else _describe(exc)
        log.write(f"stage {stage} failed: {message}")
        write_atomically(result_path, _stub(target, stage, message, log.tail(), started))
        progress.update(target.name, f"FAILED at {stage}: {message.splitlines()[0][:120]}")
        if isinstance(exc, KeyboardInterrupt):
            raise
        if workdir and remote is not None and not _INTERRUPTED.is_set():
            try:  # leave nothing behind on a host that stays
                remote.run(f"rm -rf {workdir}", log, 60)
            except (OSError, subprocess.SubprocessError):
                pass
    finally:
        try:
            target.down(log, 300)
        except Exception as exc:  # recorded; the result stands
            log.write(f"teardown failed: {_describe(exc)}")
    return result_path


def _describe(exc: BaseException) -> str:
    if isinstance(exc, subprocess.TimeoutExpired):
        return f"timed out after {exc.timeout:.0f} s"
    if isinstance(exc, subprocess.CalledProcessError):
        err = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        return f"exit status {exc.returncode}" + (f": {err[-1]}" if err else "")
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def _result_name(data: Dict[str, Any]) -> str:
    host = data["host"]
    return f"{host['os']}-{host['release']}-{host['machine']}.json".lower().replace("/", "_")


def _stub(target: Target, stage: str, message: str, tail: str, started: float) -> Dict[str, Any]:
    """A result file that records where a target failed (no cases)."""
    os_name = _OS_OF_MACHINE.get(target.name, target.name)
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


def run_targets(
    targets: Sequence[Target],
    out_dir: Path,
    log_dir: Path,
    *,
    parallel: int,
    timeout: float,
    workers: str = "auto",
) -> List[Path]:
    """Run ``targets``, at most ``parallel`` at a time; every one yields a result file."""
    progress = Progress()
    out_dir.mkdir(parents=True, exist_ok=True)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = [
            pool.submit(run_target, t, out_dir, log_dir, timeout, workers, progress)
            for t in targets
        ]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:
            # Stop what runs now; each target's own finally then tears it down (halt/destroy).
            _INTERRUPTED.set()
            for future in futures:
                future.cancel()
            with _RUNNING_LOCK:
                running = list(_RUNNING)
            for proc in running:
                _kill_tree(proc)
            _kill_children("vagrant")
            pool.shutdown(wait=True)
            raise


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="udscompat-conformance vm", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "targets", nargs="*", help="vagrant machines, ssh://..., or local (default: linux)"
    )
    parser.add_argument(
        "--target",
        dest="more_targets",
        action="append",
        default=[],
        metavar="TARGET",
        help="one more target (ssh://user@host[:port], local, a machine); repeatable",
    )
    parser.add_argument("--parallel", type=int, default=1, help="targets at once (default 1)")
    parser.add_argument("--provider", help="Vagrant provider (libvirt, virtualbox)")
    parser.add_argument("--keep", action="store_true", help="leave Vagrant machines running")
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds per stage (default 3600)"
    )
    parser.add_argument("--out-dir", default="report/results", help="where result files go")
    parser.add_argument("--log-dir", default="report/logs", help="one log file per target")
    parser.add_argument(
        "-n", dest="workers", default="auto", help="pytest-xdist workers on the target"
    )
    args = parser.parse_args(argv)
    specs = [*args.targets, *args.more_targets] or ["linux"]
    try:
        targets = [parse_target(t, args.provider, args.keep) for t in specs]
    except ValueError as exc:
        parser.error(str(exc))
    try:
        paths = run_targets(
            targets,
            Path(args.out_dir),
            Path(args.log_dir),
            parallel=args.parallel,
            timeout=args.timeout,
            workers=args.workers,
        )
    except KeyboardInterrupt:
        print("udscompat-conformance vm: interrupted; what this run started is torn down")
        return 130
    failed = [p for p in paths if json.loads(p.read_text()).get("run", {}).get("stage")]
    return 1 if failed else 0
