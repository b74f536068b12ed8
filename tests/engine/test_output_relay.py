"""The worker's side of the output relay, with a pipe end that does not read.

A remote worker's prints are queued and sent by a thread; a controller that does not
read (a full pipe) must never hold up the function that prints: lines past the bound
are dropped and counted, long lines are cut, and what was queued arrives once the
reader is back, before the results that follow.
"""

from __future__ import annotations

import json
import sys
import threading

from papycluster.engine import output


def _decode(messages: list[bytes]) -> tuple[list, int]:
    lines: list = []
    dropped = 0
    for data in messages:
        assert output.is_output(data)
        host, batch, lost = json.loads(data[len(output.MAGIC):])
        assert host == "nodeX"
        lines += batch
        dropped += lost
    return lines, dropped


def test_a_flood_to_a_stuck_reader_does_not_block_and_is_counted(monkeypatch):
    gate = threading.Event()
    sent: list[bytes] = []

    def send(data: bytes) -> None:  # a pipe nobody reads, until the gate opens
        gate.wait(30)
        sent.append(data)

    relay = output.Relay(send, threading.Lock(), "nodeX")
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # restored after the test
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    relay.install()
    try:
        done = threading.Event()

        def flood() -> None:
            for i in range(5 * output.PENDING_MAX):
                print(f"line {i}")
            print("y" * (output.LINE_MAX + 50), file=sys.stderr)
            print("unfinished", end="")
            done.set()

        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(30), "printing blocked on a reader that does not read"
    finally:
        gate.set()
        relay.close()
    lines, dropped = _decode(sent)
    texts = [text for stream, text in lines if stream == "o"]
    assert dropped > 0 and len(texts) + dropped == 5 * output.PENDING_MAX + 1
    assert texts[-1] == "unfinished" and texts[-2] == f"line {5 * output.PENDING_MAX - 1}"
    [long] = [text for stream, text in lines if stream == "e"]
    assert long.startswith("y" * output.LINE_MAX) and "[50 more characters cut]" in long


def test_the_switch_and_the_default():
    assert output.log_to_driver(None) in (True, False)
    assert output.log_to_driver(False) is False and output.log_to_driver(True) is True
