"""A pytest plugin that writes the collected cases (node id and case metadata) to a file.

    pytest --collect-only -p udscompat_conformance.plugin \
        -p udscompat_conformance.kernels.collect   (with UDSCOMPAT_COLLECT_OUT=FILE)

The per-case runners use it to know every case before running any, so a case
that hangs or crashes its process is still recorded with its id, title and rows.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from udscompat_conformance.plugin import case_meta

ENV = "UDSCOMPAT_COLLECT_OUT"


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    target = os.environ.get(ENV)
    if not target:
        return
    cases = [{"nodeid": item.nodeid, "meta": case_meta(item)} for item in session.items]
    Path(target).write_text(json.dumps(cases, indent=1), encoding="utf-8")
