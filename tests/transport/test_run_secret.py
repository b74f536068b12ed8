"""tcp and udp with no cluster secret configured (issue 13, point 1).

A program makes an ephemeral secret for its run and hands it to its own worker
processes: the README's first pipeline, with ``('tcp')``, runs with no setup, and a
process that was not started by it (which has no way to know that secret) is refused
with a ``SecretError``. Each program runs as a real ``python3`` subprocess whose
environment has neither ``PAPYCLUSTER_SECRET`` nor ``PAPYCLUSTER_SECRET_FILE``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PAPYCLUSTER_")}
    env["PYTHONUNBUFFERED"] = "1"  # worker processes print the results (workers.print_)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep)
    return env


def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## A pipeline\n\n```python\n(.*?)```", text, re.S)
    assert match, "the README's first example is gone"
    return match.group(1)


def _run(code: str, tmp_path: Path, name: str, timeout: float = 120) -> str:
    script = tmp_path / name
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    assert "SecretError" not in done.stdout + done.stderr, done.stdout + done.stderr
    return done.stdout


def test_readme_first_example_uses_tcp_and_runs_without_a_secret(tmp_path: Path) -> None:
    """Before: every item was a SecretError until the user exported a secret."""
    code = _readme_example()
    assert "('tcp')" in code
    out = _run(code, tmp_path, "readme.py")
    # its thread workers print concurrently: lines may interleave, digits do not get lost
    assert sorted("".join(out.split())) == ["1", "2", "3"], out


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_seed_tcp_snippet_between_two_process_numaps(tmp_path: Path, method: str) -> None:
    """Both ends in worker processes (each NuMap's own), under every start method: the
    run secret reaches them through multiprocessing, not through the environment."""
    code = _readme_example()
    code = code.replace("NuMap(worker_num=2)", f"NuMap(worker_num=2, start_method={method!r})")
    code = code.replace('NuMap(worker_type="thread")',
                        f"NuMap(worker_num=2, start_method={method!r})")
    code = code.replace("pipes.start([[\"a\", \"bb\", \"ccc\"]])",
                        "pipes.start([[\"x\" * n for n in range(1, 41)]])")
    # one write per result, so that the lines of two processes do not interleave
    code = code.replace("workers.print_)", "show)").replace(
        "def score(inbox):", "import sys\n\ndef show(inbox):\n"
        "    sys.stdout.write(f'{inbox[0]}\\n')\n\ndef score(inbox):")
    assert code.count(f"start_method={method!r}") == 2 and "range(1, 41)" in code
    assert "show)" in code and "def show" in code
    out = _run(code, tmp_path, f"seed_{method}.py")
    assert sorted(int(line) for line in out.split()) == list(range(1, 41))


PRODUCER = r"""
import json, os, sys
from papycluster import NuMap
from papycluster.transport import auth
from papycluster.workers import io

def dump(kind):
    return io.dump_item([b"the item " * 100], kind)

def load_and_hold(tk):
    # a worker of this program loads a copy (remove=False), then reports its pid
    return bytes(io.load_item([tk], remove=False)), os.getpid()

if __name__ == "__main__":
    tickets = {kind: dump(kind) for kind in ("tcp", "udp")}
    numap = NuMap(load_and_hold, list(tickets.values()), worker_num=1,
                  start_method="spawn")
    own = list(numap)
    print(json.dumps({"tickets": tickets, "own": [[d.decode(), p] for d, p in own],
                      "secret": auth.run_secret().decode()}), flush=True)
    sys.stdin.readline()  # keep serving until the test is done
    numap.stop()
"""

INTRUDER = r"""
import json, sys
from papycluster import transport
from papycluster.workers import io

for tk in json.loads(sys.argv[1]).values():
    try:
        io.load_item([tuple(tk)], timeout=10)
    except transport.SecretError as exc:
        print("SecretError", tk[2], str(exc).replace("\n", " "))
    except Exception as exc:
        print("other", tk[2], type(exc).__name__, exc)
    else:
        print("loaded", tk[2])
"""


def test_a_process_without_the_run_secret_is_refused(tmp_path: Path) -> None:
    """Another program on the same machine (no secret configured either, so it makes its
    own) is refused by tcp and udp; the producer's own worker loads the same items, and
    the secret is in no command line and no environment of that worker."""
    (tmp_path / "producer.py").write_text(PRODUCER)
    producer = subprocess.Popen([sys.executable, str(tmp_path / "producer.py")], env=_env(),
                                cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
    try:
        line = producer.stdout.readline()  # type: ignore[union-attr]
        assert line, "the producer did not start"
        report = json.loads(line)
        assert [d for d, _ in report["own"]] == ["the item " * 100] * 2
        secret = report["secret"].encode()
        assert len(secret) >= 32
        for pid in {p for _, p in report["own"]}:
            for part in ("cmdline", "environ"):
                try:
                    assert secret not in Path(f"/proc/{pid}/{part}").read_bytes()
                except FileNotFoundError:
                    pass  # the worker has ended already
        (tmp_path / "intruder.py").write_text(INTRUDER)
        done = subprocess.run([sys.executable, str(tmp_path / "intruder.py"),
                               json.dumps(report["tickets"])], env=_env(), cwd=tmp_path,
                              capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr
        lines = sorted(done.stdout.splitlines())
        assert [line.split()[:2] for line in lines] == [["SecretError", "tcp"],
                                                        ["SecretError", "udp"]], lines
        assert all("ephemeral secret" in line and "PAPYCLUSTER_SECRET" in line
                   for line in lines), lines
    finally:
        if producer.poll() is None:
            producer.communicate("\n", timeout=60)
    assert producer.returncode == 0
