"""The command line of ``udscompat-conformance vm``.

    udscompat-conformance vm [TARGET...] [--target TARGET] [--parallel N] [--provider P]
                             [--keep] [--timeout S] [--out-dir DIR] [--log-dir DIR] [-n N]
                             [-- PYTEST_ARGS]

TARGET is ``local``, ``ssh://user@host[:port][?key=FILE&python=PATH&known_hosts=FILE]`` or a
machine of ``vagrant/Vagrantfile`` (``linux``, ``freebsd``, ``openbsd``, ``netbsd``,
``dragonfly``, ``omnios``); see ``targets`` for how each is reached and ``runner`` for the
stages.  Arguments after ``--`` go to the suite's pytest on every target (``-- -k seqpacket``).
Exit status: 0 when every target gave a result, 1 when one failed (its result stub
says where), 2 for bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from udscompat_conformance.vm.runner import run_targets
from udscompat_conformance.vm.targets import VagrantTarget, parse_target, python_vagrant_problem


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="udscompat-conformance vm",
        description="run the suite on Vagrant machines, ssh:// hosts or local, and bring the "
        "result files back",
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
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, pytest_args = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    specs = [*args.targets, *args.more_targets] or ["linux"]
    try:
        targets = [parse_target(t, args.provider, args.keep) for t in specs]
    except ValueError as exc:
        parser.error(str(exc))
    problem = python_vagrant_problem()
    if problem and any(isinstance(t, VagrantTarget) for t in targets):
        parser.error(problem)
    try:
        paths = run_targets(
            targets,
            Path(args.out_dir),
            Path(args.log_dir),
            parallel=args.parallel,
            timeout=args.timeout,
            workers=args.workers,
            pytest_args=pytest_args,
        )
    except KeyboardInterrupt:
        print("udscompat-conformance vm: interrupted; what this run started is torn down")
        return 130
    failed = [p for p in paths if json.loads(p.read_text()).get("run", {}).get("stage")]
    return 1 if failed else 0
