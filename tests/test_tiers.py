"""The tiers hang together: every tier marker has its tox environment, run by the README's
test command, and documented in the README; the portable tier holds no heavy test."""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path
from typing import Dict, Set

ROOT = Path(__file__).resolve().parent.parent
#: What only a heavy tier may do (checked in the source of portable test modules).
HEAVY_CALLS = ("apt_install(", "useradd", "libvirtd", "npm install", "chromium")


def tiers_in_tests() -> Dict[str, Set[str]]:
    """tier name -> test modules that use it (from ``pytest.mark.tier("...")`` in the source)."""
    found: Dict[str, Set[str]] = {}
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "tier"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                found.setdefault(str(node.args[0].value), set()).add(path.name)
    return found


def tox() -> configparser.ConfigParser:
    config = configparser.ConfigParser(interpolation=None)
    config.read(ROOT / "tox.ini")
    return config


def test_every_tier_has_a_tox_environment_in_env_list() -> None:
    config = tox()
    env_list = config["tox"]["env_list"].replace(",", " ").split()
    assert env_list[0] == "tests", "the portable tier runs first"
    for tier in tiers_in_tests():
        section = f"testenv:{tier}"
        assert config.has_section(section), f"tier {tier!r} has no tox environment"
        assert f"--tier {tier}" in config[section]["commands"], section
        assert tier in env_list, f"the README's test command (tox) does not run tier {tier!r}"
    assert "--tier" not in config["testenv:tests"]["commands"]


def test_readme_documents_every_tier() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Tests", 1)[1].split("\n## ", 1)[0]
    for tier in ["tests", *tiers_in_tests()]:
        assert re.search(rf"`tox -e {re.escape(tier)}`", section), f"README lacks tier {tier}"


def test_portable_modules_do_nothing_heavy() -> None:
    heavy_modules = set().union(*tiers_in_tests().values())
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in heavy_modules or path.name == "test_tiers.py":
            continue
        text = path.read_text()
        for call in HEAVY_CALLS:
            assert call not in text, f"{path.name} does {call!r} outside a heavy tier"
