#!/usr/bin/env bash
# Builds the guest kernels + busybox initramfs images used by the end-to-end tests
# (libs/testing/src/guest.ts) and cached under .cache/guest/ (git-ignored).
#
#   scripts/guest/build-guest-images.sh [--refresh] [--quiet] [linux-6.1|linux-6.12 ...]
#
# Output, one folder per kernel profile:
#   .cache/guest/<profile>/vmlinuz            the kernel
#   .cache/guest/<profile>/initramfs.cpio.gz  busybox + qemu-ga + virtio modules + /init
#                                             + /usr/bin/unmovable (scripts/guest/unmovable.c)
#   .cache/guest/<profile>/kernel-release     e.g. 6.1.0-56-cloud-amd64
#   .cache/guest/<profile>/stamp              inputs the image was built from
# The last lines of stdout are "<profile> <vmlinuz> <initramfs>", one per profile.
#
# Why a cache of our own: kernels are fetched with `apt-get download` + `dpkg -x`, never
# installed, so the host's /boot does not matter and CI gets the same bytes as a laptop.
# The backports suite (6.12) lives in an apt configuration private to this script
# (own sources list, lists dir and package cache), so the system's apt state is untouched.
#
# Cached runs only compare stamps (no apt, no network): well under a second.
# --refresh re-resolves the newest kernel versions from the archive and rebuilds if they moved.
#
# Environment: MEMPLANE_GUEST_CACHE overrides the cache folder.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cache="${MEMPLANE_GUEST_CACHE:-$repo/.cache/guest}"
aptdir="$cache/apt"
debdir="$cache/debs"

refresh=0
quiet=0
profiles=()
for arg in "$@"; do
  case "$arg" in
    --refresh) refresh=1 ;;
    --quiet) quiet=1 ;;
    linux-6.1 | linux-6.12) profiles+=("$arg") ;;
    -h | --help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "unknown argument: $arg" >&2; exit 2 ;;
  esac
done
[ ${#profiles[@]} -gt 0 ] || profiles=(linux-6.1 linux-6.12)

log() { [ "$quiet" = 1 ] || echo "[guest-images] $*" >&2; }
die() { echo "[guest-images] ERROR: $*" >&2; exit 1; }

# The ready marker /init prints on the serial console; guest.ts waits for the same string.
READY_MARKER="MEMPLANE-GUEST-READY"

# ---------------------------------------------------------------------------------------
# Host packages. qemu-guest-agent and busybox-static are installed (not just unpacked)
# because their binaries are copied into the initramfs together with the host's shared
# libraries found by ldd; kmod gives depmod (module dependency order); qemu-system-x86 is
# what the tests run the images with; gcc and libc6-dev build the static test helper
# `unmovable` (scripts/guest/unmovable.c) that the failure-path tests run in the guest.
# ---------------------------------------------------------------------------------------
host_packages=(busybox-static qemu-guest-agent qemu-system-x86 qemu-utils cpio xz-utils gzip kmod debian-archive-keyring gcc libc6-dev)

ensure_host_packages() {
  local missing=()
  for p in "${host_packages[@]}"; do
    [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" = 'install ok installed' ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ]; then
    die "missing packages: ${missing[*]}. Install them as root:
    sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}"
  fi
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || apt-get update
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

pkg_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo none; }

# ---------------------------------------------------------------------------------------
# Private apt configuration.
# ---------------------------------------------------------------------------------------

# The mirror the system already uses for Debian (deb822 or one-line format), so an
# internal mirror configured on the machine is honoured; deb.debian.org otherwise.
system_mirror() { # $1 = suite to look for (bookworm or bookworm-security)
  local suite="$1" uri=""
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk -v want="$suite" '
      BEGIN { RS=""; FS="\n" }
      {
        uris=""; suites=""
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/)   { sub(/^URIs:[ \t]*/, "", $i); uris=$i }
          if ($i ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", $i); suites=" " $i " " }
        }
        if (index(suites, " " want " ") > 0) { split(uris, u, /[ \t]+/); print u[1]; exit }
      }' "$f")"
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri="$(awk -v want="$suite" '
      $1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
        if ($(i+1) == want) { print $i; exit }
      }' "$f")"
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  if [ "$suite" = bookworm-security ]; then echo http://deb.debian.org/debian-security; else echo http://deb.debian.org/debian; fi
}

