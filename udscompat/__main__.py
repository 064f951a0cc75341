"""``python -m udscompat``: print what udscompat found on this OS."""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from udscompat._capabilities import Capabilities, capabilities


def render(caps: Capabilities) -> str:
    """The capabilities as an aligned, readable table."""
    lines = [f"udscompat on {caps.os_name} {caps.os_release}", "", "Features:"]
    width = max(len(k) for k in list(caps.features) + list(caps.quirks))
    for name, feature in caps.features.items():
        lines.append(f"  {name:<{width}}  {feature.status:<11}  {feature.detail}")
    lines += ["", "Kernel behaviour seen by the probes:"]
    for name, value in caps.quirks.items():
        shown = (
            "yes"
            if value is True
            else "no"
            if value is False
            else "unknown"
            if value is None
            else value
        )
        lines.append(f"  {name:<{width}}  {shown}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m udscompat", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    caps = capabilities()
    if args.json:
        json.dump(caps.as_dict(), sys.stdout, indent=2, sort_keys=True)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render(caps) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
