"""The SSH layer: one :class:`Connection` per host, over ``fabric.Connection``.

fabric gives the connection object (paramiko's client, its transport, one memoized
SFTP session) and ProxyJump as a *gateway*: the hop is an SSH connection of its own
and the target is reached through a ``direct-tcpip`` channel on it, so no OpenSSH
client binary is needed (a Windows controller may have none). What this module adds is
what ``up`` needs: the OpenSSH client config and the hosts file merged (the hosts file
wins), known_hosts honoured as ``ssh`` would (``strict`` or ``accept-new``, also for
each hop), agent forwarding off, one bounded timeout for every wait (connect, banner,
auth, each channel, each SFTP request), and every failure turned into a
:class:`HostError` with a fixed cause word (``unreachable``, ``refused``, ``auth
failed``, ``host key mismatch``, ``unknown host key``, ``key file not found``,
``timeout``). What the remote shell gets is in :mod:`papycluster.cluster.shell`.
"""

from __future__ import annotations

import errno
import logging
import os
import posixpath
import re
import secrets
import select
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko

if TYPE_CHECKING:
    import fabric

from papycluster.cluster.errors import HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig
from papycluster.cluster.shell import script_command

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
    #: ProxyJump: the hop through which this host is reached (it may have its own).
    jump: SSHTarget | None = None


def resolve_target(config: ClusterConfig | None, host: HostConfig,
                   jumps: bool = True) -> SSHTarget:
    """Merge the hosts file with the OpenSSH client config (the hosts file wins).

    ``jumps=False`` for a ProxyJump hop itself: its own ProxyJump is not followed (a
    ``Host *`` ProxyJump would otherwise jump through itself forever).
    """
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
    jump = None
    if jumps and not proxy and looked.get("proxyjump", "none").lower() != "none":
        jump = _jump_chain(config, host.name, looked["proxyjump"])
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
        jump=jump,
    )


_HOP = re.compile(r"^(?:ssh://)?(?:(?P<user>[^@]+)@)?(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:/]+))"
                  r"(?::(?P<port>\d+))?/?$")


def _jump_chain(config: ClusterConfig | None, name: str, spec: str) -> SSHTarget:
    """The hops of ``ProxyJump a,b`` as targets: ``b`` reached through ``a``.

    Each hop is looked up in the OpenSSH client config like a host (its HostName,
    User, Port, IdentityFile), and is checked against known_hosts like one.
    """
    previous: SSHTarget | None = None
    for hop in spec.split(","):
        m = _HOP.match(hop.strip())
        if m is None:
            raise HostError(name, "check failed", f"cannot read the ProxyJump hop {hop!r} "
                            f"(in {spec!r}); write it as [user@]host[:port]")
        hop_host = HostConfig(name=name, address=m["host"] or m["v6"], user=m["user"],
                              port=int(m["port"]) if m["port"] else None)
        target = resolve_target(config, hop_host, jumps=False)
        target.jump = previous
        previous = target
    assert previous is not None
    return previous


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


def _client(target: SSHTarget) -> paramiko.SSHClient:
    """A paramiko client that checks host keys as the hosts file says (fabric's own
    would accept any key)."""
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
    return client


def _where(target: SSHTarget) -> str:
    return f"{target.user + '@' if target.user else ''}{target.hostname}:{target.port}"


def fabric_connection(target: SSHTarget) -> fabric.Connection:
    """The ``fabric.Connection`` for ``target`` (not opened), its ProxyJump hops as
    gateways. fabric reads no configuration file of its own: ``target`` is already
    what the hosts file and the OpenSSH config say."""
    import fabric

    kwargs: dict[str, object] = dict(
        timeout=target.timeout, banner_timeout=target.timeout,
        auth_timeout=target.timeout, channel_timeout=target.timeout,
        allow_agent=True, look_for_keys=not target.key_files)
    if target.key_files:
        kwargs["key_filename"] = target.key_files
    gateway: object = False  # False: no gateway, and fabric looks for none itself
    if target.jump is not None:
        gateway = fabric_connection(target.jump)
    elif target.proxy_command:
        kwargs["sock"] = paramiko.ProxyCommand(target.proxy_command)
    conn = fabric.Connection(target.hostname, user=target.user, port=target.port,
                             config=fabric.Config(lazy=True), gateway=gateway,
                             forward_agent=False, connect_kwargs=kwargs)
    conn.client = _client(target)
    return conn


