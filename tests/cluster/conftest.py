"""pytest-docker fixtures of the multi-node harness (what it is: ``harness.py``).

One compose project per test session (``docker/compose.yml``). The session fixture
``cluster`` gives a :class:`~tests.cluster.harness.Harness`; ``Harness.nodes`` holds a
``Node`` per host (name, ip, user, key path, share path, profile).

Images are built by ``docker/build-images.sh`` (a no-op while they are current) before
``docker-compose up`` (``docker_setup``). The project is always taken down at the end of
the session, even when ``up`` failed half-way (``compose_guard``), and projects left
behind by a session that died (its pid is gone) are removed when the next one starts.
Without docker, every test here fails with a message that says what is missing.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator

import pytest

from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state

from .harness import (
    AGENT,
    COMPOSE_FILE,
    COMPOSE_TIMEOUT,
    PROJECT_PREFIX,
    Harness,
    HarnessError,
    attach,
    build_images,
    compose_command,
    prepare_env,
    remove_stale_projects,
    require_docker,
)


def _or_fail(func, *args):
    try:
        return func(*args)
    except HarnessError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    """``docker compose`` (plugin) where it exists, else ``docker-compose`` (v1)."""
    _or_fail(require_docker)
    return _or_fail(compose_command)


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(COMPOSE_FILE)


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    # The pid tells a later session whether this project's owner is still alive.
    return f"{PROJECT_PREFIX}{os.getpid()}"


@pytest.fixture(scope="session")
def harness_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The session's keys, share folder and subnet, exported for compose.yml."""
    _or_fail(require_docker)
    remove_stale_projects()
    env = prepare_env(tmp_path_factory.mktemp("cluster"))
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env


@pytest.fixture(scope="session")
def docker_setup(harness_env: dict[str, str]) -> list[str]:
    """Build the images if needed, then start the project."""
    tag = _or_fail(build_images)
    assert tag == harness_env["PAPY_IMAGE_TAG"], "docker/ changed during the session"
    return ["up -d --no-build"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --remove-orphans --timeout 5"]


@pytest.fixture(scope="session")
def compose_guard(harness_env: dict[str, str], docker_compose_command: str,
                  docker_compose_project_name: str) -> Iterator[None]:
    """Takes the project down even when ``up`` failed half-way (pytest-docker only
    cleans up after a successful setup); harmless after its own ``down``."""
    yield
    subprocess.run(f"{docker_compose_command} -f {COMPOSE_FILE} -p "
                   f"{docker_compose_project_name} down -v --remove-orphans --timeout 5",
                   shell=True, capture_output=True, timeout=COMPOSE_TIMEOUT + 30,
                   stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def cluster(compose_guard: None, docker_services, harness_env: dict[str, str],
            docker_compose_command: str, docker_compose_project_name: str) -> Harness:
    """The running harness, once every node's sshd and MariaDB answer."""
    return attach(docker_compose_project_name, docker_compose_command, harness_env,
                  wait=docker_services.wait_until_responsive)


@pytest.fixture
def papy(cluster: Harness, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh cluster name and state file; afterwards every node is restored, the
    cluster down, and any agent and temporary file of the node's user swept."""
    monkeypatch.setenv("PAPYCLUSTER_STATE", str(tmp_path / "state" / "state.json"))
    monkeypatch.delenv("PAPYCLUSTER_SECRET", raising=False)
    monkeypatch.delenv("PAPYCLUSTER_SECRET_FILE", raising=False)
    yield "h" + secrets.token_hex(4)
    cluster.restore()
    if load_state(missing_ok=True) is not None:
        try:
            controller.down()
        except Exception:
            pass
    for node in cluster.nodes.values():
        cluster.docker_exec(node, f"pkill -9 -f '{AGENT}'; find /tmp /var/tmp /dev/shm "
                                  f"-mindepth 1 -maxdepth 1 -user {node.user} -exec rm -rf {{}} +")


@pytest.fixture
def linux_up(cluster: Harness, papy: str, tmp_path) -> str:
    """node1, node2 and node3 up under ``papy``'s name, state and clean-up."""
    text = cluster.hosts_toml(cluster.linux_nodes, cluster_name=papy, connect_timeout=5)
    result = controller.up(parse_hosts(text, str(tmp_path / "hosts.toml")))
    assert result.failed == [], result.failed
    return papy
