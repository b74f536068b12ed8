"""Lineage: which input gave which ticket, so that data lost with its host is recomputed.

Pipers on different hosts hand large items over directly: the producer keeps the bytes
(tcp, udp, fifo, shm) and only a ticket crosses the manager. When the producer's host
dies, its tickets point at nothing. The manager still knows the input that gave each
ticket, so it does what Dask does for lost keys and Ray for lost objects: it runs the
producing piper again on that input (on a surviving worker), hands the new ticket to
the consumer and runs the consumer again. Only when no producer survives, or the
retries are used up, does the item become an error item. No duplicate reaches the
output: the recomputed result takes the place of the failed one.

Three small pieces serve a :class:`~papycluster.engine.piper.Piper`, and
:class:`Recovery` (a base of Piper) uses them:

* :class:`Inboxes` remembers each inbox the piper's pool pulled, by input position,
  until the piper has taken the result of that position;
* :class:`Lineage` remembers, for each ticket the piper gave downstream, the inbox it
  came from, until every consumer has released it;
* :func:`lost_ticket` tells whether a result is a consumer's failed load that
  recomputing can mend (:func:`papycluster.transport.base.recoverable`).

Recovery needs one result per input: pipers with ``produce``, ``spawn`` or ``repeat``
other than the default give error items instead, as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from papycluster.errors import WorkerError, WorkerLostError

log = logging.getLogger("papycluster.piper")


def is_ticket(value: Any) -> bool:
    """Is ``value`` a papycluster ticket (what ``dump_item`` returns)?"""
    return type(value) is tuple and len(value) > 3 and value[0] == "papyc"


def lost_ticket(value: Any) -> tuple | None:
    """The ticket whose load failed because its data is gone, if ``value`` says so."""
    from papycluster.transport.base import recoverable

    if isinstance(value, WorkerError) and recoverable(value.exception):
        ticket = getattr(value.exception, "ticket", None)
        if is_ticket(ticket):
            return ticket
    return None


def tickets_in(inbox: Any, consume: int) -> list[tuple[int, tuple]]:
    """``(input number, ticket)`` for each ticket in an inbox: one item per upstream
    input, or ``consume`` such lists."""
    boxes = inbox if consume > 1 else [inbox]
    return [(position, item) for box in boxes for position, item in enumerate(box)
            if is_ticket(item)]


def replace_ticket(inbox: Any, old: tuple, new: Any) -> Any:
    """A copy of ``inbox`` with ticket ``old`` replaced by ``new`` (nested lists too)."""
    if isinstance(inbox, list):
        return [replace_ticket(item, old, new) for item in inbox]
    return new if is_ticket(inbox) and inbox == old else inbox


class Inboxes:
    """Wraps a piper's inbox iterator and remembers what it yielded, by position."""

    def __init__(self, source: Iterator) -> None:
        self._source = source
        self._pulled = 0
        self._held: dict[int, Any] = {}
        self._lock = threading.Lock()

    def __iter__(self) -> Inboxes:
        return self

    def __next__(self) -> Any:
        inbox = next(self._source)
        with self._lock:
            self._held[self._pulled] = inbox
            self._pulled += 1
        return inbox

    def take(self, position: int | None) -> Any:
        """The inbox of ``position``, forgotten from now on (None if unknown)."""
        if position is None:
            return None
        with self._lock:
            return self._held.pop(position, None)


