"""The pytest plugin that turns conformance cases into one result file.

Every case is a test function marked ``@pytest.mark.case(id, title, rows=...)``.
Its id says its kind and area (``os.fdpass.close_after_send``); ``rows``
names the catalogue behaviours it covers.  A case records what it saw with
the ``observe`` fixture, and says a feature is missing on this OS with
``unavailable(reason)``.

Outcomes:

========== ======================================================================
pass       a shim case held the contract
fail       a shim case broke it (including a leaked descriptor or a timeout)
observed   an OS case made its observation (the value is in ``observed``)
unavailable the feature does not exist on this OS; the message says why
error      the observation or the case itself could not be run
skip       not run here for another stated reason
========== ======================================================================

A case that takes the ``seqpacket_implementation`` fixture runs twice, once
on each seqpacket implementation (``native``, ``emulated``), in every run
whatever ``--seqpacket`` says; its two runs are one case in the result file,
under the id it has always had.  The case's outcome is the worse of the two
(one implementation ``unavailable`` here, the other passing, is a pass), and
its ``observed`` value holds the evidence of each:
``{"native": {"outcome": ..., "observed": ..., "message": ...}, "emulated": {...}}``.

Each case runs under a descriptor-leak check and, through pytest-timeout, a
per-case timeout.  Under pytest-xdist the workers send their reports to the
controller, which alone writes the file, so serial and parallel runs give
the same result file (cases are sorted by id).
"""

from __future__ import annotations

import gc
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from udscompat import _probes
from udscompat_conformance import SCHEMA_VERSION
from udscompat_conformance.hostinfo import host_facts, utc_time

_CASE_ID = re.compile(r"^(os|shim)\.[a-z0-9_]+\.[a-z0-9_.]+$")
_UNAVAILABLE = "unavailable: "
_META = "udscompat.case"
_OBSERVED = "udscompat.observed"
_NOTE = "udscompat.note"
_LEAK_GRACE = 2.0  # seconds for finalizers of dropped sockets to run before a leak counts
#: The seqpacket implementations every case taking ``seqpacket_implementation`` runs on.
IMPLEMENTATIONS = ("native", "emulated")
_IMPLEMENTATION_FIXTURE = "seqpacket_implementation"
_VARIANT = re.compile(r"(^|-)@(native|emulated)(?=-|$)")
# The outcome of a case run on both implementations: the worse one, "unavailable" only if
# neither ran.
_MERGE_ORDER = ["fail", "error", "pass", "observed", "unavailable", "skip"]


def unavailable(reason: str) -> None:
    """End this case as ``unavailable``: the feature does not exist on this OS."""
    pytest.skip(_UNAVAILABLE + reason)


class Observer:
    """What the ``observe`` fixture hands a case: call it with the observed value."""

    def __init__(self, item: pytest.Item) -> None:
        self._item = item

    def __call__(self, value: Any, note: Optional[str] = None) -> Any:
        """Record ``value`` (JSON-serialisable) as this case's observation; returns it."""
        encoded = json.dumps(value, sort_keys=True)
        props = self._item.user_properties
        props[:] = [p for p in props if p[0] != _OBSERVED]
        props.append((_OBSERVED, encoded))
        if note is not None:
            self.note(note)
        return value

    def note(self, text: str) -> None:
        """Add a human-readable remark to the case's message."""
        self._item.user_properties.append((_NOTE, text))


@pytest.fixture
def observe(request: pytest.FixtureRequest) -> Observer:
    """Record the value a case observed: ``observe(value, note=None)``."""
    return Observer(request.node)


@pytest.fixture
def seqpacket_implementation(request: pytest.FixtureRequest) -> str:
    """``"native"`` or ``"emulated"``: the case runs on each (see the module docstring).

    Native is ``unavailable`` where the kernel has no SOCK_SEQPACKET that
    keeps the whole contract (the shim never picks it there).
    """
    implementation = str(request.param)
    if implementation == "native":
        probe = _probes.seqpacket()
        if not probe.conformant:
            unavailable(f"native SOCK_SEQPACKET: {probe.reason}")
    return implementation


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if _IMPLEMENTATION_FIXTURE in metafunc.fixturenames:
        metafunc.parametrize(
            _IMPLEMENTATION_FIXTURE,
            IMPLEMENTATIONS,
            ids=[f"@{name}" for name in IMPLEMENTATIONS],
            indirect=True,
        )


