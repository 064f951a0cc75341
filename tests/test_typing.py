"""The public API is precisely typed: ``mypy --strict`` on a typed example of its use.

mypy comes with the development extra (``pip install -e .[dev]``), not with the
test extra; without it this test is skipped, and ``tox -e type`` checks the
example instead.  Cold, mypy takes several seconds: that is the cost of the
check (no faster way to ask mypy).
"""

from __future__ import annotations

from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parent / "typing" / "public_api.py"


def test_typed_example_passes_mypy_strict() -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is not installed (the dev extra has it)")
    root = Path(__file__).parent.parent
    out, err, status = api.run(
        [
            "--strict",
            "--cache-dir",
            "/dev/null",
            "--config-file",
            str(root / "pyproject.toml"),
            str(EXAMPLE),
        ]
    )
    assert status == 0, out + err
