"""Runs on the target: a command under a deadline, tied to the connection that started it.

    python3 -m udscompat_conformance.vm.guard SECONDS COMMAND [ARG...]

The command runs in a process group of its own.  The guard ends that whole group (SIGTERM,
then SIGKILL) when the deadline passes (exit status 124, like ``timeout(1)``, which not every
target has), when its own standard input reaches end-of-file (the runner closed it, or the ssh
connection is gone), or when the guard itself gets SIGTERM, SIGINT or SIGHUP.  Otherwise it
exits with the command's status.  Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, List, Optional

TIMED_OUT = 124
#: Seconds between SIGTERM and SIGKILL.
TERM_GRACE = 5.0


def _end_group(child: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if child.poll() is not None:
            try:  # the leader is gone; stragglers of its group go now
                os.killpg(child.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + TERM_GRACE
        while time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.05)


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print(__doc__.splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        seconds = float(args[0])
    except ValueError:
        print(f"guard: SECONDS must be a number, not {args[0]!r}", file=sys.stderr)
        return 2
    stop = threading.Event()
    reason: List[str] = []

    def stop_because(why: str) -> None:
        if not stop.is_set():
            reason.append(why)
            stop.set()

    def on_signal(signum: int, _frame: Any) -> None:
        stop_because(f"signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    child = subprocess.Popen(args[1:], stdin=subprocess.DEVNULL, start_new_session=True)

    def watch_stdin() -> None:
        try:
            while os.read(0, 4096):
                pass
        except OSError:
            pass
        stop_because("its connection closed")

    threading.Thread(target=watch_stdin, daemon=True).start()
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        try:
            return child.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                stop_because(f"timed out after {seconds:g} s")
    if child.poll() is not None:  # it finished as we were told to stop
        return child.returncode
    why = reason[0]
    _end_group(child)
    print(f"guard: {why}: ended process group {child.pid}", file=sys.stderr, flush=True)
    return TIMED_OUT


if __name__ == "__main__":
    sys.exit(main())
