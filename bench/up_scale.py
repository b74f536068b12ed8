"""Benchmark: the wall time of ``papycluster up`` and ``down`` on 1, 4 and 16 hosts, and memory.

Why: ``up`` and ``down`` visit the hosts in parallel (one thread per host, see
papycluster/cluster/controller.py), so more hosts should cost little more wall time
than one; issue 18 asks for 16 hosts in at most twice the time of one.

The hosts are 16 containers of the docker harness's bare-node image
(``papycluster-base:<tag>`` of docker/build-images.sh: Debian, python3 and sshd, the
user ``papy`` logging in with a key made for this run, nothing of papycluster),
started with plain ``docker run`` on one network made here, on a free /24 picked as
tests/cluster/harness.py picks it; the hosts file is the harness's
(``Harness.hosts_toml``). The controller runs in this process, as ``papycluster up``
would, with its cluster state in a temp dir. Each repetition times
``controller.up(parse_hosts(...))`` and then ``controller.down()`` on 1, 4 and 16 of
the nodes, in an order rotated from one repetition to the next; before each ``up``
the nodes' bundle cache is removed (by ``docker exec``, not timed), so every ``up``
ships the bundle, as on bare hosts. A first, untimed ``up``/``down`` on one node
builds the bundle and warms the imports. Printed: the median of ``up`` and of
``down`` per host count and its ratio to one host, and the slowest host's time per
step of ``up`` and ``down`` (from their progress messages). Beside the times: the
busy CPU seconds of the whole machine (/proc/stat) and of the controller alone
(getrusage) during each, and how busy the cores were during ``up``.

Here every node shares this machine's cores with the others and with the controller,
so 16 nodes' work (sshd, the launch script's Python, the agent's start) queues for
the same cores, which real hosts would not: when the cores are busy through all of
``up``, its time is the nodes' CPU time over the cores, not a lack of parallelism.
``--node-cpus 0.1`` caps each node (``docker run --cpus``) like a slow machine of its
own, so that one node is as slow alone as among 16: the ratio then measures how the
controller's visits scale.

Memory: the controller's peak resident set during the ``up`` of 16 hosts (VmHWM,
reset through /proc/self/clear_refs just before), and on one node the resident set
(VmRSS of /proc/PID/status, and Pss of smaps_rollup, which splits the pages a forked
process shares with its parent; read by ``docker exec``) of the agent, idle and with
a NuMap's one worker there, and of the processes started for that worker.

Every container and the network are removed at the end, also on an error, Ctrl-C or
SIGTERM; they carry the harness's project label (``papyc<pid>``), so the next harness
session removes them if this process was killed outright.

    python bench/up_scale.py [--reps 3] [--hosts 1,4,16] [--node-cpus 0.1] [--no-memory]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import resource
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from timing import StepClock  # noqa: E402

from papycluster import NuMap  # noqa: E402
from papycluster.cluster import controller  # noqa: E402
from papycluster.cluster.hosts import parse_hosts  # noqa: E402
from tests.cluster.harness import (  # noqa: E402
    AGENT,
    BUILD_SCRIPT,
    NODE_USER,
    PROJECT_PREFIX,
    SSH_WAIT,
    Harness,
    HarnessError,
    Node,
    pick_subnet,
    remove_stale_projects,
    require_docker,
    run,
    sshd_answers,
    write_known_hosts,
)

SHARE_PATH = "/mnt/data"
#: The label docker compose gives its containers: remove_stale_projects() finds ours by it.
PROJECT_LABEL = "com.docker.compose.project"
DOCKER_TIMEOUT = 120


# -- the nodes ---------------------------------------------------------------------------

def _image() -> str:
    tag = run(["bash", str(BUILD_SCRIPT), "--print-tag"], timeout=60).stdout.strip()
    image = f"papycluster-base:{tag}"
    if run(["docker", "image", "inspect", image], timeout=60, check=False).returncode:
        raise HarnessError(f"the harness image {image} is missing: run "
                           "docker/build-images.sh (no image can be pulled here)")
    return image


def _remove_project(project: str) -> None:
    """Every container and network labelled with ``project`` (what this run made)."""
    flt = f"label={PROJECT_LABEL}={project}"
    ids = run(["docker", "ps", "-aq", "--filter", flt], timeout=60, check=False).stdout.split()
    if ids:
        run(["docker", "rm", "-f", "-v", *ids], timeout=DOCKER_TIMEOUT, check=False)
    nets = run(["docker", "network", "ls", "-q", "--filter", flt], timeout=60,
               check=False).stdout.split()
    if nets:
        run(["docker", "network", "rm", *nets], timeout=60, check=False)


@contextlib.contextmanager
def started_nodes(workdir: Path, count: int, cpus: float | None = None
                  ) -> Iterator[Harness]:
    """``count`` bare nodes on a network of their own, as a :class:`Harness` (no MariaDB,
    no Windows node); all removed on the way out, whatever happens inside. ``cpus``
    caps each node's CPU (``docker run --cpus``), as if each were a machine of its own."""
    require_docker()
    remove_stale_projects()
    image = _image()
    workdir.mkdir(parents=True, exist_ok=True)
    keys_dir, share_dir = workdir / "authorized", workdir / "share"
    keys_dir.mkdir()
    share_dir.mkdir()
    share_dir.chmod(0o1777)
    key_path = workdir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "papycluster-up-scale",
         "-f", str(key_path)], timeout=30)
    shutil.copy(f"{key_path}.pub", keys_dir / "authorized_keys")
    keys_dir.chmod(0o755)
    (keys_dir / "authorized_keys").chmod(0o644)
    (workdir / "no_ssh_config").write_text("")
    project = f"{PROJECT_PREFIX}{os.getpid()}"
    label = f"{PROJECT_LABEL}={project}"
    network = f"{project}_upscale"
    subnet = pick_subnet()
    prefix = str(subnet.network_address).rsplit(".", 1)[0]
    try:
        run(["docker", "network", "create", "--driver", "bridge", "--subnet", str(subnet),
             "--label", label, network], timeout=60)
        nodes: dict[str, Node] = {}
        for i in range(1, count + 1):
            name, ip = f"up{i}", f"{prefix}.{10 + i}"
            container = run([
                "docker", "run", "-d", "--init", "--name", f"{project}-{name}",
                "--hostname", name, "--network", network, "--ip", ip, "--label", label,
                "--stop-timeout", "3", *(["--cpus", str(cpus)] if cpus else []),
                "-e", f"PAPY_SHARE_PATH={SHARE_PATH}",
                "-v", f"{keys_dir}:/etc/papy:ro", "-v", f"{share_dir}:{SHARE_PATH}", image],
                timeout=DOCKER_TIMEOUT).stdout.strip()
            nodes[name] = Node(name=name, ip=ip, user=NODE_USER, port=22, key_path=key_path,
                               profile="native", share_path=SHARE_PATH, container=container)
        deadline = time.monotonic() + SSH_WAIT
        for node in nodes.values():
            while not sshd_answers(node.ip):
                if time.monotonic() > deadline:
                    logs = run(["docker", "logs", "--tail", "20", node.container],
                               timeout=60, check=False)
                    raise HarnessError(f"sshd of {node.name} ({node.ip}) did not answer "
                                       f"within {SSH_WAIT}s; its log:\n{logs.stdout}"
                                       f"{logs.stderr}")
                time.sleep(0.3)
        known_hosts = write_known_hosts(nodes.values(), workdir)
        # Harness wants a database; these nodes have none (hosts_toml does not use it)
        yield Harness(project=project, compose_command="", subnet=str(subnet), nodes=nodes,
                      db=None, share_dir=share_dir, key_path=key_path,  # type: ignore[arg-type]
                      known_hosts=known_hosts, workdir=workdir)
    finally:
        _remove_project(project)


