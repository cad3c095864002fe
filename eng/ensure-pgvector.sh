#!/usr/bin/env bash
# Makes sure a PostgreSQL server with the pgvector extension is installed, for the tests of the pgvector store
# (each starts a throwaway server of its own: initdb in a temp folder, pg_ctl on a loopback port; no system service).
#
# Debian 12 ships PostgreSQL 15 without pgvector. On such a system, and only there, this script installs
# postgresql-17-pgvector (pgvector 0.8.0 and the PostgreSQL 17 server it needs) from Debian 13 (trixie) through the
# low-priority apt source that eng/ensure-libstdcxx.sh also uses (eng/debian-trixie.sh); about 30 s, once.
#
# Idempotent: it exits at once when a server with pgvector is found, on non-Debian systems, and on repeated runs.
# Usage: eng/ensure-pgvector.sh [--check | --print-bindir]
#   --check         only reports, exit 1 when no server with pgvector is installed
#   --print-bindir  prints the bin folder (initdb, pg_ctl) of the newest server that has pgvector
set -euo pipefail

msg() { echo "ensure-pgvector: $*" >&2; }
# shellcheck source=eng/debian-trixie.sh
. "$(dirname "${BASH_SOURCE[0]}")/debian-trixie.sh"

# The newest PostgreSQL whose server binaries and pgvector extension are both installed (Debian's layout).
find_bindir() {
  local dir version
  for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k5 -n -r); do
    version=$(basename "$(dirname "$dir")")
    if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -f "/usr/share/postgresql/$version/extension/vector.control" ]; then
      echo "$dir"; return 0
    fi
  done
  return 1
}

if [ "${1:-}" = --print-bindir ]; then find_bindir; exit $?; fi
[ "$(uname -s)" = Linux ] || exit 0
if find_bindir >/dev/null; then exit 0; fi
[ "${1:-}" = --check ] && { msg "no PostgreSQL server with pgvector is installed"; exit 1; }

can_install_from_trixie "no PostgreSQL server with pgvector found" \
  "install PostgreSQL and pgvector with your package manager (the pgvector store's tests need initdb, pg_ctl and vector.control)." || exit 0

exec 9>/var/lock/mlnetpeft-ensure-pgvector.lock
flock 9
if find_bindir >/dev/null; then exit 0; fi

export DEBIAN_FRONTEND=noninteractive
package=postgresql-17-pgvector
policy=$(apt-cache policy "$package" 2>/dev/null || true)
if ! grep -q 'Candidate: [0-9]' <<<"$policy"; then
  msg "adding Debian 13 (trixie) as an apt source with pin priority 100, for $package"
  add_trixie_source
  apt-get update -qq -o Dpkg::Use-Pty=0 >&2
fi
msg "installing $package (PostgreSQL 17 server + pgvector 0.8) from trixie; about 30 s, once."
# The server package would create and start a system cluster; the tests need none, so none is created.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/mlnetpeft-no-main-cluster.conf
log=$(mktemp)
if ! apt-get install -y -qq -o Dpkg::Use-Pty=0 -t trixie "$package" >"$log" 2>&1; then
  tail -n 40 "$log" >&2; rm -f "$log"; msg "apt-get install -t trixie $package failed"; exit 1
fi
rm -f "$log"

if bindir=$(find_bindir); then
  msg "done: $bindir has initdb and pg_ctl, and pgvector is installed"
else
  msg "installed $package but found no server with pgvector under /usr/lib/postgresql"; exit 1
fi
