"""Transport negotiation: the ladder as pure functions, and its rewrite of a pipeline."""

from __future__ import annotations

import warnings

import pytest

from papycluster.cluster.negotiate import (
    MANAGER,
    choose_for_pairs,
    choose_transport,
    manager_dump,
    manager_load,
    negotiate_dagger,
)


def caps(name, os="linux", hostname=None, shares=None, shm=None, fifo=None):
    unix = os != "windows"
    shm = unix if shm is None else shm
    fifo = unix if fifo is None else fifo
    return {"name": name, "hostname": hostname or name, "os": os, "fork": unix,
            "fifo": fifo, "shm": shm,
            "shares": {k: {"path": v, "exists": True} for k, v in (shares or {}).items()},
            "transports": [t for t, ok in (("shm", shm), ("fifo", fifo), ("tcp", True),
                                           ("udp", True), ("file", True),
                                           ("manager", True)) if ok]}


A = caps("alpha", shares={"data": "/mnt/data"})
A2 = caps("alpha2", hostname="alpha")       # another agent on alpha's machine
B = caps("beta", shares={"data": "/srv/data"})
W = caps("win", os="windows", shares={"data": "\\\\filer\\data"})
W_NOSHARE = caps("win2", os="windows")


def test_same_host_prefers_shm_then_fifo():
    assert choose_transport(A, A2) == ("shm", {}, None)
    no_shm = caps("alpha3", hostname="alpha", shm=False)
    assert choose_transport(A, no_shm)[:2] == ("fifo", {})


def test_two_unix_hosts_use_tcp():
    assert choose_transport(A, B) == ("tcp", {}, None)


def test_udp_only_when_asked_and_kept_when_possible():
    assert choose_transport(A, B)[0] == "tcp"
    assert choose_transport(A, B, "udp") == ("udp", {}, None)


def test_windows_side_uses_a_common_share_each_with_its_path():
    t, options, warning = choose_transport(A, W)
    assert (t, options, warning) == ("file", {"share": "data"}, None)
    assert choose_transport(W, B)[:2] == ("file", {"share": "data"})


def test_nothing_possible_is_the_manager_path_with_a_warning():
    t, _, warning = choose_transport(A, W_NOSHARE)
    assert t == MANAGER
    assert "alpha" in warning and "win2" in warning


@pytest.mark.parametrize("requested, a, b, expect, words", [
    ("shm", A, B, "tcp", ["shm works only on one host", "alpha", "beta"]),
    ("fifo", A, W, "file", ["win runs windows without fifo"]),
    ("shm", W, A, "file", ["win runs windows without shm"]),
    ("file", A, B, "tcp", ["default share", "alpha", "beta"]),
])
def test_requested_transport_falls_back_with_a_warning_naming_both(requested, a, b, expect,
                                                                   words):
    t, _, warning = choose_transport(a, b, requested)
    assert t == expect
    assert warning is not None
    for w in words:
        assert w in warning
    assert a["name"] in warning and b["name"] in warning


def test_requested_feasible_transport_is_kept_without_warning():
    assert choose_transport(A, A2, "tcp") == ("tcp", {}, None)
    assert choose_transport(A, B, "file", share="data") == ("file", {"share": "data"}, None)
    assert choose_transport(A, W, "tcp") == ("tcp", {}, None)  # windows can do tcp


def test_missing_share_is_named():
    _, _, warning = choose_transport(A, W_NOSHARE, "file", share="data")
    assert "share 'data' is not configured on win2" in warning


def test_pairs_pick_what_works_for_all():
    # a pool on alpha and win feeding beta: tcp is out (windows), the share works
    t, options, warns = choose_for_pairs([(A, B), (W, B)])
    assert (t, options, warns) == ("file", {"share": "data"}, [])
    t, _, warns = choose_for_pairs([(A, A2), (A, B)], "shm")
    assert t == "tcp" and "alpha -> beta" in warns[0]


def test_manager_path_functions():
    assert manager_dump((b"xyz",), "tcp") == b"xyz"
    assert manager_load((b"xyz",)) == b"xyz"


# -- negotiate_dagger on a real Plumber, without remote hosts -------------------------


