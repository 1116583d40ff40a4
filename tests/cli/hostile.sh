#!/usr/bin/env bash
# meshhook-keys serve against hostile network clients (issue 13): oversized and overflowing
# Content-Length, bodies announced and never sent (or sent at 1 byte/s, or a stalled chunk),
# slowloris heads, huge headers, a flood of concurrent rotations, a keyring lock held by an admin's
# open transaction and a stopped postmaster, plus body validation, HEAD and percent-decoding.
# /healthz must keep answering within 1 s through all of it. Loopback only, bounded in count and
# time (about a minute). Installs the extension and builds the CLI if either is missing.
source "$(dirname "$0")/../lib.sh"

ensure_cli
suite_setup hostile "${MESHHOOK_KEYS_HOSTILE_PORT:-25350}" "log_min_error_statement = 'panic'" "log_connections = on"
# (562 client connections and the server's 512 need more than a default 1024 descriptors)
ulimit -n 4096 2>/dev/null || true
SERVER=""; PM=""; STOPPED=""; AUDSERVER=""
# at exit, before the cluster stops: resume what the suite stopped, stop the servers it started
resume_and_stop() {
    [ -n "$PM" ] && kill -CONT "$PM" 2>/dev/null || true
    for p in $STOPPED; do kill -CONT "$p" 2>/dev/null || true; done
    [ -n "$SERVER" ] && { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; }
    [ -n "$AUDSERVER" ] && { kill "$AUDSERVER" 2>/dev/null || true; wait "$AUDSERVER" 2>/dev/null || true; }
}
at_exit resume_and_stop
install -d -m 755 "$TMP/bin"
install -m 755 "$CLI_BIN" "$TMP/bin/meshhook-keys"

