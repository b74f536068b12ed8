# papycluster stop: end this host's agents of one cluster and remove their run
# directories, whether they exit cleanly, hang, or crashed long ago.
# Runs as `python -` on the host; prints PAPYCLUSTER-RESULT <json>.
import getpass
import glob
import json
import os
import shutil
import sys
import tempfile
import time

# alive, ours, group_alive and kill_tree come from _procs.py, which render() puts in
# front of this script.

CONFIG = {}  # replaced by render()


def main():
    user = getpass.getuser()
    dirs = [os.path.expanduser(d) for d in CONFIG.get("run_dirs", [])]
    if CONFIG.get("scan", True):
        pattern = "papycluster-{}-{}-*".format(user, CONFIG["cluster"])
        dirs += glob.glob(os.path.join(tempfile.gettempdir(), pattern))
    # One entry per directory, however it was spelled: the run dir the controller
    # remembers and the scan's match may differ in case or separators (Windows).
    unique = {}
    for d in dirs:
        unique.setdefault(os.path.normcase(os.path.abspath(d)), d)
    dirs = sorted(unique.values())
    killed, removed = [], []
    asked = {os.path.normcase(os.path.abspath(os.path.expanduser(k))): v
             for k, v in CONFIG.get("asked", {}).items()}
    for d in dirs:
        try:
            with open(os.path.join(d, "agent.json")) as f:
                pid = int(json.load(f)["pid"])
        except (OSError, ValueError, KeyError):
            pid = None
        # Asked to shut down: let the agent and its children (forkserver, workers) end.
        # The agent may have removed its run dir, agent.json with it, before we look:
        # then the pid the controller just talked to ("asked") is waited for; it is never
        # used to kill (an old pid may belong to someone else by now).
        waited = pid or asked.get(os.path.normcase(os.path.abspath(d)))
        end = time.time() + float(CONFIG.get("wait_exit", 0))
        while waited and time.time() < end and (alive(waited) or group_alive(waited)):
            time.sleep(0.05)
        if pid and alive(pid) and ours(pid):
            kill_tree(pid, float(CONFIG.get("grace", 5.0)))
            killed.append(pid)
        elif pid and sys.platform != "win32" and group_alive(pid):
            kill_tree(pid, 1.0)  # orphaned workers of a crashed agent
            killed.append(pid)
        if os.path.isdir(d):
            shutil.rmtree(d, ignore_errors=True)
            if not os.path.exists(d):  # else it is under "left" (a file still open...)
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
