#!/bin/sh
# DragonFly BSD guest: pkg(8) from DPorts.
set -eu
command -v python3 >/dev/null 2>&1 || env ASSUME_ALWAYS_YES=yes pkg install -y python3
python3 --version
