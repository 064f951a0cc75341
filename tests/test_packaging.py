"""The distributions as users meet them: ``python -m build``, ``twine check``, what each holds.

Tier ``package`` (``tox -e package``): building fetches setuptools into an isolated
environment and the README's main command pip-installs the suite into a new venv, so
it is not part of the portable tier.  Everything happens under temporary directories.

* the wheel holds the two packages (every tracked file under ``udscompat/`` and
  ``udscompat_conformance/``: the library, ``py.typed``, the suite's data files) and its
  dist-info, nothing else, and claims no top-level name but those two;
* the sdist is the tracked tree (so its tests run from it) plus the generated metadata;
* the wheel installed alone into a new venv runs ``python -m udscompat`` and renders a
  report from its own data files (claims);
* the README's main command, verbatim, works in a brand-new venv on a copy of the checkout.
"""

from __future__ import annotations

import email
import os
import re
import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path
from typing import Dict, List, Set

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("udscompat", "udscompat_conformance")
#: What setuptools writes into a wheel's .dist-info directory.
DIST_INFO = {
    "METADATA",
    "RECORD",
    "WHEEL",
    "entry_points.txt",
    "top_level.txt",
    "licenses/LICENSE",
}
#: What setuptools adds to an sdist beside the tracked files.
SDIST_GENERATED = {"PKG-INFO", "setup.cfg"}

pytestmark = pytest.mark.tier("package")


def tracked_files() -> List[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: the tracked files are unknown")
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
    ).stdout
    return sorted(name for name in out.decode().split("\0") if name and (ROOT / name).exists())


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    """``python -m build`` of a copy of the tracked tree (so stray files cannot slip in)."""
    for module in ("build", "twine"):
        if shutil.which(module) is None and not _importable(module):
            pytest.skip(f"{module} is not installed (tox -e package installs it)")
    source = tmp_path_factory.mktemp("source")
    for name in tracked_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [wheel] = out.glob("*.whl")
    [sdist] = out.glob("*.tar.gz")
    return {"wheel": wheel, "sdist": sdist, "dir": out}


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_twine_check_passes(dist: Dict[str, Path]) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "twine",
            "check",
            "--strict",
            str(dist["wheel"]),
            str(dist["sdist"]),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("PASSED") == 2


def test_wheel_holds_the_two_packages_and_nothing_else(dist: Dict[str, Path]) -> None:
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        info_dir = next(n.split("/")[0] for n in names if n.split("/")[0].endswith(".dist-info"))
        top_level = wheel.read(f"{info_dir}/top_level.txt").decode().split()
        metadata = email.message_from_bytes(wheel.read(f"{info_dir}/METADATA"))
        entry_points = wheel.read(f"{info_dir}/entry_points.txt").decode()
    expected = {n for n in tracked_files() if n.split("/")[0] in PACKAGES}
    assert "udscompat/py.typed" in expected
    assert {
        "udscompat_conformance/result.schema.json",
        "udscompat_conformance/matrix.schema.json",
        "udscompat_conformance/cases/pytest.ini",
        "udscompat_conformance/standin/kernel_standin.c",
    } <= expected
    assert any(n.startswith("udscompat_conformance/claims/") for n in expected)
    packaged = {n for n in names if not n.startswith(info_dir + "/")}
    # The optional accelerator, built from the tracked udscompat/_speedups.c where a compiler works.
    packaged -= {n for n in packaged if re.fullmatch(r"udscompat/_speedups\.[\w.-]+\.so", n)}
    assert sorted(expected - packaged) == [], "tracked package files missing from the wheel"
    assert sorted(packaged - expected) == [], "the wheel holds files that are not ours"
    assert {n.split("/", 1)[1] for n in names if n.startswith(info_dir + "/")} == DIST_INFO
    assert sorted(top_level) == sorted(PACKAGES)  # no generic top-level name like 'conformance'
    assert metadata.get_all("Requires-Dist") and all(
        "extra ==" in r for r in metadata.get_all("Requires-Dist")
    ), "udscompat itself has no runtime dependency"
    assert "udscompat-conformance = udscompat_conformance.cli:main" in entry_points
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]


