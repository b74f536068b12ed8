"""The cluster state: what ``up`` started, so that ``status``, ``down`` and remote pools
find it again.

It holds the cluster secret, so it is written 0600 (in a 0700 directory) and replaced
atomically. Its place is ``$PAPYCLUSTER_STATE`` or ``~/.papycluster/state.json``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papycluster.cluster.auth import write_secret_file
from papycluster.cluster.errors import ClusterError

STATE_ENV = "PAPYCLUSTER_STATE"
#: The state file's layout. A file without ``version`` was written before it had one
#: (the same keys); a newer one is refused with a message rather than half read.
STATE_VERSION = 1


def state_path() -> Path:
    value = os.environ.get(STATE_ENV)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".papycluster" / "state.json"


@dataclass
class SshSettings:
    """How ``down`` logs in again to a host that ``up`` reached over SSH (the hosts
    file's keys, so that ``down`` works without the file)."""

    user: str | None = None
    port: int | None = None
    key: str | None = None
    shell: str | None = None
    cache_dir: str | None = None


@dataclass
class HostEntry:
    """One host that ``up`` started an agent on: what ``status``, ``down``, remote
    pools and the transport negotiation need to find and use it again.

    ``address`` is the host as the hosts file names it, ``connect`` where the
    controller reaches its agent (on ``agent_port``); ``caps`` what the negotiation
    needs of it (``readiness.agent_caps``); ``controller_address`` how the host reaches
    the controller. ``ssh`` and ``python_cmd`` are set for hosts reached over SSH.
    In the state file it is a JSON object with these names as keys.
    """

    address: str
    connect: str
    agent_port: int
    pid: int | None = None
    run_dir: str | None = None
    local: bool = False
    os: str | None = None
    profile: str = "native"
    workers: int = 2
    shares: dict[str, str] = field(default_factory=dict)
    python: str | None = None
    caps: dict[str, Any] = field(default_factory=dict)
    controller_address: str | None = None
    python_cmd: str | None = None
    ssh: SshSettings | None = None
    #: The hosts file's groups of this host (every host is also in "all").
    groups: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        if self.python_cmd is None:
            del data["python_cmd"]  # as before there was a type: local entries lack it
        if not self.groups:
            del data["groups"]  # a host in no group but "all" is written as before
        return data

    @classmethod
    def from_dict(cls, name: str, data: Any, where: str = "the cluster state"
                  ) -> HostEntry:
        """An entry from its JSON object; a missing or mistyped key names the host."""
        if not isinstance(data, dict):
            raise ClusterError(f"{where}: host {name!r} is not a JSON object; run "
                               "`papycluster down -f HOSTS` to clean up, then `up` again")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        missing = [k for k in ("address", "connect", "agent_port") if k not in values]
        if missing:
            raise ClusterError(f"{where}: host {name!r} lacks {', '.join(missing)}; run "
                               "`papycluster down -f HOSTS` to clean up, then `up` again")
        try:
            values["agent_port"] = int(values["agent_port"])
            if values.get("pid") is not None:
                values["pid"] = int(values["pid"])
            ssh = values.get("ssh")
            values["ssh"] = SshSettings(**ssh) if isinstance(ssh, dict) else None
            values["caps"] = dict(values.get("caps") or {})
            values["shares"] = dict(values.get("shares") or {})
            values["workers"] = int(values.get("workers") or 1)
            values["groups"] = [str(g) for g in values.get("groups") or []]
            return cls(**values)
        except (TypeError, ValueError) as exc:
            raise ClusterError(f"{where}: host {name!r} has a bad entry ({exc}); run "
                               "`papycluster down -f HOSTS` to clean up, then `up` again")


@dataclass
class ClusterState:
    """What ``up`` started: the cluster's name and secret, and ``hosts``, a host name ->
    :class:`HostEntry` (plain dicts given here are read as entries)."""

    cluster: str
    secret: str
    hosts: dict[str, HostEntry] = field(default_factory=dict)
    hosts_file: str | None = None
    created: float = field(default_factory=time.time)
    #: the hosts file's [cluster] SSH settings, so that ``down`` works without the file
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hosts = {name: entry if isinstance(entry, HostEntry)
                      else HostEntry.from_dict(name, entry)
                      for name, entry in self.hosts.items()}

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, "cluster": self.cluster,
                           "secret": self.secret,
                           "hosts_file": self.hosts_file, "created": self.created,
                           "hosts": {n: e.to_dict() for n, e in self.hosts.items()},
                           "options": self.options}, indent=2)


def save_state(state: ClusterState, path: Path | None = None) -> Path:
    path = path or state_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "fchmod"):  # not on Windows before Python 3.13 (the file is
            os.fchmod(fd, 0o600)   # private there by the user profile's ACL)
        os.write(fd, state.to_json().encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    # the bare secret too, for processes of the controller that read
    # PAPYCLUSTER_SECRET_FILE (the tcp/udp transports of local pipers)
    write_secret_file(str(secret_path(path)), state.secret)
    return path


def secret_path(path: Path | None = None) -> Path:
    path = path or state_path()
    return path.with_name(path.name + ".secret")


def load_state(path: Path | None = None, missing_ok: bool = False) -> ClusterState | None:
    path = path or state_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ClusterError(f"no cluster is up (no state file {path}); run `papycluster up`")
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cluster state {path} is unreadable ({exc}); run "
                           "`papycluster down -f HOSTS` to clean up, then `up` again")
    fix = "run `papycluster down -f HOSTS` to clean up, then `up` again"
    if not isinstance(data, dict) or not isinstance(data.get("hosts"), dict) or \
            "cluster" not in data or "secret" not in data:
        raise ClusterError(f"cluster state {path} is not a papycluster state file; {fix}")
    version = data.get("version", STATE_VERSION)
    if not isinstance(version, int) or version > STATE_VERSION:
        raise ClusterError(f"cluster state {path} has version {version!r}, written by a "
                           f"newer papycluster (this one reads up to {STATE_VERSION}); "
                           "use that one, or remove the file and sweep with "
                           "`papycluster down -f HOSTS`")
    hosts = {name: HostEntry.from_dict(name, entry, f"cluster state {path}")
             for name, entry in data["hosts"].items()}
    return ClusterState(cluster=data["cluster"], secret=data["secret"], hosts=hosts,
                        hosts_file=data.get("hosts_file"), created=data.get("created", 0.0),
                        options=data.get("options", {}))


def remove_state(path: Path | None = None) -> None:
    path = path or state_path()
    for p in (path, secret_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
