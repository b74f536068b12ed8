# papycluster stop: end this host's agents of one cluster and remove their run
# directories, whether they exit cleanly, hang, or crashed long ago.
# Runs as `python -` on the host; prints PAPYCLUSTER-RESULT <json>.
#
# The temp directory is shared with every user of the host, so nothing found there is
# trusted: only run dirs of this user with no access for anyone else (0700) are swept
# (another user could plant papycluster-<user>-<cluster>-x with an agent.json naming any
# pid), and only a process that is provably the agent of that dir is killed (its start
# time and command line, recorded at launch, still match: a pid can be reused).
import getpass
import glob
import json
import os
import shutil
import stat
import tempfile
import time

# alive, group_alive, kill_tree, is_agent and orphans come from procs.py, which
# render() puts in front of this script.

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
    killed, removed, refused = [], [], []
    asked = {os.path.normcase(os.path.abspath(os.path.expanduser(k))): v
             for k, v in CONFIG.get("asked", {}).items()}
    for d in dirs:
        why = unsafe(d)
        if why:
            refused.append([d, why])
            continue
        try:
            with open(os.path.join(d, "agent.json")) as f:
                info = json.load(f)
            pid = int(info["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            info, pid = {}, None
        # Asked to shut down: let the agent and its children (forkserver, workers) end.
        # The agent may have removed its run dir, agent.json with it, before we look:
        # then the pid the controller just talked to ("asked") is waited for; it is never
        # used to kill (an old pid may belong to someone else by now).
        waited = pid or asked.get(os.path.normcase(os.path.abspath(d)))
        end = time.time() + float(CONFIG.get("wait_exit", 0))
        while waited and time.time() < end and (alive(waited) or group_alive(waited)):
            time.sleep(0.05)
        if pid and is_agent(pid, info, d):
            kill_tree(pid, float(CONFIG.get("grace", 5.0)))
            killed.append(pid)
        elif pid and not alive(pid) and orphans(pid, info):
            kill_tree(pid, 1.0)  # the forkserver and workers of an agent that crashed
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
    mine = {d for d, _ in refused}
    left = [d for d in dirs if os.path.exists(d) and d not in mine]
    print("PAPYCLUSTER-RESULT " + json.dumps({"ok": not left, "killed": killed,
                                              "removed": removed, "left": left,
                                              "refused": refused, "purged": purged}))


def unsafe(d):
    """Why run dir ``d`` must not be touched (None if it is this user's, 0700, or gone).

    A link, or a directory of another user or open to others, may have been planted:
    its agent.json could name any process. It is left alone and reported.
    """
    try:
        st = os.lstat(d)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "not a directory (a symbolic link?)"
    if hasattr(os, "getuid"):
        if st.st_uid != os.getuid():
            return f"belongs to uid {st.st_uid}, not to this user"
        if st.st_mode & 0o077:
            return f"mode {stat.S_IMODE(st.st_mode):04o}: open to other users"
    return None


main()
