"""Where the suite runs, and how a command reaches it.

* ``local``: this machine;
* ``ssh://user@host[:port][?key=FILE&python=PATH&known_hosts=FILE]``: a host the user owns (a
  Mac, a BSD box).  Its host key is checked against the user's known_hosts (or the
  ``known_hosts`` file given), with ``StrictHostKeyChecking=accept-new``: a host seen for the
  first time is remembered, a changed key is refused;
* a machine of ``vagrant/Vagrantfile`` (``linux``, ``freebsd``...): brought up by python-vagrant
  in a child process (``vagrant_step``), reached over plain ssh, halted and destroyed
  afterwards.  These guests are created for one run and thrown away, with a new host key on a
  private network each time, so their host keys are not checked (and not recorded).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import sys
import tempfile
import threading
import urllib.parse
from pathlib import Path
from typing import Dict, List, Optional, Set

from udscompat_conformance.vm import processes
from udscompat_conformance.vm.processes import Log

VAGRANT_MACHINES = ("linux", "freebsd", "openbsd", "netbsd", "dragonfly", "omnios")
OS_OF_MACHINE = {
    "linux": "Linux",
    "freebsd": "FreeBSD",
    "openbsd": "OpenBSD",
    "netbsd": "NetBSD",
    "dragonfly": "DragonFly",
    "omnios": "SunOS",
}
_SSH_COMMON = ["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=20"]
#: User-given hosts: known_hosts is checked; a first contact is remembered, a change refused.
USER_HOST_KEYS = ["-o", "StrictHostKeyChecking=accept-new"]
#: Throw-away Vagrant guests only: a new key on every `up`, on a private network.
THROWAWAY_HOST_KEYS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
]  # fmt: skip
VM_EXTRA_HINT = "pip install 'udscompat[vm]'"
#: The directory holding the udscompat_conformance package (a checkout or site-packages).
_PACKAGES_PARENT = Path(__file__).resolve().parent.parent.parent


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
        # Always through sh -c: ssh runs the login shell, which is csh on some BSDs.
        if self.ssh is None:
            return ["sh", "-c", command]
        return [*self.ssh, "sh -c " + shlex.quote(command)]

    def run(
        self,
        command: str,
        log: Log,
        timeout: float,
        stdin: Optional[bytes] = None,
        *,
        guarded: bool = False,
    ) -> bytes:
        """Run ``command``; its stderr goes to the log; returns stdout.

        Raises:
            subprocess.TimeoutExpired / subprocess.CalledProcessError
        """
        log.write(f"$ {command}\n")
        return processes.run(self.argv(command), log, timeout, stdin=stdin, guarded=guarded)


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
    """``ssh://user@host[:port][?key=FILE&python=PATH&known_hosts=FILE]``."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme != "ssh" or not parsed.hostname:
            raise ValueError(f"{url!r}: expected ssh://user@host[:port]")
        query = urllib.parse.parse_qs(parsed.query)
        unknown = sorted(set(query) - {"key", "python", "known_hosts"})
        if unknown:
            raise ValueError(f"{url!r}: unknown parameter(s) {', '.join(unknown)}")
        self.user = parsed.username
        self.host = parsed.hostname
        self.port = parsed.port or 22
        self.key = query.get("key", [None])[0]
        self.python = query.get("python", ["python3"])[0]
        self.known_hosts = query.get("known_hosts", [None])[0]
        self.name = f"ssh-{self.user + '@' if self.user else ''}{self.host}-{self.port}"
        if self.python != "python3":  # several interpreters on one host are several targets
            self.name += "-" + re.sub(r"[^A-Za-z0-9.]+", "_", self.python).strip("_")

    def ssh_argv(self) -> List[str]:
        argv = ["ssh", *_SSH_COMMON, *USER_HOST_KEYS, "-p", str(self.port)]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key:
            argv += ["-i", self.key, "-o", "IdentitiesOnly=yes"]
        return [*argv, f"{self.user}@{self.host}" if self.user else self.host]

    def up(self, log: Log, timeout: float) -> Remote:
        return Remote(self.ssh_argv(), self.python)


