"""What an engine worker runs: one tasklet of a NuMap, with the task's function cached.

The function travels as today: the task's ``remote_blob`` (cloudpickle of
``(func, args, kwargs)`` with the user's own modules by value and the source lines
for tracebacks, see ``papycluster.engine.shipping``) is put once in the engine's store
per task, and each worker process unpickles it once (keyed by the blob's digest),
not once per item.

Transports between pipers on engine workers work as between agents' workers: the
definition carries what a worker process of ours would be handed, the controller's
run secret when no cluster secret is configured (``auth.secret_for_children``; with
several hosts, configure ``PAPYCLUSTER_SECRET[_FILE]`` on the workers instead, so that
nothing secret travels in the engine), and the lane's ``setup``: a function that
readies the worker process for its engine (registers its ``engine`` transport, if it
has one) and gives the host the engine reaches this worker by, which ``tcp`` and
``udp`` tickets then name (unless the worker's ``PAPYCLUSTER_ADVERTISE_HOST`` says
otherwise). The lane's run ``tag`` names what the ``engine`` transport leaves in the
engine, so that the lane removes it when it closes.

An exception of the function is the item's result (with its traceback and where it
ran), as on papycluster's own workers, so the engine never retries a user's error:
only the loss of a worker is the engine's to retry. This module is imported on the
engine workers (papycluster must be installed there) and imports neither engine.
"""

from __future__ import annotations

import os
import pickle
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from papycluster.engine import process as proto
from papycluster.engine import shipping
from papycluster.transport import auth, tcp

#: Task functions kept per worker process (the most recently used ones).
CACHE_SIZE = 64

_functions: OrderedDict[str, tuple[Callable, tuple, dict]] = OrderedDict()
_prepared: list = []  # what prepare() last set up in this process
_running = threading.local()  # the run tag of the tasklet this thread runs


def definition(blob: bytes, setup: Callable[[], str] | None, tag: str) -> tuple:
    """What the controller puts in the engine's store for a task (see :func:`run`)."""
    return blob, auth.secret_for_children(), setup, tag


def run_tag() -> str:
    """The run tag of the lane whose tasklet this thread runs ('0' * 12 outside)."""
    return getattr(_running, "tag", "0" * 12)


def prepare(secret: bytes | None, setup: Callable[[], str] | None) -> None:
    """Set this worker process up as a worker of the controller's (once per change)."""
    if _prepared == [secret, setup]:
        return
    auth.adopt_run_secret(secret)
    if setup is not None:
        try:
            host = setup()
        except Exception:
            host = ""  # tickets keep naming loopback: right on one machine
        if host and not os.environ.get(tcp.ADVERTISE_ENV):
            os.environ[tcp.ADVERTISE_ENV] = host
    _prepared[:] = [secret, setup]


def _define(blob: bytes) -> tuple[Callable, tuple, dict]:
    """``(func, args, kwargs)`` of a task blob; a function that raises why it failed."""
    try:
        loaded = pickle.loads(blob)
        if loaded[0] == "task":  # ("task", inner, sources): see process.pickle_task
            shipping.install_sources(loaded[2])
            loaded = pickle.loads(loaded[1])
        func, args, kwargs = loaded
        return func, tuple(args), dict(kwargs)
    except Exception as exc:
        error = proto.describe_exception(exc)

        def raise_(item: Any, *args: Any, **kwargs: Any) -> Any:
            raise error

        return raise_, (), {}


def run(key: str, defined: tuple, item: Any) -> tuple[bool, Any, str]:
    """``(ok, value, host)`` of the task ``key`` (``defined`` by :func:`definition`) on
    ``item``: the host is the engine worker's, the source of the result as a remote
    worker's would be."""
    blob, secret, setup, _running.tag = defined
    prepare(secret, setup)
    entry = _functions.get(key)
    if entry is None:
        entry = _functions[key] = _define(blob)
        while len(_functions) > CACHE_SIZE:
            _functions.popitem(last=False)
    else:
        _functions.move_to_end(key)
    func, args, kwargs = entry
    ok, value = proto.call(func, args, kwargs, item)
    return ok, value, os.environ.get(proto.HOST_ENV) or socket.gethostname()
