"""Bringing one host up (and down) over SSH.

A bare host has Python >= 3.9 and sshd, maybe no pip and no network. So the controller
ships a zip of papycluster and the pure-Python packages the agent needs, taken from its
own installation; the host caches it under ``<cache_dir>/<version>-<hash>`` and the next
``up`` reuses it. The steps, each bounded in time, each failing with a named cause:

1. SSH connect (unreachable / refused / auth failed / host key mismatch).
2. Probe with ``<python> -``: Python version, OS, a writable temp dir, the agent port
   free, the bundle already cached (no Python / Python too old / check failed).
3. Ship the bundle if it is not cached (deploy failed).
4. Launch the agent detached; the secret travels inside the launch script on stdin
   and lands in a 0600 file (agent failed).
5. Connect to the agent and ask for its info (agent failed).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import secrets
import sys
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import papycluster
from papycluster.cluster import ssh
from papycluster.cluster.errors import HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig
from papycluster.cluster.remote import parse_result, render

MIN_PYTHON = (3, 9)
#: Packages the agent and its workers import; all pure Python.
BUNDLE_PACKAGES = ("papycluster", "rpyc", "cloudpickle")
#: Pure-Python packages shipped too when the controller has them (plumbum: rpyc's
#: optional helper; PyMySQL: the mysql transport).
OPTIONAL_PACKAGES = ("plumbum", "pymysql")
DEFAULT_CACHE_DIR = "~/.cache/papycluster"

_bundle_lock = threading.Lock()
_bundle_cache: dict[tuple[str, ...], tuple[Path, str]] = {}


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise HostError("controller", "deploy failed",
                        f"package {name} is not installed on the controller")
    return Path(next(iter(spec.submodule_search_locations)))


def bundle_packages() -> tuple[str, ...]:
    """The required packages plus the optional ones this controller has."""
    return BUNDLE_PACKAGES + tuple(
        p for p in OPTIONAL_PACKAGES if importlib.util.find_spec(p) is not None)


def build_bundle(packages: tuple[str, ...] | None = None) -> tuple[Path, str]:
    """Zip ``packages`` from this interpreter's installation; return (path, hash).

    The hash covers every file's path and bytes, so an edited papycluster is shipped
    again while an unchanged one is reused from the host's cache.
    """
    packages = packages or bundle_packages()
    with _bundle_lock:
        if packages in _bundle_cache and _bundle_cache[packages][0].exists():
            return _bundle_cache[packages]
        _bundle_cache[packages] = _build_bundle(packages)
        return _bundle_cache[packages]


def _build_bundle(packages: tuple[str, ...]) -> tuple[Path, str]:
    files: list[tuple[str, Path]] = []
    for name in packages:
        root = _package_dir(name)
        for path in sorted(root.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".pyc", ".so",
                                                                             ".pyd"):
                continue
            files.append((f"{name}/{path.relative_to(root).as_posix()}", path))
    digest = hashlib.sha256()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for arcname, path in files:
            data = path.read_bytes()
            digest.update(arcname.encode() + b"\0" + data)
            z.writestr(arcname, data)
    h = digest.hexdigest()[:16]
    # a cache, not a temp file: one zip per content hash. Another controller process
    # (another checkout, a test run) may be shipping an older one right now, so only
    # bundles unused for a day are pruned.
    where = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "papycluster-controller"
    where.mkdir(parents=True, exist_ok=True)
    out = where / f"bundle-{h}.zip"
    for old in where.glob("bundle-*.zip"):
        try:
            if old != out and time.time() - old.stat().st_mtime > 86400:
                old.unlink()
        except OSError:
            pass
    try:
        os.utime(out)  # in use: keep it from the pruning above
    except FileNotFoundError:
        tmp = out.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, out)
    return out, h


def _shell(host: HostConfig, os_name: str | None) -> str:
    if host.shell:
        return host.shell
    return "cmd" if (os_name or host.os) == "windows" else "sh"


def _python_cmd(host: HostConfig, shell: str, *args: str) -> str:
    return ssh.quote_command([host.python, *args], shell)


def _via_file(shell: str) -> bool:
    """Whether scripts go through a file instead of stdin.

    Windows PowerShell does not reliably hand its stdin to a native program, so there a
    script is copied by SFTP into the home directory (private to the user) and run from
    there; it deletes itself first thing. sh and cmd pass stdin through unchanged.
    """
    return shell == "powershell"


_SELF_DELETE = "import os as _os, sys as _sys\n_os.remove(_sys.argv[0])\n"


def run_python(client: Any, host: HostConfig, shell: str, script: str,
               timeout: float) -> ssh.RunResult:
    """Run ``script`` with the host's Python: on stdin, or from a private file."""
    if not _via_file(shell):
        return ssh.run(client, _python_cmd(host, shell, "-"), script, timeout, host.name)
    name = f".papycluster-{secrets.token_hex(8)}.py"  # relative: the SFTP home dir
    try:
        sftp = client.open_sftp()
    except Exception as exc:
        raise HostError(host.name, "deploy failed", f"cannot open SFTP: {exc}")
    try:
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(timeout)
        with sftp.open(name, "w") as f:
            f.chmod(0o600)
            f.write((_SELF_DELETE + script).encode("utf-8"))
    except Exception as exc:
        raise HostError(host.name, "deploy failed", f"cannot write a script by SFTP: {exc}")
    finally:
        sftp.close()
    try:
        return ssh.run(client, _python_cmd(host, shell, name), None, timeout, host.name)
    finally:  # the script removes itself; if Python never ran, we do
        try:
            sftp = client.open_sftp()
            try:
                sftp.remove(name)
            finally:
                sftp.close()
        except Exception:
            pass


