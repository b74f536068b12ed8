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


# Issue 20, point 7: hostile or mistaken hosts files fail at parse time, clearly.
@pytest.mark.parametrize("text, where, words", [
    ('[[host]]\nname = "a"\naddress = "x"\nport = 0\n', "line 4",
     ["port 0 out of range", "1..65535"]),
    ('[defaults]\nagent_port = 0\n[[host]]\nname = "a"\naddress = "x"\n', "line 2",
     ["port 0 out of range"]),
    ('[[host]]\nname = "a"\naddress = "x"\nshares = { "bad name!" = "/x" }\n', "line 4",
     ["bad share name 'bad name!'", "[[host]] #1", "letters, digits, '_', '.' and '-'"]),
    ('[defaults]\n[defaults.shares]\n"a/b" = "/x"\n[[host]]\nname = "a"\naddress = "x"\n',
     "line 3", ["bad share name 'a/b'", "[defaults]"]),
    ('[[host]]\nname = "a"\naddress = "x"\n\n[[host]]\nname = "b"\naddress = "y"\n'
     '[host.shares]\n"" = "/x"\n', "line 9", ["bad share name ''", "[[host]] #2"]),
    ('[[host]]\nname = "a"\naddress = "x"\nbind = "0.0.0.0; rm -rf /"\n', "line 4",
     ["bad bind address"]),
])
def test_hostile_values_are_refused_at_parse_time(text, where, words):
    with pytest.raises(HostsFileError) as info:
        parse_hosts(text, "/etc/lab.toml")
    msg = str(info.value)
    assert msg.startswith("/etc/lab.toml: ") and where in msg and "fix:" in msg, msg
    for w in words:
        assert w in msg, msg


def test_deeply_nested_array_is_a_clear_error(tmp_path):
    """Before: a RecursionError traceback out of tomllib."""
    path = tmp_path / "deep.toml"
    path.write_text('[[host]]\nname = "a"\naddress = "x"\nshares = { d = "/x" }\n'
                    "junk = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(HostsFileError) as info:
        load_hosts(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: line 5: ") and "nested too deeply" in msg, msg
    # no RecursionError traceback chained to it
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_bind_key_and_share_names_that_are_fine():
    c = parse_hosts('[defaults]\nshares = { "my-data_1.v2" = "/d" }\n[[host]]\nname = "a"\n'
                    'address = "x"\nbind = "0.0.0.0"\n[[host]]\nname = "b"\naddress = "y"\n'
                    'port = 65535\n', "h.toml")
    a, b = c.hosts
    assert a.bind == "0.0.0.0" and b.bind is None and b.port == 65535
    assert a.shares == {"my-data_1.v2": "/d"}


# -- ports: the range a firewall opens ------------------------------------------------


def test_ports_of_the_cluster_apply_to_every_host_and_a_hosts_own_win():
    config = parse_hosts('[cluster]\nports = "20000-20100"\n'
                         '[[host]]\nname = "a"\naddress = "x"\n'
                         '[[host]]\nname = "b"\naddress = "y"\nports = "30000-30010"\n'
                         '[[host]]\nname = "c"\naddress = "z"\nagent_port = 20050\n')
    a, b, c = config.hosts
    assert (a.ports, a.agent_port) == ("20000-20100", 20000)  # the range's first port
    assert (b.ports, b.agent_port) == ("30000-30010", 30000)
    assert (c.ports, c.agent_port) == ("20000-20100", 20050)
    assert parse_hosts('[[host]]\nname = "a"\naddress = "x"\n').hosts[0].ports is None


@pytest.mark.parametrize("text, where, words", [
    ('[cluster]\nports = "20100-20000"\n[[host]]\nname = "a"\naddress = "x"\n',
     "line 2, [cluster] key 'ports'", ["first <= last", "20000-20100"]),
    ('[[host]]\nname = "a"\naddress = "x"\nports = "many"\n',
     "line 4, [[host]] #1 key 'ports'", ["not a range"]),
    ('[defaults]\nports = 20000\n[[host]]\nname = "a"\naddress = "x"\n',
     "line 2", ["must be a string"]),
    ('[[host]]\nname = "a"\naddress = "x"\nports = "20000-20100"\nagent_port = 18871\n',
     "line 5, [[host]] #1 key 'agent_port'", ["18871 is outside ports '20000-20100'",
                                             "leave agent_port out"]),
    ('[defaults]\nagent_port = 18871\n[cluster]\nports = "20000-20100"\n'
     '[[host]]\nname = "a"\naddress = "x"\n', "line 2, [defaults] key 'agent_port'",
     ["outside ports"]),
])
def test_a_bad_port_range_is_named_with_its_line(text, where, words):
    with pytest.raises(HostsFileError) as info:
        parse_hosts(text, "lab.toml")
    msg = str(info.value)
    assert where in msg and "fix:" in msg, msg
    for w in words:
        assert w in msg, msg


def test_encrypt_is_a_cluster_boolean_true_by_default():
    host = '[[host]]\nname = "a"\naddress = "x"\n'
    assert parse_hosts(host).encrypt is True
    assert parse_hosts("[cluster]\nencrypt = false\n" + host).encrypt is False
    with pytest.raises(HostsFileError) as info:
        parse_hosts('[cluster]\nencrypt = "no"\n' + host, "lab.toml")
    assert "line 2, [cluster] key 'encrypt'" in str(info.value)
    assert "must be true or false, not str 'no'" in str(info.value)


def test_groups_are_names_and_a_bad_one_is_named_with_its_line():
    config = parse_hosts('[defaults]\ngroups = ["big"]\n'
                         '[[host]]\nname = "a"\naddress = "x"\n'
                         '[[host]]\nname = "b"\naddress = "y"\ngroups = ["gpu", "big"]\n')
    assert [h.groups for h in config.hosts] == [["big"], ["gpu", "big"]]
    for bad in ('"all"', '"two words"', "3"):
        with pytest.raises(HostsFileError, match="line 4") as err:
            parse_hosts(f'[[host]]\nname = "a"\naddress = "x"\ngroups = [{bad}]\n')
        assert "group" in str(err.value)
