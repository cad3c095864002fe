# Shared by eng/ensure-*.sh (sourced, not run): Debian 13 (trixie) as an extra apt source with pin priority 100,
# so that nothing is ever taken from it unless asked for by name with `-t trixie`.

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

# Adds the trixie source and its low pin (idempotent: the same two files are written each time); the caller runs
# apt-get update and installs with `-t trixie`.
add_trixie_source() {
  local mirror
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
# Added by MLNetPeft (eng/debian-trixie.sh): take packages from trixie only when asked for.
Package: *
Pin: release n=trixie
Pin-Priority: 100
PIN
}

# Returns 0 when this is a Debian-based system and we are root (the caller may install); otherwise prints what to do
# ($1: what is missing, $2: how to get it elsewhere) and returns 1, so the caller exits without failing the build.
can_install_from_trixie() {
  if [ ! -f /etc/debian_version ] || ! command -v apt-get >/dev/null; then
    msg "$1; this is not a Debian-based system, so $2"
    return 1
  fi
  if [ "$(id -u)" != 0 ]; then
    msg "$1. Run this script as root once: sudo $0"
    return 1
  fi
}
