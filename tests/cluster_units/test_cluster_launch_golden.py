"""The command lines that start a host's scripts, per login shell, against golden files.

PowerShell is not in Debian, so no test here runs it: its launch path (the script
copied by SFTP to a private file that deletes itself, then ``& '<python>' '<file>'``)
is checked as text. cmd is run for real by the wine node (tests/cluster/
test_cluster_windows.py), sh by every other test. Regenerate after an intended change
with ``PAPYCLUSTER_REGOLD=1``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from papycluster.cluster.hosts import HostConfig
from papycluster.cluster.remote import render
from papycluster.cluster.shell import script_command

GOLDEN = Path(__file__).parent / "golden"
NAME = ".papycluster-0123456789abcdef.py"
PYTHONS = {
    "plain": r"C:\Python311\python.exe",
    "spaces": r"C:\Program Files\Python 3.11\python.exe",
    "quote": r"C:\Users\o'brien\py thon\python.exe",
    "specials": r"C:\a&b\(x)\100%\python.exe",
}


def _case(shell: str) -> str:
    lines = []
    for label, python in PYTHONS.items():
        host = HostConfig(name="w", address="w", python=python, os="windows", shell=shell)
        command, file_text = script_command(host, shell, "print('the script')\n", NAME)
        lines.append(f"[{label}] {python}")
        lines.append(f"command: {command}")
        if file_text is None:
            lines.append("script: on stdin")
        else:
            lines.append(f"file {NAME}:")
            lines.extend("  | " + ln for ln in file_text.splitlines())
        lines.append("")
    return "\n".join(lines)


@pytest.mark.parametrize("shell", ["powershell", "cmd", "sh"])
def test_launch_command_lines_match_the_golden_files(shell: str):
    text = _case(shell)
    path = GOLDEN / f"launch-{shell}.txt"
    if os.environ.get("PAPYCLUSTER_REGOLD"):
        path.write_text(text, encoding="utf-8")
    assert text == path.read_text(encoding="utf-8"), f"{path} differs:\n{text}"


def test_powershell_script_file_is_the_script_after_its_self_removal():
    host = HostConfig(name="w", address="w", python=PYTHONS["spaces"], os="windows",
                      shell="powershell")
    script = render("launch", {"name": "w", "cluster": "c", "secret": "s" * 64})
    command, file_text = script_command(host, "powershell", script, NAME)
    assert command == f"& '{PYTHONS['spaces']}' '{NAME}'"
    head, rest = file_text.split("\n", 2)[:2], file_text.split("\n", 2)[2]
    # the file removes itself before anything else runs (the secret is inside it)
    assert head == ["import os as _os, sys as _sys", "_os.remove(_sys.argv[0])"]
    assert rest == script
    compile(file_text, NAME, "exec")  # one valid Python program
