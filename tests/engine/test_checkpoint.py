"""Checkpoint and resume with a real sqlite file and a real killed controller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from papycluster import Checkpoint, NuMap, Piper, Plumber, PlumberError

ROOT = Path(__file__).resolve().parents[2]
ITEMS = 400

SCRIPT = """
import os, sys, time
from papycluster import NuMap, Piper, Plumber

LOG = sys.argv[2]

def square(inbox):
    with open(LOG, "a") as log:  # one line per computation, O_APPEND
        log.write(f"{inbox[0]}\\n")
    time.sleep(0.005)
    return inbox[0] ** 2

def fail_seven(inbox):
    if inbox[0] == 49 and os.environ.get("FAIL_SEVEN"):
        raise RuntimeError("seven")
    return inbox[0] + 1

if __name__ == "__main__":
    first = Piper(square, parallel=NuMap(worker_num=2))
    second = Piper(fail_seven, parallel=NuMap(worker_type="thread", worker_num=2))
    plumber = Plumber(pipes=[(first, second)], checkpoint="sqlite:///" + sys.argv[1])
    plumber.start([range({items})])
    plumber.run()
    plumber.wait()
    plumber.stop()
    print("RESUMED", plumber.stats["resumed"], "ERRORS", plumber.stats["errors_out"])
""".replace("{items}", str(ITEMS))


def square(inbox):
    return inbox[0] ** 2


def write_script(tmp_path: Path) -> Path:
    script = tmp_path / "pipeline.py"
    script.write_text(textwrap.dedent(SCRIPT))
    return script


def launch(script: Path, db: Path, log: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), str(db), str(log)],
                            env={**os.environ, "PYTHONPATH": str(ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def computed(log: Path) -> list[int]:
    return [int(line) for line in log.read_text().split()] if log.exists() else []


def test_results_are_stored_and_an_unchanged_rerun_computes_nothing(tmp_path):
    db = tmp_path / "ckpt.db"
    plumber = Plumber(pipes=[(Piper(square, parallel=NuMap(worker_num=2)),)],
                      checkpoint=f"sqlite:///{db}")
    for expected_resumed in (0, 20):
        plumber.start([range(20)])
        plumber.run()
        assert plumber.wait(60)
        plumber.stop()
        assert plumber.stats["resumed"] == expected_resumed
    assert plumber.results() == {i: i * i for i in range(20)}
    assert plumber.stats["items_out"] == 0  # nothing was left to compute


def test_a_killed_run_resumes_without_recomputing_stored_items(tmp_path):
    script, db = write_script(tmp_path), tmp_path / "ckpt.db"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    run = launch(script, db, first_log, FAIL_SEVEN="1")
    deadline = time.monotonic() + 60
    while len(computed(first_log)) < ITEMS // 3:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)  # the controller dies mid-run
    run.wait(10)
    stored_before = set(Checkpoint(f"sqlite:///{db}").results())
    assert 0 < len(stored_before) < ITEMS
    assert 7 not in stored_before  # an error item is not stored

    rerun = launch(script, db, second_log)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert f"RESUMED {len(stored_before)} ERRORS 0" in out
    results = Checkpoint(f"sqlite:///{db}").results()
    assert results == {i: i * i + 1 for i in range(ITEMS)}  # each item exactly once
    assert not stored_before & set(computed(second_log))  # stored ones not recomputed
    assert set(computed(second_log)) >= set(range(ITEMS)) - stored_before


def test_checkpoint_refuses_pipers_that_are_not_one_to_one(tmp_path):
    plumber = Plumber(pipes=[(Piper(square, consume=2),)],
                      checkpoint=f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(PlumberError, match="consume=2"):
        plumber.start([range(4)])
    with pytest.raises(ValueError):
        Checkpoint("ftp://nowhere/x")
    with pytest.raises(PlumberError):
        Plumber().results()
