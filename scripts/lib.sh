# Shared helpers for the meshhook_keys scripts (the test suites' own are in tests/lib.sh). Source it;
# do not run it.
# Everything that touches a cluster runs as the `postgres` OS user (PostgreSQL refuses root).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/15/bin/pg_config}
PGBIN=/usr/lib/postgresql/15/bin
EXT=meshhook_keys

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Run a command as the postgres OS user (or as ourselves if we already are not root).
as_pg() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# The pgrx version pinned in Cargo.toml: cargo-pgrx must be exactly this version.
pgrx_version() {
    sed -n 's/^pgrx = "=\([0-9.]*\)".*/\1/p' "$REPO_ROOT/Cargo.toml"
}

# A fresh 256-bit root key in FILE, owned by postgres, mode 0600.
make_root_key() {
    local file=$1
    install -d -o postgres -g postgres -m 700 "$(dirname "$file")"
    (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$file")
    chown postgres:postgres "$file"
    chmod 600 "$file"
}

# init_cluster DIR PORT [extra postgresql.conf lines...]: initdb DIR/data, socket in DIR.
init_cluster() {
    local dir=$1 port=$2; shift 2
    install -d -o postgres -g postgres -m 755 "$dir"
    as_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-locale -E UTF8 >/dev/null
    {
        echo "port = $port"
        echo "listen_addresses = ''"
        echo "unix_socket_directories = '$dir'"
        echo "shared_preload_libraries = '$EXT'"
        echo "max_worker_processes = 16"
        for line in "$@"; do echo "$line"; done
    } >> "$dir/data/postgresql.conf"
}

# (without RUST_BACKTRACE: pgrx would add a backtrace to the DETAIL of errors that cross Rust code)
start_cluster() { as_pg env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$PGBIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 start >/dev/null; }
stop_cluster() { as_pg "$PGBIN/pg_ctl" -D "$1/data" -m "${2:-fast}" -w stop >/dev/null 2>&1 || true; }

# Build and install the extension into Debian's PostgreSQL 15.
install_extension() {
    say "building and installing $EXT (release)"
    (cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" >/dev/null)
}
