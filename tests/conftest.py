"""Marks every test by what it needs, from the folder it lives in; loads the shared fixtures.

    unit     nothing but this machine's Python (tests/engine, tests/transport,
             tests/cluster_units, tests/badinput, and the tests at the top: API and
             errors); some of them start a local MariaDB server of their own
             (tests/transport/conftest.py)
    agents   papycluster agents started on this machine, without SSH (tests/agents)
    ssh      a real OpenSSH server on loopback, and local agents (tests/ssh)
    docker   the multi-node docker harness (tests/cluster)
    engines  Dask distributed and Ray (the test extra), run locally (tests/engines)

so that ``pytest -m unit`` is the fast loop and ``pytest -m "not docker"`` runs without
the harness. The markers are declared in pyproject.toml and pytest runs with
``--strict-markers``: a misspelt marker is an error, not a silent no-op.

The shared fixtures are plugins (tests/plugins/), loaded here for every folder rather
than found by a folder's conftest or imported by hand; their helpers are a module,
``tests.plugins.helpers``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tests.plugins.cluster_state",  # cluster_name, state_file
    "tests.plugins.sshd",           # sshd, remote_cache
    "tests.plugins.agents",         # local_cluster
]

HERE = Path(__file__).parent
NEEDS = {"cluster": "docker", "ssh": "ssh", "agents": "agents", "engines": "engines"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(item.path).relative_to(HERE).parts[0]
        except ValueError:
            continue
        item.add_marker(NEEDS.get(folder, "unit"))
