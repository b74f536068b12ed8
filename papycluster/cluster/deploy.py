"""Bringing one host up (and down) over SSH: what :class:`~.launcher.SshLauncher` runs.

The host gets the bundle (:mod:`papycluster.cluster.bundle`: papycluster and the
packages its agent needs, cached there by content hash) and a launch script, over one
:class:`papycluster.cluster.ssh.Connection`. Each step is bounded in time and fails
with a named cause:

1. SSH connect (unreachable / refused / auth failed / host key mismatch).
2. One SFTP session: is the zip cached? If not, copy it (deploy failed).
3. One run of the launch script with ``<python> -``: it probes Python version, OS, a
   writable temp dir, the agent port and the cached zip (no Python / Python too old /
   check failed) and, if all is well, starts the agent detached (agent failed). The
   secret travels inside the script on stdin and lands in a 0600 file. Only where SFTP
   could not place the zip (no SFTP, or it sees another home than Python) does the
   script ask for it, and a second run carries it inside.
4. Connect to the agent and ask for its info (agent failed, version mismatch).

So a host's visit is one SSH connection, one SFTP session and one Python start there
(before the agent's own). On hosts that share cores (virtual machines, containers) every
process started and every file written there is what the ``up`` of the others waits
behind; unpacking hundreds of files and three Python runs per host were most of ``up``.
"""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path
from typing import Any

import papycluster
from papycluster.cluster import readiness, ssh
from papycluster.cluster.bundle import DEFAULT_CACHE_DIR, build_bundle
from papycluster.cluster.errors import HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig
from papycluster.cluster.remote import parse_result, render
from papycluster.cluster.shell import login_shell, quote_command, sftp_spelling
from papycluster.cluster.state import HostEntry, SshSettings

MIN_PYTHON = (3, 9)


def no_python(host: HostConfig, res: ssh.RunResult) -> bool:
    """Whether a failed run says that the host has no such Python."""
    text = (res.stdout + res.stderr).lower()
    return res.code in (127, 9009) or any(s in text for s in (
        "not found", "no such file", "is not recognized", "cannot find"))


def parse_version(text: str) -> tuple[int, ...] | None:
    """The version in ``python --version``'s output (``Python 3.11.2``)."""
    m = re.search(r"Python\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def launch(conn: ssh.Connection, host: HostConfig, shell: str, config: dict[str, Any],
           timeout: float, cause: str = "check failed", script: str = "launch"
           ) -> dict[str, Any]:
    """Run the launch script (with its probe), or another remote ``script`` of the
    same shape (preflight); turn every way it fails into a named cause.

    Returns the script's result: ``probe`` (what the host has), and either the agent's
    ``pid``/``port``/``run_dir``, or ``need_bundle``, or the launch's own failure. A
    script that prints no result fails with ``cause`` unless Python is missing or old.
    """
    res = conn.run_python(host, shell, render(script, config), timeout)
    result = parse_result(res.stdout)
    if result is None:
        if no_python(host, res):
            raise HostError(host.name, "no Python",
                            f"{host.python!r} is not there ({res.stderr.strip()[-300:]}); "
                            "install Python >= 3.9 or set python = \"/path/to/python3\"")
        ver = conn.run(quote_command([host.python, "--version"], shell), None, timeout)
        version = parse_version(ver.stdout + ver.stderr)
        if version is not None and version < MIN_PYTHON:
            raise HostError(host.name, "Python too old",
                            f"{host.python} is Python {'.'.join(map(str, version))}; "
                            f"papycluster needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}")
        raise HostError(host.name, cause,
                        f"the {script} script failed (exit {res.code}): "
                        f"{res.stderr.strip()[-800:]}")
    if result.get("probe") is not None:
        check_probe(host, result["probe"])
    return result


