"""Choosing the transport of each pipe from the two hosts that it joins.

The ladder (DESIGN.md section 4): on the same host, ``shm`` (or ``fifo``); between
two UNIX hosts, ``tcp`` (``udp`` only when asked); with a Windows side, ``file`` on a
share that both hosts have, each resolving it to its own local path; when nothing is
possible, the manager carries the bytes itself (with a warning). A transport that the
user named is kept when both hosts can do it; otherwise it falls back down the same
ladder, with a warning that names both hosts and the reason.

The choice is pure (:func:`choose_transport`, :func:`choose_for_pairs`) so that it is
tested without a cluster; :func:`negotiate_dagger` applies it to a Plumber before
``start`` by rewriting the ``type`` argument of ``dump_item`` in upstream workers.

Capabilities (``caps``) are the dicts agents report: ``name``, ``hostname``, ``os``,
``fork``, ``fifo``, ``shm``, ``transports`` and ``shares`` (name -> ``{"path",
"exists"}``). A pool on Dask or Ray has the hosts of the engine's workers, which the
engine reports the same way, with the ``engine`` they belong to (asked through
``papycluster.hooks``: see ``papycluster.engines.hosts``).
"""

from __future__ import annotations

import logging
import socket
import warnings
from collections.abc import Iterable
from typing import Any

from papycluster.transport import ALIASES

log = logging.getLogger("papycluster.negotiate")

MANAGER = "manager"
#: Items kept in a Dask or Ray cluster's store (papycluster.engines): never automatic.
ENGINE = "engine"
STREAM_TRANSPORTS = ("shm", "fifo", "tcp", "udp", "file")
DEFAULT_SHARE = "default"


def _host(caps: dict[str, Any]) -> str:
    return str(caps.get("name") or caps.get("hostname") or "?")


