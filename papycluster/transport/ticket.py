"""Tickets: the small, self-describing, versioned receipts that ``dump_item`` returns.

A ticket is a plain tuple of ``str`` and ``int`` so that it pickles in a few dozen
bytes through the manager and can be read by a later version::

    ("papyc", VERSION, transport, flags, *fields)

``flags`` says how the payload was given (:data:`FLAG_STR`: a ``str`` encoded as
UTF-8, returned as ``str``) and, for the database transports, whether the row is a
checkpoint (:data:`FLAG_KEEP`). The fields are the transport's own (host and port,
a share and a file name, a segment name, a row id ...).

:func:`parse` checks the header and hands the fields to the transport's
``validate``, so a malformed, truncated or foreign ticket fails fast with a
:class:`~papycluster.transport.base.TicketError` naming the ticket.
"""

from __future__ import annotations

import re
from typing import Any

from papycluster.transport import base, registry

MAGIC = "papyc"
#: 2: tcp tickets say how their server is reached (``wire``: CURVE or the HMAC socket).
VERSION = 2

FLAG_STR = 1
FLAG_KEEP = 2
_KNOWN_FLAGS = FLAG_STR | FLAG_KEEP

TOKEN_RE = re.compile(r"[0-9a-f]{32}\Z")


def make(transport: str, flags: int, *fields: Any) -> tuple:
    """Build a ticket; ``fields`` must already be plain ``str``/``int`` values."""
    return (MAGIC, VERSION, transport, flags, *fields)


def parse(ticket: Any, family: tuple[str, ...] | None = None) -> tuple[base.Transport, int, tuple]:
    """Check ``ticket`` and return ``(transport, flags, fields)``.

    ``family`` restricts the transports accepted (``load_item`` refuses a database
    ticket and the other way round, with a message that says which function to use).
    """
    if not isinstance(ticket, tuple):
        raise base.TicketError(ticket, f"not a papycluster ticket: a {type(ticket).__name__}, "
                               "expected the tuple that dump_item returned")
    if not ticket:
        raise base.TicketError(ticket, "empty: not a ticket")
    if ticket[0] != MAGIC:
        raise base.TicketError(ticket, f"foreign ticket: header {ticket[0]!r:.40} is not "
                               f"{MAGIC!r} (a PaPy ticket, or not a ticket at all)")
    if len(ticket) < 4:
        raise base.TicketError(ticket, "truncated: fewer than 4 header fields")
    magic, version, name, flags = ticket[:4]
    if type(version) is not int:
        raise base.TicketError(ticket, f"version {version!r} is not an int")
    if version != VERSION:
        older = (" (made by an older papycluster: dump the item again with this one)"
                 if type(version) is int and version < VERSION else "")
        raise base.TicketError(ticket, f"ticket version {version} is not supported "
                               f"(this papycluster reads version {VERSION}){older}")
    if not isinstance(name, str):
        raise base.TicketError(ticket, f"transport name {name!r} is not a str")
    try:
        transport = registry.get(name)
    except ValueError as exc:
        raise base.TicketError(ticket, str(exc)) from None
    if family is not None and name not in family:
        raise base.TicketError(ticket, f"a {name} ticket cannot be read here (this function "
                               f"reads {', '.join(family)})", name)
    if type(flags) is not int or flags < 0 or flags & ~_KNOWN_FLAGS:
        raise base.TicketError(ticket, f"bad flags {flags!r}", name)
    fields = tuple(ticket[4:])
    if len(fields) != len(transport.fields):
        raise base.TicketError(ticket, f"expected {len(transport.fields)} fields "
                               f"({', '.join(transport.fields)}), got {len(fields)}", name)
    transport.validate(fields, ticket)
    return transport, flags, fields


def check(ticket: tuple, name: str, value: Any, kind: type | tuple[type, ...],
          what: str) -> None:
    """Raise a TicketError unless ``value`` has type ``kind`` (bool is never an int)."""
    if isinstance(value, bool) or not isinstance(value, kind):
        raise base.TicketError(ticket, f"field {what} {value!r} has the wrong type", name)


def check_int(ticket: tuple, name: str, value: Any, what: str, low: int = 0,
              high: int = 2**63) -> None:
    check(ticket, name, value, int, what)
    if not low <= value <= high:
        raise base.TicketError(ticket, f"field {what} {value!r} is out of range", name)


def check_token(ticket: tuple, name: str, value: Any, what: str = "key") -> None:
    check(ticket, name, value, str, what)
    if not TOKEN_RE.match(value):
        raise base.TicketError(ticket, f"field {what} {value!r} is not a 32-hex-digit token",
                               name)