def check_probe(host: HostConfig, found: dict[str, Any]) -> None:
    """Raise the named cause for a host that does not fit (the script's ``fit``)."""
    version = tuple(found["version"])
    if version < MIN_PYTHON:
        raise HostError(host.name, "Python too old",
                        f"{found.get('executable') or host.python} is Python "
                        f"{'.'.join(map(str, version))}; papycluster needs >= "
                        f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}")
    if not found.get("tempdir_writable"):
        raise HostError(host.name, "check failed",
                        f"temp dir {found.get('tempdir')} is not writable: "
                        f"{found.get('tempdir_error')}")
    if not found.get("port_free") and not found.get("old_agent_pid"):
        raise HostError(host.name, "check failed",
                        f"agent port {host.agent_port} is in use "
                        f"({found.get('port_error')}); set agent_port to a free port")


def _run_script(conn: ssh.Connection, host: HostConfig, shell: str, name: str,
                config: dict[str, Any], timeout: float, cause: str) -> dict[str, Any]:
    res = conn.run_python(host, shell, render(name, config), timeout)
    result = parse_result(res.stdout)
    if result is None:
        raise HostError(host.name, cause, f"{name} script failed (exit {res.code}): "
                        f"{res.stderr.strip()[-800:]}")
    return result


def _ship(conn: ssh.Connection, host: HostConfig, bundle: Path, path: str,
          timeout: float, progress: Any) -> bool:
    """Copy the bundle to ``path`` on the host by SFTP, unless it is already there.

    One SFTP session looks and, for a bare host, copies: cheaper on the host than
    unpacking, and than a Python start to look. Returns False when SFTP cannot tell
    (no SFTP, a path only Python can expand); then the launch script looks, and asks
    for the bundle inside itself if it is missing. A copy that fails is a deploy failure.
    """
    where = sftp_spelling(path)
    if where is None:
        return False
    try:
        if conn.exists(where, timeout):
            progress(host.name, "papycluster already cached")
            return True
    except Exception:  # no SFTP, or it cannot look there
        return False
    progress(host.name, f"shipping papycluster ({bundle.stat().st_size // 1024} KB)")
    try:
        conn.put_atomic(str(bundle), where, timeout)
    except Exception as exc:
        raise HostError(host.name, "deploy failed",
                        f"cannot copy the bundle to {path} by SFTP: {exc}")
    return True


#: What encrypted tcp needs on a host (its CURVE); shipped to every host with ``encrypt``.
ZMQ_REQUIREMENT = "pyzmq>=25"


def _ship_packages(conn: ssh.Connection, host: HostConfig, shell: str, cache_dir: str,
                   timeout: float, progress: Any, encrypt: bool = False
                   ) -> dict[str, Any] | None:
    """The hosts file's ``packages`` for ``host`` (and pyzmq when tcp is encrypted):
    wheels downloaded here for its platform and Python, shipped by SFTP
    unless cached there (see cluster.packages). None when it needs none.

    pyzmq is what encrypted tcp needs, not what the user asked for: when it cannot be
    had (a controller without a package index, no wheel for the host, a Python the
    launch check will refuse anyway), the host comes up without it, with a warning, and
    reports no tcp to the negotiation (see ``agent_protocol.capabilities``)."""
    try:
        return _fetch_and_ship(conn, host, shell, cache_dir, timeout, progress,
                               with_zmq=encrypt)
    except HostError as exc:
        if not encrypt or any(_is_zmq(r) for r in host.packages):
            raise
        progress(host.name, f"no pyzmq for this host ({exc.cause}: {exc.detail}); its "
                            "tcp items need it when encrypted")
        if not host.packages:
            return None
        return _fetch_and_ship(conn, host, shell, cache_dir, timeout, progress,
                               with_zmq=False)


def _is_zmq(requirement: str) -> bool:
    return requirement.replace("_", "-").lower().startswith("pyzmq")


