# papycluster platform_tags: what a host's Python needs of a wheel, for `up` to
# download the `packages` of the hosts file on the controller (pip download
# --platform/--python-version/--abi) for this host. Runs as `python -`; standard
# library only, Python 3.9. Prints PAPYCLUSTER-RESULT <json>.
import json
import platform
import sys
import sysconfig

CONFIG = {}  # replaced by render()


def main():
    libc, libc_version = platform.libc_ver()
    mac = platform.mac_ver()[0]
    out = {"version": list(sys.version_info[:3]),
           "implementation": sys.implementation.name,
           "os": platform.system().lower(), "machine": platform.machine().lower(),
           "libc": [libc, libc_version], "mac": mac,
           "platform": sysconfig.get_platform(),
           "abiflags": getattr(sys, "abiflags", ""),
           "maxsize64": sys.maxsize > 2 ** 32}
    print("PAPYCLUSTER-RESULT " + json.dumps(out))
    sys.stdout.flush()


main()
