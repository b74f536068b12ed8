"""The public API is pinned: a name added to or dropped from ``papycluster`` is a
decision, made here, not a side effect of a refactoring."""

from __future__ import annotations

import papycluster

PUBLIC = [
    "Checkpoint", "Dagger", "DaggerError", "NuMap", "NuMapTimeoutError", "Piper",
    "PiperError", "Plumber", "PlumberError", "RemoteError", "Worker", "WorkerError",
    "WorkerLostError", "__version__", "imports", "workers",
]

#: PaPy's worker functions, where PaPy pipelines find them (``workers.io.<name>``,
#: ``workers.core.<name>``).
IO = [
    "dump_db_item", "dump_item", "json_dumps", "json_loads", "load_db_item", "load_item",
    "marshal_dumps", "marshal_loads", "pickle_dumps", "pickle_loads",
]
CORE = [
    "dump_stream", "ipasser", "load_stream", "njoiner", "npasser", "nzipper", "plugger",
    "print_", "sjoiner", "spasser", "szipper",
]


def test_the_package_exports_exactly_the_pinned_names() -> None:
    assert sorted(papycluster.__all__) == sorted(PUBLIC)
    assert sorted(dir(papycluster)) == sorted(PUBLIC)


def test_every_pinned_name_resolves() -> None:
    for name in PUBLIC:
        assert getattr(papycluster, name) is not None, name


def test_papy_worker_functions_are_there() -> None:
    from papycluster.workers import core, io

    missing = [f"io.{name}" for name in IO if not callable(getattr(io, name, None))]
    missing += [f"core.{name}" for name in CORE if not callable(getattr(core, name, None))]
    assert not missing