def _fetch_and_ship(conn: ssh.Connection, host: HostConfig, shell: str, cache_dir: str,
                    timeout: float, progress: Any, with_zmq: bool) -> dict[str, Any] | None:
    from papycluster.cluster import packages

    info = _run_script(conn, host, shell, "platform_tags", {}, timeout, "check failed")
    wanted = list(host.packages)
    if with_zmq and not any(_is_zmq(r) for r in wanted):
        wanted.append(ZMQ_REQUIREMENT)
    if not wanted:
        return None
    progress(host.name, f"packages {', '.join(wanted)} for {packages.describe(info)}")
    wheels = packages.download(host.name, wanted, info)
    site = packages.plan(cache_dir, wheels)
    wait = max(timeout, 60.0)
    try:
        conn.sftp(wait)
    except Exception as exc:
        raise HostError(host.name, "packages failed", f"packages are shipped by SFTP, "
                        f"which this host does not offer: {exc}")
    try:
        for remote, local in site["wheels"].items():
            where = sftp_spelling(remote)
            if where is None:
                raise HostError(host.name, "packages failed",
                                f"SFTP cannot spell the cache_dir {cache_dir!r}: use a "
                                "path under ~ or an absolute one")
            if conn.exists(where, wait):
                continue
            progress(host.name, f"shipping {Path(local).name} "
                                f"({Path(local).stat().st_size // 1024} KB)")
            conn.put_atomic(local, where, wait)
    except HostError:
        raise
    except Exception as exc:
        raise HostError(host.name, "packages failed", f"cannot copy the wheels to "
                        f"{cache_dir}/wheels by SFTP: {exc}")
    return site


def start_host(config: ClusterConfig, host: HostConfig, secret: str,
               progress: Any) -> tuple[HostEntry, dict[str, Any]]:
    """Bring ``host`` up; return (its cluster-state entry, its agent's info)."""

    target = ssh.resolve_target(config, host)
    timeout = config.connect_timeout
    progress(host.name, f"connecting to {target.hostname}:{target.port}")
    with ssh.Connection(target) as conn:
        # how this host reaches the controller (for transports served by local pipers)
        controller_address = conn.local_address()
        # before the OS is known: sh and cmd both run `python -` as written, and
        # PowerShell (which needs a file) is only ever chosen in the hosts file
        shell = login_shell(host, host.os)
        bundle, digest = build_bundle()
        cache_dir = host.cache_dir or DEFAULT_CACHE_DIR
        bundle_path = f"{cache_dir}/{papycluster.__version__}-{digest}.zip"
        _ship(conn, host, bundle, bundle_path, max(timeout, 60.0), progress)
        site = None
        if host.packages or config.encrypt:
            site = _ship_packages(conn, host, shell, cache_dir, timeout, progress,
                                  config.encrypt)
        script = {
            "name": host.name, "cluster": config.name, "run_dir": "",
            "secret": secret, "bind": host.bind or target.hostname,
            "advertise": target.hostname,
            "port": host.agent_port, "profile": host.profile, "shares": host.shares,
            "workers": host.workers, "timeout": config.start_timeout, "ports": host.ports,
            "encrypt": config.encrypt,
            "pythonpath": [bundle_path] + ([site["dir"]] if site else []),
            "site": site and {"dir": site["dir"], "wheels": list(site["wheels"]),
                              "names": site["names"]},
            "check": {"bundle": bundle_path, "min_python": list(MIN_PYTHON),
                      "agent_port": host.agent_port,
                      "cache_tag": sys.implementation.cache_tag}}
        progress(host.name, "checking Python, OS, temp dir, port; starting agent")
        launched = launch(conn, host, shell, script, config.start_timeout + timeout)
        info = launched["probe"]
        os_name = "windows" if info["os"] == "windows" else info["os"]
        if tuple(info["version"][:2]) != sys.version_info[:2]:
            progress(host.name, f"warning: Python {info['version'][0]}.{info['version'][1]} "
                     f"there, {sys.version_info[0]}.{sys.version_info[1]} here: functions "
                     "shipped by value (lambdas, closures, __main__) need the same version; "
                     "set python = to a matching one")
        if host.os and host.os != "unix" and host.os != os_name:
            progress(host.name, f"warning: hosts file says os={host.os}, host reports {os_name}")
        if launched.get("need_bundle"):
            # SFTP sees another file system than Python (a chroot, another home) or is
            # not there: the bundle goes inside the launch script instead
            progress(host.name, f"shipping papycluster ({bundle.stat().st_size // 1024} KB) "
                                "inside the launch script")
            script["bundle_data"] = base64.b64encode(bundle.read_bytes()).decode("ascii")
            launched = launch(conn, host, login_shell(host, os_name), script,
                              config.start_timeout + max(timeout, 60.0), "deploy failed")
            if launched.get("need_bundle"):
                raise HostError(host.name, "deploy failed",
                                f"the bundle was sent but is not at {info['bundle']}")
        if not launched.get("ok"):
            raise HostError(host.name, launched.get("cause", "check failed"),
                            launched.get("detail", str(launched)))
    progress(host.name, f"waiting for the agent on {target.hostname}:{launched['port']}")
    try:
        agent_info = readiness.wait_agent(host.name, target.hostname, launched["port"], secret,
                                 config.start_timeout)
    except HostError as exc:
        # it runs but we cannot talk to it (a firewall?): do not leave it behind
        try:
            stop_host(config, host, config.name, launched["run_dir"], False, timeout)
            undone = "it was stopped again"
        except HostError as stop_exc:
            undone = f"stopping it failed too ({stop_exc.cause}: {stop_exc.detail})"
        if exc.cause == "version mismatch":  # it answers, but runs other code
            raise HostError(host.name, exc.cause, f"{exc.detail}; {undone}")
        raise HostError(host.name, "agent failed",
                        f"the agent started (pid {launched['pid']}) but does not answer on "
                        f"{target.hostname}:{launched['port']} from here (a firewall?); "
                        f"{undone}. {exc.detail}")
    progress(host.name, f"up: {agent_info['os']}, Python {agent_info['python']}, "
                        f"pid {launched['pid']}")
    entry = HostEntry(
        address=host.address, connect=target.hostname, agent_port=launched["port"],
        pid=launched["pid"], run_dir=launched["run_dir"], local=False,
        os=agent_info["os"], profile=host.profile, workers=host.workers,
        shares=host.shares, python=agent_info["python"], python_cmd=host.python,
        ssh=SshSettings(user=host.user, port=host.port, key=host.key, shell=host.shell,
                        cache_dir=host.cache_dir),
        caps=readiness.agent_caps(agent_info), controller_address=controller_address,
        groups=list(host.groups))
    return entry, agent_info


