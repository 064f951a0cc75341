"""Build the NetBSD rump kernel the NetBSD columns run on, cached by the hash of its inputs.

    python -m udscompat_conformance.kernels.rumpbuild [--src-netbsd PATH|URL]
        [--buildrump PATH|URL] [--cache DIR] [--jobs N] [--nice N] [--print-prefix]

Inputs: NetBSD's source subset for rump kernels (``src-netbsd``, the
revision buildrump.sh pins) and ``buildrump.sh``, each a tarball given by
path or URL (``--src-netbsd``/``--buildrump``, or ``UDSCOMPAT_RUMP_SRC`` /
``UDSCOMPAT_RUMP_BUILDRUMP``; default: the vendored copies in
``shared/vendor/`` next to the checkout, or ``UDSCOMPAT_VENDOR_DIR``).
Each is verified by SHA-256 before use.  The project's own patches
(``kernels/patches/``, one comment per hunk naming the upstream bug) are
applied to the extracted tree.

The build lives in ``<cache>/netbsd-rump/<key>/`` where ``<key>`` hashes
the two tarballs, the patches, the build flags and the compiler; a second
call with the same inputs returns at once.  ``<cache>`` is
``UDSCOMPAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/udscompat``, else
``~/.cache/udscompat``.  Nothing is written outside the cache: the build
runs in a private work directory (``TMPDIR`` and ``HOME`` point into it)
that becomes the cache entry only when everything succeeded.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional, Sequence

#: Bump when the layout of a cache entry or the build recipe changes.
FORMAT = 1
PATCHES = Path(__file__).resolve().parent / "patches"
PROJECT = Path(__file__).resolve().parents[2]
MANIFEST = "build.json"


class Input(NamedTuple):
    """One pinned upstream source."""

    name: str
    filename: str
    sha256: str
    #: What the tarball is, in words a reader can check upstream.
    origin: str
    revision: str


SRC_NETBSD = Input(
    "src-netbsd",
    "src-netbsd-82f3a69.tar.gz",
    "c78a96fb4833ef8bcd9df2a3b2fd43b45dd4af16b975760a5fe331b00a2538df",
    "GitHub rumpkernel/src-netbsd (NetBSD source subset for rump kernels)",
    "82f3a6905f6a3a65ceb3a21046de62437f61e7dd",
)
BUILDRUMP = Input(
    "buildrump.sh",
    "buildrump.sh-6cccd46.tar.gz",
    "1c0d7f5a9f8941fbdcdfbbfcb9bddeb8e456e78a53bda1822066f22228fe44fb",
    "GitHub rumpkernel/buildrump.sh",
    "6cccd46",
)

#: gcc >= 10 defaults to -fno-common, which breaks nbmake and this kernel; the 2016 tree
#: also trips newer warnings, which it treats as errors.
HOST_CFLAGS = "-O -fcommon -w"
BUILD_FLAGS = ["-F", "CFLAGS=-Wno-error -fcommon", "-F", "CWARNFLAGS=-Wno-error"]
#: Two compiler_rt unit tests are missing from the src-netbsd tarball; nothing builds them,
#: but the tree check looks for them.
MISSING_FILES = [
    "sys/external/bsd/compiler_rt/dist/test/Unit/udivmodti4_test.c",
    "sys/external/bsd/compiler_rt/dist/test/builtins/Unit/udivmodti4_test.c",
]
#: NetBSD headers the native-ABI provider reads its constants from (kept in the cache).
NETBSD_HEADERS = [
    "sys/sys/socket.h",
    "sys/sys/un.h",
    "sys/sys/errno.h",
    "sys/sys/fcntl.h",
    "sys/sys/param.h",
    "sys/sys/resource.h",
    "sys/sys/stat.h",
    "sys/sys/ioctl.h",
    "sys/sys/filio.h",
    "sys/sys/ioccom.h",
    "sys/sys/sockio.h",
    "sys/sys/syscall.h",
    "sys/sys/ucred.h",
]


class BuildError(RuntimeError):
    """The build could not be made; the message says which step and why."""


class Build(NamedTuple):
    """A finished, cached rump kernel build."""

    root: Path
    manifest: Dict[str, Any]

    @property
    def prefix(self) -> Path:
        """The buildrump.sh destination: ``bin/rump_server``, ``lib/``, ``include/``."""
        return self.root / "rump"

    @property
    def headers(self) -> Path:
        """NetBSD's own headers from the source tree (``sys/socket.h`` ...)."""
        return self.root / "netbsd-include"

    @property
    def rump_server(self) -> Path:
        return self.prefix / "bin" / "rump_server"

    @property
    def libdir(self) -> Path:
        return self.prefix / "lib"


# --- locations ---------------------------------------------------------------------------------


