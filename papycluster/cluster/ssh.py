"""A thin, fabric-like layer over paramiko: connect, run a script.

What it adds to paramiko is what ``up`` needs: OpenSSH client config, the SSH agent and
known_hosts honoured as ``ssh`` would; one bounded timeout for every wait; and every
failure turned into a :class:`HostError` with a fixed cause word (``unreachable``,
``refused``, ``auth failed``, ``host key mismatch``, ``unknown host key``, ``key file not
found``, ``timeout``).

Scripts are run as ``<python> -`` with the script on stdin, so the remote shell (sh,
cmd or PowerShell) only ever parses a program path and one dash (PowerShell, whose stdin
is unreliable, gets a private file by SFTP instead). :class:`Connection` is the one
object for one host: ``with Connection(target) as c: c.run_python(...)``, with one SFTP
session kept for its copies and lookups.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import secrets
import select
import shlex
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from papycluster.cluster.errors import HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig

# paramiko logs each failed handshake with a traceback from its own thread; every such
# failure is reported here as a HostError with its cause, so keep the traceback out of
# the user's terminal (a configured logging setup still receives it)
logging.getLogger("paramiko").addHandler(logging.NullHandler())


@dataclass
class SSHTarget:
    """Where and how to log in, after ``~/.ssh/config`` filled the gaps."""

    name: str
    hostname: str
    port: int
    user: str | None
    key_files: list[str]
    proxy_command: str | None
    known_hosts: str
    host_key_policy: str
    timeout: float


def resolve_target(config: ClusterConfig | None, host: HostConfig) -> SSHTarget:
    """Merge the hosts file with the OpenSSH client config (the hosts file wins)."""
    ssh_config_path = Path(os.path.expanduser(config.ssh_config if config else
                                              "~/.ssh/config"))
    looked: dict = {}
    if ssh_config_path.is_file():
        try:
            looked = paramiko.SSHConfig.from_path(str(ssh_config_path)).lookup(host.address)
        except Exception as exc:
            raise HostError(host.name, "check failed", f"cannot read {ssh_config_path}: {exc}")
    if host.key:
        key_files = [os.path.expanduser(host.key)]
        if not os.path.isfile(key_files[0]):
            raise HostError(host.name, "key file not found",
                            f"{key_files[0]} (key = {host.key!r} in "
                            f"{config.path if config else 'the hosts file'}) does not exist; "
                            "fix the path or leave key out to use the SSH agent and ~/.ssh")
    else:  # as OpenSSH, skip IdentityFile entries that do not exist
        key_files = [k for k in (os.path.expanduser(k) for k in looked.get("identityfile", []))
                     if os.path.isfile(k)]
    known = os.path.expanduser(config.known_hosts if config else "~/.ssh/known_hosts")
    if "userknownhostsfile" in looked and not (config and config.known_hosts !=
                                               "~/.ssh/known_hosts"):
        known = os.path.expanduser(looked["userknownhostsfile"].split()[0])
    hostname = looked.get("hostname", host.address)
    port = int(host.port or looked.get("port", 22))
    proxy = looked.get("proxycommand")
    if not proxy and looked.get("proxyjump", "none").lower() != "none":
        # paramiko has no ProxyJump: let the OpenSSH client open the hop (-W)
        proxy = f"ssh -W {shlex.quote(hostname)}:{port} {shlex.quote(looked['proxyjump'])}"
    return SSHTarget(
        name=host.name,
        hostname=hostname,
        port=port,
        user=host.user or looked.get("user"),
        key_files=key_files,
        proxy_command=proxy,
        known_hosts=known,
        host_key_policy=config.host_key_policy if config else "strict",
        timeout=config.connect_timeout if config else 10.0,
    )


def _socket_cause(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, socket.gaierror):
        return "unreachable", f"name does not resolve ({exc.strerror or exc})"
    if isinstance(exc, ConnectionRefusedError) or getattr(exc, "errno", None) == \
            errno.ECONNREFUSED:
        return "refused", "connection refused (no SSH server on that port?)"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "unreachable", "connection timed out"
    if getattr(exc, "errno", None) in (errno.ENETUNREACH, errno.EHOSTUNREACH,
                                       errno.EHOSTDOWN):
        return "unreachable", exc.strerror or str(exc)  # type: ignore[union-attr]
    return "unreachable", str(exc) or type(exc).__name__


def connect(target: SSHTarget) -> paramiko.SSHClient:
    """An authenticated SSH connection, or a HostError naming the cause."""
    client = paramiko.SSHClient()
    if os.path.exists(target.known_hosts):
        try:
            client.load_host_keys(target.known_hosts)
        except Exception as exc:
            raise HostError(target.name, "check failed",
                            f"cannot read known_hosts {target.known_hosts}: {exc}")
    elif target.host_key_policy == "accept-new":
        Path(target.known_hosts).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        Path(target.known_hosts).touch(mode=0o600)
        client.load_host_keys(target.known_hosts)
    client.set_missing_host_key_policy(
        paramiko.AutoAddPolicy() if target.host_key_policy == "accept-new"
        else paramiko.RejectPolicy())
    where = f"{target.user + '@' if target.user else ''}{target.hostname}:{target.port}"
    sock = None
    if target.proxy_command:
        sock = paramiko.ProxyCommand(target.proxy_command)
    kwargs = dict(hostname=target.hostname, port=target.port, username=target.user,
                  timeout=target.timeout, banner_timeout=target.timeout,
                  auth_timeout=target.timeout, channel_timeout=target.timeout,
                  allow_agent=True, look_for_keys=not target.key_files, sock=sock)
    if target.key_files:
        kwargs["key_filename"] = target.key_files
    try:
        client.connect(**kwargs)
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise HostError(target.name, "host key mismatch",
                        f"{where} offered a {exc.key.get_name()} key that differs from "
                        f"{target.known_hosts}; if the host was reinstalled, remove its line "
                        f"(ssh-keygen -R '[{target.hostname}]:{target.port}')")
    except paramiko.AuthenticationException as exc:
        client.close()
        raise HostError(target.name, "auth failed",
                        f"{where} refused our keys ({exc}); check user, key and the "
                        "SSH agent")
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        client.close()
        first = next(iter(exc.errors.values()), exc)
        cause, detail = _socket_cause(first)
        raise HostError(target.name, cause, f"{where}: {detail}")
    except paramiko.SSHException as exc:
        client.close()
        text = str(exc)
        if "not found in known_hosts" in text:
            raise HostError(target.name, "unknown host key",
                            f"{where} is not in {target.known_hosts}; add it with "
                            f"ssh-keyscan -p {target.port} {target.hostname} >> "
                            f"{target.known_hosts}, or set host_key_policy = \"accept-new\"")
        if "no authentication methods" in text.lower():
            raise HostError(target.name, "auth failed",
                            f"{where}: no key to offer; set key = \"~/.ssh/id_ed25519\", "
                            "load a key into the SSH agent, or give IdentityFile in "
                            "~/.ssh/config")
        if "banner" in text.lower():
            raise HostError(target.name, "unreachable", f"{where}: no SSH banner ({text})")
        raise HostError(target.name, "unreachable", f"{where}: {text}")
    except FileNotFoundError as exc:  # a key file that went away since resolve_target
        client.close()
        raise HostError(target.name, "key file not found", f"{exc.filename or exc}")
    except OSError as exc:
        client.close()
        cause, detail = _socket_cause(exc)
        raise HostError(target.name, cause, f"{where}: {detail}")
    transport = client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
        # paramiko leaves Nagle on: a small message sent right behind another (a
        # script's end-of-file behind its text, the next channel's requests) then waits
        # for the peer's delayed ACK, 40 ms on Linux. Measured on the harness: a third
        # command on one connection took 48 ms with Nagle, 3.5 ms without.
        try:
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):  # a ProxyCommand is no TCP socket
            pass
    return client


def quote_command(argv: list[str], shell: str) -> str:
    """One command line for the remote login shell (``sh``, ``cmd`` or ``powershell``)."""
    if shell == "sh":
        out = []
        for a in argv:
            if a.startswith("~/"):
                out.append('"$HOME"/' + shlex.quote(a[2:]))
            else:
                out.append(shlex.quote(a))
        return " ".join(out)
    if shell == "powershell":
        quoted = ["'" + a.replace("'", "''") + "'" for a in argv]
        return "& " + " ".join(quoted)
    # cmd.exe: double quotes around anything with spaces or specials
    out = []
    for a in argv:
        if a and not any(c in a for c in ' \t&|<>^()"%'):
            out.append(a)
        else:
            out.append('"' + a.replace('"', '""') + '"')
    return " ".join(out)


@dataclass
class RunResult:
    code: int
    stdout: str
    stderr: str


def run(client: paramiko.SSHClient, command: str, stdin: str | None, timeout: float,
        host: str = "?") -> RunResult:
    """Run ``command``, feed ``stdin``, collect output; never wait past ``timeout``."""
    transport = client.get_transport()
    if transport is None or not transport.is_active():
        raise HostError(host, "unreachable", "the SSH connection is closed")
    try:
        chan = transport.open_session(timeout=timeout)
    except Exception as exc:
        raise HostError(host, "unreachable", f"cannot open an SSH channel: {exc}")
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    try:
        # a script may carry the bundle (a megabyte): its sending is bounded by the
        # whole timeout, not by the one-second slices of the reads below
        chan.settimeout(timeout)
        chan.exec_command(command)
        if stdin is not None:
            try:
                chan.sendall(stdin.encode("utf-8"))
            except TimeoutError:
                raise HostError(host, "timeout", f"{command!r} did not read its input in "
                                f"{timeout:g} s")
        chan.shutdown_write()
        chan.settimeout(1.0)
        while True:
            if time.monotonic() > deadline:
                raise HostError(host, "timeout",
                                f"{command!r} did not finish in {timeout:g} s; "
                                f"output so far: {out.decode(errors='replace')[-500:]}"
                                f"{err.decode(errors='replace')[-500:]}")
            progressed = False
            if chan.recv_ready():
                out += chan.recv(65536)
                progressed = True
            if chan.recv_stderr_ready():
                err += chan.recv_stderr(65536)
                progressed = True
            if chan.exit_status_ready() and not chan.recv_ready() and \
                    not chan.recv_stderr_ready():
                break
            if not progressed:
                _wait_channel(chan, min(0.1, max(0.0, deadline - time.monotonic())))
        code = chan.recv_exit_status()
    finally:
        chan.close()
    return RunResult(code, out.decode("utf-8", errors="replace"),
                     err.decode("utf-8", errors="replace"))


def _wait_channel(chan: paramiko.Channel, timeout: float) -> None:
    """Sleep until ``chan`` has output, its exit status, or ``timeout`` passes.

    Woken by the data itself rather than a fixed poll, so a short script's result is
    read the moment it arrives. The channel's pipe wakes ``select`` for stdout, stderr
    and end-of-file; after end-of-file it stays readable, so from then on only the exit
    status is waited for.
    """
    if chan.eof_received:
        chan.status_event.wait(timeout)
    else:
        select.select([chan], [], [], timeout)


def sftp_path(path: str, os_name: str) -> str:
    """The SFTP server's spelling of a local path (``C:\\x`` is ``/C:/x`` on Windows)."""
    if os_name == "windows":
        p = path.replace("\\", "/")
        if len(p) > 1 and p[1] == ":":
            p = "/" + p
        return p
    return path


