"""Helpers for the attacks of a second local user: ``nobody`` (uid 65534), played by a
real process of that uid, which the tests (run as root) start with ``subprocess``."""

from __future__ import annotations

import functools
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

NOBODY = 65534


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("these tests play a second user (uid 65534) and must run as root "
                    "(as CI does)", pytrace=False)


@functools.cache
def _python() -> str:
    """An interpreter that uid 65534 may run (ours may sit in root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3", shutil.which("python3") or ""):
        if not candidate:
            continue
        try:
            subprocess.run([candidate, "-I", "-c", "pass"], user=NOBODY, group=NOBODY,
                           extra_groups=[], cwd="/", check=True, timeout=30,
                           capture_output=True)
            return candidate
        except (OSError, subprocess.CalledProcessError):
            continue
    pytest.fail(f"no Python interpreter that uid {NOBODY} may run", pytrace=False)


def as_nobody(code: str, *args: str, data: bytes = b"") -> str:
    """Run ``code`` (Python, the standard library only) as uid/gid 65534; its stdout.

    ``args`` are its ``sys.argv[1:]``, ``data`` its standard input. A failure of the
    attacker is a test failure: the attack must really have been made for the test to
    mean anything.
    """
    need_root()
    done = subprocess.run([_python(), "-I", "-c", textwrap.dedent(code), *args],
                          user=NOBODY, group=NOBODY, extra_groups=[], cwd="/",
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, input=data,
                          timeout=60)
    if done.returncode != 0:
        raise AssertionError(f"the attacker (uid {NOBODY}) failed: {done.stderr.decode()}")
    return done.stdout.decode()


@contextmanager
def open_dir(prefix: str = "papyc-open-", parent: str | None = None) -> Iterator[Path]:
    """A directory anyone may write in, without the sticky bit (a careless share)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent or "/tmp"))
    path.chmod(0o777)
    try:
        yield path
    finally:
        subprocess.run(["rm", "-rf", "--", str(path)], check=False, timeout=60)


class Evil:
    """Unpickling this creates ``marker``: the attacker's code running as the victim."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


def evil_pickle(marker: Path, size: int) -> bytes:
    """A pickle that runs code when loaded, padded to exactly ``size`` bytes (the loader
    ignores what follows the pickle's STOP)."""
    data = pickle.dumps(Evil(marker), protocol=5)
    if len(data) > size:
        raise ValueError(f"the victim's item ({size} B) is too small for the payload")
    return data + b" " * (size - len(data))
