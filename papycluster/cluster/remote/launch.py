# papycluster launch: start this host's agent, detached, and wait until it listens.
# Runs as `python -` on the host (the secret arrives inside this script, on stdin, and is
# written to a 0600 file; it is never on a command line nor in an environment variable).
# Prints PAPYCLUSTER-RESULT <json>.
#
# For `up` over SSH it does the whole visit in this one run: with a "check" in CONFIG it
# first probes the host (probe and fit come from probe.py) and stops there if the host
# does not fit; then, if the bundle is not cached (SFTP normally put it there first), it
# writes the one the controller put in CONFIG ("bundle_data"), or, when there is none,
# returns need_bundle so that the controller sends it. The agent imports from the zip,
# or, on a Python other than the controller's, from a copy unpacked beside it.
import base64
import getpass
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

# alive, is_agent and kill_tree come from procs.py, probe and fit from probe.py;
# render() puts both in front of this script.

CONFIG = {}  # replaced by render()


def result(**kw):
    print("PAPYCLUSTER-RESULT " + json.dumps(kw))
    sys.stdout.flush()


def install_bundle(path, data):
    """Write the shipped zip (base64 ``data``) to ``path``, atomically.

    The agent imports papycluster straight from the zip (zipimport; compiled code is
    inside), so shipping writes one file, not hundreds: on a slow file system
    (fuse-overlayfs, an NFS home) creating files is what unpacking spent its time on.
    Hosts that share a home directory may write the same zip at once: each writes its
    own temporary name and a rename puts one in place, all with the same bytes.
    """
    if os.path.isfile(path):  # another `up` put it there meanwhile
        return False
    os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
    tmp = f"{path}.{socket.gethostname()}-{os.urandom(4).hex()}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(base64.b64decode(data))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return True


def unpacked(archive):
    """The bundle unpacked beside its zip, for a Python other than the controller's.

    The code compiled inside the zip is for the controller's Python; another one would
    compile every module in every process it starts (agent, forkserver, each worker),
    as a zip has no __pycache__. Unpacked once, its __pycache__ fills up as usual.
    """
    target = "{}.{}".format(archive[:-len(".zip")], sys.implementation.cache_tag)
    if not os.path.isfile(os.path.join(target, "papycluster", "__init__.py")):
        import shutil
        import zipfile

        tmp = f"{target}.{socket.gethostname()}-{os.urandom(4).hex()}.tmp"
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp, [n for n in z.namelist() if not n.endswith(".pyc")])
            try:
                os.replace(tmp, target)
            except OSError:  # another `up` won the race: theirs is as good as ours
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def install_site(site):
    """Unpack the shipped wheels (the hosts file's ``packages``) into ``site["dir"]``.

    A wheel is a zip of what goes on sys.path (and ``*.data/purelib|platlib``, which
    go there too); unpacking it is an install for import's needs, with no pip here.
    The directory is named by the digest of its wheels: one already there is used as
    it is. Unpacked beside it under a name of our own, then renamed into place.
    """
    import shutil
    import zipfile

    target = os.path.expanduser(site["dir"])
    if os.path.isfile(os.path.join(target, ".papycluster-site")):
        return False
    tmp = f"{target}.{socket.gethostname()}-{os.urandom(4).hex()}.tmp"
    try:
        for wheel in site["wheels"]:
            wheel = os.path.expanduser(wheel)
            with zipfile.ZipFile(wheel) as z:
                z.extractall(tmp)
        for data in [d for d in os.listdir(tmp) if d.endswith(".data")]:
            for part in ("purelib", "platlib"):
                inner = os.path.join(tmp, data, part)
                if os.path.isdir(inner):
                    for name in os.listdir(inner):
                        os.replace(os.path.join(inner, name), os.path.join(tmp, name))
            shutil.rmtree(os.path.join(tmp, data), ignore_errors=True)
        with open(os.path.join(tmp, ".papycluster-site"), "w") as f:
            json.dump(site.get("names", []), f)
        try:
            os.replace(tmp, target)
        except OSError:  # another `up` won the race: theirs is the same
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return True


