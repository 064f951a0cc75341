"""Tier ``chromium`` (``tox -e chromium``): the HTML report as headless Chromium renders it.

Installs Debian's chromium when root and it is missing (skipped, saying why, otherwise).
Chromium gets a profile directory of this test's own and no background networking, so it
touches nothing outside the temporary directory and two runs at once do not share a profile.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path
from typing import List, Tuple

import pytest

from tests.conftest import apt_install
from tests.test_report import render

pytestmark = pytest.mark.tier("chromium")


# --- Chromium -----------------------------------------------------------------------------------


def _chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    apt_install(["chromium"])
    found = shutil.which("chromium")
    if found is None:
        pytest.skip("Debian's chromium installed, but no chromium on PATH")
    return found


def _png_pixels(path: Path) -> Tuple[int, int, List[bytes]]:
    """Width, height and unfiltered RGB(A) rows of an 8-bit PNG (what Chromium writes)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            header = chunk
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", header[:10])
    assert depth == 8 and colour in (2, 6)
    step = 3 if colour == 2 else 4
    raw = zlib.decompress(idat)
    rows: List[bytes] = []
    previous = bytearray(width * step)
    stride = width * step
    for y in range(height):
        kind = raw[y * (stride + 1)]
        line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for x in range(stride):
            left = line[x - step] if x >= step else 0
            up = previous[x]
            corner = previous[x - step] if x >= step else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                predictor = left if pa <= pb and pa <= pc else up if pb <= pc else corner
                line[x] = (line[x] + predictor) & 0xFF
        rows.append(
            bytes(line) if step == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3)
        )
        previous = line
    return width, height, rows


@pytest.mark.parametrize("size", ["1280,900", "390,844"], ids=["desktop", "phone"])
def test_chromium_renders_the_table_without_console_errors(tmp_path: Path, size: str) -> None:
    chromium = _chromium()
    render(tmp_path)
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--enable-logging=stderr",
            "--v=0",
            f"--window-size={size}",
            f"--screenshot={shot}",
            (tmp_path / "index.html").as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert shot.exists(), proc.stderr[-2000:]
    console = [
        line
        for line in proc.stderr.splitlines()
        if "CONSOLE" in line or "Failed to load resource" in line
    ]
    assert not console, console
    width, height, rows = _png_pixels(shot)
    assert (width, height) == tuple(int(v) for v in size.split(","))
    green = 0  # the summary table's "yes" cells (#dff3df)
    for row in rows:
        for x in range(0, len(row), 3):
            if abs(row[x] - 0xDF) < 6 and abs(row[x + 1] - 0xF3) < 6 and abs(row[x + 2] - 0xDF) < 6:
                green += 1
    assert green > 500, "the colour-coded summary table is not visible"
