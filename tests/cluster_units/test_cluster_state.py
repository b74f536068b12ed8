"""The cluster state file: typed host entries, and files written before they were typed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from papycluster.cluster.errors import ClusterError
from papycluster.cluster.state import (
    STATE_VERSION,
    ClusterState,
    HostEntry,
    SshSettings,
    load_state,
    save_state,
)

#: A state file as papycluster wrote it before HostEntry (no "version", dict entries).
OLD = {
    "cluster": "lab", "secret": "s" * 32, "hosts_file": "hosts.toml", "created": 1.0,
    "options": {"connect_timeout": 10.0},
    "hosts": {
        "alpha": {"address": "alpha.lan", "connect": "10.0.0.5", "agent_port": 18871,
                  "pid": 4242, "run_dir": "/tmp/papycluster-x", "local": False,
                  "os": "linux", "profile": "native", "workers": 4, "shares": {},
                  "python": "3.11.2", "python_cmd": "python3",
                  "ssh": {"user": "papy", "port": 2222, "key": None, "shell": None,
                          "cache_dir": None},
                  "caps": {"os": "linux", "fork": True}, "controller_address": "10.0.0.1"},
        "local1": {"address": "127.0.0.1", "connect": "127.0.0.1", "agent_port": 40000,
                   "pid": 1, "run_dir": "/tmp/r", "local": True, "os": "linux",
                   "profile": "windows", "workers": 2, "shares": {}, "python": "3.11.2",
                   "ssh": None, "caps": {}, "controller_address": "127.0.0.1"},
    },
}


def test_an_old_state_file_loads_as_typed_entries(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps(OLD))
    state = load_state(path)
    assert state is not None
    alpha = state.hosts["alpha"]
    assert isinstance(alpha, HostEntry) and alpha.agent_port == 18871 and alpha.pid == 4242
    assert alpha.ssh == SshSettings(user="papy", port=2222)
    assert alpha.caps == {"os": "linux", "fork": True} and not alpha.local
    assert state.hosts["local1"].local and state.hosts["local1"].ssh is None


def test_saved_entries_keep_the_old_keys(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(ClusterState(cluster="lab", secret="s" * 32, hosts=OLD["hosts"]), path)
    data = json.loads(path.read_text())
    assert data["version"] == STATE_VERSION
    assert data["hosts"] == OLD["hosts"]  # the same keys and values as before
    assert load_state(path).hosts == ClusterState("lab", "x", OLD["hosts"]).hosts


@pytest.mark.parametrize("change, words", [
    (lambda d: d["hosts"]["alpha"].pop("agent_port"), ["alpha", "agent_port"]),
    (lambda d: d["hosts"].__setitem__("beta", [1, 2]), ["beta", "not a JSON object"]),
    (lambda d: d["hosts"]["alpha"].__setitem__("agent_port", "x"), ["alpha", "bad entry"]),
    (lambda d: d.__setitem__("version", STATE_VERSION + 1), ["newer papycluster"]),
    (lambda d: d.pop("hosts"), ["not a papycluster state file"]),
])
def test_a_bad_state_file_names_its_culprit(tmp_path: Path, change, words) -> None:
    data = json.loads(json.dumps(OLD))
    change(data)
    path = tmp_path / "state.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ClusterError) as info:
        load_state(path)
    assert str(path) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_a_host_group_is_its_hosts_in_the_state_with_their_workers():
    from papycluster.cluster.lane import group_members
    from papycluster.cluster.state import ClusterState, HostEntry, save_state
    from papycluster.engine.lane_set import engine_of

    state = ClusterState(cluster="c", secret="s" * 32)
    state.hosts["a"] = HostEntry(address="x", connect="x", agent_port=1, pid=10,
                                 workers=3, groups=["gpu"])
    state.hosts["b"] = HostEntry(address="y", connect="y", agent_port=2, pid=11)
    save_state(state)
    assert [(h, n) for h, n, _ in group_members("all")] == [("a", 3), ("b", 2)]
    assert [(h, n) for h, n, _ in group_members("gpu")] == [("a", 3)]
    with pytest.raises(ValueError, match="no host of the running cluster is in that group"):
        group_members("tpu")
    assert engine_of("gpu") is None  # a group, not an engine
    with pytest.raises(ValueError, match="host group"):
        engine_of("not a name")
