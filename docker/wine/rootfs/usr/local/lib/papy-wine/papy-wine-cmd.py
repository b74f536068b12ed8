# Started by papy-wine-cmd with the wine node's Windows CPython: run the SSH command as
# Windows OpenSSH does with the cmd shell, `cmd.exe /c <command>`, the command line
# passed to CreateProcess unchanged (a str argument to subprocess is not quoted), with
# this process's standard handles (the SSH channel) and its exit code.
import os
import subprocess
import sys

command = os.environ.pop("PAPYWINE_COMMAND")
cmd = os.path.join(os.environ.get("SystemRoot", r"C:\windows"), "system32", "cmd.exe")
sys.exit(subprocess.call(f'"{cmd}" /c {command}', stdin=sys.stdin, stdout=sys.stdout,
                         stderr=sys.stderr))
