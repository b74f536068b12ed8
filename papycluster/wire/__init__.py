"""What papycluster puts on a socket, below the transports and the cluster.

Two modules, each the only one of its kind in the package:

* :mod:`.frames`: reading exactly ``n`` bytes (with a deadline and an error that says
  how far it got), sending a header and a payload, and the length-prefixed frames of
  the worker streams;
* :mod:`.handshake`: the mutual HMAC challenge/response that every TCP listener runs
  before it reads anything else (tcp item servers, the agents' RPyC port, the
  per-worker streams), and the MAC that udp's datagrams carry.

Why a package of its own rather than ``transport/auth.py``: the handshake and the
framing know sockets, not transports or clusters. ``transport`` must never import
``cluster`` (``.ci/import_graph.py``), and the cluster's agent should not need the
transport layer to authenticate a peer, so the one implementation sits below both and
imports nothing of papycluster but :mod:`papycluster.errors` (the import-graph check
enforces that too). What stays above it is policy: which secret a process uses
(``transport.auth``: configured or this run's ephemeral one; ``cluster.auth``: the
cluster's secret file) and which error a refused peer becomes (``SecretError`` for a
loader, ``AuthError`` for a controller).

It runs on agents too: Python 3.9, standard library only, no ``match``, no runtime
``X | Y``.
"""
