#!/usr/bin/env bash
# tests/ktls/guest.sh: run one command in a throw-away QEMU guest whose kernel has kernel
# TLS, and exit with the command's status. `make test-ktls` runs tests/ktls through it.
#
#   tests/ktls/guest.sh CMD [ARG...]      as root, from the directory CMD works in
#
# Why a guest. kTLS needs the kernel's `tls` module, and the kernels this project is built
# and tested on (CI included) have none (`tls` is missing from
# /proc/sys/net/ipv4/tcp_available_ulp). So the kTLS tests boot Debian's stock kernel
# package, which has CONFIG_TLS=m, for the length of one command.
#
# The guest. The kernel package is downloaded and unpacked (never installed) into a cache
# outside the clone. A busybox initramfs loads the few modules needed to reach the host,
# then the guest's root is the host's / over 9p, read-only under a tmpfs overlay: the
# guest runs the host's Python and the extension built on the host, and whatever it
# writes outside the work directory is discarded. The current directory is shared
# read-write at the same path, so results come back. CMD runs as root there with the
# caller's environment, stdin /dev/null, stdout and stderr passed through, `tls` loaded
# and loopback up; the guest has no other network device.
#
# The CPU is QEMU's software emulation (TCG): on the nested-virtualisation machines the
# project runs on, /dev/kvm opens but cannot run this guest. Guest code runs about 13
# times slower than on the host (boot plus a trivial command: 5-7 s), so build on the
# host and put only the kTLS tests in the guest. Timings inside the guest mean nothing.
#
# Exit status: CMD's own; 124 when KTLS_VM_TIMEOUT ran out; 125 when the guest never ran
# CMD (the reason, or the guest console, is printed).
#
# The first run installs qemu-system-x86 and kmod with apt-get and downloads the kernel
# and busybox-static packages (about 440 MB unpacked for Debian 12's kernel); later runs
# do no apt work. Environment:
#   KTLS_VM_KERNEL   kernel package (default: what linux-image-amd64 depends on), e.g.
#                    linux-image-7.3.4+deb13-amd64. A package split into
#                    linux-{binary,modules,base}-VERSION (Debian 13's newer kernels) is
#                    fetched with those parts.
#   KTLS_VM_SUITE    take the kernel from this Debian suite (e.g. trixie-backports)
#                    through a private apt sources list in the cache, on the mirror that
#                    the machine's own apt sources name. Default: the machine's sources.
#   KTLS_VM_CACHE    cache directory (default /var/cache/relaycore-ktls)
#   KTLS_VM_TIMEOUT  stop the guest after this many seconds (default: no limit)
#   KTLS_VM_MEM      guest memory in MiB (default 2048)
#   KTLS_VM_VERBOSE  1: say what it does, and print the guest console at the end
set -euo pipefail

prog=tests/ktls/guest.sh
CACHE=${KTLS_VM_CACHE:-/var/cache/relaycore-ktls}
SUITE=${KTLS_VM_SUITE:-}
TIMEOUT=${KTLS_VM_TIMEOUT:-}
MEM=${KTLS_VM_MEM:-2048}
VERBOSE=${KTLS_VM_VERBOSE:-0}

die() { echo "$prog: $*" >&2; exit 125; }
say() { if [ "$VERBOSE" = 1 ]; then echo "$prog: $*" >&2; fi; }