def vagrant_dir() -> Path:
    """The Vagrantfile's directory: ``UDSCOMPAT_VAGRANT_DIR``, ``./vagrant``, or the checkout's."""
    forced = os.environ.get("UDSCOMPAT_VAGRANT_DIR")
    if forced:
        return Path(forced)
    here = Path.cwd() / "vagrant"
    if (here / "Vagrantfile").exists():
        return here
    return _PACKAGES_PARENT / "vagrant"


def python_vagrant_problem() -> Optional[str]:
    """Why python-vagrant cannot be used here, or None.

    A checkout's ``vagrant/`` folder (no ``__init__.py``) imports as an empty namespace
    package when python-vagrant is missing: that is "not installed" too.
    """
    spec = importlib.util.find_spec("vagrant")
    if spec is None or spec.origin in (None, "namespace") or not spec.has_location:
        return f"python-vagrant is not installed; install the 'vm' extra: {VM_EXTRA_HINT}"
    return None


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
        self._started = False

    def _step(
        self, action: str, log: Log, timeout: float, *, teardown: bool = False
    ) -> Dict[str, str]:
        """One python-vagrant call in a child process of its own (see ``vagrant_step``)."""
        from udscompat_conformance.vm import vagrant_step

        with tempfile.TemporaryDirectory(prefix="udscompat-vagrant-") as scratch:
            conf = Path(scratch) / "conf.json"
            argv = vagrant_step.command(vagrant_dir(), self.name, action, self.provider, conf)
            log.write(f"$ vagrant {action} {self.name}\n")
            # Started from a scratch directory, so the checkout's vagrant/ folder cannot
            # shadow python-vagrant; the suite's own packages stay importable.
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(_PACKAGES_PARENT), env.get("PYTHONPATH", "")) if p
            )
            processes.run(
                argv, log, timeout, output_to_log=True, cwd=scratch, env=env, teardown=teardown
            )
            if conf.exists():
                loaded: Dict[str, str] = json.loads(conf.read_text())
                return loaded
        return {}

    def up(self, log: Log, timeout: float) -> Remote:
        problem = python_vagrant_problem()
        if problem:
            from udscompat_conformance.vm.runner import StageError

            raise StageError("up", problem)
        # Two first `up`s of one newly added box race while uploading it into the provider
        # (vm-feasibility.md): the first `up` of each box runs alone.
        box = os.environ.get(f"UDSCOMPAT_BOX_{self.name.upper()}", self.name)
        with _FIRST_UP_LOCK:
            lock = _FIRST_UP_BY_BOX.setdefault(box, threading.Lock())
        self._started = True
        with lock:
            first = box not in _WARMED_BOXES
            if first:
                conf = self._step("up", log, timeout)
                _WARMED_BOXES.add(box)
        if not first:
            conf = self._step("up", log, timeout)
        ssh = [
            "ssh", *_SSH_COMMON, *THROWAWAY_HOST_KEYS,
            "-p", str(conf["Port"]),
            "-i", conf["IdentityFile"],
            "-o", "IdentitiesOnly=yes",
            f"{conf['User']}@{conf['HostName']}",
        ]  # fmt: skip
        return Remote(ssh, "python3", as_root=True)

    def down(self, log: Log, timeout: float) -> None:
        if not self._started or self.keep:
            return
        for action in ("halt", "destroy"):
            try:
                self._step(action, log, timeout, teardown=True)
            except Exception as exc:  # destroy still runs after a failed halt
                log.write(f"vagrant {action} failed: {type(exc).__name__}: {exc}")


def parse_target(spec: str, provider: Optional[str], keep: bool) -> Target:
    if spec == "local":
        return LocalTarget()
    if spec.startswith("ssh://"):
        return SshTarget(spec)
    return VagrantTarget(spec, provider, keep)