def cache_root() -> Path:
    """``UDSCOMPAT_CACHE_DIR``, else ``$XDG_CACHE_HOME/udscompat``, else ``~/.cache/udscompat``."""
    forced = os.environ.get("UDSCOMPAT_CACHE_DIR")
    if forced:
        return Path(forced)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "udscompat"


def vendor_dir(start: Optional[Path] = None) -> Optional[Path]:
    """Where the vendored tarballs are: ``UDSCOMPAT_VENDOR_DIR``, else the first
    ``shared/vendor`` holding both pinned tarballs in an ancestor of ``start`` (default:
    the package's own checkout or install location, then the current directory)."""
    forced = os.environ.get("UDSCOMPAT_VENDOR_DIR")
    if forced:
        return Path(forced) if Path(forced).is_dir() else None
    starts = [start] if start is not None else [PROJECT, Path.cwd()]
    for here in starts:
        resolved = here.resolve()
        for parent in [resolved, *resolved.parents]:
            candidate = parent / "shared" / "vendor"
            if all((candidate / i.filename).is_file() for i in (SRC_NETBSD, BUILDRUMP)):
                return candidate
    return None


def default_input(pinned: Input, env: str) -> Optional[str]:
    """The input given by ``env``, else the vendored tarball, else None."""
    given = os.environ.get(env)
    if given:
        return given
    vendor = vendor_dir()
    return str(vendor / pinned.filename) if vendor is not None else None


# --- inputs -------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(spec: str, downloads: Path) -> Path:
    """A local path for ``spec``: a path, or an http(s)/file URL fetched into ``downloads``."""
    scheme = urllib.parse.urlsplit(spec).scheme
    if scheme in ("", "file") and not spec.startswith("file:"):
        path = Path(spec)
        if not path.is_file():
            raise BuildError(f"input {spec}: no such file")
        return path
    if scheme not in ("http", "https", "file"):
        raise BuildError(f"input {spec}: only paths and http, https or file URLs are supported")
    downloads.mkdir(parents=True, exist_ok=True)
    name = Path(urllib.parse.urlsplit(spec).path).name or "download"
    target = downloads / name
    partial = downloads / f".{name}.{os.getpid()}.part"
    try:
        with urllib.request.urlopen(spec, timeout=60) as response, partial.open("wb") as out:
            shutil.copyfileobj(response, out)
        os.replace(partial, target)
    except OSError as exc:
        raise BuildError(f"input {spec}: download failed: {exc}") from exc
    finally:
        if partial.exists():
            partial.unlink()
    return target


def verify(path: Path, pinned: Input, expected: Optional[str] = None) -> str:
    """The SHA-256 of ``path``, which must be ``expected`` (default: the pinned one)."""
    want = (expected or pinned.sha256).lower()
    got = sha256_file(path)
    if got != want:
        raise BuildError(
            f"{pinned.name} tarball {path}: SHA-256 {got}, expected {want}"
            + ("" if expected else " (the pinned release; pass --*-sha256 for another one)")
        )
    return got


def patch_files() -> List[Path]:
    return sorted(PATCHES.glob("*.patch"))


def patches_digest(paths: Sequence[Path]) -> str:
    """One SHA-256 over the patches' names and contents, in order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def compiler_version() -> str:
    try:
        out = subprocess.run(
            ["cc", "--version"], capture_output=True, text=True, timeout=30, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"no working C compiler (cc --version: {exc})") from exc
    return out.stdout.splitlines()[0].strip() if out.stdout else "unknown"


def cache_key(src_sha: str, buildrump_sha: str, patches_sha: str, compiler: str) -> str:
    recipe = json.dumps(
        {
            "format": FORMAT,
            "src": src_sha,
            "buildrump": buildrump_sha,
            "patches": patches_sha,
            "compiler": compiler,
            "host_cflags": HOST_CFLAGS,
            "flags": BUILD_FLAGS,
        },
        sort_keys=True,
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:24]


# --- the build -----------------------------------------------------------------------------------


def netbsd_release(param_h: str) -> str:
    """``7.99.34`` from ``sys/sys/param.h``'s ``__NetBSD_Version__`` (MMmmrrpp00)."""
    match = re.search(r"#define\s+__NetBSD_Version__\s+(\d+)", param_h)
    if match is None:
        raise BuildError("sys/sys/param.h has no __NetBSD_Version__")
    number = int(match.group(1))
    major, minor, patch = number // 100000000, number // 1000000 % 100, number // 100 % 10000
    return f"{major}.{minor}.{patch}"


