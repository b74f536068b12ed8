"""``up``, ``down`` and ``status``: the controller's view of the cluster.

Each is a parallel map over the hosts: ``up`` starts each host with a launcher
(:mod:`papycluster.cluster.launcher`: on this machine, or over SSH), ``down`` asks each
agent to shut down and has its launcher sweep the host, ``status`` asks each agent for
its info. One thread per host, and every step has a bounded wait, so one dead host
costs at most its own timeouts and never holds up the others. Each step reports
progress through a callback (the CLI shows it with rich). What ``up`` started is kept
in the cluster state (:mod:`papycluster.cluster.state`).
"""

from __future__ import annotations

import dataclasses
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papycluster.cluster.auth import new_secret
from papycluster.cluster.client import AgentConnection
from papycluster.cluster.errors import ClusterError, HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig
from papycluster.cluster.launcher import (
    Launcher,
    LocalLauncher,
    Progress,
    SshLauncher,
)
from papycluster.cluster.state import (
    ClusterState,
    HostEntry,
    load_state,
    remove_state,
    save_state,
    state_path,
)


def _quiet(host: str, message: str) -> None:
    pass


@dataclass
class HostResult:
    name: str
    ok: bool
    cause: str = ""
    detail: str = ""
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class UpResult:
    cluster: str
    results: list[HostResult]
    state_file: Path | None = None

    @property
    def up(self) -> list[str]:
        return [r.name for r in self.results if r.ok]

    @property
    def failed(self) -> list[HostResult]:
        return [r for r in self.results if not r.ok]


def _answering(state: ClusterState, timeout: float = 3.0) -> list[str]:
    """The hosts of ``state`` whose agent answers and proves the cluster's secret."""

    def answers(item: tuple[str, HostEntry]) -> bool:
        name, h = item
        try:
            AgentConnection(h.connect, h.agent_port, state.secret, name, timeout,
                            check_version=False).close()
            return True
        except Exception:
            return False

    if not state.hosts:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(state.hosts)))) as pool:
        flags = list(pool.map(answers, state.hosts.items()))
    return [name for name, ok in zip(state.hosts, flags, strict=True) if ok]


def _check_not_up(progress: Progress) -> None:
    old = load_state(missing_ok=True)
    if old is None:
        return
    alive = _answering(old)
    if alive:
        raise ClusterError(f"cluster {old.cluster!r} is already up (agents answer on "
                           f"{', '.join(alive)}); run `papycluster down` first")
    progress("-", f"stale state of cluster {old.cluster!r} found (no agent answers); "
                  "replacing it")


def local_cluster_name(prefix: str = "local") -> str:
    """``local-<hash of the state path>``: unique per controller, stable across runs.

    Several controllers (users, test sessions) may run local clusters on one machine;
    run directories and ``down``'s sweep are per cluster name, so the names must differ.
    """
    digest = hashlib.sha256(str(state_path().resolve()).encode()).hexdigest()[:6]
    return f"{prefix}-{digest}"


def local_config(cluster: str, n: int, workers: int = 2,
                 profiles: list[str] | None = None) -> ClusterConfig:
    """The hosts of a local cluster: ``local1`` .. ``local<n>`` on this machine.

    ``profiles[i]`` (``native``/``windows``) lets a test give agent i the Windows profile.
    """
    return ClusterConfig(path="<local>", name=cluster, hosts=[
        HostConfig(name=f"local{i + 1}", address="127.0.0.1", workers=workers, local=True,
                   profile=profiles[i] if profiles and i < len(profiles) else "native")
        for i in range(n)])


def up_local(n: int = 2, cluster: str | None = None, workers: int = 2,
             profiles: list[str] | None = None, progress: Progress = _quiet,
             timeout: float = 60.0) -> UpResult:
    """Start ``n`` agents on this machine (loopback, no SSH) and write the state.

    ``profiles[i]`` (``native``/``windows``) lets a test give agent i the Windows profile.
    """
    _check_not_up(progress)
    cluster = cluster or local_cluster_name()
    state = ClusterState(cluster=cluster, secret=new_secret())
    return _start(local_config(cluster, n, workers, profiles),
                  LocalLauncher(cluster, timeout), state, progress)


