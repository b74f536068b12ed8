"""Worker: a composition of worker functions, evaluated as one call.

``Worker((f, g, h), ((), (10,), ()))`` computes ``h((g((f(inbox),), 10),))``: each
function takes the inbox (a sequence with one item per upstream piper) and returns one
value, which becomes the next function's ``inbox[0]``. An exception never escapes: it
becomes a :class:`WorkerError` value naming the function, the inbox and the traceback,
so an error is an item of the output stream, as in PaPy.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from papycluster.errors import PiperError, WorkerError


def _as_arguments(arguments: Any) -> tuple:
    """One function's argument tuple; a bare string (the seed's ``('tcp')``) is one."""
    if arguments is None:
        return ()
    if isinstance(arguments, str | bytes) or not isinstance(arguments, Iterable):
        return (arguments,)
    return tuple(arguments)


class Worker:
    """A composed worker function with per-function positional and keyword arguments.

    ``functions`` is a function, a Worker (copied), or a sequence of functions and
    Workers (concatenated). ``arguments`` and ``kwargs`` give one entry per function.
    """

    def __init__(self, functions: Callable | Worker | Sequence[Callable | Worker],
                 arguments: Any = None, kwargs: Any = None, name: str | None = None
                 ) -> None:
        task: list[Callable] = []
        args: list[tuple] = []
        kws: list[dict] = []
        if isinstance(functions, Worker):
            task, args, kws = list(functions.task), list(functions.args), list(
                functions.kwargs)
        elif callable(functions):
            task = [functions]
            args = [_as_arguments(arguments)]
            kws = [dict(kwargs or {})]
        elif isinstance(functions, Iterable) and not isinstance(functions, str | bytes):
            functions = list(functions)
            per_args = list(arguments) if arguments is not None else [()] * len(functions)
            per_kwargs = list(kwargs) if kwargs is not None else [{}] * len(functions)
            if len(per_args) != len(functions) or len(per_kwargs) != len(functions):
                raise TypeError(f"Worker: {len(functions)} functions but "
                                f"{len(per_args)} argument and {len(per_kwargs)} kwargs "
                                "entries")
            for function, a, k in zip(functions, per_args, per_kwargs, strict=True):
                if isinstance(function, Worker):
                    task += function.task
                    args += function.args
                    kws += function.kwargs
                elif callable(function):
                    task.append(function)
                    args.append(_as_arguments(a))
                    if k is not None and not isinstance(k, dict):
                        raise TypeError(f"Worker: kwargs for {function!r} must be a dict, "
                                        f"not {k!r}")
                    kws.append(dict(k or {}))
                else:
                    raise TypeError(f"Worker: {function!r} is neither a function nor a "
                                    "Worker")
        else:
            raise TypeError(f"Worker: {functions!r} is neither a function, a Worker nor "
                            "a sequence of them")
        if not task:
            raise TypeError("Worker: no function given")
        self.task: tuple[Callable, ...] = tuple(task)
        self.args: tuple[tuple, ...] = tuple(args)
        self.kwargs: tuple[dict, ...] = tuple(kws)
        self.__name__ = ">".join(getattr(f, "__name__", type(f).__name__) for f in task)
        self.name = name or f"{self.__name__}_{id(self)}"

    def __repr__(self) -> str:
        return f"Worker({self.__name__})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Worker):
            return NotImplemented
        return (self.task, self.args, self.kwargs) == (other.task, other.args, other.kwargs)

    __hash__ = None  # type: ignore[assignment]  # mutable, compared by value (as PaPy)

    def __call__(self, inbox: Sequence) -> Any:
        """Evaluate the composition on ``inbox``; errors are returned, not raised.

        If the inbox holds errors from upstream (also one level down, as with
        ``consume > 1``), no function is called and a ``PiperError`` of them is returned.
        """
        errors = _upstream_errors(inbox)
        if errors:
            return PiperError(*errors)
        box = inbox
        function: Callable = self.task[0]
        try:
            for function, args, kwargs in zip(self.task, self.args, self.kwargs,
                                              strict=True):
                box = (function(box, *args, **kwargs),)
        except Exception as exc:
            name = getattr(function, "__name__", repr(function))
            return WorkerError(exc, name, inbox, "".join(traceback.format_exception(exc)))
        return box[0]


    @property
    def can_prefetch(self) -> bool:
        """Does the first function know how to start its work early (``prefetch``)?"""
        return hasattr(self.task[0], "prefetch")

    def prefetch(self, inbox: Sequence) -> None:
        """Let the first function start fetching what it will need for ``inbox``.

        A worker process calls this for a tasklet that waits behind the one it runs
        (see ``engine.process.serve``), so that, for example, ``workers.io.load_item``
        transfers the next item while this one is computed. Functions without a
        ``prefetch`` attribute are left alone. Never raises: the real call reports
        every error, as it would without a prefetch.
        """
        hook = getattr(self.task[0], "prefetch", None)
        if hook is None or _upstream_errors(inbox):
            return
        try:
            hook(inbox, *self.args[0], **self.kwargs[0])
        except Exception:
            pass


def _upstream_errors(inbox: Any) -> list:
    if not isinstance(inbox, list | tuple):
        return []
    errors = [item for item in inbox if isinstance(item, PiperError)]
    if not errors:
        for item in inbox:
            if isinstance(item, list | tuple):
                errors += [sub for sub in item if isinstance(sub, PiperError)]
    return errors
