"""Fixtures: a real OpenSSH server on loopback, and a clean cluster state per test.

The sshd runs as the current user (root in CI) from a temp dir with its own host key,
authorized_keys and config, so the tests touch nothing of the machine's SSH setup. Its
sessions get sshd's default PATH, so ``python3`` there is the system Python without
papycluster or rpyc: a bare host, to which ``up`` must ship everything.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from cluster_ssh_helpers import agent_pids, free_port, keygen, run_dirs, wait_port

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


@pytest.fixture
def cluster_name() -> str:
    return "t" + uuid.uuid4().hex[:8]


@pytest.fixture(autouse=True)
def state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cluster_name: str):
    """Each test gets its own state file; whatever it left running is stopped after."""
    path = tmp_path / "state" / "state.json"
    monkeypatch.setenv("PAPYCLUSTER_STATE", str(path))
    # negotiation sets these in the controller process: undo it after each test
    for key in ("PAPYCLUSTER_SECRET", "PAPYCLUSTER_SECRET_FILE", "PAPYCLUSTER_ADVERTISE_HOST",
                "PAPYCLUSTER_HOST_NAME", "PAPYCLUSTER_SHARES"):
        monkeypatch.delenv(key, raising=False)
    yield path
    for pid in agent_pids(cluster_name):
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
    for d in run_dirs(cluster_name):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def remote_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shipped-code cache of the 'remote' hosts (shared by the session's tests)."""
    return tmp_path_factory.mktemp("remote-cache")


@pytest.fixture
def local_cluster(cluster_name):
    """Two agents on this machine by ``up_local`` (no SSH; native and Windows profile);
    ``down`` must leave no agent process and no run dir."""
    from papycluster.cluster import controller
    from papycluster.cluster.state import load_state

    result = controller.up_local(2, cluster=cluster_name, profiles=["native", "windows"])
    assert result.failed == [], result.failed
    yield load_state()
    controller.down()
    assert agent_pids(cluster_name) == []
    assert run_dirs(cluster_name) == []
