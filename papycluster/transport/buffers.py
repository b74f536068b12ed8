"""Receive buffers: fill a reused scratch buffer, hand out a fresh copy.

A loader must return a new object per item. Receiving straight into a new
``bytearray(n)`` looks cheapest but is not: for big items ``bytearray(n)`` is a fresh,
zero-filled mapping whose every page faults in while the socket fills it (11 ms for
16 MB here, against 1 ms to copy 16 MB). So big items are received into a per-thread
scratch buffer that stays mapped, and ``bytearray(view)`` (malloc + one memcpy) makes
the object that is returned. The scratch grows to the largest item seen, up to
:data:`SCRATCH_MAX`; bigger items are received in place.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

SCRATCH_MIN = 64 * 1024
SCRATCH_MAX = 256 << 20

_local = threading.local()


def receive(size: int, fill: Callable[[memoryview], None]) -> bytearray:
    """``fill(view)`` must write exactly ``size`` bytes into ``view``; returns them."""
    if size < SCRATCH_MIN or size > SCRATCH_MAX:
        out = bytearray(size)
        fill(memoryview(out))
        return out
    buf = getattr(_local, "buf", None)
    if buf is None or len(buf) < size:
        buf = _local.buf = bytearray(size)
    with memoryview(buf) as whole:
        view = whole[:size]
        fill(view)
        out = bytearray(view)
        view.release()
    return out
