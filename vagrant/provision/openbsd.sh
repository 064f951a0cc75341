#!/bin/sh
# OpenBSD guest: pkg_add picks the python 3 flavour (-I: no questions).
set -eu
command -v python3 >/dev/null 2>&1 || pkg_add -I python%3
python3 --version
