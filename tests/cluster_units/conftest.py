"""Every test here gets its own cluster state file (tests/plugins/cluster_state.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _own_cluster_state(state_file: Path) -> Path:
    """A private state file, clean papycluster variables, and no agent left after."""
    return state_file
