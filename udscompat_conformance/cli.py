"""``udscompat-conformance`` (or ``python -m udscompat_conformance``): run the suite, build reports.

udscompat-conformance run [--out FILE] [-n N] [--seqpacket native|emulated|auto]
                          [--timeout S] [--report DIR [--readme FILE]] [-- pytest args]
udscompat-conformance run --kernel netbsd-rump|netbsd-rump-linux|gvisor [--out FILE]
                          [--timeout S] [--check COMMITTED] [--report DIR [--readme FILE]]
                          [-- pytest args]
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

from udscompat_conformance.standin import FEATURES as STANDIN_FEATURES

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
        # No case is a property test; hypothesis's plugin, where installed, imports
        # hypothesis at the session's end anyway (about 1.5 s of CPU per run).
        "-p",
        "no:hypothesispytest",
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


def run_kernel(args: argparse.Namespace) -> int:
    """A column from a kernel that cannot boot here (see ``kernels/columns.py``)."""
    from udscompat_conformance.kernels import columns
    from udscompat_conformance.plugin import write_atomically

    try:
        result = columns.run_kernel(args.kernel, args.timeout_given, args.pytest_args)
    except columns.KernelError as exc:
        print(f"udscompat-conformance: --kernel {args.kernel}: {exc}", file=sys.stderr)
        return 2
    out = (
        Path(args.out)
        if args.out
        else Path("report") / "results" / columns.default_result_name(args.kernel, result)
    )
    write_atomically(out, result)
    print(f"udscompat-conformance: {args.kernel}: {result['summary']}; results in {out}")
    if args.check:
        import json

        committed = json.loads(Path(args.check).read_text(encoding="utf-8"))
        changed = columns.differences(committed, result)
        for line in changed:
            print(f"udscompat-conformance: differs from {args.check}: {line}", file=sys.stderr)
        if changed:
            return 1
        print(f"udscompat-conformance: same outcomes and values as {args.check}")
    return render_report(args, out)


def render_report(args: argparse.Namespace, out: Path) -> int:
    """With ``--report DIR``: re-render DIR from its published results and ``out``, and with
    ``--readme FILE`` the matrix block of FILE from the same results, in the same write."""
    if not args.report:
        return 0
    from udscompat_conformance import report

    published = Path(args.report) / "results"
    inputs = [str(published)] if published.is_dir() else []
    if out.resolve().parent != published.resolve():
        inputs.append(str(out))
    readme = ["--readme", args.readme] if args.readme else []
    return report.main([*inputs, "--out", args.report, *readme])


def run(args: argparse.Namespace) -> int:
    import pytest

    if args.kernel:
        return run_kernel(args)
    if args.seqpacket:
        os.environ["UDSCOMPAT_SEQPACKET"] = args.seqpacket  # read by udscompat and the workers
    out = Path(args.out) if args.out else default_result_path()
    code = pytest.main(pytest_args(args, out))
    if not out.exists():
        print(f"udscompat-conformance: no result file was written ({out})", file=sys.stderr)
        return 2
    print(f"udscompat-conformance: results in {out}")
    # The report covers every published result next to this run's own.
    rendered = render_report(args, out)
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
        "--timeout",
        type=float,
        default=None,
        help=f"per-case timeout in seconds ({DEFAULT_TIMEOUT:g})",
    )
    run_parser.add_argument(
        "--report",
        metavar="DIR",
        help="then render the report into DIR from DIR/results/*.json and this run's result",
    )
    run_parser.add_argument(
        "--readme",
        metavar="FILE",
        help="with --report: also re-render the matrix block of FILE (the README's table), so "
        "FILE and DIR describe the same results",
    )
    run_parser.add_argument(
        "--standin",
        metavar="FEATURES",
        help="run under the LD_PRELOAD kernel stand-in (Linux): a comma-separated subset of "
        f"{','.join(STANDIN_FEATURES)} (see udscompat_conformance/standin/kernel_standin.c)",
    )
    run_parser.add_argument(
        "--kernel",
        choices=("netbsd-rump", "netbsd-rump-linux", "gvisor"),
        help="run on a kernel that cannot boot here: NetBSD as a rump kernel through its native "
        "ABI or through compat_linux, or gVisor (see udscompat_conformance/kernels/)",
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
    run_parser.add_argument(
        "--check",
        metavar="COMMITTED",
        help="with --kernel: compare this run with a committed result file; exit 1 and list "
        "every case whose outcome or value differs",
    )
    args = parser.parse_args(argv)
    args.pytest_args = extra
    if args.check and not args.kernel:
        parser.error("--check compares a --kernel run with a committed result file")
    if args.readme and not args.report:
        parser.error("--readme re-renders a README's table with the report: give --report DIR")
    args.timeout_given = args.timeout
    if args.timeout is None:
        args.timeout = DEFAULT_TIMEOUT
    if args.kernel and (args.standin or args.seqpacket or args.workers not in (None, "0")):
        parser.error("--kernel runs its own way: not with --standin, --seqpacket or -n")
    if args.standin:  # the child gets the same command, pytest's arguments after "--" too
        return run_under_standin(args, argv + (["--", *extra] if extra else []))
    return run(args)
