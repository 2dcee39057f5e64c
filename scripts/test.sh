#!/usr/bin/env bash
# Runs tumbler's whole test suite. On a fresh machine it first installs what
# the tests need when it is missing: the wasm32-wasip2 target, PostgreSQL,
# MariaDB and OpenSSH's server (Debian packages; run as root or with sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }
have_mariadb() { command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]; }
have_sshd() { [ -x /usr/sbin/sshd ] || command -v sshd >/dev/null 2>&1; }

missing=()
have_postgres || missing+=(postgresql)
have_mariadb || missing+=(mariadb-server)
have_sshd || missing+=(openssh-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  as_root apt-get update -qq
  # Package scripts must not start system-wide services: tests run their own servers.
  as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
    apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null
fi

log "rustup target add wasm32-wasip2"
rustup target add wasm32-wasip2

log "building the plugins (wasm32-wasip2) and testing the plugin SDK and the built-in rotators' helpers"
cargo build --manifest-path plugins/Cargo.toml --target wasm32-wasip2 --release
cargo test --manifest-path plugins/Cargo.toml -p tumbler-sdk -p postgres -p mysql -p ssh -p apikey

log "building tumbler"
cargo build --workspace --all-targets

log "running the tests"
cargo test --workspace --no-fail-fast -- "$@"
