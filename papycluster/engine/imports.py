"""``imports``: PaPy's decorator that imports modules for a worker function.

Functions travel with cloudpickle, which pickles module references by name, so this
decorator is no longer needed to run a function on another host; it is kept so that
PaPy workflows run unchanged.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterable
from typing import Any


def imports(modules: Iterable[str], forgive: bool = False) -> Callable[[Callable], Callable]:
    """Import ``modules`` into the decorated function's globals, at decoration time.

    Each entry is a module name (``'os.path'`` is bound as ``path``) or
    comma-separated alternatives (``'json,simplejson'``: the first that imports).
    None importable raises ``ImportError``, or warns with ``forgive=True``.
    """

    def decorate(func: Callable) -> Callable:
        for entry in modules:
            alternatives = [name.strip() for name in entry.split(",") if name.strip()]
            module: Any = None
            for name in alternatives:
                try:
                    module = importlib.import_module(name)
                    break
                except (ImportError, AttributeError, ValueError):
                    continue
            if module is None:
                message = f"imports: none of {alternatives} could be imported"
                if not forgive:
                    raise ImportError(message)
                warnings.warn(message, stacklevel=2)
                continue
            func.__globals__[alternatives[0].split(".")[-1]] = module
        func.imports = list(modules)  # type: ignore[attr-defined]
        return func

    return decorate