def up(config: ClusterConfig, progress: Progress = _quiet) -> UpResult:
    """Start one agent per host of ``config`` over SSH; see :mod:`papycluster.cluster.deploy`.

    On a running cluster of the same name, only what is missing is started: hosts new
    to the file, and hosts whose agent no longer answers (lost, or back after a loss).
    Healthy agents are left alone (their pid, port and running pools stay), the
    cluster keeps its secret, and hosts of the state that the file no longer names keep
    running (``down`` stops them). A running cluster of another name is refused.
    """
    old = load_state(missing_ok=True)
    alive = _answering(old) if old is not None else []
    if alive and old is not None and old.cluster != config.name:
        raise ClusterError(f"cluster {old.cluster!r} is already up (agents answer on "
                           f"{', '.join(alive)}); run `papycluster down` first, or "
                           f"name it in the hosts file to add hosts to it")
    options = {k: getattr(config, k) for k in _SSH_OPTIONS}
    if not alive or old is None:
        if old is not None:
            progress("-", f"stale state of cluster {old.cluster!r} found (no agent "
                          "answers); replacing it")
        state = ClusterState(cluster=config.name, secret=new_secret(),
                             hosts_file=config.path, options=options)
        return _start(config, SshLauncher(config), state, progress)
    kept = [h for h in config.hosts if h.name in alive]
    for h in kept:
        progress(h.name, "up (agent answers; left alone)")
    missing = [h for h in config.hosts if h.name not in alive]
    for h in missing:
        progress(h.name, "its agent does not answer; starting it again" if h.name in
                 old.hosts else "new to the cluster; starting it")
    state = ClusterState(cluster=old.cluster, secret=old.secret, hosts_file=config.path,
                         options=options, created=old.created,
                         hosts={n: e for n, e in old.hosts.items() if n in alive})
    partial = dataclasses.replace(config, hosts=missing)
    started = _start(partial, SshLauncher(config), state, progress)
    results = {r.name: r for r in started.results}
    for h in kept:
        results[h.name] = HostResult(h.name, True, info={"kept": True,
                                                          "pid": state.hosts[h.name].pid})
    return UpResult(config.name, [results[h.name] for h in config.hosts],
                    started.state_file or save_state(state))


def _start(config: ClusterConfig, launcher: Launcher, state: ClusterState,
           progress: Progress) -> UpResult:
    """Start every host of ``config`` with ``launcher``, in parallel; save the state."""
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(config.hosts)))) as pool:
        futures = {h.name: pool.submit(launcher.start, h, state.secret, progress)
                   for h in config.hosts}
        results = []
        for h in config.hosts:
            try:
                entry, info = futures[h.name].result()
            except HostError as exc:
                progress(h.name, f"FAILED: {exc.cause}: {exc.detail}")
                results.append(HostResult(h.name, False, exc.cause, exc.detail))
                continue
            except Exception as exc:  # a bug must still name its host
                progress(h.name, f"FAILED: {exc!r}")
                results.append(HostResult(h.name, False, "error", repr(exc)))
                continue
            state.hosts[h.name] = entry
            results.append(HostResult(h.name, True, info=info))
    path = save_state(state) if state.hosts else None
    return UpResult(config.name, results, path)


_SSH_OPTIONS = ("connect_timeout", "start_timeout", "known_hosts", "ssh_config",
                "host_key_policy", "encrypt")


