"""Bringing one host up (and down) over SSH.

A bare host has Python >= 3.9 and sshd, maybe no pip and no network. So the controller
ships a zip of papycluster and the pure-Python packages the agent needs, taken from its
own installation; the host caches it as ``<cache_dir>/<version>-<hash>.zip`` and the
next ``up`` reuses it. The agent imports straight from the zip (zipimport), which holds
code compiled for the controller's Python beside the sources: nothing is unpacked, and
a host with the controller's Python compiles nothing (another Python compiles the
sources, as usual). Each step is bounded in time and fails with a named cause:

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
import hashlib
import importlib.util
import io
import marshal
import os
import posixpath
import re
import secrets
import sys
import threading
import time
import warnings
import zipfile
from pathlib import Path
from typing import Any

import papycluster
from papycluster.cluster import readiness, ssh
from papycluster.cluster.errors import HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig
from papycluster.cluster.remote import parse_result, render

MIN_PYTHON = (3, 9)
#: Packages the agent and its workers import; all pure Python.
BUNDLE_PACKAGES = ("papycluster", "rpyc", "cloudpickle")
#: Pure-Python packages shipped too when the controller has them (PyMySQL: the mysql
#: transport). Not plumbum: rpyc wants it only for its command-line tools and SSH
#: tunnels, which an agent never uses, and it was a third of the bundle.
OPTIONAL_PACKAGES = ("pymysql",)
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

    The hash covers every file's path and bytes and this Python's version tag (the
    compiled code inside is for it), so an edited papycluster is shipped again while an
    unchanged one is reused from the host's cache.
    """
    packages = packages or bundle_packages()
    with _bundle_lock:
        if packages in _bundle_cache and _bundle_cache[packages][0].exists():
            return _bundle_cache[packages]
        _bundle_cache[packages] = _build_bundle(packages)
        return _bundle_cache[packages]


def _compiled(arcname: str, source: bytes) -> bytes | None:
    """``source`` as a .pyc for this Python, to sit beside it in the bundle.

    zipimport loads ``x.pyc`` next to ``x.py`` when its magic number matches the host's
    Python, so a host with the controller's version compiles nothing (the agent, its
    forkserver and each worker process would otherwise compile every module they import:
    a zip has no ``__pycache__``). Another version ignores it and compiles the source.
    Hash-based and unchecked (PEP 552): zip entries carry no useful mtime, and the zip
    is named by the hash of its sources, so source and code cannot disagree. The code's
    file name is the path inside the bundle (``papycluster/engine/process.py``), which
    remote tracebacks show.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a package's SyntaxWarnings are not ours
            code = compile(source, arcname, "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None  # shipped as source only; the host reports it if it is imported
    return (importlib.util.MAGIC_NUMBER + (0b01).to_bytes(4, "little")
            + importlib.util.source_hash(source) + marshal.dumps(code))


def _build_bundle(packages: tuple[str, ...]) -> tuple[Path, str]:
    files: list[tuple[str, bytes]] = []
    for name in packages:
        root = _package_dir(name)
        for path in sorted(root.rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".pyc", ".so",
                                                                             ".pyd"):
                continue
            files.append((f"{name}/{path.relative_to(root).as_posix()}", path.read_bytes()))
    digest = hashlib.sha256(sys.implementation.cache_tag.encode() + b"\0")
    for arcname, data in files:
        digest.update(arcname.encode() + b"\0" + data)
    h = digest.hexdigest()[:16]
    # a cache, not a temp file: one zip per content hash (so an unchanged papycluster
    # is not compiled again by every `papycluster up`). Another controller process
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
        buf = io.BytesIO()
        # the strongest deflate: built once per content, unpacked as fast as any
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
            for arcname, data in files:
                z.writestr(arcname, data)
                if arcname.endswith(".py"):
                    pyc = _compiled(arcname, data)
                    if pyc is not None:
                        z.writestr(arcname + "c", pyc)
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


def script_command(host: HostConfig, shell: str, script: str, name: str
                   ) -> tuple[str, str | None]:
    """What runs ``script`` on the host: (the command line, the text of the file
    ``name`` to copy first, or None when the script goes on stdin).

    Pure text, so that the PowerShell path, which no test machine can run (PowerShell
    is not in Debian), is checked as text against golden files.
    """
    if not _via_file(shell):
        return _python_cmd(host, shell, "-"), None
    return _python_cmd(host, shell, name), _SELF_DELETE + script


def run_python(client: Any, host: HostConfig, shell: str, script: str,
               timeout: float) -> ssh.RunResult:
    """Run ``script`` with the host's Python: on stdin, or from a private file."""
    name = f".papycluster-{secrets.token_hex(8)}.py"  # relative: the SFTP home dir
    command, file_text = script_command(host, shell, script, name)
    if file_text is None:
        return ssh.run(client, command, script, timeout, host.name)
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
            f.write(file_text.encode("utf-8"))
    except Exception as exc:
        raise HostError(host.name, "deploy failed", f"cannot write a script by SFTP: {exc}")
    finally:
        sftp.close()
    try:
        return ssh.run(client, command, None, timeout, host.name)
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


