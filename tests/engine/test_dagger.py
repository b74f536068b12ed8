"""Dagger: graph operations, deterministic orders, cycles refused."""

from __future__ import annotations

import pytest

from papycluster import Dagger, DaggerError, Piper


def f(inbox):
    return inbox[0]


def pipers(n):
    return [Piper(f, name=f"p{i}") for i in range(n)]


def test_pipes_make_edges_from_downstream_to_upstream():
    a, b, c = pipers(3)
    dagger = Dagger()
    dagger.add_pipe((a, b, c))
    assert dagger.outgoing_edges(b) == [(b, a)]
    assert dagger.incoming_edges(b) == [(c, b)]
    assert dagger.postorder() == [a, b, c]
    assert dagger.get_inputs() == [a] and dagger.get_outputs() == [c]


def test_cycles_are_refused():
    a, b, c = pipers(3)
    dagger = Dagger(pipes=[(a, b, c)])
    with pytest.raises(DaggerError):
        dagger.add_pipe((c, a))
    with pytest.raises(DaggerError):
        dagger.add_pipe((b, b))


def test_add_piper_resolves_and_creates():
    dagger = Dagger()
    created, piper = dagger.add_piper(f)
    assert created and isinstance(piper, Piper)
    assert dagger.add_piper(piper) == (False, piper)
    assert dagger.resolve(id(piper)) is piper
    with pytest.raises(DaggerError):
        dagger.add_piper(f, create=False)
    with pytest.raises(DaggerError):
        dagger.resolve(Piper(f))


def test_del_piper_needs_force_when_others_depend_on_it():
    a, b, c = pipers(3)
    dagger = Dagger(pipes=[(a, b), (a, c)])
    with pytest.raises(DaggerError):
        dagger.del_piper(a)
    dagger.del_piper(a, forced=True)
    assert a not in dagger and dagger.get_inputs() == [b, c]
    dagger.del_pipers([b, c])
    assert len(dagger) == 0


def test_del_pipe_and_pipes():
    a, b, c, d = pipers(4)
    dagger = Dagger()
    dagger.add_pipes([(a, b), (c, d)])
    dagger.del_pipes([(c, d)])
    assert set(dagger.nodes()) == {a, b}


def test_diamond_order_is_deterministic_and_follows_insertion():
    src, left, right, sink = pipers(4)
    dagger = Dagger(pipes=[(src, left, sink), (src, right, sink)])
    order = dagger.postorder()
    assert order.index(src) < order.index(left) < order.index(sink)
    assert order.index(right) < order.index(sink)
    assert dagger.upstream(sink) == [left, right]
    again = Dagger(pipes=[(src, left, sink), (src, right, sink)])
    assert again.postorder() == order


def test_branch_orders_inputs():
    a, b = Piper(f, branch=2), Piper(f, branch=1)
    dagger = Dagger(pipers=[a, b])
    assert dagger.get_inputs() == [a, b]  # descending, as PaPy's
    with pytest.raises(DaggerError):
        Dagger(pipers=[a], xtras=[1, 2])
    assert Dagger(pipers=[a], xtras=[{"k": 1}]).xtras[a] == {"k": 1}
