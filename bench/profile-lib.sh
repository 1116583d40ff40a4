# shellcheck shell=bash
# Shared by bench/profile.sh and bench/profile-reencrypt.sh: a throwaway cluster for callgrind
# counts (source it after scripts/lib.sh).
#   profile_cluster PORT [postgresql.conf lines...]   sets DIR, KEY; initdb, settings, start
#   count LABEL SQL                                   instructions a single-user backend runs for SQL
command -v valgrind >/dev/null || { echo "$0: valgrind is missing (apt-get install valgrind)" >&2; exit 2; }
profile_cluster() {
    local port=$1 line; shift
    DIR=$(mktemp -d /tmp/mk_profile.XXXXXX)
    chown postgres:postgres "$DIR"
    KEY=$DIR/root.key
    make_root_key "$KEY"
    as_pg "$PGBIN/initdb" -D "$DIR/data" -A trust >/dev/null
    {
        echo "shared_preload_libraries = 'meshhook_keys'"
        echo "meshhook_keys.root_key_file = '$KEY'"
        echo "meshhook_keys.worker_enabled = off"
        echo "port = $port"
        echo "unix_socket_directories = '$DIR'"
        echo "jit = off"
        for line in "$@"; do echo "$line"; done
    } >> "$DIR/data/postgresql.conf"
    start_cluster "$DIR"
}
count() {
    echo "$2" | as_pg valgrind --tool=callgrind --callgrind-out-file="$DIR/callgrind.$1" \
        "$PGBIN/postgres" --single -D "$DIR/data" postgres >/dev/null 2>"$DIR/valgrind.$1.log"
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p' "$DIR/valgrind.$1.log"
}
