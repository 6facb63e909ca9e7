#!/bin/sh
# Make a Debian bookworm base image without any registry: debootstrap (minbase) into a temporary
# directory, trimmed the way Debian's slim images are, then `docker import`. Needs root and
# debootstrap; Debian's mirror is the only thing downloaded.
#   make-base.sh IMAGE [MIRROR]
set -eu
image=$1
mirror=${2:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/fabricserve-base.XXXXXX)
trap 'rm -rf "$root"' EXIT

debootstrap --variant=minbase bookworm "$root" "$mirror"

# No documentation, manuals or translations in this image or in what is installed on it later.
cat > "$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
CFG
# apt keeps no downloaded packages (as in Debian's official images).
cat > "$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
echo 'Acquire::Languages "none";' > "$root/etc/apt/apt.conf.d/docker-no-languages"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/usr/share/doc/* \
    "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
    "$root"/var/log/* "$root"/tmp/*

tar -C "$root" -c . | docker import --change 'CMD ["bash"]' - "$image"
echo "made $image"
