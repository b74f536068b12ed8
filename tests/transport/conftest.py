"""Fixtures for the transport tests: the cluster secret, a share, peers, a MariaDB.

Peers are real processes started with ``spawn`` (so nothing relies on ``fork``)
that dump or load items on request over a pipe, the way a worker process of the
engine would. The MariaDB server is a real ``mariadbd`` in a temporary datadir on a
free loopback port, started once for the package and shut down at the end.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from . import peer as peer_mod
from .peer import SECRET


@pytest.fixture(scope="package", autouse=True)
def cluster_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Set the cluster secret and a private default share for every process we start."""
    share = tmp_path_factory.mktemp("share")
    saved = {k: os.environ.get(k) for k in ("PAPYCLUSTER_SECRET", "PAPYCLUSTER_SECRET_FILE",
                                              "PAPYCLUSTER_SHARES",
                                              "PAPYCLUSTER_ADVERTISE_HOST",
                                              "PAPYCLUSTER_BIND_HOST")}
    os.environ["PAPYCLUSTER_SECRET"] = SECRET
    os.environ.pop("PAPYCLUSTER_SECRET_FILE", None)
    os.environ["PAPYCLUSTER_SHARES"] = f'{{"default": "{share}", "data": "{share}"}}'
    os.environ["PAPYCLUSTER_ADVERTISE_HOST"] = "127.0.0.1"
    os.environ.pop("PAPYCLUSTER_BIND_HOST", None)
    yield share
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="package")
def share(cluster_env: Path) -> Path:
    return cluster_env


@pytest.fixture
def peer() -> Iterator[peer_mod.Peer]:
    """A spawned process that dumps and loads items when asked."""
    p = peer_mod.Peer()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def module_peer() -> Iterator[peer_mod.Peer]:
    p = peer_mod.Peer()
    try:
        yield p
    finally:
        p.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MariaDB:
    """A throw-away mariadbd: its socket, port, database, user and password."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.datadir = base / "data"
        self.socket = str(base / "mysqld.sock")
        self.port = _free_port()
        self.database = "papytest"
        self.user = "papy"
        self.password = "papy-pw-" + os.urandom(6).hex()
        self.process: subprocess.Popen | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"host": "127.0.0.1", "port": self.port, "user": self.user,
                "password": self.password, "db": self.database}

    def start(self) -> None:
        for tool in ("mariadb-install-db", "mariadbd"):
            if shutil.which(tool) is None and not os.path.exists(f"/usr/sbin/{tool}"):
                pytest.fail(f"{tool} is not installed: the mysql transport tests need Debian's "
                            "mariadb-server (.ci/install installs it)", pytrace=False)
        mariadbd = shutil.which("mariadbd") or "/usr/sbin/mariadbd"
        install = subprocess.run(
            ["mariadb-install-db", "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            capture_output=True, text=True, timeout=120)
        if install.returncode != 0:
            pytest.fail(f"mariadb-install-db failed: {install.stderr[-2000:]}", pytrace=False)
        self.log = open(self.base / "server.log", "wb")
        self.process = subprocess.Popen(
            [mariadbd, "--no-defaults", f"--datadir={self.datadir}", f"--socket={self.socket}",
             f"--port={self.port}", "--bind-address=127.0.0.1", "--user=root",
             f"--pid-file={self.base / 'mysqld.pid'}", "--skip-log-bin",
             "--innodb-buffer-pool-size=32M", "--max-allowed-packet=64M",
             "--skip-name-resolve"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        import pymysql

        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                pytest.fail("mariadbd exited at start:\n"
                            + (self.base / "server.log").read_text()[-3000:], pytrace=False)
            try:
                conn = pymysql.connect(unix_socket=self.socket, user="root", password="",
                                       connect_timeout=2)
                break
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail("mariadbd did not answer within 60 s", pytrace=False)
                time.sleep(0.2)
        with conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE {self.database}")
            for host in ("127.0.0.1", "localhost"):
                cur.execute(f"CREATE USER '{self.user}'@'{host}' IDENTIFIED BY %s",
                            (self.password,))
                cur.execute(f"GRANT ALL ON {self.database}.* TO '{self.user}'@'{host}'")
        conn.commit()
        conn.close()

    def query(self, sql: str, args: tuple = ()) -> list:
        import pymysql

        conn = pymysql.connect(unix_socket=self.socket, user="root", password="",
                               database=self.database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, args)
                return list(cur.fetchall())
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None
        self.log.close()


@pytest.fixture(scope="package")
def mariadb() -> Iterator[MariaDB]:
    base = Path(tempfile.mkdtemp(prefix="papyc-mariadb-"))
    server = MariaDB(base)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def spawn() -> Any:
    return multiprocessing.get_context("spawn")
