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
