"""``papycluster status --watch`` (issue 13 point 6): it refreshes, shows what changed
on the agents between refreshes, and ends on Ctrl-C or after ``--count`` refreshes.

Real local agents (the ``local_cluster`` fixture), the real command line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from click.testing import CliRunner

from papycluster import NuMap
from papycluster.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _items_done(text: str, host: str) -> list[int]:
    """The 'items done' cell of ``host`` in each table printed."""
    return [int(line.split("│")[-2]) for line in text.splitlines()
            if re.match(rf"│ {host}\s", line)]


def test_watch_refreshes_count_times(local_cluster):
    r = CliRunner().invoke(main, ["status", "--watch", "--interval", "0.2", "--count", "3"],
                           catch_exceptions=False, env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for n in (1, 2, 3):
        assert f"refresh {n}," in r.output
    assert "refresh 4," not in r.output
    assert len(_items_done(r.output, "local1")) == 3
    assert "2/2 up" in r.output


def test_watch_shows_work_done_meanwhile_and_ends_on_ctrl_c(local_cluster):
    watcher = subprocess.Popen(
        [sys.executable, "-m", "papycluster", "status", "--watch", "--interval", "0.3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"})
    try:
        time.sleep(1.5)  # a few refreshes with nothing done
        pool = NuMap(worker_num=0, worker_remote=[("local1", 1)])
        pool.add_task(abs, range(25))
        pool.start()
        try:
            assert list(pool) == list(range(25))
        finally:
            pool.stop()
        time.sleep(1.5)  # a few refreshes after
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=15)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0, err
    done = _items_done(out, "local1")
    assert len(done) >= 4, out
    assert done[0] == 0 and done[-1] >= 25 and done == sorted(done), done
    assert "stopped after" in out
