"""Facts about the machine a run happens on, for the result file's ``host`` object."""

from __future__ import annotations

import datetime
import functools
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Dict, Optional

import udscompat

_PROJECT = Path(__file__).resolve().parent.parent


def host_facts() -> Dict[str, Any]:
    """OS, kernel, libc, Python and udscompat, as this process sees them."""
    uname = platform.uname()
    libc_name, libc_version = platform.libc_ver()
    return {
        "os": uname.system,
        "release": uname.release,
        "version": uname.version,
        "machine": uname.machine,
        "kernel": f"{uname.system} {uname.release}",
        "libc": f"{libc_name} {libc_version}".strip() or None,
        "python_implementation": platform.python_implementation(),
        "python_version": platform.python_version(),
        "udscompat_version": udscompat.__version__,
        "git_commit": git_commit(),
    }


@functools.cache
def git_commit() -> Optional[str]:
    """The project's commit: ``UDSCOMPAT_GIT_COMMIT``, else ``git`` in a checkout, else None.

    Read once per process (the runner asks for every target)."""
    forced = os.environ.get("UDSCOMPAT_GIT_COMMIT")
    if forced:
        return forced
    if not (_PROJECT / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(_PROJECT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def utc_time(timestamp: float) -> str:
    """``timestamp`` as the result files write times: ISO 8601, UTC, whole seconds."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