@pytest.fixture(autouse=True)
def _no_descriptor_leak(request: pytest.FixtureRequest) -> Iterator[None]:
    before = _probes.open_fds()
    yield
    after = _probes.open_fds()
    deadline = time.monotonic() + _LEAK_GRACE
    while after - before and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
        after = _probes.open_fds()
    leaked = sorted(after - before)
    if leaked:
        pytest.fail(f"leaked descriptors {leaked}", pytrace=False)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("udscompat-conformance")
    group.addoption(
        "--udscompat-results",
        default=None,
        metavar="FILE",
        help="write the conformance result file (JSON) here",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "case(id, title, rows=()): a conformance case with a stable id"
    )
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_Recorder(config), "udscompat-recorder")


def pytest_sessionstart(session: pytest.Session) -> None:
    # Probes are cached per process and keep nothing open; run them before any case counts
    # descriptors, so the first case to use one is not charged for it.
    for probe in (_probes.cmsg_cloexec_flag, _probes.same_process_fd_reuse, _probes.seqpacket):
        try:
            probe()
        except OSError:
            pass
    _probes.abstract_addresses()


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    seen: Dict[Tuple[str, Optional[str]], str] = {}
    for item in items:
        meta = case_meta(item)
        key = (meta["id"], meta.get("variant"))
        if key in seen:
            raise pytest.UsageError(f"case id {meta['id']} used by {seen[key]} and {item.nodeid}")
        seen[key] = item.nodeid
        item.user_properties.append((_META, json.dumps(meta)))


def case_meta(item: pytest.Item) -> Dict[str, Any]:
    """The case id (with its parameters), kind, area, title and catalogue rows of ``item``."""
    mark = item.get_closest_marker("case")
    if mark is None or not mark.args:
        raise pytest.UsageError(
            f"{item.nodeid}: every conformance case needs @pytest.mark.case(id, title)"
        )
    base, title = mark.args[0], mark.args[1] if len(mark.args) > 1 else mark.kwargs.get("title")
    if not _CASE_ID.match(base):
        raise pytest.UsageError(f"{item.nodeid}: case id {base!r} is not os|shim.<area>.<name>")
    if not title:
        raise pytest.UsageError(f"{item.nodeid}: case {base} has no title")
    callspec = getattr(item, "callspec", None)
    variant: Optional[str] = None
    case_id = base
    if callspec is not None:
        params = callspec.id
        if _IMPLEMENTATION_FIXTURE in callspec.params:
            # The implementation is not part of the id: both runs are one case.
            variant = str(callspec.params[_IMPLEMENTATION_FIXTURE])
            params = _VARIANT.sub("", params).strip("-")
        if params:
            case_id = f"{base}[{params}]"
    kind, area = base.split(".")[:2]
    meta: Dict[str, Any] = {
        "id": case_id,
        "kind": kind,
        "area": area,
        "title": title,
        "rows": sorted(mark.kwargs.get("rows", ())),
    }
    if variant is not None:
        meta["variant"] = variant
    return meta


