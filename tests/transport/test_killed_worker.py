"""A worker process killed with SIGKILL releases nothing: its pool removes what it left.

Real process pools, real files, fifos and shared-memory segments. The killed worker's
items must stay loadable until the pool stops (its tickets may be on their way to a
loader) and be gone after.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

import pytest

from papycluster import NuMap, Piper, Worker, workers
from papycluster.engine import Dagger
from papycluster.transport import base, registry

from .test_transports import still_there


def _with_pid(inbox):  # noqa: ANN001, ANN202
    return (inbox[0], os.getpid())


def _gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` has ended and been reaped (its pool noticed) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.02)
    return False


@pytest.mark.parametrize(("kind", "start_method"), [
    ("fifo", "spawn"), ("shm", "spawn"), ("file", "spawn"), ("file", "fork")])
def test_what_a_killed_worker_left_goes_when_its_pool_stops(kind: str, start_method: str,
                                                            share: Path) -> None:
    dump = Worker((workers.io.pickle_dumps, workers.io.dump_item, _with_pid),
                  ((), (kind,), ()))
    up = Piper(dump, parallel=NuMap(worker_num=2, start_method=start_method))
    dagger = Dagger()
    dagger.add_piper(up)
    items = [bytes([i]) * (5000 + i) for i in range(20)]
    dagger.connect([items])
    dagger.start()
    try:
        out = list(up)
        assert len(out) == 20
        victim, held = Counter(pid for _, pid in out).most_common(1)[0]
        theirs = [(i, tk) for i, (tk, pid) in enumerate(out) if pid == victim]
        os.kill(victim, signal.SIGKILL)
        assert _gone(victim), f"worker {victim} was not reaped after SIGKILL"
        # Nothing released them: they are all still there ...
        assert all(still_there(tk) for _, tk in theirs)
        if kind != "fifo":  # ... and loadable (a fifo dies with its server thread)
            i, tk = theirs[0]
            data = workers.io.pickle_loads([workers.io.load_item([tk])])
            assert data == items[i]
    finally:
        dagger.stop()
        dagger.disconnect(forced=True)
    left = [tk for tk, _ in out if still_there(tk)]
    assert left == [], f"{len(left)} of the killed worker's {held} items were left: {left}"


def test_a_sweep_removes_only_the_tagged_and_follows_no_link(tmp_path: Path) -> None:
    tag, other = base.new_owner_tag(), base.new_owner_tag()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_bytes(b"not papycluster's")
    root = tmp_path / "root"
    root.mkdir()
    fifo_dir = root / f"papyc-fifo-{tag}-{'a' * 32}"
    fifo_dir.mkdir()
    os.mkfifo(fifo_dir / "ctl")
    (root / f"papyc-fifo-{tag}-{'b' * 32}").symlink_to(outside)  # planted
    (root / f"papyc-fifo-{other}-{'c' * 32}").mkdir()  # another process's

    assert base.remove_tagged(str(root), f"papyc-fifo-{tag}-") == 2
    assert sorted(p.name for p in root.iterdir()) == [f"papyc-fifo-{other}-{'c' * 32}"]
    assert (outside / "keep").read_bytes() == b"not papycluster's"
    with pytest.raises(ValueError, match="owner tag"):
        registry.sweep("../../etc")


def _pool_and_one_held(inbox):  # noqa: ANN001, ANN202
    """Fill this worker's shm pool (three sizes, dumped, loaded, released: free segments
    kept for reuse), then dump one item that stays held."""
    for size in (5000, 300_000, 2_000_000):
        tk = workers.io.dump_item([bytes(size)], "shm")
        assert workers.io.load_item([tk]) == bytes(size)
    return (workers.io.dump_item([inbox[0]], "shm"), os.getpid())


def _segments_of(tag: str) -> list[str]:
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"papyc_{tag}_")]


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no /dev/shm on this host")
def test_a_killed_workers_free_pooled_shm_segments_go_too() -> None:
    """The shm pool keeps released segments for reuse: no ticket names them any more, so
    only the owner tag can find them after a SIGKILL."""
    up = Piper(Worker((_pool_and_one_held,), ((),)),
               parallel=NuMap(worker_num=1, start_method="spawn"))
    dagger = Dagger()
    dagger.add_piper(up)
    dagger.connect([[b"held"]])
    dagger.start()
    try:
        [(tk, pid)] = list(up)
        tag = tk[4].split("_")[1]
        # Three sizes, three segments: the held item reused the smallest, two are free.
        assert len(_segments_of(tag)) == 3
        os.kill(pid, signal.SIGKILL)
        assert _gone(pid), f"worker {pid} was not reaped after SIGKILL"
        assert len(_segments_of(tag)) == 3  # nothing released them
    finally:
        dagger.stop()
        dagger.disconnect(forced=True)
    assert _segments_of(tag) == []