def _each(nodes: Iterable[Node], func: Callable[[Node], Any]) -> list[Any]:
    """``func`` on every node at once (docker exec is mostly waiting)."""
    nodes = list(nodes)
    with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
        return list(pool.map(func, nodes))


# -- CPU and memory ----------------------------------------------------------------------

def _status_kb(text: str, field: str) -> int | None:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def machine_cpu_s() -> float:
    """CPU seconds this machine spent busy (every core, every process: the nodes too)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ticks = [int(f) for f in fields[:8]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process so far (all its threads, user and system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def reset_peak() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0): the next peak is of what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def own_memory_kb() -> tuple[int | None, int | None]:
    """(VmRSS, VmHWM) of this process, in KiB."""
    text = Path("/proc/self/status").read_text()
    return _status_kb(text, "VmRSS"), _status_kb(text, "VmHWM")


def node_processes(h: Harness, node: Node) -> list[dict[str, Any]]:
    """Every process of ``node``: pid, ppid, VmRSS and Pss (KiB; Pss splits the pages a
    forked worker shares with its forkserver) and command line."""
    script = ("for d in /proc/[0-9]*; do "
              "p=${d#/proc/}; "
              "r=$(awk '/^VmRSS:/{print $2}' $d/status 2>/dev/null); "
              "pp=$(awk '/^PPid:/{print $2}' $d/status 2>/dev/null); "
              "s=$(awk '/^Pss:/{print $2}' $d/smaps_rollup 2>/dev/null); "
              "a=$(cat $d/cmdline 2>/dev/null | tr '\\0' ' '); "
              "[ -n \"$a\" ] && echo \"$p ${pp:-0} ${r:-0} ${s:-0} $a\"; done; exit 0")
    # as the nodes' user: reading another user's smaps_rollup needs CAP_SYS_PTRACE
    out = h.docker_exec(node, script, user=NODE_USER, check=True).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[0].isdigit():
            rows.append({"pid": int(parts[0]), "ppid": int(parts[1]), "rss": int(parts[2]),
                         "pss": int(parts[3]), "args": parts[4].strip()})
    return rows


def role(rows: list[dict[str, Any]], row: dict[str, Any]) -> str:
    """What a process under the agent is, from its command line and its parent's."""
    parent = next((r for r in rows if r["pid"] == row["ppid"]), {"args": ""})
    if "resource_tracker" in row["args"]:
        return "resource tracker"
    if "forkserver" in row["args"]:
        return "worker" if "forkserver" in parent["args"] else "forkserver"
    return "child"


