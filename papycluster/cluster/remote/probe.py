# papycluster probe: what this host has, before anything is started on it.
# Runs as `python -` on the host; prints PAPYCLUSTER-RESULT <json>.
import getpass
import json
import os
import platform
import socket
import sys
import tempfile

CONFIG = {}  # replaced by render()


def main():
    out = {"version": list(sys.version_info[:3]), "executable": sys.executable,
           "os": platform.system().lower(), "platform": platform.platform(),
           "hostname": socket.gethostname(), "home": os.path.expanduser("~"),
           "cpus": os.cpu_count()}
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
    bundle = os.path.expanduser(CONFIG.get("bundle_dir", ""))
    out["bundle_dir"] = bundle
    out["bundle_present"] = bool(bundle) and os.path.isfile(
        os.path.join(bundle, "papycluster", "__init__.py"))
    run_dir = CONFIG.get("run_dir") or ""
    if not run_dir and CONFIG.get("cluster"):
        run_dir = os.path.join(tmp, "papycluster-{}-{}-{}".format(
            getpass.getuser(), CONFIG["cluster"], CONFIG["name"]))
    out["run_dir"] = run_dir
    pid = None
    try:
        with open(os.path.join(run_dir, "agent.json")) as f:
            pid = json.load(f).get("pid")
    except (OSError, ValueError):
        pass
    out["old_agent_pid"] = pid
    port = CONFIG.get("agent_port") or 0
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
    print("PAPYCLUSTER-RESULT " + json.dumps(out))


main()
