"""What a remote worker prints reaches the controller's terminal, line by line.

A worker process on an agent has the agent's log as its stdout and stderr, so a
user's ``print()`` or ``logging`` call (whose default handler writes to stderr) used
to end there, out of sight. On an agent (``RELAY_ENV`` set), the worker's
``sys.stdout`` and ``sys.stderr`` are replaced by tees: each write still goes to the
agent's log, and each complete line is also queued and sent to the controller on the
worker's own pipe, in a message of its own kind (``OUT`` then the JSON of
``[host, [[stream, line], ...], dropped]``: plain text, nothing to unpickle). The
controller writes each line to its own stdout or stderr prefixed with the host,
``(node1) text``, as Ray does.

Bounded on both counts: a line longer than :data:`LINE_MAX` characters is cut (saying
how much), and at most :data:`PENDING_MAX` lines wait to be sent; past that the oldest
are dropped and the next message says how many, so a function that floods its output
is never held up by a slow controller (a ``print`` only appends to a queue; a thread,
started at the first line, sends). Lines are gathered for :data:`EVERY` seconds, and
always sent before the results of the tasklets that printed them, so they show before
``next()`` returns those results.

``NuMap(log_to_driver=False)``, or ``PAPYCLUSTER_LOG_TO_DRIVER=0`` in the
controller's environment, turns it off for a NuMap's remote workers (the agent's log
still has every line), as ``ray.init(log_to_driver=False)`` does. Only what goes
through ``sys.stdout``/``sys.stderr`` is relayed: a C library or a child process that
writes to file descriptor 1 or 2 writes to the agent's log only.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TextIO

#: Set (to "1") in an agent's environment: its worker processes relay their output.
RELAY_ENV = "PAPYCLUSTER_RELAY_OUTPUT"
#: Name of this host as reported in output and tracebacks; an agent sets it to its
#: cluster name (here, not in engine.process, which imports this module).
HOST_ENV = "PAPYCLUSTER_HOST_NAME"
#: "0" in the controller's environment: NuMaps default to ``log_to_driver=False``.
DRIVER_ENV = "PAPYCLUSTER_LOG_TO_DRIVER"
#: The first bytes of an output message (results are pickles, which never start so).
MAGIC = b"OUT\n"
LINE_MAX = 8192
PENDING_MAX = 2000
#: Lines per message, so that a flood goes in pieces between results.
BATCH = 500
EVERY = 0.05


def log_to_driver(flag: bool | None) -> bool:
    """A NuMap's ``log_to_driver``: the argument, else the environment, else True."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(DRIVER_ENV, "1").strip().lower() not in ("0", "false", "no",
                                                                      "off")


def is_output(data: bytes) -> bool:
    return data[:len(MAGIC)] == MAGIC


class Relay:
    """The worker side: queued lines, and the thread that sends them.

    ``send`` is the worker's own send of one message (under the lock it shares with
    the results, so that messages never interleave on the pipe).
    """

    def __init__(self, send: Callable[[bytes], None], lock: threading.Lock,
                 host: str) -> None:
        self._send = send
        self.send_lock = lock
        self.host = host
        self.enabled = True
        self._lines: deque = deque()
        self._dropped = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = False
        self._started = False
        self._streams: list[_Tee] = []
        self._thread = threading.Thread(target=self._run, name="papycluster-output",
                                        daemon=True)

    def install(self) -> None:
        """Put the tees in place of ``sys.stdout`` and ``sys.stderr``."""
        for name in ("stdout", "stderr"):
            tee = _Tee(getattr(sys, name), self, name[3])
            self._streams.append(tee)
            setattr(sys, name, tee)

    def add(self, stream: str, line: str) -> None:
        if not self.enabled:
            return
        with self._lock:
            if len(self._lines) >= PENDING_MAX:
                self._lines.popleft()
                self._dropped += 1
            self._lines.append((stream, line))
            if not self._started:  # the first line: a worker that never prints has
                self._started = True  # no thread
                self._thread.start()
        self._wake.set()

    def flush(self, partial: bool = False) -> None:
        """Send what is queued (the caller holds ``send_lock``); with ``partial``, also
        the unfinished last line of each stream (a tasklet ended)."""
        if partial:
            for tee in self._streams:
                tee.end_line()
        while True:
            with self._lock:
                if not self._lines and not self._dropped:
                    return
                batch = [self._lines.popleft() for _ in range(min(BATCH,
                                                                   len(self._lines)))]
                dropped, self._dropped = self._dropped, 0
            self._send(MAGIC + json.dumps([self.host, batch, dropped]).encode())

    def _run(self) -> None:
        """Sleep until a line comes, gather for EVERY seconds, send; again."""
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            time.sleep(EVERY)
            if self._lines or self._dropped:
                try:
                    with self.send_lock:
                        self.flush()
                except (OSError, EOFError, ValueError):
                    return  # the manager is gone; the serve loop ends too

    def close(self) -> None:
        """Send the rest and put the original streams back."""
        self._closed = True
        self._wake.set()
        try:
            with self.send_lock:
                self.flush(partial=True)
        except (OSError, EOFError, ValueError):
            pass
        for tee in self._streams:
            setattr(sys, "stdout" if tee.stream == "o" else "stderr", tee.original)


class _Tee:
    """A text stream that writes through to ``original`` and queues complete lines."""

    def __init__(self, original: TextIO, relay: Relay, stream: str) -> None:
        self.original = original
        self.relay = relay
        self.stream = stream
        # The unfinished line: at most LINE_MAX characters kept, the rest counted.
        self._partial = ""
        self._extra = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = len(text)
        try:
            self.original.write(text)
        except Exception:  # the agent's log is gone: still relay
            pass
        lines = []
        with self._lock:
            *complete, rest = text.split("\n")
            for part in complete:
                lines.append(self._take(part))
            self._add(rest)
        for line in lines:
            self.relay.add(self.stream, line)
        return written

    def _add(self, part: str) -> None:
        room = LINE_MAX - len(self._partial)
        self._partial += part[:max(room, 0)]
        self._extra += max(len(part) - max(room, 0), 0)

    def _take(self, part: str) -> str:
        """The line that ``part`` ends, cut to LINE_MAX (saying how much was cut)."""
        self._add(part)
        line, extra, self._partial, self._extra = self._partial, self._extra, "", 0
        return line + (f"... [{extra} more characters cut]" if extra else "")

    def end_line(self) -> None:
        with self._lock:
            line = self._take("") if self._partial or self._extra else ""
        if line:
            self.relay.add(self.stream, line)

    def flush(self) -> None:
        try:
            self.original.flush()
        except Exception:
            pass

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...
        return getattr(self.original, name)


def start(send: Callable[[bytes], None], lock: threading.Lock) -> Relay | None:
    """In a worker process: relay its output if it runs on an agent, else None."""
    if os.environ.get(RELAY_ENV) != "1":
        return None
    relay = Relay(send, lock, os.environ.get(HOST_ENV) or "?")
    relay.install()
    return relay


def show(data: bytes, enabled: bool = True) -> None:
    """On the controller: write the lines of one output message, prefixed by host."""
    if not enabled:
        return
    host, lines, dropped = json.loads(data[len(MAGIC):])
    out = []
    if dropped:
        out.append(("e", f"[{dropped} line(s) dropped: printed faster than they could "
                         "be sent; the agent's log has them]"))
    out += lines
    for stream, line in out:
        target = sys.stdout if stream == "o" else sys.stderr
        try:
            target.write(f"({host}) {line}\n")
        except Exception:
            pass
    for target in (sys.stdout, sys.stderr):
        try:
            target.flush()
        except Exception:
            pass
