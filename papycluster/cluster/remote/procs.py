# papycluster remote prelude: process helpers shared by the host scripts.
# render() puts this text in front of launch and stop, so each still runs alone as
# `python -` on a bare host (standard library only, Python 3.9).
import os
import signal
import subprocess
import sys
import time


def _windows_alive(pid):
    """Ask Windows itself, through a handle on the process: no tool to depend on (some
    hosts have no working tasklist, e.g. Wine's is a stub that lists nothing).
    None when the answer cannot be had this way (no ctypes)."""
    try:
        import ctypes
        from ctypes import wintypes
    except ImportError:
        return None
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.WaitForSingleObject.argtypes = (wintypes.HANDLE, wintypes.DWORD)
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    # PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE
    handle = kernel32.OpenProcess(0x1000 | 0x00100000, False, int(pid))
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it is there, not ours
    try:
        # a process's handle is signalled once it has ended; 0x102 is WAIT_TIMEOUT
        return kernel32.WaitForSingleObject(handle, 0) == 0x102
    finally:
        kernel32.CloseHandle(handle)


def _windows_terminate(pid):
    """End ``pid`` through its handle (where taskkill is missing or did not)."""
    try:
        import ctypes
        from ctypes import wintypes
    except ImportError:
        return
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.TerminateProcess.argtypes = (wintypes.HANDLE, wintypes.UINT)
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    handle = kernel32.OpenProcess(0x0001, False, int(pid))  # PROCESS_TERMINATE
    if handle:
        try:
            kernel32.TerminateProcess(handle, 1)
        finally:
            kernel32.CloseHandle(handle)


def alive(pid):
    if sys.platform == "win32":
        answer = _windows_alive(pid)
        if answer is not None:
            return answer
        try:
            out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"],
                                 capture_output=True, text=True).stdout
        except OSError:
            return False
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


def identity(pid):
    """What tells process ``pid`` apart from any later process with the same pid: its
    start time (and, on Linux, the boot it belongs to) and its command line.

    The agent records its own in agent.json when it starts; `down` kills a pid only if
    it still matches. None where it cannot be read (Windows, or the process is gone).
    """
    if sys.platform == "win32":
        return None
    if os.path.isdir("/proc"):
        try:
            with open(f"/proc/{pid}/stat") as f:
                start = f.read().rsplit(")", 1)[1].split()[19]  # field 22: starttime
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = f.read().strip()
        except (OSError, IndexError):
            return None
        cmdline = [a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1]]
        return {"start": start, "boot": boot, "cmdline": cmdline}
    try:  # other POSIX systems: ps (lstart is 24 characters wide)
        out = subprocess.run(["ps", "-o", "lstart=", "-o", "command=", "-p", str(pid)],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(out) < 25:
        return None
    return {"start": out[:24], "boot": "", "cmdline": out[24:].split()}


def process_uid(pid):
    """The (effective) user id that process ``pid`` runs as, or None if unknown."""
    if os.path.isdir("/proc"):
        try:
            return os.stat(f"/proc/{pid}").st_uid
        except OSError:
            return None
    try:
        out = subprocess.run(["ps", "-o", "uid=", "-p", str(pid)], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        return int(out)
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _same_dir(a, b):
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def is_agent(pid, info, run_dir):
    """Is ``pid`` provably the agent that wrote ``info`` (its agent.json) in ``run_dir``?

    It must be alive, run as this user, run papycluster's agent for this very run dir,
    and, when the agent recorded its identity (start time, boot, command line), still
    have it: a pid reused by another process since is never taken for the agent.
    Windows (no such record) keeps the former check: alive and its command line.
    """
    if not alive(pid):
        return False
    if sys.platform == "win32":
        return ours(pid)
    if hasattr(os, "getuid") and process_uid(pid) != os.getuid():
        return False
    now = identity(pid)
    if now is None:
        return False
    recorded = info.get("process")
    if recorded is not None and recorded != now:
        return False
    cmd = now["cmdline"]
    if "papycluster.cluster.agent" not in cmd:
        return False
    return any(arg == "--run-dir" and i + 1 < len(cmd) and _same_dir(cmd[i + 1], run_dir)
               for i, arg in enumerate(cmd))


def orphans(pgid, info):
    """Processes left in the group of an agent that died (its forkserver, its workers),
    if provably its own: this user's, in the agent's session and group, started after
    it in the same boot. Linux only (elsewhere: none); needs the agent's record."""
    recorded = info.get("process")
    if sys.platform == "win32" or not os.path.isdir("/proc") or not recorded:
        return []
    now = identity("self")
    if now is None or now.get("boot") != recorded.get("boot"):
        return []
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if (int(fields[2]) == pgid and int(fields[3]) == pgid and fields[0] != "Z"
                    and int(fields[19]) >= int(recorded["start"])
                    and process_uid(int(entry)) == os.getuid()):
                found.append(int(entry))
        except (OSError, IndexError, ValueError, KeyError):
            pass
    return found


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
        for args in (["taskkill", "/T", "/PID", str(pid)],
                     ["taskkill", "/F", "/T", "/PID", str(pid)]):
            try:
                subprocess.run(args, capture_output=True, timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                pass
            end = time.time() + min(grace, 1.0)
            while time.time() < end and alive(pid):
                time.sleep(0.05)
            if not alive(pid):
                return
        _windows_terminate(pid)  # taskkill missing, or it did not end it
        end = time.time() + 5.0
        while time.time() < end and alive(pid):
            time.sleep(0.05)
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
