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

# shellcheck source=eng/debian-trixie.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian-trixie.sh"

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

can_install_from_trixie "libstdc++ lacks $required, which TorchSharp's native library needs" \
  "install GCC 13's (or newer) libstdc++ with your package manager." || exit 0

# Builds of several projects may start this at once; one installs, the others wait and re-check.
exec 9>/var/lock/mlnetpeft-ensure-libstdcxx.lock
flock 9
if runtime_ok; then exit 0; fi

msg "libstdc++ lacks $required (needed by TorchSharp 0.107). Installing libstdc++6 from Debian 13"
msg "(trixie) with apt pin priority 100; this upgrades libc6 too and takes about 30 s."
add_trixie_source
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq -o Dpkg::Use-Pty=0 >&2
apt-get install -y -qq -o Dpkg::Use-Pty=0 -t trixie libstdc++6 >&2

if runtime_ok; then
  msg "done: $(readlink -f "$(find_libstdcxx)") provides $required"
else
  msg "installed trixie's libstdc++6 but $required is still missing"; exit 1
fi
