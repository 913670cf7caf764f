#!/usr/bin/env bash
# ext/openssl/fetch.sh: print the directory that holds Debian 13's static OpenSSL 3.5
# (include/openssl/*.h, lib/libssl.a, lib/libcrypto.a, VERSION), fetching it the first time.
#
# Why: Debian 12's OpenSSL is 3.0 (no ML-KEM, no kTLS receive for TLS 1.3, slow fetches);
# Debian 13's libssl-dev ships static libraries that link and run on Debian 12 (docs/
# HOTPATH.md §7.4). ext/openssl/locate.py (setup.py) runs this when the system's OpenSSL
# is older than 3.5.
#
# Fetched once: `apt-get download libssl-dev` from suite trixie through a private sources
# list (ext/openssl/debian-suite.sh), unpacked into CACHE/openssl-<package version>; later
# runs print that directory and touch no network. CACHE: $RELAYCORE_OPENSSL_CACHE, else
# /var/cache/relaycore as root, else ${XDG_CACHE_HOME:-~/.cache}/relaycore. Delete the
# directory to fetch the suite's current version again. Messages go to stderr; exit 1 when
# the library cannot be had.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd -P)
# shellcheck source=ext/openssl/debian-suite.sh
. "$here/debian-suite.sh"

SUITE=trixie
PACKAGE=libssl-dev
if [ -n "${RELAYCORE_OPENSSL_CACHE:-}" ]; then
    CACHE=$RELAYCORE_OPENSSL_CACHE
elif [ "$(id -u)" = 0 ]; then
    CACHE=/var/cache/relaycore
else
    CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/relaycore
fi

die() { echo "ext/openssl/fetch.sh: $*" >&2; exit 1; }

cached() {  # the newest complete cache entry, or nothing
    local d
    for d in "$CACHE"/openssl-*/VERSION; do
        if [ -f "$d" ]; then dirname "$d"; fi
    done | sort -V | tail -n1
}

mkdir -p "$CACHE"
exec 9> "$CACHE/.openssl.lock"
flock 9   # parallel builds fetch once
found=$(cached)
if [ -n "$found" ]; then
    echo "$found"
    exit 0
fi

if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
    die "no apt-get: install OpenSSL >= 3.5 (its pkg-config file) or set RELAYCORE_OPENSSL_PREFIX"
fi
echo "ext/openssl/fetch.sh: fetching $PACKAGE from Debian $SUITE into $CACHE (once)" >&2
APT=()
suite_apt "$CACHE/apt/$SUITE" "$SUITE" APT ||
    die "no Debian mirror (a URI ending in /debian) in the /etc/apt sources"
log="$CACHE/apt.log"
apt-get -q "${APT[@]}" update > "$log" 2>&1 || { cat "$log" >&2; die "apt-get update ($SUITE) failed"; }
dl=$(mktemp -d "$CACHE/dl.XXXXXX")
trap 'rm -rf "$dl"' EXIT
download_debs "$dl" APT "$PACKAGE" > "$log" 2>&1 ||
    { cat "$log" >&2; die "apt-get download $PACKAGE ($SUITE) failed"; }
deb=$(ls "$dl"/"$PACKAGE"_*.deb)
version=$(dpkg-deb -f "$deb" Version)
arch=$(dpkg-deb -f "$deb" Architecture)
dest="$CACHE/openssl-$version"
rm -rf "$dest.tmp"
mkdir -p "$dest.tmp/include" "$dest.tmp/lib"
dpkg-deb -x "$deb" "$dl/root"
# Debian splits the headers: the arch-specific configuration.h lives apart.
cp -r "$dl/root/usr/include/openssl" "$dest.tmp/include/"
cp "$dl"/root/usr/include/*-linux-gnu*/openssl/*.h "$dest.tmp/include/openssl/"
cp "$dl"/root/usr/lib/*-linux-gnu*/lib{ssl,crypto}.a "$dest.tmp/lib/"
cp "$dl/root/usr/share/doc/$PACKAGE/copyright" "$dest.tmp/COPYRIGHT" 2>/dev/null || true
printf '%s %s %s\n' "$PACKAGE" "$version" "$arch" > "$dest.tmp/VERSION"
rm -rf "$dest"
mv "$dest.tmp" "$dest"
echo "$dest"