def descendants(rows: list[dict[str, Any]], pid: int) -> list[dict[str, Any]]:
    children = [r for r in rows if r["ppid"] == pid]
    return children + [d for c in children for d in descendants(rows, c["pid"])]


def trivial(x: int) -> int:
    return x + 1


def remote_worker_memory(h: Harness, node: Node, workdir: Path) -> dict[str, Any]:
    """Bring ``node`` up, start a NuMap with one worker there, and read the RSS of its
    agent and of the processes under it while the worker is alive."""
    text = h.hosts_toml([node], cluster_name="mem" + secrets.token_hex(3))
    result = controller.up(parse_hosts(text, str(workdir / "hosts.toml")))
    if result.failed:
        raise SystemExit(f"papycluster up on {node.name} failed: {result.failed}")
    try:
        before = node_processes(h, node)
        feed: queue.Queue = queue.Queue()

        def items() -> Iterator[int]:
            while (x := feed.get(timeout=120)) is not None:
                yield x

        numap = NuMap(trivial, items(), worker_num=0, worker_remote=[(node.name, 1)])
        try:
            feed.put(1)
            if next(numap) != 2:
                raise RuntimeError("the remote worker returned a wrong result")
            during = node_processes(h, node)
        finally:
            feed.put(None)
            numap.stop()
    finally:
        controller.down()
    agents = [r for r in during if AGENT in r["args"]
              and not any(p["pid"] == r["ppid"] and AGENT in p["args"] for p in during)]
    if len(agents) != 1:
        raise RuntimeError(f"expected one agent on {node.name}, found {agents}")
    agent = agents[0]
    agent_before = next((r for r in before if r["pid"] == agent["pid"]), agent)
    old = {r["pid"] for r in before}
    under = descendants(during, agent["pid"])
    for r in under:
        r["role"] = role(during, r)
    return {"agent": agent, "agent_before": agent_before,
            "idle_under_agent": [r for r in under if r["pid"] in old],
            "new_under_agent": [r for r in under if r["pid"] not in old]}


# -- timing ------------------------------------------------------------------------------

def purge_cache(h: Harness, nodes: list[Node]) -> None:
    """Forget the shipped bundle on ``nodes``: the next ``up`` ships it again."""
    _each(nodes, h.make_bare)


