#!/bin/sh
# Debian packages and the runtime user of every fabricserve image, on either base: the public
# python:3.11-slim-bookworm (python in /usr/local) or a bare debootstrap one (python3 from apt;
# bookworm's is 3.11, the CPython the torch wheel is built for).
#   install-os.sh runtime  : python3 (unless the base has one), tini, CA roots, uid/gid 10001
#   install-os.sh builder  : the venv module on top of runtime
#   install-os.sh PKG...   : just these packages (the balancer and Prometheus images)
set -eu
APP_UID=10001

apt_install() {
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
    apt-get clean
    rm -rf /var/lib/apt/lists/*
}

add_user() {
    getent group "$APP_UID" >/dev/null || groupadd --gid "$APP_UID" fabric
    getent passwd "$APP_UID" >/dev/null \
        || useradd --uid "$APP_UID" --gid "$APP_UID" --home-dir /home/fabric --create-home \
            --shell /usr/sbin/nologin fabric
    # Named volumes mounted here start with this ownership (Docker copies it on first use).
    for d in "$@"; do
        mkdir -p "$d"
        chown "$APP_UID:$APP_UID" "$d"
    done
}

case "$1" in
runtime)
    pkgs="tini ca-certificates"
    command -v python3 >/dev/null 2>&1 || pkgs="$pkgs python3"
    # shellcheck disable=SC2086
    apt_install $pkgs
    add_user /models /keys
    ;;
builder)
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    ;;
*)
    apt_install tini "$@"
    add_user
    ;;
esac
