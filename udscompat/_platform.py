"""The one place that reads ``sys.platform``: it picks this OS's backend.

Everything else asks the chosen backend for values (``BACKEND.SUN_PATH_SIZE``,
``BACKEND.peer_credentials``) and never branches on the platform itself
(ruff's banned-api rule enforces that outside this file).
"""

from __future__ import annotations

import os
import sys

from udscompat._os import Backend

if os.name != "posix":
    raise ImportError(f"udscompat needs a POSIX system with AF_UNIX; this is {sys.platform!r}")

# sys.platform is 'freebsd13' before Python 3.14 and 'freebsd' from it, 'sunos5' on illumos:
# compare prefixes (os-facts §2.10).
if sys.platform.startswith("linux"):
    from udscompat._os import linux as BACKEND
elif sys.platform.startswith("darwin"):
    from udscompat._os import macos as BACKEND  # type: ignore[no-redef]
elif sys.platform.startswith("freebsd"):
    from udscompat._os import freebsd as BACKEND  # type: ignore[no-redef]
elif sys.platform.startswith("openbsd"):
    from udscompat._os import openbsd as BACKEND  # type: ignore[no-redef]
elif sys.platform.startswith("netbsd"):
    from udscompat._os import netbsd as BACKEND  # type: ignore[no-redef]
elif sys.platform.startswith("dragonfly"):
    from udscompat._os import dragonfly as BACKEND  # type: ignore[no-redef]
elif sys.platform.startswith("sunos"):
    from udscompat._os import illumos as BACKEND  # type: ignore[no-redef]
else:
    from udscompat._os import _posix as BACKEND  # type: ignore[no-redef]

backend: Backend = BACKEND

__all__ = ["backend"]