class _Recorder:
    """Collects the reports of every case (on the controller) and writes the result file."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.path: Optional[str] = config.getoption("--udscompat-results")
        self.started = time.time()
        self.cases: Dict[str, Dict[str, Any]] = {}

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = dict(report.user_properties)
        if _META not in props:
            return  # collected before our hook ran (a collection error): nothing to record
        meta = json.loads(props[_META])
        variant = meta.pop("variant", None)
        entry = self.cases.setdefault(
            meta["id"],
            {**meta, "outcome": None, "observed": None, "message": None, "duration_s": 0.0},
        )
        entry["duration_s"] = round(entry["duration_s"] + report.duration, 6)
        if variant is not None:
            # One implementation's run: its own record, merged in result().
            entry = entry.setdefault("_variants", {}).setdefault(
                variant, {"outcome": None, "observed": None, "message": None}
            )
        _record(entry, meta["kind"], report)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.path is None:
            return
        write_atomically(Path(self.path), self.result())

    def result(self) -> Dict[str, Any]:
        cases = [self.cases[key] for key in sorted(self.cases)]
        for case in cases:
            if "_variants" in case:
                _merge_variants(case)
            if case["outcome"] is None:
                case["outcome"] = "error"
                case["message"] = case["message"] or "the case produced no outcome"
        summary: Dict[str, int] = {}
        for case in cases:
            summary[case["outcome"]] = summary.get(case["outcome"], 0) + 1
        return {
            "schema_version": SCHEMA_VERSION,
            "host": host_facts(),
            "run": run_facts(self.config, self.started),
            "summary": dict(sorted(summary.items())),
            "cases": cases,
        }


def _record(entry: Dict[str, Any], kind: str, report: pytest.TestReport) -> None:
    """Fold one phase's report into a case record (or one implementation's part of it)."""
    props = dict(report.user_properties)
    if _OBSERVED in props:
        entry["observed"] = json.loads(props[_OBSERVED])
    notes = [value for key, value in report.user_properties if key == _NOTE]
    outcome, message = _outcome(kind, report)
    if outcome is None:
        if notes and entry["message"] is None:
            entry["message"] = "; ".join(dict.fromkeys(notes))
        return
    if entry["outcome"] in (None, "pass", "observed"):  # the first problem wins
        entry["outcome"] = outcome
        if message or notes:
            entry["message"] = "; ".join(dict.fromkeys([*notes, *([message] if message else [])]))


def _merge_variants(case: Dict[str, Any]) -> None:
    """One case from its runs on each implementation: the worse outcome, both as evidence."""
    variants = case.pop("_variants")
    evidence: Dict[str, Any] = {}
    for name in IMPLEMENTATIONS:
        run = variants.get(name) or {"outcome": None, "observed": None, "message": None}
        if run["outcome"] is None:
            run = {**run, "outcome": "error", "message": run["message"] or "did not run"}
        evidence[name] = run
    outcomes = [run["outcome"] for run in evidence.values()]
    case["outcome"] = min(outcomes, key=_MERGE_ORDER.index)
    case["observed"] = evidence
    remarks = [
        f"{name}: {run['outcome']}" + (f" ({run['message']})" if run["message"] else "")
        for name, run in evidence.items()
    ]
    case["message"] = "; ".join(remarks)


def _outcome(kind: str, report: pytest.TestReport) -> Tuple[Optional[str], Optional[str]]:
    """The case outcome one phase's report implies (None: nothing to say yet)."""
    if report.skipped:
        reason = _skip_reason(report)
        if reason.startswith(_UNAVAILABLE):
            return "unavailable", reason[len(_UNAVAILABLE) :]
        return "skip", reason
    if report.failed:
        message = _failure_message(report)
        leaked = report.when == "teardown" and message.startswith("leaked descriptors")
        if kind == "shim" and (report.when == "call" or leaked):
            return "fail", message
        return "error", f"{report.when}: {message}"
    if report.when == "call":
        return ("pass" if kind == "shim" else "observed"), None
    return None, None


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text[len("Skipped: ") :] if text.startswith("Skipped: ") else text


def _failure_message(report: pytest.TestReport) -> str:
    crash = getattr(report.longrepr, "reprcrash", None)
    message = getattr(crash, "message", None) or report.longreprtext.strip().splitlines()[-1:]
    if isinstance(message, list):
        message = message[0] if message else "failed"
    message = str(message)
    if message.startswith("Failed: "):  # pytest.fail's prefix says nothing
        message = message[len("Failed: ") :]
    if "Timeout" in message and "pytest-timeout" in report.longreprtext:
        message = "timed out: " + message
    return str(message)[:2000]


def run_facts(config: pytest.Config, started: float) -> Dict[str, Any]:
    """How this run was made: when, how long, forced implementations, workers."""
    environment = {k: v for k, v in sorted(os.environ.items()) if k.startswith("UDSCOMPAT_")}
    preload = os.environ.get("LD_PRELOAD")
    if preload:
        environment["LD_PRELOAD"] = " ".join(Path(p).name for p in preload.split())
    workers = getattr(config.option, "numprocesses", None)
    return {
        "started": utc_time(started),
        "duration_s": round(time.time() - started, 3),
        "seqpacket_implementation": os.environ.get("UDSCOMPAT_SEQPACKET", "auto") or "auto",
        "standin": os.environ.get("UDSCOMPAT_STANDIN") or None,
        "environment": environment,
        "workers": workers if isinstance(workers, int) else 0,
    }


def write_atomically(path: Path, data: Dict[str, Any]) -> None:
    """Write JSON to ``path`` so readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=1, sort_keys=True, ensure_ascii=False)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
