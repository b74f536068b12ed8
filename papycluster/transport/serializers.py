"""Serializers for the direct transports: pickle (protocol 5, out of band), json, marshal.

``pickle_dumps`` keeps big buffers *out of band*: a numpy array or a large ``bytes``
is not copied into the pickle stream and then again into the message; the pickle
and the buffers are laid out once, side by side, in one frame::

    b"PPYF" ver:u8 nbuf:u32 plen:u64 (blen:u64 tag:u8)*nbuf  pad  pickle  pad  buf0 ...

Buffers start on 64-byte boundaries of the frame (whose own start the allocator
aligns to 16 bytes), so the arrays that ``pickle_loads`` makes point straight into
the frame: no copy, and aligned for every numpy dtype. A value with nothing big
in it gives a plain protocol-5 pickle, which ``pickle_loads`` also reads.

Which objects are scanned for large ``bytes``: the standard pickler cannot be asked
about ``bytes`` without a Python call per object, which would slow down pickling of
big lists of small things. So ``bytes``/``bytearray``/``memoryview`` go out of band
when they are the item itself or sit in a small container (up to
:data:`SCAN_LIMIT` elements, two levels deep); numpy arrays and ``PickleBuffer``
objects go out of band anywhere.
"""

from __future__ import annotations

import io
import json
import marshal
import pickle
import struct
from collections.abc import Sequence
from typing import Any

MAGIC = b"PPYF"
FRAME_VERSION = 1
ALIGN = 64
#: Buffers smaller than this stay inside the pickle stream.
OOB_THRESHOLD = 64 * 1024
#: Containers up to this size are scanned for large bytes-like members.
SCAN_LIMIT = 64

_HEAD = struct.Struct("!4sBIQ")
_BUF = struct.Struct("!QB")
_TAG_PICKLE = 0
_TAG_BYTES = 1
_TAG_BYTEARRAY = 2
_BYTESLIKE = (bytes, bytearray, memoryview)


def _pad(n: int) -> int:
    return -n % ALIGN


def _has_big_bytes(obj: Any, depth: int = 2) -> bool:
    if isinstance(obj, _BYTESLIKE):
        return memoryview(obj).nbytes >= OOB_THRESHOLD
    if depth == 0:
        return False
    if isinstance(obj, (list, tuple)) and len(obj) <= SCAN_LIMIT:
        return any(_has_big_bytes(x, depth - 1) for x in obj)
    if isinstance(obj, dict) and len(obj) <= SCAN_LIMIT:
        return any(_has_big_bytes(x, depth - 1) for x in obj.values())
    return False


def _callback(buffers: list) -> Any:
    """A ``buffer_callback`` that keeps small buffers in band and collects the big ones."""

    def callback(buf: pickle.PickleBuffer) -> bool:
        view = buf.raw()
        if view.nbytes < OOB_THRESHOLD:
            return True  # in band
        buffers.append((_TAG_PICKLE, view))
        return False

    return callback


class _BytesPickler(pickle.Pickler):
    """Moves large bytes-like objects out of band through ``persistent_id``."""

    def __init__(self, file: Any, buffers: list) -> None:
        super().__init__(file, protocol=5, buffer_callback=_callback(buffers))
        self._buffers = buffers

    def persistent_id(self, obj: Any) -> Any:
        kind = type(obj)
        if kind is bytes or kind is bytearray or kind is memoryview:
            view = memoryview(obj)
            if view.nbytes >= OOB_THRESHOLD:
                if not view.c_contiguous:
                    return None
                tag = _TAG_BYTEARRAY if kind is bytearray else _TAG_BYTES
                self._buffers.append((tag, view.cast("B")))
                return ("papyc-buf", len(self._buffers) - 1)
        return None


def _plain_pickler(file: Any, buffers: list) -> pickle.Pickler:
    return pickle.Pickler(file, protocol=5, buffer_callback=_callback(buffers))


