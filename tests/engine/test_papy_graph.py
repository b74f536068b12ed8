"""PaPy's graph API of a Dagger (its DictGraph), and PaPy's orders (ported from PaPy
1.0.8's test_core; issue 16 point 4 and issue 13 point 8)."""

from __future__ import annotations

import functools
import logging
import random

import pytest

from papycluster import Dagger, DaggerError, NuMap, Piper, Plumber, Worker, workers


def power2(inbox):
    return inbox[0] * inbox[0]


def mul2(inbox):
    return 2 * inbox[0]


def sumof2(inbox):
    return inbox[0] + inbox[1]


def sumof3(inbox):
    return inbox[0] + inbox[1] + inbox[2]


def pair(inbox):
    return tuple(inbox)


def keep(inbox, sink):
    sink.append(inbox[0])
    return inbox[0]


def test_nodes_and_edges_are_methods():
    pwr, dbl, last = Piper(power2), Piper(mul2), Piper([power2, mul2])
    dag = Dagger((dbl, pwr))
    assert len(dag.nodes()) == 2 and dag.nodes() == [dbl, pwr]
    assert dag.resolve(id(pwr)) is pwr
    dag = Dagger()
    dag.add_pipe((pwr, dbl))
    assert len(dag.nodes()) == 2 and dag.edges() == [(dbl, pwr)]
    dag.add_pipe((dbl, last))
    assert len(dag.nodes()) == 3 and len(dag.edges()) == 2
    assert dag.edges([last]) == [(last, dbl)]
    assert len(dag.deep_nodes(last)) == 2
    dag.del_pipers(dag.nodes()[::-1])
    assert dag.nodes() == [] and len(dag) == 0
    assert isinstance(dag.log, logging.Logger)


def test_a_pipers_node_has_its_branch_and_upstream_pipers():
    piper = Piper(power2, branch="the_new_b")
    dag = Dagger()
    dag.add_piper(piper)
    assert piper.branch == "the_new_b" and dag[piper].branch == "the_new_b"
    assert dag[id(piper)].branch == "the_new_b"
    dbl = Piper(mul2)
    dag.add_pipe((piper, dbl))
    assert dag[dbl].nodes() == [piper] and piper in dag[dbl]
    assert dag[piper].nodes() == []
    dag[dbl].branch = "z"
    assert dag.branches[dbl] == "z"
    with pytest.raises(DaggerError):
        dag[Piper(mul2)]


def test_cmp_branch_puts_the_higher_branch_first():
    p2 = Piper(workers.ipasser, branch=2)
    p1 = Piper(workers.ipasser, branch=1)
    dag = Dagger()
    dag.add_piper(p1)
    dag.add_piper(p2)
    assert sorted([p1, p2], key=functools.cmp_to_key(dag.cmp_branch)) == [p2, p1]
    # Python 2's order across types: None < numbers < other types by name
    none, text = Piper(workers.ipasser), Piper(workers.ipasser, branch="a")
    dag.add_pipers([none, text])
    ranked = sorted([none, p1, text, p2], key=functools.cmp_to_key(dag.cmp_branch))
    assert ranked == [text, p2, p1, none]


def test_children_after_parents_and_postorder():
    dag = Dagger()
    dbl1, dbl2, total = Piper(mul2), Piper(mul2), Piper(sumof2)
    dag.add_pipe((dbl1, dbl2))
    dag.add_pipe((dbl1, total))
    dag.add_pipe((dbl2, total))
    dag.connect()  # no data yet: connects the inner pipes, as PaPy does
    assert total.connected and dbl2.connected and not dbl1.connected
    inputs = dag[total].nodes()
    ordered = [p for p in dag.postorder() if p in inputs]
    ordered.sort(key=functools.cmp_to_key(dag.children_after_parents))
    assert ordered == [dbl2, dbl1]
    assert dag.upstream(total) == [dbl2, dbl1]  # the inbox order connect() used


@pytest.mark.parametrize("branches", [(None, None), ("a", "b")])
def test_pipers_below_a_fork_follow_their_parent(branches):
    dag = Dagger()
    dbl1 = Piper(mul2, name="1")
    dbl2a = Piper(mul2, name="2a", branch=branches[0])
    dbl2b = Piper(mul2, name="2b", branch=branches[1])
    total = Piper(sumof3, name="sum")
    for pipe in ((dbl1, dbl2a), (dbl1, dbl2b), (dbl1, total), (dbl2a, total),
                 (dbl2b, total)):
        dag.add_pipe(pipe)
    postorder = dag.postorder()
    assert postorder == [dbl1, dbl2a, dbl2b, total]
    inputs = dag[total].nodes()
    ordered = [p for p in postorder if p in inputs]
    ordered.sort(key=functools.cmp_to_key(dag.children_after_parents))
    assert ordered[0:2] == postorder[1:3]


