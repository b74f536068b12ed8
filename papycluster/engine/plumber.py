"""Plumber: a Dagger that runs, pauses, resumes and stops a whole pipeline.

``start(datas)`` wires the pipers and starts their pools, ``run()`` starts the
*plunger* thread that pulls the output pipers (and so the whole pipeline), ``pause()``
stops pulling at a round boundary, ``run()`` goes on, ``wait()`` waits for the end,
``stop()`` ends the pools. As in PaPy the plunger discards what the output pipers
return: an output piper persists its own results (a file, a database, a transport).
The plunger counts them in ``stats``, beside ``recomputed``: the items whose input's
data was lost with its host and computed again (see ``engine.lineage``).

``stop()`` after ``pause()`` loses nothing that was taken from the input: the inputs
take no more, what they took is run through to the outputs (counted and
checkpointed like the plunger's items), then the pools end (``Dagger.stop``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from papycluster import hooks
from papycluster.engine.checkpoint import Checkpoint, pending_positions, skip_done
from papycluster.engine.dagger import Dagger
from papycluster.errors import PiperError, PlumberError

log = logging.getLogger("papycluster.plumber")

#: Error items that reach an output are logged, up to this many per run.
LOGGED_ERRORS = 5


def _describe(error: PiperError) -> str:
    """The innermost cause of a (nested) error item, with the function that failed."""
    cause: object = error
    while isinstance(cause, PiperError) and cause.args:
        cause = cause.args[0]
    return str(cause)


class Plumber(Dagger):
    """``Plumber(pipers=(), pipes=(), xtras=None, checkpoint=None)``: a runnable pipeline.

    With ``checkpoint`` (a URL or a :class:`Checkpoint`) every result reaching an
    output is stored, a new run skips what is stored, and :meth:`results` returns
    them all (see ``papycluster.engine.checkpoint``).

    ``progress`` shows a live table per piper while it runs (items done, items/s,
    errors, where it runs): True, False, a rich ``Console`` to draw on, or None (the
    default) for on when stdout is a terminal. ``start(datas, progress=...)``
    overrides it for one run.
    """

    def __init__(self, logger_options: dict | None = None,
                 checkpoint: str | Checkpoint | None = None,
                 checkpoint_name: str = "papycluster", progress: Any = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.progress = progress
        self._display: Any = None
        self.logger_options = dict(logger_options or {})
        if isinstance(checkpoint, str):
            checkpoint = Checkpoint(checkpoint, checkpoint_name)
        self.checkpoint: Checkpoint | None = checkpoint
        self._positions: list = []
        self.stats: dict[str, Any] = {}
        self._started = threading.Event()
        self._running = threading.Event()
        self._pausing = threading.Event()
        self._finished = threading.Event()
        self._plunger: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._outputs: list = []
        self._stats_lock = threading.Lock()
        self.log = log

    # -- transitions ---------------------------------------------------------------

    def start(self, datas: Sequence[Iterable],  # type: ignore[override]
              progress: Any = None) -> None:
        """Connect the inputs to ``datas`` (one iterable per input piper) and start.

        ``progress`` (True, False or a rich Console) overrides the Plumber's for this
        run (see the class docstring).
        """
        if self._started.is_set():
            raise PlumberError("start: the pipeline is already started")
        self.stats = {"start_time": time.time(), "run_time": None, "pipers_tracked": {},
                      "items_out": 0, "errors_out": 0, "recomputed": 0}
        self._failure = None
        self._finished.clear()
        self._pausing.clear()
        if self.checkpoint is not None:
            datas = self._resume(datas)
        if self._wants_negotiation():
            hooks.planner()(self)  # the cluster layer's negotiation (papycluster.hooks)
        for piper in self.postorder():
            piper._on_recompute = self._count_recompute
        try:
            self.connect(datas)
            for piper in self.nodes():
                if piper.track and piper.parallel:
                    tracked = piper.parallel._tasks_tracked
                    self.stats["pipers_tracked"][piper] = [tracked[t.task]
                                                          for t in piper.imap_tasks]
            super().start()
        except Exception:
            self._teardown(drain=False)
            raise
        self._outputs = self.get_outputs()
        self._started.set()
        self._show_progress(self.progress if progress is None else progress)

    def _show_progress(self, progress: Any) -> None:
        from papycluster.engine import progress as live

        if not live.wanted(progress):
            return
        console = None if progress is True or progress is None else progress
        pipers = self.postorder()
        self._display = live.ProgressDisplay(lambda: pipers, console=console)
        self._display.start()

    def _end_progress(self) -> None:
        display, self._display = self._display, None
        if display is not None:
            display.stop()

    def _count_recompute(self) -> None:
        with self._stats_lock:
            self.stats["recomputed"] += 1

    def _wants_negotiation(self) -> bool:
        """Pick transports for the pipes when a pool is remote or a dump says 'auto'."""
        for piper in self.nodes():
            if piper.parallel and (piper.parallel.worker_remote or piper.parallel.engine):
                return True
            for function, args, kwargs in zip(piper.worker.task, piper.worker.args,
                                               piper.worker.kwargs, strict=True):
                if getattr(function, "__name__", "") == "dump_item" and "auto" in (
                        *args[:1], kwargs.get("type")):
                    return True
        return False

    def _resume(self, datas: Sequence[Iterable]) -> list[Iterator]:
        """Skip the input positions whose results the checkpoint holds already."""
        assert self.checkpoint is not None
        for piper in self.nodes():
            if piper.consume != 1 or piper.produce != 1:
                raise PlumberError(f"a checkpoint needs pipers that take one item and give "
                                   f"one; {piper.name} has consume={piper.consume}, "
                                   f"produce={piper.produce}")
        outputs = self.get_outputs()
        done = self.checkpoint.done(len(outputs))
        self.stats["resumed"] = len(done)
        self._positions = [pending_positions(done) for _ in outputs]
        return [skip_done(data, done) for data in datas]

    def results(self, output: int = 0) -> dict[int, Any]:
        """The checkpointed results of output piper number ``output``, by input position."""
        if self.checkpoint is None:
            raise PlumberError("results: this Plumber has no checkpoint (the outputs "
                               "persist their own results, as in PaPy)")
        return self.checkpoint.results(output)

    def run(self) -> None:
        """Start (or resume) pulling items through the pipeline."""
        if not self._started.is_set():
            raise PlumberError("run: start the pipeline first")
        if self._running.is_set():
            raise PlumberError("run: already running")
        if self._finished.is_set():
            raise PlumberError("run: the pipeline has finished")
        self._pausing.clear()
        self._running.set()
        self._plunger = threading.Thread(target=self._plunge, name="papycluster-plunger",
                                         daemon=True)
        self._plunger.start()

    def pause(self) -> None:
        """Stop pulling at the next round boundary; ``run()`` resumes."""
        if not self._started.is_set():
            raise PlumberError("pause: the pipeline is not started")
        if not self._running.is_set():
            raise PlumberError("pause: the pipeline is not running")
        self._pausing.set()
        assert self._plunger is not None
        self._plunger.join()
        self._running.clear()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the end of the run: True if it finished, False on timeout.

        If pulling failed (an output piper with ``debug=True`` raised), the error is
        raised here as a ``PlumberError``.
        """
        if not self._started.is_set():
            raise PlumberError("wait: the pipeline is not started")
        finished = self._finished.wait(timeout)
        if self._failure is not None:
            raise PlumberError(f"the pipeline failed: {self._failure!r}") from self._failure
        return finished

    def stop(self, timeout: float | None = None) -> None:  # type: ignore[override]
        """End the run: stop the pools and disconnect, so the Plumber can start again.

        Allowed when paused, or when finished (PaPy's ``pause(); stop()`` and a plain
        ``stop()`` both work after ``wait()``). The items already taken from the input
        are run through to the outputs first; ``timeout`` bounds that (see
        ``Dagger.stop``).
        """
        if not self._started.is_set():
            raise PlumberError("stop: the pipeline is not started")
        if self._running.is_set():
            if not self._finished.is_set():
                raise PlumberError("stop: the pipeline is running; pause() it first")
            self._pausing.set()
            assert self._plunger is not None
            self._plunger.join()
            self._running.clear()
        self._teardown(timeout=timeout)
        if self.checkpoint is not None:
            self.checkpoint.flush()
        self.stats["run_time"] = time.time() - self.stats["start_time"]
        self._started.clear()

    def _teardown(self, timeout: float | None = None, drain: bool = True) -> None:
        try:
            super().stop(timeout=timeout, drain=drain)
        finally:
            self._end_progress()
            self.disconnect(forced=True)

    def _drained(self, piper: Any, item: Any) -> None:
        if piper in self._outputs:
            self._account(self._outputs.index(piper), piper, item)

    # -- the plunger ---------------------------------------------------------------

    def _plunge(self) -> None:
        """Pull each output piper in turn until all are exhausted or we pause."""
        outputs = [(n, p) for n, p in enumerate(self._outputs) if not p.finished]
        checkpoint = self.checkpoint
        try:
            while outputs and not self._pausing.is_set():
                for entry in list(outputs):
                    number, piper = entry
                    try:
                        item = piper.next()
                    except StopIteration:
                        outputs.remove(entry)
                        continue
                    self._account(number, piper, item)
            if checkpoint is not None:
                checkpoint.flush()
            if not outputs:
                self._end_progress()
                self._finished.set()
        except BaseException as exc:
            log.error("the plunger failed: %r", exc)
            self._failure = exc
            self._end_progress()
            self._finished.set()

    def _account(self, number: int, piper: Any, item: Any) -> None:
        """Count an item of output ``number`` and checkpoint it."""
        self.stats["items_out"] += 1
        if self.checkpoint is not None:
            position = next(self._positions[number])
            if not isinstance(item, PiperError):
                self.checkpoint.put(number, position, item)
        if isinstance(item, PiperError):
            self.stats["errors_out"] += 1
            if self.stats["errors_out"] <= LOGGED_ERRORS:
                log.warning("%s gave an error item: %s", piper.name, _describe(item))
