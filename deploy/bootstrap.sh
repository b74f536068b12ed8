#!/bin/sh
# papycluster bootstrap for a POSIX host (Linux, macOS, BSD): start or stop this host's
# agent by hand, from a bundle made on the controller, when `papycluster up` cannot
# reach the host itself (or you prefer to start agents yourself).
#
#   On the controller:  python -c "from papycluster.cluster.bundle import build_bundle; print(build_bundle()[0])"
#   Copy the zip and this script to the host, then there:
#     deploy/bootstrap.sh BUNDLE.zip --name alpha [--cluster lab] [--port 18871] \
#         [--python python3] [--workers 2] [--advertise ADDR] [--shares '{"data": "/mnt/data"}'] \
#         [--profile native|windows]  < secret-file
#     deploy/bootstrap.sh BUNDLE.zip --stop [--cluster lab]
#
# The cluster secret is read from stdin (one line), written 0600 by the launcher, and
# never appears on a command line or in an environment variable. The bundle is unpacked
# once into ~/.cache/papycluster/manual-<sha256> and reused. Output: one line
# "PAPYCLUSTER-RESULT {json}" with the agent's pid and port (or the cause of failure).
set -eu

die() { echo "bootstrap: $*" >&2; exit 2; }

[ $# -ge 1 ] || die "usage: $0 BUNDLE.zip --name NAME [options] < secret  |  $0 BUNDLE.zip --stop"
bundle=$1; shift
[ -f "$bundle" ] || die "no bundle at $bundle"

name="" cluster="papycluster" port=18871 python="python3" workers=2 advertise=""
shares="{}" profile="native" stop=0
while [ $# -gt 0 ]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --cluster) cluster=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --python) python=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --advertise) advertise=$2; shift 2 ;;
    --shares) shares=$2; shift 2 ;;
    --profile) profile=$2; shift 2 ;;
    --stop) stop=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done

command -v "$python" >/dev/null 2>&1 || die "no Python: '$python' is not on PATH (use --python)"
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
  || die "Python too old: $("$python" --version 2>&1); papycluster needs >= 3.9"

# names go into JSON unquoted-escaped, so keep them to a safe alphabet
case "$name$cluster" in *[!A-Za-z0-9_.-]*) die "names may use letters, digits, _ . - only" ;; esac
case "$port$workers" in *[!0-9]*) die "--port and --workers are numbers" ;; esac

digest=$("$python" -c 'import hashlib,sys; print(hashlib.sha256(open(sys.argv[1],"rb").read()).hexdigest()[:16])' "$bundle")
cache="${XDG_CACHE_HOME:-$HOME/.cache}/papycluster/manual-$digest"
if [ ! -f "$cache/papycluster/__init__.py" ]; then
  mkdir -p "$(dirname "$cache")"
  tmp="$cache.tmp-$$"
  "$python" -c 'import sys,zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$bundle" "$tmp"
  mv "$tmp" "$cache" 2>/dev/null || rm -rf "$tmp"   # another bootstrap won the race
fi

runner='import json, sys
from papycluster.cluster.remote import render
config = json.loads(sys.stdin.readline())
exec(compile(render(sys.argv[1], config), sys.argv[1], "exec"), {"__name__": "__main__"})'

if [ "$stop" -eq 1 ]; then
  printf '{"cluster": "%s", "scan": true, "grace": 5.0}\n' "$cluster" |
    PYTHONPATH="$cache" "$python" -c "$runner" stop
  exit 0
fi

[ -n "$name" ] || die "--name is required"
IFS= read -r secret || true
[ -n "$secret" ] || die "no secret on stdin (pipe the cluster secret into this script)"
case "$secret" in *[!A-Za-z0-9_-]*) die "the secret must be hex or url-safe base64" ;; esac

# printf is a shell builtin: the secret reaches Python through a pipe, not argv
printf '{"name": "%s", "cluster": "%s", "secret": "%s", "port": %s, "workers": %s, "advertise": "%s", "profile": "%s", "shares": %s, "pythonpath": ["%s"], "timeout": 30}\n' \
  "$name" "$cluster" "$secret" "$port" "$workers" "$advertise" "$profile" "$shares" "$cache" |
  PYTHONPATH="$cache" "$python" -c "$runner" launch