def launch(client: Any, host: HostConfig, shell: str, config: dict[str, Any],
           timeout: float, cause: str = "check failed", script: str = "launch"
           ) -> dict[str, Any]:
    """Run the launch script (with its probe), or another remote ``script`` of the
    same shape (preflight); turn every way it fails into a named cause.

    Returns the script's result: ``probe`` (what the host has), and either the agent's
    ``pid``/``port``/``run_dir``, or ``need_bundle``, or the launch's own failure. A
    script that prints no result fails with ``cause`` unless Python is missing or old.
    """
    res = run_python(client, host, shell, render(script, config), timeout)
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


def _run_script(client: Any, host: HostConfig, shell: str, name: str,
                config: dict[str, Any], timeout: float, cause: str) -> dict[str, Any]:
    res = run_python(client, host, shell, render(name, config), timeout)
    result = parse_result(res.stdout)
    if result is None:
        raise HostError(host.name, cause, f"{name} script failed (exit {res.code}): "
                        f"{res.stderr.strip()[-800:]}")
    return result


def _sftp_spelling(path: str) -> str | None:
    """How the SFTP server spells the host's ``path``, or None if only Python can say.

    SFTP starts in the home directory, so ``~/x`` is ``x``; ``~user`` and environment
    variables mean nothing to it.
    """
    if path == "~" or path.startswith(("~/", "~\\")):
        return path[2:].replace("\\", "/")
    if path.startswith("~") or "%" in path or "$" in path:
        return None
    if re.match(r"^[A-Za-z]:[\\/]", path):
        return ssh.sftp_path(path, "windows")
    return None if "\\" in path else path


def _ship(client: Any, host: HostConfig, bundle: Path, path: str, timeout: float,
          progress: Any) -> bool:
    """Copy the bundle to ``path`` on the host by SFTP, unless it is already there.

    One SFTP session looks and, for a bare host, copies: cheaper on the host than
    unpacking, and than a Python start to look. Returns False when SFTP cannot tell
    (no SFTP, a path only Python can expand); then the launch script looks, and asks
    for the bundle inside itself if it is missing. A copy that fails is a deploy failure.
    """
    where = _sftp_spelling(path)
    if where is None:
        return False
    try:
        sftp = client.open_sftp()
    except Exception:
        return False
    try:
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(timeout)
        try:
            sftp.stat(where)
            progress(host.name, "papycluster already cached")
            return True
        except FileNotFoundError:
            pass
        except Exception:
            return False
        progress(host.name, f"shipping papycluster ({bundle.stat().st_size // 1024} KB)")
        try:
            _sftp_makedirs(sftp, posixpath.dirname(where))
            # a name of our own, then a rename: hosts that share a home directory (NFS)
            # may ship at once, and a half-written zip must never be where agents look
            tmp = f"{where}.{host.name}-{secrets.token_hex(4)}.tmp"
            sftp.put(str(bundle), tmp)
            try:
                sftp.rename(tmp, where)
            except OSError as exc:
                sftp.remove(tmp)
                if not _sftp_exists(sftp, where):  # else another `up` was first
                    raise exc
        except Exception as exc:
            raise HostError(host.name, "deploy failed",
                            f"cannot copy the bundle to {path} by SFTP: {exc}")
        return True
    finally:
        sftp.close()


def _ship_packages(client: Any, host: HostConfig, shell: str, cache_dir: str,
                   timeout: float, progress: Any) -> dict[str, Any]:
    """The hosts file's ``packages`` for ``host``: wheels downloaded here for its
    platform and Python, shipped by SFTP unless cached there (see cluster.packages)."""
    from papycluster.cluster import packages

    info = _run_script(client, host, shell, "platform_tags", {}, timeout, "check failed")
    progress(host.name, f"packages {', '.join(host.packages)} for {packages.describe(info)}")
    wheels = packages.download(host.name, host.packages, info)
    site = packages.plan(cache_dir, wheels)
    try:
        sftp = client.open_sftp()
    except Exception as exc:
        raise HostError(host.name, "packages failed", f"packages are shipped by SFTP, "
                        f"which this host does not offer: {exc}")
    try:
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(max(timeout, 60.0))
        for remote, local in site["wheels"].items():
            where = _sftp_spelling(remote)
            if where is None:
                raise HostError(host.name, "packages failed",
                                f"SFTP cannot spell the cache_dir {cache_dir!r}: use a "
                                "path under ~ or an absolute one")
            if _sftp_exists(sftp, where):
                continue
            progress(host.name, f"shipping {Path(local).name} "
                                f"({Path(local).stat().st_size // 1024} KB)")
            _sftp_makedirs(sftp, posixpath.dirname(where))
            tmp = f"{where}.{host.name}-{secrets.token_hex(4)}.tmp"
            sftp.put(local, tmp)
            try:
                sftp.rename(tmp, where)
            except OSError:
                sftp.remove(tmp)
                if not _sftp_exists(sftp, where):
                    raise
    except HostError:
        raise
    except Exception as exc:
        raise HostError(host.name, "packages failed", f"cannot copy the wheels to "
                        f"{cache_dir}/wheels by SFTP: {exc}")
    finally:
        sftp.close()
    return site


