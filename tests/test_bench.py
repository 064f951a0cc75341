"""bench/run.py runs and reports every case (a smoke test: no timing is asserted here)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _compiled() -> bool:
    from udscompat import _accel

    return _accel.IMPLEMENTATION == "compiled"


ROW = re.compile(
    r"^(?P<name>.+?)\s+(?P<ours>[\d.]+)us\s+(?P<base>[\d.]+)us\s+(?P<ratio>[\d.]+)\s+"
    r"(?P<paired>[\d.]+)\s+<= (?P<target>[\d.]+) vs (?P<baseline>.+) (?P<mark>ok|OVER)$"
)
PRICE = re.compile(
    r"^kernel's price of the contract, native (64 B|64 KiB): recvmsg with the marker "
    r"(?P<marked>[\d.]+)us / bare recv (?P<bare>[\d.]+)us = (?P<ratio>[\d.]+)x \(in C\)$"
)
EMULATION_PRICE = re.compile(
    r"^kernel's price of the emulation, (64 B|64 KiB): frames over SOCK_STREAM "
    r"(?P<framed>[\d.]+)us / native seqpacket (?P<native>[\d.]+)us = (?P<ratio>[\d.]+)x "
    r"\(in C\)$"
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
    header, columns, *lines = table.splitlines()
    assert columns.split()[-5:] == ["best", "paired", "target", "(paired", "median)"]
    assert header.startswith("udscompat ran compiled" if _compiled() else "udscompat ran pure")
    assert "3 runs per case" in header
    for line in lines:
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
        paired, target = float(match["paired"]), float(match["target"])
        assert paired > 0, name
        assert (match["mark"] == "ok") == (paired <= target), (
            f"{name}: mark is not paired <= target"
        )
    assert rows["aio echo emulated, 64 B"]["baseline"] == "asyncio streams"
    # The targets of the path that ran: issue 15's for the compiled core, the earlier ones for
    # pure Python (which must stay no worse than before the compiled core).
    targets = {name: float(match["target"]) for name, match in rows.items()}
    if _compiled():
        assert targets["send_fds+recv_fds, 1 fd(s)"] == 0.8
        assert targets["seqpacket native, 64 KiB"] == 1.05
        assert targets["aio echo native, 64 B"] == 1.0
    else:
        assert targets["send_fds+recv_fds, 1 fd(s)"] == 1.15
        assert targets["aio echo native, 64 B"] == 1.3
    assert limits.startswith("Distance to the C limit")
    if shutil.which("cc"):  # bench/limit.c compiled: every case it runs has its distance
        distances = [
            line
            for line in limits.splitlines()[1:]
            if not PRICE.match(line) and not EMULATION_PRICE.match(line)
        ]
        assert len(distances) == (8 if sys.platform == "linux" else 4)
        prices = [PRICE.match(line) for line in limits.splitlines() if PRICE.match(line)]
        assert len(prices) == (2 if sys.platform == "linux" else 0)
        for price in prices:
            assert price is not None
            marked, bare = float(price["marked"]), float(price["bare"])
            assert abs(float(price["ratio"]) - marked / bare) < 0.01 * marked / bare + 0.002
        emulation = [EMULATION_PRICE.match(line) for line in limits.splitlines()]
        emulation_prices = [match for match in emulation if match]
        if sys.platform == "linux":  # elsewhere where the OS has SOCK_SEQPACKET
            assert len(emulation_prices) == 2
        for match in emulation_prices:
            framed, native = float(match["framed"]), float(match["native"])
            assert abs(float(match["ratio"]) - framed / native) < 0.01 * framed / native + 0.002
