"""Named shares: one directory that several hosts see, each under its own local path.

An NFS export may be ``/mnt/data`` on one host and ``\\\\filer\\data`` on another, so a
``file`` ticket never carries a path: it names the *share* and the file inside it,
and each host resolves the share through its own registry. The registry is read
from ``PAPYCLUSTER_SHARES`` (JSON ``{"name": "/local/path"}``, set per host by the
cluster) and can be changed from Python with :func:`set_share`. The share called
``"default"`` is the temporary directory unless configured otherwise.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import threading

from papycluster.errors import PapyError

SHARES_ENV = "PAPYCLUSTER_SHARES"
DEFAULT = "default"
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")

_lock = threading.Lock()
_overrides: dict[str, str] = {}


class ShareError(PapyError, LookupError):
    """A share is unknown on this host, or its configuration is invalid."""


def _from_env() -> dict[str, str]:
    raw = os.environ.get(SHARES_ENV)
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ShareError(f"{SHARES_ENV} is not JSON: {exc}") from None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ShareError(f"{SHARES_ENV} must be a JSON object of name -> path, got {raw!r}")
    for name in value:
        check_name(name)
    return value


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ShareError(f"invalid share name {name!r} (letters, digits, '_', '.', '-')")
    return name


def shares() -> dict[str, str]:
    """All shares known in this process: name -> local path."""
    result = {DEFAULT: tempfile.gettempdir()}
    result.update(_from_env())
    with _lock:
        result.update(_overrides)
    return result


def set_share(name: str, path: str | None) -> None:
    """Set (or with ``None``, forget) this process's local path for share ``name``.

    Worker processes inherit the environment, not this call; for a whole cluster set
    ``PAPYCLUSTER_SHARES`` (the hosts file does).
    """
    check_name(name)
    with _lock:
        if path is None:
            _overrides.pop(name, None)
        else:
            _overrides[name] = os.fspath(path)


def resolve(name: str) -> str:
    """The local directory of share ``name``, or a :class:`ShareError` naming it."""
    check_name(name)
    known = shares()
    try:
        return known[name]
    except KeyError:
        raise ShareError(f"share {name!r} is not configured on this host (known: "
                         f"{', '.join(sorted(known))}; set {SHARES_ENV})") from None


def get_share(name: str) -> str:
    """The local directory of share ``name`` (an alias of :func:`resolve`)."""
    return resolve(name)