def one_run(h: Harness, nodes: list[Node], workdir: Path, name: str
            ) -> dict[str, Any]:
    """Time one ``up`` and the ``down`` that follows on ``nodes`` (bundle purged first)."""
    purge_cache(h, nodes)
    text = h.hosts_toml(nodes, cluster_name=name + secrets.token_hex(3))
    config = parse_hosts(text, str(workdir / "hosts.toml"))
    up_clock, down_clock = StepClock(), StepClock()
    rss_before = own_memory_kb()[0]
    peak_ok = reset_peak()
    cpu0, own0 = machine_cpu_s(), own_cpu_s()
    start = time.perf_counter()
    result = controller.up(config, up_clock)
    up_s = time.perf_counter() - start
    up_cpu, up_own = machine_cpu_s() - cpu0, own_cpu_s() - own0
    peak = own_memory_kb()[1] if peak_ok else None
    cpu0, own0 = machine_cpu_s(), own_cpu_s()
    start = time.perf_counter()
    downs = controller.down(progress=down_clock)
    down_s = time.perf_counter() - start
    down_cpu, down_own = machine_cpu_s() - cpu0, own_cpu_s() - own0
    if result.failed:
        raise SystemExit(f"papycluster up on {len(nodes)} hosts failed: "
                         + "; ".join(f"{r.name}: {r.cause}: {r.detail}" for r in result.failed))
    bad = [r for r in downs if not r.ok]
    if bad or len(downs) != len(nodes):
        raise SystemExit(f"papycluster down on {len(nodes)} hosts left something: {bad}")
    firsts = [marks[0][0] - up_clock.start for marks in up_clock.marks.values() if marks]
    return {"up": up_s, "down": down_s,
            "spread": max(firsts) - min(firsts) if firsts else 0.0,
            "up_cpu": up_cpu, "up_own": up_own,
            "down_cpu": down_cpu, "down_own": down_own, "up_steps": up_clock.steps(),
            "down_steps": down_clock.steps(), "rss_before": rss_before, "peak": peak}


def _median_or_blank(values: list[float] | None, width: int = 8) -> str:
    return f" {statistics.median(values):>{width}.2f}" if values else f" {'':>{width}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--hosts", default="1,4,16",
                        help="comma-separated host counts; the first is the baseline")
    parser.add_argument("--node-cpus", type=float, default=None,
                        help="cap each node at this many CPUs (docker --cpus), so that "
                             "nodes do not slow each other down as on real hosts; "
                             "keep nodes x cap below the machine's cores")
    parser.add_argument("--no-memory", action="store_true",
                        help="skip the agent's and the remote worker's memory")
    args = parser.parse_args()
    counts = [int(c) for c in args.hosts.split(",")]
    # SIGTERM unwinds like Ctrl-C, so that the containers are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="papyc-bench-upscale-") as tmp:
        workdir = Path(tmp)
        os.environ["PAPYCLUSTER_STATE"] = str(workdir / "state" / "state.json")
        with started_nodes(workdir / "nodes", max(counts), args.node_cpus) as h:
            nodes = list(h.nodes.values())
            print(f"{len(nodes)} nodes up at {time.perf_counter() - began:.0f} s",
                  file=sys.stderr, flush=True)
            one_run(h, nodes[:1], workdir, "warm")  # builds the bundle, warms imports
            runs: dict[int, list[dict[str, Any]]] = {n: [] for n in counts}
            for rep in range(args.reps):
                order = counts[rep % len(counts):] + counts[:rep % len(counts)]
                for n in order:
                    runs[n].append(one_run(h, nodes[:n], workdir, f"scale{n}r{rep}"))
                print(f"  repetition {rep + 1}/{args.reps} at "
                      f"{time.perf_counter() - began:.0f} s: " + ", ".join(
                          f"{n} hosts up {runs[n][-1]['up']:.2f} s down "
                          f"{runs[n][-1]['down']:.2f} s" for n in counts),
                      file=sys.stderr, flush=True)
            memory = None if args.no_memory else remote_worker_memory(h, nodes[0], workdir)
    report(runs, counts, args.reps, memory, args.node_cpus)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")


