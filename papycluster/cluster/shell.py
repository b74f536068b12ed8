"""What a host's login shell and SFTP server get: quoting, script commands, path spellings.

Why its own module: these are pure text, the same for every way of reaching a host, and
the PowerShell path, which no test machine can run (PowerShell is not in Debian), is
checked as text against golden files. Scripts are run as ``<python> -`` with the script
on stdin, so the remote shell (sh, cmd or PowerShell) only ever parses a program path
and one dash; PowerShell, whose stdin is unreliable, gets a private file by SFTP.
"""

from __future__ import annotations

import re
import shlex

from papycluster.cluster.hosts import HostConfig


def quote_command(argv: list[str], shell: str) -> str:
    """One command line for the remote login shell (``sh``, ``cmd`` or ``powershell``)."""
    if shell == "sh":
        out = []
        for a in argv:
            if a.startswith("~/"):
                out.append('"$HOME"/' + shlex.quote(a[2:]))
            else:
                out.append(shlex.quote(a))
        return " ".join(out)
    if shell == "powershell":
        quoted = ["'" + a.replace("'", "''") + "'" for a in argv]
        return "& " + " ".join(quoted)
    # cmd.exe: double quotes around anything with spaces or specials
    out = []
    for a in argv:
        if a and not any(c in a for c in ' \t&|<>^()"%'):
            out.append(a)
        else:
            out.append('"' + a.replace('"', '""') + '"')
    return " ".join(out)


def sftp_path(path: str, os_name: str) -> str:
    """The SFTP server's spelling of a local path (``C:\\x`` is ``/C:/x`` on Windows)."""
    if os_name == "windows":
        p = path.replace("\\", "/")
        if len(p) > 1 and p[1] == ":":
            p = "/" + p
        return p
    return path


def sftp_spelling(path: str) -> str | None:
    """How the SFTP server spells the host's ``path``, or None if only Python can say.

    SFTP starts in the home directory, so ``~/x`` is ``x``; ``~user`` and environment
    variables mean nothing to it.
    """
    if path == "~" or path.startswith(("~/", "~\\")):
        return path[2:].replace("\\", "/")
    if path.startswith("~") or "%" in path or "$" in path:
        return None
    if re.match(r"^[A-Za-z]:[\\/]", path):
        return sftp_path(path, "windows")
    return None if "\\" in path else path


def login_shell(host: HostConfig, os_name: str | None) -> str:
    """The host's login shell: the hosts file's ``shell``, else ``cmd`` on Windows,
    ``sh`` elsewhere."""
    if host.shell:
        return host.shell
    return "cmd" if (os_name or host.os) == "windows" else "sh"


def via_file(shell: str) -> bool:
    """Whether scripts go through a file instead of stdin.

    Windows PowerShell does not reliably hand its stdin to a native program, so there a
    script is copied by SFTP into the home directory (private to the user) and run from
    there; it deletes itself first thing. sh and cmd pass stdin through unchanged.
    """
    return shell == "powershell"


_SELF_DELETE = "import os as _os, sys as _sys\n_os.remove(_sys.argv[0])\n"


def script_command(host: HostConfig, shell: str, script: str, name: str
                   ) -> tuple[str, str | None]:
    """What runs ``script`` on the host: (the command line, the text of the file
    ``name`` to copy first, or None when the script goes on stdin).

    Pure text, so that the PowerShell path, which no test machine can run (PowerShell
    is not in Debian), is checked as text against golden files.
    """
    if not via_file(shell):
        return quote_command([host.python, "-"], shell), None
    return quote_command([host.python, name], shell), _SELF_DELETE + script