def _no_python(host: HostConfig, res: ssh.RunResult) -> bool:
    text = (res.stdout + res.stderr).lower()
    return res.code in (127, 9009) or any(s in text for s in (
        "not found", "no such file", "is not recognized", "cannot find"))


def _parse_version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"Python\s+(\d+)\.(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return tuple(int(g) for g in m.groups() if g is not None)


def probe(client: Any, host: HostConfig, shell: str, config: dict[str, Any],
          timeout: float) -> dict[str, Any]:
    """Run the probe script; turn every way it can fail into a named cause."""
    res = run_python(client, host, shell, render("probe", config), timeout)
    result = parse_result(res.stdout)
    if result is None:
        if _no_python(host, res):
            raise HostError(host.name, "no Python",
                            f"{host.python!r} is not there ({res.stderr.strip()[-300:]}); "
                            "install Python >= 3.9 or set python = \"/path/to/python3\"")
        ver = ssh.run(client, _python_cmd(host, shell, "--version"), None, timeout, host.name)
        version = _parse_version(ver.stdout + ver.stderr)
        if version is not None and version < MIN_PYTHON:
            raise HostError(host.name, "Python too old",
                            f"{host.python} is Python {'.'.join(map(str, version))}; "
                            f"papycluster needs >= {MIN_PYTHON[0]}.{MIN_PYTHON[1]}")
        raise HostError(host.name, "check failed",
                        f"the probe failed (exit {res.code}): {res.stderr.strip()[-500:]}")
    version = tuple(result["version"])
    if version < MIN_PYTHON:
        raise HostError(host.name, "Python too old",
                        f"{result.get('executable') or host.python} is Python "
                        f"{'.'.join(map(str, version))}; papycluster needs >= "
                        f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]}")
    if not result.get("tempdir_writable"):
        raise HostError(host.name, "check failed",
                        f"temp dir {result.get('tempdir')} is not writable: "
                        f"{result.get('tempdir_error')}")
    return result


def _run_script(client: Any, host: HostConfig, shell: str, name: str,
                config: dict[str, Any], timeout: float, cause: str) -> dict[str, Any]:
    res = run_python(client, host, shell, render(name, config), timeout)
    result = parse_result(res.stdout)
    if result is None:
        raise HostError(host.name, cause, f"{name} script failed (exit {res.code}): "
                        f"{res.stderr.strip()[-800:]}")
    return result


