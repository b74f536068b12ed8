"""Scripts that run on a host with ``python -`` (the script comes on stdin).

Feeding the script on stdin avoids all shell quoting (sh, cmd and PowerShell alike) and
keeps the cluster secret off every command line. Each script starts with a ``CONFIG``
line that :func:`render` replaces with the real values, and prints one line
``PAPYCLUSTER-RESULT <json>`` as its last word. They use only the standard library and
run on Python 3.9.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MARKER = "PAPYCLUSTER-RESULT "
_PLACEHOLDER = "CONFIG = {}  # replaced by render()"


#: The preludes put in front of each script: ``procs.py`` (process helpers) and
#: ``probe.py`` (what a host has), so that each script still runs alone as ``python -``.
_PRELUDES = {"launch": ("procs", "probe"), "stop": ("procs",), "preflight": ("probe",)}


def render(name: str, config: dict[str, Any]) -> str:
    """The text of script ``name`` (launch, stop, preflight) with ``config`` inlined."""
    here = Path(__file__).parent
    parts = [*_PRELUDES.get(name, ()), name]
    text = "\n\n".join((here / f"{part}.py").read_text(encoding="utf-8") for part in parts)
    if _PLACEHOLDER not in text:
        raise RuntimeError(f"remote script {name} lacks its CONFIG placeholder")
    return text.replace(_PLACEHOLDER, f"CONFIG = json.loads({json.dumps(config)!r})", 1)


def parse_result(output: str) -> dict[str, Any] | None:
    """The result a script printed, or None if it printed none (it crashed or never ran)."""
    for line in reversed(output.splitlines()):
        if line.startswith(MARKER):
            return json.loads(line[len(MARKER):])
    return None
