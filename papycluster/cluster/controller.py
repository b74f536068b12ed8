"""``up``, ``down`` and ``status``: the controller's view of the cluster.

Hosts are handled in parallel, one thread each, and every step has a bounded wait, so
one dead host costs at most its own timeouts and never holds up the others. Each step
reports progress through a callback (the CLI shows it with rich).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import papycluster
from papycluster.cluster import deploy, readiness
from papycluster.cluster.auth import new_secret
from papycluster.cluster.client import AgentConnection
from papycluster.cluster.errors import ClusterError, HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig
from papycluster.cluster.remote import parse_result, render
from papycluster.cluster.state import (
    ClusterState,
    load_state,
    remove_state,
    save_state,
    state_path,
)

Progress = Callable[[str, str], None]  # (host, message)


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


def _local_pythonpath() -> str:
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


def _check_not_up(progress: Progress) -> None:
    old = load_state(missing_ok=True)
    if old is None:
        return
    alive = []
    for name, h in old.hosts.items():
        try:
            conn = AgentConnection(h["connect"], int(h["agent_port"]), old.secret, name, 3.0,
                                   check_version=False)
            conn.close()
            alive.append(name)
        except Exception:
            pass
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


def up_local(n: int = 2, cluster: str | None = None, workers: int = 2,
             profiles: list[str] | None = None, progress: Progress = _quiet,
             timeout: float = 60.0) -> UpResult:
    """Start ``n`` agents on this machine (loopback, no SSH) and write the state.

    ``profiles[i]`` (``native``/``windows``) lets a test give agent i the Windows profile.
    """
    _check_not_up(progress)
    cluster = cluster or local_cluster_name()
    secret = new_secret()
    state = ClusterState(cluster=cluster, secret=secret)
    from papycluster.cluster.agent_protocol import default_run_dir

    def start(i: int) -> HostResult:
        name = f"local{i + 1}"
        profile = (profiles or [])[i] if profiles and i < len(profiles) else "native"
        run_dir = default_run_dir(cluster, name)
        progress(name, "starting agent")
        res: dict[str, Any] = {}
        try:
            res = run_local_script("launch", {
                "name": name, "cluster": cluster, "run_dir": run_dir, "secret": secret,
                "bind": "127.0.0.1", "advertise": "127.0.0.1", "port": 0,
                "profile": profile, "shares": {}, "workers": workers,
                "pythonpath": [_local_pythonpath()], "timeout": timeout}, timeout + 10)
            if not res.get("ok"):
                return HostResult(name, False, res.get("cause", "agent failed"),
                                  res.get("detail", ""))
            info = readiness.wait_agent(name, "127.0.0.1", res["port"], secret, timeout)
        except HostError as exc:
            if res.get("ok"):  # it runs, but it is not usable: do not leave it behind
                try:
                    run_local_script("stop", {"cluster": cluster, "run_dirs": [res["run_dir"]],
                                              "scan": False, "grace": 5.0}, 30.0)
                except HostError:
                    pass
            return HostResult(name, False, exc.cause, exc.detail)
        state.hosts[name] = {
            "address": "127.0.0.1", "connect": "127.0.0.1", "agent_port": res["port"],
            "pid": res["pid"], "run_dir": res["run_dir"], "local": True,
            "os": info["os"], "profile": profile, "workers": workers, "shares": {},
            "python": info["python"], "ssh": None, "caps": readiness.agent_caps(info),
            "controller_address": "127.0.0.1"}
        progress(name, f"up (pid {res['pid']}, port {res['port']})")
        return HostResult(name, True, info=info)

    with ThreadPoolExecutor(max_workers=max(1, n)) as pool:
        results = list(pool.map(start, range(n)))
    path = save_state(state) if state.hosts else None
    return UpResult(cluster, results, path)


def up(config: ClusterConfig, progress: Progress = _quiet) -> UpResult:
    """Start one agent per host of ``config`` over SSH; see :mod:`papycluster.cluster.deploy`."""
    _check_not_up(progress)
    secret = new_secret()
    state = ClusterState(cluster=config.name, secret=secret, hosts_file=config.path,
                         options={k: getattr(config, k) for k in _SSH_OPTIONS})
    with ThreadPoolExecutor(max_workers=max(1, min(32, len(config.hosts)))) as pool:
        futures = {h.name: pool.submit(deploy.start_host, config, h, secret, progress)
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
                "host_key_policy")


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
            res = run_local_script("stop", {"cluster": name, "scan": True, "grace": 5.0},
                                   timeout)
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
    targets: dict[str, dict[str, Any]] = {}
    cluster = state.cluster if state else config.name  # type: ignore[union-attr]
    if state is not None:
        targets.update(state.hosts)
    if config is not None:
        for h in config.hosts:  # empty when rebuilt from the state
            targets.setdefault(h.name, {"address": h.address, "local": False,
                                        "config": h})

    def stop(name: str, entry: dict[str, Any]) -> DownResult:
        progress(name, "stopping")
        wait_exit = 0.0

        def asked(run_dir: str | None) -> dict[str, int]:
            # the agent we just asked to shut down: the stop script waits for it and its
            # children even if it has removed its run dir (and pid file) already
            if wait_exit and run_dir and entry.get("pid"):
                return {run_dir: int(entry["pid"])}
            return {}
        if state is not None and "agent_port" in entry:
            try:
                conn = AgentConnection(entry["connect"], int(entry["agent_port"]),
                                       state.secret, name, timeout=5.0, check_version=False)
                try:
                    conn.root.shutdown()
                    wait_exit = 5.0
                finally:
                    conn.close()
            except Exception as exc:
                progress(name, f"agent does not answer ({exc}); sweeping")
        try:
            if entry.get("local"):
                from papycluster.cluster.agent_protocol import default_run_dir
                run_dir = entry.get("run_dir") or default_run_dir(cluster, name)
                res = run_local_script("stop", {
                    "cluster": cluster, "run_dirs": [run_dir], "scan": False,
                    "grace": 5.0, "wait_exit": wait_exit,
                    "asked": asked(run_dir)}, timeout)
            else:
                host_cfg = entry.get("config") or _host_from_state(name, entry, config)
                res = deploy.stop_host(config, host_cfg, cluster, entry.get("run_dir"),
                                       purge_cache, timeout, wait_exit,
                                       asked(entry.get("run_dir")))
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
        results = list(pool.map(lambda kv: stop(*kv), targets.items()))
    if all(r.ok for r in results):
        remove_state()
        from papycluster.cluster import negotiate

        negotiate.forget_controller_env()
    return results


def _host_from_state(name: str, entry: dict[str, Any],
                     config: ClusterConfig | None) -> HostConfig:
    if config is not None:
        try:
            return config.host(name)
        except KeyError:
            pass
    ssh = entry.get("ssh") or {}
    return HostConfig(name=name, address=entry["address"], user=ssh.get("user"),
                      port=ssh.get("port"), key=ssh.get("key"),
                      python=entry.get("python_cmd", "python3"), os=entry.get("os"),
                      shell=ssh.get("shell"), cache_dir=ssh.get("cache_dir"))


def status(timeout: float = 5.0) -> list[dict[str, Any]]:
    """One row per host of the running cluster: its agent's info, or why it is missing."""
    state = load_state()
    assert state is not None

    def one(item: tuple[str, dict[str, Any]]) -> dict[str, Any]:
        name, entry = item
        row: dict[str, Any] = {"name": name, "address": entry["address"],
                               "agent_port": entry["agent_port"], "ok": False}
        try:
            conn = AgentConnection(entry["connect"], int(entry["agent_port"]), state.secret,
                                   name, timeout)
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
