"""The messages of the worker-process protocol (see :mod:`.process`): how tasks,
items and results are pickled, each result in its own envelope, and how an error's
traceback text from another process becomes its printed cause.

Apart from :mod:`.process` (the worker loop and its handle) because the cluster's
remote lane and the engine lanes speak the same messages without running a local
worker.
"""

from __future__ import annotations

import copyreg
import io
import os
import pickle
import socket
import traceback
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

from papycluster.engine import output, shipping
from papycluster.errors import RemoteError, RemoteTraceback, WorkerError

PROTOCOL = pickle.HIGHEST_PROTOCOL

#: Name of this host as reported in tracebacks; an agent sets it to its cluster name.
HOST_ENV = output.HOST_ENV


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` fast with the standard pickler, or with cloudpickle if it must.

    Exceptions (error items) travel as the standard pickler makes them, even when a
    library in this process registered its own reducer for them in ``copyreg``:
    importing Dask's ``distributed`` does (tblib's), and its pickles would need tblib on
    every worker, which an agent's host need not have (its worker would die on them).
    """
    try:
        table = _plain_table()
        if table is None:
            return pickle.dumps(obj, PROTOCOL)
        buffer = io.BytesIO()
        pickler = pickle.Pickler(buffer, PROTOCOL)
        pickler.dispatch_table = table
        pickler.dump(obj)
        return buffer.getvalue()
    except Exception:
        return cloudpickle.dumps(obj, PROTOCOL)


_table: list = [-1, None]  # (size of copyreg's table when looked at, the plain table)


def _plain_table() -> dict | None:
    """``copyreg``'s table without reducers of exceptions and tracebacks, or None when
    it has none (looked at again whenever its size changes)."""
    registered = copyreg.dispatch_table
    if _table[0] != len(registered):
        foreign = [k for k in list(registered) if k is types.TracebackType or (
            isinstance(k, type) and issubclass(k, BaseException))]
        _table[:] = [len(registered), {k: v for k, v in registered.items()
                                       if k not in foreign} if foreign else None]
    return _table[1]


def loads(data: bytes) -> Any:
    return pickle.loads(data)


def user_packages(obj: Any) -> set[str]:
    """Names of the imported modules that travel by value (see :mod:`.shipping`)."""
    return {m.__name__ for m in shipping.user_modules()}


def pickle_task(func: Callable, args: tuple, kwargs: dict, remote: bool = True) -> bytes:
    """``("task", cloudpickle of (func, args, kwargs), sources)``: the user's own
    modules by value
    (all of them for a ``remote`` worker, the task's own for a local one), and the
    source lines of the user's files for the worker's tracebacks (see .shipping)."""
    registered = []
    modules = shipping.user_modules() if remote else shipping.task_modules(func)
    for module in modules:
        try:
            cloudpickle.register_pickle_by_value(module)
            registered.append(module)
        except ValueError:
            pass
    try:
        inner, files = shipping.dumps((func, args, kwargs), PROTOCOL)
        return pickle.dumps(("task", inner, shipping.source_lines(files)), PROTOCOL)
    finally:
        for module in registered:
            cloudpickle.unregister_pickle_by_value(module)


def where() -> str:
    """``pid N on HOST``: where this code runs, for error messages."""
    host = os.environ.get(HOST_ENV) or socket.gethostname()
    return f"pid {os.getpid()} on {host}"


def describe_exception(exc: BaseException) -> BaseException:
    """Attach the traceback text and the place to ``exc`` so that it survives pickling."""
    tb = "".join(traceback.format_exception(exc))
    try:
        exc.remote_traceback = tb  # type: ignore[attr-defined]
        exc.add_note(f"(raised in {where()})")
    except Exception:  # exceptions with __slots__ or a read-only __dict__
        return RemoteError(type(exc).__name__, str(exc), tb, where())
    return exc


def call(func: Callable, args: tuple, kwargs: dict, item: Any) -> tuple[bool, Any]:
    """Evaluate one tasklet: ``func(item, *args, **kwargs)`` -> ``(ok, value)``."""
    try:
        return True, func(item, *args, **kwargs)
    except Exception as exc:
        return False, describe_exception(exc)


#: Types whose values are put in a result envelope as they are: their unpickling
#: cannot fail.
_PLAIN = (bytes, bytearray, str, int, float, bool, type(None))


def _envelope(task_key: Any, index: int, ok: bool, value: Any) -> tuple:
    """``(task_key, index, ok, kind, payload)`` for one result (see the module doc)."""
    if isinstance(value, _PLAIN) or (type(value) is tuple and all(
            isinstance(part, _PLAIN) for part in value)):
        return (task_key, index, ok, None, value)
    try:
        return (task_key, index, ok, type(value).__qualname__, dumps(value))
    except Exception as exc:
        if ok:
            culprit = f"result {type(value).__name__} could not be pickled: {exc!r}"
        else:
            culprit = (f"exception {type(value).__name__}({value}) could not be pickled "
                       f"({exc!r})\n" + getattr(value, "remote_traceback", ""))
        error = RemoteError("PicklingError", culprit,
                            getattr(value, "remote_traceback", ""), where())
        return (task_key, index, False, "RemoteError", dumps(error))


def encode_results(results: list[tuple[Any, int, bool, Any]]) -> bytes:
    """One message for one or more results ``(task_key, index, ok, value)``."""
    return pickle.dumps(("res", [_envelope(*r) for r in results]), PROTOCOL)


#: The message a worker process sends once, before the results of its first tasklet
#: that dumped an item (see ``transport.base.note_parked``): its pool must keep it until
#: stop(), or the items waiting in it would be gone before their loaders came.
PARKED = pickle.dumps(("parked",), PROTOCOL)


def decode_results(data: bytes, source: str = "a worker"
                   ) -> list[tuple[Any, int, bool, Any]]:
    """The results ``(task_key, index, ok, value)`` carried by one worker message.

    A message of output lines (see :mod:`.output`) is shown here and has none.

    A value that cannot be rebuilt here becomes that item's :class:`RemoteError`,
    naming its type and ``source`` (the host or process it came from).
    """
    if output.is_output(data):
        output.show(data)
        return []
    if data == PARKED:  # the pool's business (see ProcessLane), not a result
        return []
    message = loads(data)
    if message[0] != "res":
        raise ValueError(f"not a result message from {source}: {message[0]!r}")
    results = []
    for task_key, index, ok, kind, payload in message[1]:
        if kind is None:
            results.append((task_key, index, ok, payload))
            continue
        try:
            value = loads(payload)
        except Exception as exc:
            what = "exception" if not ok else "result"
            value = RemoteError(kind, f"the {what} of item {index} ({kind}) from {source} "
                                f"cannot be rebuilt here: {exc!r}", "", source)
            ok = False
        if isinstance(value, BaseException):
            attach_remote_traceback(value)
        results.append((task_key, index, ok, value))
    return results


def attach_remote_traceback(exc: BaseException) -> None:
    """Make the worker's traceback the printed cause of ``exc`` (see RemoteTraceback).

    Done where the exception arrives from another process: the traceback text it
    carries (``remote_traceback``, or a WorkerError's ``traceback``) becomes a
    :class:`RemoteTraceback` set as its ``__cause__`` (and a WorkerError's
    ``.exception``'s), unless it has a cause already.
    """
    text = getattr(exc, "remote_traceback", None)
    targets = [exc]
    if not text and isinstance(exc, WorkerError):
        text = exc.traceback
        if isinstance(exc.exception, BaseException):  # e.exception, raised by a user
            targets.append(exc.exception)
    for target in targets if text else ():
        if target.__cause__ is None:
            try:
                target.__cause__ = RemoteTraceback(text)
            except Exception:  # an exception type that refuses the attribute
                pass
