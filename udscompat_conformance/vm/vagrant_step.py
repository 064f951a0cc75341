"""One python-vagrant call in a process of its own, so a timeout can end exactly what it started.

    python -m udscompat_conformance.vm.vagrant_step ROOT MACHINE up|halt|destroy
                                                    [--provider P] [--conf-out FILE]

python-vagrant sets no timeout and keeps no handle on the ``vagrant`` processes it starts.
The runner starts this module in a new session instead; vagrant (and what vagrant starts in
the same group) then lives in that process group, which the runner ends on a timeout or
Ctrl-C without touching any other vagrant on the machine.  Vagrant's output is inherited
(the runner points it at the target's log).  After ``up``, the machine's ssh settings
(``Vagrant.conf()``: HostName, Port, User, IdentityFile) are written to ``--conf-out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, List, Optional

ACTIONS = ("up", "halt", "destroy")


def command(
    root: Path, machine: str, action: str, provider: Optional[str], conf_out: Path
) -> List[str]:
    """The argv that runs ``action`` on ``machine`` of the Vagrantfile in ``root``."""
    argv = [sys.executable, "-m", __name__, str(root), machine, action, "--conf-out", str(conf_out)]
    return argv + (["--provider", provider] if provider else [])


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udscompat_conformance.vm.vagrant_step")
    parser.add_argument("root", help="the directory holding the Vagrantfile")
    parser.add_argument("machine")
    parser.add_argument("action", choices=ACTIONS)
    parser.add_argument("--provider")
    parser.add_argument("--conf-out", type=Path)
    args = parser.parse_args(argv)
    from udscompat_conformance.vm.targets import python_vagrant_problem

    problem = python_vagrant_problem()
    if problem:
        print(f"udscompat-conformance vm: {problem}", file=sys.stderr)
        return 2
    import vagrant

    # python-vagrant's env= replaces the environment: start from ours.  quiet_*=False: vagrant
    # writes to our stdout and stderr, which the runner sends to the target's log.
    driver: Any = vagrant.Vagrant(  # type: ignore[no-untyped-call]
        args.root, env=dict(os.environ), quiet_stdout=False, quiet_stderr=False
    )
    if args.action == "up":
        driver.up(vm_name=args.machine, provider=args.provider)
        conf = driver.conf(vm_name=args.machine)
        if args.conf_out:
            args.conf_out.write_text(json.dumps(conf))
    elif args.action == "halt":
        driver.halt(vm_name=args.machine)
    else:
        driver.destroy(vm_name=args.machine)
    return 0


if __name__ == "__main__":
    sys.exit(main())
