"""The README's example runs as written, in a fresh interpreter."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_example_runs() -> None:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) == 1
    result = subprocess.run(
        [sys.executable, "-c", blocks[0]], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "b'Here I come' with 3 descriptors" in result.stdout
    assert "written through the client's stdout" in result.stdout


def test_readme_main_job_runs_the_suite_and_writes_the_report() -> None:
    text = (ROOT / "README.md").read_text()
    main_job = (
        'python3 -m pip install ".[conformance]" && '
        "python3 -m udscompat_conformance run -n auto --report report --readme README.md"
    )
    assert main_job in text
    tox = (ROOT / "tox.ini").read_text()
    assert "udscompat-conformance report report/results --out report --readme README.md" in tox


def test_readme_commands_are_the_ci_commands() -> None:
    text = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = 'python3 -m pip install "tox>=4" && python3 -m tox'
    assert test_command in text
    assert test_command in ci
