# papycluster stop: end this host's agents of one cluster and remove their run
# directories, whether they exit cleanly, hang, or crashed long ago.
# Runs as `python -` on the host; prints PAPYCLUSTER-RESULT <json>.
import getpass
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CONFIG = {}  # replaced by render()


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


def main():
    user = getpass.getuser()
    dirs = [os.path.expanduser(d) for d in CONFIG.get("run_dirs", [])]
    if CONFIG.get("scan", True):
        pattern = "papycluster-{}-{}-*".format(user, CONFIG["cluster"])
        dirs += glob.glob(os.path.join(tempfile.gettempdir(), pattern))
    killed, removed = [], []
    for d in sorted(set(dirs)):
        try:
            with open(os.path.join(d, "agent.json")) as f:
                pid = int(json.load(f)["pid"])
        except (OSError, ValueError, KeyError):
            pid = None
        end = time.time() + float(CONFIG.get("wait_exit", 0))
        while pid and time.time() < end and alive(pid):  # asked to shut down: let it
            time.sleep(0.05)
        if pid and alive(pid) and ours(pid):
            kill_tree(pid, float(CONFIG.get("grace", 5.0)))
            killed.append(pid)
        elif pid and sys.platform != "win32" and group_alive(pid):
            kill_tree(pid, 1.0)  # orphaned workers of a crashed agent
            killed.append(pid)
        if os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    purged = []
    if CONFIG.get("purge_cache"):
        cache = os.path.expanduser(CONFIG["cache_dir"])
        if os.path.isdir(cache):
            shutil.rmtree(cache, ignore_errors=True)
            purged.append(cache)
    left = [d for d in dirs if os.path.exists(d)]
    print("PAPYCLUSTER-RESULT " + json.dumps({"ok": not left, "killed": killed,
                                              "removed": removed, "left": left,
                                              "purged": purged}))


main()