def sftp_spelling(path: str) -> str | None:
    """How the SFTP server spells the host's ``path``, or None if only Python can say.

    SFTP starts in the home directory, so ``~/x`` is ``x``; ``~user`` and environment
    variables mean nothing to it.
    """
    if path == "~" or path.startswith(("~/", "~\\")):
        return path[2:].replace("\\", "/")
    if path.startswith("~") or "%" in path or "$" in path:
        return None
    if re.match(r"^[A-Za-z]:[\\/]", path):
        return sftp_path(path, "windows")
    return None if "\\" in path else path


def login_shell(host: HostConfig, os_name: str | None) -> str:
    """The host's login shell: the hosts file's ``shell``, else ``cmd`` on Windows,
    ``sh`` elsewhere."""
    if host.shell:
        return host.shell
    return "cmd" if (os_name or host.os) == "windows" else "sh"


def via_file(shell: str) -> bool:
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
    if not via_file(shell):
        return quote_command([host.python, "-"], shell), None
    return quote_command([host.python, name], shell), _SELF_DELETE + script


class Connection:
    """One SSH connection to one host, and what ``up`` and ``down`` do over it.

    ``with Connection(target) as c:`` connects (a HostError with its cause word if it
    cannot) and closes on the way out. Its SFTP session is opened on first use and
    kept (fabric's ``Connection.sftp`` does the same): a host's visit stays one SSH
    connection and one SFTP session, whatever it copies or looks up. Every wait is
    bounded by the timeout given to the call.
    """

    def __init__(self, target: SSHTarget) -> None:
        self.target = target
        self.name = target.name
        self.client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None

    def __enter__(self) -> Connection:
        self.client = connect(self.target)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sftp is not None:
            try:
                self._sftp.close()
            except Exception:
                pass
            self._sftp = None
        if self.client is not None:
            self.client.close()
            self.client = None

    def local_address(self) -> str | None:
        """The controller's address as this host sees it (None through a proxy)."""
        transport = self.client.get_transport() if self.client else None
        try:
            return transport.sock.getsockname()[0]  # type: ignore[union-attr]
        except (AttributeError, OSError):
            return None

    def run(self, command: str, stdin: str | None, timeout: float) -> RunResult:
        """Run ``command`` with ``stdin``; see :func:`run`."""
        assert self.client is not None, "use the Connection in a with block"
        return run(self.client, command, stdin, timeout, self.name)

    def sftp(self, timeout: float) -> paramiko.SFTPClient:
        """The connection's SFTP session (opened once), each request bounded by
        ``timeout``. Raises what paramiko raises: the caller names the cause."""
        assert self.client is not None, "use the Connection in a with block"
        if self._sftp is None:
            self._sftp = self.client.open_sftp()
        channel = self._sftp.get_channel()
        if channel is not None:
            channel.settimeout(timeout)
        return self._sftp

    def run_python(self, host: HostConfig, shell: str, script: str,
                   timeout: float) -> RunResult:
        """Run ``script`` with the host's Python: on stdin, or from a private file."""
        name = f".papycluster-{secrets.token_hex(8)}.py"  # relative: the SFTP home dir
        command, file_text = script_command(host, shell, script, name)
        if file_text is None:
            return self.run(command, script, timeout)
        try:
            sftp = self.sftp(timeout)
        except Exception as exc:
            raise HostError(self.name, "deploy failed", f"cannot open SFTP: {exc}")
        try:
            with sftp.open(name, "w") as f:
                f.chmod(0o600)
                f.write(file_text.encode("utf-8"))
        except Exception as exc:
            raise HostError(self.name, "deploy failed",
                            f"cannot write a script by SFTP: {exc}")
        try:
            return self.run(command, None, timeout)
        finally:  # the script removes itself; if Python never ran, we do
            try:
                self.sftp(timeout).remove(name)
            except Exception:
                pass

    def exists(self, path: str, timeout: float) -> bool:
        """Whether ``path`` (SFTP's spelling) exists on the host."""
        try:
            self.sftp(timeout).stat(path)
            return True
        except FileNotFoundError:
            return False

    def makedirs(self, path: str, timeout: float, mode: int = 0o700) -> None:
        """``mkdir -p`` over SFTP (new directories 0700 by default: code runs from them)."""
        if path in ("", ".", "/") or re.match(r"^/[A-Za-z]:/?$", path):
            return
        if self.exists(path, timeout):
            return
        self.makedirs(posixpath.dirname(path.rstrip("/")), timeout, mode)
        try:
            self.sftp(timeout).mkdir(path, mode)
        except OSError:
            if not self.exists(path, timeout):  # else made meanwhile by another `up`
                raise

    def put_atomic(self, local: str, remote: str, timeout: float) -> None:
        """Copy ``local`` to ``remote`` under a name of our own, then rename it.

        Hosts that share a home directory (NFS) may ship at once, and a half-written
        file must never be where agents look. If the rename fails because another
        ``up`` put the file there first, that one is kept.
        """
        self.makedirs(posixpath.dirname(remote), timeout)
        sftp = self.sftp(timeout)
        tmp = f"{remote}.{self.name}-{secrets.token_hex(4)}.tmp"
        sftp.put(local, tmp)
        try:
            sftp.rename(tmp, remote)
        except OSError:
            sftp.remove(tmp)
            if not self.exists(remote, timeout):
                raise
