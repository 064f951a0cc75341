"""Fixtures for the native-ABI NetBSD cases: the rump kernel client and private directories.

The cases run in a process of their own whose environment names the build
(``UDSCOMPAT_RUMP_LIBDIR``, ``UDSCOMPAT_RUMP_HEADERS``) and the server
(``RUMP_SERVER``); ``udscompat-conformance run --kernel netbsd-rump`` sets them.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Iterator, List

import pytest

from udscompat_conformance.kernels.netbsd_abi import RumpClient, RumpError

_SEQUENCE = itertools.count()


@pytest.fixture(scope="session")
def netbsd() -> RumpClient:
    """The one librumpclient connection of this process."""
    try:
        libdir = Path(os.environ["UDSCOMPAT_RUMP_LIBDIR"])
        headers = Path(os.environ["UDSCOMPAT_RUMP_HEADERS"])
        server = os.environ["RUMP_SERVER"]
    except KeyError as missing:
        pytest.exit(f"native NetBSD cases need {missing.args[0]} (run them with --kernel)", 2)
    client = RumpClient(libdir, headers, server)
    try:
        client.mkdir(b"/tmp", 0o1777)
    except RumpError as exc:
        if exc.name != "EEXIST":
            raise
    return client


@pytest.fixture
def rump_tmp(netbsd: RumpClient) -> bytes:
    """A fresh, short directory in the rump kernel's file system."""
    path = b"/tmp/u%d.%d" % (os.getpid(), next(_SEQUENCE))
    netbsd.mkdir(path)
    return path


@pytest.fixture
def rump_pipe(netbsd: RumpClient) -> Iterator[List[int]]:
    """A pipe in the rump kernel: [read end, write end]."""
    fds = list(netbsd.pipe())
    try:
        yield fds
    finally:
        netbsd.close(*fds)


@pytest.fixture(autouse=True)
def _no_rump_descriptor_leak(netbsd: RumpClient) -> Iterator[None]:
    before = set(netbsd.open_count(_scan_limit(netbsd)))
    yield
    leaked = sorted(set(netbsd.open_count(_scan_limit(netbsd))) - before)
    if leaked:
        netbsd.close(*leaked)
        pytest.fail(f"leaked rump descriptors {leaked}", pytrace=False)


def _scan_limit(netbsd: RumpClient) -> int:
    soft, _ = netbsd.getrlimit_nofile()
    return min(soft, 2048)