def start_host(config: ClusterConfig, host: HostConfig, secret: str,
               progress: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bring ``host`` up; return (its cluster-state entry, its agent's info)."""
    from papycluster.cluster.controller import _caps, _wait_agent

    target = ssh.resolve_target(config, host)
    timeout = config.connect_timeout
    progress(host.name, f"connecting to {target.hostname}:{target.port}")
    client = ssh.connect(target)
    try:
        # how this host reaches the controller (for transports served by local pipers)
        sock = client.get_transport().sock  # type: ignore[union-attr]
        try:
            controller_address = sock.getsockname()[0]
        except (AttributeError, OSError):
            controller_address = None
        shell = _shell(host, host.os)
        bundle, digest = build_bundle()
        cache_dir = host.cache_dir or DEFAULT_CACHE_DIR
        bundle_dir = f"{cache_dir}/{papycluster.__version__}-{digest}"
        progress(host.name, "checking Python, OS, temp dir, port")
        # the probe also names the run dir (temp dir and user are the host's own)
        info = probe(client, host, shell, {"bundle_dir": bundle_dir, "cluster": config.name,
                                           "name": host.name, "agent_port": host.agent_port},
                     timeout)
        os_name = "windows" if info["os"] == "windows" else info["os"]
        if tuple(info["version"][:2]) != sys.version_info[:2]:
            progress(host.name, f"warning: Python {info['version'][0]}.{info['version'][1]} "
                     f"there, {sys.version_info[0]}.{sys.version_info[1]} here: functions "
                     "shipped by value (lambdas, closures, __main__) need the same version; "
                     "set python = to a matching one")
        if host.os and host.os != "unix" and host.os != os_name:
            progress(host.name, f"warning: hosts file says os={host.os}, host reports {os_name}")
        shell = _shell(host, os_name)
        run_dir = info["run_dir"]
        if not info.get("port_free"):
            if not info.get("old_agent_pid"):  # a stale agent of ours is replaced by launch
                raise HostError(host.name, "check failed",
                                f"agent port {host.agent_port} is in use "
                                f"({info.get('port_error')}); set agent_port to a free port")
        if not info.get("bundle_present"):
            progress(host.name, f"shipping papycluster ({bundle.stat().st_size // 1024} KB)")
            abs_bundle_dir = info["bundle_dir"]
            # a unique name: hosts sharing a home directory (NFS) upload side by side
            archive = f"{abs_bundle_dir}.{host.name}-{secrets.token_hex(4)}.zip"
            _mkdirs(client, host, shell, os.path.dirname(archive.replace("\\", "/")), timeout)
            ssh.put_file(client, str(bundle), ssh.sftp_path(archive, os_name),
                         max(timeout, 60.0), host.name)
            res = _run_script(client, host, shell, "extract",
                              {"archive": archive, "target": abs_bundle_dir},
                              max(timeout, 60.0), "deploy failed")
            if not res.get("ok"):
                raise HostError(host.name, "deploy failed", str(res))
        else:
            progress(host.name, "papycluster already cached")
        progress(host.name, "starting agent")
        launch = _run_script(client, host, shell, "launch", {
            "name": host.name, "cluster": config.name, "run_dir": run_dir,
            "secret": secret, "bind": "0.0.0.0", "advertise": target.hostname,
            "port": host.agent_port, "profile": host.profile, "shares": host.shares,
            "workers": host.workers, "pythonpath": [info["bundle_dir"]],
            "timeout": config.start_timeout}, config.start_timeout + timeout, "agent failed")
        if not launch.get("ok"):
            raise HostError(host.name, launch.get("cause", "agent failed"),
                            launch.get("detail", ""))
    finally:
        client.close()
    progress(host.name, f"waiting for the agent on {target.hostname}:{launch['port']}")
    try:
        agent_info = _wait_agent(host.name, target.hostname, launch["port"], secret,
                                 config.start_timeout)
    except HostError as exc:
        # it runs but we cannot talk to it (a firewall?): do not leave it behind
        try:
            stop_host(config, host, config.name, launch["run_dir"], False, timeout)
            undone = "it was stopped again"
        except HostError as stop_exc:
            undone = f"stopping it failed too ({stop_exc.cause}: {stop_exc.detail})"
        if exc.cause == "version mismatch":  # it answers, but runs other code
            raise HostError(host.name, exc.cause, f"{exc.detail}; {undone}")
        raise HostError(host.name, "agent failed",
                        f"the agent started (pid {launch['pid']}) but does not answer on "
                        f"{target.hostname}:{launch['port']} from here (a firewall?); "
                        f"{undone}. {exc.detail}")
    progress(host.name, f"up: {agent_info['os']}, Python {agent_info['python']}, "
                        f"pid {launch['pid']}")
    entry = {
        "address": host.address, "connect": target.hostname, "agent_port": launch["port"],
        "pid": launch["pid"], "run_dir": launch["run_dir"], "local": False,
        "os": agent_info["os"], "profile": host.profile, "workers": host.workers,
        "shares": host.shares, "python": agent_info["python"], "python_cmd": host.python,
        "ssh": {"user": host.user, "port": host.port, "key": host.key, "shell": host.shell,
                "cache_dir": host.cache_dir},
        "caps": _caps(agent_info), "controller_address": controller_address}
    return entry, agent_info


def _mkdirs(client: Any, host: HostConfig, shell: str, path: str, timeout: float) -> None:
    script = ("import os,json\n"
              f"os.makedirs({path!r}, exist_ok=True)\n"
              "print('PAPYCLUSTER-RESULT ' + json.dumps({'ok': True}))\n")
    res = run_python(client, host, shell, script, timeout)
    if parse_result(res.stdout) is None:
        raise HostError(host.name, "deploy failed", f"cannot create {path}: {res.stderr}")


def stop_host(config: ClusterConfig | None, host: HostConfig, cluster: str,
              run_dir: str | None, purge_cache: bool, timeout: float,
              wait_exit: float = 0.0) -> dict[str, Any]:
    """Sweep ``host``: kill any agent of ``cluster`` and remove its run directories."""
    target = ssh.resolve_target(config, host)
    client = ssh.connect(target)
    try:
        shell = _shell(host, host.os)
        return _run_script(client, host, shell, "stop", {
            "cluster": cluster, "run_dirs": [run_dir] if run_dir else [], "scan": True,
            "grace": 5.0, "wait_exit": wait_exit, "purge_cache": purge_cache,
            "cache_dir": host.cache_dir or DEFAULT_CACHE_DIR}, timeout, "check failed")
    finally:
        client.close()
