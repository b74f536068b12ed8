"""The hosts file: which machines form the cluster and how to reach them.

It is read with :mod:`tomllib` and checked completely *before* any connection, so that a
typo costs one clear message (file, line, key, fix) instead of a half-started cluster.
``hosts.example.toml`` at the repository root documents every key.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from papycluster.cluster.errors import HostsFileError
from papycluster.wire.ports import parse_ports

DEFAULT_AGENT_PORT = 18871
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_START_TIMEOUT = 60.0

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
#: Share names as the file transport accepts them in a ticket (transport.shares.NAME_RE):
#: checked here so that a bad one fails at parse time, not at every later dump.
_SHARE_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")
SHARE_CHARS = "letters, digits, '_', '.' and '-', 1 to 64 of them"
#: A host name or an IPv4/IPv6 address (no spaces, quotes or shell characters).
_BIND_RE = re.compile(r"^[A-Za-z0-9_.:%-]{1,253}$")
OS_NAMES = ("linux", "darwin", "freebsd", "unix", "windows")

# key -> (types accepted, description used in the fix text)
_HOST_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), 'a short name such as "alpha"'),
    "address": ((str,), 'a host name or IP address such as "10.0.0.5"'),
    "user": ((str,), 'an SSH user name such as "papy"'),
    "port": ((int,), "an SSH port number such as 22"),
    "key": ((str,), 'a path to a private key such as "~/.ssh/id_ed25519"'),
    "python": ((str,), 'the Python command or path on that host, such as "python3"'),
    "workers": ((int,), "a number of worker processes such as 4"),
    "os": ((str,), f"one of {', '.join(OS_NAMES)} (or leave it out to detect it)"),
    "agent_port": ((int,), "the TCP port of the agent such as 18871"),
    "shares": ((dict,),
               'a table of share name -> local path, e.g. shares = { data = "/mnt/data" }'),
    "profile": ((str,), '"native" or "windows" (pretend to be Windows, for tests)'),
    "shell": ((str,), '"sh", "powershell" or "cmd" (the remote login shell)'),
    "cache_dir": ((str,), "where the shipped papycluster is cached on that host"),
    "bind": ((str,), 'the address the agent listens on, default its address; "0.0.0.0" '
                     'for every interface'),
    "packages": ((list,), 'a list of requirements such as ["numpy==2.*"] (see README)'),
    "ports": ((str,), 'the ports the agent and its item servers listen on, such as '
                      '"20000-20100" (a range a firewall opens)'),
    "groups": ((list,), 'a list of host group names such as ["gpu"], for '
                        'NuMap(worker_remote="gpu")'),
}
_DEFAULT_KEYS = {k: v for k, v in _HOST_KEYS.items() if k not in ("name", "address")}
_CLUSTER_KEYS: dict[str, tuple[tuple[type, ...], str]] = {
    "name": ((str,), 'a cluster name such as "lab"'),
    "connect_timeout": ((int, float), "seconds to wait for an SSH connection, e.g. 10"),
    "start_timeout": ((int, float), "seconds to wait for an agent to answer, e.g. 60"),
    "known_hosts": ((str,), 'a known_hosts path, default "~/.ssh/known_hosts"'),
    "ssh_config": ((str,), 'an OpenSSH client config path, default "~/.ssh/config"'),
    "host_key_policy": ((str,), '"strict" (default) or "accept-new"'),
    "packages": _HOST_KEYS["packages"],
    "ports": _HOST_KEYS["ports"],
    "encrypt": ((bool,), "true (the default: tcp items between hosts are encrypted "
                         "with CURVE) or false (a trusted network: authenticated, in clear)"),
}
_TOP_KEYS = ("cluster", "defaults", "host")


@dataclass
class HostConfig:
    """One host, with the defaults already applied."""

    name: str
    address: str
    user: str | None = None
    port: int | None = None
    key: str | None = None
    python: str = "python3"
    workers: int = 2
    os: str | None = None
    agent_port: int = DEFAULT_AGENT_PORT
    shares: dict[str, str] = field(default_factory=dict)
    profile: str = "native"
    shell: str | None = None
    cache_dir: str | None = None
    bind: str | None = None  # None: listen on the address the agent advertises
    #: Requirements ``up`` installs there (the cluster's, then the host's own).
    packages: list[str] = field(default_factory=list)
    #: Ports the agent (its first, unless agent_port says) and its workers' listeners
    #: use, as "first-last"; None: the agent_port and any free port.
    ports: str | None = None
    #: Host groups it belongs to, besides "all" (``NuMap(worker_remote="gpu")``).
    groups: list[str] = field(default_factory=list)
    local: bool = False  # started as a subprocess on this machine, without SSH


@dataclass
class ClusterConfig:
    """The whole hosts file."""

    path: str
    name: str = "papycluster"
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    start_timeout: float = DEFAULT_START_TIMEOUT
    known_hosts: str = "~/.ssh/known_hosts"
    ssh_config: str = "~/.ssh/config"
    host_key_policy: str = "strict"
    packages: list[str] = field(default_factory=list)
    ports: str | None = None  # every host's, unless its own says otherwise
    #: tcp items encrypted (CURVE, pyzmq shipped to the hosts) or by the HMAC socket
    encrypt: bool = True
    hosts: list[HostConfig] = field(default_factory=list)

    def host(self, name: str) -> HostConfig:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)


class _Locator:
    """Finds the line of a key in the raw text (tomllib gives values, not positions)."""

    _HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        # section label per line: ("cluster"|"defaults"|"host", host index or -1, sub-table)
        self.sections: list[tuple[str, int, str]] = []
        current = ("", -1, "")
        host_index = -1
        for line in self.lines:
            m = self._HEADER.match(line)
            if m:
                name = m.group(2).replace('"', "").replace("'", "").strip()
                parts = name.split(".")
                if m.group(1) == "[[" and parts == ["host"]:
                    host_index += 1
                    current = ("host", host_index, "")
                elif parts[0] == "host":
                    current = ("host", host_index, ".".join(parts[1:]))
                else:
                    current = (parts[0], -1, ".".join(parts[1:]))
            self.sections.append(current)

    def line(self, section: str, key: str, index: int = -1, sub: str = "") -> int | None:
        key_re = re.compile(r"^\s*[\"']?" + re.escape(key) + r"[\"']?\s*=")
        header_line = None
        for n, (line, (sec, idx, subt)) in enumerate(zip(self.lines, self.sections, strict=True)):
            if sec != section or idx != index:
                continue
            if header_line is None:
                header_line = n + 1
            if subt == sub and key_re.match(line):
                return n + 1
            if sub == "" and subt == "" and re.match(
                    r"^\s*\[\[?\s*[\w.]*\.?" + re.escape(key) + r"\s*\]", line):
                return n + 1
        if sub:  # an inline table: point at its key
            return self.line(section, sub, index)
        return header_line

    def where(self, section: str, key: str, index: int = -1, sub: str = "") -> str:
        line = self.line(section, key, index, sub)
        label = {"host": f"[[host]] #{index + 1}", "cluster": "[cluster]",
                 "defaults": "[defaults]"}.get(section, section)
        full = f"{sub}.{key}" if sub else key
        return (f"line {line}, " if line else "") + f"{label} key {full!r}"


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", dict: "a table",
             list: "a list", bool: "true or false"}
    return " or ".join(names.get(t, t.__name__) for t in types)


def _check_table(path: str, loc: _Locator, section: str, index: int, table: Any,
                 schema: dict[str, tuple[tuple[type, ...], str]]) -> None:
    if not isinstance(table, dict):
        raise HostsFileError(path, f"[{section}]", "must be a table",
                             f"write it as [{section}] with key = value lines")
    for key, value in table.items():
        if key not in schema:
            close = difflib.get_close_matches(key, list(schema), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise HostsFileError(path, loc.where(section, key, index), "unknown key",
                                 f"{hint}known keys are: {', '.join(schema)}")
        types, desc = schema[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            raise HostsFileError(
                path, loc.where(section, key, index),
                f"must be {_type_name(types)}, not {type(value).__name__} {value!r}",
                f"use {desc}")
        if key in ("port", "agent_port") and not 1 <= value <= 65535:
            raise HostsFileError(path, loc.where(section, key, index),
                                 f"port {value} out of range", "use a number in 1..65535")
        if key == "workers" and value < 0:
            raise HostsFileError(path, loc.where(section, key, index),
                                 "must not be negative", "use 0 or more workers")
        if key == "os" and value.lower() not in OS_NAMES:
            raise HostsFileError(path, loc.where(section, key, index),
                                 f"unknown OS {value!r}", f"use {desc}")
        if key == "profile" and value not in ("native", "windows"):
            raise HostsFileError(path, loc.where(section, key, index),
                                 f"unknown profile {value!r}", f"use {desc}")
        if key == "shell" and value not in ("sh", "powershell", "cmd"):
            raise HostsFileError(path, loc.where(section, key, index),
                                 f"unknown shell {value!r}", f"use {desc}")
        if key == "host_key_policy" and value not in ("strict", "accept-new"):
            raise HostsFileError(path, loc.where(section, key, index),
                                 f"unknown policy {value!r}", f"use {desc}")
        if key == "bind" and not _BIND_RE.match(value):
            raise HostsFileError(path, loc.where(section, key, index),
                                 f"bad bind address {value!r}", f"use {desc}")
        if key == "ports":
            try:
                parse_ports(value)
            except ValueError as exc:
                raise HostsFileError(path, loc.where(section, key, index), str(exc),
                                     f"use {desc}") from None
        if key == "groups":
            for group in value:
                if not isinstance(group, str) or not group.isidentifier() or group in (
                        "all", "ray"):
                    raise HostsFileError(
                        path, loc.where(section, key, index),
                        f"bad group name {group!r}", "a group is a name such as \"gpu\" "
                        "(letters, digits, _; not all or ray)")
        if key == "packages":
            for requirement in value:
                if not isinstance(requirement, str) or not requirement.strip():
                    raise HostsFileError(
                        path, loc.where(section, key, index),
                        f"each package must be a requirement string, not {requirement!r}",
                        f"use {desc}")
        if key == "shares":
            for share, local in value.items():
                if not _SHARE_RE.match(share):
                    raise HostsFileError(
                        path, loc.where(section, share, index, "shares"),
                        f"bad share name {share!r}", f"a share name has {SHARE_CHARS}")
                if not isinstance(local, str):
                    raise HostsFileError(
                        path, loc.where(section, share, index, "shares"),
                        f"share path must be a string, not {type(local).__name__}",
                        "write it as data = \"/mnt/data\" (or data = '\\\\filer\\data')")


def parse_hosts(text: str, path: str = "<hosts>") -> ClusterConfig:
    """Parse and validate hosts-file text; raise :class:`HostsFileError` on any fault."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise HostsFileError(path, "", f"not valid TOML: {exc}",
                             "correct the syntax at that line (strings need quotes, "
                             "tables are [name] or [[host]])")
    except RecursionError:
        # tomllib recurses once per level of nested arrays or inline tables: point at the
        # line that opens the most of them
        lines = text.splitlines() or [""]
        deepest = max(range(len(lines)), key=lambda n: lines[n].count("[") +
                      lines[n].count("{"))
        raise HostsFileError(path, f"line {deepest + 1}", "arrays or inline tables nested "
                             "too deeply for the "
                             "TOML reader", "a hosts file needs at most a table of shares; "
                             "remove the nesting") from None
    loc = _Locator(text)
    for key in data:
        if key not in _TOP_KEYS:
            raise HostsFileError(path, f"top-level key {key!r}",
                                 "unknown table or key",
                                 "use [cluster], [defaults] and one [[host]] table per host")
    cluster = data.get("cluster", {})
    _check_table(path, loc, "cluster", -1, cluster, _CLUSTER_KEYS)
    defaults = data.get("defaults", {})
    _check_table(path, loc, "defaults", -1, defaults, _DEFAULT_KEYS)
    hosts = data.get("host", [])
    if not isinstance(hosts, list) or not hosts:
        raise HostsFileError(path, "", "no hosts", "add at least one [[host]] table "
                             'with name = "..." and address = "..."')
    config = ClusterConfig(path=path)
    for key, value in cluster.items():
        setattr(config, key, float(value) if key.endswith("timeout") else value)
    if "name" in cluster and not _NAME_RE.match(cluster["name"]):
        raise HostsFileError(path, loc.where("cluster", "name"),
                             f"bad cluster name {cluster['name']!r}",
                             "use letters, digits, '-', '_' or '.'")
    seen: dict[str, int] = {}
    for index, table in enumerate(hosts):
        _check_table(path, loc, "host", index, table, _HOST_KEYS)
        for required in ("name", "address"):
            if required not in table:
                line = loc.line("host", "", index)
                raise HostsFileError(
                    path, (f"line {line}, " if line else "") + f"[[host]] #{index + 1}",
                    f"missing {required!r}", f"add {required} = {_HOST_KEYS[required][1]}")
        name = table["name"]
        if not _NAME_RE.match(name):
            raise HostsFileError(path, loc.where("host", "name", index),
                                 f"bad host name {name!r}",
                                 "use letters, digits, '-', '_' or '.' (at most 63)")
        if name in seen:
            raise HostsFileError(path, loc.where("host", "name", index),
                                 f"duplicate host name {name!r} (first in [[host]] "
                                 f"#{seen[name] + 1})", "give every host its own name")
        seen[name] = index
        merged: dict[str, Any] = {**defaults, **table}
        merged["shares"] = {**defaults.get("shares", {}), **table.get("shares", {})}
        if "os" in merged:
            merged["os"] = merged["os"].lower()
        merged["packages"] = [*config.packages, *merged.get("packages", [])]
        merged.setdefault("ports", config.ports)
        if merged["ports"]:
            _agent_port_in(merged, path, loc, index, "agent_port" in table)
        config.hosts.append(HostConfig(**merged))
    return config


def _agent_port_in(merged: dict[str, Any], path: str, loc: _Locator, index: int,
                   own: bool) -> None:
    """With ``ports``, the agent listens on the range's first port unless its
    ``agent_port`` is given, and a given one must be in the range (a firewall that
    opens the range would refuse it)."""
    ports = parse_ports(merged["ports"])
    if "agent_port" not in merged:
        merged["agent_port"] = ports.start
    elif merged["agent_port"] not in ports:
        section = "host" if own else "defaults"
        raise HostsFileError(path, loc.where(section, "agent_port", index if own else -1),
                             f"agent_port {merged['agent_port']} is outside ports "
                             f"{merged['ports']!r}",
                             "use a port of the range, or leave agent_port out (the "
                             "agent then takes the range's first port)")


def load_hosts(path: str | Path) -> ClusterConfig:
    """Read and validate the hosts file at ``path``."""
    p = Path(path).expanduser()
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise HostsFileError(str(p), "", "no such file",
                             "pass -f PATH, or copy hosts.example.toml to hosts.toml")
    except (OSError, UnicodeDecodeError) as exc:
        raise HostsFileError(str(p), "", f"cannot read it: {exc}", "check the path")
    return parse_hosts(text, str(p))
