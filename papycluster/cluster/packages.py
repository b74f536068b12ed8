"""The ``packages`` of the hosts file: third-party wheels installed on each host by ``up``.

A bare host may have no pip and no network (air-gapped), so the controller does the
fetching: it asks the host what its Python needs of a wheel (one short script run:
version, implementation, machine, libc), runs ``pip download --only-binary=:all:`` with
``--platform``/``--python-version``/``--implementation``/``--abi`` set for that host,
and ships the wheels by SFTP. The host keeps them as ``<cache_dir>/wheels/<sha256>.whl``
and unpacks the set into ``<cache_dir>/site-<digest>`` (the digest of the wheels'
hashes), which goes on the agent's ``PYTHONPATH``: papycluster's own environment on that
host, apart from the host's Python. Unpacking a wheel is all an import needs (no
scripts, no compilation), and it needs no pip there.

Cached by hash at both ends: on the controller, one download per (requirements,
platform, Python), kept in ``~/.cache/papycluster/wheels/<key>``; on the host, a wheel
already there is not sent again, and a site already unpacked is used as it is.

When no wheel fits, ``up`` fails for that host with the cause ``packages failed``,
naming the host, the requirement and the platform it looked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from papycluster.cluster.errors import HostError

#: Seconds a ``pip download`` may take (big wheels, a slow index) before ``up`` fails.
PIP_TIMEOUT = float(os.environ.get("PAPYCLUSTER_PIP_TIMEOUT") or 600)
#: The oldest glibc that manylinux wheels are built for (manylinux2014 = 2.17).
_OLDEST_GLIBC = 17
_LEGACY = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                            ".cache")
    return Path(base) / "papycluster" / "wheels"


def platforms(info: dict[str, Any]) -> list[str]:
    """The wheel platform tags the host's Python accepts, newest first.

    ``info`` is what ``remote/platform_tags.py`` reported. Linux: every
    ``manylinux_2_N`` from the host's glibc down to 2.17 (and the legacy aliases), or
    ``musllinux_1_N`` on musl; macOS: ``macosx_X_Y`` down to 10.9 (and universal2);
    Windows: ``win_amd64`` and the like.
    """
    machine = info["machine"]
    system = info["os"]
    if system == "linux":
        libc, version = info.get("libc") or ["", ""]
        machine = {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine)
        tags = []
        if libc == "glibc" and version:
            major, minor = (int(x) for x in version.split(".")[:2])
            for n in range(minor, _OLDEST_GLIBC - 1 if major == 2 else -1, -1):
                tags.append(f"manylinux_{major}_{n}_{machine}")
                if n in _LEGACY:
                    tags.append(f"{_LEGACY[n]}_{machine}")
        else:  # musl (Alpine): platform.libc_ver() says nothing
            tags += [f"musllinux_1_{n}_{machine}" for n in (2, 1)]
        return tags + [f"linux_{machine}"]
    if system == "darwin":
        major, minor = (int(x) for x in (info.get("mac") or "10.9").split(".")[:2])
        arch = "arm64" if machine in ("arm64", "aarch64") else "x86_64"
        tags = []
        for m in range(major, 9, -1):
            for n in (range(minor, -1, -1) if m == major else [0]):
                tags += [f"macosx_{m}_{n}_{arch}", f"macosx_{m}_{n}_universal2"]
        return tags + [f"macosx_10_{n}_{arch}" for n in range(15, 8, -1)]
    if system == "windows":
        return [{"amd64": "win_amd64", "x86_64": "win_amd64", "arm64": "win_arm64"}.get(
            machine, "win32")]
    return [info.get("platform", "").replace("-", "_").replace(".", "_")]


def describe(info: dict[str, Any]) -> str:
    """``Python 3.11 (cpython) on linux x86_64, glibc 2.36``: for error messages."""
    libc = " ".join(info.get("libc") or []).strip()
    return (f"Python {info['version'][0]}.{info['version'][1]} ({info['implementation']}) "
            f"on {info['os']} {info['machine']}" + (f", {libc}" if libc else ""))


def pip_arguments(requirements: list[str], info: dict[str, Any], dest: str) -> list[str]:
    """``python -m pip download ...`` for ``requirements`` on the host ``info`` says."""
    major, minor = info["version"][:2]
    implementation = {"cpython": "cp", "pypy": "pp"}.get(info["implementation"], "py")
    args = [sys.executable, "-m", "pip", "download", "--only-binary=:all:",
            "--disable-pip-version-check", "--no-input", "--dest", dest,
            "--python-version", f"{major}.{minor}", "--implementation", implementation]
    if implementation == "cp":
        args += ["--abi", f"cp{major}{minor}{info.get('abiflags') or ''}", "--abi", "abi3"]
    args += ["--abi", "none"]
    for tag in platforms(info):
        args += ["--platform", tag]
    return args + ["--", *requirements]


def _culprit(text: str, requirements: list[str]) -> str:
    """The requirement pip could not satisfy, from its error output."""
    for pattern in (r"No matching distribution found for (\S+)",
                    r"Could not find a version that satisfies the requirement (\S+)",
                    r"Invalid requirement: '?([^'\s]+)"):
        m = re.search(pattern, text)
        if m:
            return m.group(1)
    return ", ".join(requirements)


def download(host: str, requirements: list[str], info: dict[str, Any]) -> list[Path]:
    """The wheels of ``requirements`` (with their dependencies) for the host ``info``
    describes, from the controller's cache or downloaded into it."""
    key = hashlib.sha256(json.dumps([sorted(requirements), platforms(info),
                                     info["version"][:2], info["implementation"],
                                     info.get("abiflags")]).encode()).hexdigest()[:24]
    where = cache_root() / key
    manifest = where / "manifest.json"
    if manifest.exists():
        names = json.loads(manifest.read_text())
        wheels = [where / n for n in names]
        if all(w.exists() for w in wheels):
            return wheels
    where.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=where.parent))
    try:
        try:
            done = subprocess.run(pip_arguments(requirements, info, str(tmp)),
                                  capture_output=True, text=True, timeout=PIP_TIMEOUT,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise HostError(host, "packages failed",
                            f"pip download of {', '.join(requirements)} took more than "
                            f"{PIP_TIMEOUT:g} s (PAPYCLUSTER_PIP_TIMEOUT)")
        if done.returncode != 0:
            text = done.stderr + "\n" + done.stdout
            lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
            why = [line for line in lines if line.startswith("ERROR")] or lines[-1:] or [
                f"pip exited with {done.returncode}"]
            raise HostError(host, "packages failed",
                            f"no wheel of {_culprit(text, requirements)} fits {host} "
                            f"({describe(info)}): {' '.join(why)[:600]}")
        names = sorted(p.name for p in tmp.glob("*.whl"))
        if not names:
            raise HostError(host, "packages failed",
                            f"pip downloaded no wheel for {', '.join(requirements)}")
        (tmp / "manifest.json").write_text(json.dumps(names))
        shutil.rmtree(where, ignore_errors=True)
        try:
            os.replace(tmp, where)
        except OSError:  # another `up` was first: its wheels are as good
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [where / n for n in json.loads(manifest.read_text())]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plan(cache_dir: str, wheels: list[Path]) -> dict[str, Any]:
    """Where the wheels go on the host and the site they make: the launch's ``site``.

    ``wheels`` maps each host path (named by the wheel's hash: cached by content) to
    the local file; ``dir`` is named by the digest of the whole set.
    """
    hashes = {w: sha256(w) for w in wheels}
    digest = hashlib.sha256("".join(sorted(hashes.values())).encode()).hexdigest()[:24]
    return {"dir": f"{cache_dir}/site-{digest}",
            "wheels": {f"{cache_dir}/wheels/{h}.whl": str(w) for w, h in hashes.items()},
            "names": sorted(w.name for w in wheels)}
