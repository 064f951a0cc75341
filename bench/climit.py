"""The physical limit for bench/run.py: its round trips in C (bench/limit.c), without Python.

``measure(n, repeats)`` compiles limit.c with the C compiler (``$CC``, else
``cc``) into a temporary directory and runs it; it returns seconds per round
trip by case name, or ``{}`` with a reason where no compiler works.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Tuple

SOURCE = Path(__file__).resolve().parent / "limit.c"


def measure(n: int, repeats: int) -> Tuple[Dict[str, float], str]:
    """Seconds per round trip for each case of limit.c, and a note on how it went."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        return {}, f"no C compiler ({compiler}): the C limit is not measured"
    with tempfile.TemporaryDirectory(prefix="udsc-limit-") as tmp:
        binary = os.path.join(tmp, "limit")
        build = subprocess.run(
            [compiler, "-O2", "-o", binary, str(SOURCE)], capture_output=True, text=True
        )
        if build.returncode != 0:
            return {}, f"limit.c did not compile: {build.stderr.strip()[-300:]}"
        run = subprocess.run(
            [binary, str(n), str(repeats)], capture_output=True, text=True, timeout=600
        )
    if run.returncode != 0:
        return {}, f"limit.c failed: {run.stderr.strip()[-300:]}"
    results = {}
    for line in run.stdout.splitlines():
        name, seconds = line.split()
        results[name] = float(seconds)
    return results, "C limit: bench/limit.c, same round trips without Python"