def _sftp_makedirs(sftp: Any, path: str) -> None:
    """``mkdir -p`` over SFTP (new directories 0700: code is run from them)."""
    if path in ("", ".", "/") or re.match(r"^/[A-Za-z]:/?$", path):
        return
    if _sftp_exists(sftp, path):
        return
    _sftp_makedirs(sftp, posixpath.dirname(path.rstrip("/")))
    try:
        sftp.mkdir(path, 0o700)
    except OSError as exc:
        if not _sftp_exists(sftp, path):  # else made meanwhile by another `up`
            raise exc


def _sftp_exists(sftp: Any, path: str) -> bool:
    try:
        sftp.stat(path)
        return True
    except FileNotFoundError:
        return False


def start_host(config: ClusterConfig, host: HostConfig, secret: str,
               progress: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Bring ``host`` up; return (its cluster-state entry, its agent's info)."""

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
        # before the OS is known: sh and cmd both run `python -` as written, and
        # PowerShell (which needs a file) is only ever chosen in the hosts file
        shell = _shell(host, host.os)
        bundle, digest = build_bundle()
        cache_dir = host.cache_dir or DEFAULT_CACHE_DIR
        bundle_path = f"{cache_dir}/{papycluster.__version__}-{digest}.zip"
        _ship(client, host, bundle, bundle_path, max(timeout, 60.0), progress)
        site = None
        if host.packages:
            site = _ship_packages(client, host, shell, cache_dir, timeout, progress)
        script = {
            "name": host.name, "cluster": config.name, "run_dir": "",
            "secret": secret, "bind": host.bind or target.hostname,
            "advertise": target.hostname,
            "port": host.agent_port, "profile": host.profile, "shares": host.shares,
            "workers": host.workers, "timeout": config.start_timeout,
            "pythonpath": [bundle_path] + ([site["dir"]] if site else []),
            "site": site and {"dir": site["dir"], "wheels": list(site["wheels"]),
                              "names": site["names"]},
            "check": {"bundle": bundle_path, "min_python": list(MIN_PYTHON),
                      "agent_port": host.agent_port,
                      "cache_tag": sys.implementation.cache_tag}}
        progress(host.name, "checking Python, OS, temp dir, port; starting agent")
        launched = launch(client, host, shell, script, config.start_timeout + timeout)
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
            launched = launch(client, host, _shell(host, os_name), script,
                              config.start_timeout + max(timeout, 60.0), "deploy failed")
            if launched.get("need_bundle"):
                raise HostError(host.name, "deploy failed",
                                f"the bundle was sent but is not at {info['bundle']}")
        if not launched.get("ok"):
            raise HostError(host.name, launched.get("cause", "check failed"),
                            launched.get("detail", str(launched)))
    finally:
        client.close()
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
    entry = {
        "address": host.address, "connect": target.hostname, "agent_port": launched["port"],
        "pid": launched["pid"], "run_dir": launched["run_dir"], "local": False,
        "os": agent_info["os"], "profile": host.profile, "workers": host.workers,
        "shares": host.shares, "python": agent_info["python"], "python_cmd": host.python,
        "ssh": {"user": host.user, "port": host.port, "key": host.key, "shell": host.shell,
                "cache_dir": host.cache_dir},
        "caps": readiness.agent_caps(agent_info), "controller_address": controller_address}
    return entry, agent_info


def stop_host(config: ClusterConfig | None, host: HostConfig, cluster: str,
              run_dir: str | None, purge_cache: bool, timeout: float,
              wait_exit: float = 0.0, asked: dict[str, int] | None = None
              ) -> dict[str, Any]:
    """Sweep ``host``: kill any agent of ``cluster`` and remove its run directories.

    ``asked`` maps a run dir to the pid of an agent that was just asked to shut down:
    it is waited for (``wait_exit`` seconds), with its children, never killed by that pid.
    """
    target = ssh.resolve_target(config, host)
    client = ssh.connect(target)
    try:
        shell = _shell(host, host.os)
        return _run_script(client, host, shell, "stop", {
            "cluster": cluster, "run_dirs": [run_dir] if run_dir else [], "scan": True,
            "grace": 5.0, "wait_exit": wait_exit, "asked": asked or {},
            "purge_cache": purge_cache,
            "cache_dir": host.cache_dir or DEFAULT_CACHE_DIR}, timeout, "check failed")
    finally:
        client.close()
