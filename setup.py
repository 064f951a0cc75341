"""Builds the optional C accelerator, ``udscompat._speedups``; the rest is in pyproject.toml.

A source install compiles it where a C compiler works and goes on without it
where none does (no compiler, a failing one, PyPy or another implementation,
a platform it does not build on): udscompat then runs its pure-Python
implementation, which is complete.  ``pip install -v`` shows a note saying so.

``UDSCOMPAT_BUILD_SPEEDUPS``: ``required`` makes a failed build an error
(wheel builds, so a wheel never silently lacks it); ``0`` skips it.
"""

from __future__ import annotations

import os
import platform
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_ENV = "UDSCOMPAT_BUILD_SPEEDUPS"


def _policy() -> str:
    value = os.environ.get(_ENV, "").strip().lower()
    if value not in ("", "0", "1", "required"):
        raise SystemExit(f"{_ENV}={value!r}: expected 'required', '1' or '0'")
    return "required" if value in ("1", "required") else value or "optional"


class OptionalBuildExt(build_ext):
    """``build_ext`` that turns any failure to build into a note, unless the build is required."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # the compiler could not even be set up
            self._skip(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:
            self._skip(exc)

    def _skip(self, exc: Exception) -> None:
        if _policy() == "required":
            raise
        print(
            "udscompat: the optional C accelerator (udscompat._speedups) was not built "
            f"({type(exc).__name__}: {exc}); udscompat will use its pure-Python "
            "implementation, which behaves the same.",
            file=sys.stderr,
        )


def _extensions() -> list[Extension]:
    policy = _policy()
    supported = platform.python_implementation() == "CPython" and os.name == "posix"
    if policy == "0" or (not supported and policy != "required"):
        if not supported:
            print(
                "udscompat: no C accelerator on "
                f"{platform.python_implementation()}/{os.name}; pure Python it is.",
                file=sys.stderr,
            )
        return []
    return [Extension("udscompat._speedups", ["udscompat/_speedups.c"])]


setup(ext_modules=_extensions(), cmdclass={"build_ext": OptionalBuildExt})