[ $# -ge 1 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "must run as root (qemu's 9p export of / and apt-get need it)"
WORKDIR=$(pwd -P)
[ "$WORKDIR" != / ] || die "run it from a project directory, not from /"

# ---------------------------------------------------------------------------- apt

# Two sets of apt options. SYS_APT: the machine's own sources (qemu, kmod, busybox).
# KERNEL_APT: the same, or with KTLS_VM_SUITE a sources list of our own, its state kept in
# the cache, so that the machine's apt configuration is never changed; its mirror is the
# machine's own Debian mirror (ext/openssl/debian-suite.sh, which the OpenSSL fetch uses too).
# shellcheck source=ext/openssl/debian-suite.sh
. "$(cd "$(dirname "$0")" && pwd -P)/../../ext/openssl/debian-suite.sh"
# shellcheck disable=SC2034  # SYS_APT is read through namerefs (apt_update, fetch_debs)
SYS_APT=()
KERNEL_APT=()
private_sources() {
    suite_apt "$CACHE/apt/$SUITE" "$SUITE" KERNEL_APT ||
        die "no Debian mirror (a URI ending in /debian) in the /etc/apt sources"
}

apt_quiet() {  # apt-get ARGS..., its output shown only when it fails
    DEBIAN_FRONTEND=noninteractive apt-get -q -y -o DPkg::Lock::Timeout=600 "$@" \
        > "$CACHE/apt.log" 2>&1 || { cat "$CACHE/apt.log" >&2; die "apt-get $* failed"; }
}
UPDATED=" "
apt_update() {  # $1: SYS_APT or KERNEL_APT; once per run
    local -n opts=$1
    case "$UPDATED" in *" $1 "*) return 0 ;; esac
    say "apt-get update${opts[*]:+ ($SUITE)}"
    apt_quiet "${opts[@]}" update
    UPDATED="$UPDATED$1 "
}

