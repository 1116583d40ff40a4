#!/usr/bin/env bash
# Rotation latency through `meshhook-keys serve` against the CLI, in one run on one cluster
# (issue 29: the HTTP path must stay within 1.2x of the CLI's).
#
#   ./bench/serve.sh [--rounds K]
#
# Each round, in turn (A B A B ...), times one rotation of its own keyring:
#   cli        `meshhook-keys rotate --keyring ...`: a process, a new connection (Unix socket), one call
#   http/curl  `curl -X POST .../api/keyrings/<k>/rotate` with an admin token: a process, the server's
#              pooled connection, one call as the token's role (what a script or cron job does)
#   http/keep  the same request on a kept-alive connection from one client (what an app or the
#              console does)
# Prints the medians (ms) and the ratios to the CLI, and writes bench/results/serve.md.
# Installs the extension (release) and builds the CLI (release) first.
source "$(dirname "$0")/../scripts/lib.sh"

rounds=200
while [ $# -gt 0 ]; do
    case $1 in
        --rounds) rounds=$2; shift ;;
        *) echo "usage: $0 [--rounds K]" >&2; exit 2 ;;
    esac
    shift
done
PORT=${MESHHOOK_KEYS_BENCH_PORT:-25344}
WORK=$(mktemp -d /tmp/mk_servebench.XXXXXX)
chmod 755 "$WORK"
install_extension >&2
say "building the CLI (release)" >&2
(cd "$REPO_ROOT" && cargo build -q --release -p meshhook-keys)
install -m 755 "$REPO_ROOT/target/release/meshhook-keys" "$WORK/meshhook-keys"
SERVER=""
cleanup() { [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null; stop_cluster "$WORK" immediate; rm -rf "$WORK"; }
trap cleanup EXIT

make_root_key "$WORK/keys/root.key"
init_cluster "$WORK" "$PORT" "meshhook_keys.root_key_file = '$WORK/keys/root.key'" "meshhook_keys.worker_enabled = off"
start_cluster "$WORK"
as_pg psql -X -q -h "$WORK" -p "$PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 >/dev/null <<SQL
CREATE DATABASE bench;
\c bench
CREATE EXTENSION meshhook_keys;
CREATE ROLE ops LOGIN IN ROLE meshhook_keys_admin;
CREATE ROLE authenticator LOGIN NOINHERIT; GRANT ops TO authenticator;
SELECT meshhook_keys.keys_rotate(k) FROM (VALUES ('cli'), ('curl'), ('keep')) v(k);
SQL
SECRET=$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')
env PGHOST="$WORK" PGPORT="$PORT" PGDATABASE=bench PGUSER=authenticator MESHHOOK_KEYS_JWT_SECRET="$SECRET" \
    "$WORK/meshhook-keys" serve --listen 127.0.0.1:0 2>"$WORK/serve.log" &
SERVER=$!
for _ in $(seq 1 50); do grep -q 'serving on' "$WORK/serve.log" && break; sleep 0.1; done
HPORT=$(sed -n 's|^meshhook-keys: serving on http://127\.0\.0\.1:\([0-9]*\)$|\1|p' "$WORK/serve.log")
TOKEN=$(env MESHHOOK_KEYS_JWT_SECRET="$SECRET" "$WORK/meshhook-keys" token --role ops --expires-in 3600 --sub bench)
say "timing $rounds rounds of cli / http (curl) / http (keep-alive), in turn" >&2
python3 - "$rounds" "$HPORT" "$TOKEN" "$WORK" "$PORT" <<'PY' | tee "$WORK/report.md"
import http.client, os, statistics, subprocess, sys, time
rounds, hport, token, work, port = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
env = dict(os.environ, PGHOST=work, PGPORT=port, PGDATABASE="bench", PGUSER="ops")
cli = [f"{work}/meshhook-keys", "rotate", "--keyring", "cli", "--reason", "bench"]
curl = ["curl", "-sf", "-o", "/dev/null", "-X", "POST", "-H", f"Authorization: Bearer {token}",
        f"http://127.0.0.1:{hport}/api/keyrings/curl/rotate"]
keep = http.client.HTTPConnection("127.0.0.1", hport)
def run(cmd):
    t = time.perf_counter(); subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL); return time.perf_counter() - t
def kept():
    t = time.perf_counter()
    keep.request("POST", "/api/keyrings/keep/rotate", b"{}", {"Authorization": f"Bearer {token}"})
    r = keep.getresponse(); r.read()
    assert r.status == 200, r.status
    return time.perf_counter() - t
times = {"cli": [], "curl": [], "keep": []}
for i in range(rounds + 3):
    a, b, c = run(cli), run(curl), kept()
    if i >= 3:   # (warm-up)
        times["cli"].append(a); times["curl"].append(b); times["keep"].append(c)
med = {k: statistics.median(v) * 1000 for k, v in times.items()}
print(f"# Rotation latency: HTTP (serve) against the CLI\n")
print(f"{rounds} rounds, in turn, one cluster; {os.cpu_count()} cores; medians.\n")
print("| path | median ms | ratio to the CLI |\n|---|---|---|")
print(f"| cli (process + new connection) | {med['cli']:.2f} | 1.00 |")
print(f"| http, curl (process + pooled connection) | {med['curl']:.2f} | {med['curl'] / med['cli']:.2f} |")
print(f"| http, kept-alive connection | {med['keep']:.2f} | {med['keep'] / med['cli']:.2f} |")
print(f"\nTarget (issue 29): HTTP within 1.2x of the CLI: {'met' if med['curl'] / med['cli'] <= 1.2 else 'MISSED'} (curl), "
      f"{'met' if med['keep'] / med['cli'] <= 1.2 else 'MISSED'} (kept-alive).")
PY
mkdir -p "$REPO_ROOT/bench/results"
cp "$WORK/report.md" "$REPO_ROOT/bench/results/serve.md"
