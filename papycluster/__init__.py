"""papycluster: PaPy-compatible parallel pipelines across a handful of real machines.

The pipeline API is PaPy's (``Worker``, ``Piper``, ``Dagger``, ``Plumber``, ``NuMap``,
``imports``, ``workers``); see ``DESIGN.md`` for what runs where.

Names are imported on first use, so that ``papycluster.cli`` and a cluster agent
start without loading the whole engine.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Worker": "papycluster.engine",
    "Piper": "papycluster.engine",
    "Dagger": "papycluster.engine",
    "Plumber": "papycluster.engine",
    "NuMap": "papycluster.engine",
    "Checkpoint": "papycluster.engine",
    "imports": "papycluster.engine",
    "workers": "papycluster.workers",
    "WorkerError": "papycluster.errors",
    "PiperError": "papycluster.errors",
    "DaggerError": "papycluster.errors",
    "PlumberError": "papycluster.errors",
    "RemoteError": "papycluster.errors",
    "WorkerLostError": "papycluster.errors",
    "NuMapTimeoutError": "papycluster.errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'papycluster' has no attribute {name!r}")
    if name == "workers":
        value = importlib.import_module(module)
    else:
        value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