def test_sdist_is_the_tracked_tree(dist: Dict[str, Path]) -> None:
    with tarfile.open(dist["sdist"]) as sdist:
        members = [m.name for m in sdist.getmembers() if m.isfile()]
    prefix = members[0].split("/")[0] + "/"
    names = {m[len(prefix) :] for m in members}
    generated = {n for n in names if n in SDIST_GENERATED or n.split("/")[0].endswith(".egg-info")}
    assert generated >= SDIST_GENERATED
    assert sorted(set(tracked_files()) - names) == [], "tracked files missing from the sdist"
    assert sorted(names - generated - set(tracked_files())) == [], "untracked files in the sdist"


def _new_venv(path: Path) -> Path:
    venv.EnvBuilder(with_pip=True, clear=True, symlinks=True).create(path)
    return path / "bin" / "python"


@pytest.fixture
def clean_env(tmp_path: Path) -> Dict[str, str]:
    """An environment that leaves pip's cache and config in the temporary directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(
        HOME=str(tmp_path / "home"), PIP_CACHE_DIR=str(tmp_path / "pip-cache"), PYTHONPATH=""
    )
    (tmp_path / "home").mkdir()
    return env


def test_installed_wheel_alone_runs_and_finds_its_data(
    dist: Dict[str, Path], tmp_path: Path, clean_env: Dict[str, str]
) -> None:
    python = _new_venv(tmp_path / "venv")
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--no-deps", str(dist["wheel"])],
        check=True,
        env=clean_env,
        timeout=300,
    )
    # From a directory without the checkout, so only the installed packages can answer.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    caps = subprocess.run(
        [str(python), "-m", "udscompat", "--json"],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert caps.returncode == 0, caps.stderr
    assert '"features"' in caps.stdout
    report = subprocess.run(
        [
            str(tmp_path / "venv" / "bin" / "udscompat-conformance"),
            "report",
            str(ROOT / "tests" / "data" / "report" / "results" / "linux.json"),
            "--out",
            str(tmp_path / "report"),
        ],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert report.returncode == 0, report.stdout + report.stderr
    matrix = (tmp_path / "report" / "matrix.json").read_text()
    assert "uds crate README" in matrix, "the shipped claims were not found"
    where = subprocess.run(
        [str(python), "-c", "import udscompat_conformance as c; print(c.__file__)"],
        cwd=elsewhere,
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert str(tmp_path / "venv") in where


def test_readme_main_command_in_a_brand_new_venv(tmp_path: Path, clean_env: Dict[str, str]) -> None:
    """The README's main command, verbatim, with a new venv's python3 first on PATH."""
    readme = (ROOT / "README.md").read_text()
    command = next(
        line.strip()
        for line in readme.splitlines()
        if "udscompat_conformance run" in line and line.strip().startswith("python3 -m pip")
    )
    checkout = tmp_path / "checkout"
    for name in tracked_files():
        (checkout / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, checkout / name)
    published = set(os.listdir(checkout / "report" / "results"))
    python = _new_venv(tmp_path / "venv")
    env = dict(clean_env, PATH=f"{python.parent}{os.pathsep}{clean_env.get('PATH', '')}")
    proc = subprocess.run(
        ["sh", "-c", command], cwd=checkout, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    added: Set[str] = set(os.listdir(checkout / "report" / "results")) - published
    assert len(added) <= 1, added  # this machine's result file (or an update of a published one)
    for name in ("MATRIX.md", "index.html", "matrix.json"):
        assert (checkout / "report" / name).stat().st_size > 0
    assert "udscompat-conformance: results in" in proc.stdout
    # The README's table agrees with report/results/ afterwards, as the README's test command
    # checks (test_report.py): run in this order, the two commands both pass.
    from udscompat_conformance import report
    from udscompat_conformance.matrix import build_matrix, find_result_files

    matrix = build_matrix(find_result_files([str(checkout / "report" / "results")]))
    block = (checkout / "README.md").read_text().split(report.README_START)[1]
    assert block.split(report.README_END)[0].strip() == report.summary_markdown(matrix).strip()
