"""Issue 6, checkpoint and resume on the harness: a controller (its own process) runs a
pipeline over node1..node3 with ``Plumber(checkpoint="mysql://...")`` on the harness's
MariaDB, is killed with SIGKILL mid-run, and is run again.

The rerun computes exactly the positions that were not stored (the first stage logs
every input it computes on the shared volume, one file per worker process and run),
and the checkpoint then holds every item exactly once, each correct. One summary line
is printed (``-rP``/``-s``) and written to ``<pytest tmp dir>/node-loss/resume.json``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pymysql
import pytest

from papycluster import Checkpoint

from .harness import REPO, wait_until, write_report

if TYPE_CHECKING:  # the fixtures come from conftest.py
    from .harness import Harness

pytestmark = pytest.mark.timeout(900)

N = 3000
SCRIPT = Path(__file__).with_name("checkpoint_run.py")
KILL_AT = N // 3  # stored results before the controller is killed
START_WAIT = 120.0  # s: for the first run to store KILL_AT results
RUN_WAIT = 300.0  # s: for the rerun


def _computed(folder: Path) -> Counter:
    """How often each input was computed, from the first stage's logs in ``folder``."""
    counts: Counter = Counter()
    for log in folder.glob("*.log"):
        counts.update(int(line) for line in log.read_text().split())
    return counts


def _stored(cluster: Harness, table: str) -> int:
    db = cluster.db
    conn = pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                           database=db.database, connect_timeout=5, read_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            return int(cur.fetchone()[0])
    except pymysql.err.ProgrammingError:  # the run has not created the table yet
        return 0
    finally:
        conn.close()


def test_a_killed_controller_resumes_from_the_mysql_checkpoint(
        cluster: Harness, linux_up: str, tmp_path_factory: pytest.TempPathFactory):
    db = cluster.db
    url = f"mysql://{db.user}:{db.password}@{db.host}:{db.port}/{db.database}"
    name = "resume_" + secrets.token_hex(4)
    table = f"papy_checkpoint_{name}"
    run_dir = "resume-" + secrets.token_hex(4)
    node_share = cluster.linux_nodes[0].share_path  # the same path on node1..node3
    hosts = ",".join(node.name for node in cluster.linux_nodes)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PAPY_CHECKPOINT_URL": url,
           "PAPY_CHECKPOINT_NAME": name}  # PAPYCLUSTER_STATE: linux_up's cluster

    def launch(attempt: str) -> tuple[subprocess.Popen, Path]:
        folder = cluster.share_dir / run_dir / attempt
        folder.mkdir(parents=True)
        folder.chmod(0o777)  # the nodes' user writes the logs
        proc = subprocess.Popen(
            [sys.executable, str(SCRIPT), f"{node_share}/{run_dir}/{attempt}", str(N), hosts],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            stdin=subprocess.DEVNULL)
        return proc, folder

    first, first_logs = launch("first")
    try:
        deadline = time.monotonic() + START_WAIT
        while _stored(cluster, table) < KILL_AT:
            if first.poll() is not None or time.monotonic() > deadline:
                first.kill()
                out, err = first.communicate(timeout=30)
                pytest.fail(f"the first run stored {_stored(cluster, table)} < {KILL_AT} "
                            f"results before it ended or {START_WAIT}s passed "
                            f"(rc {first.returncode}):\n{out}{err[-3000:]}")
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # the controller dies mid-run
        first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
            first.communicate(timeout=30)
    checkpoint = Checkpoint(url, name)
    try:
        stored_before = checkpoint.results()
    finally:
        checkpoint.close()
    assert KILL_AT <= len(stored_before) < N, len(stored_before)
    assert stored_before == {i: i * i + 1 for i in stored_before}

    second, second_logs = launch("second")
    try:
        out, err = second.communicate(timeout=RUN_WAIT)
    finally:
        if second.poll() is None:
            second.kill()
            second.communicate(timeout=30)
    assert second.returncode == 0, f"the rerun failed:\n{out}{err[-3000:]}"

    checkpoint = Checkpoint(url, name)
    try:
        final = checkpoint.results()
    finally:
        checkpoint.close()
    rows = _stored(cluster, table)
    # Neither the killed controller's remote workers nor the rerun's outlive them
    # (they are forked by the agent's forkserver and share its command line).
    def workers_left() -> dict[str, int]:
        return {node.name: len(cluster.processes(node, "multiprocessing.forkserver")) - 1
                for node in cluster.linux_nodes}

    with contextlib.suppress(TimeoutError):
        wait_until(lambda: not any(workers_left().values()), 30)
    computed_first, computed_second = _computed(first_logs), _computed(second_logs)
    recomputed = sorted(set(stored_before) & set(computed_second))
    rest = set(range(N)) - set(stored_before)
    figures = {
        "items": N, "stored_before_kill": len(stored_before),
        "computed_by_first_run": sum(computed_first.values()),
        "computed_by_first_run_not_stored": len(set(computed_first) - set(stored_before)),
        "computed_by_rerun": sum(computed_second.values()),
        "stored_recomputed": len(recomputed), "final_results": len(final),
        "final_rows": rows, "rerun_said": out.strip(),
    }
    path = write_report(tmp_path_factory.getbasetemp(), "resume", figures)
    print(f"\n[resume] items {N}, stored before the kill {len(stored_before)}, "
          f"recomputed of those {len(recomputed)}, computed by the rerun "
          f"{figures['computed_by_rerun']}, final results {len(final)} ({rows} rows); "
          f"{path}")

    assert f"RESUMED {len(stored_before)} OUT {len(rest)} ERRORS 0" in out, out
    assert recomputed == [], f"stored items computed again: {recomputed[:10]}"
    assert set(computed_second) == rest, "the rerun did not compute exactly the rest"
    assert final == {i: i * i + 1 for i in range(N)}  # every item, once, correct
    assert rows == N
    assert not any(workers_left().values()), f"worker processes left: {workers_left()}"
