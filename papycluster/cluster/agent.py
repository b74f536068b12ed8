"""The agent: one per host, an RPyC service that runs remote NuMap workers.

This module is the agent's entry point (``python -m papycluster.cluster.agent``): its
command line, its environment for the workers, its listener. The parts live in
:mod:`.agent_protocol` (what the agent and its clients share: protocol, RPC settings,
capabilities), :mod:`.agent_service` (the agent's state and its RPyC service: only
peers that proved the cluster secret on the raw socket, before any RPyC traffic, reach
it) and :mod:`.relay` (one worker process's replies to its controller).

The agent never unpickles a tasklet. ``open_worker`` starts a
:class:`papycluster.engine.process.ProcessWorker`; ``send`` relays the controller's
bytes to it unchanged, and a reader thread relays each reply back through a callback
that the controller passed. When the controller's connection goes away, its workers are
stopped, so nothing outlives its user.

This module must run on the oldest Python a host may have (3.9): no ``match``, no
runtime ``X | Y`` unions.

Run it as ``python -m papycluster.cluster.agent --secret-file F --run-dir D ...``;
:mod:`papycluster.cluster.remote.launch` does that, detached, on each host.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import threading
from typing import Any

from rpyc.utils.server import ThreadedServer

from papycluster.cluster.agent_protocol import (
    INFO_FILE,
    default_run_dir,
    protocol_config,
)
from papycluster.cluster.agent_service import Agent, make_service
from papycluster.cluster.auth import SECRET_FILE_ENV, HmacAuthenticator, read_secret_file
from papycluster.cluster.remote.procs import identity as process_identity
from papycluster.transport.curve import ENCRYPT_ENV
from papycluster.wire.ports import PORTS_ENV

log = logging.getLogger("papycluster.agent")

__all__ = ["Agent", "default_run_dir", "main", "make_service"]


def _compat_old_python() -> None:
    """Let the worker code (written for 3.11) report errors on a 3.9/3.10 host.

    ``traceback.format_exception(exc)`` with one argument is 3.10+. Patched here, at
    import, so that it also holds in the worker processes: forkserver and spawn both
    import this module (the agent's ``__main__``) before running a worker.
    """
    if sys.version_info >= (3, 10):  # noqa: UP036 (the agent runs on 3.9 hosts too)
        return
    import traceback

    original = traceback.format_exception
    missing = object()

    def format_exception(exc: Any, value: Any = missing, tb: Any = missing,
                         limit: Any = None, chain: bool = True) -> list:
        if value is missing:
            return original(type(exc), exc, exc.__traceback__, limit=limit, chain=chain)
        return original(exc, value, tb, limit=limit, chain=chain)

    traceback.format_exception = format_exception  # type: ignore[assignment]


_compat_old_python()

def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description="papycluster agent (one per host)")
    parser.add_argument("--name", required=True, help="this host's name in the cluster")
    parser.add_argument("--cluster", default="papycluster")
    parser.add_argument("--bind", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--advertise", default="", help="address peers use to reach us")
    parser.add_argument("--secret-file", required=True,
                        help="file (0600) holding the cluster secret; never pass it inline")
    parser.add_argument("--run-dir", default="")
    parser.add_argument("--profile", choices=("native", "windows"), default="native")
    parser.add_argument("--shares", default="{}", help="JSON: share name -> local path")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--encrypt", choices=("0", "1"), default="1",
                        help="1: tcp items encrypted with CURVE; 0: the HMAC socket")
    parser.add_argument("--ports", default="",
                        help='"first-last": the ports its workers\' listeners may use')
    args = parser.parse_args(argv)

    run_dir = args.run_dir or default_run_dir(args.cluster, args.name)
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    secret = read_secret_file(args.secret_file)
    shares = json.loads(args.shares)
    advertise = args.advertise or (args.bind if args.bind not in ("0.0.0.0", "") else
                                   socket.gethostname())
    # What the worker and transport processes read (inherited by every child).
    os.environ[SECRET_FILE_ENV] = os.path.abspath(args.secret_file)
    os.environ.pop("PAPYCLUSTER_SECRET", None)
    os.environ["PAPYCLUSTER_ADVERTISE_HOST"] = advertise
    if args.bind and args.bind != advertise:
        # the workers' tcp/udp item servers listen where the agent does (bind =
        # "0.0.0.0" behind NAT, where the advertised address is not one of this host's)
        os.environ["PAPYCLUSTER_BIND_HOST"] = args.bind
    else:
        os.environ.pop("PAPYCLUSTER_BIND_HOST", None)
    os.environ["PAPYCLUSTER_SHARES"] = json.dumps(shares)
    os.environ[ENCRYPT_ENV] = args.encrypt  # how its workers serve tcp items
    if args.ports:  # every listener of the agent's workers (papycluster.wire.ports)
        os.environ[PORTS_ENV] = args.ports
    else:
        os.environ.pop(PORTS_ENV, None)
    os.environ["PAPYCLUSTER_HOST_NAME"] = args.name
    os.environ["PAPYCLUSTER_PROFILE"] = args.profile
    # Workers relay what they print to their controller (engine.output), and still
    # write it to this log.
    os.environ["PAPYCLUSTER_RELAY_OUTPUT"] = "1"

    # multiprocessing's own temp dirs (the forkserver's socket) go in the run dir, so
    # that removing the run dir leaves nothing behind, even after a kill -9. Only this
    # process: the workers keep the host's temp dir (the file transport's default share),
    # and the agent keeps knowing it as that share, to remove what a killed worker left.
    if "default" not in shares:
        from papycluster.transport import shares as transport_shares

        transport_shares.set_share("default", tempfile.gettempdir())
    tempfile.tempdir = run_dir
    agent = Agent(args.name, args.cluster, args.profile, shares, args.workers, run_dir,
                  advertise)
    agent.secret = secret
    agent.bind = args.bind
    try:
        server = ThreadedServer(make_service(agent), hostname=args.bind, port=args.port,
                                authenticator=HmacAuthenticator(secret),
                                protocol_config=protocol_config(), reuse_addr=True,
                                logger=logging.getLogger("papycluster.agent.rpyc"))
    except OSError as exc:
        # launch shows this log line as the host's failure
        log.error("agent %s cannot listen on %s:%s: %s. If %s is not an address of this "
                  "host (behind NAT, or a name that resolves elsewhere), set bind = "
                  '"0.0.0.0" (or one of its addresses) for this host in the hosts file',
                  args.name, args.bind, args.port, exc, args.bind)
        sys.exit(2)
    agent.server = server
    agent.port = server.port
    # The forkserver is not started here: the first worker starts it (multiprocessing
    # does that on first use; it is exec'd, not forked, so the server's threads do not
    # matter). An agent is ready as soon as it listens; a host that `up` brings up but
    # never gets a worker pays for no second interpreter, and on hosts that share cores
    # the `up` of the others does not wait behind it.

    def _term(signum: int, frame: Any) -> None:
        threading.Thread(target=agent.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _term)
    if hasattr(signal, "SIGBREAK"):
        signal.signal(signal.SIGBREAK, _term)

    # "process": start time and command line, so that `down` kills this pid only while
    # it is still this agent (see cluster/remote/procs.py: is_agent).
    info = {"pid": os.getpid(), "port": server.port, "name": args.name,
            "cluster": args.cluster, "started": agent.started,
            "process": process_identity(os.getpid())}
    tmp = os.path.join(run_dir, INFO_FILE + ".tmp")
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, os.path.join(run_dir, INFO_FILE))
    log.info("agent %s listening on %s:%s (pid %s)", args.name, args.bind, server.port,
             os.getpid())
    try:
        server.start()
    finally:
        agent.shutdown()


if __name__ == "__main__":
    main()
