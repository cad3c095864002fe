#!/usr/bin/env bash
# Makes sure the C++ runtime is new enough for TorchSharp's native library.
#
# libLibTorchSharp.so (TorchSharp 0.107, libtorch 2.10) needs GLIBCXX_3.4.32, i.e. the libstdc++
# of GCC 13. Debian 12 ships GCC 12's (GLIBCXX_3.4.30), so TorchSharp cannot load there. On such a
# system, and only there, this script adds Debian 13 (trixie) as an apt source with pin priority
# 100 (so nothing else is ever taken from it) and installs trixie's libstdc++6. That also upgrades
# libc6 to 2.41, which libstdc++6 depends on.
#
# Idempotent: it exits at once when the check passes, on non-Debian systems, and on repeated runs.
# Usage: eng/ensure-libstdcxx.sh [--check | --print-mirror]
#   --check         only reports, exit 1 when the runtime is too old
#   --print-mirror  prints the Debian archive URI the trixie source would use (MLNETPEFT_APT_ETC overrides /etc/apt)
set -euo pipefail

required=GLIBCXX_3.4.32
msg() { echo "ensure-libstdcxx: $*" >&2; }

# The URI of the Debian archive this system's own apt sources use for its release (a local mirror stays in use);
# deb.debian.org only when none is configured. Reads deb822 .sources files and one-line sources.list entries,
# skipping our own trixie entry and the security archive (which has no trixie main suite under the same path).
debian_mirror() {
  local etc=${MLNETPEFT_APT_ETC:-/etc/apt} codename uri="" f
  codename=${MLNETPEFT_DEBIAN_CODENAME:-$(. /etc/os-release 2>/dev/null && echo "${VERSION_CODENAME:-}")}
  codename=${codename:-bookworm}
  for f in "$etc"/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    case "$f" in */mlnetpeft-trixie.sources) continue ;; esac
    uri=$(awk -v want="$codename" '
      function flush() { if (deb && suite_ok && uris != "" && !found) { print uris; found = 1 } deb = 0; suite_ok = 0; uris = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:"  { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:"   { for (i = 2; i <= NF; i++) if ($i !~ /security/) { uris = $i; break } }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == want) suite_ok = 1 }
      END { flush() }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  for f in "$etc"/sources.list "$etc"/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri=$(awk -v want="$codename" '
      $1 == "deb" {
        i = 2; if ($i ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
        if ($(i + 1) == want && $i !~ /security/) { print $i; exit }
      }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  done
  echo "http://deb.debian.org/debian"
}

if [ "${1:-}" = --print-mirror ]; then debian_mirror; exit 0; fi

find_libstdcxx() {
  local path
  path=$(/sbin/ldconfig -p 2>/dev/null | awk '/libstdc\+\+\.so\.6 .*x86-64|libstdc\+\+\.so\.6 .*AArch64/ {print $NF; exit}')
  if [ -z "$path" ]; then
    for p in /usr/lib/x86_64-linux-gnu/libstdc++.so.6 /usr/lib/aarch64-linux-gnu/libstdc++.so.6 /usr/lib64/libstdc++.so.6; do
      [ -e "$p" ] && { path=$p; break; }
    done
  fi
  echo "$path"
}

runtime_ok() {
  local lib
  lib=$(find_libstdcxx)
  [ -n "$lib" ] && grep -qa "$required" "$(readlink -f "$lib")"
}

[ "$(uname -s)" = Linux ] || exit 0
if runtime_ok; then exit 0; fi
[ "${1:-}" = --check ] && { msg "libstdc++ lacks $required"; exit 1; }

if [ ! -f /etc/debian_version ] || ! command -v apt-get >/dev/null; then
  msg "libstdc++ lacks $required, which TorchSharp's native library needs; this is not a Debian-based"
  msg "system, so install GCC 13's (or newer) libstdc++ with your package manager."
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  msg "libstdc++ lacks $required, which TorchSharp needs. Run this script as root once: sudo $0"
  exit 0
fi

# Builds of several projects may start this at once; one installs, the others wait and re-check.
exec 9>/var/lock/mlnetpeft-ensure-libstdcxx.lock
flock 9
if runtime_ok; then exit 0; fi

msg "libstdc++ lacks $required (needed by TorchSharp 0.107). Installing libstdc++6 from Debian 13"
msg "(trixie) with apt pin priority 100; this upgrades libc6 too and takes about 30 s."
mirror=$(debian_mirror)
msg "using the Debian mirror this system already uses: $mirror"
cat > /etc/apt/sources.list.d/mlnetpeft-trixie.sources <<SRC
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
cat > /etc/apt/preferences.d/mlnetpeft-trixie <<'PIN'
# Added by MLNetPeft eng/ensure-libstdcxx.sh: take packages from trixie only when asked for.
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq -o Dpkg::Use-Pty=0 >&2
apt-get install -y -qq -o Dpkg::Use-Pty=0 -t trixie libstdc++6 >&2

if runtime_ok; then
  msg "done: $(readlink -f "$(find_libstdcxx)") provides $required"
else
  msg "installed trixie's libstdc++6 but $required is still missing"; exit 1
fi
