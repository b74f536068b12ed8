"""The cluster state: what ``up`` started, so that ``status``, ``down`` and remote pools
find it again.

It holds the cluster secret, so it is written 0600 (in a 0700 directory) and replaced
atomically. Its place is ``$PAPYCLUSTER_STATE`` or ``~/.papycluster/state.json``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papycluster.cluster.auth import write_secret_file
from papycluster.cluster.errors import ClusterError

STATE_ENV = "PAPYCLUSTER_STATE"


def state_path() -> Path:
    value = os.environ.get(STATE_ENV)
    if value:
        return Path(value).expanduser()
    return Path.home() / ".papycluster" / "state.json"


@dataclass
class ClusterState:
    """``hosts`` maps a host name to a dict with at least ``address`` (as in the hosts
    file), ``connect`` (where the controller reaches the agent), ``agent_port``, ``pid``,
    ``run_dir``, ``local``, ``os``, ``profile``, ``workers``, ``shares`` and ``ssh``."""

    cluster: str
    secret: str
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    hosts_file: str | None = None
    created: float = field(default_factory=time.time)
    #: the hosts file's [cluster] SSH settings, so that ``down`` works without the file
    options: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"cluster": self.cluster, "secret": self.secret,
                           "hosts_file": self.hosts_file, "created": self.created,
                           "hosts": self.hosts,
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
    return ClusterState(cluster=data["cluster"], secret=data["secret"], hosts=data["hosts"],
                        hosts_file=data.get("hosts_file"), created=data.get("created", 0.0),
                        options=data.get("options", {}))


def remove_state(path: Path | None = None) -> None:
    path = path or state_path()
    for p in (path, secret_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
