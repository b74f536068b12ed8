"""Errors of the cluster layer.

Each one names its culprit (a file and line, a host and a cause), because a user with
five machines needs to know *which* one failed and *why* before anything else.
"""

from __future__ import annotations

from papycluster.errors import PapyError


class ClusterError(PapyError):
    """Something about the cluster as a whole: no state, no such host, ..."""


class HostsFileError(ClusterError):
    """The hosts file is wrong. The message names the file, the line or key, and the fix."""

    def __init__(self, path: str, where: str, problem: str, fix: str = "") -> None:
        self.path = path
        self.where = where
        self.problem = problem
        self.fix = fix
        text = f"{path}: {where}: {problem}" if where else f"{path}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class AuthError(ClusterError):
    """A peer did not prove the cluster secret (or the agent did not prove it to us)."""


class HostError(ClusterError):
    """One host failed, for one named cause.

    ``cause`` is a short fixed word (``unreachable``, ``refused``, ``auth failed``,
    ``host key mismatch``, ``unknown host key``, ``key file not found``, ``no Python``,
    ``Python too old``, ``check failed``, ``deploy failed``, ``packages failed``,
    ``agent failed``, ``timeout``) so that the summary and the tests can rely on it;
    ``detail`` says the rest.
    """

    def __init__(self, host: str, cause: str, detail: str = "") -> None:
        self.host = host
        self.cause = cause
        self.detail = detail
        super().__init__(f"{host}: {cause}" + (f": {detail}" if detail else ""))


class VersionMismatchError(ClusterError):
    """An agent runs another papycluster version or RPC protocol than this controller.

    Both sides' code must match (tasklets and replies are exchanged as bytes whose format
    is the code's), so the mismatch is refused on connection, naming the host and both
    versions, instead of surfacing later as an obscure failure.
    """

    def __init__(self, host: str, theirs: str, ours: str) -> None:
        self.host = host
        self.theirs = theirs
        self.ours = ours
        super().__init__(f"agent {host} runs papycluster {theirs}, this controller runs "
                         f"{ours}: run `papycluster down`, then `up` again so that every host "
                         "gets the controller's version")
