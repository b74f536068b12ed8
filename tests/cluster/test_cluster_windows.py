"""A real Windows CPython in the harness: the wine node (issue 19).

``wine1`` (docker/wine) is Wine with the official Windows embeddable CPython 3.11 at
``C:\\Python311\\python.exe``, reached over SSH like a Windows OpenSSH host whose shell
is cmd: every command goes to Wine's ``cmd.exe``. The share is its drive ``S:``. The
controller treats it as it would any bare Windows host (``os = "windows"``), so this
is where cmd quoting, the detached start, Windows paths, spawn-only multiprocessing
and winsock are exercised by the real thing; ``win1`` (a Linux node with the Windows
profile) stays for the quick tests.

What Wine is not: see docker/README.md (one wineserver per container, no job
objects, Wine's own cmd.exe and tasklist).
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from click.testing import CliRunner

from papycluster import NuMap, Piper, Plumber, Worker, workers
from papycluster.cli import main
from papycluster.cluster import controller
from papycluster.cluster.check import run_check
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.remote import render

from .harness import (
    AGENT,
    NODE_USER,
    SSH_WAIT,
    Node,
    build_images,
    record_errors,
    run,
    sshd_answers,
    wait_until,
)
from .test_cluster_pipeline import _dump_type, expected, three_stage

if TYPE_CHECKING:  # the fixtures come from conftest.py
    from .harness import Harness

pytestmark = pytest.mark.timeout(900)

WINE = "wine1"
WINE_OCTET = 31
PYTHON = r"C:\Python311\python.exe"
SPACED_PYTHON = r"C:\Program Files\Papy Python\python.exe"
SHARE = "S:\\"
TEMP = "/opt/wine/drive_c/users/papy/Temp"  # the user's %TEMP%, seen from Linux
WINE_ENV = ["-e", "WINEPREFIX=/opt/wine", "-e", "WINEDEBUG=-all",
            "-e", "WINEDLLOVERRIDES=mscoree,mshtml="]


@pytest.fixture(scope="module")
def wine(cluster: Harness) -> Node:
    """The wine node, started for this module (its image is made on first use)."""
    t0 = time.monotonic()
    build_images(wine=True)
    built = time.monotonic() - t0
    cluster.compose("up -d --no-build wine1")
    container = run(["docker", "ps", "-q",
                     "--filter", f"label=com.docker.compose.project={cluster.project}",
                     "--filter", f"label=com.docker.compose.service={WINE}"],
                    timeout=60).stdout.split()[0]
    ip = cluster.subnet.rsplit(".", 1)[0] + f".{WINE_OCTET}"
    wait_until(lambda: sshd_answers(ip), SSH_WAIT)
    pub = run(["docker", "exec", container, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
              timeout=60).stdout.split()
    with open(cluster.known_hosts, "a") as f:
        f.write(f"{ip} {pub[0]} {pub[1]}\n")
    print(f"\n[wine node: image ready in {built:.0f} s, up in "
          f"{time.monotonic() - t0 - built:.0f} s]")
    return Node(name=WINE, ip=ip, user=NODE_USER, port=22, key_path=cluster.key_path,
                profile="windows", share_path=SHARE, container=container, python=PYTHON)


def wine_exec(cluster: Harness, wine: Node, command: str, timeout: float = 60
              ) -> subprocess.CompletedProcess[str]:
    """``sh -c command`` in the wine node's container, as root (to inspect it)."""
    return cluster.docker("exec", wine.container, "sh", "-c", command, timeout=timeout,
                          check=False)


def wine_agents(cluster: Harness, wine: Node) -> list[str]:
    out = wine_exec(cluster, wine, "ps -eo pid=,stat=,args=").stdout
    return [ln for ln in out.splitlines()
            if AGENT in ln and " Z" not in ln and "ps -eo" not in ln]


def wine_run_dirs(cluster: Harness, wine: Node) -> list[str]:
    return wine_exec(cluster, wine, f"ls -d {TEMP}/papycluster-* 2>/dev/null").stdout.split()


