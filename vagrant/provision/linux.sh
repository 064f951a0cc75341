#!/bin/sh
# Debian/Ubuntu guest: the suite needs only Python 3.9+ (its dependencies come with the project).
set -eu
command -v python3 >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q python3; }
python3 --version
