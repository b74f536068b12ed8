"""``papycluster check -f hosts.toml``: will ``up`` work? Asked before anything starts.

Users of cluster launchers report silent or hanging bring-ups more than anything but
firewalls, so this visits every host of a hosts file the way ``up`` would, starts
nothing that stays, and says for each problem the host, the cause and the fix:

1. **Each host** (in parallel): SSH reach and authentication (the cause words of
   :class:`HostError`), the Python and OS there, a writable temp dir, a free agent
   port, and each share of the host: a folder in which a file can be made and removed.
2. **Each pair**: every host that passed runs a short-lived listener (on its agent
   port when that one is free: the port a firewall must let through) while every other
   host, and the controller, connect to it. The controller's reach decides whether
   ``up`` can talk to the agent; a pair's reach whether direct transports (tcp, udp)
   can go between its two hosts. The listeners end when every caller came, or after a
   bounded linger.

Every wait is bounded by the hosts file's ``connect_timeout`` and ``start_timeout``.
The result is ``ok`` when ``up`` would succeed on every host: a pair that cannot
reach each other is a warning (the manager path and ``file`` on a share still work).
"""

from __future__ import annotations

import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from papycluster.cluster import deploy, shell, ssh
from papycluster.cluster.errors import HostError
from papycluster.cluster.hosts import ClusterConfig, HostConfig

#: What to do about each cause word of a failed host (HostError.cause).
FIXES = {
    "unreachable": "check the address and port in the hosts file, the network and any "
                   "firewall between this machine and the host's sshd",
    "refused": "start sshd on the host, or fix port = in the hosts file",
    "auth failed": "check user = and key = in the hosts file, and that the public key is "
                   "in ~/.ssh/authorized_keys on the host",
    "host key mismatch": "the host's SSH key changed: verify it, then remove its old line "
                         "from known_hosts",
    "unknown host key": "add the host's key to known_hosts (ssh-keyscan), or set "
                        "host_key_policy = \"accept-new\"",
    "key file not found": "fix key = in the hosts file",
    "timeout": "the host or the network is slow: raise connect_timeout / start_timeout",
    "no Python": "install Python >= 3.9 on the host, or set python = to its path",
    "Python too old": "set python = to a Python >= 3.9 on the host",
    "check failed": "see the detail",
    "share": "mount the share on the host, or fix its path under [hosts.shares]",
    "port blocked": "let this machine reach the agent port through the firewall, or set "
                    "agent_port = to a port that is open",
}

#: Seconds a connection attempt to a listener may take (a firewall that drops packets
#: makes it wait that long), and how long a listener may still be starting.
REACH_TIMEOUT = 5.0
READY_WITHIN = 15.0


@dataclass
class Problem:
    cause: str
    detail: str
    fix: str


@dataclass
class HostReport:
    name: str
    address: str
    problems: list[Problem] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)  # python, os, ...
    #: the port the pair probes used: the agent port, or another free one when that one
    #: was taken (then the firewall's verdict on the agent port itself is not known)
    listen_port: int | None = None
    listened_on_agent_port: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class Reach:
    """Whether ``sender`` (a host, or ``controller``) reached ``receiver``'s listener."""

    sender: str
    receiver: str
    ok: bool
    detail: str = ""
    ms: float | None = None


@dataclass
class Preflight:
    hosts: list[HostReport]
    reach: list[Reach]

    @property
    def ok(self) -> bool:
        """``up`` would start every host: each passed, and the controller reaches each."""
        return all(h.ok for h in self.hosts)

    def pair(self, sender: str, receiver: str) -> Reach | None:
        for r in self.reach:
            if r.sender == sender and r.receiver == receiver:
                return r
        return None


def _problem(exc: HostError) -> Problem:
    return Problem(exc.cause, exc.detail, FIXES.get(exc.cause, "see the detail"))


