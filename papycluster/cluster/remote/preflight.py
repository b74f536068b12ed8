# papycluster preflight: will `up` work on this host? Nothing is started or left behind.
# Runs as `python -` on the host; prints PAPYCLUSTER-RESULT <json>.
#
# CONFIG["mode"] picks one of three short visits:
#   "host"    probe() (Python, OS, temp dir, agent port, from probe.py, which render()
#             puts in front of this script) and every share: a folder there, in which a
#             file can be made and removed.
#   "listen"  a TCP listener on CONFIG["port"] (the agent port, or a spare one when that
#             is taken) that answers each caller with CONFIG["token"] and ends after
#             CONFIG["expect"] callers or CONFIG["linger"] seconds.
#   "reach"   connect to each (name, address, port) of CONFIG["targets"] with a
#             timeout; a target is reached when it answers with the token.
# "host" also reports a spare free port, for the listener when the agent port is taken.
# Standard library only, Python 3.9.
import getpass
import json
import os
import socket
import sys
import tempfile
import threading
import time

CONFIG = {}  # replaced by render()


def result(**kw):
    print("PAPYCLUSTER-RESULT " + json.dumps(kw))
    sys.stdout.flush()


def check_share(path):
    """'' when ``path`` is a folder in which this user can make and remove a file."""
    path = os.path.expanduser(path)
    if not os.path.isdir(path):
        return f"no folder {path} on this host"
    try:
        fd, name = tempfile.mkstemp(prefix=".papycluster-preflight-", dir=path)
        os.close(fd)
        os.remove(name)
    except OSError as exc:
        return f"{path} is not writable: {exc}"
    return ""


def visit_host():
    # the run dir that launch would use: an agent of ours found there may hold the port
    run_dir = os.path.join(tempfile.gettempdir(), "papycluster-{}-{}-{}".format(
        getpass.getuser(), CONFIG["cluster"], CONFIG["name"]))
    found = probe(CONFIG.get("check") or {}, run_dir)
    found["shares"] = {name: check_share(path)
                       for name, path in sorted((CONFIG.get("shares") or {}).items())}
    spare = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    spare.bind(("0.0.0.0", 0))  # for the pair probes when the agent port is taken
    found["spare_port"] = spare.getsockname()[1]
    spare.close()
    result(ok=True, found=found)  # not "probe": the controller judges it itself


def listen():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if sys.platform != "win32":
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", CONFIG["port"]))
    s.listen(16)
    port = s.getsockname()[1]
    token = CONFIG["token"].encode("ascii") + b"\n"
    deadline = time.monotonic() + float(CONFIG.get("linger") or 30)
    callers = 0
    while callers < int(CONFIG.get("expect") or 0):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            conn, _ = s.accept()
        except OSError:  # the linger is over
            break
        try:
            conn.settimeout(2.0)
            conn.sendall(token)
        except OSError:
            pass
        finally:
            conn.close()
        callers += 1
    s.close()
    result(ok=True, port=port, callers=callers)


def reach_one(address, port, token, timeout, ready_within):
    """{"ok", "ms"} or {"ok": False, "error"}; a refusal is retried while the listener
    may still be starting, a silence (a firewall dropping packets) is not."""
    started = time.monotonic()
    while True:
        try:
            conn = socket.create_connection((address, port), timeout=timeout)
            try:
                conn.settimeout(timeout)
                answer = conn.makefile("rb").readline(100).decode("ascii", "replace")
            finally:
                conn.close()
            if answer.strip() == token:
                return {"ok": True, "ms": round((time.monotonic() - started) * 1000, 1)}
            return {"ok": False, "error": f"{address}:{port} answered, but not the preflight "
                    "listener"}
        except ConnectionRefusedError as exc:
            if time.monotonic() - started > ready_within:
                return {"ok": False, "error": f"{address}:{port}: {exc.strerror}"}
            time.sleep(0.2)
        except OSError as exc:
            why = exc.strerror or exc.__class__.__name__
            return {"ok": False, "error": f"{address}:{port}: {why}"}


def reach():
    out = {}

    def one(name, address, port):
        out[name] = reach_one(address, port, CONFIG["token"],
                              float(CONFIG.get("timeout") or 5),
                              float(CONFIG.get("ready_within") or 15))

    threads = [threading.Thread(target=one, args=tuple(t)) for t in CONFIG["targets"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result(ok=True, reached=out)


if __name__ == "__main__":
    {"host": visit_host, "listen": listen, "reach": reach}[CONFIG["mode"]]()
