#!/bin/sh
# FreeBSD guest: Python from pkg(8).
set -eu
command -v python3 >/dev/null 2>&1 || env ASSUME_ALWAYS_YES=yes pkg install -y python3
python3 --version
