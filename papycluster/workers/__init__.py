"""Built-in worker functions, as in PaPy's ``papy.util.func``.

``workers.core`` has the small helpers (``plugger``, ``ipasser``, ...) and stream
helpers; ``workers.io`` has the serializers and the direct transports
(``dump_item`` / ``load_item``). Their names are also importable from here.
"""

from papycluster.workers import core, io
from papycluster.workers.core import (
    dump_pickle_stream,
    dump_stream,
    ipasser,
    load_pickle_stream,
    load_stream,
    make_lines,
    njoiner,
    npasser,
    nzipper,
    plugger,
    print_,
    sjoiner,
    spasser,
    szipper,
)

__all__ = [
    "core",
    "io",
    "dump_pickle_stream",
    "dump_stream",
    "ipasser",
    "load_pickle_stream",
    "load_stream",
    "make_lines",
    "njoiner",
    "npasser",
    "nzipper",
    "plugger",
    "print_",
    "sjoiner",
    "spasser",
    "szipper",
]