apt_opts=()
setup_private_apt() {
  mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial" "$aptdir/etc/preferences.d" "$debdir"
  local mirror security keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  mirror="$(system_mirror bookworm)"
  security="$(system_mirror bookworm-security)"
  cat >"$aptdir/etc/sources.list" <<EOF
# Written by scripts/guest/build-guest-images.sh; used only with its private apt options.
deb [signed-by=$keyring] $mirror bookworm main
deb [signed-by=$keyring] $mirror bookworm-updates main
deb [signed-by=$keyring] $security bookworm-security main
deb [signed-by=$keyring] $mirror bookworm-backports main
EOF
  apt_opts=(
    -o "Dir::Etc::sourcelist=$aptdir/etc/sources.list"
    -o "Dir::Etc::sourceparts=-"
    -o "Dir::Etc::preferences=$aptdir/etc/preferences"
    -o "Dir::Etc::preferencesparts=$aptdir/etc/preferences.d"
    -o "Dir::State::Lists=$aptdir/lists"
    -o "Dir::Cache=$aptdir/cache"
    -o "APT::Get::List-Cleanup=0"
    # Downloads land in our cache folder, which the _apt sandbox user may not write to.
    -o "APT::Sandbox::User=root"
  )
  : >"$aptdir/etc/preferences"
  # Refresh the private lists when absent, older than a day, or on --refresh.
  local stamp="$aptdir/lists/.updated"
  if [ "$refresh" = 1 ] || [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440 2>/dev/null)" ]; then
    log "apt-get update (private lists: $mirror bookworm{,-updates,-backports}, $security bookworm-security)"
    apt-get "${apt_opts[@]}" update -qq >&2 || apt-get "${apt_opts[@]}" update >&2
    touch "$stamp"
  fi
}

# Newest package whose name matches $1 and that the archive can actually deliver
# (pkgnames also lists names that are only referenced by other packages).
newest_pkg_matching() { # $1 = regex over package names
  local name policy
  for name in $(apt-cache "${apt_opts[@]}" pkgnames linux-image-6 2>/dev/null | grep -E "$1" | sort -rV); do
    # Captured first: `grep -q` closing the pipe early would fail the pipeline (pipefail).
    policy="$(apt-cache "${apt_opts[@]}" policy "$name" 2>/dev/null || true)"
    if [[ "$policy" == *"Candidate: "[0-9]* ]]; then
      echo "$name"
      return
    fi
  done
}

resolve_kernel_package() { # $1 = profile -> package name
  case "$1" in
    linux-6.1)
      # The default suite's metapackage points at the current 6.1 ABI package. Backports
      # is NotAutomatic, so the candidate stays in bookworm(-security/-updates).
      apt-cache "${apt_opts[@]}" depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-6\.1\./ && !found { print $2; found = 1 }'
      ;;
    linux-6.12)
      # The unsigned package carries the same vmlinuz as the signed one. Debian ships 6.12 for
      # bookworm in backports (6.12.x-1~bpo12+1) and, since the 6.12 LTS move, also in
      # bookworm-security (often newer); both are named linux-image-6.12.<n>+deb12-*. Take
      # the newest either offers.
      newest_pkg_matching '^linux-image-6\.12\.[0-9]+\+(deb12|bpo)(\.[0-9]+)?-cloud-amd64-unsigned$'
      ;;
  esac
}

fetch_kernel() { # $1 = package -> prints unpacked root dir
  local pkg="$1" deb root
  deb="$(ls "$debdir/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)"
  if [ -z "$deb" ]; then
    log "apt-get download $pkg"
    (cd "$debdir" && apt-get "${apt_opts[@]}" download "$pkg" >&2)
    deb="$(ls "$debdir/${pkg}_"*.deb | sort -V | tail -n1)"
  fi
  root="$cache/unpacked/$pkg"
  if [ ! -f "$root/.done" ]; then
    log "dpkg -x $(basename "$deb")"
    rm -rf "$root"; mkdir -p "$root"
    dpkg -x "$deb" "$root"
    touch "$root/.done"
  fi
  echo "$root"
}

# ---------------------------------------------------------------------------------------
# Initramfs.
# ---------------------------------------------------------------------------------------

