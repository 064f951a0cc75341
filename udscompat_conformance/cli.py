"""``udscompat-conformance`` (or ``python -m udscompat_conformance``): run the suite, build reports.

udscompat-conformance run [--out FILE] [-n N] [--seqpacket native|emulated|auto]
                          [--timeout S] [--report DIR] [-- pytest args]
udscompat-conformance report RESULTS... [--out DIR] [--claims FILE...] [--readme FILE]
udscompat-conformance vm [TARGET...] [--parallel N] [--provider P] [--keep] [--timeout S]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path
from typing import List, Optional

CASES = Path(__file__).resolve().parent / "cases"
DEFAULT_TIMEOUT = 60.0


def default_result_path() -> Path:
    """``report/results/<os>-<release>-<machine>.json`` under the current directory."""
    uname = platform.uname()
    name = f"{uname.system}-{uname.release}-{uname.machine}".lower().replace("/", "_")
    forced = os.environ.get("UDSCOMPAT_SEQPACKET", "auto")
    if forced not in ("", "auto"):
        name += f"-seqpacket-{forced}"
    standin = os.environ.get("UDSCOMPAT_STANDIN")
    if standin:
        name += "-standin-" + standin.replace(",", "-")
    return Path("report") / "results" / f"{name}.json"


def pytest_args(args: argparse.Namespace, out: Path) -> List[str]:
    """The pytest command line for one suite run."""
    argv = [
        str(CASES),
        "-p",
        "udscompat_conformance.plugin",
        "-p",
        "no:cacheprovider",
        f"--rootdir={CASES}",
        "-c",
        str(CASES / "pytest.ini"),
        f"--udscompat-results={out}",
        f"--timeout={args.timeout}",
        "-q",
    ]
    if args.workers not in (None, "0"):
        argv += ["-n", args.workers]
    return argv + args.pytest_args


def run_under_standin(args: argparse.Namespace, argv: List[str]) -> int:
    """Run this same command again in a child process with the kernel stand-in preloaded."""
    import subprocess

    from udscompat_conformance.standin import compile_standin, standin_environment

    try:
        library = compile_standin()
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"udscompat-conformance: cannot build the kernel stand-in: {exc}", file=sys.stderr)
        return 2
    env = standin_environment(args.standin, library)
    if "--standin" in argv:
        i = argv.index("--standin")
        child = argv[:i] + argv[i + 2 :]
    else:
        child = [a for a in argv if not a.startswith("--standin=")]
    return subprocess.run(
        [sys.executable, "-m", "udscompat_conformance", *child], env=env
    ).returncode


def run(args: argparse.Namespace) -> int:
    import pytest

    if args.seqpacket:
        os.environ["UDSCOMPAT_SEQPACKET"] = args.seqpacket  # read by udscompat and the workers
    out = Path(args.out) if args.out else default_result_path()
    code = pytest.main(pytest_args(args, out))
    if not out.exists():
        print(f"udscompat-conformance: no result file was written ({out})", file=sys.stderr)
        return 2
    print(f"udscompat-conformance: results in {out}")
    if args.report:
        from udscompat_conformance import report

        # The report covers every published result next to this run's own.
        published = Path(args.report) / "results"
        inputs = [str(published)] if published.is_dir() else []
        if out.resolve().parent != published.resolve():
            inputs.append(str(out))
        rendered = report.main([*inputs, "--out", args.report])
        if rendered != 0:
            return rendered
    # Failed cases are recorded in the file; only a run that could not happen is an error.
    return 0 if code in (0, 1) else int(code)


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from udscompat_conformance import report

        return report.main(argv[1:])
    if argv[:1] == ["vm"]:
        from udscompat_conformance import vm

        return vm.main(argv[1:])
    extra: List[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, extra = argv[:cut], argv[cut + 1 :]
    parser = argparse.ArgumentParser(
        prog="udscompat-conformance", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run_parser = sub.add_parser("run", help="run the conformance suite on this machine")
    run_parser.add_argument(
        "--out", help="result file (default report/results/<os>-<release>-<machine>.json)"
    )
    run_parser.add_argument(
        "-n", dest="workers", default=None, help="pytest-xdist workers (a number or auto)"
    )
    run_parser.add_argument(
        "--seqpacket",
        choices=("native", "emulated", "auto"),
        help="force the seqpacket implementation",
    )
    run_parser.add_argument(
        "--timeout", type=float, default=DEFAULT_TIMEOUT, help="per-case timeout in seconds"
    )
    run_parser.add_argument(
        "--report",
        metavar="DIR",
        help="then render the report into DIR from DIR/results/*.json and this run's result",
    )
    run_parser.add_argument(
        "--standin",
        metavar="FEATURES",
        help="run under the LD_PRELOAD kernel stand-in (Linux): a comma-separated subset of "
        "noseqpacket,noabstract,nocloexec",
    )
    sub.add_parser(
        "vm",
        help="run the suite on Vagrant machines, ssh:// hosts or local (see: vm --help)",
        add_help=False,
    )
    sub.add_parser(
        "report",
        help="merge result files into the feature matrix (see: report --help)",
        add_help=False,
    )
    args = parser.parse_args(argv)
    args.pytest_args = extra
    if args.standin:
        return run_under_standin(args, list(sys.argv[1:] if argv is None else argv))
    return run(args)
