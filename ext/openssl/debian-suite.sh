# shellcheck shell=bash
# ext/openssl/debian-suite.sh: packages from another Debian suite, without touching the
# machine's apt configuration. Sourced (bash) by ext/openssl/fetch.sh (Debian 13's static
# OpenSSL) and tests/ktls/guest.sh (a newer kernel for the kTLS guest).
#
# A private sources list in a directory of the caller's: one line, the machine's own Debian
# mirror (the first URI of its apt sources that ends in /debian, read at run time: no
# mirror's host is written in the repository) with the wanted suite, signed by Debian's
# archive keyring, so apt still checks every package against the signed index. Its lists
# and package cache live next to it.

DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg

debian_mirror() {  # the machine's Debian mirror URI, or nothing
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do
        [ -f "$f" ] || continue
        case "$f" in
            *.sources) sed -n 's/^URIs:[[:space:]]*//p' "$f" | tr ' ' '\n' ;;
            *.list) sed -nE 's/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' "$f" ;;
        esac
    done | grep -E '/debian/?$' | head -n1 || true
}

suite_apt() {  # DIR SUITE NAME: NAME=(apt options) for SUITE, its state in DIR; 1: no mirror
    local dir=$1 suite=$2 uri
    local -n options=$3
    uri=$(debian_mirror)
    [ -n "$uri" ] || return 1
    mkdir -p "$dir/lists/partial" "$dir/cache"
    echo "deb [signed-by=$DEBIAN_KEYRING] $uri $suite main" > "$dir/sources.list"
    # shellcheck disable=SC2034  # the caller's array, through the nameref
    options=(-o "Dir::Etc::SourceList=$dir/sources.list" -o Dir::Etc::SourceParts=/dev/null
             -o "Dir::State::Lists=$dir/lists" -o "Dir::Cache=$dir/cache")
}

download_debs() {  # DIR NAME PKG...: apt-get download (apt options in array NAME) into DIR
    local dir=$1
    local -n opts=$2
    shift 2
    mkdir -p "$dir"
    chmod 755 "$dir"
    # apt downloads as _apt: a directory it cannot write makes it warn and fall back.
    if [ "$(id -u)" = 0 ] && id _apt >/dev/null 2>&1; then chown _apt "$dir"; fi
    (cd "$dir" && apt-get -q "${opts[@]}" download "$@")
}
