#!/bin/sh
# Run nginx with an upstream block holding every address that Docker's DNS gives for the
# frontend service (one per replica), and reload nginx whenever that set changes, so that
# `docker compose up --scale frontend=N` needs no other step.
#   LB_UPSTREAM_HOST (frontend)  LB_UPSTREAM_PORT (8001)  LB_RESOLVE_INTERVAL_S (2)
set -eu
host=${LB_UPSTREAM_HOST:-frontend}
port=${LB_UPSTREAM_PORT:-8001}
interval=${LB_RESOLVE_INTERVAL_S:-2}
dir=/tmp/nginx
conf=$dir/upstream.conf
mkdir -p "$dir"

addresses() {
    getent ahostsv4 "$host" | awk '{print $1}' | sort -u || true
}

render() {
    echo "upstream frontends {"
    if [ -z "$1" ]; then
        # No replica yet: calls fail UNAVAILABLE until one appears.
        echo "    server 127.0.0.1:1;"
    fi
    for a in $1; do
        echo "    server $a:$port max_fails=1 fail_timeout=2s;"
    done
    echo "    keepalive 64;"
    echo "    keepalive_requests 1000000;"
    echo "}"
}

current=$(addresses)
render "$current" > "$conf"
echo "lb: frontends: $(echo $current)"

watch() {
    while sleep "$interval"; do
        now=$(addresses)
        [ -n "$now" ] && [ "$now" != "$current" ] || continue
        render "$now" > "$conf.new" && mv "$conf.new" "$conf"
        current=$now
        echo "lb: frontends: $(echo $current)"
        nginx -e stderr -c /etc/fabricserve/nginx.conf -s reload || echo "lb: reload failed"
    done
}
watch &

exec nginx -e stderr -c /etc/fabricserve/nginx.conf -g 'daemon off;'
