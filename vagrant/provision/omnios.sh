#!/bin/sh
# OmniOS (illumos) guest: IPS ships a system Python; install a runtime only if none is on PATH.
set -eu
command -v python3 >/dev/null 2>&1 || pkg install -q runtime/python-311
python3 --version