def open_connection(target: SSHTarget) -> fabric.Connection:
    """An authenticated ``fabric.Connection``, or a HostError naming the cause (a hop
    that fails is named as the jump host)."""
    conn = fabric_connection(target)
    hop = conn.gateway if target.jump is not None else None
    try:
        if hop is not None:
            _open(hop, target.jump, f" (jump host for {target.hostname}:{target.port})")
        _open(conn, target, "")
    except BaseException:
        close_connection(conn)
        raise
    transport = conn.client.get_transport()
    if transport is not None:
        transport.set_keepalive(15)
        # paramiko leaves Nagle on: a small message sent right behind another (a
        # script's end-of-file behind its text, the next channel's requests) then waits
        # for the peer's delayed ACK, 40 ms on Linux. Measured on the harness: a third
        # command on one connection took 48 ms with Nagle, 3.5 ms without.
        try:
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (AttributeError, OSError):  # a ProxyCommand or a hop's channel
            pass
    return conn


def close_connection(conn: fabric.Connection) -> None:
    """Close ``conn`` and its gateways (fabric leaves a gateway open)."""
    hop: object = conn
    while isinstance(hop, fabric_type()):
        for close in (hop.close, hop.client.close):  # a failed open leaves the client
            try:
                close()
            except Exception:
                pass
        hop = hop.gateway


def fabric_type() -> type:
    import fabric

    return fabric.Connection


def _open(conn: fabric.Connection, target: SSHTarget, role: str) -> None:
    """``conn.open()`` with every way it fails named (``role`` says which hop)."""
    where = _where(target) + role
    name = target.name
    try:
        if target.jump is not None:
            try:
                conn.gateway.open()
                sock = conn.open_gateway()
            except paramiko.ChannelException as exc:
                raise HostError(name, "unreachable",
                                f"{where}: the jump host {_where(target.jump)} cannot "
                                f"reach it ({exc.text or exc})")
            except (TimeoutError, paramiko.SSHException) as exc:
                raise HostError(name, "unreachable",
                                f"{where}: no channel through the jump host "
                                f"{_where(target.jump)} ({exc or type(exc).__name__})")
            conn.connect_kwargs["sock"] = sock
            conn.gateway, gateway = False, conn.gateway  # opened: fabric must not again
            try:
                conn.open()
            finally:
                conn.gateway = gateway
        else:
            conn.open()
    except HostError:
        raise
    except paramiko.BadHostKeyException as exc:
        raise HostError(name, "host key mismatch",
                        f"{where} offered a {exc.key.get_name()} key that differs from "
                        f"{target.known_hosts}; if the host was reinstalled, remove its line "
                        f"(ssh-keygen -R '[{target.hostname}]:{target.port}')")
    except paramiko.AuthenticationException as exc:
        raise HostError(name, "auth failed",
                        f"{where} refused our keys ({exc}); check user, key and the "
                        "SSH agent")
    except paramiko.ssh_exception.NoValidConnectionsError as exc:
        first = next(iter(exc.errors.values()), exc)
        cause, detail = _socket_cause(first)
        raise HostError(name, cause, f"{where}: {detail}")
    except paramiko.SSHException as exc:
        text = str(exc)
        if "not found in known_hosts" in text:
            raise HostError(name, "unknown host key",
                            f"{where} is not in {target.known_hosts}; add it with "
                            f"ssh-keyscan -p {target.port} {target.hostname} >> "
                            f"{target.known_hosts}, or set host_key_policy = \"accept-new\"")
        if "no authentication methods" in text.lower():
            raise HostError(name, "auth failed",
                            f"{where}: no key to offer; set key = \"~/.ssh/id_ed25519\", "
                            "load a key into the SSH agent, or give IdentityFile in "
                            "~/.ssh/config")
        if "banner" in text.lower():
            raise HostError(name, "unreachable", f"{where}: no SSH banner ({text})")
        raise HostError(name, "unreachable", f"{where}: {text}")
    except FileNotFoundError as exc:  # a key file that went away since resolve_target
        raise HostError(name, "key file not found", f"{exc.filename or exc}")
    except OSError as exc:
        cause, detail = _socket_cause(exc)
        raise HostError(name, cause, f"{where}: {detail}")


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
        self.fabric: fabric.Connection | None = None

    def open(self) -> Connection:
        """Connect and authenticate (HostError naming the cause); ``close`` ends it.
        ``with Connection(target) as conn:`` does both."""
        self.fabric = open_connection(self.target)
        return self

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def client(self) -> paramiko.SSHClient | None:
        return self.fabric.client if self.fabric is not None else None

    def close(self) -> None:
        if self.fabric is not None:
            close_connection(self.fabric)
            self.fabric = None

    def local_address(self) -> str | None:
        """The controller's address as this host sees it (None through a proxy)."""
        if self.target.jump is not None or self.target.proxy_command:
            return None  # the local end of a hop's channel says nothing to this host
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
        assert self.fabric is not None, "use the Connection in a with block"
        sftp = self.fabric.sftp()  # opened once, then the same session
        channel = sftp.get_channel()
        if channel is not None:
            channel.settimeout(timeout)
        return sftp

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
