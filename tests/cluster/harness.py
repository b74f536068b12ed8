"""The dockerized multi-node harness without pytest: images, compose project, nodes.

``docker/compose.yml`` holds nodes ``node1``, ``node2``, ``node3`` (Linux) and ``win1``
(a Linux container that papycluster runs with the Windows profile), each a bare host
with Python and sshd and nothing of papycluster; a host folder mounted in every node as
the shared volume (``/mnt/data``, ``/shares/data`` on ``win1``); and a MariaDB server.
``wine1``, a real Windows CPython under Wine (docker/wine), is started only by the
tests that use it (tests/cluster/test_cluster_windows.py; ``build_images(wine=True)``).
The controller runs here, on this machine, and reaches the nodes by their container
addresses over SSH with a key pair made for the session, as a user's laptop would.

``conftest.py`` drives it with pytest-docker; :func:`started` drives it alone (for the
benchmarks). Projects are named ``papyc<pid>``, so that a later session can remove
what a dead one left (:func:`remove_stale_projects`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import re
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko
import pymysql

REPO = Path(__file__).resolve().parents[2]
DOCKER_DIR = REPO / "docker"
BUILD_SCRIPT = DOCKER_DIR / "build-images.sh"
COMPOSE_FILE = DOCKER_DIR / "compose.yml"

PROJECT_PREFIX = "papyc"
AGENT = "papycluster.cluster.agent"  # in every agent's command line
BUILD_TIMEOUT = 1500  # a cold debootstrap build takes one to two minutes
COMPOSE_TIMEOUT = 300  # any one docker-compose command
SSH_WAIT = 90  # for every node's sshd after `up`
DB_WAIT = 120  # for MariaDB to accept the papy user
NODE_USER = "papy"
DB_NAME = DB_USER = "papy"

# service -> (profile, share path inside the node, last octet of its address)
NODES = {
    "node1": ("native", "/mnt/data", 11),
    "node2": ("native", "/mnt/data", 12),
    "node3": ("native", "/mnt/data", 13),
    "win1": ("windows", "/shares/data", 21),
}
DB_SERVICE, DB_OCTET = "mariadb", 5
SHARE_NAME = "data"


@dataclass(frozen=True)
class Node:
    """One host of the harness, as a hosts file would describe it."""

    name: str  # service name == hostname
    ip: str
    user: str
    port: int
    key_path: Path
    profile: str  # "native" or "windows"
    share_path: str  # where the shared volume is, inside this node
    container: str  # container id
    python: str = "python3"

    @property
    def shares(self) -> dict[str, str]:
        return {SHARE_NAME: self.share_path}


@dataclass(frozen=True)
class Database:
    host: str
    port: int
    user: str
    password: str
    database: str
    container: str


@dataclass(frozen=True)
class SshResult:
    rc: int
    out: str
    err: str


@dataclass
class Harness:
    project: str
    compose_command: str
    subnet: str
    nodes: dict[str, Node]
    db: Database
    share_dir: Path  # the shared volume, as seen from the test machine
    key_path: Path
    known_hosts: Path  # every node's host key, by address
    workdir: Path

    @property
    def linux_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.profile == "native"]

    @property
    def windows_nodes(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.profile == "windows"]

    # -- docker ----------------------------------------------------------------------
    def docker(self, *args: str, timeout: float = 60, check: bool = True
               ) -> subprocess.CompletedProcess[str]:
        return run(["docker", *args], timeout=timeout, check=check)

    def docker_exec(self, node: Node, command: str, *, user: str = "root",
                    timeout: float = 60, check: bool = False
                    ) -> subprocess.CompletedProcess[str]:
        """Run ``sh -c command`` in the node's container, beside SSH (to inspect it)."""
        return self.docker("exec", "-u", user, node.container, "sh", "-c", command,
                           timeout=timeout, check=check)

    def compose(self, *args: str, timeout: float = COMPOSE_TIMEOUT
                ) -> subprocess.CompletedProcess[str]:
        cmd = (f"{self.compose_command} -f {COMPOSE_FILE} -p {self.project} "
               + " ".join(args))
        return run(cmd, timeout=timeout + 30, check=True, shell=True)

    @property
    def network(self) -> str:
        return f"{self.project}_papynet"  # compose names it <project>_<network>

    def kill(self, node: Node) -> None:
        """``docker kill``: the host dies at once, as on a power cut."""
        self.docker("kill", node.container)

    def pause(self, node: Node) -> None:
        """``docker pause``: every process of the node frozen, its TCP stack answering
        (connections are accepted, nothing is ever said on them)."""
        self.docker("pause", node.container)

    def disconnect(self, node: Node) -> None:
        """Cut the node off the private network (it keeps running)."""
        self.docker("network", "disconnect", "--force", self.network, node.container)

    def restore(self) -> None:
        """Every node running and on the network at its address again, sshd answering."""
        for node in self.nodes.values():
            info = json.loads(self.docker("inspect", node.container).stdout)[0]
            if info["State"].get("Paused"):
                self.docker("unpause", node.container)
            elif not info["State"]["Running"]:
                # The container keeps its files, so its host keys stay the same.
                self.docker("start", node.container)
            if self.network not in (info["NetworkSettings"]["Networks"] or {}):
                self.docker("network", "connect", "--ip", node.ip, self.network,
                            node.container)
        deadline = time.monotonic() + SSH_WAIT
        for node in self.nodes.values():
            while not sshd_answers(node.ip):
                if time.monotonic() > deadline:
                    raise HarnessError(f"{node.name} ({node.ip}) did not come back")
                time.sleep(0.5)

    def kill_agents(self) -> None:
        """SIGKILL whatever papycluster agent is left on any node (after ``down``)."""
        for node in self.nodes.values():
            self.docker_exec(node, f"pkill -9 -f '{AGENT}'")

    def make_bare(self, node: Node) -> None:
        """Forget what an earlier ``up`` shipped (the node's papycluster cache)."""
        self.docker_exec(node, f"rm -rf ~{node.user}/.cache/papycluster", check=True)

    def processes(self, node: Node, needle: str) -> list[str]:
        """Live (not zombie) processes of ``node`` whose command line holds ``needle``."""
        out = self.docker_exec(node, "ps -eo pid=,stat=,args=", check=True).stdout
        rows = []
        for line in out.splitlines():
            pid, stat, args = (line.split(None, 2) + ["", ""])[:3]
            if needle in args and not stat.startswith("Z") and "ps -eo" not in args:
                rows.append(f"{pid} {args}")
        return rows

    def temp_files(self, node: Node) -> list[str]:
        """Files and folders the node's user left in its temp places."""
        out = self.docker_exec(
            node, f"find /tmp /var/tmp /dev/shm -mindepth 1 -user {node.user} 2>/dev/null",
            check=False).stdout
        return out.split()

    # -- ssh -------------------------------------------------------------------------
    def ssh_client(self, node: Node, *, key_path: Path | None = None,
                   timeout: float = 10) -> paramiko.SSHClient:
        """A connected client that checks the node's host key against known_hosts."""
        client = paramiko.SSHClient()
        client.load_host_keys(str(self.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(node.ip, port=node.port, username=node.user,
                           key_filename=str(key_path or node.key_path),
                           timeout=timeout, banner_timeout=timeout, auth_timeout=timeout,
                           look_for_keys=False, allow_agent=False)
        except BaseException:
            client.close()
            raise
        return client

    def ssh(self, node: Node, command: str, *, timeout: float = 60,
            stdin: bytes | None = None) -> SshResult:
        """Run ``command`` on ``node`` over SSH as its user; ``timeout`` bounds every read."""
        client = self.ssh_client(node)
        try:
            chan_in, chan_out, chan_err = client.exec_command(command, timeout=timeout)
            if stdin:
                chan_in.write(stdin)
            chan_in.channel.shutdown_write()
            out = chan_out.read().decode(errors="replace")
            err = chan_err.read().decode(errors="replace")
            rc = chan_out.channel.recv_exit_status()
        finally:
            client.close()
        return SshResult(rc, out, err)

    def ssh_python(self, node: Node, source: str, *, timeout: float = 60) -> SshResult:
        """Run a Python program on ``node`` with its own ``python3`` (source on stdin)."""
        return self.ssh(node, f"{node.python} -", stdin=source.encode(), timeout=timeout)

    # -- hosts file ------------------------------------------------------------------
    def hosts_toml(self, nodes: Sequence[Node] | None = None, *, cluster_name: str = "harness",
                   connect_timeout: float = 10, start_timeout: float = 60) -> str:
        """A hosts file (see hosts.example.toml) for ``nodes`` (default: all)."""
        lines = [
            "[cluster]",
            f'name = "{cluster_name}"',
            f"connect_timeout = {connect_timeout}",
            f"start_timeout = {start_timeout}",
            f'known_hosts = "{self.known_hosts}"',
            f'ssh_config = "{self.workdir / "no_ssh_config"}"',  # not the user's
            'host_key_policy = "strict"',
            "",
            "[defaults]",
            f'user = "{NODE_USER}"',
            f'key = "{self.key_path}"',
            'python = "python3"',
            "workers = 2",
        ]
        for node in nodes or list(self.nodes.values()):
            lines += ["", "[[host]]", f'name = "{node.name}"', f'address = "{node.ip}"',
                      f"shares = {{ {SHARE_NAME} = \"{node.share_path}\" }}"]
            if node.profile == "windows":
                lines.append('profile = "windows"')
        return "\n".join(lines) + "\n"


# -- helpers ---------------------------------------------------------------------------
def write_report(basetemp: Path, name: str, figures: dict[str, Any]) -> Path:
    """Write a test's figures to ``<basetemp>/node-loss/<name>.json`` (for the issue)."""
    path = basetemp / "node-loss" / f"{name}.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(figures, indent=1) + "\n")
    return path


def record_errors(piper: Any) -> list:
    """The error items that reach ``piper`` (they skip its function and go straight to
    the plunger), kept in the returned list so that a test can show them."""
    from papycluster import PiperError

    errors: list = []
    next_item = piper.next

    def recording_next(*args: Any, **kwargs: Any) -> Any:
        item = next_item(*args, **kwargs)
        if isinstance(item, PiperError):
            errors.append(item)
        return item

    piper.next = recording_next
    return errors


class HarnessError(RuntimeError):
    """The harness cannot run here (no docker, a failed build, a node that never came up)."""


def run(cmd: Sequence[str] | str, *, timeout: float, check: bool = True,
        shell: bool = False) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(cmd, shell=shell, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"{cmd!r} did not finish in {timeout}s") from exc
    if check and proc.returncode != 0:
        raise HarnessError(f"{cmd!r} exited {proc.returncode}:\n{proc.stdout}{proc.stderr}")
    return proc


def require_docker() -> None:
    """HarnessError with what is missing, unless docker and its engine are there."""
    if shutil.which("docker") is None:
        raise HarnessError("the cluster harness needs docker: the docker client is not "
                           "installed")
    proc = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise HarnessError("the cluster harness needs a running docker engine; "
                           "'docker info' says: "
                           + (proc.stderr.strip() or proc.stdout.strip()))


def compose_command() -> str:
    """``docker compose`` (plugin) where it exists, else ``docker-compose`` (v1); every
    compose command is bounded by ``timeout``."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True,
                            timeout=60, stdin=subprocess.DEVNULL)
    if plugin.returncode == 0:
        command = "docker compose"
    elif shutil.which("docker-compose"):
        command = "docker-compose"
    else:
        raise HarnessError("the cluster harness needs Docker Compose: neither "
                           "'docker compose' nor 'docker-compose' is installed")
    return f"timeout -k 10 {COMPOSE_TIMEOUT} {command}"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_projects() -> list[str]:
    """Remove containers and networks of harness projects whose session is gone."""
    label = "com.docker.compose.project"
    projects: set[str] = set()
    for kind in ("ps -a", "network ls"):
        proc = run(["docker", *kind.split(), "--filter", f"label={label}",
                    "--format", f'{{{{.Label "{label}"}}}}'], timeout=60)
        projects.update(proc.stdout.split())
    stale = []
    for project in sorted(projects):
        m = re.fullmatch(rf"{PROJECT_PREFIX}(\d+)", project)
        if not m or pid_alive(int(m.group(1))):
            continue
        stale.append(project)
        flt = f"label={label}={project}"
        ids = run(["docker", "ps", "-aq", "--filter", flt], timeout=60).stdout.split()
        if ids:
            run(["docker", "rm", "-f", "-v", *ids], timeout=120, check=False)
        nets = run(["docker", "network", "ls", "-q", "--filter", flt], timeout=60).stdout.split()
        if nets:
            run(["docker", "network", "rm", *nets], timeout=60, check=False)
    return stale


def used_networks() -> list[ipaddress.IPv4Network]:
    """Subnets of every docker network and every route of this machine."""
    used: list[ipaddress.IPv4Network] = []
    ids = run(["docker", "network", "ls", "-q"], timeout=60).stdout.split()
    if ids:
        info = json.loads(run(["docker", "network", "inspect", *ids], timeout=60).stdout)
        for net in info:
            for cfg in (net.get("IPAM") or {}).get("Config") or []:
                try:
                    used.append(ipaddress.IPv4Network(cfg.get("Subnet", ""), strict=False))
                except ValueError:
                    pass
    if shutil.which("ip"):
        for line in run(["ip", "-4", "-o", "route", "show", "table", "all"], timeout=30,
                        check=False).stdout.splitlines():
            dest = line.split()[0] if line.split() else ""
            if dest in ("default", "broadcast", "local", "unreachable"):
                dest = line.split()[1] if len(line.split()) > 1 else ""
            try:
                net = ipaddress.IPv4Network(dest, strict=False)
            except ValueError:
                continue
            if net.prefixlen > 0:
                used.append(net)
    return used


def pick_subnet() -> ipaddress.IPv4Network:
    """A random /24 in 10.100.0.0-10.249.255.0 that overlaps nothing here."""
    used = used_networks()
    rng = random.SystemRandom()
    for _ in range(500):
        net = ipaddress.IPv4Network(f"10.{rng.randrange(100, 250)}.{rng.randrange(256)}.0/24")
        if not any(net.overlaps(u) for u in used):
            return net
    raise HarnessError("no free /24 in 10.100-249.x.0 for the harness network")


def build_images(wine: bool = False) -> str:
    """Run docker/build-images.sh (a no-op while the images are current); the tag.

    ``wine`` also makes the wine node's image (``--wine``), for the tests that use it.
    """
    proc = subprocess.run(["bash", str(BUILD_SCRIPT), *(["--wine"] if wine else [])],
                          capture_output=True, text=True,
                          timeout=BUILD_TIMEOUT, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise HarnessError(f"docker/build-images.sh failed ({proc.returncode}):\n"
                           f"{proc.stdout}{proc.stderr}")
    return run(["bash", str(BUILD_SCRIPT), "--print-tag"], timeout=60).stdout.strip()


def write_known_hosts(nodes: Iterable[Node], workdir: Path) -> Path:
    """``workdir/known_hosts`` with the host keys the nodes made at start, checked by
    every SSH connection (0600)."""
    known_hosts = workdir / "known_hosts"
    lines = []
    for node in nodes:
        pub = run(["docker", "exec", node.container, "cat",
                   "/etc/ssh/ssh_host_ed25519_key.pub"], timeout=60).stdout.split()
        lines.append(f"{node.ip} {pub[0]} {pub[1]}")
    known_hosts.write_text("\n".join(lines) + "\n")
    known_hosts.chmod(0o600)
    return known_hosts


def sshd_answers(ip: str) -> bool:
    try:
        with socket.create_connection((ip, 22), timeout=2) as sock:
            sock.settimeout(2)
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


def mariadb_answers(db: Database) -> bool:
    try:
        conn = pymysql.connect(host=db.host, port=db.port, user=db.user,
                               password=db.password, database=db.database,
                               connect_timeout=3, read_timeout=5, write_timeout=5)
    except pymysql.MySQLError:
        return False
    conn.close()
    return True


# -- one session of the harness ---------------------------------------------------------
def prepare_env(workdir: Path) -> dict[str, str]:
    """Keys, share folder, subnet and password of one session: compose.yml's variables."""
    keys_dir = workdir / "authorized"
    keys_dir.mkdir()
    key_path = workdir / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "papycluster-harness",
         "-f", str(key_path)], timeout=30)
    shutil.copy(f"{key_path}.pub", keys_dir / "authorized_keys")
    keys_dir.chmod(0o755)
    (keys_dir / "authorized_keys").chmod(0o644)
    share_dir = workdir / "share"
    share_dir.mkdir()
    share_dir.chmod(0o1777)  # the nodes' user writes there too
    subnet = pick_subnet()
    return {
        "PAPY_IMAGE_TAG": run(["bash", str(BUILD_SCRIPT), "--print-tag"],
                              timeout=60).stdout.strip(),
        "PAPY_WINE_TAG": run(["bash", str(BUILD_SCRIPT), "--print-wine-tag"],
                             timeout=60).stdout.strip(),
        "PAPY_SUBNET": str(subnet),
        "PAPY_NET_PREFIX": str(subnet.network_address).rsplit(".", 1)[0],
        "PAPY_KEYS_DIR": str(keys_dir),
        "PAPY_SHARE_DIR": str(share_dir),
        "PAPY_DB_PASSWORD": secrets.token_hex(12),
        "PAPY_WORKDIR": str(workdir),
        "PAPY_KEY_PATH": str(key_path),
    }


