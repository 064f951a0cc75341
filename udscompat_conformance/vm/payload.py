"""What is copied to a target: both packages and the suite's pure-Python dependencies.

One gzipped tar per run, built from what this environment imports, so the target needs
only a Python 3.9+ and no package index.
"""

from __future__ import annotations

import functools
import importlib.metadata
import io
import re
import tarfile
from pathlib import Path
from typing import Dict, List, Optional

import udscompat
import udscompat_conformance

#: The suite's own requirements; they and everything they require (as installed here, all pure
#: Python) are copied to the target.
SUITE_REQUIREMENTS = ("pytest", "pytest-xdist", "pytest-timeout")


@functools.lru_cache(maxsize=1)  # one tar for every target of a run
def payload() -> bytes:
    """A gzipped tar: ``project/`` holds the two packages, ``deps/`` the suite's dependencies.

    The dependencies are the installed files of ``SUITE_REQUIREMENTS`` (those present
    here) with their dist-info, so pytest finds its plugins through entry points on the
    target.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        # The two packages wherever they are imported from (a checkout or site-packages).
        for package in project_packages():
            tar.add(str(package), arcname=f"project/{package.name}", filter=_skip_caches)
        for dist in suite_distributions():
            for file in dist.files or []:
                if file.suffix == ".pyc" or "__pycache__" in file.parts or ".." in file.parts:
                    continue
                source = Path(str(file.locate()))
                if source.is_file():
                    tar.add(str(source), arcname=f"deps/{file}")
    return buffer.getvalue()


def project_packages() -> List[Path]:
    return [
        Path(udscompat.__file__).resolve().parent,
        Path(udscompat_conformance.__file__).resolve().parent,
    ]


def suite_distributions() -> List[importlib.metadata.Distribution]:
    """The installed distributions the suite needs: its requirements, recursively.

    Requirements that apply only to an extra are left out; ones limited to
    other Python versions are taken when installed (a target may be older).
    """
    found: Dict[str, importlib.metadata.Distribution] = {}
    pending = list(SUITE_REQUIREMENTS)
    while pending:
        name = _normalise(pending.pop())
        if name in found:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for requirement in dist.requires or []:
            if "extra ==" in requirement.replace("extra==", "extra =="):
                continue
            match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
            if match:
                pending.append(match.group(1))
    return [found[name] for name in sorted(found)]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _skip_caches(info: tarfile.TarInfo) -> Optional[tarfile.TarInfo]:
    name = info.name
    if "__pycache__" in name or name.endswith((".pyc", ".so")) or "/.pytest_cache" in name:
        return None
    return info
