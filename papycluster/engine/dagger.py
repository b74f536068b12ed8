"""Dagger: the directed acyclic graph of pipers that makes a pipeline.

As in PaPy, an edge points from a piper to the piper it depends on (downstream to
upstream), and a pipe ``(A, B, C)`` is the dataflow A -> B -> C. The graph API is
PaPy's ``DictGraph``: ``nodes()``, ``edges()``, ``dag[piper]`` (the piper's node, with
its ``branch``, ``xtra`` and upstream ``nodes()``), ``postorder()`` and the cmp
functions ``cmp_branch`` and ``children_after_parents``.

Orders follow PaPy's rules and are deterministic, so the same script always wires the
same inboxes:

* input pipers sort by *descending* branch: the highest branch is ``get_inputs()[0]``
  and takes ``datas[0]``;
* every other piper comes right after the last of the pipers it reads from (PaPy's
  "earthworm" pass); pipers placed after the same piper (below a fork) sort by
  *ascending* branch;
* a fan-in inbox lists its upstream pipers in that order, a piper downstream of
  another before it (``children_after_parents``).

Ties (equal or no branches) keep the order the pipers were added in, where PaPy's
order depended on dictionary order.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from papycluster.engine.piper import Piper
from papycluster.errors import DaggerError

log = logging.getLogger("papycluster.dagger")


class Dagger:
    """A graph of pipers: ``Dagger(pipers=(), pipes=(), xtras=None)``."""

    def __init__(self, pipers: Iterable[Any] = (), pipes: Iterable[Sequence[Any]] = (),
                 xtras: Sequence[Any] | None = None) -> None:
        self._upstream: dict[Piper, list[Piper]] = {}  # insertion ordered
        self.xtras: dict[Piper, Any] = {}
        self.branches: dict[Piper, Any] = {}
        self.log = log
        pipers = list(pipers)
        xtras = list(xtras) if xtras is not None else [None] * len(pipers)
        if len(xtras) != len(pipers):
            raise DaggerError(f"Dagger: {len(pipers)} pipers but {len(xtras)} xtras")
        for piper, xtra in zip(pipers, xtras, strict=True):
            self.add_piper(piper, xtra)
        self.add_pipes(pipes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self._upstream)} pipers)"

    def __len__(self) -> int:
        return len(self._upstream)

    def __iter__(self):  # noqa: ANN204
        return iter(self._upstream)

    def __contains__(self, piper: object) -> bool:
        return piper in self._upstream

    def __getitem__(self, piper: Any) -> DaggerNode:
        """The node of ``piper`` (or of the piper whose ``id()`` it is), as PaPy's."""
        return DaggerNode(self, self.resolve(piper))

    # -- nodes ---------------------------------------------------------------------

    def resolve(self, piper: Any, forgive: bool = False) -> Piper | None:
        """The piper itself, or the piper whose ``id()`` is ``piper``."""
        if isinstance(piper, Piper) and piper in self._upstream:
            return piper
        if isinstance(piper, int):
            for node in self._upstream:
                if id(node) == piper:
                    return node
        if forgive:
            return None
        raise DaggerError(f"{piper!r} is not a piper of this {type(self).__name__}")

    def add_piper(self, piper: Any, xtra: Any = None, create: bool = True,
                  branch: Any = None) -> tuple[bool, Piper]:
        """Add a piper (made from a worker or function if ``create``): ``(created, piper)``."""
        found = self.resolve(piper, forgive=True)
        if found is not None:
            return False, found
        if not isinstance(piper, Piper):
            if not create:
                raise DaggerError(f"{piper!r} is not a Piper (and create=False)")
            piper = Piper(piper)
        self._upstream[piper] = []
        self.xtras[piper] = xtra
        self.branches[piper] = branch if branch is not None else piper.branch
        return True, piper

    def add_pipers(self, pipers: Iterable[Any], xtras: Sequence[Any] | None = None,
                   create: bool = True, branch: Any = None) -> None:
        pipers = list(pipers)
        xtras = list(xtras) if xtras is not None else [None] * len(pipers)
        for piper, xtra in zip(pipers, xtras, strict=True):
            self.add_piper(piper, xtra, create, branch)

    def del_piper(self, piper: Any, forced: bool = False) -> None:
        """Remove a piper; one that others depend on needs ``forced=True``."""
        piper = self.resolve(piper)
        dependents = self.incoming_edges(piper)
        if dependents and not forced:
            raise DaggerError(f"{piper!r} feeds {len(dependents)} piper(s); use forced=True")
        for down, _ in dependents:
            self._upstream[down].remove(piper)
        del self._upstream[piper]
        self.xtras.pop(piper, None)
        self.branches.pop(piper, None)

    def del_pipers(self, pipers: Iterable[Any], forced: bool = False) -> None:
        for piper in list(pipers):
            self.del_piper(piper, forced)

    # -- edges ---------------------------------------------------------------------

    def add_pipe(self, pipe: Sequence[Any], branch: Any = None) -> None:
        """Add the dataflow ``pipe[0] -> pipe[1] -> ...``; a cycle raises DaggerError."""
        pipers = [self.add_piper(p, branch=branch)[1] for p in pipe]
        for up, down in zip(pipers, pipers[1:], strict=False):
            if up is down or self._reaches(up, down):
                raise DaggerError(f"adding {up!r} -> {down!r} would make a cycle")
            if up not in self._upstream[down]:
                self._upstream[down].append(up)

    def add_pipes(self, pipes: Iterable[Sequence[Any]], branch: Any = None) -> None:
        for pipe in pipes:
            self.add_pipe(pipe, branch)

    def del_pipe(self, pipe: Sequence[Any], forced: bool = False) -> None:
        """Remove the edges of a pipe, and its pipers that nothing else uses."""
        pipers = [self.resolve(p) for p in pipe]
        for up, down in zip(pipers, pipers[1:], strict=False):
            if up in self._upstream[down]:
                self._upstream[down].remove(up)
        for piper in reversed(pipers):
            if not self.incoming_edges(piper) and not self._upstream[piper]:
                self.del_piper(piper, forced)

    def del_pipes(self, pipes: Iterable[Sequence[Any]], forced: bool = False) -> None:
        for pipe in list(pipes):
            self.del_pipe(pipe, forced)

    def _reaches(self, start: Piper, target: Piper) -> bool:
        """Is ``target`` upstream of ``start`` (would ``target -> start`` be a cycle)?"""
        seen, stack = set(), [start]
        while stack:
            node = stack.pop()
            if node is target:
                return True
            if node not in seen:
                seen.add(node)
                stack.extend(self._upstream[node])
        return False

    def outgoing_edges(self, piper: Piper) -> list[tuple[Piper, Piper]]:
        """``(piper, upstream)`` for each piper that ``piper`` reads from."""
        return [(piper, up) for up in self._upstream[piper]]

    def incoming_edges(self, piper: Piper) -> list[tuple[Piper, Piper]]:
        """``(downstream, piper)`` for each piper that reads from ``piper``."""
        return [(down, piper) for down, ups in self._upstream.items() if piper in ups]

    def edges(self, nodes: Iterable[Piper] | None = None) -> list[tuple[Piper, Piper]]:
        """Every edge ``(downstream, upstream)``, or those going out of ``nodes``."""
        wanted = self._upstream if nodes is None else nodes
        return [(down, up) for down in wanted for up in self._upstream[down]]

    def nodes(self) -> list[Piper]:
        """Every piper, in the order they were added."""
        return list(self._upstream)

    def iter_nodes(self) -> Iterator[Piper]:
        return iter(list(self._upstream))

    def deep_nodes(self, piper: Piper) -> list[Piper]:
        """Every piper upstream of ``piper``, however far."""
        found: list[Piper] = []
        stack = list(reversed(self._upstream[piper]))
        while stack:
            node = stack.pop()
            if node not in found:
                found.append(node)
                stack.extend(reversed(self._upstream[node]))
        return found

    def upstream(self, piper: Piper) -> list[Piper]:
        """The pipers ``piper`` reads from, in its inbox order (see the module doc)."""
        ups = self._upstream[piper]
        remaining = [p for p in self.postorder() if p in ups]
        ordered: list[Piper] = []
        while remaining:  # a stable sort by children_after_parents
            first = next(p for p in remaining
                         if not any(self.children_after_parents(p, q) > 0
                                    for q in remaining))
            ordered.append(first)
            remaining.remove(first)
        return ordered

    # -- orders --------------------------------------------------------------------

    def cmp_branch(self, piper1: Piper, piper2: Piper) -> int:
        """PaPy's cmp of two pipers by branch, *reversed*: the higher branch first.

        For ``sorted(pipers, key=functools.cmp_to_key(dag.cmp_branch))``. Branches of
        different types compare as Python 2 did: None first, then numbers, then by
        type name.
        """
        return _compare(self.branches.get(piper2), self.branches.get(piper1))

    def children_after_parents(self, piper1: Piper, piper2: Piper) -> int:
        """PaPy's cmp: 1 if ``piper1`` is upstream of ``piper2``, -1 if downstream, else 0.

        Sorting with it puts a piper that reads from another before that other one.
        """
        if piper1 in self.deep_nodes(piper2):
            return 1
        if piper2 in self.deep_nodes(piper1):
            return -1
        return 0

    def postorder(self) -> list[Piper]:
        """Every piper after the pipers it reads from (upstream first).

        Each piper hangs below the last of its upstream pipers (inputs are roots); the
        order is that tree read depth first, roots by descending branch, the pipers
        below one piper by ascending branch, ties in the order they were added.
        """
        added = {piper: i for i, piper in enumerate(self._upstream)}

        def by_branch(descending: bool) -> Callable[[Piper], Any]:
            def compare(a: Piper, b: Piper) -> int:
                order = _compare(self.branches.get(a), self.branches.get(b))
                return (-order if descending else order) or added[a] - added[b]
            return functools.cmp_to_key(compare)

        roots: list[Piper] = []
        below: dict[Piper, list[Piper]] = {piper: [] for piper in self._upstream}
        order: list[Piper] = []
        for piper in self._topological():
            ups = self._upstream[piper]
            if ups:
                anchor = max(ups, key=order.index)
                siblings, key = below[anchor], by_branch(descending=False)
            else:
                siblings, key = roots, by_branch(descending=True)
            siblings.append(piper)
            siblings.sort(key=key)
            order = _depth_first(roots, below)
        return order

    def _topological(self) -> list[Piper]:
        """Any order with every piper after its upstream pipers."""
        order: list[Piper] = []
        done: set[Piper] = set()

        def visit(node: Piper) -> None:
            if node not in done:
                done.add(node)
                for up in self._upstream[node]:
                    visit(up)
                order.append(node)

        for node in self._upstream:
            visit(node)
        return order

    def get_inputs(self) -> list[Piper]:
        """The pipers that read from no piper (they take the data), in postorder."""
        return [p for p in self.postorder() if not self._upstream[p]]

    def get_outputs(self) -> list[Piper]:
        """The pipers that no piper reads from, in postorder."""
        return [p for p in self.postorder() if not self.incoming_edges(p)]

    # -- lifecycle -----------------------------------------------------------------

    def connect_inputs(self, datas: Sequence[Iterable]) -> None:
        inputs = self.get_inputs()
        if len(datas) != len(inputs):
            raise DaggerError(f"{len(inputs)} input piper(s) but {len(datas)} data "
                              "source(s) given")
        for piper, data in zip(inputs, datas, strict=True):
            piper.connect([data])

    def connect(self, datas: Sequence[Iterable] | None = None) -> None:
        """Connect every piper to its upstream pipers (and the inputs to ``datas``).

        As in PaPy, inputs without data are left unconnected (connect them with
        ``connect_inputs`` or ``piper.connect([data])``); starting one is an error.
        """
        if datas is not None:
            self.connect_inputs(datas)
        for piper in self.postorder():
            if not piper.connected and self._upstream[piper]:
                piper.connect(self.upstream(piper))

    def disconnect(self, forced: bool = False) -> None:
        for piper in reversed(self.postorder()):
            if piper.connected:
                piper.disconnect(forced)

    def start(self) -> None:
        """Start every piper: workers first (stages 0, 1), then the feeding (stage 2)."""
        order = self.postorder()
        for piper in order:
            piper.start((0, 1))
        for piper in order:
            piper.start((2,))

    def stop(self, timeout: float | None = None, drain: bool = True) -> None:
        """Stop the pipeline as PaPy does: no item taken from the input is lost.

        The input pipers take no more data; what they took flows on to the outputs,
        whose items are read and handed to :meth:`_drained` (PaPy discarded them);
        then every piper and NuMap stops. With ``timeout`` (seconds) a drain that has
        not finished by then is given up with a warning naming the pipers still
        busy, and what is in flight is dropped. ``drain=False`` drops it at once.
        """
        pipers = self.postorder()
        for piper in self.get_inputs():
            piper._close_input()
        if drain and pipers and all(p.started for p in pipers):
            self._drain([p for p in self.get_outputs() if not p.finished], timeout)
        for piper in pipers:
            if piper.started:
                piper.stop(forced=True)
            elif piper.parallel and piper.parallel._started:
                piper.parallel.stop(forced=True)  # its start stopped half way

    def _drain(self, outputs: list[Piper], timeout: float | None) -> None:
        """Read the outputs until each ends; give up after ``timeout`` seconds."""
        abandon = threading.Event()

        def pull() -> None:
            active = list(outputs)
            while active and not abandon.is_set():
                for piper in list(active):
                    try:
                        item = piper.next()
                    except StopIteration:
                        active.remove(piper)
                        continue
                    except Exception as exc:  # a debug piper raises its error items
                        if abandon.is_set():
                            return
                        log.debug("%s raised while stopping: %r", piper.name, exc)
                        continue
                    self._drained(piper, item)

        if timeout is None:
            pull()
            return
        thread = threading.Thread(target=pull, name="papycluster-drain", daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            abandon.set()
            busy = ", ".join(p.name for p in outputs if not p.finished)
            log.warning("stopping: the items in flight did not reach the outputs within "
                        "%g s; dropping them (outputs still busy: %s)", timeout, busy)

    def _drained(self, piper: Piper, item: Any) -> None:
        """An item an output gave while the pipeline stopped (a Plumber keeps count)."""


class DaggerNode:
    """The topological node of a piper (PaPy's ``DictNode``).

    ``branch`` and ``xtra`` can be read and set; ``nodes()`` are the pipers this one
    reads from, ``deep_nodes()`` all the pipers upstream of it.
    """

    def __init__(self, dagger: Dagger, piper: Piper) -> None:
        self.dagger = dagger
        self.piper = piper

    def __repr__(self) -> str:
        return f"DaggerNode({self.piper!r}, branch={self.branch!r})"

    @property
    def branch(self) -> Any:
        return self.dagger.branches.get(self.piper)

    @branch.setter
    def branch(self, value: Any) -> None:
        self.dagger.branches[self.piper] = value

    @property
    def xtra(self) -> Any:
        return self.dagger.xtras.get(self.piper)

    @xtra.setter
    def xtra(self, value: Any) -> None:
        self.dagger.xtras[self.piper] = value

    def nodes(self) -> list[Piper]:
        return list(self.dagger._upstream[self.piper])

    def iternodes(self) -> Iterator[Piper]:
        return iter(self.nodes())

    def deep_nodes(self) -> list[Piper]:
        return self.dagger.deep_nodes(self.piper)

    def __iter__(self) -> Iterator[Piper]:
        return self.iternodes()

    def __len__(self) -> int:
        return len(self.dagger._upstream[self.piper])

    def __contains__(self, piper: object) -> bool:
        return piper in self.dagger._upstream[self.piper]


def _depth_first(roots: list[Piper], below: dict[Piper, list[Piper]]) -> list[Piper]:
    order: list[Piper] = []
    stack = list(reversed(roots))
    while stack:
        node = stack.pop()
        order.append(node)
        stack.extend(reversed(below[node]))
    return order


def _type_rank(value: Any) -> tuple[int, str]:
    if value is None:
        return (0, "")
    if isinstance(value, int | float):
        return (1, "")
    return (2, type(value).__name__)


def _compare(a: Any, b: Any) -> int:
    """Python 2's ``cmp`` for branches: None < numbers < other types (by type name)."""
    rank_a, rank_b = _type_rank(a), _type_rank(b)
    if rank_a != rank_b:
        return -1 if rank_a < rank_b else 1
    try:
        return (a > b) - (a < b)
    except TypeError:  # unorderable values of one type: by their repr
        return (repr(a) > repr(b)) - (repr(a) < repr(b))
