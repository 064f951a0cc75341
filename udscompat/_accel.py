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
inside the call (see ``udscompat/_speedups.c``).  ``udscompat._io`` plugs the
chosen one in as its innermost wrappers and configures it.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional, Tuple

__all__ = ["ENV", "IMPLEMENTATION", "REASON", "choose", "speedups"]

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


#: The compiled module in use, or None where the pure-Python path runs.
speedups, REASON = choose(os.environ.get(ENV, ""))
#: ``"compiled"`` or ``"pure-python"``.
IMPLEMENTATION = "compiled" if speedups is not None else "pure-python"