# Copies a host binary and every shared library ldd reports for it into $2.
copy_with_libs() { # $1 = binary, $2 = rootfs
  local bin="$1" root="$2" lib
  install -D -m 0755 "$bin" "$root$bin"
  for lib in $(ldd "$bin" | awk '/=> \// { print $3 } /^[ \t]*\/[^ ]+ \(/ { print $1 }'); do
    [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
  done
}

# Module load order: the closure of the wanted modules over modules.dep (depmod's output),
# dependencies first. Built-in modules (6.12: virtio, virtio_pci) are simply absent.
module_load_order() { # $1 = modules dir, rest = wanted module names
  local moddir="$1"; shift
  awk -v wanted="$*" '
    function base(p) { sub(/.*\//, "", p); sub(/\.ko(\.(xz|zst|gz))?$/, "", p); gsub(/-/, "_", p); return p }
    function visit(m,   i, n, d) {
      if (m in seen) return; seen[m] = 1
      if (!(m in path)) return
      n = split(deps[m], d, " ")
      for (i = n; i >= 1; i--) visit(d[i])
      print path[m]
    }
    {
      sub(/:$/, "", $1); m = base($1); path[m] = $1; list = ""
      for (i = 2; i <= NF; i++) list = list " " base($i)
      deps[m] = list
    }
    END { n = split(wanted, w, " "); for (i = 1; i <= n; i++) visit(w[i]) }
  ' "$moddir/modules.dep"
}

write_init() { # $1 = rootfs
  cat >"$1/init" <<'EOF'
#!/bin/sh
# PID 1 of the memplane test guest. Must never exit (that would panic the kernel).
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp /var/run
mount -t devpts devpts /dev/pts 2>/dev/null

while read -r mod; do
  [ -n "$mod" ] || continue
  insmod "/lib/modules/$mod" || echo "memplane-init: insmod $mod failed"
done </etc/modules-order

# No udev, so no /dev/virtio-ports/<name> links: find the port QEMU named for the agent.
port=""
i=0
while [ -z "$port" ] && [ $i -lt 100 ]; do
  for p in /sys/class/virtio-ports/vport*; do
    [ -f "$p/name" ] || continue
    if [ "$(cat "$p/name")" = org.qemu.guest_agent.0 ]; then port="/dev/${p##*/}"; fi
  done
  [ -n "$port" ] && [ -c "$port" ] && break
  port=""; i=$((i + 1)); sleep 0.1
done

if [ -n "$port" ]; then
  # Restarted if it dies, so one crash does not strand the test harness.
  ( while true; do
      qemu-ga -m virtio-serial -p "$port" -t /run
      echo "memplane-init: qemu-ga exited ($?), restarting"
      sleep 1
    done ) &
else
  echo "memplane-init: no virtio port named org.qemu.guest_agent.0 (guest agent not started)"
fi

echo "@READY_MARKER@ kernel=$(uname -r) qga=${port:-none} blocks=$(cat /sys/devices/system/memory/block_size_bytes 2>/dev/null)"
while true; do sleep 3600; done
EOF
  sed -i "s/@READY_MARKER@/$READY_MARKER/" "$1/init"
  chmod 0755 "$1/init"
}

build_profile() { # $1 = profile
  local profile="$1" out="$cache/$1"
  local stamp_want stamp_have="" pkg kroot kver moddir root t0
  t0=$(date +%s)
  local script_hash
  # The image also contains the helper built from unmovable.c: its source is an input too.
  script_hash="$(cat "$0" "$here/unmovable.c" | sha256sum | cut -c1-16)"
  # Cached path: reuse the kernel version recorded by the last build unless --refresh.
  if [ "$refresh" = 0 ] && [ -f "$out/stamp" ] && [ -f "$out/vmlinuz" ] && [ -f "$out/initramfs.cpio.gz" ]; then
    pkg="$(sed -n 's/^kernel-package=//p' "$out/stamp")"
    stamp_want="$(printf 'script=%s\nkernel-package=%s\nqemu-ga=%s\nbusybox=%s\n' \
      "$script_hash" "$pkg" "$(pkg_version qemu-guest-agent)" "$(pkg_version busybox-static)")"
    if [ "$(cat "$out/stamp")" = "$stamp_want" ]; then
      log "$profile: cached ($(cat "$out/kernel-release"))"
      return 0
    fi
  fi

  [ ${#apt_opts[@]} -gt 0 ] || setup_private_apt
  pkg="$(resolve_kernel_package "$profile")"
  [ -n "$pkg" ] || die "$profile: no kernel package found in the archive (private lists under $aptdir)"
  stamp_want="$(printf 'script=%s\nkernel-package=%s\nqemu-ga=%s\nbusybox=%s\n' \
    "$script_hash" "$pkg" "$(pkg_version qemu-guest-agent)" "$(pkg_version busybox-static)")"
  if [ -f "$out/stamp" ] && [ "$(cat "$out/stamp")" = "$stamp_want" ] && [ -f "$out/initramfs.cpio.gz" ]; then
    log "$profile: up to date ($pkg)"
    return 0
  fi

  log "$profile: building from $pkg"
  kroot="$(fetch_kernel "$pkg")"
  # Kernels of both eras: /lib/modules (bookworm) or /usr/lib/modules (merged-/usr packages).
  moddir="$( (ls -d "$kroot"/lib/modules/*/ "$kroot"/usr/lib/modules/*/ 2>/dev/null || true) | head -n1)"
  moddir="${moddir%/}"
  [ -n "$moddir" ] || die "$profile: no modules dir in $pkg"
  kver="$(basename "$moddir")"
  # modules.dep is made by depmod at install time, so a `dpkg -x` tree lacks it.
  [ -f "$moddir/modules.dep" ] || depmod -b "${moddir%/lib/modules/$kver}" "$kver"
  [ -f "$moddir/modules.dep" ] || die "$profile: depmod produced no modules.dep"

  root="$(mktemp -d "$cache/rootfs.XXXXXX")"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,run,tmp,etc,lib/modules,var/run}
  install -m 0755 /bin/busybox "$root/bin/busybox"
  local applet
  for applet in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
  done
  copy_with_libs /usr/sbin/qemu-ga "$root"
  # Static, so it needs nothing from the host at run time (the guest has no libc of its own
  # beyond what qemu-ga pulled in).
  gcc -static -O2 -Wall -Wextra -Werror -o "$root/usr/bin/unmovable" "$here/unmovable.c"

  # virtio_pci and friends bring up the PCI transport (built in on 6.12), virtio_console
  # gives the agent its port, virtio_mem handles the DYNAMIC groups.
  : >"$root/etc/modules-order"
  local rel name
  while read -r rel; do
    [ -n "$rel" ] || continue
    name="$(basename "$rel")"
    case "$name" in
      *.ko.xz) xz -dc "$moddir/$rel" >"$root/lib/modules/${name%.xz}"; name="${name%.xz}" ;;
      *.ko.zst) die "zstd-compressed module $name: add zstd support" ;;
      *) cp "$moddir/$rel" "$root/lib/modules/$name" ;;
    esac
    echo "$name" >>"$root/etc/modules-order"
  done < <(module_load_order "$moddir" virtio_pci virtio_console virtio_mem)
  grep -q '^virtio_console.ko$' "$root/etc/modules-order" || grep -q '^CONFIG_VIRTIO_CONSOLE=y' "$kroot/boot/config-$kver" ||
    die "$profile: virtio_console neither module nor built in"
  write_init "$root"

  mkdir -p "$out"
  local vmlinuz
  vmlinuz="$(ls "$kroot"/boot/vmlinuz-* | head -n1)"
  cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
  (cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet --owner 0:0) | gzip -1 >"$out/initramfs.tmp"
  mv "$out/initramfs.tmp" "$out/initramfs.cpio.gz"
  # Every output is written to a temporary file and renamed: a cache copied with hard links
  # (cp -al, one per work tree) must not see its files change under it.
  echo "$kver" >"$out/kernel-release.tmp" && mv "$out/kernel-release.tmp" "$out/kernel-release"
  tr '\n' ' ' <"$root/etc/modules-order" | sed 's/ $/\n/' >"$out/modules.tmp" && mv "$out/modules.tmp" "$out/modules"
  printf '%s\n' "$stamp_want" >"$out/stamp.tmp" && mv "$out/stamp.tmp" "$out/stamp"
  rm -rf "$root"
  log "$profile: built $kver in $(($(date +%s) - t0)) s (modules: $(cat "$out/modules"))"
}

main() {
  ensure_host_packages
  mkdir -p "$cache"
  # One builder at a time per cache (parallel test files may call us together).
  exec 9>"$cache/.lock"
  flock 9
  trap 'rm -rf "$cache"/rootfs.*' EXIT
  local p
  for p in "${profiles[@]}"; do build_profile "$p"; done
  for p in "${profiles[@]}"; do echo "$p $cache/$p/vmlinuz $cache/$p/initramfs.cpio.gz"; done
}

main
