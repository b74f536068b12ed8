"""Fixtures of the bad-input matrix: real sshd, real agents, real sockets, a real tiny disk.

The SSH server is ``sshd`` of tests/plugins/sshd.py (a plugin of the root conftest);
each test gets its own cluster state file and cluster secret, and whatever agent a test
started is killed after it even if the test failed, so that one case can never leak into the next.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.plugins import helpers as ssh_helpers
from tests.transport.peer import SECRET as PEER_SECRET
from tests.transport.peer import Peer

_ENV_KEYS = ("PAPYCLUSTER_SECRET", "PAPYCLUSTER_SECRET_FILE", "PAPYCLUSTER_ADVERTISE_HOST",
             "PAPYCLUSTER_BIND_HOST", "PAPYCLUSTER_HOST_NAME", "PAPYCLUSTER_SHARES",
             "PAPYCLUSTER_UDP_MAX_ITEM", "PAPYCLUSTER_HOSTS")


def bounded(fn: Callable[[], Any], timeout: float, what: str) -> Any:
    """Run ``fn`` in a thread; its result, or its exception re-raised; fail if it hangs.

    This bounds the *test*, it does not time the code: the bound is generous and only a
    hang (a wait without a timeout) can break it.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True, name=f"bounded-{what}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{what} did not return within {timeout:g} s (an unbounded wait)")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def expect_error(fn: Callable[[], Any], kind: type[BaseException] | tuple, *needles: str,
                 timeout: float = 60.0, what: str = "the call") -> BaseException:
    """``fn`` must raise ``kind`` within ``timeout``, its message naming every needle."""
    try:
        bounded(fn, timeout, what)
    except kind as exc:
        text = str(exc)
        for needle in needles:
            assert needle in text, f"{needle!r} not named in: {text}"
        return exc
    pytest.fail(f"{what} did not raise {kind}")


@dataclass
class Env:
    """One test's private controller environment."""

    state: Path
    tmp: Path
    clusters: list[str] = field(default_factory=list)

    def local_cluster(self) -> str:
        """The name ``up_local`` gives this controller's local cluster (recorded for cleanup)."""
        from papycluster.cluster.controller import local_cluster_name

        name = local_cluster_name()
        self.clusters.append(name)
        return name

    def named_cluster(self) -> str:
        name = "b" + uuid.uuid4().hex[:8]
        self.clusters.append(name)
        return name


@pytest.fixture(autouse=True)
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """A private state file and clean papycluster variables; kills what the test started."""
    for key in _ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    state = tmp_path / "state" / "state.json"
    monkeypatch.setenv("PAPYCLUSTER_STATE", str(state))
    e = Env(state, tmp_path)
    yield e
    for cluster in e.clusters:
        for pid in ssh_helpers.agent_pids(cluster):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        for d in ssh_helpers.run_dirs(cluster):
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def transport_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The cluster secret and a private default share, as a host of the cluster has them."""
    share = tmp_path / "share"
    share.mkdir()
    monkeypatch.setenv("PAPYCLUSTER_SECRET", PEER_SECRET)
    monkeypatch.setenv("PAPYCLUSTER_SHARES", f'{{"default": "{share}"}}')
    monkeypatch.setenv("PAPYCLUSTER_ADVERTISE_HOST", "127.0.0.1")
    return share


@pytest.fixture
def peer(transport_env: Path) -> Iterator[Peer]:
    """Another process (spawned, like an engine worker) that dumps items on request."""
    p = Peer()
    try:
        yield p
    finally:
        p.close()


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.fixture
def tiny_share(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB filesystem (tmpfs, else a loop-mounted ext2 image), unmounted after."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    image = None
    res = _run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mnt)])
    if res.returncode != 0:
        image = tmp_path / "tiny.img"
        with open(image, "wb") as f:
            f.truncate(1 << 20)
        mk = _run(["mkfs.ext2", "-q", "-F", str(image)])
        lo = _run(["mount", "-o", "loop", str(image), str(mnt)]) if mk.returncode == 0 else mk
        if lo.returncode != 0:
            pytest.fail("cannot make a small filesystem for the full-share case: tmpfs "
                        f"mount said {res.stderr.strip()!r}, the ext2 loop mount said "
                        f"{lo.stderr.strip()!r} (the test needs root and mount)")
    try:
        yield mnt
    finally:
        um = _run(["umount", str(mnt)])
        if um.returncode != 0:
            _run(["umount", "-l", str(mnt)])
        if image is not None:
            image.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def other_version(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the papycluster package that says it is another version.

    An agent started with this directory first on its PYTHONPATH is a real agent of a
    different release: the same code, another ``__version__``.
    """
    import papycluster

    root = tmp_path_factory.mktemp("other-version")
    src = Path(papycluster.__file__).resolve().parent
    shutil.copytree(src, root / "papycluster",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    init = root / "papycluster" / "__init__.py"
    text = init.read_text()
    assert f'__version__ = "{papycluster.__version__}"' in text
    init.write_text(text.replace(f'__version__ = "{papycluster.__version__}"',
                                 '__version__ = "0.0.0-other"'))
    return root


@pytest.fixture(scope="session")
def ssh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped-code cache of the 'remote' hosts of this directory's SSH cases."""
    return tmp_path_factory.mktemp("badinput-remote-cache")