class _Visit:
    """One host's SSH connection and what was found there."""

    def __init__(self, config: ClusterConfig, host: HostConfig) -> None:
        self.config = config
        self.host = host
        self.report = HostReport(host.name, host.address)
        self.conn: ssh.Connection | None = None
        self.shell = shell.login_shell(host, host.os)
        self.target_address = host.address

    def run(self, config: dict[str, Any], timeout: float) -> dict[str, Any]:
        assert self.conn is not None
        return deploy.launch(self.conn, self.host, self.shell, config, timeout,
                             script="preflight")

    def visit(self) -> None:
        """SSH, then the host script: Python, OS, temp dir, agent port, shares."""
        try:
            target = ssh.resolve_target(self.config, self.host)
            self.target_address = target.hostname
            self.conn = ssh.Connection(target).open()  # closed by close()
            found = self.run({"mode": "host", "shares": self.host.shares,
                              "cluster": self.config.name, "name": self.host.name,
                              "check": {"agent_port": self.host.agent_port,
                                        "min_python": list(deploy.MIN_PYTHON)}},
                             self.config.connect_timeout + self.config.start_timeout)
        except HostError as exc:
            self.report.problems.append(_problem(exc))
            return
        probe = found["found"]
        self.shell = shell.login_shell(self.host, probe.get("os"))
        self.report.facts = {
            "python": ".".join(map(str, probe["version"])), "os": probe["os"],
            "executable": probe.get("executable"), "cpus": probe.get("cpus"),
            "user": probe.get("user")}
        try:
            # the same verdict as `up`: a port held by an agent of this cluster is fine
            # (up replaces it), any other holder is not
            deploy.check_probe(self.host, probe)
        except HostError as exc:
            self.report.problems.append(_problem(exc))
        # a taken port cannot be probed: the pairs are probed on a spare one instead
        port_taken = not probe.get("port_free")
        self.report.listened_on_agent_port = not port_taken
        self.report.listen_port = probe["spare_port"] if port_taken else self.host.agent_port
        holder = (f" (held by this cluster's agent, pid {probe['old_agent_pid']})"
                  if probe.get("old_agent_pid") else " (in use)") if port_taken else ""
        self.report.facts["agent_port"] = f"{self.host.agent_port}{holder}"
        for name, trouble in (probe.get("shares") or {}).items():
            if trouble:
                self.report.problems.append(Problem(
                    "share", f"share {name!r}: {trouble}", FIXES["share"]))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def run_preflight(config: ClusterConfig, names: list[str] | None = None,
                  progress: Callable[[str, str], None] | None = None) -> Preflight:
    """Visit the hosts of ``config`` (or those named) and probe every pair of them."""
    hosts = [h for h in config.hosts if not names or h.name in names]
    unknown = set(names or ()) - {h.name for h in hosts}
    if unknown:
        raise HostError(", ".join(sorted(unknown)), "check failed",
                        f"not in {config.path}")
    say = progress or (lambda host, message: None)
    visits = [_Visit(config, h) for h in hosts]
    try:
        with ThreadPoolExecutor(max(1, min(16, len(visits)))) as pool:
            for v in visits:
                say(v.host.name, f"connecting to {v.host.address}")
            list(pool.map(_Visit.visit, visits))
        for v in visits:
            say(v.host.name, "ok" if v.report.ok else
                "FAILED " + "; ".join(p.cause for p in v.report.problems))
        # the pairs of the hosts whose Python ran the host script
        reach = _probe_pairs([v for v in visits if v.report.listen_port is not None],
                             config, say)
    finally:
        for v in visits:
            v.close()
    for r in reach:
        if r.sender == "controller" and not r.ok:
            report = next(v.report for v in visits if v.host.name == r.receiver)
            report.problems.append(Problem("port blocked", r.detail, FIXES["port blocked"]))
    return Preflight([v.report for v in visits], reach)


def _probe_pairs(visits: list[_Visit], config: ClusterConfig,
                 say: Callable[[str, str], None]) -> list[Reach]:
    """Listeners on every host, callers from every other host and from here."""
    if not visits:
        return []
    token = secrets.token_hex(16)
    linger = READY_WITHIN + REACH_TIMEOUT + config.connect_timeout
    budget = linger + config.start_timeout + config.connect_timeout
    lock = threading.Lock()
    reaches: list[Reach] = []

    def listen(v: _Visit) -> None:
        try:
            v.run({"mode": "listen", "port": v.report.listen_port, "token": token,
                   "expect": len(visits), "linger": linger}, budget)
        except HostError as exc:
            say(v.host.name, f"listener failed: {exc.detail}")

    def call(v: _Visit, targets: list[tuple[str, str, int]]) -> None:
        try:
            found = v.run({"mode": "reach", "token": token, "timeout": REACH_TIMEOUT,
                           "ready_within": READY_WITHIN, "targets": targets}, budget)
        except HostError as exc:
            with lock:
                reaches.extend(Reach(v.host.name, name, False, f"probe failed: {exc}")
                               for name, _, _ in targets)
            return
        with lock:
            for name, _, _ in targets:
                got = found["reached"].get(name, {})
                reaches.append(Reach(v.host.name, name, bool(got.get("ok")),
                                     got.get("error", ""), got.get("ms")))

    threads = [threading.Thread(target=listen, args=(v,), daemon=True) for v in visits]
    for v in visits:
        targets = [(w.host.name, w.target_address, w.report.listen_port)
                   for w in visits if w is not v]
        if targets:
            threads.append(threading.Thread(target=call, args=(v, targets), daemon=True))
    for t in threads:
        t.start()
    for v in visits:
        port = v.report.listen_port
        say(v.host.name, f"probing port {port} from the other hosts and from here")
        with lock:
            reaches.append(_reach_from_here(v.host.name, v.target_address, port, token))
    deadline = time.monotonic() + budget
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return reaches


def _reach_from_here(name: str, address: str, port: int, token: str) -> Reach:
    """The controller's own call to a listener, retried while it is still starting."""
    started = time.monotonic()
    deadline = started + READY_WITHIN
    error = ""
    while True:
        try:
            with socket.create_connection((address, port), timeout=REACH_TIMEOUT) as conn:
                conn.settimeout(REACH_TIMEOUT)
                answer = conn.makefile("rb").readline(100).decode("ascii", "replace")
            if answer.strip() == token:
                return Reach("controller", name, True,
                             ms=round((time.monotonic() - started) * 1000, 1))
            error = f"{address}:{port} answered, but not the preflight listener"
            break
        except ConnectionRefusedError as exc:
            error = f"{address}:{port}: {exc.strerror}"
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)  # the listener is not up yet
        except OSError as exc:
            error = f"{address}:{port}: {exc.strerror or type(exc).__name__}"
            break
    return Reach("controller", name, False, error)