@pytest.fixture
def on_wine(cluster: Harness, wine: Node, papy: str) -> str:
    """``papy``'s fresh cluster name and state; afterwards the wine node is running
    again and has no agent and no run dir (whatever the test did to it)."""
    yield papy
    if not json.loads(cluster.docker("inspect", wine.container).stdout)[0]["State"][
            "Running"]:
        cluster.docker("start", wine.container)
        wait_until(lambda: sshd_answers(wine.ip), SSH_WAIT)
    wine_exec(cluster, wine, f"pkill -9 -f '{AGENT}'; rm -rf {TEMP}/papycluster-*")


def hosts_text(cluster: Harness, wine: Node, name: str, linux: list[str],
               python: str = PYTHON, share: str = SHARE) -> str:
    """A hosts file: the named Linux nodes, and the wine node as a Windows host."""
    text = cluster.hosts_toml([cluster.nodes[n] for n in linux or ["node1"]],
                              cluster_name=name, connect_timeout=10, start_timeout=90)
    if not linux:  # the [cluster] and [defaults] parts only
        text = text.split("\n[[host]]")[0] + "\n"
    return text + "\n".join([
        "", "[[host]]", f'name = "{wine.name}"', f'address = "{wine.ip}"',
        'os = "windows"', f"python = '{python}'", f"shares = {{ data = '{share}' }}", ""])


def bring_up(cluster: Harness, wine: Node, name: str, linux: list[str], tmp_path: Path,
             **kw: str) -> controller.UpResult:
    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(cluster, wine, name, linux, **kw))
    return controller.up(parse_hosts(path.read_text(), str(path)))