q() { psql_as postgres hostile "$1"; }
alive() { if kill -0 "$SERVER" 2>/dev/null && [ "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$HPORT/healthz")" = 200 ]; then ok "$1"; else fail "$1"; fi; }

say "hostile-client tests (cluster in $TMP, port $PORT)"
psql_as postgres postgres "CREATE DATABASE hostile"
serve_roles hostile
q "SELECT meshhook_keys.keys_rotate('default', 'setup');" >/dev/null
# short timeouts so that the timeouts themselves are tested within the time budget
serve_start hostile --request-timeout-ms 5000 --statement-timeout-ms 2500 --lock-timeout-ms 1000
ADMIN=$(serve_token ops hostile 600)
version() { q "SELECT max(version) FROM meshhook_keys.keys WHERE keyring = 'default'"; }

# The hostile client: python3 sockets, no extra packages. Prints key=value lines.
cat > "$TMP/h.py" <<'PY'
import http.client, json, socket, sys, threading, time
PORT = int(sys.argv[1]); TOKEN = sys.argv[2]; MODE = sys.argv[3]; ARGS = sys.argv[4:]
AUTH = "Authorization: Bearer " + TOKEN + "\r\n"

def conn(timeout=5):
    s = socket.create_connection(("127.0.0.1", PORT), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s

def status(s, timeout):
    """The status code of the first response on s, or 'closed' / 'timeout'."""
    s.settimeout(timeout); buf = b""
    try:
        while b"\r\n" not in buf:
            d = s.recv(4096)
            if not d:
                return "closed" if not buf else buf.decode(errors="replace")
            buf += d
    except socket.timeout:
        return "timeout"
    except OSError:
        return "closed"
    return buf.split(b" ")[1].decode()

def raw(data, timeout=5):
    s = conn()
    try:
        s.sendall(data)
    except OSError:
        return "closed"
    r = status(s, timeout); s.close(); return r

def healthz():
    t = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
    try:
        c.request("GET", "/healthz"); code = c.getresponse().status
    except Exception:
        code = "error"
    c.close()
    return code, time.monotonic() - t

def probe(seconds, out):
    """/healthz from fresh connections every 100 ms for `seconds`: worst latency, codes."""
    end = time.monotonic() + seconds; worst = 0.0; codes = set()
    while time.monotonic() < end:
        code, dt = healthz(); worst = max(worst, dt); codes.add(str(code)); time.sleep(0.1)
    out["healthz_max_ms"] = int(worst * 1000); out["healthz_codes"] = ",".join(sorted(codes))

def rotate(body=b'{"keyring":"default"}'):
    c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    c.request("POST", "/api/keys/rotate", body, {"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
    r = c.getresponse(); data = r.read(); c.close()
    return r.status, data

def report(d):
    for k, v in d.items():
        print(f"{k}={v}")

if MODE == "length":
    # a huge and an overflowing Content-Length with a short body
    for name, n in (("huge", "1099511627776"), ("overflow", "18446744073709551615")):
        print(f"{name}=" + raw(f"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: {n}\r\n\r\nshort".encode()))
    print("huge_post=" + raw(f"POST /api/keys/rotate HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 1099511627776\r\n\r\n{{}}".encode()))
    print("big_body=" + raw(f"POST /api/keys/rotate HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Length: 70000\r\n\r\n".encode() + b" " * 70000))

elif MODE == "slow":
    out = {}; threads = []
    def attacker(name, head, trickle=b"", interval=0.0, timeout=8):
        def run():
            t = time.monotonic(); s = conn(); answer = None
            s.sendall(head)
            if trickle:
                s.settimeout(0.05)
                for b in trickle:
                    try:
                        s.sendall(bytes([b]))
                        d = s.recv(4096)
                        answer = d.split(b" ")[1].decode() if d else "closed"
                        break
                    except socket.timeout:
                        pass
                    except OSError:
                        answer = "closed"
                        break
                    time.sleep(interval)
            out[name] = answer or status(s, timeout); out[name + "_s"] = round(time.monotonic() - t, 1); s.close()
        th = threading.Thread(target=run); th.start(); threads.append(th)
    post = f"POST /api/keys/rotate HTTP/1.1\r\nHost: x\r\n{AUTH}Content-Type: application/json\r\n"
    attacker("unsent", (post + "Content-Length: 100\r\n\r\n").encode())
    attacker("trickle", (post + "Content-Length: 100\r\n\r\n").encode(), b"{" * 100, 1.0)
    attacker("chunked", (post + "Transfer-Encoding: chunked\r\n\r\n10\r\n{\"keyr").encode())
    attacker("healthz_unsent", b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    attacker("upgrade", b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n")
    # slowloris: a head that never ends, one byte a second; closed after the 10 s head timeout
    attacker("slowloris", b"GET /healthz HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n" * 4, 1.0, 14)
    def idle():
        # one request, then an idle keep-alive connection: closed after the 10 s idle timeout
        s = conn(); s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); t = time.monotonic()
        s.settimeout(14); out["idle"] = "open"
        try:
            while s.recv(4096):
                pass
            out["idle"] = "closed"
        except OSError:
            pass
        out["idle_s"] = round(time.monotonic() - t, 1); s.close()
    th = threading.Thread(target=idle); th.start(); threads.append(th)
    time.sleep(0.3)
    probe(4, out)
    for th in threads:
        th.join()
    report(out)

elif MODE == "concurrent":
    n = int(ARGS[0]); serial_n = int(ARGS[1]); spread = ARGS[2] == "spread"
    body = lambda i: json.dumps({"keyring": f"h{i}" if spread else "default"}).encode()
    t = time.monotonic()
    for i in range(serial_n):
        rotate(body(n + i))
    serial = (time.monotonic() - t) / serial_n * n
    results = [None] * n
    def one(i):
        try:
            results[i] = rotate(body(i))
        except Exception as e:
            results[i] = ("error", str(e).encode())
    ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    t = time.monotonic()
    for th in ths: th.start()
    for th in ths: th.join()
    took = time.monotonic() - t
    ok = [r for r in results if r[0] == 200]
    versions = {(json.loads(r[1])["keyring"], json.loads(r[1])["version"]) for r in ok}
    report({"ok": len(ok), "distinct": len(versions), "concurrent_ms": int(took * 1000),
            "serial_estimate_ms": int(serial * 1000),
            "codes": ",".join(sorted({str(r[0]) for r in results}))})

elif MODE == "headers":
    pid = int(ARGS[0]); out = {}
    def hwm():
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    # an 8 MB token
    out["token_8mb"] = raw(b"GET /api/keys HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"a" * (8 << 20) + b"\r\n\r\n")
    # a 100 MB header line, sent in 1 MB pieces until the server closes (at most 100 of them)
    s = conn(); sent = 0; piece = b"X-Big: " + b"b" * (1 << 20)
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        while sent < 100:
            s.sendall(piece); sent += 1
        s.sendall(b"\r\n\r\n")
    except OSError:
        pass
    out["line_100mb"] = status(s, 5); out["line_100mb_pieces_sent"] = sent; s.close()
    # six unfinished large heads held open, then the peak memory
    socks = []
    for _ in range(6):
        s = conn(); socks.append(s)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
            for _ in range(10):
                s.sendall(b"c" * (1 << 20))
        except OSError:
            pass
    probe(1, out)
    out["vmhwm_mb"] = hwm()
    for s in socks:
        s.close()
    report(out)

elif MODE == "locked":
    # one rotation, then (with the pool of 16 saturated) n more at once
    n = int(ARGS[0]); out = {}; results = []
    def rot(first):
        t = time.monotonic(); code, data = rotate(); ms = int((time.monotonic() - t) * 1000)
        if first:
            out["code"] = code; out["body"] = data.decode(); out["rotate_ms"] = ms
        else:
            results.append((code, ms))
    th = threading.Thread(target=rot, args=(True,)); th.start()
    probe(1.5, out); th.join()
    ths = [threading.Thread(target=rot, args=(False,)) for _ in range(n)]
    for th in ths: th.start()
    time.sleep(0.2)
    sat = {}; probe(2, sat)
    for th in ths: th.join()
    out["saturated_healthz_max_ms"] = sat["healthz_max_ms"]; out["saturated_healthz_codes"] = sat["healthz_codes"]
    out["flood_codes"] = ",".join(sorted({str(c) for c, _ in results}))
    out["flood_max_ms"] = max(ms for _, ms in results)
    report(out)

elif MODE == "healthz":
    code, dt = healthz(); report({"code": code, "ms": int(dt * 1000)})

elif MODE == "get":
    t = time.monotonic(); c = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    c.request("GET", ARGS[0], headers={"Authorization": "Bearer " + TOKEN}); r = c.getresponse(); data = r.read()
    report({"code": r.status, "ms": int((time.monotonic() - t) * 1000), "body": data.decode()[:300]})

elif MODE == "drip":
    # n connections that send a head (a rotate with a body announced, without a valid token; or
    # a head that never ends) and then one byte every 3 s; meanwhile fresh /healthz and a rotate
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    n = int(ARGS[0]); kind = ARGS[1]; out = {"connect_errors": 0}; socks = []
    auth = ("Authorization: Bearer " + ARGS[2]) if len(ARGS) > 2 else "Authorization: Bearer not.a.token"
    for i in range(n):
        try:
            s = socket.create_connection(("127.0.0.1", PORT), timeout=10)
            if kind == "body":
                s.sendall(("POST /api/keys/rotate HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n"
                           "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{").encode())
            else:
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        except OSError:
            out["connect_errors"] += 1
    stop = threading.Event()
    def drip():
        while not stop.wait(3):
            for s in socks:
                try:
                    s.send(b" " if kind == "body" else b"X")
                except OSError:
                    pass
    th = threading.Thread(target=drip); th.start()
    time.sleep(1)
    worst = 0.0; codes = set()
    for _ in range(5):
        code, dt = healthz(); worst = max(worst, dt); codes.add(str(code)); time.sleep(0.2)
    out["healthz_max_ms"] = int(worst * 1000); out["healthz_codes"] = ",".join(sorted(codes))
    t = time.monotonic()
    try:
        code, _ = rotate()
    except Exception as e:
        code = "error"
    out["rotate_code"] = code; out["rotate_ms"] = int((time.monotonic() - t) * 1000)
    answers = {}
    for s in socks:
        a = status(s, 0.01); answers[a] = answers.get(a, 0) + 1
    out["dripper_answers"] = ",".join(f"{k}:{v}" for k, v in sorted(answers.items()))
    out["drippers_401"] = answers.get("401", 0)
    stop.set(); th.join()
    for s in socks:
        s.close()
    report(out)

elif MODE == "burst":
    # n rotations at once with one token
    n = int(ARGS[0]); codes = [None] * n
    def one(i):
        try:
            codes[i] = rotate()[0]
        except Exception:
            codes[i] = "error"
    ths = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for th in ths: th.start()
    for th in ths: th.join()
    report({"c403": codes.count(403), "c429": codes.count(429),
            "others": ",".join(sorted({str(c) for c in codes} - {"403", "429"}))})

elif MODE == "hflood":
    # /healthz from `threads` threads, fresh connections, for `seconds`
    threads = int(ARGS[0]); seconds = float(ARGS[1]); out = {"n": 0, "worst": 0.0, "codes": set()}
    lock = threading.Lock(); end = time.monotonic() + seconds
    def loop():
        while time.monotonic() < end:
            code, dt = healthz()
            with lock:
                out["n"] += 1; out["worst"] = max(out["worst"], dt); out["codes"].add(str(code))
    ths = [threading.Thread(target=loop) for _ in range(threads)]
    for th in ths: th.start()
    for th in ths: th.join()
    report({"requests": out["n"], "healthz_max_ms": int(out["worst"] * 1000), "codes": ",".join(sorted(out["codes"]))})

elif MODE == "bighead":
    # a 2 MB header, sent whole through a small send buffer (so that it is still being sent when
    # the server answers, as from a client on a real network); then the answer
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
    s.settimeout(5); s.connect(("127.0.0.1", PORT)); sent = "all"
    try:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * (2 << 20) + b"\r\n\r\n")
    except OSError as e:
        sent = type(e).__name__
    report({"sent": sent, "code": status(s, 5)})

elif MODE == "hzabort":
    # /healthz from `threads` threads for `seconds`, each connection reset 2 ms after the request
    import struct
    threads = int(ARGS[0]); seconds = float(ARGS[1]); end = time.monotonic() + seconds; sent = [0]
    def loop():
        while time.monotonic() < end:
            try:
                s = conn(); s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); time.sleep(0.002); s.close(); sent[0] += 1
            except OSError:
                pass
    ths = [threading.Thread(target=loop) for _ in range(threads)]
    for th in ths: th.start()
    for th in ths: th.join()
    report({"requests": sent[0]})

elif MODE == "crowd":
    # an operator's kept-alive connection in use every 100 ms and its progress stream, while n
    # connections that send nothing arrive: neither of the operator's may be closed for them
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    n = int(ARGS[0]); out = {"keepalive_errors": 0, "keepalive_requests": 0}
    sse = conn(10); sse.sendall(("GET /api/keyrings/nojob/reencrypt/events HTTP/1.1\r\nHost: x\r\n" + AUTH + "\r\n").encode())
    events = [0]; sse_closed = [False]; stop = threading.Event()
    def read_sse():
        sse.settimeout(1); buf = b""
        while not stop.is_set():
            try:
                d = sse.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                sse_closed[0] = True; return
            if not d:
                sse_closed[0] = True; return
            buf += d; events[0] = buf.count(b"event: progress")
    ka = http.client.HTTPConnection("127.0.0.1", PORT, timeout=5)
    def keepalive():
        while not stop.is_set():
            try:
                ka.request("GET", "/healthz"); r = ka.getresponse(); r.read(); out["keepalive_requests"] += 1
            except Exception:
                out["keepalive_errors"] += 1; return
            time.sleep(0.1)
    ths = [threading.Thread(target=read_sse), threading.Thread(target=keepalive)]
    for th in ths: th.start()
    time.sleep(1.5); before = events[0]; crowd = []
    for _ in range(n):
        try:
            crowd.append(socket.create_connection(("127.0.0.1", PORT), timeout=5))
        except OSError:
            pass
    time.sleep(3)
    out["sse_events_during_crowd"] = events[0] - before; out["sse_closed"] = sse_closed[0]
    stop.set()
    for th in ths: th.join()
    for s in crowd: s.close()
    sse.close()
    report(out)

elif MODE == "rotate_once":
    t = time.monotonic()
    try:
        code, data = rotate()
    except Exception as e:
        code, data = "error", str(e).encode()
    report({"code": code, "ms": int((time.monotonic() - t) * 1000), "body": data.decode(errors="replace")[:200]})
PY
h() { python3 "$TMP/h.py" "$HPORT" "$ADMIN" "$@"; }
val() { printf '%s\n' "$1" | sed -n "s/^$2=//p" | head -1; }

echo "# finding 1: a huge or overflowing Content-Length with a short body"
R=$(h length)
check_match "Content-Length 2^40 on GET /healthz: 413" '^huge=413$' "$R"
check_match "Content-Length 2^64-1: 400, 413 or 431 (hyper refuses the head)" '^overflow=(400|413|431)$' "$R"
check_match "Content-Length 2^40 on POST /api/keys/rotate: 413" '^huge_post=413$' "$R"
check_match "a 70,000-byte body (limit 64 KiB): 413" '^big_body=413$' "$R"
alive "the server is still up and /healthz answers"

echo "# finding 2: slow clients hold only their own connection"
R=$(h slow)
lt "/healthz from other connections answers within 1 s meanwhile (worst, ms)" "$(val "$R" healthz_max_ms)" 1000
check "and with 200" 200 "$(val "$R" healthz_codes)"
check "a body announced but never sent: 408 (request timeout 5 s)" 408 "$(val "$R" unsent)"
lt "  after (s)" "$(val "$R" unsent_s)" 6.5
check "a body sent at 1 byte/s: 408" 408 "$(val "$R" trickle)"
check "a stalled chunked body: 408" 408 "$(val "$R" chunked)"
check "GET /healthz with a body announced and never sent: answered 200" 200 "$(val "$R" healthz_unsent)"
check "GET /healthz with Connection: upgrade: answered 200" 200 "$(val "$R" upgrade)"
check "a head sent at 1 byte/s (slowloris): connection closed" closed "$(val "$R" slowloris)"
lt "  after (s)" "$(val "$R" slowloris_s)" 13
check "an idle keep-alive connection: closed" closed "$(val "$R" idle)"
lt "  after (s)" "$(val "$R" idle_s)" 12
echo "  (healthz worst $(val "$R" healthz_max_ms) ms)"
alive "the server is still up"

echo "# finding 2: 100 concurrent admin rotations"
before=$(version)
R=$(h concurrent 100 20 same)
check "all 100 got 200" 100 "$(val "$R" ok)"
check "with 100 distinct versions" 100 "$(val "$R" distinct)"
check "the keyring moved by 120 versions (20 serial + 100 concurrent)" $((before + 120)) "$(version)"
CONC=$(val "$R" concurrent_ms); SERIAL=$(val "$R" serial_estimate_ms)
echo "  (one keyring, 100 concurrent: $CONC ms; 100 serial, extrapolated from 20: $SERIAL ms)"
lt "100 concurrent rotations of one keyring within 3 s (ms)" "$CONC" 3000
q "SELECT count(*) FROM generate_series(0, 119) i, LATERAL meshhook_keys.keys_rotate('h' || i, 'setup')" >/dev/null
R=$(h concurrent 100 20 spread)
check "100 keyrings, one rotation each, concurrently: all 200" 100 "$(val "$R" ok)"
CONC=$(val "$R" concurrent_ms); SERIAL=$(val "$R" serial_estimate_ms)
echo "  (100 keyrings, 100 concurrent: $CONC ms; 100 serial, extrapolated from 20: $SERIAL ms)"
lt "100 concurrent rotations of 100 keyrings within 3 s (ms)" "$CONC" 3000

echo "# finding 3: header limits (16 KiB)"
R=$(h headers "$SERVER")
check_match "an 8 MB token: 431 or closed" '^token_8mb=(431|closed)$' "$R"
check_match "a 100 MB header line: 431 or closed" '^line_100mb=(431|closed)$' "$R"
echo "  (the 100 MB line: $(val "$R" line_100mb_pieces_sent) of 100 MB accepted by the socket before the server closed it)"
HWM=$(val "$R" vmhwm_mb)
lt "peak RSS (VmHWM, MB) with six unfinished 10 MB heads open" "$HWM" 100
lt "/healthz meanwhile (worst, ms)" "$(val "$R" healthz_max_ms)" 1000
alive "the server is still up"

echo "# finding 4: an admin transaction holds the keyring lock"
# hold_lock NAME: a psql session (HOLD, fed through fd 3) holds keyring default's row lock, idle in
# a transaction; `echo "ROLLBACK;" >&3; exec 3>&-; wait "$HOLD"` releases it
hold_lock() {
    rm -f "$TMP/$1.in"; mkfifo "$TMP/$1.in"; chmod 666 "$TMP/$1.in"
    as_pg psql -X -q -A -t -h "$TMP" -p "$PORT" -U postgres -d hostile < "$TMP/$1.in" > "$TMP/$1.out" 2>&1 &
    HOLD=$!
    exec 3> "$TMP/$1.in"
    echo "BEGIN; SELECT name FROM meshhook_keys.keyring WHERE name = 'default' FOR UPDATE;" >&3
    local held=0
    wait_until 5 is_t q "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = 'hostile' AND state = 'idle in transaction')" && held=1
    check "the lock is held by a session idle in transaction" 1 "$held"
}
hold_lock hold
before=$(version)
R=$(h locked 20)
check "an HTTP rotation: 409 (lock_timeout)" 409 "$(val "$R" code)"
check_match "with SQLSTATE 55P03" '"sqlstate":"55P03"' "$(val "$R" body)"
lt "within the lock timeout (1 s) plus 1 s (ms)" "$(val "$R" rotate_ms)" 2000
lt "/healthz meanwhile (worst, ms)" "$(val "$R" healthz_max_ms)" 1000
check "and with 200" 200 "$(val "$R" healthz_codes)"
echo "  (rotation answered in $(val "$R" rotate_ms) ms, healthz worst $(val "$R" healthz_max_ms) ms)"
# (keys_rotate waits for the audit chain's lock, then for the keyring's row: lock_timeout bounds
# each wait, statement_timeout (2.5 s) the whole statement)
check_match "20 more rotations at once (pool of 16 saturated): each 409 or 504" '^(409|409,504|504)$' "$(val "$R" flood_codes)"
lt "  the last within the statement timeout plus the pool wait (ms)" "$(val "$R" flood_max_ms)" 5000
lt "/healthz with the pool saturated (worst, ms)" "$(val "$R" saturated_healthz_max_ms)" 1000
check "and with 200" 200 "$(val "$R" saturated_healthz_codes)"
echo "  (20 rotations behind the lock: the last answered after $(val "$R" flood_max_ms) ms; healthz worst $(val "$R" saturated_healthz_max_ms) ms)"
echo "ROLLBACK;" >&3; exec 3>&-; wait "$HOLD" || true
check "no version was added" "$before" "$(version)"

echo "# finding 4: the postmaster stopped (SIGSTOP)"
PM=$(head -1 "$TMP/data/postmaster.pid")
kill -STOP "$PM"
R1=$(h healthz); R2=$(h healthz)
kill -CONT "$PM"; PM=""
check "/healthz: 503" 503 "$(val "$R1" code)"
lt "within 1 s (ms)" "$(val "$R1" ms)" 1000
check "again: 503" 503 "$(val "$R2" code)"
lt "again within 1 s (ms)" "$(val "$R2" ms)" 1000
echo "  (healthz answered in $(val "$R1" ms) and $(val "$R2" ms) ms)"
healthz_200() { [ "$(val "$(h healthz)" code)" = 200 ]; }
up=0; wait_until 5 healthz_200 && up=1
check "after SIGCONT /healthz is 200 again" 1 "$up"

echo "# finding 4: the postmaster and the pooled connections' backends stopped (SIGSTOP)"
check "an API request before: 200" 200 "$(val "$(h get /api/keys)" code)"
PM=$(head -1 "$TMP/data/postmaster.pid")
STOPPED=$(q "SELECT string_agg(pid::text, ' ') FROM pg_stat_activity WHERE usename = 'authenticator'")
kill -STOP "$PM" $STOPPED
R=$(h get /api/keys)
kill -CONT "$PM" $STOPPED; PM=""; WERE=$STOPPED; STOPPED=""
check "GET /api/keys: 504 (no answer within the statement timeout + 2 s)" 504 "$(val "$R" code)"
lt "  within 5 s (ms)" "$(val "$R" ms)" 5000
echo "  (answered in $(val "$R" ms) ms)"
R=$(h get /api/keys)
check "after SIGCONT: 200 again" 200 "$(val "$R" code)"
gone=0; wait_until 3 is_t q "SELECT count(*) < $(echo $WERE | wc -w) FROM pg_stat_activity WHERE pid IN ($(echo $WERE | tr ' ' ','))" && gone=1
check "the abandoned connection was closed, not reused (its backend exited)" 1 "$gone"

echo "# finding 6: body validation, HEAD, percent-decoding"
http() {
    local args=(-s -o "$TMP/http.out" -w '%{http_code}' -m 10 -X "$1" "http://127.0.0.1:$HPORT$2")
    [ -n "${3:-}" ] && args+=(-H "Authorization: Bearer $3")
    [ -n "${4:-}" ] && args+=(-H 'Content-Type: application/json' --data "$4")
    CODE=$(curl "${args[@]}"); BODY_OUT=$(cat "$TMP/http.out")
}
before=$(version)
for body in '{"keyring":5}' 'null' '["x"]' '{"Keyring":"typo"}' '{"keyring":"default","reason":7}' '"default"' '' \
        '["default","r"]' '["default",null]' '{"keyring":null}' '{"keyring":"default","reason":null}' \
        '{"keyring":"default","keyring":"other"}'; do
    http POST /api/keys/rotate "$ADMIN" "$body"
    check "rotate with body [$body]: 400" 400 "$CODE"
done
check "none of them rotated" "$before" "$(version)"
http POST /api/keys/rotate "$ADMIN" '{}'
check "rotate with {}: 200, keyring default" "200 default" "$CODE $(jsonq "$BODY_OUT" "(:'j'::jsonb ->> 'keyring')")"
RC=0; HEAD_OUT=$(curl -s -I -m 5 "http://127.0.0.1:$HPORT/healthz") || RC=$?
check_match "HEAD /healthz: 200" '^HTTP/1.1 200' "$HEAD_OUT"
RC=0; HEAD_OUT=$(curl -s -I -m 5 -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$HPORT/api/keys") || RC=$?
check_match "HEAD /api/keys: 200" '^HTTP/1.1 200' "$HEAD_OUT"
check "without a body" "" "$(curl -s --head -m 5 -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$HPORT/api/keys" | sed '1,/^\r$/d')"
http GET "/api/keys/audit?keyring=%64efault&limit=3" "$ADMIN"
check "keyring=%64efault is decoded: 3 rows of keyring default" "200 3" \
    "$CODE $(jsonq "$BODY_OUT" "(SELECT count(*) FROM jsonb_array_elements(:'j'::jsonb) e WHERE e ->> 'keyring' = 'default')")"
http GET /api/nothing "$ADMIN"
check "an unknown endpoint: 404" 404 "$CODE"
echo "# finding 5: JWT validation as PostgREST does it"
# mkjwt CLAIMS [SECRET [HEADER]]: an HS256 token for any claims and header (python3 only)
mkjwt() {
    local header='{"alg":"HS256","typ":"JWT"}'
    [ -n "${3:-}" ] && header=$3
    python3 - "$1" "${2-$SECRET}" "$header" <<'PY'
import base64, hashlib, hmac, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=")
head = b(sys.argv[3].encode()) + b"." + b(sys.argv[1].encode())
print((head + b"." + b(hmac.new(sys.argv[2].encode(), head, hashlib.sha256).digest())).decode())
PY
}
# startup: serve with SECRET_ENV and ARGS; sets RC and ERR (refused at once, or killed after 5 s)
startup() {
    local env_secret=$1; shift; RC=0
    ERR=$(env PGHOST="$TMP" PGPORT="$PORT" PGDATABASE=hostile PGUSER=authenticator MESHHOOK_KEYS_JWT_SECRET="$env_secret" \
        timeout 5 "$TMP/bin/meshhook-keys" serve --listen 127.0.0.1:0 "$@" 2>&1 >/dev/null) || RC=$?
}
: > "$TMP/empty.secret"; printf 'a\n' > "$TMP/short.secret"; printf '%s\n' "$SECRET" > "$TMP/good.secret"
startup "$SECRET" --jwt-secret-file "$TMP/empty.secret"
check "an empty JWT secret file is refused at startup: exit 2" 2 "$RC"
check_match "  with a clear message" 'JWT secret file .* is 0 bytes long: at least 32' "$ERR"
startup "$SECRET" --jwt-secret-file "$TMP/short.secret"
check "a 1-byte JWT secret file is refused: exit 2" 2 "$RC"
startup "a"
check "a 1-byte MESHHOOK_KEYS_JWT_SECRET is refused: exit 2" 2 "$RC"
check_match "  with a clear message" 'MESHHOOK_KEYS_JWT_SECRET is 1 bytes long: at least 32' "$ERR"
startup ""
check "an empty MESHHOOK_KEYS_JWT_SECRET is refused: exit 2" 2 "$RC"
startup "$(printf 'x%.0s' $(seq 1 31))"
check "a 31-byte secret is refused: exit 2" 2 "$RC"
startup "$SECRET" --jwt-leeway-secs 31
check "--jwt-leeway-secs above 30 is refused: exit 2" 2 "$RC"
RC=0; as_pg env MESHHOOK_KEYS_JWT_SECRET=a "$TMP/bin/meshhook-keys" token --role ops >/dev/null 2>&1 || RC=$?
check "token with a short secret: exit 2" 2 "$RC"
# jwt_case STATUS LABEL CLAIMS [SECRET [HEADER]]: GET /api/keys with such a token answers STATUS
jwt_case() { local code=$1 label=$2; shift 2; http GET /api/keys "$(mkjwt "$@")"; check "$label: $code" "$code" "$CODE"; }
NOW=$(date +%s)
jwt_case 200 "a well-formed token" "{\"role\":\"ops\",\"exp\":$((NOW + 600))}"
jwt_case 401 "a token signed with an empty key" "{\"role\":\"ops\",\"exp\":$((NOW + 600))}" ""
jwt_case 401 "a token without exp" '{"role":"ops"}'
jwt_case 401 "a token whose exp is a string" "{\"role\":\"ops\",\"exp\":\"$((NOW + 600))\"}"
jwt_case 401 "nbf a minute in the future" "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"nbf\":$((NOW + 60))}"
jwt_case 401 "nbf not a number" "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"nbf\":\"soon\"}"
jwt_case 200 "nbf in the past" "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"nbf\":$((NOW - 60))}"
jwt_case 401 "nbf above 2^64 (far in the future)" "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"nbf\":18446744073709551616}"
jwt_case 401 "nbf 1e30" "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"nbf\":1e30}"
jwt_case 401 "two role claims" "{\"role\":\"app\",\"exp\":$((NOW + 600)),\"role\":\"ops\"}"
check_match "  saying so" 'duplicate member' "$BODY_OUT"
jwt_case 401 "a crit header (RFC 7515 4.1.11)" "{\"role\":\"ops\",\"exp\":$((NOW + 600))}" "$SECRET" '{"alg":"HS256","typ":"JWT","crit":["exp"],"exp":1}'
check_match "  saying so" 'crit' "$BODY_OUT"
jwt_case 401 "a header with two alg members" "{\"role\":\"ops\",\"exp\":$((NOW + 600))}" "$SECRET" '{"alg":"HS256","alg":"none"}'
jwt_case 401 "expired 30 s ago (default leeway 5 s)" "{\"role\":\"ops\",\"exp\":$((NOW - 30))}"
# (the clock read again here: NOW was read a dozen requests ago, which on a slow machine can be
# more than the 3 s this check has left)
jwt_case 200 "expired 2 s ago (within the leeway)" "{\"role\":\"ops\",\"exp\":$(( $(date +%s) - 2 ))}"
jwt_case 200 "without --jwt-aud, aud is not checked" "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"aud\":\"anything\"}"
# a second server that requires aud, with the secret from a file
env PGHOST="$TMP" PGPORT="$PORT" PGDATABASE=hostile PGUSER=authenticator MESHHOOK_KEYS_JWT_AUD=meshhook-admin \
    "$TMP/bin/meshhook-keys" serve --listen "127.0.0.1:0" --jwt-secret-file "$TMP/good.secret" >/dev/null 2>"$TMP/aud.log" &
AUDSERVER=$!
APORT=$(served_port "$TMP/aud.log") || APORT=0
up=0; wait_until 10 curl -fs "http://127.0.0.1:$APORT/healthz" && up=1
check "a server with MESHHOOK_KEYS_JWT_AUD and a secret file is up" 1 "$up"
ahttp() { CODE=$(curl -s -o /dev/null -w '%{http_code}' -m 10 -H "Authorization: Bearer $1" "http://127.0.0.1:$APORT/api/keys"); }
ahttp "$(mkjwt "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"aud\":\"meshhook-admin\"}")"
check "the right aud: 200" 200 "$CODE"
ahttp "$(mkjwt "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"aud\":[\"other\",\"meshhook-admin\"]}")"
check "the right aud among others: 200" 200 "$CODE"
ahttp "$(mkjwt "{\"role\":\"ops\",\"exp\":$((NOW + 600)),\"aud\":\"authenticated\"}")"
check "a wrong aud: 401" 401 "$CODE"
ahttp "$(mkjwt "{\"role\":\"ops\",\"exp\":$((NOW + 600))}")"
check "no aud: 401" 401 "$CODE"
kill "$AUDSERVER" 2>/dev/null || true; wait "$AUDSERVER" 2>/dev/null || true; AUDSERVER=""
echo "# finding 6: a token's audited refusals are bounded (10 per minute by default)"
refused() { q "SELECT count(*) FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND role_name = 'app'"; }
before=$(refused); before_v=$(version)
FLOOD=$(mkjwt "{\"role\":\"app\",\"sub\":\"flood\",\"exp\":$((NOW + 600))}")
codes=""; for i in $(seq 1 25); do http POST /api/keys/rotate "$FLOOD" '{"keyring":"default"}'; codes="$codes $CODE"; done
check "25 rotations with a user token: 10 refused (403), then 429" \
    "$(printf ' 403%.0s' $(seq 1 10))$(printf ' 429%.0s' $(seq 1 15))" "$codes"
check_match "  the 429 says why" 'too many requests refused' "$BODY_OUT"
check_match "  with Retry-After" '^[Rr]etry-[Aa]fter: [0-9]+' "$(curl -s -D - -o /dev/null -m 5 -H "Authorization: Bearer $FLOOD" "http://127.0.0.1:$HPORT/api/keys")"
http GET /metrics "$(mkjwt "{\"role\":\"app\",\"sub\":\"flood\",\"exp\":$((NOW + 300))}")"
check "another token for the same sub and role: 429 too" 429 "$CODE"
wait_until 10 is_t q "SELECT count(*) >= $((before + 10)) FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND role_name = 'app'" || true
sleep 0.5; n=$(refused)   # (half a second more for a wrong 11th row to arrive)
check "exactly 10 refusals were audited" "$((before + 10))" "$n"
check "and nothing was rotated" "$before_v" "$(version)"
http POST /api/keys/rotate "$(mkjwt "{\"role\":\"app\",\"sub\":\"someone-else\",\"exp\":$((NOW + 600))}")" '{"keyring":"default"}'
check "another subject still gets the database's own answer: 403" 403 "$CODE"
http GET /api/keys "$ADMIN"
check "and an admin token 200" 200 "$CODE"

echo "# issue 29: concurrent refused requests of one token reach the database at most 10 times"
before=$(refused)
BURST=$(mkjwt "{\"role\":\"app\",\"sub\":\"burst\",\"exp\":$((NOW + 600))}")
R=$(python3 "$TMP/h.py" "$HPORT" "$BURST" burst 60)
c403=$(val "$R" c403)
check "60 rotations at once with a user token: 10 answered 403 by the database" 10 "$c403"
check "  and 50 answered 429 without it" 50 "$(val "$R" c429)"
check "  nothing else" "" "$(val "$R" others)"
wait_until 10 is_t q "SELECT count(*) >= $((before + c403)) FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND role_name = 'app'" || true
sleep 0.5
check "every refusal the database made is in audit_log, no more" "$((before + c403))" "$(refused)"
check "  each with the token's sub" "$c403" "$(q "SELECT count(*) FROM meshhook_keys.audit_log WHERE outcome = 'refused' AND detail -> 'jwt' ->> 'sub' = 'burst'")"

echo "# issue 29: a flood of /healthz shares one check a second"
sessions() { grep -c 'connection authorized: user=authenticator' "$TMP/server.log" || true; }
s0=$(sessions)
R=$(h hflood 20 3)
s1=$(sessions)
echo "  ($(val "$R" requests) requests in 3 s; $((s1 - s0)) database sessions; worst $(val "$R" healthz_max_ms) ms)"
check "all answered 200" 200 "$(val "$R" codes)"
lt "fewer than 7 database sessions for $(val "$R" requests) requests in 3 s" "$((s1 - s0))" 7
lt "  more than 100 requests (the flood happened)" 100 "$(val "$R" requests)"
lt "  worst /healthz (ms)" "$(val "$R" healthz_max_ms)" 1000

echo "# issue 29: a 2 MB request header gets an answer the client can read"
R=$(h bighead)
check "the client could send all of it (no reset: the server reads it to the end before closing)" all "$(val "$R" sent)"
check "and read 431" 431 "$(val "$R" code)"

# drip KIND ROOM: 562 connections dripping (KIND body: a rotate body without a valid token; head: a
# request head), one byte every 3 s; a new /healthz and a valid rotation must not notice
drip() {
    R=$(h drip 562 "$1")
    echo "  (drippers: $(val "$R" dripper_answers); healthz worst $(val "$R" healthz_max_ms) ms; rotate $(val "$R" rotate_ms) ms)"
    check "every dripper connected" 0 "$(val "$R" connect_errors)"
    lt "a new /healthz answers within 1 s ($2; worst of 5, ms)" "$(val "$R" healthz_max_ms)" 1000
    check "  with 200" 200 "$(val "$R" healthz_codes)"
    check "a valid rotation meanwhile: 200" 200 "$(val "$R" rotate_code)"
    lt "  within 2 s (ms)" "$(val "$R" rotate_ms)" 2000
    alive "the server is still up"
}
echo "# issue 29: 562 connections dripping a rotate body without a token, one byte every 3 s"
drip body "the token is checked before the body is read"
check "every dripper was answered 401 without its body being waited for" 562 "$(val "$R" drippers_401)"
echo "# issue 29: 562 connections dripping a request head, one byte every 3 s"
drip head "the longest idle connection makes room"
echo "# issue 29: 562 connections dripping a rotate body with a valid token (of a role that does not exist)"
NOROLE=$(mkjwt "{\"role\":\"no_such_role\",\"sub\":\"dripper\",\"exp\":$(( $(date +%s) + 600 ))}")
R=$(h drip 562 body "$NOROLE")
echo "  (drippers: $(val "$R" dripper_answers); healthz worst $(val "$R" healthz_max_ms) ms; rotate $(val "$R" rotate_ms) ms)"
lt "a new /healthz answers within 1 s (a body being sent is not work in progress; worst of 5, ms)" "$(val "$R" healthz_max_ms)" 1000
check "  with 200" 200 "$(val "$R" healthz_codes)"
check "a valid rotation meanwhile: 200" 200 "$(val "$R" rotate_code)"
alive "the server is still up"

echo "# issue 29: an operator's kept-alive connection and progress stream while 600 silent connections arrive"
R=$(h crowd 600)
echo "  ($(val "$R" keepalive_requests) kept-alive requests; $(val "$R" sse_events_during_crowd) progress events during the crowd)"
check "the kept-alive connection in use was not closed" 0 "$(val "$R" keepalive_errors)"
check "the progress stream was not closed" False "$(val "$R" sse_closed)"
lt "  and kept sending events (at least 2 in 3 s)" 1 "$(val "$R" sse_events_during_crowd)"
alive "the server is still up"

echo "# issue 29: /healthz requests abandoned 2 ms after they are sent share the check too"
s0=$(sessions)
R=$(h hzabort 8 3)
s1=$(sessions)
echo "  ($(val "$R" requests) abandoned requests in 3 s; $((s1 - s0)) database sessions)"
lt "fewer than 7 database sessions" "$((s1 - s0))" 7
lt "  more than 100 requests (the flood happened)" 100 "$(val "$R" requests)"

echo "# issue 29: a progress stream ends when its token expires"
SHORT=$(mkjwt "{\"role\":\"ops\",\"sub\":\"short\",\"exp\":$(( $(date +%s) + 1 ))}")
t0=$(date +%s)
curl -s -N -m 30 -H "Authorization: Bearer $SHORT" "http://127.0.0.1:$HPORT/api/keyrings/nojob/reencrypt/events" > "$TMP/short.events" || true
lt "the stream ended within the token's time + leeway (5 s) + 3 s (s)" "$(( $(date +%s) - t0 ))" 10
check_match "  with an error event saying the token expired" 'expired' "$(grep -A1 '^event: error' "$TMP/short.events" | tail -1)"

alive "the server is still up at the end"
check "the server logged no secret" "" "$(grep -o "$SECRET" "$TMP/serve.log" | head -1 || true)"

echo "# issue 29: SIGTERM lets a request in progress finish"
hold_lock hold2
before=$(version)
curl -s -N -m 60 -H "Authorization: Bearer $ADMIN" "http://127.0.0.1:$HPORT/api/keyrings/nojob/reencrypt/events" > "$TMP/stream.events" &
STREAM=$!
h rotate_once > "$TMP/drain.out" &
ROT=$!
wait_until 5 is_t q "SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = 'hostile' AND wait_event_type = 'Lock')" \
    || fail "the rotation waits for the lock"
t0=$(date +%s.%N)
kill -TERM "$SERVER"
# (the lock is released only once the server has taken the signal, so the request is in progress
# while it stops; lock_timeout is 1 s)
stopping=0; wait_until 2 grep -q 'stopping: no new connections' "$TMP/serve.log" && stopping=1
echo "ROLLBACK;" >&3; exec 3>&-; wait "$HOLD" || true
check "the server took the signal while the rotation waited" 1 "$stopping"
check "after SIGTERM no new connection is accepted" 000 "$(curl -s -o /dev/null -w '%{http_code}' -m 2 "http://127.0.0.1:$HPORT/healthz" || true)"
wait "$ROT" || true
R=$(cat "$TMP/drain.out")
check "the rotation in progress got its answer: 200" 200 "$(val "$R" code)"
check "  and was made" "$((before + 1))" "$(version)"
RC=0; wait "$SERVER" || RC=$?; SERVER=""
check "the server then exited 0" 0 "$RC"
ended=0; wait_until 3 bash -c "! kill -0 $STREAM 2>/dev/null" && ended=1
check "an open progress stream ended with it (it does not hold the server for the drain time)" 1 "$ended"
lt "  within the request timeout (5 s) + 1 s of the signal (s)" "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')" 6

suite_summary "hostile-client tests"