def test_below_a_fork_branches_sort_ascending_whatever_the_insertion_order():
    src = Piper(mul2, name="src")
    b, a = Piper(mul2, name="b", branch="b"), Piper(mul2, name="a", branch="a")
    sink = Piper(pair, name="sink")
    dag = Dagger(pipes=[(src, b, sink), (src, a, sink)])
    assert dag.postorder() == [src, a, b, sink]
    assert dag.upstream(sink) == [a, b]


@pytest.mark.parametrize("first", ["tail", "head"])
def test_inputs_sort_by_descending_branch(first):
    tail, head, merged = Piper(mul2), Piper(power2), Piper(pair)
    dag = Dagger()
    pipes = {"tail": (tail, merged), "head": (head, merged)}
    second = "head" if first == "tail" else "tail"
    dag.add_pipe(pipes[first], branch=first)
    dag.add_pipe(pipes[second], branch=second)
    assert dag.get_inputs() == [tail, head]
    assert dag.upstream(merged) == [tail, head]
    branches = Dagger(pipers=[Piper(mul2, branch=1), Piper(mul2, branch=2)])
    assert [p.branch for p in branches.get_inputs()] == [2, 1]


@pytest.mark.parametrize("first", ["tail", "head"])
def test_the_highest_branch_takes_the_first_data(first):
    out: list = []
    tail, head = Piper(mul2), Piper(power2)
    merged = Piper(pair)
    last = Piper(Worker(keep, (out,)))
    plumber = Plumber()
    pipes = {"tail": (tail, merged), "head": (head, merged)}
    second = "head" if first == "tail" else "tail"
    plumber.add_pipe(pipes[first], branch=first)
    plumber.add_pipe(pipes[second], branch=second)
    plumber.add_pipe((merged, last))
    plumber.start([[1, 2], [10, 20]])  # datas[0] goes to tail, the highest branch
    plumber.run()
    assert plumber.wait(60)
    plumber.stop()
    assert out == [(2, 100), (4, 400)]


def test_orders_are_deterministic():
    def build():
        a, b, c, d, e = (Piper(mul2, name=n) for n in "abcde")
        return Dagger(pipes=[(a, c), (b, c), (c, d), (a, e), (e, d)])

    first, again = build(), build()
    names = [p.name for p in first.postorder()]
    # what PaPy's DFS and "earthworm" passes give for this graph, on every run
    assert names == [p.name for p in again.postorder()] == ["a", "e", "b", "c", "d"]
    position = {n: i for i, n in enumerate(names)}
    for down, up in first.edges():
        assert position[up.name] < position[down.name]


def test_connect_wires_inner_pipes_and_inputs_come_later():
    for par in (False, NuMap(worker_type="thread", worker_num=2)):
        dag = Dagger()
        pwr, dbl = Piper(power2, parallel=par), Piper(mul2, parallel=par)
        dag.add_pipe((pwr, dbl))
        pwr([[1, 2, 3, 4]])
        dag.connect()
        pwr.start(stages=(0, 1))
        dbl.start(stages=(0, 1))
        pwr.start(stages=(2,))
        dbl.start(stages=(2,))
        assert list(dbl) == [2, 8, 18, 32]
        if par:
            par.stop(ends=[1])


def test_connect_inputs_then_disconnect_frees_the_numap():
    par = NuMap(worker_type="thread", worker_num=2)
    dag = Dagger()
    pwr, dbl = Piper(power2, parallel=par), Piper(mul2, parallel=par)
    pwrdbl = Piper([power2, mul2])
    dag.add_pipe((pwr, dbl))
    dag.add_piper(pwrdbl)
    dag.connect_inputs([[1, 2, 3], [4, 5, 6]])
    dag.connect()
    dag.disconnect()
    assert not (pwr.connected or dbl.connected or pwrdbl.connected)
    assert par._tasks == []


@pytest.mark.timeout(120)
def test_a_diamond_on_random_numaps_starts_and_stops():
    rng = random.Random(16)
    for items in (0, 1, 5):
        imaps = [NuMap(worker_type="thread", worker_num=2) for _ in range(4)]
        pwr = Piper(power2, parallel=rng.choice(imaps))
        dbl_3 = Piper(mul2, parallel=rng.choice(imaps))
        dbl_4 = Piper(mul2, parallel=rng.choice(imaps))
        sum_2 = Piper(sumof2, parallel=rng.choice(imaps))
        dag = Dagger()
        for pipe in ((pwr, dbl_3), (pwr, dbl_4), (dbl_3, sum_2), (dbl_4, sum_2)):
            dag.add_pipe(pipe)
        dag.connect([range(items)])
        dag.start()
        assert list(sum_2) == [(i ** 2) * 4 for i in range(items)]
        dag.stop()
        dag.disconnect()
        assert all(not m._started and m._tasks == [] for m in imaps)