@dataclass
class DownResult:
    name: str
    ok: bool
    detail: str = ""
    killed: list[int] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def down(config: ClusterConfig | None = None, progress: Progress = _quiet,
         purge_cache: bool = False, timeout: float = 30.0) -> list[DownResult]:
    """Stop every agent and remove its files; works after a crash too.

    With a state file, each agent is asked to shut down, then its host is swept (the
    stop script kills what is left of any agent of this cluster and removes its run
    directory). Without a state file, ``config`` (the hosts file) says where to sweep;
    without either, this controller's local clusters are swept, and an empty list means
    that nothing was running.
    """
    state = load_state(missing_ok=True)
    if state is None and config is None:
        # a local cluster of this controller whose state was lost: its name is known
        swept = []
        for prefix in ("local", "demo"):
            name = local_cluster_name(prefix)
            res = LocalLauncher(name).sweep(timeout)
            if res.get("removed") or res.get("killed"):
                progress(name, f"swept {len(res['removed'])} run dir(s), stopped "
                               f"{len(res['killed'])} agent(s)")
                swept.append(DownResult(name, bool(res.get("ok")), "", res.get("killed", []),
                                        res.get("removed", [])))
        # nothing to stop is not an error (like `docker compose down`); the caller
        # says "nothing is running" for an empty list
        return swept
    if config is None and state is not None and state.options:
        config = ClusterConfig(path=state.hosts_file or "<state>", name=state.cluster,
                               **state.options)
    cluster = state.cluster if state else config.name  # type: ignore[union-attr]
    #: name -> (its state entry, its hosts file entry): either may be missing
    targets: dict[str, tuple[HostEntry | None, HostConfig | None]] = {}
    if state is not None:
        targets.update((name, (entry, None)) for name, entry in state.hosts.items())
    if config is not None:
        for h in config.hosts:  # empty when rebuilt from the state
            targets.setdefault(h.name, (None, h))
    local, remote = LocalLauncher(cluster), SshLauncher(config, cluster)

    def stop(name: str, entry: HostEntry | None, host: HostConfig | None) -> DownResult:
        progress(name, "stopping")
        wait_exit = 0.0
        if state is not None and entry is not None:
            try:
                conn = AgentConnection(entry.connect, entry.agent_port, state.secret, name,
                                       timeout=5.0, check_version=False)
                try:
                    conn.root.shutdown()
                    wait_exit = 5.0
                finally:
                    conn.close()
            except Exception as exc:
                progress(name, f"agent does not answer ({exc}); sweeping")
        launcher: Launcher = local if entry is not None and entry.local else remote
        # the agent we just asked to shut down: the stop script waits for it and its
        # children even if it has removed its run dir (and pid file) already
        asked_pid = entry.pid if wait_exit and entry is not None else None
        try:
            res = launcher.stop(name, entry, host, wait_exit=wait_exit, asked_pid=asked_pid,
                                purge_cache=purge_cache, timeout=timeout)
        except HostError as exc:
            progress(name, f"FAILED: {exc.cause}: {exc.detail}")
            return DownResult(name, False, f"{exc.cause}: {exc.detail}")
        for path, why in res.get("refused", []):  # planted, or opened up: not touched
            progress(name, f"not touched: {path} ({why})")
        ok = bool(res.get("ok"))
        progress(name, "down" if ok else f"left behind: {res.get('left')}")
        return DownResult(name, ok, "" if ok else f"left {res.get('left')}",
                          res.get("killed", []), res.get("removed", []))

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(targets)))) as pool:
        results = list(pool.map(lambda kv: stop(kv[0], *kv[1]), targets.items()))
    if all(r.ok for r in results):
        remove_state()
        from papycluster.cluster import negotiate

        negotiate.forget_controller_env()
    return results


def status(timeout: float = 5.0) -> list[dict[str, Any]]:
    """One row per host of the running cluster: its agent's info, or why it is missing."""
    state = load_state()
    assert state is not None

    def one(item: tuple[str, HostEntry]) -> dict[str, Any]:
        name, entry = item
        row: dict[str, Any] = {"name": name, "address": entry.address,
                               "agent_port": entry.agent_port, "ok": False}
        try:
            conn = AgentConnection(entry.connect, entry.agent_port, state.secret, name,
                                   timeout)
            try:
                row.update(conn.info())
                row["ok"] = True
            finally:
                conn.close()
        except Exception as exc:
            row["error"] = str(exc)
        return row

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(state.hosts)))) as pool:
        return list(pool.map(one, state.hosts.items()))
