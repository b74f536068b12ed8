"""A loader remembers an item server it found gone, so that the next tickets of that
server fail at once (and are recomputed) instead of each waiting out a timeout.

A lost host leaves hundreds of tickets in a deep buffer; each used to wait its own
silence timeout in turn. Here the "lost" server is a port where nothing listens
(refused: the producer ended), for the tcp transport's two wires.
"""

from __future__ import annotations

import socket
import time

import pytest

from papycluster import transport
from papycluster.transport import base, tcp
from papycluster.workers import io


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("encrypt", ["1", "0"])
def test_tickets_of_a_gone_server_fail_at_once(encrypt: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAPYCLUSTER_ENCRYPT", encrypt)
    monkeypatch.setattr(tcp, "GONE", base.GoneServers(ttl=2.0))
    tk = io.dump_item([b"a real item"], "tcp")
    port = _dead_port()
    forged = [tk[:5] + (port,) + tk[6:] for _ in range(3)]
    with pytest.raises(transport.StaleTicketError, match="any more") as first:
        io.load_item([forged[0]], timeout=20)
    assert "earlier item" not in str(first.value)
    for tk_gone in forged[1:]:  # no connection tried: the remembered error
        with pytest.raises(transport.StaleTicketError, match="by an earlier item"):
            io.load_item([tk_gone], timeout=20)
    assert io.load_item([tk]) == b"a real item"  # another server is not affected
    time.sleep(2.1)  # after the ttl the server is tried again (and still refuses)
    with pytest.raises(transport.StaleTicketError) as again:
        io.load_item([forged[2]], timeout=20)
    assert "earlier item" not in str(again.value)
