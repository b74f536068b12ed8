"""How a piper's items are grouped and shared: zip, consume, produce, fan-out.

Why its own module: these are the counting rules of PaPy's pipers, pure functions over
iterators (and one shared buffer), with no piper state. :class:`papycluster.engine.
piper.Piper` wires them: ``zip_inputs`` takes one item from each input, ``consumer``
groups ``consume`` of them per inbox, ``chain`` reads the results round-robin as the
NuMap fed them, ``produce_blocks`` emits ``produce`` items per evaluation (always
exactly that many, error items included, so that zips downstream stay in step) and
``Fanout`` shares one output between several downstream pipers.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from itertools import islice
from typing import Any

from papycluster.errors import PiperError, WorkerError

#: How far the fastest consumer of a piper may run ahead of the slowest (items).
FANOUT_LAG = 4096


def plain_next(task: Iterator) -> Any:
    return next(task)


def zip_inputs(inputs: list[Iterator]) -> Iterator[list]:
    """One list per step, an item from each input; ends when any input ends."""
    while True:
        box = []
        for source in inputs:
            try:
                box.append(next(source))
            except StopIteration:
                return
        yield box


def consumer(zipped: Iterator[list], consume: int, stride: int = 1) -> Iterator[Any]:
    """The inbox: each zip-list, or lists of ``consume`` of them.

    Zip-lists come in blocks of ``stride * consume``; inside a block, list i takes
    items i, i + c, i + 2c, ... where c is the block's number of lists (``stride``,
    fewer in a short last block). This undoes what ``produce_blocks`` does upstream.
    """
    if consume == 1:
        yield from zipped
        return
    while True:
        block = list(islice(zipped, stride * consume))
        if not block:
            return
        columns = -(-len(block) // consume)
        for column in range(columns):
            yield block[column::columns]
        if len(block) < stride * consume:
            return


def chain(tasks: list[Iterator], stride: int, take: Callable[[Iterator], Any]
           ) -> Iterator[Any]:
    """Round-robin ``stride`` results from each task, as the NuMap fed them."""
    active = list(tasks)
    while active:
        for task in list(active):
            for _ in range(stride):
                try:
                    yield take(task)
                except StopIteration:
                    active.remove(task)
                    break


def produce_blocks(outbox: Iterator, produce: int, stride: int, name: str,
             repeat: bool = False) -> Iterator[Any]:
    """``produce`` items per result, stride-interleaved over blocks of ``stride`` results.

    Each result is unpacked into its ``produce`` items (``repeat``: repeated that many
    times); the block then yields the first item of every result, then the second of
    every result, and so on. An error stands for all the items of its result, in the
    same places. A short last block (fewer than ``stride`` results) is interleaved
    over the results it has.
    """
    while True:
        block = [unpack(result, produce, name, repeat)
                 for result in islice(outbox, stride)]
        if not block:
            return
        for position in range(produce):
            for items in block:
                yield items[position]
        if len(block) < stride:
            return


def unpack(result: Any, produce: int, name: str, repeat: bool) -> list:
    """The ``produce`` items of one result; an error item for each if it has not as many."""
    if repeat or isinstance(result, PiperError | WorkerError):
        return [result] * produce
    try:
        items = list(result)
    except TypeError as exc:
        return [PiperError(WorkerError(exc, f"{name} (produce={produce})", result))
                ] * produce
    if len(items) == produce:
        return items
    return [PiperError(WorkerError(ValueError(f"expected {produce} items, got "
                                              f"{len(items)}"),
                                   f"{name} (produce={produce})", result))] * produce


class Fanout:
    """Share one piper's output among its consumers, each reading every item once.

    One consumer at a time pulls from the piper; items stay buffered until every
    consumer has read them, and a consumer that is ``FANOUT_LAG`` items ahead of the
    slowest waits for it.
    """

    def __init__(self, source: Callable[[], Any], consumers: int) -> None:
        self.source = source
        self.cond = threading.Condition()
        self.buffer: deque = deque()
        self.base = 0  # position of buffer[0]
        self.positions = [0] * consumers
        self.pulling = False
        self.ended = False

    def get(self, consumer: int) -> Any:
        with self.cond:
            while True:
                position = self.positions[consumer]
                if position < self.base + len(self.buffer):
                    item = self.buffer[position - self.base]
                    self.positions[consumer] += 1
                    self._trim()
                    return item
                if self.ended:
                    raise StopIteration
                ahead = position - min(self.positions) >= FANOUT_LAG
                if self.pulling or ahead:
                    self.cond.wait(0.5)
                    continue
                self.pulling = True
                break
        try:
            item = self.source()
        except StopIteration:
            with self.cond:
                self.ended = True
                self.pulling = False
                self.cond.notify_all()
            raise
        except BaseException:
            with self.cond:
                self.pulling = False
                self.cond.notify_all()
            raise
        with self.cond:
            self.pulling = False
            self.buffer.append(item)
            self.positions[consumer] += 1
            self._trim()
            self.cond.notify_all()
        return item

    def _trim(self) -> None:
        low = min(self.positions)
        while self.base < low and self.buffer:
            self.buffer.popleft()
            self.base += 1
        self.cond.notify_all()
