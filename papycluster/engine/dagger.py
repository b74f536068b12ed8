"""Dagger: the directed acyclic graph of pipers that makes a pipeline.

As in PaPy, an edge points from a piper to the piper it depends on (downstream to
upstream), and a pipe ``(A, B, C)`` is the dataflow A -> B -> C. Orders are
deterministic: ties are broken by branch, then by the order pipers were added, so the
same script always wires the same inboxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from papycluster.engine.piper import Piper
from papycluster.errors import DaggerError


class Dagger:
    """A graph of pipers: ``Dagger(pipers=(), pipes=(), xtras=None)``."""

    def __init__(self, pipers: Iterable[Any] = (), pipes: Iterable[Sequence[Any]] = (),
                 xtras: Sequence[Any] | None = None) -> None:
        self._upstream: dict[Piper, list[Piper]] = {}  # insertion ordered
        self.xtras: dict[Piper, Any] = {}
        self.branches: dict[Piper, Any] = {}
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

    def edges(self) -> list[tuple[Piper, Piper]]:
        return [(down, up) for down, ups in self._upstream.items() for up in ups]

    @property
    def nodes(self) -> list[Piper]:
        return list(self._upstream)

    def upstream(self, piper: Piper) -> list[Piper]:
        """The pipers ``piper`` reads from, in its inbox order."""
        return sorted(self._upstream[piper], key=self._branch_key)

    def _branch_key(self, piper: Piper) -> tuple:
        branch = self.branches.get(piper)
        return (branch is None, str(branch) if branch is not None else "")

    # -- orders --------------------------------------------------------------------

    def postorder(self) -> list[Piper]:
        """Every piper after the pipers it reads from (upstream first)."""
        order: list[Piper] = []
        done: set[Piper] = set()

        def visit(node: Piper) -> None:
            if node in done:
                return
            done.add(node)
            for up in self.upstream(node):
                visit(up)
            order.append(node)

        for node in sorted(self._upstream, key=self._branch_key):
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
        """Connect every piper to its upstream pipers (and the inputs to ``datas``)."""
        if datas is not None:
            self.connect_inputs(datas)
        for piper in self.postorder():
            if not piper.connected:
                if not self._upstream[piper]:
                    raise DaggerError(f"input {piper!r} has no data connected")
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

    def stop(self) -> None:
        """Stop every piper and its NuMap, whatever is still in flight."""
        for piper in self.postorder():
            if piper.started:
                piper.stop(forced=True)
