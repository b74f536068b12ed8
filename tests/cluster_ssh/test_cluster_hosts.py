"""The hosts file: every documented key parses, every fault is named with its line and fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from papycluster.cluster.errors import HostsFileError
from papycluster.cluster.hosts import load_hosts, parse_hosts

ROOT = Path(__file__).resolve().parents[2]

GOOD = """\
[cluster]
name = "lab"

[defaults]
user = "papy"
workers = 3
shares = { data = "/mnt/data" }

[[host]]
name = "alpha"
address = "10.0.0.1"

[[host]]
name = "win"
address = "10.0.0.2"
os = "Windows"
workers = 1
[host.shares]
data = '\\\\filer\\data'
"""


def test_example_file_is_valid_and_documents_every_key():
    config = load_hosts(ROOT / "hosts.example.toml")
    assert [h.name for h in config.hosts] == ["alpha", "beta", "win1"]
    text = (ROOT / "hosts.example.toml").read_text()
    from papycluster.cluster import hosts as mod
    for key in [*mod._HOST_KEYS, *mod._CLUSTER_KEYS]:
        assert f"\n{key} =" in text or f"\n# {key}" in text or f"{key} = " in text, key
    win = config.host("win1")
    assert win.os == "windows" and win.shares["data"] == "\\\\filer\\data"


def test_defaults_apply_and_host_overrides():
    c = parse_hosts(GOOD, "h.toml")
    alpha, win = c.hosts
    assert (alpha.user, alpha.workers, alpha.python) == ("papy", 3, "python3")
    assert win.workers == 1 and win.os == "windows"
    assert alpha.shares == {"data": "/mnt/data"}
    assert win.shares == {"data": "\\\\filer\\data"}


@pytest.mark.parametrize("text, where, words", [
    ('[[host]]\nname = "a"\naddress = "x"\nadress2 = 1\n', "line 4", ["unknown key", "adress2"]),
    ('[[host]]\nname = "a"\naddress = "x"\nport = "22"\n', "line 4", ["must be an integer"]),
    ('[[host]]\nname = "a"\naddress = "x"\nworkers = true\n', "line 4", ["must be an integer"]),
    ('[[host]]\nname = "a"\naddress = "x"\n\n[[host]]\nname = "a"\naddress = "y"\n',
     "line 6", ["duplicate host name 'a'"]),
    ('[[host]]\nname = "a"\n', "line 1", ["missing 'address'"]),
    ('[[host]]\naddress = "a"\n', "line 1", ["missing 'name'"]),
    ('[cluster]\nnmae = "x"\n[[host]]\nname = "a"\naddress = "x"\n', "line 2",
     ["unknown key", "'nmae'", "did you mean 'name'"]),
    ('[defaults]\nport = 70000\n[[host]]\nname = "a"\naddress = "x"\n', "line 2",
     ["out of range"]),
    ('[[host]]\nname = "a"\naddress = "x"\nos = "plan9"\n', "line 4", ["unknown OS"]),
    ('[[host]]\nname = "a"\naddress = "x"\nshares = { d = 3 }\n', "line 4",
     ["share path must be a string"]),
    ('[[host]]\nname = "a b"\naddress = "x"\n', "line 2", ["bad host name"]),
])
def test_faults_name_file_line_and_fix(text, where, words):
    with pytest.raises(HostsFileError) as info:
        parse_hosts(text, "/etc/lab.toml")
    msg = str(info.value)
    assert msg.startswith("/etc/lab.toml: ")
    assert where in msg
    assert "fix:" in msg
    for w in words:
        assert w in msg


def test_bad_toml_names_the_line():
    with pytest.raises(HostsFileError) as info:
        parse_hosts('[[host]]\nname = "a"\naddress = 10.0.0.1.5\n', "x.toml")
    assert "not valid TOML" in str(info.value) and "line 3" in str(info.value)


def test_no_hosts_and_unknown_table():
    with pytest.raises(HostsFileError, match="no hosts"):
        parse_hosts('[cluster]\nname = "x"\n', "x.toml")
    with pytest.raises(HostsFileError, match="unknown table"):
        parse_hosts('[hosts]\nname = "x"\n', "x.toml")


def test_missing_file(tmp_path):
    with pytest.raises(HostsFileError, match="no such file"):
        load_hosts(tmp_path / "nope.toml")
