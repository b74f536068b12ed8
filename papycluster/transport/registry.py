"""The transports by name: what ``dump_item(inbox, "tcp")`` and a ticket's name find.

The built-in transports are known by module path and imported on first use, so this
module imports none of them: a transport module builds on ``base`` and never on the
registry, and the package's imports stay acyclic. A transport of one's own is added
with :func:`register`.
"""

from __future__ import annotations

import importlib
import logging
import threading

from papycluster.transport.base import OWNER_RE, Transport

log = logging.getLogger("papycluster.transport")

#: Built-in transports: name -> the module whose ``TRANSPORT`` is its instance.
BUILTIN = {
    name: f"papycluster.transport.{name}"
    for name in ("fifo", "file", "mysql", "shm", "sqlite", "tcp", "udp")
}

_registry: dict[str, Transport] = {}
_lock = threading.Lock()


def register(transport: Transport) -> Transport:
    """Make ``transport`` reachable by its name from ``dump_item`` and ``load_item``."""
    with _lock:
        _registry[transport.name] = transport
    return transport


def get(name: str) -> Transport:
    """The transport called ``name``; a clear error listing the known ones otherwise."""
    found = _registry.get(name) if isinstance(name, str) else None
    if found is not None:
        return found
    if isinstance(name, str) and name in BUILTIN:
        # The import lock makes threads that race here wait for one import: none sees
        # a half-initialized module (that used to be "unknown transport 'tcp'").
        module = importlib.import_module(BUILTIN[name])
        with _lock:
            return _registry.setdefault(name, module.TRANSPORT)
    raise ValueError(f"unknown transport {name!r}; known: {', '.join(names())}")


def names() -> list[str]:
    """Every transport's name, built-in or registered."""
    with _lock:
        return sorted(set(BUILTIN) | set(_registry))


def all_transports() -> list[Transport]:
    """Every transport, the built-in ones imported now."""
    return [get(name) for name in names()]


def sweep(tag: str) -> int:
    """Remove what a process tagged ``tag`` left on this host; return how many things.

    For the process that started it, once it has ended (killed, or ended without its
    exit hooks). Each transport looks where its names go: the fifo root, ``/dev/shm``,
    the shares this process knows. What the process released itself is not found.
    """
    if not OWNER_RE.match(tag):
        raise ValueError(f"invalid owner tag {tag!r}")
    removed = 0
    for transport in all_transports():
        try:
            removed += transport.sweep(tag)
        except Exception:  # one transport's failure must not keep the others' files
            log.exception("%s: sweeping what owner %s left failed", transport.name, tag)
    return removed
