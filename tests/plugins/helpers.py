"""Helpers of the cluster tests (ports, keys, process and file checks, hosts files).

Imported as ``tests.plugins.helpers`` (a module, not a plugin: it has no fixtures)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any


def collect(iterator: Any, catch: type[BaseException] | tuple = Exception,
            each: Any = None) -> list:
    """Results and raised ``catch`` exceptions of an iterator, in order (any other
    exception propagates); ``each(out)`` runs after every one, e.g. to inject a fault."""
    out: list = []
    while True:
        try:
            out.append(next(iterator))
        except StopIteration:
            return out
        except catch as exc:
            out.append(exc)
        if each is not None:
            each(out)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_range(n: int) -> range:
    """``n`` consecutive ports that are free now (each bound once and let go)."""
    for _ in range(50):
        start = free_port()
        if start + n > 65535:
            continue
        socks = []
        try:
            for port in range(start, start + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return range(start, start + n)
    raise RuntimeError("no free range of ports")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)],
                   check=True)
    return path.with_suffix(".pub").read_text().strip()


def agent_pids(cluster: str, children: bool = True) -> list[int]:
    """Live agents of ``cluster`` and their children (forkserver, workers)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            continue
        agent = b"papycluster.cluster.agent" in cmd and f"--cluster {cluster} ".encode() in cmd
        # forkserver and worker processes carry the agent's run dir in their sys.path
        child = b"papycluster-" in cmd and f"-{cluster}-".encode() in cmd
        if agent or (children and child):
            out.append(int(entry))
    return out


def run_dirs(cluster: str) -> list[Path]:
    import tempfile

    return sorted(Path(tempfile.gettempdir()).glob(f"papycluster-*-{cluster}-*"))


def hosts_toml(sshd: Any, cluster: str, hosts: list[dict], cache: Path,
               **cluster_keys: object) -> str:
    """A hosts file for hosts on the test sshd (each host its own agent port)."""
    lines = ["[cluster]", f'name = "{cluster}"', "connect_timeout = 5",
             "start_timeout = 30", f'known_hosts = "{sshd.known_hosts}"',
             f'ssh_config = "{sshd.dir}/no_ssh_config"']
    for k, v in cluster_keys.items():
        lines.append(f"{k} = {v!r}".replace("'", '"'))
    lines += ["", "[defaults]", f"port = {sshd.port}", f'user = "{sshd.user}"',
              f'key = "{sshd.key}"', f'cache_dir = "{cache}"', "workers = 2", ""]
    for h in hosts:
        lines.append("[[host]]")
        h = {"address": "127.0.0.1", "agent_port": free_port(), **h}
        for k, v in h.items():
            if isinstance(v, dict):
                inner = ", ".join(f'{kk} = "{vv}"' for kk, vv in v.items())
                lines.append(f"{k} = {{ {inner} }}")
            elif isinstance(v, str):
                lines.append(f'{k} = "{v}"')
            else:
                lines.append(f"{k} = {v}")
        lines.append("")
    return "\n".join(lines)
