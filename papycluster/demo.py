"""``papycluster demo``: the README's main command, on a fresh machine.

It brings up a local cluster (agents as subprocesses on loopback, no SSH), runs a
three-stage pipeline with ``Plumber`` and takes the cluster down again:

1. ``make``: builds a text record per number, on the controller (a thread pool);
2. ``score``: a CPU-bound function on remote pools of every agent; its results go to
   the next stage by a direct transport (``dump_item``; negotiation picks it);
3. ``collect``: loads each item and keeps it, on the controller.

It then prints a few results and a summary: items, time, and where each stage ran.
If a cluster is already up, it uses that one and leaves it running.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from typing import Any


def make(inbox: Any) -> str:
    """Stage 1 (controller): a small text record for a number."""
    n = inbox[0]
    return f"item-{n:04d}:" + "papy" * (n % 7 + 1)


def score(inbox: Any) -> dict[str, Any]:
    """Stage 2 (agents): some honest CPU work, and where it ran."""
    text = inbox[0]
    digest = text.encode()
    for _ in range(2000):
        digest = hashlib.sha256(digest).digest()
    return {"item": text.split(":")[0], "score": digest[0],
            "host": os.environ.get("PAPYCLUSTER_HOST_NAME", "?"), "pid": os.getpid()}


def run_demo(agents: int = 2, items: int = 100, console: Any = None) -> int:
    """Run the demo; return the process exit code (0 when every item came through)."""
    import warnings

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from papycluster import NuMap, Piper, PiperError, Plumber, Worker, workers
    from papycluster.cluster import controller
    from papycluster.cluster.client import AgentConnection
    from papycluster.cluster.state import load_state

    console = console or Console(highlight=False)
    state = load_state(missing_ok=True)
    own = True
    if state is not None:
        alive = []
        for name, h in state.hosts.items():
            try:
                AgentConnection(h.connect, h.agent_port, state.secret, name,
                                3.0).close()
                alive.append(name)
            except Exception:
                pass
        if alive:
            own = False
            console.print(f"using the running cluster {state.cluster!r}: {', '.join(alive)}")
            hosts = alive
    if own:
        console.print(f"bringing up a local cluster of {agents} agent(s) ...")
        result = controller.up_local(agents, cluster=controller.local_cluster_name("demo"))
        if result.failed:
            # the cause first, and it stays the last word: taking down what did come
            # up must neither hide it nor fail because nothing came up
            try:  # also sweeps the run dirs of agents that failed to start
                controller.down()
            except Exception as exc:
                console.print(f"[red]{escape(f'taking the cluster down failed: {exc}')}"
                              "[/red]")
            console.print(f"[red]the demo needs every agent; "
                          f"{len(result.failed)}/{len(result.results)} did not come up:[/red]")
            for r in result.failed:
                console.print(f"[red]{escape(f'{r.name}: {r.cause}: {r.detail}')}[/red]",
                              soft_wrap=True)
            return 1
        hosts = result.up
    try:
        out: list[dict[str, Any]] = []

        def collect(inbox: Any) -> Any:
            out.append(inbox[0])
            return inbox[0]

        stage1 = Piper(Worker(make), parallel=NuMap(worker_type="thread", worker_num=2),
                       name="make")
        stage2 = Piper(Worker((score, workers.io.pickle_dumps, workers.io.dump_item),
                              ((), (), ("tcp",))),
                       parallel=NuMap(worker_num=0, worker_remote=[(h, 2) for h in hosts]),
                       name="score")
        stage3 = Piper(Worker((workers.io.load_item, workers.io.pickle_loads, collect)),
                       parallel=False, name="collect")
        plumber = Plumber()
        plumber.add_pipe((stage1, stage2, stage3))
        started = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plumber.start([range(items)])
        transport = stage2.worker.args[2][0] if stage2.worker.args[2] else "?"
        if stage2.worker.task[2] is not workers.io.dump_item:
            transport = "manager"
        plumber.run()
        finished = plumber.wait(300)
        plumber.pause()
        plumber.stop()
        elapsed = time.monotonic() - started
        for w in caught:
            console.print(f"[yellow]warning:[/yellow] {escape(str(w.message))}")

        table = Table(title="a few results")
        for col in ("item", "score", "ran on", "pid"):
            table.add_column(col)
        for r in sorted(out, key=lambda r: r["item"])[:5]:
            table.add_row(r["item"], str(r["score"]), r["host"], str(r["pid"]))
        console.print(table)
        per_host = Counter(r["host"] for r in out)
        errors = plumber.stats.get("errors_out", 0)
        summary = Table(title=f"{len(out)}/{items} items in {elapsed:.2f} s"
                              + (f", {errors} errors" if errors else ""))
        summary.add_column("stage")
        summary.add_column("ran on")
        summary.add_row("make", "controller (2 threads)")
        summary.add_row("score", ", ".join(f"{h}: {n} items" for h, n in
                                            sorted(per_host.items())))
        summary.add_row("score -> collect", f"transport {transport}")
        summary.add_row("collect", "controller")
        console.print(summary)
        bad = [x for x in out if isinstance(x, PiperError)]
        return 0 if finished and len(out) == items and not bad and not errors else 1
    finally:
        if own:
            console.print("taking the cluster down ...")
            results = controller.down()
            if not all(r.ok for r in results):
                console.print("[red]some agents were not cleaned up: "
                              f"{[r for r in results if not r.ok]}[/red]")
