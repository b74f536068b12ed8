"""Keyed hashes (MACs) that bind an item stored where others can write to its ticket.

A file on a share that anyone can write, a row of ``sqlite`` or ``mysql``: another
user of the share or the database can swap the bytes behind a ticket, and the item is
then unpickled by the loader. So the dumper computes an HMAC-SHA256 of the item under
the cluster secret while it writes it, and the ticket carries it (the first 128 bits,
as 32 hex digits); the loader computes it again while it reads the bytes, and compares
before it returns anything, so nothing is deserialized unless the bytes are the ones
the ticket was made for. Without the secret nobody can make a MAC that matches.

What a MAC covers: a label, the transport's name, the fields that name the item (the
file's unguessable name and size; a row's table and key) and then the bytes, each
length-prefixed. A row's id is not covered (it is known only after the insert), but
the ticket's MAC is the item's own: a row swapped for another row's bytes does not
match it. A checkpoint found again by key takes the MAC stored beside the row, so an
older checkpoint of the same key and table could be put back in its place by someone
who can write the table; nothing that was not written by a holder of the secret passes.

Shared memory and fifos are not hashed: their objects are this user's, 0600, and are
checked to be so (see :func:`base.check_private`), which costs nothing on that hot path.

The secret comes from :func:`auth.get_secret`, so items written under one cluster
secret (or one run's own secret) cannot be read under another: keep checkpoints that
must outlive a run under a configured cluster secret.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from papycluster.transport import auth
from papycluster.transport.base import ItemIntegrityError, SecretError

LABEL = b"papyc-item-mac-1"
#: Bytes of the HMAC kept in the ticket (128 bits), as 32 hex digits.
TAG_BYTES = 16
#: Hash and write (or read) in pieces of this size, so that each piece is still in the
#: cache when the other of the two touches it: one pass over the item, not two.
CHUNK = 1 << 20

_bench_off = False


def signer(transport: str, *binding: str | int) -> Any:
    """A keyed hash for one item of ``transport``, already bound to ``binding``.

    Feed it the item's bytes with ``update`` (in pieces, as they are written or read),
    then take :func:`tag` of it.
    """
    if _bench_off:
        return _NoMac()
    try:
        key = auth.get_secret()
    except SecretError as exc:
        raise SecretError(f"{transport}: items stored where other users can write are "
                          f"signed with the cluster secret, and it is unusable: {exc}") \
            from None
    h = hmac.new(key, LABEL, hashlib.sha256)
    for part in (transport, *binding):
        raw = str(part).encode("utf-8", "surrogatepass")
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h


def tag(h: Any) -> str:
    """The MAC that goes in a ticket: 32 hex digits."""
    if _bench_off:
        return "0" * (2 * TAG_BYTES)
    return h.digest()[:TAG_BYTES].hex()


def sign(transport: str, data: Any, *binding: str | int) -> str:
    """The MAC of ``data`` (bytes-like, all at hand) for ``transport`` and ``binding``."""
    if _bench_off:
        return "0" * (2 * TAG_BYTES)
    h = signer(transport, *binding)
    h.update(data)
    return tag(h)


def verify(h: Any, expected: str, tk: tuple, transport: str, what: str) -> None:
    """Raise :class:`ItemIntegrityError` unless ``h`` gives the MAC ``expected``."""
    if _bench_off:
        return
    if not hmac.compare_digest(tag(h), expected):
        raise ItemIntegrityError(tk, f"{what} does not match the MAC in the ticket: it was "
                                 "changed or swapped after it was written (or written "
                                 "under another cluster secret); refused before anything "
                                 "was deserialized", transport)


class _NoMac:
    """What :func:`signer` gives while the bench has the MAC off: hashes nothing."""

    def update(self, data: Any) -> None:
        pass


def bench_without_mac(off: bool) -> None:
    """For ``bench/transports.py`` only: skip the MAC in this process, to measure its cost.

    Never for real use: with it off, swapped items are loaded.
    """
    global _bench_off
    _bench_off = bool(off)
