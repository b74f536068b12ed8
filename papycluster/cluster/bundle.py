"""The bundle: papycluster and the packages its agent needs, zipped for a bare host.

A bare host has Python >= 3.9 and sshd, maybe no pip and no network. So the controller
ships a zip of papycluster and the pure-Python packages the agent needs, taken from its
own installation; the host caches it as ``<cache_dir>/<version>-<hash>.zip`` and the
next ``up`` reuses it. The agent imports straight from the zip (zipimport), which holds
code compiled for the controller's Python beside the sources: nothing is unpacked, and
a host with the controller's Python compiles nothing (another Python compiles the
sources, as usual).

Why its own module: building and caching the zip is the controller's side only, and
independent of how it travels (SFTP, or inside the launch script; see
:mod:`papycluster.cluster.deploy`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import marshal
import os
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path

from papycluster.cluster.errors import HostError

#: Packages the agent and its workers import; all pure Python.
BUNDLE_PACKAGES = ("papycluster", "rpyc", "cloudpickle")
#: Pure-Python packages shipped too when the controller has them (PyMySQL: the mysql
#: transport). Not plumbum: rpyc wants it only for its command-line tools and SSH
#: tunnels, which an agent never uses, and it was a third of the bundle.
OPTIONAL_PACKAGES = ("pymysql",)
DEFAULT_CACHE_DIR = "~/.cache/papycluster"

_bundle_lock = threading.Lock()
_bundle_cache: dict[tuple[str, ...], tuple[Path, str]] = {}


def package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise HostError("controller", "deploy failed",
                        f"package {name} is not installed on the controller")
    return Path(next(iter(spec.submodule_search_locations)))


def bundle_packages() -> tuple[str, ...]:
    """The required packages plus the optional ones this controller has."""
    return BUNDLE_PACKAGES + tuple(
        p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)


def build_bundle(packages: tuple[str, ...] | None = None) -> tuple[Path, str]:
    """Zip ``packages`` from this interpreter's installation; return (path, hash).

    The hash covers every file's path and bytes and this Python's version tag (the
    compiled code inside is for it), so an edited papycluster is shipped again while an
    unchanged one is reused from the host's cache.
    """
    packages = packages or bundle_packages()
    with _bundle_lock:
        if packages in _bundle_cache and _bundle_cache[packages][0].exists():
            return _bundle_cache[packages]
        _bundle_cache[packages] = _build_bundle(packages)
        return _bundle_cache[packages]


def _compiled(arcname: str, source: bytes) -> bytes | None:
    """``source`` as a .pyc for this Python, to sit beside it in the bundle.

    zipimport loads ``x.pyc`` next to ``x.py`` when its magic number matches the host's
    Python, so a host with the controller's version compiles nothing (the agent, its
    forkserver and each worker process would otherwise compile every module they import:
    a zip has no ``__pycache__``). Another version ignores it and compiles the source.
    Hash-based and unchecked (PEP 552): zip entries carry no useful mtime, and the zip
    is named by the hash of its sources, so source and code cannot disagree. The code's
    file name is the path inside the bundle (``papycluster/engine/process.py``), which
    remote tracebacks show.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a package's SyntaxWarnings are not ours
            code = compile(source, arcname, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None  # shipped as source only; the host reports it if it is imported
    return (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def _build_bundle(packages: tuple[str, ...]) -> tuple[Path, str]:
    files: list[tuple[str, bytes]] = []
    for name in packages:
        root = package_dir(name)
        for path in sorted(root.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".pyc", ".so",
                                                                             ".pyd"):
                continue
            files.append((f"{name}/{path.relative_to(root).as_posix()}", path.read_bytes()))
    digest = hashlib.sha256(sys.implementation.cache_tag.encode() + b"\0")
    for arcname, data in files:
        digest.update(arcname.encode() + b"\0" + data)
    h = digest.hexdigest()[:16]
    # a cache, not a temp file: one zip per content hash (so an unchanged papycluster
    # is not compiled again by every `papycluster up`). Another controller process
    # (another checkout, a test run) may be shipping an older one right now, so only
    # bundles unused for a day are pruned.
    where = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "papycluster-controller"
    where.mkdir(parents=True, exist_ok=True)
    out = where / f"bundle-{h}.zip"
    for old in where.glob("bundle-*.zip"):
        try:
            if old != out and time.time() - old.stat().st_mtime > 86400:
                old.unlink()
        except OSError:
            pass
    try:
        os.utime(out)  # in use: keep it from the pruning above
    except FileNotFoundError:
        buf = io.BytesIO()
        # the strongest deflate: built once per content, unpacked as fast as any
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for arcname, data in files:
                z.writestr(arcname, data)
                if arcname.endswith(".py"):
                    pyc = _compiled(arcname, data)
                    if pyc is not None:
                        z.writestr(arcname + "c", pyc)
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, out)
    return out, h