def wait_until(check: Callable[[], bool], timeout: float, pause: float = 0.5) -> None:
    """Like pytest-docker's ``wait_until_responsive``: an exception after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no answer within {timeout}s")
        time.sleep(pause)


def attach(project: str, compose: str, env: dict[str, str],
           wait: Callable[..., None] | None = None) -> Harness:
    """The started project as a :class:`Harness`, once every node's sshd and MariaDB
    answer (``wait(check=, timeout=, pause=)`` polls; pytest-docker's by default)."""
    wait = wait or (lambda check, timeout, pause: wait_until(check, timeout, pause))
    prefix = env["PAPY_NET_PREFIX"]
    key_path = Path(env["PAPY_KEY_PATH"])
    workdir = Path(env["PAPY_WORKDIR"])

    def container_of(service: str) -> str:
        ids = run(["docker", "ps", "-aq",
                   "--filter", f"label=com.docker.compose.project={project}",
                   "--filter", f"label=com.docker.compose.service={service}"],
                  timeout=60).stdout.split()
        if len(ids) != 1:
            raise HarnessError(f"expected one container for {service} in {project}, "
                               f"found {ids}")
        return ids[0]

    def wait_for(what: str, container: str, check: Callable[[], bool],
                 timeout: float) -> None:
        try:
            wait(check=check, timeout=timeout, pause=0.5)
        except Exception:
            logs = run(["docker", "logs", "--tail", "30", container], timeout=60,
                       check=False)
            raise HarnessError(f"{what} did not answer within {timeout}s; its log:\n"
                               f"{logs.stdout}{logs.stderr}") from None

    nodes: dict[str, Node] = {}
    for service, (profile, share_path, octet) in NODES.items():
        container = container_of(service)
        ip = f"{prefix}.{octet}"
        wait_for(f"sshd of {service} ({ip})", container, lambda ip=ip: sshd_answers(ip),
                 SSH_WAIT)
        nodes[service] = Node(name=service, ip=ip, user=NODE_USER, port=22,
                              key_path=key_path, profile=profile, share_path=share_path,
                              container=container)

    db = Database(host=f"{prefix}.{DB_OCTET}", port=3306, user=DB_USER,
                  password=env["PAPY_DB_PASSWORD"], database=DB_NAME,
                  container=container_of(DB_SERVICE))
    wait_for(f"MariaDB ({db.host})", db.container, lambda: mariadb_answers(db), DB_WAIT)

    known_hosts = write_known_hosts(nodes.values(), workdir)

    return Harness(project=project, compose_command=compose, subnet=env["PAPY_SUBNET"],
                   nodes=nodes, db=db, share_dir=Path(env["PAPY_SHARE_DIR"]),
                   key_path=key_path, known_hosts=known_hosts, workdir=workdir)


@contextlib.contextmanager
def started(workdir: Path) -> Iterator[Harness]:
    """The whole harness outside pytest (for bench/cluster.py): build, up, yield, down."""
    require_docker()
    remove_stale_projects()
    compose = compose_command()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **prepare_env(workdir)}
    project = f"{PROJECT_PREFIX}{os.getpid()}"
    build_images()
    base = f"{compose} -f {COMPOSE_FILE} -p {project}"
    try:
        proc = subprocess.run(f"{base} up -d --no-build", shell=True, env=env,
                              capture_output=True, text=True, timeout=COMPOSE_TIMEOUT + 30,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise HarnessError(f"compose up failed:\n{proc.stdout}{proc.stderr}")
        harness = attach(project, compose, env)
        # Harness.compose runs compose commands that need the variables too
        harness.compose_command = " ".join(
            f"{k}={shlex.quote(v)}" for k, v in env.items() if k.startswith("PAPY_")
        ) + " " + compose
        yield harness
    finally:
        subprocess.run(f"{base} down -v --remove-orphans --timeout 5", shell=True, env=env,
                       capture_output=True, timeout=COMPOSE_TIMEOUT + 30,
                       stdin=subprocess.DEVNULL)