ensure_host_packages() {
    local missing=()
    command -v qemu-system-x86_64 >/dev/null || missing+=(qemu-system-x86)
    command -v depmod >/dev/null && command -v modprobe >/dev/null || missing+=(kmod)
    command -v xz >/dev/null || missing+=(xz-utils)
    [ ${#missing[@]} -gt 0 ] || return 0
    say "installing ${missing[*]}"
    apt_update SYS_APT
    apt_quiet install --no-install-recommends "${missing[@]}"
}

fetch_debs() {  # DEST SYS_APT|KERNEL_APT PKG...: download (not install), unpack into DEST
    local dest=$1 which=$2 dl deb
    shift 2
    dl=$(mktemp -d)
    if ! download_debs "$dl" "$which" "$@" >/dev/null 2>&1; then
        apt_update "$which"
        download_debs "$dl" "$which" "$@" >/dev/null ||
            { rm -rf "$dl"; die "apt-get download $* failed"; }
    fi
    rm -rf "$dest"
    mkdir -p "$dest"
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$dest"; done
    rm -rf "$dl"
}

# ---------------------------------------------------------------------------- kernel

# PKG: KTLS_VM_KERNEL, or what linux-image-amd64 depends on (remembered in the cache).
kernel_package() {
    PKG=${KTLS_VM_KERNEL:-}
    [ -z "$PKG" ] || return 0
    local memo="$CACHE/default-kernel${SUITE:+-$SUITE}"
    if [ ! -s "$memo" ]; then
        apt_update KERNEL_APT
        apt-cache "${KERNEL_APT[@]}" depends linux-image-amd64 2>/dev/null |
            awk '/Depends: linux-image-[0-9]/ {print $2; exit}' > "$memo"
        [ -s "$memo" ] || { rm -f "$memo"; die "cannot resolve linux-image-amd64"; }
    fi
    PKG=$(cat "$memo")
}

# $CACHE/kernels/PKG/: vmlinuz (and vmlinux), config, version, lib/modules/VERSION.
ensure_kernel() {
    local pkg=$1 dir="$CACHE/kernels/$1"
    [ -s "$dir/version" ] && return 0
    local parts
    if ! apt-cache "${KERNEL_APT[@]}" show "$pkg" >/dev/null 2>&1; then
        apt_update KERNEL_APT
        apt-cache "${KERNEL_APT[@]}" show "$pkg" >/dev/null 2>&1 ||
            die "no package $pkg in ${SUITE:-the apt sources of this machine}"
    fi
    # Debian 13's newer kernels split the image into binary, modules and base packages.
    parts=$(apt-cache "${KERNEL_APT[@]}" depends "$pkg" 2>/dev/null |
            awk '/Depends: linux-(binary|modules|base)-/ {print $2}' | sort -u || true)
    say "fetching $pkg ${parts//$'\n'/ }"
    local tmp="$CACHE/kernels/$pkg.tmp"
    # shellcheck disable=SC2086  # $parts: package names, one per word
    fetch_debs "$tmp/root" KERNEL_APT "$pkg" $parts
    # Debian 12 puts the kernel in /boot and the modules in /lib/modules/VERSION; the split
    # packages put both in /usr/lib/modules/VERSION.
    local kver='' m f
    for m in "$tmp"/root/lib/modules/[0-9]* "$tmp"/root/usr/lib/modules/[0-9]*; do
        if [ -d "$m" ]; then kver=${m##*/}; break; fi
    done
    [ -n "$kver" ] || die "$pkg has no modules directory"
    for f in "$tmp/root/boot/vmlinuz-$kver" "$m/vmlinuz"; do
        [ -f "$f" ] && mv "$f" "$tmp/vmlinuz"
    done
    for f in "$tmp/root/boot/config-$kver" "$m/config"; do
        [ -f "$f" ] && mv "$f" "$tmp/config"
    done
    [ -f "$tmp/vmlinuz" ] || die "$pkg has no vmlinuz"
    grep -q '^CONFIG_TLS=[ym]' "$tmp/config" 2>/dev/null || die "$pkg has no CONFIG_TLS"
    mkdir -p "$tmp/lib/modules"
    mv "$m" "$tmp/lib/modules/$kver"
    rm -rf "$tmp/root"
    depmod -b "$tmp" "$kver"
    # The uncompressed ELF vmlinux inside the bzImage: qemu boots it through its PVH entry
    # point, which skips the decompression in the guest (about 4 s under TCG). Debian 12's
    # kernels are xz-compressed, Debian 13's newer ones zstd; anything else boots as it is.
    local off
    off=$(grep -abo $'\xfd7zXZ\x00' "$tmp/vmlinuz" | head -n1 | cut -d: -f1 || true)
    if [ -n "$off" ]; then
        tail -c +"$((off + 1))" "$tmp/vmlinuz" | xz -dc 2>/dev/null > "$tmp/vmlinux" || true
    else
        off=$(grep -abo $'\x28\xb5\x2f\xfd' "$tmp/vmlinuz" | head -n1 | cut -d: -f1 || true)
        if [ -n "$off" ] && command -v zstd >/dev/null; then
            tail -c +"$((off + 1))" "$tmp/vmlinuz" | zstd -qdc 2>/dev/null > "$tmp/vmlinux" || true
        fi
    fi
    if [ -f "$tmp/vmlinux" ] &&
        [ "$(head -c4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' ')" != 7f454c46 ]; then
        rm -f "$tmp/vmlinux"
    fi
    echo "$kver" > "$tmp/version"
    rm -rf "$dir"
    mv "$tmp" "$dir"
}

ensure_busybox() {
    [ -x "$CACHE/busybox" ] && return 0
    say "fetching busybox-static"
    fetch_debs "$CACHE/bb.tmp" SYS_APT busybox-static
    mv "$CACHE/bb.tmp/bin/busybox" "$CACHE/busybox"
    rm -rf "$CACHE/bb.tmp"
}

# The initramfs: static busybox, the modules that reach the 9p shares and the virtio
# ports, `tls`, and /init. Rebuilt when this script changes.
ensure_initramfs() {
    local dir=$1 kver=$2 img="$1/initramfs.img"
    [ -f "$img" ] && [ "$img" -nt "$0" ] && return 0
    say "building the initramfs for $kver"
    local t m verb f base seen=" "
    t=$(mktemp -d)
    mkdir -p "$t/bin" "$t/modules" "$t/proc" "$t/sys" "$t/dev" "$t/newroot"
    cp "$CACHE/busybox" "$t/bin/busybox"
    : > "$t/modules/order"
    for m in virtio_pci virtio_console 9pnet_virtio 9p overlay tls; do
        # Lines "insmod PATH" in load order; "builtin NAME" needs nothing.
        while read -r verb f _; do
            [ "$verb" = insmod ] || continue
            case "$seen" in *" $f "*) continue ;; esac
            seen="$seen$f "
            base=$(basename "$f")
            case "$f" in
                *.xz)  base=${base%.xz};  xz -dc "$f" > "$t/modules/$base" ;;
                *.zst) base=${base%.zst}; zstd -qdc "$f" > "$t/modules/$base" ;;
                *)     cp "$f" "$t/modules/$base" ;;
            esac
            echo "$base" >> "$t/modules/order"
        done < <(modprobe -d "$dir" -S "$kver" --show-depends "$m")
    done
    cat > "$t/init" <<'EOF'
