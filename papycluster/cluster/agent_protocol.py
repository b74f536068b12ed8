"""What the agent and its clients share: the protocol, RPC settings, capabilities.

Why its own module: the controller (``cluster.client``, ``cluster.negotiate``,
``cluster.controller``) needs the agent's protocol number, its RPyC settings, its
capability report and its run directory's name, but none of the agent's server. This
module is small and imports nothing of the agent, so a client does not load the
server to learn what it speaks.

Like the agent, it must run on the oldest Python a host may have (3.9).
"""

from __future__ import annotations

import getpass
import os
import pickle
import platform
import sys
import tempfile
from typing import Any

from papycluster.transport import curve

#: Seconds any single RPyC request may take before it fails (never wait forever).
#: ``PAPYCLUSTER_RPC_TIMEOUT`` in a process's environment changes it for that process
#: (each side bounds its own waits).
SYNC_REQUEST_TIMEOUT = float(os.environ.get("PAPYCLUSTER_RPC_TIMEOUT") or 30.0)
INFO_FILE = "agent.json"
SECRET_FILE = "secret"
LOG_FILE = "agent.log"


#: The agent's RPC protocol (its exposed methods and what they take and return). A
#: controller refuses an agent whose protocol or papycluster version differs from its
#: own, naming both, rather than failing later on a method that changed.
PROTOCOL = 3  # 2: each result value in its own envelope (engine.process); 3: output
#  messages, "opt", task definitions with source lines (engine.output, engine.shipping)
#: Replies a worker may have handed to its controller without an acknowledgement yet;
#: past this the relay waits (bounded by the RPC timeout) before it reads more.
UNACKED_MAX = 64


def protocol_config() -> dict[str, Any]:
    """RPyC settings shared by the agent and its clients: nothing implicit is allowed."""
    return {
        "allow_public_attrs": False,
        "allow_pickle": False,
        "allow_setattr": False,
        "allow_delattr": False,
        "sync_request_timeout": SYNC_REQUEST_TIMEOUT,
    }


def capabilities(profile: str, shares: dict[str, str]) -> dict[str, Any]:
    """What this host can do, as the negotiation needs it.

    The ``windows`` profile reports what a Windows host has (no fork, no FIFOs, no
    POSIX shared memory), so the fallback to the ``file`` transport is exercised on Linux.
    """
    windows = profile == "windows" or sys.platform == "win32"
    try:
        from multiprocessing import shared_memory  # noqa: F401
        has_shm = True
    except ImportError:
        has_shm = False
    tcp = curve.usable()  # encrypted tcp needs pyzmq here
    share_info = {}
    for name, path in shares.items():
        share_info[name] = {"path": path, "exists": os.path.isdir(path),
                            "writable": os.access(path, os.W_OK)}
    return {
        "os": "windows" if windows else platform.system().lower(),
        "fork": hasattr(os, "fork") and not windows,
        "fifo": hasattr(os, "mkfifo") and not windows,
        "shm": has_shm and not windows,
        "shares": share_info,
        "transports": [t for t, ok in (
            ("shm", has_shm and not windows), ("fifo", hasattr(os, "mkfifo") and not windows),
            ("tcp", tcp), ("udp", True), ("file", True), ("manager", True)) if ok],
    }


PLATFORM_CACHE: list[str] = []


def platform_name() -> str:
    """``platform.platform()``, without its ``uname -p`` child process on Linux.

    ``platform.platform()`` reads the processor name, which on Linux means running
    ``uname -p``: a fork and exec in the first ``info()`` of every ``up``, for a word
    that it then drops ("unknown" on most distributions). The rest is the same.
    """
    if not PLATFORM_CACHE:
        u = platform.uname()  # its processor field is only computed when read
        if u.system == "Linux":
            lib, version = platform.libc_ver()
            parts = [u.system, u.release, u.machine] + (["with", lib + version] if lib
                                                         else [])
            PLATFORM_CACHE.append("-".join(p.replace(" ", "_") for p in parts if p))
        else:
            PLATFORM_CACHE.append(platform.platform())
    return PLATFORM_CACHE[0]


def results_in(message: bytes) -> int:
    """How many results one message of a worker process carries.

    The message comes from this agent's own worker process, so reading it here is no
    new trust; the values inside stay in their envelopes (bytes), nothing of the
    user's is rebuilt. Another kind of message counts as none, one that cannot be read
    as one (a reply all the same).
    """
    try:
        kind, results = pickle.loads(message)[:2]
        return len(results) if kind == "res" else 0
    except Exception:
        return 1


def default_run_dir(cluster: str, name: str) -> str:
    user = getpass.getuser()
    return os.path.join(tempfile.gettempdir(), f"papycluster-{user}-{cluster}-{name}")
