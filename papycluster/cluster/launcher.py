"""Launchers: how an agent is started on a host and swept from it, behind one interface.

Why: ``up`` and ``down`` were two code paths each, one for agents on this machine and
one over SSH. Now the controller maps one :class:`Launcher` over the hosts (as Dask's
``ProcessInterface`` has a subprocess and an SSH implementation):

* :class:`LocalLauncher` runs the launch and stop scripts (the same scripts a remote
  host runs) with this machine's Python, on loopback, without SSH;
* :class:`SshLauncher` visits the host over SSH (:mod:`papycluster.cluster.deploy`).

Both return a :class:`~papycluster.cluster.state.HostEntry` and the agent's info from
``start``, the stop script's result from ``stop``, and fail with a HostError naming
the cause.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import papycluster
from papycluster.cluster import deploy, readiness
from papycluster.cluster.agent_protocol import default_run_dir
from papycluster.cluster.errors import HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig
from papycluster.cluster.remote import parse_result, render
from papycluster.cluster.state import HostEntry
from papycluster.transport import curve

Progress = Callable[[str, str], None]  # (host, message)


class Launcher(Protocol):
    """Starts one host's agent, and sweeps a host of its cluster's agents."""

    def start(self, host: HostConfig, secret: str, progress: Progress
              ) -> tuple[HostEntry, dict[str, Any]]:
        """Start the agent of ``host``: its state entry and its agent's info."""
        ...

    def stop(self, name: str, entry: HostEntry | None, host: HostConfig | None, *,
             wait_exit: float, asked_pid: int | None, purge_cache: bool,
             timeout: float) -> dict[str, Any]:
        """Kill what is left of the cluster's agents on host ``name`` and remove their
        run directories; ``asked_pid`` (an agent just asked to shut down) is waited for
        ``wait_exit`` seconds, never killed by that pid. The stop script's result."""
        ...


def local_pythonpath() -> str:
    """The directory holding the ``papycluster`` package the controller runs."""
    return str(Path(papycluster.__file__).resolve().parent.parent)


def run_local_script(name: str, config: dict[str, Any], timeout: float,
                     python: str | None = None) -> dict[str, Any]:
    """Run a remote script on this machine (the local-cluster path, same code as SSH)."""
    try:
        proc = subprocess.run([python or sys.executable, "-"], input=render(name, config),
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise HostError("local", "timeout", f"{name} script took more than {timeout:g} s")
    result = parse_result(proc.stdout)
    if result is None:
        raise HostError("local", "agent failed",
                        f"{name} script failed (exit {proc.returncode}): {proc.stderr[-1500:]}")
    return result


class LocalLauncher:
    """Agents on this machine, on loopback: each host's ``profile`` and ``workers``
    count; the agent imports the controller's own papycluster."""

    def __init__(self, cluster: str, timeout: float = 60.0) -> None:
        self.cluster = cluster
        self.timeout = timeout

    def start(self, host: HostConfig, secret: str, progress: Progress
              ) -> tuple[HostEntry, dict[str, Any]]:
        name, timeout = host.name, self.timeout
        progress(name, "starting agent")
        res = run_local_script("launch", {
            "name": name, "cluster": self.cluster,
            "run_dir": default_run_dir(self.cluster, name), "secret": secret,
            "bind": "127.0.0.1", "advertise": "127.0.0.1", "port": 0,
            "profile": host.profile, "shares": {}, "workers": host.workers,
            "pythonpath": [local_pythonpath()], "timeout": timeout,
            # no hosts file here: this process's PAPYCLUSTER_ENCRYPT decides
            "encrypt": curve.enabled()}, timeout + 10)
        if not res.get("ok"):
            raise HostError(name, res.get("cause", "agent failed"), res.get("detail", ""))
        try:
            info = readiness.wait_agent(name, "127.0.0.1", res["port"], secret, timeout)
        except HostError:
            # it runs, but it is not usable: do not leave it behind
            try:
                run_local_script("stop", {"cluster": self.cluster, "run_dirs": [res["run_dir"]],
                                          "scan": False, "grace": 5.0}, 30.0)
            except HostError:
                pass
            raise
        entry = HostEntry(
            address="127.0.0.1", connect="127.0.0.1", agent_port=res["port"], pid=res["pid"],
            run_dir=res["run_dir"], local=True, os=info["os"], profile=host.profile,
            workers=host.workers, shares={}, python=info["python"], ssh=None,
            caps=readiness.agent_caps(info), controller_address="127.0.0.1",
            groups=list(host.groups))
        progress(name, f"up (pid {res['pid']}, port {res['port']})")
        return entry, info

    def stop(self, name: str, entry: HostEntry | None, host: HostConfig | None, *,
             wait_exit: float, asked_pid: int | None, purge_cache: bool,
             timeout: float) -> dict[str, Any]:
        run_dir = (entry.run_dir if entry else None) or default_run_dir(self.cluster, name)
        return run_local_script("stop", {
            "cluster": self.cluster, "run_dirs": [run_dir], "scan": False, "grace": 5.0,
            "wait_exit": wait_exit, "asked": {run_dir: asked_pid} if asked_pid else {}},
            timeout)

    def sweep(self, timeout: float) -> dict[str, Any]:
        """Kill any agent of this cluster on this machine and remove its run dirs (a
        local cluster whose state was lost)."""
        return run_local_script("stop", {"cluster": self.cluster, "scan": True,
                                         "grace": 5.0}, timeout)


class SshLauncher:
    """Agents on hosts reached over SSH, as the hosts file ``config`` says (``down``
    without the file rebuilds what it needs from the cluster state)."""

    def __init__(self, config: ClusterConfig | None, cluster: str | None = None) -> None:
        self.config = config
        self.cluster = cluster or (config.name if config else "papycluster")

    def start(self, host: HostConfig, secret: str, progress: Progress
              ) -> tuple[HostEntry, dict[str, Any]]:
        assert self.config is not None, "starting hosts needs the hosts file"
        return deploy.start_host(self.config, host, secret, progress)

    def stop(self, name: str, entry: HostEntry | None, host: HostConfig | None, *,
             wait_exit: float, asked_pid: int | None, purge_cache: bool,
             timeout: float) -> dict[str, Any]:
        host = host or deploy.host_from_entry(name, entry, self.config)
        run_dir = entry.run_dir if entry else None
        asked = {run_dir: asked_pid} if run_dir and asked_pid else {}
        return deploy.stop_host(self.config, host, self.cluster, run_dir, purge_cache,
                                timeout, wait_exit, asked)