def _extract(tarball: Path, dest: Path, strip: int) -> None:
    """Extract ``tarball`` under ``dest``, dropping ``strip`` leading path parts; refuse
    members that would land outside ``dest`` (absolute paths, ``..``, links out)."""
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    with tarfile.open(tarball) as archive:
        members = []
        for member in archive.getmembers():
            parts = Path(member.name).parts[strip:]
            if not parts:
                continue
            if member.name.startswith("/") or ".." in parts:
                raise BuildError(f"{tarball.name}: unsafe member {member.name!r}")
            if member.issym() or member.islnk():
                target = (root / Path(*parts).parent / member.linkname).resolve()
                if member.linkname.startswith("/") or not str(target).startswith(str(root)):
                    raise BuildError(f"{tarball.name}: link {member.name!r} leaves the tree")
            if member.isdev():
                continue
            member.name = str(Path(*parts))
            members.append(member)
        # Members are checked above; Pythons with extraction filters get the "tar" one too.
        options: Dict[str, Any] = {"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}
        archive.extractall(dest, members=members, **options)


def _run(argv: List[str], cwd: Path, env: Dict[str, str], log: Any, nice: int, what: str) -> None:
    """Run one build step in a process group of its own; whatever interrupts the wait
    (a timeout, ^C) ends the whole group, so no make or compiler outlives the build."""
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()

    def lower_priority() -> None:
        if nice:
            os.nice(nice)

    process = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=lower_priority,
        start_new_session=True,
    )
    try:
        code = process.wait()
    except BaseException:
        _end_group(process)
        raise
    if code != 0:
        raise BuildError(f"{what} failed (exit {code}); see {log.name}")


def _end_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group led by ``process``, then SIGKILL what is left."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; members may not be: one SIGKILL for the group settles it.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        break


