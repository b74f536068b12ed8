"""Programs end promptly, whatever state their pipeline is in (PaPy hung at exit).

Each case runs a real script in a fresh interpreter and checks that it exits within
a bounded time and leaves no worker process behind.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

HEADER = """
import os, sys, time
from papycluster import NuMap, Piper, Plumber, Worker
"""

CASES = {
    "left_running": """
def slow(x):
    time.sleep(0.05)
    return x

if __name__ == "__main__":
    numap = NuMap(worker_num=2)
    task = numap.add_task(slow, range(10_000))
    numap.start()
    next(task)
    print("PIDS", *[s.worker.pid for s in numap._slots])
""",
    "pipeline_failed": """
def boom(inbox):
    raise RuntimeError("boom")

if __name__ == "__main__":
    first = Piper(boom, parallel=NuMap(worker_num=2))
    plumber = Plumber(pipes=[(first, Piper(boom, debug=True))])
    plumber.start([range(100)])
    print("PIDS", *[s.worker.pid for s in first.parallel._slots])
    plumber.run()
    plumber.wait(10)
""",
    "stopped": """
if __name__ == "__main__":
    numap = NuMap(worker_num=2)
    task = numap.add_task(abs, range(100))
    numap.start()
    print("PIDS", *[s.worker.pid for s in numap._slots])
    assert sum(task) == sum(range(100))
    numap.stop()
""",
}


def run_script(tmp_path: Path, body: str, timeout: float = 60) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(HEADER + body))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_interpreter_exits_and_no_worker_is_left(tmp_path, case):
    result = run_script(tmp_path, CASES[case], timeout=30)
    pids = [int(p) for line in result.stdout.splitlines() if line.startswith("PIDS")
            for p in line.split()[1:]]
    assert pids, result.stdout + result.stderr
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_main_functions_and_closures_under_spawn(tmp_path):
    body = """
def scale(k):
    def inner(x):
        return x * k
    return inner

def shout(x):
    return str(x).upper()

if __name__ == "__main__":
    numap = NuMap(worker_num=2, start_method="spawn")
    a = numap.add_task(scale(3), range(4))
    b = numap.add_task(shout, "abcd")
    numap.start()
    print(list(zip(a, b)))
    numap.stop()
"""
    result = run_script(tmp_path, body)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[(0, 'A'), (3, 'B'), (6, 'C'), (9, 'D')]"
