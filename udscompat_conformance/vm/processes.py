"""The processes a runner starts: each in a session of its own, ended by its process group.

Nothing here looks for processes by name or command line: a parallel run on the same host
(another target's ssh, another user's vagrant) is never touched.  A command that outlives its
timeout is asked to stop (its standard input closes, which ends a remote ``guard``; then
SIGTERM to its group), then killed (SIGKILL to its group).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import IO, Dict, List, Optional, Sequence, Set

#: The log tail a result stub keeps.
LOG_TAIL = 4000
#: After a timeout: how long a guarded command may take to stop by itself once its stdin is
#: closed, then how long any command gets after SIGTERM, before SIGKILL.
CLOSE_GRACE = 10.0
TERM_GRACE = 5.0

_RUNNING: Set[subprocess.Popen[bytes]] = set()
_RUNNING_LOCK = threading.Lock()
#: Set once the user interrupted the run: stages then stop instead of cleaning up remotely.
INTERRUPTED = threading.Event()


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
        return self.path.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]


def run(
    argv: Sequence[str],
    log: Log,
    timeout: float,
    *,
    stdin: Optional[bytes] = None,
    output_to_log: bool = False,
    cwd: Optional[str] = None,
    env: Optional[Dict[str, str]] = None,
    teardown: bool = False,
    guarded: bool = False,
) -> bytes:
    """Run ``argv`` in a new session; stderr goes to the log; returns stdout.

    With ``stdin`` the bytes are written and the pipe closed; without, the pipe stays open
    until the command ends (a remote ``guard`` takes its closing as "stop now").  With
    ``output_to_log`` stdout goes to the log as it comes and ``b""`` is returned.  Once the
    run is interrupted only ``teardown`` commands start.  A ``guarded`` command (one that
    runs a guard) gets time to stop by itself once its stdin is closed (see ``end``).

    Raises:
        KeyboardInterrupt: the run was interrupted (and this is not a teardown command).
        subprocess.TimeoutExpired: after ``timeout`` seconds (the process group is ended).
        subprocess.CalledProcessError: on a non-zero exit status (stdout and stderr attached).
    """
    if INTERRUPTED.is_set() and not teardown:
        raise KeyboardInterrupt
    with contextlib.ExitStack() as files:
        out: IO[bytes]
        err: IO[bytes]
        if output_to_log:
            out = err = files.enter_context(log.path.open("ab"))
        else:
            out = files.enter_context(tempfile.TemporaryFile())
            err = files.enter_context(tempfile.TemporaryFile())
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=out,
            stderr=err,
            cwd=cwd,
            env=env,
            start_new_session=True,  # its own process group: what a timeout ends
        )
        with _RUNNING_LOCK:
            _RUNNING.add(proc)
        feeder = _feed(proc, stdin)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            end(proc, close_grace=CLOSE_GRACE if guarded else 0.0)
            raise
        finally:
            with _RUNNING_LOCK:
                _RUNNING.discard(proc)
            if feeder is not None:
                feeder.join(5)
            _close_stdin(proc)
        output = errors = b""
        if not output_to_log:
            out.seek(0)
            output = out.read()
            err.seek(0)
            errors = err.read()
            log.write(errors.decode(errors="replace"))
    if proc.returncode != 0:
        if output:
            log.write(output.decode(errors="replace")[-LOG_TAIL:])
        raise subprocess.CalledProcessError(proc.returncode, list(argv), output, errors)
    return output


def _feed(proc: subprocess.Popen[bytes], data: Optional[bytes]) -> Optional[threading.Thread]:
    """Write ``data`` to the command's stdin in a thread, then close it (a slow reader cannot
    hold the caller past its timeout)."""
    if data is None:
        return None

    def feed() -> None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(data)
        except (BrokenPipeError, OSError, ValueError):
            pass
        finally:
            _close_stdin(proc)

    thread = threading.Thread(target=feed, daemon=True)
    thread.start()
    return thread


def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def end(proc: subprocess.Popen[bytes], close_grace: float = CLOSE_GRACE) -> None:
    """Stop a command this module started, and everything in its process group.

    Its stdin closes first (a remote guard then ends the suite it runs on the target, and ssh
    exits), then the group gets SIGTERM, then SIGKILL.  The group is signalled only while its
    leader is unreaped, so its id cannot have been reused; processes in other groups (another
    target, another run) are never signalled.
    """
    _close_stdin(proc)
    steps = ((None, close_grace), (signal.SIGTERM, TERM_GRACE), (signal.SIGKILL, 30.0))
    for sig, grace in steps:
        if sig is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def end_all() -> List[int]:
    """End every command still running (Ctrl-C); returns their process group ids."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    threads = [threading.Thread(target=end, args=(proc,)) for proc in running]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return [proc.pid for proc in running]