def report(runs: dict[int, list[dict[str, Any]]], counts: list[int], reps: int,
           memory: dict[str, Any] | None, node_cpus: float | None) -> None:
    base = counts[0]
    cores = os.cpu_count() or 1
    up1 = statistics.median(r["up"] for r in runs[base])
    down1 = statistics.median(r["down"] for r in runs[base])
    print(f"\npapycluster up/down on bare docker nodes (every up ships the bundle), "
          f"median of {reps} interleaved repetitions, {os.cpu_count()} CPUs shared by "
          f"the controller and the nodes"
          + (f", each node capped at {node_cpus:g} CPU" if node_cpus else "") + "\n")
    head = (f"{'hosts':>5} {'up s':>8} {'down s':>8} {'up x ' + str(base):>9} "
            f"{'down x ' + str(base):>9} | {'up cpu s':>9} {'ctl':>6} {'busy':>5} "
            f"{'down cpu s':>10} {'ctl':>6}")
    print(head)
    print("-" * len(head))
    for n in counts:
        med = {k: statistics.median(r[k] for r in runs[n]) for k in
               ("up", "down", "up_cpu", "up_own", "down_cpu", "down_own")}
        print(f"{n:>5} {med['up']:>8.2f} {med['down']:>8.2f} {med['up'] / up1:>9.2f} "
              f"{med['down'] / down1:>9.2f} | {med['up_cpu']:>9.2f} {med['up_own']:>6.2f} "
              f"{med['up_cpu'] / (med['up'] * cores):>5.0%} "
              f"{med['down_cpu']:>10.2f} {med['down_own']:>6.2f}")
    print("(cpu s: busy CPU seconds of the whole machine during the step, the nodes' "
          "processes included;\n ctl: of the controller alone; busy: of all the cores' "
          "time during up. Near 100 %, up is as\n fast as the cores allow: the hosts' "
          "visits overlap, and their work on the nodes is what waits.)")
    for kind in ("up", "down"):
        names = list(dict.fromkeys(s for n in counts for r in runs[n]
                                   for s in r[f"{kind}_steps"]))
        print(f"\n{kind} steps (slowest host, median s)\n{'step':<15}"
              + "".join(f" {str(n) + ' hosts':>8}" for n in counts))
        for name in names:
            print(f"{name:<15}" + "".join(_median_or_blank(
                [r[f"{kind}_steps"][name] for r in runs[n] if name in r[f"{kind}_steps"]])
                for n in counts))
        if kind == "up":  # the visits are parallel if they all begin at once
            print(f"{'(visits begin)':<15}" + "".join(
                _median_or_blank([r["spread"] for r in runs[n]]) for n in counts)
                + "   <- spread of the hosts' first step")
    top = max(counts)
    peaks = [r["peak"] for r in runs[top] if r["peak"] is not None]
    befores = [r["rss_before"] for r in runs[top] if r["rss_before"] is not None]
    print("\nmemory (resident set, MiB)")
    if peaks:
        print(f"  controller, peak during up on {top} hosts: {max(peaks) / 1024:.1f} "
              f"(max of {len(peaks)}; {statistics.median(befores) / 1024:.1f} before up)")
    else:
        print("  controller: /proc/self/clear_refs cannot be written here; no peak")
    if memory is not None:
        agent = memory["agent"]
        print(f"  on one node, a NuMap with one worker there running (Pss: the pages "
              f"shared with a parent counted in part):\n"
              f"    {'process':<40} {'RSS':>6} {'Pss':>6}\n"
              f"    {'agent (idle, before the NuMap)':<40} "
              f"{memory['agent_before']['rss'] / 1024:>6.1f} "
              f"{memory['agent_before']['pss'] / 1024:>6.1f}\n"
              f"    {'agent':<40} {agent['rss'] / 1024:>6.1f} {agent['pss'] / 1024:>6.1f}")
        for label, rows in (("", memory["idle_under_agent"]),
                            (" (started for the NuMap)", memory["new_under_agent"])):
            for r in rows:
                print(f"    {r['role'] + label:<40} {r['rss'] / 1024:>6.1f} "
                      f"{r['pss'] / 1024:>6.1f}")
    print(json.dumps({"up": {n: [r["up"] for r in runs[n]] for n in counts},
                      "down": {n: [r["down"] for r in runs[n]] for n in counts}}),
          file=sys.stderr)


if __name__ == "__main__":
    main()
