"""The udscompat conformance suite: what each OS really does, and what the shim makes of it.

Two kinds of cases, each with a stable id (``os.<area>.<name>`` or
``shim.<area>.<name>``):

* OS cases use the standard library only and record what the kernel did.
  They never fail because an OS differs from Linux; they fail (outcome
  ``error``) only when the observation itself could not be made.
* Shim cases hold udscompat to its contract and must pass on every OS, or
  be reported ``unavailable`` with a reason.

``python -m udscompat_conformance run`` runs them and writes one JSON result file
(``result.schema.json``); ``python -m udscompat_conformance report`` merges result
files into the feature matrix.
"""

SCHEMA_VERSION = 1
