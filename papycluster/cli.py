"""The ``papycluster`` command: up, status, check, down, demo.

Thin on purpose: each command parses options, calls :mod:`papycluster.cluster` and
prints with rich. Exit codes: 0 all well, 1 some host failed, 2 a usage or
configuration error (a wrong hosts file is reported before any connection).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def _width(stream: object) -> int | None:
    """A terminal's own width; piped or captured output gets wide, unwrapped tables
    (rich would squeeze them into 80 columns and wrap the host names)."""
    isatty = getattr(stream, "isatty", None)
    return None if isatty is not None and isatty() else 200


console = Console(highlight=False, width=_width(sys.stdout))
err_console = Console(stderr=True, highlight=False, width=_width(sys.stderr))

HOSTS_ENV = "PAPYCLUSTER_HOSTS"


def _progress(host: str, message: str) -> None:
    style = "red" if message.startswith("FAILED") else (
        "green" if message.startswith(("up", "down")) else "dim")
    console.print(f"[bold]{escape(host):>12}[/bold]  [{style}]{escape(message)}[/{style}]",
                  soft_wrap=True)


def _hosts_file(path: str | None) -> Path | None:
    """``-f``, else ``$PAPYCLUSTER_HOSTS``, else ``./hosts.toml`` if there is one."""
    if path:
        return Path(path)
    if os.environ.get(HOSTS_ENV):
        return Path(os.environ[HOSTS_ENV])
    if Path("hosts.toml").is_file():
        return Path("hosts.toml")
    return None


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="papycluster")
def main() -> None:
    """PaPy pipelines across a handful of machines over SSH."""


@main.command()
@click.option("-f", "--file", "hosts_file", type=click.Path(dir_okay=False),
              help="hosts file (default: $PAPYCLUSTER_HOSTS or ./hosts.toml)")
@click.option("--local", "local", type=int, default=None, metavar="N",
              help="start N agents on this machine, without SSH")
@click.option("--workers", type=int, default=2, show_default=True,
              help="workers per local agent")
@click.option("--windows-profile", type=int, default=0, metavar="K",
              help="give the last K local agents the Windows profile (for testing)")
def up(hosts_file: str | None, local: int | None, workers: int,
       windows_profile: int) -> None:
    """Start one agent per host (or N local agents) and write the cluster state."""
    from papycluster.cluster import controller
    from papycluster.cluster.errors import ClusterError, HostsFileError
    from papycluster.cluster.hosts import load_hosts

    path = None if local is not None else _hosts_file(hosts_file)
    started = time.monotonic()
    try:
        if path is None:
            n = local if local is not None else 2
            if n < 1:
                _fail("--local needs at least 1 agent")
            profiles = ["native"] * (n - windows_profile) + ["windows"] * windows_profile
            console.print(f"starting {n} local agent(s) (no hosts file)")
            result = controller.up_local(n, workers=workers, profiles=profiles,
                                         progress=_progress)
        else:
            config = load_hosts(path)
            console.print(f"cluster [bold]{config.name}[/bold] from {path}: "
                          f"{len(config.hosts)} host(s)")
            result = controller.up(config, progress=_progress)
    except HostsFileError as exc:
        _fail(str(exc))
    except ClusterError as exc:
        _fail(str(exc))
    table = Table(title=f"cluster {result.cluster}: {len(result.up)}/{len(result.results)} "
                        f"up in {time.monotonic() - started:.1f} s")
    for col in ("host", "status", "detail"):
        table.add_column(col)
    for r in result.results:
        if r.ok and r.info.get("kept"):
            table.add_row(r.name, "[green]up[/green]",
                          f"already running, left alone (pid {r.info.get('pid')})")
        elif r.ok:
            table.add_row(r.name, "[green]up[/green]",
                          f"{r.info.get('os')} Python {r.info.get('python')} "
                          f"pid {r.info.get('pid')} port {r.info.get('port')}")
        else:
            table.add_row(r.name, f"[red]{escape(r.cause)}[/red]", escape(r.detail))
    console.print(table)
    if result.state_file:
        console.print(f"state: {result.state_file}")
    sys.exit(0 if not result.failed else 1)


def _uptime(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _status_table(rows: list[dict[str, Any]], title: str = "papycluster status") -> Table:
    table = Table(title=title)
    for col in ("host", "address", "OS", "Python", "agent pid", "uptime", "workers",
                "load", "items done"):
        table.add_column(col)
    for r in rows:
        address = f"{r['address']}:{r['agent_port']}"
        if not r["ok"]:
            table.add_row(r["name"], address, "[red]down[/red]", escape(r.get("error", "")),
                          "-", "-", "-", "-", "-")
            continue
        load = r.get("load")
        table.add_row(r["name"], address,
                      r["os"] + (" (profile)" if r.get("profile") == "windows" else ""),
                      r["python"], str(r["pid"]), _uptime(r.get("uptime")),
                      f"{r.get('workers_running', 0)}/{r.get('workers')}",
                      f"{load[0]:.2f}" if load else "-", str(r.get("items_done", 0)))
    return table


@main.command()
@click.option("--watch", "-w", is_flag=True,
              help="refresh the table until Ctrl-C (or --count refreshes)")
@click.option("--interval", "-n", type=click.FloatRange(min=0.1), default=2.0,
              show_default=True, help="seconds between refreshes with --watch")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="with --watch: stop after this many refreshes")
def status(watch: bool, interval: float, count: int | None) -> None:
    """A table per host: address, OS, Python, agent pid, uptime, workers, load, items."""
    from papycluster.cluster import controller
    from papycluster.cluster.errors import ClusterError

    def rows() -> list[dict[str, Any]]:
        try:
            return controller.status(timeout=min(5.0, max(1.0, interval)))
        except ClusterError as exc:
            _fail(str(exc))
            raise  # unreachable: _fail exits

    if not watch:
        found = rows()
        console.print(_status_table(found))
        sys.exit(0 if all(r["ok"] for r in found) else 1)
    _watch_status(rows, interval, count)
    sys.exit(0)


def _watch_status(rows: Any, interval: float, count: int | None) -> None:
    """Refresh the status table every ``interval`` seconds until Ctrl-C or ``count``.

    On a terminal the table is redrawn in place (rich Live); piped or captured output
    gets one table per refresh, each titled with its time, so a log shows the changes.
    """
    from rich.live import Live

    def table(n: int) -> Table:
        found = rows()
        up = sum(r["ok"] for r in found)
        return _status_table(found, f"papycluster status ({up}/{len(found)} up) at "
                                    f"{time.strftime('%H:%M:%S')}, refresh {n}, every "
                                    f"{interval:g} s (Ctrl-C ends)")

    n = 0
    try:
        if console.is_terminal:
            with Live(table(1), console=console, auto_refresh=False) as live:
                n = 1
                while count is None or n < count:
                    time.sleep(interval)
                    n += 1
                    live.update(table(n), refresh=True)
        else:
            while count is None or n < count:
                if n:
                    time.sleep(interval)
                n += 1
                console.print(table(n))
                sys.stdout.flush()
    except KeyboardInterrupt:
        console.print(f"stopped after {n} refresh(es)")


@main.command()
@click.option("--size", type=int, default=1 << 20, show_default=True,
              help="bytes per test item")
@click.option("--transport", "transports", multiple=True,
              help="transport(s) to try (default: all)")
@click.option("--timeout", type=float, default=30.0, show_default=True)
@click.option("-f", "--file", "hosts_file", type=click.Path(dir_okay=False),
              help="preflight: check the hosts of this file before any `up`")
def check(size: int, transports: tuple[str, ...], timeout: float,
          hosts_file: str | None) -> None:
    """Move a test item between every pair of hosts with every transport they can use.

    With -f, a preflight instead: will `up` work with this hosts file? SSH, Python, OS,
    shares and ports of every host, and which pairs of hosts reach each other.
    """
    from papycluster.cluster.check import TRANSPORTS, run_check
    from papycluster.cluster.errors import ClusterError

    if hosts_file:
        _preflight(Path(hosts_file))

    chosen = transports or TRANSPORTS
    try:
        cells = run_check(transports=chosen, size=size, timeout=timeout, progress=_progress)
    except ClusterError as exc:
        _fail(str(exc))
    from papycluster.cluster.negotiate import auto_transport
    from papycluster.cluster.state import load_state

    state = load_state()
    assert state is not None  # run_check needed it too
    caps = {n: dict(h.caps, name=n) for n, h in state.hosts.items()}
    table = Table(title=f"transport matrix ({size} bytes per item)")
    table.add_column("sender -> receiver")
    table.add_column("negotiated")
    for t in chosen:
        table.add_column(t)
    pairs: dict[tuple[str, str], dict[str, Any]] = {}
    for c in cells:
        pairs.setdefault((c.sender, c.receiver), {})[c.transport] = c
    for (a, b), row in pairs.items():
        out = []
        for t in chosen:
            c = row[t]
            if c.status == "ok":
                out.append(f"[green]ok[/green] {c.mb_per_s:.0f} MB/s"
                           + (f" ({c.detail})" if c.detail else ""))
            elif c.status == "n/a":
                out.append("[dim]-[/dim]")
            else:
                out.append(f"[red]failed[/red] {escape(c.detail[:60])}")
        picked, options = auto_transport(caps[a], caps[b])
        picked += f" ({options['share']})" if options.get("share") else ""
        table.add_row(f"{a} -> {b}", picked, *out)
    console.print(table)
    failed = [c for c in cells if c.status == "failed"]
    for c in failed:
        err_console.print(f"[red]{c.sender} -> {c.receiver} {c.transport}:[/red] "
                          f"{escape(c.detail)}", soft_wrap=True)
    sys.exit(1 if failed else 0)


def _preflight(path: Path) -> None:
    """``check -f``: print what the preflight found; exit 1 when ``up`` would fail."""
    from papycluster.cluster.errors import ClusterError, HostsFileError
    from papycluster.cluster.hosts import load_hosts
    from papycluster.cluster.preflight import run_preflight

    started = time.monotonic()
    try:
        config = load_hosts(path)
        console.print(f"preflight of cluster [bold]{config.name}[/bold] from {path}: "
                      f"{len(config.hosts)} host(s)")
        found = run_preflight(config, progress=_progress)
    except (HostsFileError, ClusterError) as exc:
        _fail(str(exc))
    table = Table(title=f"preflight: {sum(h.ok for h in found.hosts)}/{len(found.hosts)} "
                        f"hosts ready for up ({time.monotonic() - started:.1f} s)")
    for col in ("host", "status", "found", "problem and fix"):
        table.add_column(col)
    for h in found.hosts:
        facts = " ".join(f"{k} {v}" for k, v in h.facts.items()
                         if k in ("os", "python", "agent_port"))
        if h.ok:
            table.add_row(h.name, "[green]ready[/green]", escape(facts), "")
        for p in h.problems:
            table.add_row(h.name, f"[red]{escape(p.cause)}[/red]", escape(facts),
                          escape(f"{p.detail} -> {p.fix}"))
    console.print(table)
    names = [h.name for h in found.hosts if h.listen_port is not None]
    if len(names) > 1:
        pairs = Table(title="who reaches whom (the receiver's agent port, or the port "
                            "named when that one was taken)")
        pairs.add_column("sender -> receiver")
        pairs.add_column("reach")
        for a in ["controller", *names]:
            for b in names:
                r = found.pair(a, b)
                if r is None:
                    continue
                pairs.add_row(f"{a} -> {b}", "[green]direct[/green]" + (
                    f" {r.ms:.0f} ms" if r.ms is not None else "") if r.ok else
                    f"[red]blocked[/red] {escape(r.detail)}")
        console.print(pairs)
    blocked = [r for r in found.reach if not r.ok and r.sender != "controller"]
    for r in blocked:
        err_console.print(f"[yellow]warning:[/yellow] {r.sender} cannot reach {r.receiver} "
                          f"({escape(r.detail)}): tcp and udp between them will fail; the "
                          "manager path and file on a share still work", soft_wrap=True)
    sys.exit(0 if found.ok else 1)


@main.command()
@click.option("-f", "--file", "hosts_file", type=click.Path(dir_okay=False),
              help="hosts file, to sweep hosts when the state is lost")
@click.option("--purge-cache", is_flag=True, help="also remove the shipped code on hosts")
def down(hosts_file: str | None, purge_cache: bool) -> None:
    """Stop every agent; leave no process and no temporary file on any host."""
    from papycluster.cluster import controller
    from papycluster.cluster.errors import ClusterError, HostsFileError
    from papycluster.cluster.hosts import load_hosts

    config = None
    path = _hosts_file(hosts_file)
    try:
        if path is not None:
            config = load_hosts(path)
        results = controller.down(config, progress=_progress, purge_cache=purge_cache)
    except (ClusterError, HostsFileError) as exc:
        _fail(str(exc))
    if not results:
        console.print("nothing is running (no cluster state; pass the hosts file with -f "
                      "to sweep hosts whose state was lost)")
        sys.exit(0)
    bad = [r for r in results if not r.ok]
    console.print(f"{len(results) - len(bad)}/{len(results)} host(s) clean")
    for r in bad:
        err_console.print(f"[red]{r.name}:[/red] {escape(r.detail)}", soft_wrap=True)
    sys.exit(1 if bad else 0)


@main.command()
@click.option("--agents", type=int, default=2, show_default=True,
              help="local agents to start")
@click.option("--items", type=int, default=100, show_default=True)
def demo(agents: int, items: int) -> None:
    """Bring up a local cluster, run an example pipeline across it, take it down."""
    from papycluster.demo import run_demo

    sys.exit(run_demo(agents=agents, items=items, console=console))


if __name__ == "__main__":
    main()
