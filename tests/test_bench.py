"""bench/run.py runs and reports every case (a smoke test: no timing is asserted here)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(
    r"^(?P<name>.+?)\s+(?P<ours>[\d.]+)us\s+(?P<base>[\d.]+)us\s+(?P<ratio>[\d.]+)\s+"
    r"<= (?P<target>[\d.]+) vs (?P<baseline>.+) (?:ok|OVER)$"
)


def test_quick_run_reports_every_case_as_a_ratio() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    rows = {}
    table, _, limits = done.stdout.partition("\n\n")  # the ratios, then the C limit's distances
    for line in table.splitlines()[1:]:
        match = ROW.match(line)
        assert match, f"unparsable row: {line!r}"
        rows[match["name"].strip()] = match
    expected = [
        "send_fds+recv_fds, 1 fd(s)",
        "send_fds+recv_fds, 16 fd(s)",
        "seqpacket native, 64 B",
        "seqpacket emulated, 64 B",
        "seqpacket native, 64 KiB",
        "seqpacket emulated, 64 KiB",
    ] + [
        f"aio echo {kind}, {size}" for size in ("64 B", "64 KiB") for kind in ("native", "emulated")
    ]
    if sys.platform == "linux":  # the floor row uses Linux's SO_TIMESTAMP value
        expected += ["syscall floor, 64 B", "syscall floor, 64 KiB"]
    if importlib.util.find_spec("uvloop") is not None:
        expected += [
            f"aio echo {kind}, {size}, uvloop"
            for size in ("64 B", "64 KiB")
            for kind in ("native", "emulated")
        ]
    assert sorted(rows) == sorted(expected)
    for name, match in rows.items():
        ours, base, ratio = float(match["ours"]), float(match["base"]), float(match["ratio"])
        assert ours > 0 and base > 0, name
        assert abs(ratio - ours / base) < 0.01 * ratio + 0.002, f"{name}: ratio is not ours/base"
    assert rows["aio echo emulated, 64 B"]["baseline"] == "asyncio streams"
    assert limits.startswith("Distance to the C limit")
    if shutil.which("cc"):  # bench/limit.c compiled: every case it runs has its distance
        assert len(limits.splitlines()) == 1 + (8 if sys.platform == "linux" else 4)
