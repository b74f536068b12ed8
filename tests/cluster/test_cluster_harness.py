"""The harness itself, with real parts: sshd in every node, the shared volume, MariaDB.

These hold before papycluster touches a node, so that a failure in the cluster tests
points at papycluster, not at the harness.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import paramiko
import pymysql
import pytest

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

BUILD_SCRIPT = Path(__file__).resolve().parents[2] / "docker" / "build-images.sh"

# The first test of the session pays for the image build (if .ci/install did not) and
# for `docker-compose up`.
pytestmark = pytest.mark.timeout(900)


def test_every_node_answers_ssh_with_the_session_key(cluster: Harness) -> None:
    assert sorted(cluster.nodes) == ["node1", "node2", "node3", "win1"]
    for node in cluster.nodes.values():
        res = cluster.ssh(node, "id -un; hostname")
        assert res.rc == 0, (node.name, res)
        assert res.out.split() == [node.user, node.name]


def test_a_foreign_key_is_refused(cluster: Harness, tmp_path) -> None:
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)],
                   check=True, timeout=30)
    node = cluster.nodes["node2"]
    with pytest.raises(paramiko.AuthenticationException):
        cluster.ssh_client(node, key_path=other).close()


def test_host_keys_are_checked_and_differ_per_node(cluster: Harness) -> None:
    keys = cluster.known_hosts.read_text().split("\n")
    blobs = {line.split()[2] for line in keys if line}
    assert len(blobs) == len(cluster.nodes), "host keys must be made per container"
    # A client that does not know the key refuses the node.
    node = cluster.nodes["node1"]
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(node.ip, username=node.user, key_filename=str(node.key_path),
                       timeout=10, banner_timeout=10, auth_timeout=10,
                       look_for_keys=False, allow_agent=False)
    client.close()


def test_nodes_are_bare_python_hosts(cluster: Harness) -> None:
    probe = (
        "import importlib.util, shutil, sys\n"
        "print(sys.version_info[0], sys.version_info[1])\n"
        "print(importlib.util.find_spec('papycluster') is None)\n"
        "print(shutil.which('papycluster') is None)\n"
    )
    for node in cluster.nodes.values():
        res = cluster.ssh_python(node, probe)
        assert res.rc == 0, (node.name, res)
        major, minor, no_module, no_command = res.out.split()
        assert (int(major), int(minor)) >= (3, 9), node.name
        assert no_module == "True", f"papycluster is importable on {node.name}"
        assert no_command == "True", f"a papycluster command exists on {node.name}"


def test_hostnames_and_addresses_are_distinct(cluster: Harness) -> None:
    seen = {}
    for node in cluster.nodes.values():
        res = cluster.ssh(node, "hostname; ip -4 -o addr show scope global")
        assert res.rc == 0, (node.name, res)
        hostname, *addr_lines = res.out.splitlines()
        addresses = [line.split()[3].split("/")[0] for line in addr_lines]
        assert addresses == [node.ip], (node.name, addresses)
        seen[hostname] = node.ip
    assert sorted(seen) == sorted(cluster.nodes)
    assert len(set(seen.values())) == len(cluster.nodes)


def test_nodes_reach_each_other_on_the_private_network(cluster: Harness) -> None:
    targets = [(n.name, n.ip) for n in cluster.nodes.values()]
    probe = (
        "import socket\n"
        f"for name, ip in {targets!r}:\n"
        "    with socket.create_connection((ip, 22), timeout=5) as s:\n"
        "        s.settimeout(5)\n"
        "        print(name, s.recv(8).decode())\n"
    )
    for node in cluster.nodes.values():
        res = cluster.ssh_python(node, probe)
        assert res.rc == 0, (node.name, res)
        assert res.out.split() == [w for name, _ in targets for w in (name, "SSH-2.0-")]


def test_share_written_on_one_node_is_read_on_every_other(cluster: Harness) -> None:
    writer = cluster.nodes["node1"]
    name = f"probe-{secrets.token_hex(6)}"
    payload = secrets.token_hex(32)
    res = cluster.ssh(writer, f"cat > {writer.share_path}/{name}", stdin=payload.encode())
    assert res.rc == 0, res
    for node in cluster.nodes.values():
        res = cluster.ssh(node, f"cat {node.share_path}/{name}")
        assert res.rc == 0, (node.name, res)
        assert res.out == payload, node.name
    # The test machine sees the same folder (a laptop mounting the same share).
    assert (cluster.share_dir / name).read_text() == payload
    # And a file written by the Windows-profile node is seen by the Linux ones.
    win = cluster.windows_nodes[0]
    res = cluster.ssh(win, f"echo from-win > {win.share_path}/{name}.win")
    assert res.rc == 0, res
    res = cluster.ssh(cluster.nodes["node3"], f"cat /mnt/data/{name}.win")
    assert res.out.strip() == "from-win"


def test_windows_profile_node_sees_the_share_under_another_path(cluster: Harness) -> None:
    [win] = cluster.windows_nodes
    linux_paths = {n.share_path for n in cluster.linux_nodes}
    assert len(linux_paths) == 1
    [linux_path] = linux_paths
    assert win.share_path != linux_path
    res = cluster.ssh(win, f"test -d {win.share_path} && test ! -e {linux_path}")
    assert res.rc == 0, res


def test_mariadb_serves_the_test_machine(cluster: Harness) -> None:
    db = cluster.db
    conn = pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                           database=db.database, connect_timeout=10, read_timeout=30,
                           write_timeout=30)
    try:
        with conn.cursor() as cur:
            table = f"probe_{secrets.token_hex(4)}"
            cur.execute(f"CREATE TABLE {table} (k INT PRIMARY KEY, v LONGBLOB)")
            blob = secrets.token_bytes(1 << 20)
            cur.execute(f"INSERT INTO {table} VALUES (1, %s)", (blob,))
            conn.commit()
            cur.execute(f"SELECT v FROM {table} WHERE k = 1")
            assert cur.fetchone()[0] == blob
            cur.execute(f"DROP TABLE {table}")
        # The papy user is confined to its database.
        with conn.cursor() as cur, pytest.raises(pymysql.err.OperationalError):
            cur.execute("CREATE DATABASE not_papys")
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=db.host, port=db.port, user=db.user, password="wrong",
                        database=db.database, connect_timeout=10).close()


def test_mariadb_is_reachable_from_a_node(cluster: Harness) -> None:
    # The nodes have no MySQL client (they are bare): read the server greeting.
    db = cluster.db
    probe = (
        "import socket\n"
        f"with socket.create_connection(({db.host!r}, {db.port}), timeout=5) as s:\n"
        "    s.settimeout(5)\n"
        "    greeting = s.recv(256)\n"
        "print(greeting[4], b'MariaDB' in greeting)\n"
    )
    for node in (cluster.nodes["node2"], cluster.windows_nodes[0]):
        res = cluster.ssh_python(node, probe)
        assert res.rc == 0, (node.name, res)
        assert res.out.split() == ["10", "True"], (node.name, res.out)


def test_image_build_is_skipped_while_current(cluster: Harness) -> None:
    tag = subprocess.run(["bash", str(BUILD_SCRIPT), "--print-tag"], capture_output=True,
                         text=True, timeout=60, check=True).stdout.strip()
    before = cluster.docker("image", "inspect", "-f", "{{.Id}}",
                            f"papycluster-base:{tag}").stdout
    proc = subprocess.run(["bash", str(BUILD_SCRIPT)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "are current" in proc.stderr
    after = cluster.docker("image", "inspect", "-f", "{{.Id}}",
                           f"papycluster-base:{tag}").stdout
    assert before == after


def test_a_dead_sessions_project_is_removed_and_a_live_one_kept(cluster: Harness) -> None:
    from tests.cluster.harness import PROJECT_PREFIX, remove_stale_projects

    gone = subprocess.Popen(["true"])
    gone.wait(30)  # its pid now names no process
    dead, live = f"{PROJECT_PREFIX}{gone.pid}", cluster.project
    label = "com.docker.compose.project"
    image = cluster.docker("inspect", "-f", "{{.Config.Image}}",
                           cluster.nodes["node1"].container).stdout.strip()
    net = cluster.docker("network", "create", "--label", f"{label}={dead}",
                         f"{dead}_default").stdout.strip()
    box = cluster.docker("run", "-d", "--label", f"{label}={dead}", "--network", net,
                         image, "sleep", "600").stdout.strip()
    try:
        removed = remove_stale_projects()
        assert dead in removed
        assert live not in removed
        assert cluster.docker("ps", "-aq", "--filter", f"id={box}").stdout.strip() == ""
        assert cluster.docker("network", "ls", "-q", "--filter",
                              f"id={net}").stdout.strip() == ""
        for node in cluster.nodes.values():  # this session's project is untouched
            assert cluster.docker("inspect", "-f", "{{.State.Running}}",
                                  node.container).stdout.strip() == "true"
    finally:
        cluster.docker("rm", "-f", box, check=False)
        cluster.docker("network", "rm", net, check=False)


def test_the_harness_network_clashes_with_nothing(cluster: Harness) -> None:
    import ipaddress

    from tests.cluster.harness import pick_subnet, used_networks

    ours = ipaddress.IPv4Network(cluster.subnet)
    used = used_networks()
    assert ours in used  # docker knows it, so the next pick avoids it
    # only our own routes (the /24, its local and broadcast addresses) fall inside it
    assert [net for net in used if net.overlaps(ours) and not net.subnet_of(ours)] == []
    for _ in range(20):
        assert not any(pick_subnet().overlaps(net) for net in used)
