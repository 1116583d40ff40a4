#!/usr/bin/env bash
# Install everything meshhook_keys needs on a fresh Debian 12 machine (run as root):
# PostgreSQL 15 from Debian, build tools, cargo-pgrx at the version pinned in Cargo.toml, and
# `cargo pgrx init` against Debian's pg_config (nothing is downloaded from postgresql.org).
# Idempotent: steps already done are skipped.
source "$(dirname "$0")/lib.sh"

if [ "$(id -u)" != 0 ]; then
    echo "scripts/setup.sh installs system packages: run it as root" >&2
    exit 2
fi

PKGS="build-essential pkg-config libssl-dev clang libclang-dev postgresql-15 postgresql-server-dev-15 sudo curl openssl pgbouncer postgresql-15-cron"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

want=$(pgrx_version)
have=$(cargo pgrx --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    say "installing cargo-pgrx $want (takes several minutes the first time)"
    cargo install --locked cargo-pgrx --version "$want"
fi

if ! grep -qs "pg15 = \"$PG_CONFIG\"" "${PGRX_HOME:-$HOME/.pgrx}/config.toml"; then
    say "cargo pgrx init --pg15 $PG_CONFIG"
    cargo pgrx init --pg15 "$PG_CONFIG" >/dev/null
fi

# The postgres OS user runs the test clusters and must be able to read the checkout.
chmod o+rx "$REPO_ROOT"
d=$REPO_ROOT; while [ "$d" != / ]; do d=$(dirname "$d"); chmod o+x "$d" 2>/dev/null || true; done
say "setup complete"
