"""``udscompat-conformance vm``: run the suite on other machines and bring the results home.

One module per job, each readable alone:

* ``cli`` — the command line (``udscompat-conformance vm --help``);
* ``runner`` — the stages of one target (up, connect, provision, copy, run, fetch), result
  stubs for failed targets, several targets at once;
* ``targets`` — where the suite runs: ``local``, ``ssh://`` hosts, Vagrant machines, and how
  each is reached (host-key policy included);
* ``vagrant_step`` — one python-vagrant call in a child process of its own, so that a timeout
  ends exactly what it started;
* ``payload`` — the tar of both packages and the suite's pure-Python dependencies;
* ``processes`` — starting commands in their own process groups, logs, timeouts, and ending
  only what this run started (by process group, never by matching a command line);
* ``guard`` — runs on the target: the suite under a deadline and tied to the connection, so a
  stage timeout or a lost connection ends the remote suite too.
"""

from __future__ import annotations

from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    from udscompat_conformance.vm.cli import main as cli_main

    return cli_main(argv)