#!/bin/busybox sh
# Stage 1 (initramfs): load the drivers, assemble the root, switch to it.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
fail() { echo "guest init: $*" >&2; echo o > /proc/sysrq-trigger; sleep 5; }
while read -r m; do insmod "/modules/$m" || fail "insmod $m"; done < /modules/order
ip link set lo up
O=trans=virtio,version=9p2000.L,msize=262144
mkdir -p /lower /rw /ctl
mount -t 9p -o "$O,ro,cache=loose" hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o mode=0755 tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \
    || fail "mount overlay"
mount -t 9p -o "$O" ctl /ctl || fail "mount ctl"
. /ctl/settings
mkdir -p "/newroot/lib/modules/$KVER"
mount --bind "/lower$MODDIR" "/newroot/lib/modules/$KVER"
mkdir -p /newroot/run /newroot/tmp
mount -t tmpfs -o mode=0755 tmpfs /newroot/run
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mkdir -p /newroot/run/guest
mount --move /ctl /newroot/run/guest
mkdir -p "/newroot$WORKDIR"
mount -t 9p -o "$O" work "/newroot$WORKDIR" || fail "mount work"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
exec switch_root /newroot /bin/bash /run/guest/stage2
EOF
    chmod 755 "$t/init"
    (cd "$t" && find . | "$CACHE/busybox" cpio -o -H newc 2>/dev/null) > "$img.tmp"
    mv "$img.tmp" "$img"
    rm -rf "$t"
}

# ---------------------------------------------------------------------------- setup

mkdir -p "$CACHE"
exec 9> "$CACHE/.lock"
flock 9   # one first-time setup at a time; the guests themselves share nothing
ensure_host_packages
if [ -n "$SUITE" ]; then private_sources; fi
kernel_package
ensure_kernel "$PKG"
ensure_busybox
KDIR=$CACHE/kernels/$PKG
KVER=$(cat "$KDIR/version")
ensure_initramfs "$KDIR" "$KVER"
flock -u 9

RUN=$(mktemp -d "${TMPDIR:-/tmp}/relaycore-ktls.XXXXXX")
QPID='' CAT1='' CAT2=''
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    if [ -n "$QPID" ]; then kill "$QPID" 2>/dev/null || true; wait "$QPID" 2>/dev/null || true; fi
    for p in $CAT1 $CAT2; do kill "$p" 2>/dev/null || true; done
    rm -rf "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

{
    printf 'KVER=%q\n' "$KVER"
    printf 'MODDIR=%q\n' "$KDIR/lib/modules/$KVER"
    printf 'WORKDIR=%q\n' "$WORKDIR"
} > "$RUN/settings"

# The caller's environment, minus what only means something on the host.
env -0 | while IFS= read -r -d '' kv; do
    k=${kv%%=*}
    case "$k" in
        '' | *[!A-Za-z0-9_]* | [0-9]*) continue ;;
        PWD | OLDPWD | SHLVL | _ | HOSTNAME | BASH_FUNC_*) continue ;;
    esac
    printf 'export %s=%q\n' "$k" "${kv#*=}"
done > "$RUN/env"

{
    printf 'cd %q || exit 126\n' "$WORKDIR"
    printf 'exec'
    printf ' %q' "$@"
    printf '\n'
} > "$RUN/cmd"