def stop_host(config: ClusterConfig | None, host: HostConfig, cluster: str,
              run_dir: str | None, purge_cache: bool, timeout: float,
              wait_exit: float = 0.0, asked: dict[str, int] | None = None
              ) -> dict[str, Any]:
    """Sweep ``host``: kill any agent of ``cluster`` and remove its run directories.

    ``asked`` maps a run dir to the pid of an agent that was just asked to shut down:
    it is waited for (``wait_exit`` seconds), with its children, never killed by that pid.
    """
    with ssh.Connection(ssh.resolve_target(config, host)) as conn:
        shell = login_shell(host, host.os)
        return _run_script(conn, host, shell, "stop", {
            "cluster": cluster, "run_dirs": [run_dir] if run_dir else [], "scan": True,
            "grace": 5.0, "wait_exit": wait_exit, "asked": asked or {},
            "purge_cache": purge_cache,
            "cache_dir": host.cache_dir or DEFAULT_CACHE_DIR}, timeout, "check failed")


def host_from_entry(name: str, entry: HostEntry | None,
                    config: ClusterConfig | None) -> HostConfig:
    """How to reach ``name`` again for ``down``: the hosts file's entry if there is one,
    else what the cluster state kept of it."""
    if config is not None:
        try:
            return config.host(name)
        except KeyError:
            pass
    if entry is None:
        raise HostError(name, "check failed", "neither the hosts file nor the cluster "
                        "state says how to reach this host")
    ssh_settings = entry.ssh or SshSettings()
    return HostConfig(name=name, address=entry.address, user=ssh_settings.user,
                      port=ssh_settings.port, key=ssh_settings.key,
                      python=entry.python_cmd or "python3", os=entry.os,
                      shell=ssh_settings.shell, cache_dir=ssh_settings.cache_dir)
