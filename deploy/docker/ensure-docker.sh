#!/bin/sh
# Make sure docker, compose and debootstrap are there and dockerd answers: on a CI machine
# (Debian, root) install them with apt and start dockerd when needed; elsewhere just check.
set -eu
have_compose() {
    docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1
}
if ! command -v docker >/dev/null 2>&1 || ! have_compose || ! command -v debootstrap >/dev/null 2>&1
then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "need docker, docker compose and debootstrap (apt install docker.io docker-compose debootstrap)" >&2
        exit 1
    fi
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap
fi
if ! docker info >/dev/null 2>&1; then
    if [ "$(id -u)" != 0 ]; then
        echo "dockerd is not answering" >&2
        exit 1
    fi
    echo "starting dockerd (log: /var/log/dockerd-fabricserve.log)"
    nohup dockerd >/var/log/dockerd-fabricserve.log 2>&1 &
    i=0
    until docker info >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 60 ]; then
            echo "dockerd did not start; see /var/log/dockerd-fabricserve.log" >&2
            exit 1
        fi
        sleep 1
    done
fi