def main():
    run_dir = os.path.expanduser(CONFIG.get("run_dir") or os.path.join(
        tempfile.gettempdir(), "papycluster-{}-{}-{}".format(
            getpass.getuser(), CONFIG["cluster"], CONFIG["name"])))
    check = CONFIG.get("check")
    found = None
    pythonpath = [os.path.expanduser(p) for p in CONFIG.get("pythonpath", [])]
    if check is not None:
        found = probe(check, run_dir)
        if not fit(found, check):
            return result(ok=False, probe=found)
        if check.get("bundle") and not found["bundle_present"]:
            if not CONFIG.get("bundle_data"):
                return result(ok=False, need_bundle=True, probe=found)
            found["shipped"] = install_bundle(found["bundle"], CONFIG["bundle_data"])
        tag = check.get("cache_tag")
        if check.get("bundle") and tag and tag != sys.implementation.cache_tag:
            pythonpath = [unpacked(found["bundle"]) if p == found["bundle"] else p
                          for p in pythonpath]
    if CONFIG.get("site"):
        try:
            install_site(CONFIG["site"])
        except Exception as exc:
            return result(ok=False, cause="packages failed", probe=found,
                          detail=f"cannot unpack the packages' wheels into "
                                 f"{CONFIG['site']['dir']}: {exc!r}")
    launched = launch(run_dir, pythonpath)
    launched["probe"] = found
    return result(**launched)


def launch(run_dir, pythonpath):
    os.makedirs(run_dir, mode=0o700, exist_ok=True)
    if os.path.islink(run_dir):  # planted in a shared temp dir: never follow it
        return dict(ok=False, cause="agent failed",
                    detail=f"run dir {run_dir} is a symbolic link; remove it")
    if hasattr(os, "getuid") and os.lstat(run_dir).st_uid != os.getuid():
        return dict(ok=False, cause="agent failed",
                    detail=f"run dir {run_dir} belongs to another user")
    if hasattr(os, "chmod"):
        os.chmod(run_dir, 0o700)
    info_path = os.path.join(run_dir, "agent.json")
    try:
        with open(info_path) as f:
            info = json.load(f)
        old = int(info.get("pid") or 0)
        if old and is_agent(old, info, run_dir):  # never a pid that is not that agent
            kill_tree(old, 5.0)
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        os.remove(info_path)
    except OSError:
        pass
    secret_path = os.path.join(run_dir, "secret")
    fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o600)
        os.write(fd, CONFIG["secret"].encode("ascii"))
    finally:
        os.close(fd)
    env = dict(os.environ)
    env.pop("PAPYCLUSTER_SECRET", None)
    paths = list(pythonpath)
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    argv = [sys.executable, "-m", "papycluster.cluster.agent",
            "--name", CONFIG["name"], "--cluster", CONFIG["cluster"],
            "--bind", CONFIG.get("bind", "0.0.0.0"), "--port", str(CONFIG.get("port", 0)),
            "--advertise", CONFIG.get("advertise", ""),
            "--secret-file", secret_path, "--run-dir", run_dir,
            "--profile", CONFIG.get("profile", "native"),
            "--shares", json.dumps(CONFIG.get("shares", {})),
            "--workers", str(CONFIG.get("workers", 2)),
            "--ports", CONFIG.get("ports") or "",
            "--encrypt", "1" if CONFIG.get("encrypt", True) else "0"]
    log = open(os.path.join(run_dir, "agent.log"), "ab")
    kw = dict(stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=run_dir,
              env=env, close_fds=True)
    if sys.platform == "win32":
        flags = 0x00000008 | 0x00000200  # DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP
        try:  # leave the OpenSSH session's job object, which dies with the session
            proc = subprocess.Popen(argv, creationflags=flags | 0x01000000, **kw)
        except OSError:
            proc = subprocess.Popen(argv, creationflags=flags, **kw)
    else:
        proc = subprocess.Popen(argv, start_new_session=True, **kw)
    log.close()
    deadline = time.time() + float(CONFIG.get("timeout", 30))
    while time.time() < deadline:
        try:
            with open(info_path) as f:
                info = json.load(f)
            if info.get("pid") == proc.pid:
                return dict(ok=True, pid=proc.pid, port=info["port"], run_dir=run_dir)
        except (OSError, ValueError):
            pass
        code = proc.poll()
        if code is not None:
            break
        time.sleep(0.01)  # an open() per 10 ms costs nothing; 50 ms was paid by every up
    code = proc.poll()
    if code is None:
        kill_tree(proc.pid, 5.0)
    try:
        with open(os.path.join(run_dir, "agent.log"), errors="replace") as f:
            tail = f.read()[-2000:]
    except OSError:
        tail = ""
    return dict(ok=False, cause="agent failed",
                detail=(f"exited with code {code}" if code is not None
                        else "did not listen in time") + "; log:\n" + tail)


main()
