"""Entry point of one conformance case run under librumphijack (the Linux-ABI NetBSD column).

    LD_PRELOAD=.../librumphijack.so python -m udscompat_conformance.kernels.child [pytest args]

Runs pytest in this process after two adjustments that only this harness
needs, because the hijacked process's AF_UNIX sockets and pipes live in the
rump kernel:

* asyncio and ``selectors`` use ``PollSelector``: librumphijack routes
  ``poll``/``ppoll`` but not ``epoll_*``, so an epoll selector never sees a
  rump descriptor become ready;
* ``udscompat._probes.open_fds`` (the suite's leak check, and the ctrunc
  probe's) also counts rump descriptors: hijack shows them to the process as
  numbers from ``RUMPHIJACK_FDOFF`` (512) up, which ``/proc/self/fd`` never lists;
* ``shutil.rmtree`` (under every ``TemporaryDirectory``) forgives failing in the
  rump /tmp: directories there cannot be listed through librumphijack on Linux
  (it routes no getdents nor the *at calls), and the rump file system goes with
  its server anyway.
"""

from __future__ import annotations

import os
import selectors
import shutil
import sys
from typing import Any, Callable, List, Optional, Set

#: librumphijack's default offset of rump descriptors in the process's fd space (FD_SETSIZE/2).
RUMP_FD_OFFSET = 512


def with_rump_descriptors(host_fds: Callable[[], Set[int]], span: int) -> Callable[[], Set[int]]:
    """``host_fds`` plus every rump descriptor that ``fstat`` finds in ``span`` slots."""

    def open_fds() -> Set[int]:
        found = {fd for fd in host_fds() if fd < RUMP_FD_OFFSET}
        for fd in range(RUMP_FD_OFFSET, RUMP_FD_OFFSET + span):
            try:
                os.fstat(fd)
            except OSError:
                continue
            found.add(fd)
        return found

    return open_fds


def forgiving_in_rump(rmtree: Callable[..., None], blanket: str = "/tmp") -> Callable[..., None]:
    """``rmtree`` that ignores failures under ``blanket`` (the rump kernel's part of the tree)."""

    def remove(path: Any, *args: Any, **kwargs: Any) -> None:
        try:
            rmtree(path, *args, **kwargs)
        except OSError:
            resolved = os.path.abspath(os.fsdecode(path))
            if resolved != blanket and not resolved.startswith(blanket + os.sep):
                raise

    return remove


def prepare() -> None:
    """Make this (hijacked) process ready for udscompat and its cases (see the module doc)."""
    selectors.DefaultSelector = selectors.PollSelector  # type: ignore[misc]
    shutil.rmtree = forgiving_in_rump(shutil.rmtree)  # type: ignore[assignment]
    from udscompat import _probes

    span = int(os.environ.get("RUMPHIJACK_UDSC_NOFILE", "256"))
    _probes.open_fds = with_rump_descriptors(_probes.open_fds, min(span, 2048))  # type: ignore[assignment]


def main(argv: Optional[List[str]] = None) -> int:
    prepare()
    import pytest

    return int(pytest.main(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    sys.exit(main())
