"""Which implementation runs the innermost system calls: the compiled accelerator or Python.

Chosen once, at import, from the environment variable ``UDSCOMPAT_SPEEDUPS``:

* unset or empty -- the compiled ``udscompat._speedups`` where it was built
  and imports, else pure Python (no compiler at install time, PyPy, a
  platform it does not build on);
* ``0`` -- pure Python, even where the extension exists;
* ``1`` -- the compiled extension, and ``ImportError`` at ``import udscompat``
  if it is missing, so a test run or a deployment that counts on it fails loudly.

Both implementations keep the same contract and run the same tests.  The
compiled one adds a guarantee the pure-Python one cannot give: a Python
signal handler that raises never runs while received descriptors exist only
inside the call (see ``udscompat/_speedups.c``).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional, Tuple

from udscompat._errors import ControlTruncatedError
from udscompat._platform import backend

__all__ = [
    "ENV",
    "FD_ROOM",
    "IMPLEMENTATION",
    "REASON",
    "choose",
    "configure",
    "speedups",
    "truncated_error",
]

ENV = "UDSCOMPAT_SPEEDUPS"


def choose(value: str) -> Tuple[Optional[ModuleType], str]:
    """The compiled module (or None for pure Python) for a value of ``UDSCOMPAT_SPEEDUPS``, and why.

    Raises:
        ValueError: a value other than ``""``, ``"0"`` or ``"1"``.
        ImportError: ``"1"`` and the extension does not import.
    """
    wanted = value.strip()
    if wanted not in ("", "0", "1"):
        raise ValueError(f"{ENV}={value!r}: expected 1 (compiled), 0 (pure Python) or unset")
    if wanted == "0":
        return None, f"pure Python ({ENV}=0)"
    try:
        compiled = importlib.import_module("udscompat._speedups")
    except ImportError as exc:
        if wanted == "1":
            raise ImportError(
                f"{ENV}=1 but the compiled accelerator udscompat._speedups does not import "
                f"({exc}); install udscompat where a C compiler works, or unset {ENV}"
            ) from exc
        return None, f"pure Python (the compiled accelerator is not installed: {exc})"
    return compiled, "compiled udscompat._speedups (one system call per send or receive)"


#: Room for the most descriptors the kernel puts in one message, so the kernel itself never
#: truncates (CPython's recv_fds uses CMSG_LEN and loses fds on FreeBSD, #111675; macOS leaks
#: what does not fit, #80931).  Where the cap is unknown, room for 256.
FD_ROOM = backend.MAX_FDS_PER_MESSAGE or 256


def truncated_error(
    reason: str, data: Optional[bytes], closed: int, maxfds: int
) -> ControlTruncatedError:
    """The error for a receive whose descriptors were all closed, by ``reason``.

    ``"ctrunc"``: the kernel set MSG_CTRUNC; ``"excess"``: more than ``maxfds``
    arrived; ``"emsgsize"``: recvmsg failed with EMSGSIZE (OpenBSD, DragonFly).
    Both implementations raise what this builds.
    """
    if reason == "excess":
        message = (
            f"{closed} descriptors arrived but at most {maxfds} were asked for; all were closed"
        )
    elif reason == "ctrunc":
        # The buffer had room for the kernel's own per-message cap, so the usual cause is a
        # full descriptor table in this process.
        message = (
            f"control data truncated (MSG_CTRUNC): {closed} received descriptors closed; the "
            "kernel dropped the rest (is this process out of descriptors?)"
        )
    else:
        message = (
            "recvmsg failed with EMSGSIZE: the kernel discarded the descriptors "
            "(control data did not fit)"
        )
    return ControlTruncatedError(message, data or b"", closed)


#: The compiled module in use, or None where the pure-Python path runs.
speedups, REASON = choose(os.environ.get(ENV, ""))
#: ``"compiled"`` or ``"pure-python"``.
IMPLEMENTATION = "compiled" if speedups is not None else "pure-python"


def configure(module: ModuleType) -> ModuleType:
    """Give the compiled module this platform's facts and the shared error builder."""
    module.configure(
        FD_ROOM,
        backend.MESSAGE_MARKER[2] if backend.MESSAGE_MARKER is not None else None,
        backend.FD_CARRYING_CMSG_TYPES,
        truncated_error,
    )
    return module


if speedups is not None:
    configure(speedups)
