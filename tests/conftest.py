"""Marks every test by what it needs, from the folder it lives in.

    unit     nothing but this machine's Python (tests/engine, tests/transport,
             tests/badinput, and the tests at the top: API and errors); some of them
             start a local MariaDB server of their own (tests/transport/conftest.py)
    ssh      a real OpenSSH server on loopback and local agents (tests/cluster_ssh)
    docker   the multi-node docker harness (tests/cluster)

so that ``pytest -m unit`` is the fast loop and ``pytest -m "not docker"`` runs without
the harness. The markers are declared in pyproject.toml and pytest runs with
``--strict-markers``: a misspelt marker is an error, not a silent no-op.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent
NEEDS = {"cluster": "docker", "cluster_ssh": "ssh"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(item.path).relative_to(HERE).parts[0]
        except ValueError:
            continue
        item.add_marker(NEEDS.get(folder, "unit"))
