#!/bin/sh
# NetBSD guest: Python from pkgsrc binary packages; pkgin names it python3XX.
set -eu
if ! command -v python3 >/dev/null 2>&1; then
    command -v pkgin >/dev/null 2>&1 || pkg_add pkgin
    pkgin -y install python311
    ln -sf /usr/pkg/bin/python3.11 /usr/pkg/bin/python3
fi
python3 --version
