"""The rump kernel build script: inputs verified, cache keyed by inputs, nothing written outside.

A real build takes minutes, so these tests drive ``rumpbuild.build`` with a
stand-in ``buildrump.sh`` tarball (a shell script that lays out what the real
one installs, and also writes to $HOME and $TMPDIR) and a small source tarball
carrying the files the project's patches touch.  The patches themselves are
checked against the pinned upstream tarball when it is vendored here.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import re
import shutil
import signal
import tarfile
import threading
import time
from pathlib import Path
from typing import Dict, Iterator

import pytest

from tests.conftest import needs_c_compiler
from udscompat_conformance.kernels import rumpbuild

FAKE_BUILDRUMP = """#!/bin/sh
# stand-in for buildrump.sh: parse -d DEST, install what the real one installs
set -e
dest=
while [ $# -gt 0 ]; do case "$1" in -d) dest=$2; shift 2;; *) shift;; esac; done
mkdir -p "$dest/bin" "$dest/lib" "$dest/include/rump"
printf '#!/bin/sh\\nexit 0\\n' > "$dest/bin/rump_server"; chmod +x "$dest/bin/rump_server"
: > "$dest/lib/librumpclient.so"
echo "$HOST_CFLAGS" > "$dest/host_cflags"
echo home > "$HOME/written-to-home"; echo tmp > "$TMPDIR/written-to-tmp"
"""


def _tarball(path: Path, top: str, files: Dict[str, bytes], mode: int = 0o755) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}")
            info.size = len(data)
            info.mode = mode
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Dict[str, Path]:
    buildrump = _tarball(
        tmp_path / "buildrump.tar.gz", "buildrump.sh", {"buildrump.sh": FAKE_BUILDRUMP.encode()}
    )
    param = b"#define\t__NetBSD_Version__\t799003400\t/* NetBSD 7.99.34 */\n"
    headers = {h: b"/* stand-in */\n" for h in rumpbuild.NETBSD_HEADERS}
    headers["sys/sys/param.h"] = param
    src = _tarball(tmp_path / "src.tar.gz", "src-netbsd", headers, 0o644)
    return {"src": src, "buildrump": buildrump}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def no_patches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    folder = tmp_path / "patches"
    folder.mkdir()
    monkeypatch.setattr(rumpbuild, "PATCHES", folder)
    return folder


def _build(inputs: Dict[str, Path], cache: Path) -> rumpbuild.Build:
    return rumpbuild.build(
        str(inputs["src"]),
        str(inputs["buildrump"]),
        cache=cache,
        nice=0,
        src_sha256=_sha(inputs["src"]),
        buildrump_sha256=_sha(inputs["buildrump"]),
    )


@needs_c_compiler
@pytest.mark.skipif(shutil.which("patch") is None, reason="no patch(1) on PATH")
def test_build_caches_by_inputs_and_writes_only_in_its_cache(
    inputs: Dict[str, Path], no_patches: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    before = set(tmp_path.iterdir())
    first = _build(inputs, cache)
    assert first.rump_server.is_file()
    assert first.manifest["netbsd_release"] == "7.99.34"
    assert first.manifest["src_netbsd"]["revision"] is None  # not the pinned tarball
    assert (first.prefix / "host_cflags").read_text().strip() == rumpbuild.HOST_CFLAGS
    assert (first.headers / "sys" / "socket.h").is_file()
    # $HOME and $TMPDIR of the build pointed into its work directory, which is gone.
    assert set(tmp_path.iterdir()) - before == {cache}
    assert not list(first.root.rglob("written-to-*"))
    assert sorted(p.name for p in first.root.iterdir()) == [
        "build.json",
        "build.log",
        "netbsd-include",
        "rump",
    ]
    # Same inputs: found in the cache, not rebuilt.
    stamp = (first.root / "build.json").stat().st_mtime_ns
    again = _build(inputs, cache)
    assert again.root == first.root
    assert (again.root / "build.json").stat().st_mtime_ns == stamp
    # A patch changes the key.
    (no_patches / "01-x.patch").write_text("a comment only: patch(1) finds no hunks\n")
    with pytest.raises(rumpbuild.BuildError, match=r"patch 01-x\.patch failed"):
        _build(inputs, cache)
    assert rumpbuild.find_build(cache) == first  # the failed key left no entry behind


@needs_c_compiler
def test_wrong_checksum_is_refused_before_anything_runs(
    inputs: Dict[str, Path], no_patches: Path, tmp_path: Path
) -> None:
    with pytest.raises(rumpbuild.BuildError, match=r"SHA-256 .* expected 0{64}"):
        rumpbuild.build(
            str(inputs["src"]),
            str(inputs["buildrump"]),
            cache=tmp_path / "cache",
            src_sha256="0" * 64,
            buildrump_sha256=_sha(inputs["buildrump"]),
        )
    # The pinned hashes are the default: a stand-in tarball does not pass as upstream.
    with pytest.raises(rumpbuild.BuildError, match="the pinned release"):
        rumpbuild.verify(inputs["src"], rumpbuild.SRC_NETBSD)
    assert not (tmp_path / "cache" / "netbsd-rump").exists()


def test_cache_key_covers_every_input() -> None:
    base = rumpbuild.cache_key("a", "b", "c", "gcc 12")
    assert (
        len(
            {
                base,
                *(
                    rumpbuild.cache_key(*v)
                    for v in [
                        ("x", "b", "c", "gcc 12"),
                        ("a", "x", "c", "gcc 12"),
                        ("a", "b", "x", "gcc 12"),
                        ("a", "b", "c", "gcc 13"),
                    ]
                ),
            }
        )
        == 5
    )
    assert rumpbuild.cache_key("a", "b", "c", "gcc 12") == base


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)  # type: ignore[arg-type]

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_inputs_by_url(tmp_path: Path, http_server: str) -> None:
    served = tmp_path / "served"
    (served / "src.tar.gz").write_bytes(b"tarball bytes")
    got = rumpbuild.fetch(f"{http_server}/src.tar.gz", tmp_path / "dl")
    assert got.read_bytes() == b"tarball bytes"
    assert got.parent == tmp_path / "dl"
    assert rumpbuild.fetch(got.as_uri(), tmp_path / "dl2").read_bytes() == b"tarball bytes"
    with pytest.raises(rumpbuild.BuildError, match="download failed"):
        rumpbuild.fetch(f"{http_server}/missing.tar.gz", tmp_path / "dl")
    assert not list((tmp_path / "dl").glob(".*part"))
    with pytest.raises(rumpbuild.BuildError, match="only paths and http"):
        rumpbuild.fetch("ftp://example.invalid/x", tmp_path / "dl")
    with pytest.raises(rumpbuild.BuildError, match="no such file"):
        rumpbuild.fetch(str(tmp_path / "nope.tar.gz"), tmp_path / "dl")


@pytest.mark.parametrize(
    ("name", "link"),
    [("../escape", None), ("/abs", None), ("sub/link", "/etc/passwd"), ("sub/up", "../../x")],
)
def test_extract_refuses_members_leaving_the_tree(
    tmp_path: Path, name: str, link: str | None
) -> None:
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(f"top/{name}" if not name.startswith("/") else name)
        if link is not None:
            info.type = tarfile.SYMTYPE
            info.linkname = link
        archive.addfile(info, io.BytesIO(b""))
    with pytest.raises(rumpbuild.BuildError, match=r"unsafe member|leaves the tree"):
        rumpbuild._extract(path, tmp_path / "out", strip=1)


def test_netbsd_release_from_param_h() -> None:
    assert rumpbuild.netbsd_release("#define\t__NetBSD_Version__\t1000000000\n") == "10.0.0"
    assert rumpbuild.netbsd_release("#define __NetBSD_Version__ 799003400 /* */") == "7.99.34"
    with pytest.raises(rumpbuild.BuildError):
        rumpbuild.netbsd_release("nothing here")


def test_vendor_dir_found_in_an_ancestor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UDSCOMPAT_VENDOR_DIR", raising=False)
    vendor = tmp_path / "shared" / "vendor"
    vendor.mkdir(parents=True)
    checkout = tmp_path / "wt" / "name"
    checkout.mkdir(parents=True)
    assert rumpbuild.vendor_dir(checkout) is None  # not both tarballs yet
    for pinned in (rumpbuild.SRC_NETBSD, rumpbuild.BUILDRUMP):
        (vendor / pinned.filename).write_bytes(b"")
    assert rumpbuild.vendor_dir(checkout) == vendor
    monkeypatch.setenv("UDSCOMPAT_VENDOR_DIR", str(tmp_path / "elsewhere"))
    assert rumpbuild.vendor_dir(checkout) is None


def test_every_patch_hunk_names_its_bug() -> None:
    """Each hunk of the project's patches carries a comment saying what upstream got wrong."""
    patches = rumpbuild.patch_files()
    assert [p.name for p in patches] == [
        "01-sysproxy-client-emulation.patch",
        "02-compat-linux-socket.patch",
        "03-rumphijack-glibc.patch",
    ]
    for patch in patches:
        hunks = re.split(r"\n(?=@@ )", patch.read_text())[1:]
        assert hunks, patch.name
        for hunk in hunks:
            added = "".join(line for line in hunk.splitlines() if line.startswith("+"))
            assert "udscompat" in added, f"{patch.name} {hunk.splitlines()[0]}: no comment"


def test_an_interrupted_build_step_leaves_no_process_behind(tmp_path: Path) -> None:
    """A timeout or ^C while a step runs ends its whole process group (make's children too)."""
    script = tmp_path / "step.sh"
    pidfile = tmp_path / "grandchild.pid"
    script.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pidfile}\nwait\n")
    script.chmod(0o755)

    class Interrupted(Exception):
        pass

    def interrupt(*_: object) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with (tmp_path / "log").open("w") as log:
            signal.setitimer(signal.ITIMER_REAL, 0.5)
            with pytest.raises(Interrupted):
                rumpbuild._run([str(script)], tmp_path, dict(os.environ), log, 0, "step")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    grandchild = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(grandchild, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail(f"the step's child {grandchild} outlived the interrupted build")