cat > "$RUN/stage2" <<'EOF'
# Stage 2: PID 1 in the overlay root. CMD's output goes to two virtio serial ports that the
# host copies to its stdout and stderr; its status comes back in /run/guest/rc.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
hostname ktls-guest 2>/dev/null
out=/dev/null err=/dev/null
for p in /sys/class/virtio-ports/*; do
    case "$(cat "$p/name" 2>/dev/null)" in
        out) out=/dev/${p##*/} ;;
        err) err=/dev/${p##*/} ;;
    esac
done
grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp ||
    echo "ktls guest: warning: the tls ULP is not available" > "$err"
(
    . /run/guest/env
    if [ -n "${TMPDIR:-}" ]; then mkdir -p "$TMPDIR"; fi
    . /run/guest/cmd
) < /dev/null > "$out" 2> "$err"
echo $? > /run/guest/rc
sync
echo 1 > /proc/sys/kernel/sysrq
echo o > /proc/sysrq-trigger
sleep 10
EOF

# ---------------------------------------------------------------------------- boot

# qemu writes the guest's output into FIFOs; two cats copy them to our stdout and stderr.
mkfifo "$RUN/out.fifo" "$RUN/err.fifo"
cat "$RUN/out.fifo" &
CAT1=$!
cat "$RUN/err.fifo" >&2 &
CAT2=$!

q() { printf '%s' "${1//,/,,}"; }   # a qemu option value: commas doubled
KIMG=$KDIR/vmlinuz
[ -f "$KDIR/vmlinux" ] && KIMG=$KDIR/vmlinux
BIOS=()
[ -f /usr/share/qemu/qboot.rom ] && BIOS=(-bios /usr/share/qemu/qboot.rom)
TO=()
[ -n "$TIMEOUT" ] && TO=(timeout --foreground -k 5 "$TIMEOUT")

say "booting $KVER ($MEM MiB)"
set +e
# One vCPU: under TCG on a 2-core host a second one was not faster (the other core is
# better left to qemu's I/O thread serving 9p).
"${TO[@]}" qemu-system-x86_64 \
    -nodefaults -no-user-config -nographic -no-reboot \
    -accel tcg,thread=multi,tb-size=512 -cpu max "${BIOS[@]}" -machine q35 -m "$MEM" -smp 1 \
    -kernel "$KIMG" -initrd "$KDIR/initramfs.img" \
    -append "console=ttyS0 loglevel=4 panic=-1 rdinit=/init" \
    -serial "file:$(q "$RUN")/console.log" -monitor none \
    -fsdev local,id=fsroot,path=/,security_model=none,readonly=on,multidevs=remap \
    -device virtio-9p-pci,fsdev=fsroot,mount_tag=hostroot \
    -fsdev local,id=fswork,path="$(q "$WORKDIR")",security_model=none,multidevs=remap \
    -device virtio-9p-pci,fsdev=fswork,mount_tag=work \
    -fsdev local,id=fsctl,path="$(q "$RUN")",security_model=none \
    -device virtio-9p-pci,fsdev=fsctl,mount_tag=ctl \
    -device virtio-serial-pci \
    -chardev file,id=out,path="$(q "$RUN")/out.fifo" -device virtserialport,chardev=out,name=out \
    -chardev file,id=err,path="$(q "$RUN")/err.fifo" -device virtserialport,chardev=err,name=err \
    < /dev/null &
QPID=$!
wait "$QPID"
qrc=$?
QPID=''
set -e
# qemu is gone: open and close each FIFO's write end, so a cat whose FIFO qemu never
# opened sees EOF too.
exec 7<> "$RUN/out.fifo" 8<> "$RUN/err.fifo"
exec 7>&- 8>&-
wait "$CAT1" "$CAT2" 2>/dev/null || true
CAT1='' CAT2=''

if [ "$VERBOSE" = 1 ]; then
    echo "---- guest console ----" >&2
    cat "$RUN/console.log" >&2
fi
if [ -s "$RUN/rc" ]; then
    exit "$(cat "$RUN/rc")"
fi
if [ -n "$TIMEOUT" ] && [ "$qrc" = 124 ]; then
    echo "$prog: stopped the guest after KTLS_VM_TIMEOUT=$TIMEOUT s" >&2
    exit 124
fi
echo "$prog: the guest did not run the command (qemu exit $qrc); its console:" >&2
tail -n 40 "$RUN/console.log" >&2 2>/dev/null || true
exit 125