class Lineage:
    """The inbox (and the host) behind each ticket a piper handed downstream.

    An entry stays until each of the piper's ``consumers`` released it (a consumer
    releases the tickets of an inbox once it holds that inbox's final result). The
    inbox's own tickets stay with *their* producers as long as the entry lives, so that
    a chain of direct transports can be recomputed hop by hop; :meth:`release` returns
    the inbox when the entry ends, for the piper to release those in turn. A
    *recomputed* ticket has one consumer and hands nothing upstream when it ends (the
    inbox's tickets belong to the original entry).
    """

    def __init__(self, consumers: int) -> None:
        self.consumers = max(1, consumers)
        # ticket -> [inbox, source, releases left, recomputed]
        self._entries: dict[tuple, list] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, ticket: tuple, inbox: Any, source: str | None,
            recomputed: bool = False) -> None:
        with self._lock:
            self._entries[ticket] = [inbox, source, 1 if recomputed else self.consumers,
                                     recomputed]

    def get(self, ticket: tuple) -> tuple[Any, str | None] | None:
        with self._lock:
            entry = self._entries.get(ticket)
        return None if entry is None else (entry[0], entry[1])

    def release(self, ticket: tuple) -> Any:
        """One consumer is done with ``ticket``; the inbox to release upstream, if the
        entry ended and was an original one (else None)."""
        with self._lock:
            entry = self._entries.get(ticket)
            if entry is None:
                return None
            entry[2] -= 1
            if entry[2] > 0:
                return None
            del self._entries[ticket]
            return None if entry[3] else entry[0]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class Recovery:
    """What a piper does with lineage: keep it, release it, and recompute from it.

    Mixed into :class:`~papycluster.engine.piper.Piper`, whose attributes it uses:
    ``parallel``, ``worker``, ``consume``, ``tee_num``, ``name`` and the ones set here.
    """

    name: str
    consume: int
    tee_num: int
    parallel: Any
    worker: Callable
    imap_tasks: list

    def _init_recovery(self) -> None:
        self._upstreams: list[Any] = []  # per input: the upstream Piper, or None
        self._inboxes: Inboxes | None = None
        self._lineage = Lineage(1)
        #: Items of this piper recomputed because their input's data was lost.
        self.recomputed = 0
        self._on_recompute: Callable[[], None] | None = None  # set by a Plumber

    def _settle(self, index: int, ok: bool, value: Any, source: str | None
                ) -> tuple[bool, Any]:
        """Recover a result whose input's data was lost; keep the lineage of a ticket."""
        if self._inboxes is None:
            return ok, value
        inbox = self._inboxes.take(index)
        if inbox is None:
            return ok, value
        used: list[tuple] = []
        ticket = lost_ticket(value) if ok else None
        if ticket is not None:
            ok, value, source = self._recover(index, inbox, ticket, value, used)
        if ok and is_ticket(value) and self.tee_num:
            self._lineage.add(value, inbox, source)  # its inbox is released with it
            self._settle_inbox(None, used)
        else:
            self._settle_inbox(None, [t for _, t in tickets_in(inbox, self.consume)]
                               + used)
        return ok, value

    def _settle_inbox(self, index: int | None, tickets: list[tuple]) -> None:
        """This piper is done with ``tickets`` (or with the inbox of ``index``)."""
        if index is not None and self._inboxes is not None:
            inbox = self._inboxes.take(index)
            if inbox is not None:
                tickets = [t for _, t in tickets_in(inbox, self.consume)]
        for ticket in tickets:
            for up in self._upstreams:
                if up is not None:
                    up._release(ticket)

    def _release(self, ticket: tuple) -> None:
        inbox = self._lineage.release(ticket)
        if inbox is not None:
            self._settle_inbox(None, [t for _, t in tickets_in(inbox, self.consume)])

    def _producer(self, ticket: tuple) -> tuple[Recovery, str | None] | None:
        for up in self._upstreams:
            if up is not None:
                found = up._lineage.get(ticket)
                if found is not None:
                    return up, found[1]
        return None

    def _run_once(self, inbox: Any) -> tuple[bool, Any, str | None]:
        """Evaluate this piper's worker on ``inbox`` once more (on a live worker)."""
        if self.parallel:
            return self.parallel.rerun(self.imap_tasks[0].task, inbox)
        return True, self.worker(inbox), None

    def _recover(self, index: int | None, inbox: Any, ticket: tuple, error: Any,
                 used: list[tuple]) -> tuple[bool, Any, str | None]:
        """The input ``ticket`` of ``inbox`` lost its data: have its producer compute it
        again, then evaluate ``inbox`` again with the new ticket, within the retries.

        Returns the new ``(ok, value, source)``, or the original error when no producer
        can give the item again. New tickets are appended to ``used``.
        """
        retries = self.parallel.retries if self.parallel else 2
        value: Any = error
        source: str | None = None
        for _ in range(retries + 1):
            found = self._producer(ticket)
            if found is None:
                return True, value, source  # not a ticket of ours to recompute
            producer, lost_on = found
            reason = (f"{type(value.exception).__name__}: "
                      f"{getattr(value.exception, 'reason', value.exception)}")
            ok, new, new_source = producer._recompute(ticket)
            if not ok or not is_ticket(new):
                log.warning("%s: item %s: its input from %s (parked on %s) could not be "
                            "loaded (%s) nor recomputed: %s", self.name, index,
                            producer.name, lost_on or "this machine", reason, new)
                return True, value, source
            used.append(new)
            inbox = replace_ticket(inbox, ticket, new)
            ok, value, source = self._run_once(inbox)
            self.recomputed += 1
            if self._on_recompute is not None:
                self._on_recompute()
            log.warning("%s: item %s: its input from %s (parked on %s) could not be "
                        "loaded (%s); recomputed by %s on %s", self.name, index,
                        producer.name, lost_on or "this machine", reason, producer.name,
                        new_source or "this machine")
            ticket = lost_ticket(value) if ok else None
            if ticket is None:
                return ok, value, source
        return ok, value, source

    def _recompute(self, ticket: tuple) -> tuple[bool, Any, str | None]:
        """Compute the item behind ``ticket`` (one of ours) again: a new ticket."""
        found = self._lineage.get(ticket)
        if found is None:
            return False, WorkerLostError(f"{self.name}: no input is known for ticket "
                                          f"{ticket!r:.120}"), None
        inbox = found[0]
        try:
            ok, value, source = self._run_once(inbox)
        except Exception as exc:  # stopped meanwhile, or no worker left
            return False, exc, None
        lost = lost_ticket(value) if ok else None
        if lost is not None:  # our own input was lost too: one hop further up
            used: list[tuple] = []
            ok, value, source = self._recover(None, inbox, lost, value, used)
            self._settle_inbox(None, used)
        if ok and is_ticket(value):
            self._lineage.add(value, inbox, source, recomputed=True)
        return ok, value, source


