"""The error types of papycluster.

PaPy's rule holds: errors are *items*, not crashes. A function that fails on an item
gives a :class:`WorkerError` in the output stream at that item's place; a piper that
cannot get a result in time gives a :class:`PiperError`. Both carry what a user needs
to find the culprit: the original exception, the function, the inbox and the
traceback text (from the remote host where the function ran, if it ran remotely).
"""

from __future__ import annotations

import multiprocessing
import traceback
from typing import Any


def _rebuild(cls: type, args: tuple, state: dict) -> BaseException:
    """Unpickle a papycluster exception without calling its ``__init__``."""
    exc = cls.__new__(cls, *args)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class PapyError(Exception):
    """Base class of every papycluster error.

    Errors cross processes and hosts (a remote worker's exception is an item of the
    output stream), so each one must survive pickle and cloudpickle whatever its
    ``__init__`` takes: the default ``BaseException.__reduce__`` calls ``cls(*args)``,
    which fails for an ``__init__`` with other parameters than ``self.args`` (a
    ``TicketError`` that could not be rebuilt on the controller once made the engine
    declare a healthy host lost). Here the instance is rebuilt from its ``args`` and its
    attributes, without calling ``__init__``.
    """

    def __reduce__(self) -> tuple:
        return _rebuild, (type(self), self.args, dict(self.__dict__))


class WorkerError(PapyError):
    """A worker function raised on an item.

    ``WorkerError(exception, function_name, inbox)`` as in PaPy; ``.exception``,
    ``.function``, ``.inbox`` and ``.traceback`` (text) give the details.
    """

    def __init__(self, exception: BaseException | None = None, function: str = "",
                 inbox: Any = None, tb: str | None = None) -> None:
        super().__init__(exception, function, inbox)
        self.exception = exception
        self.function = function
        self.inbox = inbox
        if tb is None and isinstance(exception, BaseException):
            tb = getattr(exception, "remote_traceback", None) or "".join(
                traceback.format_exception(exception))
        self.traceback = tb or ""

    def __str__(self) -> str:
        inbox = repr(self.inbox)
        if len(inbox) > 200:
            inbox = inbox[:200] + "..."
        return f"{self.function!r} failed on {inbox}: {self.exception!r}"

    def __getitem__(self, index: int) -> Any:
        """``e[0]`` is the exception, ``e[1]`` the function, ``e[2]`` the inbox (PaPy ran
        on Python 2, where exceptions indexed their ``args``)."""
        return self.args[index]


class PiperError(PapyError):
    """A piper could not produce an item: a timeout, or an upstream error.

    The first argument is the cause (a ``WorkerError``, a ``TimeoutError`` or another
    ``PiperError``); errors nest one level per hop, as in PaPy.
    """

    @property
    def cause(self) -> Any:
        return self.args[0] if self.args else None

    def root(self) -> Any:
        """The innermost cause, through nested ``PiperError``/``WorkerError``."""
        cause: Any = self
        while isinstance(cause, PiperError) and cause.args:
            cause = cause.args[0]
        if isinstance(cause, WorkerError):
            return cause.exception
        return cause

    def __getitem__(self, index: int) -> Any:
        """``e[0]`` is the cause, as in PaPy: ``err[0][0][0]`` walks PiperError ->
        PiperError -> WorkerError -> the exception."""
        return self.args[index]


class DaggerError(PapyError):
    """An invalid graph operation (a cycle, an unknown piper, a piper still in use)."""


class PlumberError(PapyError):
    """An invalid Plumber transition (run before start, stop while running, ...)."""


class NuMapTimeoutError(PapyError, TimeoutError, multiprocessing.TimeoutError):
    """``NuMap.next(timeout=...)`` found no result in time.

    It is both the builtin ``TimeoutError`` and ``multiprocessing.TimeoutError`` (what
    PaPy raised), so either ``except`` clause catches it.
    """


class RemoteError(PapyError):
    """Stands in for an exception that could not be pickled back from a worker.

    It keeps the type name, the message and the traceback text, so nothing is lost
    but the exception object itself.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "",
                 where: str = "") -> None:
        super().__init__(type_name, message, remote_traceback, where)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback
        self.where = where

    def __str__(self) -> str:
        where = f" (in {self.where})" if self.where else ""
        return f"{self.type_name}: {self.message}{where}"


class RemoteTraceback(PapyError):
    """The traceback of an exception raised in another process or on another host.

    The controller sets one as the ``__cause__`` of each exception that a process or
    remote worker sends back, so that Python prints the worker's frames first ("The
    above exception was the direct cause of the following exception"), as
    ``concurrent.futures`` does: the controller's own frames alone say nothing about
    where the user's function failed. Its text is the worker's formatted traceback,
    with the user's file names and source lines.
    """

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return '\n"""\n' + self.tb.rstrip("\n") + '\n"""'


class WorkerLostError(PapyError):
    """The worker process (or remote host) running an item died before answering."""
