"""Plugin of the root conftest: a real OpenSSH server on loopback, and the hosts' code cache.

The sshd runs as the current user (root in CI) from a temp dir with its own host key,
authorized_keys and config, so the tests touch nothing of the machine's SSH setup. Its
sessions get sshd's default PATH, so ``python3`` there is the system Python without
papycluster or rpyc: a bare host, to which ``up`` must ship everything.
"""

from __future__ import annotations

import getpass
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.plugins.helpers import free_port, keygen, wait_port

SSHD = "/usr/sbin/sshd"


@dataclass
class Sshd:
    dir: Path
    port: int
    user: str
    key: Path          # the authorized private key
    other_key: Path    # a key that is NOT authorized
    known_hosts: Path  # holds the real host key
    host_pub: str
    log: Path


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    if not os.path.exists(SSHD):
        pytest.fail(f"{SSHD} is missing: install openssh-server (.ci/install does)")
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o755)
    host_pub = keygen(d / "host_ed25519")
    user_pub = keygen(d / "user_ed25519")
    keygen(d / "other_ed25519")
    (d / "authorized_keys").write_text(user_pub + "\n")
    os.chmod(d / "authorized_keys", 0o600)
    port = free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_ed25519
AuthorizedKeysFile {d}/authorized_keys
PidFile {d}/sshd.pid
StrictModes no
UsePAM no
PermitRootLogin yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
Subsystem sftp internal-sftp
LogLevel VERBOSE
""")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    log = d / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-f", str(cfg), "-E", str(log)])
    try:
        wait_port(port)
    except TimeoutError:
        proc.kill()
        pytest.fail(f"sshd did not start: {log.read_text() if log.exists() else ''}")
    yield Sshd(d, port, getpass.getuser(), d / "user_ed25519", d / "other_ed25519", known,
               host_pub, log)
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


@pytest.fixture(scope="session")
def remote_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped-code cache of the 'remote' hosts (shared by the session's tests)."""
    return tmp_path_factory.mktemp("remote-cache")