def dumps(obj: Any) -> bytes | bytearray:
    """Pickle ``obj`` with protocol 5, big buffers out of band in one frame."""
    buffers: list[tuple[int, memoryview]] = []
    out = io.BytesIO()
    pickler_type = _BytesPickler if _has_big_bytes(obj) else _plain_pickler
    try:
        pickler_type(out, buffers).dump(obj)
    except (pickle.PicklingError, TypeError, AttributeError):
        # Lambdas, closures, __main__ classes: cloudpickle, still out of band.
        import cloudpickle

        buffers.clear()
        out = io.BytesIO()
        cloudpickle.CloudPickler(out, protocol=5,
                                 buffer_callback=_callback(buffers)).dump(obj)
    payload = out.getbuffer()
    if not buffers:
        return out.getvalue()
    head_len = _HEAD.size + _BUF.size * len(buffers)
    offset = head_len + _pad(head_len)
    plen = payload.nbytes
    total = offset + plen
    starts = []
    for _, view in buffers:
        total += _pad(total)
        starts.append(total)
        total += view.nbytes
    frame = bytearray(total)
    _HEAD.pack_into(frame, 0, MAGIC, FRAME_VERSION, len(buffers), plen)
    pos = _HEAD.size
    for tag, view in buffers:
        _BUF.pack_into(frame, pos, view.nbytes, tag)
        pos += _BUF.size
    target = memoryview(frame)
    target[offset:offset + plen] = payload
    for start, (_, view) in zip(starts, buffers, strict=True):
        target[start:start + view.nbytes] = view
    return frame


def loads(data: Any) -> Any:
    """Unpickle what :func:`dumps` made; out-of-band arrays view ``data`` (no copy)."""
    view = memoryview(data)
    if view.nbytes < _HEAD.size or view[:4] != MAGIC:
        return pickle.loads(view)
    magic, version, nbuf, plen = _HEAD.unpack_from(view, 0)
    if version != FRAME_VERSION:
        raise ValueError(f"pickle frame version {version} is not supported")
    pos = _HEAD.size
    sizes = []
    for _ in range(nbuf):
        size, tag = _BUF.unpack_from(view, pos)
        sizes.append((size, tag))
        pos += _BUF.size
    offset = pos + _pad(pos)
    payload = view[offset:offset + plen]
    total = offset + plen
    oob: list[memoryview] = []
    persistent: list[Any] = []
    for size, tag in sizes:
        total += _pad(total)
        if total + size > view.nbytes:
            raise ValueError(f"truncated pickle frame: {view.nbytes} bytes, "
                             f"buffers need {total + size}")
        piece = view[total:total + size]
        total += size
        if tag == _TAG_PICKLE:
            oob.append(piece)
            persistent.append(None)
        elif tag == _TAG_BYTES:
            persistent.append(bytes(piece))
        elif tag == _TAG_BYTEARRAY:
            persistent.append(bytearray(piece))
        else:
            raise ValueError(f"unknown buffer tag {tag} in pickle frame")
    unpickler = pickle.Unpickler(io.BytesIO(payload), buffers=oob)

    def persistent_load(pid: Any) -> Any:
        if (isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "papyc-buf"
                and isinstance(pid[1], int) and 0 <= pid[1] < len(persistent)
                and persistent[pid[1]] is not None):
            return persistent[pid[1]]
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r} in pickle frame")

    unpickler.persistent_load = persistent_load  # type: ignore[method-assign]
    return unpickler.load()


def pickle_dumps(inbox: Sequence) -> bytes | bytearray:
    """Worker function: pickle ``inbox[0]`` (protocol 5, big buffers out of band)."""
    return dumps(inbox[0])


def pickle_loads(inbox: Sequence) -> Any:
    """Worker function: unpickle ``inbox[0]`` made by :func:`pickle_dumps`.

    Only for data from a trusted peer: the direct transports authenticate theirs.
    """
    return loads(inbox[0])


def json_dumps(inbox: Sequence, **kwargs: Any) -> str:
    """Worker function: ``json.dumps(inbox[0])`` (a ``str``, as in PaPy)."""
    return json.dumps(inbox[0], **kwargs)


def json_loads(inbox: Sequence, **kwargs: Any) -> Any:
    """Worker function: ``json.loads(inbox[0])``; takes str or UTF-8 bytes-like."""
    data = inbox[0]
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    return json.loads(data, **kwargs)


def marshal_dumps(inbox: Sequence, version: int = marshal.version) -> bytes:
    """Worker function: ``marshal.dumps(inbox[0])``; fast, core types only, same Python."""
    return marshal.dumps(inbox[0], version)


def marshal_loads(inbox: Sequence) -> Any:
    """Worker function: ``marshal.loads(inbox[0])``."""
    return marshal.loads(inbox[0])
