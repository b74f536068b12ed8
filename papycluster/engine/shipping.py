"""What travels with a task's function: the user's own modules and their source lines.

A worker on another host has papycluster, the standard library and what ``up``
installed there (the ``packages`` key), but not the user's script or the modules
beside it. Two things follow:

* **The user's own modules travel by value** to remote workers. The rule: a module whose file is not
  under the standard library, a ``site-packages``/``dist-packages`` directory (of any
  environment, the user site included) or papycluster itself is the user's own code;
  while a task is pickled, each such module is registered with
  ``cloudpickle.register_pickle_by_value``, so that the functions and classes of it
  that the task reaches are pickled as code, not as an import the host could not do.
  Whether a module is importable on a host cannot be known from here; this rule ships
  what is probably not there, and costs nothing for what is reached by reference.
  Local process pools ship only the task functions' own packages so (see
  :func:`task_modules`).

* **Source lines travel with the code.** A traceback names the user's file, but its
  lines are read from that file on the host that formats it, where it does not exist.
  So the lines of the files of the code that a task ships by value (collected while
  it is pickled; ``linecache``'s view on the controller: real files, and also notebook
  cells or ``exec``'d code that registered lines there) go in the task's definition,
  and the worker puts them in its own ``linecache`` before it runs the task. One
  message per task, no extra round trip, and it works on an air-gapped host; files are
  read once per task and the bytes are bounded (:data:`SOURCE_MAX` per file).

  cloudpickle (3.x) renames the file of every code object it ships to
  ``<dynamic-code>`` (to make its output deterministic), which would leave nothing to
  look the lines up by; :func:`dumps` pickles code objects with ``marshal`` instead,
  which keeps each code object's own file name. Both need the same Python minor
  version on both ends, as code shipped by value always did.
"""

from __future__ import annotations

import io
import linecache
import marshal
import os
import site
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from typing import Any

import cloudpickle

#: A file's source is shipped only up to this size (bytes), so a task stays small.
SOURCE_MAX = 1 << 20

_ROOTS: list[tuple[str, ...]] = []
_KIND: dict[tuple[str, str], bool] = {}


def _installed_roots() -> tuple[str, ...]:
    if not _ROOTS:
        paths = sysconfig.get_paths()
        roots = {os.path.realpath(paths[key]) + os.sep for key in (
            "stdlib", "platstdlib", "purelib", "platlib") if key in paths}
        try:
            roots.add(os.path.realpath(site.getusersitepackages()) + os.sep)
        except Exception:  # no user site in some embedded Pythons
            pass
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        roots.add(os.path.realpath(here) + os.sep)  # papycluster itself
        _ROOTS.append(tuple(roots))
    return _ROOTS[0]


def is_installed(path: str) -> bool:
    """Is the file at ``path`` installed code (stdlib, a site dir, papycluster)?"""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    return real.startswith(_installed_roots())


def user_modules() -> list[types.ModuleType]:
    """The imported modules that are the user's own code (see the module doc).

    ``__main__`` is left out: cloudpickle ships it by value already. Only Python
    source modules count (an extension module cannot travel as code).
    """
    found = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name == "__main__" or not isinstance(module, types.ModuleType) or not path:
            continue
        key = (name, path)
        kind = _KIND.get(key)
        if kind is None:
            kind = path.endswith(".py") and not is_installed(path)
            _KIND[key] = kind
        if kind:
            found.append(module)
    return found


def task_modules(obj: Any) -> list[types.ModuleType]:
    """The top-level packages of the task's own functions that are the user's code.

    What a *local* process pool ships by value: its workers import everything else
    as the controller does (same files, same ``sys.path``), and classes of the user's
    modules stay the very classes that items pickled by reference are rebuilt as (one
    shipped by value is a copy: ``isinstance`` would fail between the two).
    """
    found = {}
    for function in _functions(obj):
        top = (getattr(function, "__module__", None) or "").split(".")[0]
        module = sys.modules.get(top)
        path = getattr(module, "__file__", None)
        if top and top != "__main__" and module is not None and path and \
                not is_installed(path):
            found[top] = module
    return list(found.values())


def _functions(obj: Any) -> Iterator[Callable]:
    """The functions of a task: a Worker's composition, or the callable itself."""
    for function in list(getattr(obj, "task", ())) or [obj]:
        function = getattr(function, "__func__", function)  # bound methods
        if not hasattr(function, "__code__"):  # an instance with a __call__ method
            function = vars(type(function)).get("__call__", function)
        yield function


def _code_files(code: types.CodeType, into: set[str]) -> None:
    into.add(code.co_filename)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            _code_files(const, into)


def source_lines(files: set[str]) -> dict[str, list[str]]:
    """``{file name: lines}`` of the user's ``files`` (not installed code), as the
    controller's ``linecache`` has them; files over :data:`SOURCE_MAX` are left out."""
    sources = {}
    for name in sorted(files):
        if not name.startswith("<") and is_installed(name):
            continue
        lines = linecache.getlines(name)
        if lines and sum(map(len, lines)) <= SOURCE_MAX:
            sources[name] = lines
    return sources


def install_sources(sources: dict[str, list[str]]) -> None:
    """Put shipped source lines in this process's ``linecache`` (on a worker).

    The entries have no modification time, so ``linecache.checkcache`` (which a
    traceback calls) keeps them although no such file exists here; they stand for
    the code that runs, so they win over a file of that name on this host.
    """
    for name, lines in sources.items():
        linecache.cache[name] = (sum(map(len, lines)), None, list(lines), name)


class _Pickler(cloudpickle.Pickler):
    """cloudpickle, but code objects keep their file name (see the module doc), and
    the files of the code it ships by value are collected in ``files``."""

    def __init__(self, file: Any, protocol: int | None = None) -> None:
        super().__init__(file, protocol=protocol)
        self.files: set[str] = set()

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is types.CodeType:
            _code_files(obj, self.files)
            return marshal.loads, (marshal.dumps(obj),)
        return super().reducer_override(obj)


def dumps(obj: Any, protocol: int | None = None) -> tuple[bytes, set[str]]:
    """``cloudpickle.dumps(obj)`` whose shipped code keeps the user's file names, and
    the names of the files that code comes from."""
    buffer = io.BytesIO()
    pickler = _Pickler(buffer, protocol=protocol)
    pickler.dump(obj)
    return buffer.getvalue(), pickler.files
