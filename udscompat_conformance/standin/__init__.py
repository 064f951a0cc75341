"""The kernel stand-in: an LD_PRELOAD interposer, compiled on demand (see kernel_standin.c)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional

SOURCE = Path(__file__).resolve().parent / "kernel_standin.c"
FEATURES = (
    "noseqpacket",
    "noabstract",
    "nocloexec",
    "peercredself",
    "dgramrefused",
    "nosockdiag",
    "emptyrights",
    "partialstream",
    "linuxoptsunknown",
    "pathbindfails",
)
#: gVisor's answers that break udscompat's assumptions (see kernel_standin.c).
GVISOR = "peercredself,dgramrefused,nosockdiag,emptyrights,partialstream"


def compile_standin(cache_dir: Optional[Path] = None) -> Path:
    """Build the interposer with the system C compiler, cached by the source's hash.

    Raises:
        FileNotFoundError: there is no C compiler (``cc``/``gcc``/``clang``).
        subprocess.CalledProcessError: the compiler failed.
    """
    compiler = next((c for c in ("cc", "gcc", "clang") if shutil.which(c)), None)
    if compiler is None:
        raise FileNotFoundError("no C compiler (cc, gcc or clang) to build the kernel stand-in")
    digest = hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:16]
    directory = cache_dir or Path(tempfile.gettempdir()) / "udscompat-standin"
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"kernel_standin-{digest}.so"
    if not target.exists():
        partial = directory / f".{target.name}.{os.getpid()}"
        subprocess.run(
            [
                compiler,
                "-shared",
                "-fPIC",
                "-O2",
                "-Wall",
                "-Werror",
                "-o",
                str(partial),
                str(SOURCE),
                "-ldl",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        os.replace(partial, target)
    return target


def standin_environment(features: str, library: Path) -> Dict[str, str]:
    """``os.environ`` plus what runs a process under the stand-in with ``features``."""
    unknown = set(features.split(",")) - set(FEATURES)
    if unknown:
        raise ValueError(
            f"unknown stand-in features {sorted(unknown)}; known: {', '.join(FEATURES)}"
        )
    env = dict(os.environ)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(library), env.get("LD_PRELOAD", "")]))
    env["UDSCOMPAT_STANDIN"] = features
    return env