def test_up_status_check_down_on_the_wine_node(cluster: Harness, wine: Node, on_wine: str,
                                               tmp_path: Path):
    result = bring_up(cluster, wine, on_wine, ["node1"], tmp_path)
    assert result.failed == [], result.failed
    info = {r.name: r.info for r in result.results}
    assert info[WINE]["os"] == "windows" and info[WINE]["profile"] == "native"
    assert info[WINE]["executable"].lower() == PYTHON.lower()
    assert info[WINE]["shares"]["data"]["exists"] is True
    # started detached: the SSH session that started it is over, the agent lives on
    [agent] = wine_agents(cluster, wine)
    assert "papycluster.cluster.agent" in agent

    r = CliRunner().invoke(main, ["status"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    [row] = [ln for ln in r.output.splitlines() if WINE in ln]
    assert "windows" in row and "(profile)" not in row

    cells = {(c.sender, c.receiver, c.transport): c
             for c in run_check(size=100_000, repeat=1)}
    failed = [c for c in cells.values() if c.status == "failed"]
    assert failed == [], failed
    for pair in (("node1", WINE), (WINE, "node1"), (WINE, WINE)):
        for transport in ("tcp", "udp", "file", "manager"):
            assert cells[(*pair, transport)].status == "ok", (pair, transport)
        # no fifo, no POSIX shared memory on Windows
        assert cells[(*pair, "fifo")].status == "n/a"
    r = CliRunner().invoke(main, ["check", "--size", "10000"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert f"node1 -> {WINE}" in r.output and f"{WINE} -> node1" in r.output

    downs = controller.down()
    assert all(d.ok for d in downs), downs
    assert wine_agents(cluster, wine) == []  # checked from inside the container
    assert wine_run_dirs(cluster, wine) == []


def test_preflight_of_the_wine_node(cluster: Harness, wine: Node, on_wine: str,
                                    tmp_path: Path):
    """``check -f`` before any ``up``: cmd, the Windows Python, its share as S:\\."""
    from papycluster.cluster.preflight import run_preflight

    path = tmp_path / "hosts.toml"
    path.write_text(hosts_text(cluster, wine, on_wine, ["node1"]))
    found = run_preflight(parse_hosts(path.read_text(), str(path)))
    assert found.ok, [(h.name, h.problems) for h in found.hosts]
    report = {h.name: h for h in found.hosts}
    assert report[WINE].facts["os"] == "windows"
    assert report[WINE].facts["executable"].lower() == PYTHON.lower()
    for a, b in (("node1", WINE), (WINE, "node1"), ("controller", WINE)):
        assert found.pair(a, b).ok, (a, b, found.pair(a, b))
    # a share the Windows side cannot see is named, with its path
    path.write_text(hosts_text(cluster, wine, on_wine, ["node1"], share="T:\\nowhere"))
    found = run_preflight(parse_hosts(path.read_text(), str(path)))
    [problem] = {h.name: h for h in found.hosts}[WINE].problems
    assert problem.cause == "share" and "nowhere" in problem.detail, problem
    assert wine_agents(cluster, wine) == []  # a preflight starts nothing that stays


def test_three_stages_linux_wine_linux_fall_back_to_file_on_the_share(
        cluster: Harness, wine: Node, on_wine: str, tmp_path: Path):
    result = bring_up(cluster, wine, on_wine, ["node1", "node2"], tmp_path)
    assert result.failed == [], result.failed
    hosts = ("node1", WINE, "node2")
    out, errors, warns, stages = three_stage(
        hosts, (workers.io.dump_item, ("fifo",), {}), (workers.io.load_item, (), {}))
    assert out == expected(hosts)
    assert errors == 1  # item 7, refused on node1
    # fifo is not there on Windows: both pipes that touch it use the share, which
    # node1 and node2 see as /mnt/data and the Windows side as S:\
    assert [_dump_type(s) for s in stages[:2]] == [("file", "data"), ("file", "data")]
    for a, b in (("node1", WINE), (WINE, "node2")):
        assert any(a in w and b in w and "fifo" in w for w in warns), (a, b, warns)


def _where_func():
    """A stage function that says where it ran; nested, so it travels by value."""
    def where(inbox):
        import os
        import sys

        return (inbox[0] * 3, os.name, sys.platform, os.getpid())
    return where


def test_remote_numap_on_the_wine_node(cluster: Harness, wine: Node, on_wine: str,
                                       tmp_path: Path):
    result = bring_up(cluster, wine, on_wine, [], tmp_path)
    assert result.failed == [], result.failed
    numap = NuMap(worker_num=0, worker_remote=[(WINE, 2)])
    numap.add_task(_where_func(), [(i,) for i in range(50)])
    numap.start()
    try:
        out = list(numap)
    finally:
        numap.stop()
    assert [o[0] for o in out] == [3 * i for i in range(50)]
    assert {(o[1], o[2]) for o in out} == {("nt", "win32")}
    assert len({o[3] for o in out}) == 2  # two spawned worker processes
    [row] = controller.status()
    assert row["items_done"] == 50
    assert all(d.ok for d in controller.down())
    assert wine_agents(cluster, wine) == []


def test_wine_node_killed_mid_run_loses_no_item(cluster: Harness, wine: Node,
                                                on_wine: str, tmp_path: Path):
    result = bring_up(cluster, wine, on_wine, ["node1", "node2"], tmp_path)
    assert result.failed == [], result.failed
    n = 600
    point = random.Random().randrange(100, 300)
    out: list = []
    reached = threading.Event()

    def square(inbox):
        return (inbox[0], inbox[0] * inbox[0])

    def collect(inbox):
        out.append(inbox[0])
        if len(out) >= point:
            reached.set()
        return inbox[0]

    pool = [("node1", 2), (WINE, 2), ("node2", 2)]
    s1 = Piper(Worker(square), parallel=NuMap(worker_num=0, worker_remote=pool),
               name="square")
    last = Piper(Worker(collect), parallel=False, name="collect")
    errors = record_errors(last)
    plumber = Plumber()
    plumber.add_pipe((s1, last))
    plumber.start([range(n)])
    try:
        plumber.run()
        assert reached.wait(300), f"only {len(out)} results"
        cluster.docker("kill", wine.container)
        assert plumber.wait(300), f"the run did not finish after the kill at {point}"
    finally:
        plumber.pause()
        plumber.stop()
    counts = Counter(v for v, _ in out)
    assert errors == []
    assert sorted(counts) == list(range(n)), f"lost: {set(range(n)) - set(counts)}"
    assert max(counts.values()) == 1, [v for v, c in counts.items() if c > 1]
    assert all(sq == v * v for v, sq in out)


def test_python_path_with_spaces(cluster: Harness, wine: Node, on_wine: str,
                                 tmp_path: Path):
    result = bring_up(cluster, wine, on_wine, [], tmp_path, python=SPACED_PYTHON)
    assert result.failed == [], result.failed
    [info] = [r.info for r in result.results]
    assert info["executable"].lower() == SPACED_PYTHON.lower()
    numap = NuMap(worker_num=0, worker_remote=[(WINE, 1)])
    numap.add_task(_where_func(), [(i,) for i in range(5)])
    numap.start()
    try:
        assert [o[0] for o in numap] == [0, 3, 6, 9, 12]
    finally:
        numap.stop()
    assert all(d.ok for d in controller.down())
    assert wine_agents(cluster, wine) == []


def test_share_the_windows_side_cannot_see(cluster: Harness, wine: Node, on_wine: str,
                                           tmp_path: Path):
    """A share path that is not there on the Windows host (no drive T:): ``up`` works,
    the agent reports the share missing, and a pipe that would need it says which host
    lacks which share instead of losing items."""
    result = bring_up(cluster, wine, on_wine, ["node1"], tmp_path, share="T:\\data")
    assert result.failed == [], result.failed
    info = {r.name: r.info for r in result.results}
    assert info[WINE]["shares"]["data"]["exists"] is False
    hosts = ("node1", WINE, "node1")
    out, errors, warns, stages = three_stage(
        hosts, (workers.io.dump_item, ("file",), {"share": "data"}),
        (workers.io.load_item, (), {}))
    assert out == expected(hosts)
    assert errors == 1
    # not the missing share: the manager path, with a warning per pipe that names the
    # host that cannot see the share, and its path there
    for a, b in (("node1", WINE), (WINE, "node1")):
        assert any(f"{a} -> {b}" in w and f"{WINE} cannot see it (T:\\data is not there)"
                   in w and "manager" in w for w in warns), (a, b, warns)


_LIVENESS = r'''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
listed = subprocess.run(["tasklist", "/FI", "PID eq %d" % child.pid, "/NH"],
                        capture_output=True, text=True).stdout
report = {"alive": alive(child.pid), "tasklist_lists_it": str(child.pid) in listed}
kill_tree(child.pid, 1.0)
report["alive_after_kill"] = alive(child.pid)
done = subprocess.Popen([sys.executable, "-c", "pass"])
done.wait()
report["finished_alive"] = alive(done.pid)
report["self_alive"] = alive(os.getpid())
print("PAPYCLUSTER-RESULT " + json.dumps(report))
'''


def test_process_liveness_without_tasklist(cluster: Harness, wine: Node, on_wine: str):
    """Wine's tasklist lists nothing; the stop and launch scripts still tell a live
    process from an ended one (through the process handle) and end a hung one."""
    source = render("stop", {}).split("\ndef main():")[0].replace(
        "CONFIG = json.loads", "_CONFIG = json.loads") + "\nimport json\n" + _LIVENESS
    r = cluster.ssh_python(wine, source, timeout=120)
    line = [ln for ln in r.out.splitlines() if ln.startswith("PAPYCLUSTER-RESULT ")]
    assert line, (r.rc, r.out, r.err)
    report = json.loads(line[-1].split(" ", 1)[1])
    assert report["tasklist_lists_it"] is False  # the tool cannot be trusted here
    assert report == {"alive": True, "tasklist_lists_it": False, "alive_after_kill": False,
                      "finished_alive": False, "self_alive": True}


# -- the controller on Windows -------------------------------------------------------
_WIN_PIPELINE = r'''
import json
import sys

from papycluster import NuMap, Piper, Plumber, Worker, workers
from papycluster.cluster import controller


def double(inbox):
    return inbox[0] * 2


def plus_one(inbox):
    import os
    return (inbox[0] + 1, os.name)


out = []


def collect(inbox):
    out.append(inbox[0])
    return inbox[0]


up = controller.up_local(2, cluster="winctl" + sys.argv[1])
report = {"up": up.up, "failed": [f"{r.name}: {r.cause}: {r.detail}" for r in up.failed]}
try:
    s1 = Piper(Worker((double, workers.io.pickle_dumps, workers.io.dump_item),
                      ((), (), ("file",))),
               parallel=NuMap(worker_num=0, worker_remote=[("local1", 2)]), name="double")
    s2 = Piper(Worker((workers.io.load_item, workers.io.pickle_loads, plus_one)),
               parallel=NuMap(worker_num=0, worker_remote=[("local2", 1)]), name="plus_one")
    last = Piper(Worker(collect), parallel=False, name="collect")
    plumber = Plumber()
    plumber.add_pipe((s1, s2, last))
    plumber.start([range(30)])
    plumber.run()
    report["finished"] = plumber.wait(240)
    plumber.pause()
    plumber.stop()
    report["out"] = sorted(out)
    report["transport"] = s1.worker.args[2][0]
    report["errors"] = plumber.stats.get("errors_out", 0)
finally:
    report["down"] = [d.ok for d in controller.down()]
print("PAPYCLUSTER-RESULT " + json.dumps(report))
'''


def _wine_controller(cluster: Harness, wine: Node, *args: str, timeout: float = 600
                     ) -> subprocess.CompletedProcess[str]:
    """Run the Windows CPython as the controller in the wine node (as its user), with
    this checkout's papycluster from the share (S:\\src) on its path."""
    src = cluster.share_dir / "src"
    if not (src / "papycluster").is_dir():
        import shutil

        import papycluster
        shutil.copytree(Path(papycluster.__file__).parent, src / "papycluster",
                        ignore=shutil.ignore_patterns("__pycache__"))
    return cluster.docker("exec", "-u", NODE_USER, "-w", "/opt/wine/drive_c/users/papy",
                          *WINE_ENV, "-e", "PYTHONPATH=S:\\src",
                          "-e", "PAPYCLUSTER_STATE=C:\\users\\papy\\controller\\state.json",
                          wine.container, "wine", PYTHON, *args, timeout=timeout,
                          check=False)


def test_windows_controller_runs_the_demo(cluster: Harness, wine: Node, on_wine: str):
    r = _wine_controller(cluster, wine, "-m", "papycluster", "demo", "--agents", "2",
                         "--items", "20")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert "20/20 items" in out and "local1:" in out and "local2:" in out, out
    assert wine_agents(cluster, wine) == [] and wine_run_dirs(cluster, wine) == []


def test_windows_controller_two_stage_file_pipeline(cluster: Harness, wine: Node,
                                                   on_wine: str):
    (cluster.share_dir / "win_pipeline.py").write_text(_WIN_PIPELINE)
    r = _wine_controller(cluster, wine, "S:\\win_pipeline.py", on_wine)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("PAPYCLUSTER-RESULT ")]
    assert lines, r.stdout + r.stderr
    report = json.loads(lines[-1].split(" ", 1)[1])
    assert report["failed"] == [] and report["up"] == ["local1", "local2"], report
    assert report["finished"] is True
    assert report["transport"] == "file" and report["errors"] == 0
    assert report["out"] == sorted([i * 2 + 1, "nt"] for i in range(30))
    assert report["down"] == [True, True]
    assert wine_agents(cluster, wine) == [] and wine_run_dirs(cluster, wine) == []