def test_negotiate_dagger_rewrites_dump_type(monkeypatch):
    from papycluster import NuMap, Piper, Plumber, Worker, workers
    from papycluster.cluster import negotiate

    fake = {"alpha": A, "beta": B, "win": W_NOSHARE}
    monkeypatch.setattr(negotiate._CapsCache, "get",
                        lambda self, spec: fake.get(spec) or self.cache.setdefault(
                            spec, negotiate.local_caps()))
    up = Piper(Worker((str.encode, workers.io.dump_item), ((), ("shm",))),
               parallel=NuMap(worker_num=0, worker_remote=[("alpha", 1)]))
    down = Piper(Worker((workers.io.load_item, bytes.decode), ((), ())),
                 parallel=NuMap(worker_num=0, worker_remote=[("beta", 1)]))
    up2 = Piper(Worker((str.encode, workers.io.dump_item), ((), ()), ({}, {"type": "file"})),
                parallel=NuMap(worker_num=0, worker_remote=[("alpha", 1)]))
    down2 = Piper(Worker((workers.io.load_item,)),
                  parallel=NuMap(worker_num=0, worker_remote=[("win", 1)]))
    p = Plumber()
    p.add_pipe((up, down))
    p.add_pipe((up2, down2))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages = negotiate_dagger(p)
    assert up.worker.args[1] == ("tcp",)              # shm between two hosts -> tcp
    assert up2.worker.task[1] is manager_dump         # windows without a share
    assert down2.worker.task[0] is manager_load
    assert len(messages) == 2 and len(caught) == 2
    assert any("alpha" in m and "beta" in m and "'shm'" in m for m in messages)
    assert any("win" in m and "manager" in m for m in messages)


# -- pools on an engine (Dask, Ray): the hosts its workers report ---------------------


def engine_caps(name, engine="dask scheduler tcp://10.0.0.1:8786", **kwargs):
    return dict(caps(name, **kwargs), engine=engine)


E1, E2 = engine_caps("10.0.0.2"), engine_caps("10.0.0.3")
E_SAME = engine_caps("127.0.0.1", hostname="box")
CONTROLLER = dict(caps("controller", hostname="box"))


def test_engine_workers_follow_the_ladder_by_their_hosts():
    # every worker pair of two pools on one engine: several machines -> tcp
    pairs = [(a, b) for a in (E1, E2) for b in (E1, E2)]
    assert choose_for_pairs(pairs) == ("tcp", {}, [])
    # workers and controller on one machine -> shm
    assert choose_for_pairs([(E_SAME, E_SAME), (E_SAME, CONTROLLER)]) == ("shm", {}, [])


def test_the_engine_transport_is_kept_within_one_engine_and_to_the_controller():
    pairs = [(a, b) for a in (E1, E2) for b in (E1, E2, CONTROLLER)]
    assert choose_for_pairs(pairs, "engine") == ("engine", {}, [])


@pytest.mark.parametrize("a, b, why", [
    (A, B, "alpha is not one of its workers"),
    (E1, B, "beta is not a worker of dask scheduler"),
    (E1, engine_caps("10.0.0.9", engine="ray"), "10.0.0.9 is not a worker of dask"),
])
def test_the_engine_transport_elsewhere_falls_back_naming_the_host(a, b, why):
    chosen, _, warns = choose_for_pairs([(a, b)], "engine")
    assert chosen == "tcp"
    assert len(warns) == 1 and why in warns[0] and "'engine'" in warns[0]


def test_negotiate_dagger_asks_the_engine_for_its_hosts(monkeypatch):
    from papycluster import NuMap, Piper, Plumber, Worker, hooks, workers

    asked = []

    def prober(target, **kwargs):
        asked.append(target)
        return [E1, E2]

    monkeypatch.setitem(hooks._hosts, "dask", prober)
    up = Piper(Worker((str.encode, workers.io.dump_item), ((), ("auto",))),
               parallel=NuMap(worker_remote="dask://10.0.0.1:8786", worker_num=2))
    down = Piper(Worker((workers.io.load_item, bytes.decode)),
                 parallel=NuMap(worker_remote="dask://10.0.0.1:8786", worker_num=2))
    p = Plumber()
    p.add_pipe((up, down))
    assert negotiate_dagger(p) == []
    assert up.worker.args[1] == ("tcp",)
    assert asked == ["dask://10.0.0.1:8786"]  # once per engine and negotiation


def test_an_engine_without_workers_is_a_clear_error(monkeypatch):
    from papycluster import NuMap, Piper, Plumber, Worker, hooks, workers

    monkeypatch.setitem(hooks._hosts, "ray", lambda target, **kwargs: [])
    up = Piper(Worker((str.encode, workers.io.dump_item), ((), ("tcp",))),
               parallel=NuMap(worker_remote="ray", worker_num=1, name="up"))
    down = Piper(Worker((workers.io.load_item,)))
    p = Plumber()
    p.add_pipe((up, down))
    with pytest.raises(ConnectionError, match="up: ray has no workers"):
        negotiate_dagger(p)