def same_host(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Two pipers on one machine (the same agent, or agents with one hostname)."""
    if a.get("name") and a.get("name") == b.get("name"):
        return True
    return bool(a.get("hostname")) and a.get("hostname") == b.get("hostname")


def is_windows(caps: dict[str, Any]) -> bool:
    return caps.get("os") == "windows"


def common_shares(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """Named shares that both hosts have configured and can see, sorted."""
    def names(caps: dict[str, Any]) -> set[str]:
        out = set()
        for name, info in (caps.get("shares") or {}).items():
            if isinstance(info, dict) and info.get("exists") is False:
                continue
            out.add(name)
        return out

    return sorted(names(a) & names(b) - {DEFAULT_SHARE})


def _can(t: str, caps: dict[str, Any]) -> bool:
    listed = caps.get("transports")
    if listed is not None and t not in listed:
        return False
    if t in ("shm", "fifo"):
        return bool(caps.get(t))
    return True


def feasible(transport: str, a: dict[str, Any], b: dict[str, Any],
             share: str | None = None) -> str | None:
    """Why ``transport`` cannot join ``a`` to ``b`` (None when it can)."""
    ha, hb = _host(a), _host(b)
    if transport == MANAGER:
        return None
    if transport == ENGINE:
        return _engine_feasible(a, b)
    if transport not in STREAM_TRANSPORTS:
        return f"unknown transport {transport!r}"
    for caps in (a, b):
        if not _can(transport, caps):
            why = (f"{_host(caps)} runs {caps.get('os')} without {transport}"
                   if transport in ("shm", "fifo") else
                   f"{_host(caps)} does not offer {transport}")
            return why
    if transport in ("shm", "fifo") and not same_host(a, b):
        return f"{transport} works only on one host, and {ha} and {hb} are two"
    if transport == "file":
        share = share or DEFAULT_SHARE
        if share == DEFAULT_SHARE:
            if not same_host(a, b):
                return (f"the default share is each host's temp dir, which {ha} and {hb} "
                        "do not share; name a share both have (shares = {...} in the hosts "
                        "file)")
        elif share not in common_shares(a, b):
            missing = [_host(c) for c in (a, b)
                       if share not in (c.get("shares") or {})]
            if missing:
                return f"share {share!r} is not configured on {' and '.join(missing)}"
            # configured, but its path is not there on a host (a drive letter that
            # Windows has not mapped, an unmounted NFS path): name the host and path
            unseen = [f"{_host(c)} cannot see it ({c['shares'][share].get('path')} is "
                      "not there)" for c in (a, b)
                      if isinstance(c["shares"][share], dict)
                      and c["shares"][share].get("exists") is False]
            return f"share {share!r}: {'; '.join(unseen) or 'not usable on both'}"
    return None


def _engine_feasible(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """The ``engine`` transport keeps items in an engine's own store: it goes from a
    worker of an engine to a worker of the same one, or to the controller (whose
    lanes are that engine's clients)."""
    if not a.get("engine"):
        return (f"the engine transport keeps items in a Dask or Ray cluster's store, "
                f"and {_host(a)} is not one of its workers")
    if b.get("engine") == a["engine"] or b.get("name") == "controller":
        return None
    return f"{_host(b)} is not a worker of {a['engine']}"


def auto_transport(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The ladder: (transport, dump_item options) for a pipe from ``a`` to ``b``."""
    if same_host(a, b):
        for t in ("shm", "fifo"):
            if feasible(t, a, b) is None:
                return t, {}
    if not is_windows(a) and not is_windows(b) and feasible("tcp", a, b) is None:
        return "tcp", {}
    if same_host(a, b) and feasible("file", a, b) is None:
        return "file", {}
    for share in common_shares(a, b):
        if feasible("file", a, b, share) is None:
            return "file", {"share": share}
    return MANAGER, {}


def choose_transport(a_caps: dict[str, Any], b_caps: dict[str, Any],
                     requested: str | None = None, share: str | None = None
                     ) -> tuple[str, dict[str, Any], str | None]:
    """(transport, options, warning or None) for one pipe from ``a`` to ``b``.

    ``requested`` None or ``"auto"`` picks from the ladder without a warning; a named
    transport is kept when feasible. Falling back, or ending on the manager path, warns.
    """
    ha, hb = _host(a_caps), _host(b_caps)
    if requested not in (None, "auto"):
        why = feasible(requested, a_caps, b_caps, share)
        if why is None:
            return requested, ({"share": share} if share else {}), None
        chosen, options = auto_transport(a_caps, b_caps)
        return chosen, options, (f"transport {requested!r} from {ha} to {hb} is not "
                                 f"possible: {why}; using {_describe(chosen, options)}")
    chosen, options = auto_transport(a_caps, b_caps)
    if chosen == MANAGER:
        return chosen, options, (f"no direct transport from {ha} to {hb} (no shared "
                                 "host, no share both see); items go through the manager")
    return chosen, options, None


def _describe(transport: str, options: dict[str, Any]) -> str:
    if transport == MANAGER:
        return "the manager path (items go through the manager)"
    if options.get("share"):
        return f"'file' on share {options['share']!r}"
    return repr(transport)


def choose_for_pairs(pairs: Iterable[tuple[dict[str, Any], dict[str, Any]]],
                     requested: str | None = None, share: str | None = None
                     ) -> tuple[str, dict[str, Any], list[str]]:
    """One transport for every (upstream host, downstream host) pair of a pipe.

    A piper whose pool spans several hosts needs a transport that works from each of its
    hosts to each host of each downstream piper; the first one on the ladder that works
    for all pairs wins.
    """
    pairs = list(pairs)
    if not pairs:
        return requested or "tcp", ({"share": share} if share else {}), []
    if requested not in (None, "auto"):
        reasons = [w for a, b in pairs if (w := feasible(requested, a, b, share))]
        if not reasons:
            return requested, ({"share": share} if share else {}), []
    else:
        reasons = []
    candidates: list[tuple[str, dict[str, Any]]] = [("shm", {}), ("fifo", {}), ("tcp", {})]
    shares = set.intersection(*[set(common_shares(a, b)) for a, b in pairs])
    candidates += [("file", {})] + [("file", {"share": s}) for s in sorted(shares)]
    chosen, options = MANAGER, {}
    for t, opts in candidates:
        if t == "tcp" and any(is_windows(a) or is_windows(b) for a, b in pairs):
            continue
        if all(feasible(t, a, b, opts.get("share")) is None for a, b in pairs):
            chosen, options = t, opts
            break
    names = sorted({f"{_host(a)} -> {_host(b)}" for a, b in pairs})
    warns = []
    if reasons:
        warns.append(f"transport {requested!r} is not possible for {', '.join(names)}: "
                     f"{'; '.join(sorted(set(reasons)))}; using {_describe(chosen, options)}")
    elif chosen == MANAGER:
        warns.append(f"no direct transport for {', '.join(names)}; items go through the "
                     "manager")
    return chosen, options, warns


# -- applying it to a pipeline --------------------------------------------------------


def manager_dump(inbox: Any, type: str = "", **options: Any) -> Any:
    """``dump_item`` on the manager path: the item itself travels (no ticket)."""
    return inbox[0]


def manager_load(inbox: Any, **options: Any) -> Any:
    """``load_item`` that also accepts an item sent on the manager path."""
    item = inbox[0]
    if isinstance(item, tuple) and item[:1] == ("papyc",):
        from papycluster.workers.io import load_item

        return load_item(inbox, **options)
    return item


def local_caps(name: str = "controller") -> dict[str, Any]:
    """Capabilities of this host under ``name``: of the controller itself (pipers
    without remote workers run here), or of an engine worker (``engines.hosts``)."""
    import json
    import os

    from papycluster.cluster.agent_protocol import capabilities

    try:
        shares = json.loads(os.environ.get("PAPYCLUSTER_SHARES") or "{}")
    except ValueError:
        shares = {}
    caps = capabilities("native", shares)
    caps.update(name=name, hostname=socket.gethostname())
    return caps


def prepare_controller_env(state: Any = None) -> None:
    """Let pipers that run on the controller use the direct transports too.

    They need the cluster secret (``PAPYCLUSTER_SECRET_FILE``: the 0600 file that ``up``
    wrote beside the state) and an address the hosts can reach
    (``PAPYCLUSTER_ADVERTISE_HOST``: the controller's end of its SSH connections).
    Values already set by the user win. Local worker processes inherit them.
    """
    import os

    from papycluster.cluster.state import load_state, secret_path

    if state is None:
        state = load_state(missing_ok=True)
    if state is None:
        return
    def put(key: str, value: str) -> None:
        os.environ[key] = value
        _controller_env[key] = value

    if not os.environ.get("PAPYCLUSTER_SECRET") and not os.environ.get(
            "PAPYCLUSTER_SECRET_FILE") and secret_path().exists():
        put("PAPYCLUSTER_SECRET_FILE", str(secret_path()))
    if not os.environ.get("PAPYCLUSTER_ADVERTISE_HOST"):
        for entry in state.hosts.values():
            if entry.controller_address:
                put("PAPYCLUSTER_ADVERTISE_HOST", entry.controller_address)
                break
    if "PAPYCLUSTER_HOST_NAME" not in os.environ:
        put("PAPYCLUSTER_HOST_NAME", "controller")
    if state.options.get("encrypt") is False and "PAPYCLUSTER_ENCRYPT" not in os.environ:
        put("PAPYCLUSTER_ENCRYPT", "0")  # the hosts file's encrypt = false


#: What :func:`prepare_controller_env` set (and the user had not): undone at ``down``.
_controller_env: dict[str, str] = {}


def forget_controller_env() -> None:
    """Undo :func:`prepare_controller_env` once the cluster is down: its secret file is
    gone, and a later run in this process must not read it (it then makes its own
    secret). Values changed since, by the user, are left alone."""
    import os

    for key, value in list(_controller_env.items()):
        if os.environ.get(key) == value:
            del os.environ[key]
        del _controller_env[key]


class _CapsCache:
    def __init__(self) -> None:
        self.cache: dict[str, dict[str, Any]] = {}
        self.engines: dict[Any, list[dict[str, Any]]] = {}
        self.state: Any = None
        self.loaded = False

    def engine_hosts(self, numap: Any) -> list[dict[str, Any]]:
        """The hosts of the workers of the engine ``numap`` runs on (Dask, Ray), asked
        of the engine once per negotiation (see ``papycluster.engines.hosts``)."""
        kind, target = numap.engine
        key = (kind, target if isinstance(target, str) else id(target))
        if key not in self.engines:
            from papycluster import hooks

            hosts = hooks.hosts_prober(kind)(target, log_to_driver=numap.log_to_driver)
            if not hosts:
                where = target if isinstance(target, str) else f"a {kind} client"
                raise ConnectionError(f"{numap.name}: {where} has no workers (the "
                                      "transports between pipers follow their hosts)")
            self.engines[key] = hosts
        return self.engines[key]

    def get(self, spec: str) -> dict[str, Any]:
        if spec in self.cache:
            return self.cache[spec]
        if not self.loaded:
            from papycluster.cluster.state import load_state

            self.state = load_state(missing_ok=True)
            self.loaded = True
        caps: dict[str, Any] | None = None
        if self.state is not None and spec in self.state.hosts:
            entry = self.state.hosts[spec]
            caps = dict(entry.caps, name=spec)
        if caps is None:
            from papycluster.cluster.client import connect_agent

            try:
                conn = connect_agent(spec, 10.0, self.state)
                try:
                    caps = conn.info()
                finally:
                    conn.close()
            except Exception as exc:
                log.warning("cannot ask %s for its capabilities (%s); assuming tcp only",
                            spec, exc)
                caps = {"name": spec, "os": "unknown", "transports": ["tcp", "manager"]}
        self.cache[spec] = caps
        return caps


def piper_hosts(piper: Any, caps: _CapsCache) -> list[dict[str, Any]]:
    """The capabilities of every host where ``piper``'s worker may run."""
    numap = getattr(piper, "parallel", None)
    if numap is not None and getattr(numap, "engine", None) is not None:
        return caps.engine_hosts(numap)
    remote = list(getattr(numap, "worker_remote", None) or []) if numap else []
    hosts = [caps.get(spec) for spec, _ in remote]
    local_workers = getattr(numap, "worker_num", 0) if numap else 0
    if not remote or local_workers:
        hosts.append(caps.get("controller") if "controller" in caps.cache else
                     caps.cache.setdefault("controller", local_caps()))
    return hosts


def _is(func: Any, name: str) -> bool:
    return (getattr(func, "__name__", None) == name and
            getattr(func, "__module__", "").startswith("papycluster.workers"))


def _dump_type(args: tuple, kwargs: dict) -> tuple[str | None, str | None]:
    requested = kwargs.get("type", args[0] if args else "file")
    return ALIASES.get(requested, requested), kwargs.get("share")


def negotiate_dagger(plumber: Any) -> list[str]:
    """Rewrite the ``dump_item`` type of every upstream worker for its hosts.

    Called by ``Plumber.start`` before the workers are shipped. Returns the warnings
    (each also issued with :func:`warnings.warn` and logged).
    """
    caps = _CapsCache()
    messages: list[str] = []
    prepare_controller_env()
    for up in plumber.postorder():
        worker = getattr(up, "worker", None)
        task = list(getattr(worker, "task", ()) or ())
        dump_at = [i for i, f in enumerate(task) if _is(f, "dump_item")]
        if not dump_at:
            continue
        downs = [down for down, _ in plumber.incoming_edges(up)]
        if not downs:
            continue
        up_hosts = piper_hosts(up, caps)
        down_hosts = [h for d in downs for h in piper_hosts(d, caps)]
        pairs = [(a, b) for a in up_hosts for b in down_hosts]
        args, kwargs = list(worker.args), [dict(k) for k in worker.kwargs]
        for i in dump_at:
            requested, share = _dump_type(args[i], kwargs[i])
            chosen, options, warns = choose_for_pairs(pairs, requested, share)
            for w in warns:
                text = f"pipe {_name(up)} -> {', '.join(_name(d) for d in downs)}: {w}"
                messages.append(text)
                log.warning("%s", text)
                warnings.warn(text, RuntimeWarning, stacklevel=2)
            if chosen == MANAGER:
                task[i] = manager_dump
                for down in downs:
                    _use_manager_load(down)
                continue
            if args[i] and "type" not in kwargs[i]:
                args[i] = (chosen, *args[i][1:])
            else:
                kwargs[i]["type"] = chosen
            if options.get("share"):
                kwargs[i]["share"] = options["share"]
            elif chosen != "file":
                kwargs[i].pop("share", None)
        worker.task, worker.args, worker.kwargs = tuple(task), tuple(args), tuple(kwargs)
    return messages


def _use_manager_load(piper: Any) -> None:
    worker = piper.worker
    worker.task = tuple(manager_load if _is(f, "load_item") else f for f in worker.task)


def _name(piper: Any) -> str:
    return str(getattr(piper, "name", None) or piper)
