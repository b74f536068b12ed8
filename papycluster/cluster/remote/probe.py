# papycluster remote prelude: what a host has, looked at before anything starts there.
# render() puts this text in front of launch, which runs it first when `up` asks for it
# (the "check" part of launch's CONFIG); so probing, shipping and starting cost one
# Python start on the host, not three. Standard library only, Python 3.9.
import getpass
import json
import os
import platform
import socket
import sys
import tempfile


def probe(check, run_dir):
    """Python version, OS, temp dir, agent port, an old agent, the cached bundle."""
    # (not platform.platform(): on Linux it runs `uname -p`, a child process per probe)
    out = {"version": list(sys.version_info[:3]), "executable": sys.executable,
           "os": platform.system().lower(), "release": platform.release(),
           "hostname": socket.gethostname(), "home": os.path.expanduser("~"),
           "cpus": os.cpu_count(), "user": getpass.getuser()}
    tmp = tempfile.gettempdir()
    out["tempdir"] = tmp
    try:
        fd, path = tempfile.mkstemp(prefix="papycluster-probe-")
        os.close(fd)
        os.remove(path)
        out["tempdir_writable"] = True
    except OSError as exc:
        out["tempdir_writable"] = False
        out["tempdir_error"] = str(exc)
    bundle = os.path.expanduser(check.get("bundle") or "")
    out["bundle"] = bundle
    out["bundle_present"] = bool(bundle) and os.path.isfile(bundle)
    out["run_dir"] = run_dir
    pid = None
    try:
        with open(os.path.join(run_dir, "agent.json")) as f:
            pid = json.load(f).get("pid")
    except (OSError, ValueError):
        pass
    out["old_agent_pid"] = pid
    port = check.get("agent_port") or 0
    out["port_free"] = True
    if port:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if sys.platform != "win32":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
        except OSError as exc:
            out["port_free"] = False
            out["port_error"] = str(exc)
        finally:
            s.close()
    return out


def fit(found, check):
    """Whether launch may go on. When not, the controller names the cause from ``found``
    (papycluster.cluster.deploy.check_probe); here only the verdict is needed."""
    return (tuple(found["version"]) >= tuple(check.get("min_python") or (3, 9))
            and found["tempdir_writable"]
            # a stale agent of ours holding the port is replaced by launch
            and (found["port_free"] or bool(found["old_agent_pid"])))

