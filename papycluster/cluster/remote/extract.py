# papycluster extract: unpack the shipped bundle into the versioned cache directory.
# Runs as `python -` on the host; prints PAPYCLUSTER-RESULT <json>.
import json
import os
import shutil
import sys
import zipfile

CONFIG = {}  # replaced by render()


def main():
    archive = os.path.expanduser(CONFIG["archive"])
    target = os.path.expanduser(CONFIG["target"])
    if os.path.isfile(os.path.join(target, "papycluster", "__init__.py")):
        os.remove(archive)
        print("PAPYCLUSTER-RESULT " + json.dumps({"ok": True, "cached": True}))
        return
    tmp = f"{target}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with zipfile.ZipFile(archive) as z:
        z.extractall(tmp)
    try:
        os.replace(tmp, target)
    except OSError:  # another `up` won the race: theirs is as good as ours
        shutil.rmtree(tmp, ignore_errors=True)
    os.remove(archive)
    print("PAPYCLUSTER-RESULT " + json.dumps({"ok": True, "cached": False,
                                              "python": sys.version}))


main()