class _Lock:
    """An exclusive flock on ``path``: one build of a key at a time, across processes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1

    def __enter__(self) -> _Lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)


def find_build(cache: Optional[Path] = None, key: Optional[str] = None) -> Optional[Build]:
    """A finished build in the cache (the one for ``key``, else the newest), or None."""
    base = (cache or cache_root()) / "netbsd-rump"
    if key is not None:
        candidates = [base / key]
    else:
        candidates = sorted(
            (p for p in base.glob("*") if (p / MANIFEST).is_file()),
            key=lambda p: (p / MANIFEST).stat().st_mtime,
            reverse=True,
        )
    for root in candidates:
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            continue
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        build = Build(root, manifest)
        if build.rump_server.is_file() and (build.libdir / "librumpclient.so").exists():
            return build
    return None


def build(
    src: str,
    buildrump: str,
    *,
    cache: Optional[Path] = None,
    jobs: int = 2,
    nice: int = 10,
    src_sha256: Optional[str] = None,
    buildrump_sha256: Optional[str] = None,
    keep_tree: bool = False,
    progress: Any = None,
) -> Build:
    """Build (or find in the cache) the rump kernel from these two tarballs.

    Raises:
        BuildError: an input is missing or has the wrong hash, a patch does not
            apply, or the build failed (the log in the work directory says why).
    """
    cache = cache or cache_root()
    downloads = cache / "downloads"
    src_path = fetch(src, downloads)
    buildrump_path = fetch(buildrump, downloads)
    src_sha = verify(src_path, SRC_NETBSD, src_sha256)
    buildrump_sha = verify(buildrump_path, BUILDRUMP, buildrump_sha256)
    patches = patch_files()
    patches_sha = patches_digest(patches)
    compiler = compiler_version()
    key = cache_key(src_sha, buildrump_sha, patches_sha, compiler)
    base = cache / "netbsd-rump"
    with _Lock(base / f".{key}.lock"):
        found = find_build(cache, key)
        if found is not None:
            return found
        work = base / f".{key}.work"
        if work.exists():
            shutil.rmtree(work)  # a build that died half-way: start again
        work.mkdir(parents=True)
        started = time.monotonic()
        with (work / "build.log").open("w", encoding="utf-8") as log:

            def step(text: str) -> None:
                log.write(f"\n== {text}\n")
                log.flush()
                if progress is not None:
                    print(f"rumpbuild: {text}", file=progress, flush=True)

            step(f"extracting {src_path.name} and {buildrump_path.name}")
            _extract(buildrump_path, work / "buildrump.sh", strip=1)
            _extract(src_path, work / "src", strip=1)
            for missing in MISSING_FILES:
                target = work / "src" / missing
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text("/* not in the src-netbsd tarball; never built */\n")
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": str(work / "home"),
                "TMPDIR": str(work / "tmp"),
                "LC_ALL": "C",
                "HOST_CFLAGS": HOST_CFLAGS,
            }
            (work / "home").mkdir()
            (work / "tmp").mkdir()
            for patch in patches:
                step(f"applying {patch.name}")
                _run(
                    ["patch", "-p1", "--forward", "--batch", "-i", str(patch)],
                    work / "src",
                    env,
                    log,
                    0,
                    f"patch {patch.name}",
                )
            step(f"buildrump.sh tools build install (-j{jobs}, nice {nice})")
            _run(
                [
                    "./buildrump.sh",
                    "-s",
                    str(work / "src"),
                    "-o",
                    str(work / "obj"),
                    "-d",
                    str(work / "rump"),
                    f"-j{jobs}",
                    "-q",
                    "-r",
                    *BUILD_FLAGS,
                    "tools",
                    "build",
                    "install",
                ],
                work / "buildrump.sh",
                env,
                log,
                nice,
                "buildrump.sh",
            )
            headers = work / "netbsd-include"
            for header in NETBSD_HEADERS:
                source = work / "src" / header
                if source.is_file():
                    target = headers / Path(header).relative_to("sys")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
            release = netbsd_release((work / "src" / "sys/sys/param.h").read_text())
            seconds = round(time.monotonic() - started, 1)
            step(f"built in {seconds} s")
        manifest = {
            "format": FORMAT,
            "key": key,
            "netbsd_release": release,
            "src_netbsd": {
                "file": src_path.name,
                "sha256": src_sha,
                "origin": SRC_NETBSD.origin,
                "revision": SRC_NETBSD.revision if src_sha == SRC_NETBSD.sha256 else None,
            },
            "buildrump": {
                "file": buildrump_path.name,
                "sha256": buildrump_sha,
                "origin": BUILDRUMP.origin,
                "revision": BUILDRUMP.revision if buildrump_sha == BUILDRUMP.sha256 else None,
            },
            "patches": [p.name for p in patches],
            "patches_sha256": patches_sha,
            "compiler": compiler,
            "flags": {"HOST_CFLAGS": HOST_CFLAGS, "buildrump": BUILD_FLAGS, "jobs": jobs},
            "build_seconds": seconds,
            "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        if not keep_tree:
            for bulky in ("src", "obj", "buildrump.sh", "tmp", "home"):
                shutil.rmtree(work / bulky, ignore_errors=True)
        target = base / key
        if target.exists():
            shutil.rmtree(target)
        os.replace(work, target)
    found = find_build(cache, key)
    if found is None:
        raise BuildError(f"the build finished but {target} lacks rump_server or librumpclient")
    return found


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m udscompat_conformance.kernels.rumpbuild",
        description=__doc__.split("\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--src-netbsd", default=None, help="src-netbsd tarball, path or URL (UDSCOMPAT_RUMP_SRC)"
    )
    parser.add_argument(
        "--buildrump",
        default=None,
        help="buildrump.sh tarball, path or URL (UDSCOMPAT_RUMP_BUILDRUMP)",
    )
    parser.add_argument(
        "--src-netbsd-sha256", default=None, help="expected SHA-256 (default: pinned)"
    )
    parser.add_argument(
        "--buildrump-sha256", default=None, help="expected SHA-256 (default: pinned)"
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help=f"cache directory ({cache_root()})"
    )
    parser.add_argument("--jobs", type=int, default=2, help="make -j (default 2)")
    parser.add_argument("--nice", type=int, default=10, help="niceness of the build (default 10)")
    parser.add_argument(
        "--keep-tree", action="store_true", help="keep src/ and obj/ in the cache entry"
    )
    parser.add_argument(
        "--print-prefix", action="store_true", help="print only the install prefix when done"
    )
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs: must be at least 1")
    src = args.src_netbsd or default_input(SRC_NETBSD, "UDSCOMPAT_RUMP_SRC")
    buildrump = args.buildrump or default_input(BUILDRUMP, "UDSCOMPAT_RUMP_BUILDRUMP")
    if src is None or buildrump is None:
        print(
            "rumpbuild: no sources: pass --src-netbsd and --buildrump (or set "
            "UDSCOMPAT_RUMP_SRC/UDSCOMPAT_RUMP_BUILDRUMP or UDSCOMPAT_VENDOR_DIR)",
            file=sys.stderr,
        )
        return 2
    try:
        done = build(
            src,
            buildrump,
            cache=args.cache,
            jobs=args.jobs,
            nice=args.nice,
            src_sha256=args.src_netbsd_sha256,
            buildrump_sha256=args.buildrump_sha256,
            keep_tree=args.keep_tree,
            progress=None if args.print_prefix else sys.stderr,
        )
    except BuildError as exc:
        print(f"rumpbuild: {exc}", file=sys.stderr)
        return 1
    if args.print_prefix:
        print(done.prefix)
    else:
        m = done.manifest
        print(
            f"rumpbuild: NetBSD {m['netbsd_release']} rump kernel in {done.prefix} "
            f"(key {m['key']}, built in {m['build_seconds']} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
