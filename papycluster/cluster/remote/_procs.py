# papycluster remote prelude: process helpers shared by the host scripts.
# render() puts this text in front of launch and stop, so each still runs alone as
# `python -` on a bare host (standard library only, Python 3.9).
import os
import signal
import subprocess
import sys
import time


def alive(pid):
    if sys.platform == "win32":
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"],
                             capture_output=True, text=True).stdout
        return str(pid) in out
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
    except (OSError, IndexError):
        pass
    return True


def ours(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"papycluster.cluster.agent" in f.read()
    except OSError:
        return alive(pid)


def group_alive(pgid):
    if sys.platform == "win32" or not os.path.isdir("/proc"):
        return alive(pgid)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    return True
            except (OSError, IndexError, ValueError):
                pass
    return False


def kill_tree(pid, grace):
    """SIGTERM the agent's whole process group (agent, forkserver, workers), then SIGKILL."""
    if sys.platform == "win32":
        subprocess.run(["taskkill", "/T", "/PID", str(pid)], capture_output=True)
        time.sleep(min(grace, 1.0))
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True)
        return
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except OSError:
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        end = time.time() + wait
        while time.time() < end:
            if not group_alive(pid):
                return
            time.sleep(0.1)
