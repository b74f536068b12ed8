"""Three-stage pipelines whose stages run on three different docker nodes, for each
transport, and a stage on the Windows-profile node (whose pipes fall back to file)."""

from __future__ import annotations

import secrets
import warnings
from typing import TYPE_CHECKING

import pytest

from papycluster import NuMap, Piper, PiperError, Plumber, Worker, workers
from papycluster.cluster import controller
from papycluster.cluster.hosts import parse_hosts
from papycluster.cluster.state import load_state

if TYPE_CHECKING:  # the fixture comes from conftest.py
    from tests.cluster.harness import Harness

pytestmark = pytest.mark.timeout(900)

AGENT = "papycluster.cluster.agent"
N = 24


@pytest.fixture(scope="module")
def papy_up(cluster: Harness, tmp_path_factory: pytest.TempPathFactory):
    """One cluster on all four nodes for the module's pipelines; down and swept after."""
    mp = pytest.MonkeyPatch()
    state_dir = tmp_path_factory.mktemp("pipeline-state")
    mp.setenv("PAPYCLUSTER_STATE", str(state_dir / "state.json"))
    mp.delenv("PAPYCLUSTER_SECRET", raising=False)
    mp.delenv("PAPYCLUSTER_SECRET_FILE", raising=False)
    name = "p" + secrets.token_hex(4)
    text = cluster.hosts_toml(cluster_name=name)
    (state_dir / "hosts.toml").write_text(text)
    try:
        result = controller.up(parse_hosts(text, str(state_dir / "hosts.toml")))
        assert result.failed == [], result.failed
        yield name
    finally:
        try:
            if load_state(missing_ok=True) is not None:
                downs = controller.down()
                assert all(d.ok for d in downs), downs
        finally:
            for node in cluster.nodes.values():
                cluster.docker_exec(node, f"pkill -9 -f '{AGENT}'")
            mp.undo()


def three_stage(hosts: tuple[str, str, str], dump: tuple, load: tuple,
                n: int = N) -> tuple[list, int, list[str], list[Piper]]:
    """square on hosts[0] -> +1 on hosts[1] -> tag on hosts[2] -> collected here.

    ``dump``/``load`` are (function, args, kwargs) of the transport's worker functions.
    """
    # Nested functions travel by value (cloudpickle); the nodes do not have this module.
    def _first(inbox):
        value = inbox[0]
        if value == 7:
            raise ValueError("seven is refused on the first stage")
        return value * value

    def _second(inbox):
        import socket

        return (inbox[0] + 1, socket.gethostname())

    def _third(inbox):
        import socket

        value, host2 = inbox[0]
        return (value, host2, socket.gethostname())

    out: list = []

    def collect(inbox):
        out.append(inbox[0])
        return inbox[0]

    dump_f, dump_a, dump_k = dump
    load_f, load_a, load_k = load
    s1 = Piper(Worker((_first, workers.io.pickle_dumps, dump_f),
                      ((), (), dump_a), ({}, {}, dump_k)),
               parallel=NuMap(worker_num=0, worker_remote=[(hosts[0], 2)]), name="first")
    s2 = Piper(Worker((load_f, workers.io.pickle_loads, _second, workers.io.pickle_dumps,
                       dump_f),
                      (load_a, (), (), (), dump_a), (load_k, {}, {}, {}, dump_k)),
               parallel=NuMap(worker_num=0, worker_remote=[(hosts[1], 2)]), name="second")
    s3 = Piper(Worker((load_f, workers.io.pickle_loads, _third),
                      (load_a, (), ()), (load_k, {}, {})),
               parallel=NuMap(worker_num=0, worker_remote=[(hosts[2], 1)]), name="third")
    last = Piper(Worker(collect), parallel=False, name="collect")
    plumber = Plumber()
    plumber.add_pipe((s1, s2, s3, last))
    # error items skip collect's function and reach the plunger: keep them to show them
    errors: list = []
    next_item = last.next

    def recording_next(*args, **kwargs):
        item = next_item(*args, **kwargs)
        if isinstance(item, PiperError):
            errors.append(item)
        return item

    last.next = recording_next
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plumber.start([range(n)])
    try:
        plumber.run()
        assert plumber.wait(180), "the pipeline did not finish"
    finally:
        plumber.pause()
        plumber.stop()
    assert plumber.stats["items_out"] == n
    assert len(errors) == plumber.stats["errors_out"]
    if len(errors) != 1:  # one expected (item 7): show the others
        pytest.fail(f"{len(errors)} error items; the first ones:\n"
                    + "\n".join(_explain(e) for e in errors[:3]))
    return sorted(out), len(errors), [str(w.message) for w in caught], [s1, s2, s3]


