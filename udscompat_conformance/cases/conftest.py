"""Fixtures shared by the conformance cases: short paths, pipes, SIGPIPE ignored."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from typing import Iterator, Tuple

import pytest


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A fresh directory with a short path (socket paths must fit in 103 bytes everywhere)."""
    path = tempfile.mkdtemp(prefix="udsc-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pipe() -> Iterator[Tuple[int, int]]:
    r, w = os.pipe()
    try:
        yield r, w
    finally:
        for fd in (r, w):
            with contextlib.suppress(OSError):
                os.close(fd)


@pytest.fixture(autouse=True)
def _no_sigpipe() -> Iterator[None]:
    # Python ignores SIGPIPE already; keep it that way whatever a case does.
    previous = signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGPIPE, previous)
