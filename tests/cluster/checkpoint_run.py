"""A controller of its own for ``test_cluster_resume.py`` (run as a script, not a test).

    python checkpoint_run.py LOG_DIR ITEMS HOST[,HOST...]

Runs ``range(ITEMS)`` through two remote stages (two workers per host in each) under
``Plumber(checkpoint=$PAPY_CHECKPOINT_URL, checkpoint_name=$PAPY_CHECKPOINT_NAME)`` on
the cluster that ``$PAPYCLUSTER_STATE`` describes. The first stage appends every input
it computes to a file of its own process in ``LOG_DIR``, a folder of the shared volume
as the nodes see it, so the test can tell what each run computed. Prints
``RESUMED <n> OUT <n> ERRORS <n>`` at the end.
"""

from __future__ import annotations

import os
import sys

from papycluster import NuMap, Piper, Plumber, Worker


def main(log_dir: str, items: int, hosts: list[str]) -> int:
    def square(inbox):  # defined here: the nodes get it by value (cloudpickle)
        import os
        import socket
        import time

        value = inbox[0]
        fd = os.open(f"{log_dir}/{socket.gethostname()}-{os.getpid()}.log",
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, b"%d\n" % value)
        finally:
            os.close(fd)
        time.sleep(0.002)  # the run lasts a few seconds: long enough to be killed in
        return value * value

    def plus_one(inbox):
        return inbox[0] + 1

    def pool() -> NuMap:
        return NuMap(worker_num=0, worker_remote=[(host, 2) for host in hosts])

    plumber = Plumber(pipes=[(Piper(Worker(square), parallel=pool(), name="square"),
                              Piper(Worker(plus_one), parallel=pool(), name="plus_one"))],
                      checkpoint=os.environ["PAPY_CHECKPOINT_URL"],
                      checkpoint_name=os.environ["PAPY_CHECKPOINT_NAME"])
    plumber.start([range(items)])
    plumber.run()
    finished = plumber.wait(600)
    if not finished:
        plumber.pause()
    plumber.stop()
    print("RESUMED", plumber.stats["resumed"], "OUT", plumber.stats["items_out"],
          "ERRORS", plumber.stats["errors_out"], flush=True)
    return 0 if finished else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")))