def _explain(error: BaseException) -> str:
    parts = [repr(error)]
    cause = error
    while cause is not None:
        tb = getattr(cause, "remote_traceback", None)
        if tb:
            parts.append(tb)
        cause = cause.__cause__ or (cause.args[0] if cause.args and
                                    isinstance(cause.args[0], BaseException) else None)
    return "\n".join(parts)


def expected(hosts: tuple[str, str, str], n: int = N) -> list:
    return sorted((i * i + 1, hosts[1], hosts[2]) for i in range(n) if i != 7)


STREAM = ["tcp", "udp", "file"]


@pytest.mark.parametrize("transport", STREAM)
def test_three_linux_nodes_stream_transport(cluster: Harness, papy_up: str, transport: str):
    hosts = ("node1", "node2", "node3")
    kwargs = {"share": "data"} if transport == "file" else {}
    out, errors, warns, stages = three_stage(
        hosts, (workers.io.dump_item, (transport,), kwargs), (workers.io.load_item, (), {}))
    assert out == expected(hosts)
    assert errors == 1  # item 7 failed on node1: an error item, not a crash
    assert warns == []
    assert [_dump_type(s)[0] for s in stages[:2]] == [transport, transport]


def test_three_linux_nodes_mysql(cluster: Harness, papy_up: str):
    hosts = ("node1", "node2", "node3")
    db = cluster.db
    where = {"host": db.host, "port": db.port, "user": db.user, "password": db.password,
             "db": db.database}
    out, errors, warns, _ = three_stage(
        hosts,
        (workers.io.dump_db_item, ("mysql",), {"table": "harness_pipe", **where}),
        (workers.io.load_db_item, (), {"password": db.password}))
    assert out == expected(hosts)
    assert errors == 1
    # every row was consumed
    import pymysql

    conn = pymysql.connect(host=db.host, port=db.port, user=db.user, password=db.password,
                           database=db.database, connect_timeout=10, read_timeout=30)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM harness_pipe")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()


@pytest.mark.parametrize("requested", ["shm", "fifo"])
def test_same_host_transport_between_nodes_falls_back(cluster: Harness, papy_up: str,
                                                      requested: str):
    hosts = ("node1", "node2", "node3")
    out, errors, warns, stages = three_stage(
        hosts, (workers.io.dump_item, (requested,), {}), (workers.io.load_item, (), {}))
    assert out == expected(hosts)
    assert errors == 1
    assert [_dump_type(s)[0] for s in stages[:2]] == ["tcp", "tcp"]
    for a, b in (("node1", "node2"), ("node2", "node3")):
        assert any(a in w and b in w and requested in w for w in warns), (a, b, warns)


def _dump_type(stage: Piper) -> tuple[str, str | None]:
    """The transport (and share) that negotiation left in a stage's dump_item."""
    args, kwargs = stage.worker.args[-1], stage.worker.kwargs[-1]
    return kwargs.get("type", args[0] if args else None), kwargs.get("share")


@pytest.mark.parametrize("requested", ["auto", "fifo"])
def test_windows_profile_stage_falls_back_to_file(cluster: Harness, papy_up: str,
                                                  requested: str):
    hosts = ("node1", "win1", "node3")
    out, errors, warns, stages = three_stage(
        hosts, (workers.io.dump_item, (requested,), {}), (workers.io.load_item, (), {}))
    assert out == expected(hosts)
    assert errors == 1
    # Both pipes touch win1: file on the share that every node has, which win1 sees
    # under another path than node1 and node3.
    assert [_dump_type(s) for s in stages[:2]] == [("file", "data"), ("file", "data")]
    if requested == "auto":
        assert warns == []
    else:
        # one warning per pipe, naming both of its hosts and what was asked
        for a, b in (("node1", "win1"), ("win1", "node3")):
            assert any(a in w and b in w and requested in w and "windows" in w
                       for w in warns), (a, b, warns)
