#!/usr/bin/env bash
# bench/load.sh -- hookgate vs nginx load benchmark (see bench/README.md).
#
# Starts, on 127.0.0.1 and in a temp dir: an upstream (nginx answering 200 {"ok":true}),
# an nginx reverse proxy in front of it (the reference), and hookgate with a generated
# config. Drives each target with wrk (closed loop, fixed concurrency, interleaved rounds,
# warm-up before every measured window) and prints per-run rows, medians and ratios.
# Everything it starts is stopped on exit, Ctrl-C included.
#
# Needs (Debian/Ubuntu): apt-get install -y nginx wrk curl openssl
# and a Rust toolchain, unless HOOKGATE_BIN names a built hookgate binary.
#
# Settings (environment):
#   STAGES=all|off    all (default): hmac-sha256 verification, per-client + global + upstream
#                     rate limits (far above the load), dedup, routing, Standard Webhooks
#                     signing. off: dedup and routing only.
#   VERIFY=auto       STAGES=all's inbound check: hmac-sha256 if wrk's Lua can compute it
#                     (LuaJIT FFI + libcrypto), else token (said at start); or force either
#   TARGETS           default "direct nginx hookgate hookgate-dup"; also nginx-tls, hookgate-tls,
#                     hookgate-off (a second hookgate with every optional stage off, same run)
#   TLS=1             add nginx-tls and hookgate-tls (self-signed P-256 cert made at run time)
#   ROUNDS=3  DURATION=10  WARMUP=2  CONNS=32  THREADS=2
#   HOOKGATE_BIN      use this binary instead of `cargo build --release`
#   HOOKGATE_BIN_B    a second build, for the targets hookgate-b and hookgate-b-dup: the same
#                     config as hookgate, in the same run (an A/B of two builds; on a noisy
#                     machine only same-run comparisons mean anything)
#   BODY              JSON fixture (default bench/fixtures/fulfilment_pending.json)
#   PORT_BASE=24200   ports PORT_BASE+1..+11 on 127.0.0.1 (keep below 32768)
#   KEEP_TMP=1        keep the temp dir (configs, logs, raw wrk output)
#   COUNT=cpu         cpu (default): CPU time per request of each proxy (/proc).
#                     instructions: hookgate instances run under valgrind's callgrind, and
#                     their column is thousands of instructions per request in the measured
#                     window (nginx rows then show no figure). Deterministic where CPU time
#                     is not: for an A/B of small changes with HOOKGATE_BIN_B. ~50x slower,
#                     so use few connections (CONNS=8). Needs valgrind.
#   RUST_LOG          passed to hookgate (default: its own, info = one log line per event)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(dirname "$HERE")"

case "${1:-}" in
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "load.sh: no arguments expected (settings come from the environment; see --help)" >&2; exit 64 ;;
esac

STAGES="${STAGES:-all}"
VERIFY="${VERIFY:-auto}"
TARGETS="${TARGETS:-direct nginx hookgate hookgate-dup}"
TLS="${TLS:-0}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
WARMUP="${WARMUP:-2}"
CONNS="${CONNS:-32}"
THREADS="${THREADS:-2}"
BODY="${BODY:-$HERE/fixtures/fulfilment_pending.json}"
HOOKGATE_BIN="${HOOKGATE_BIN:-}"
HOOKGATE_BIN_B="${HOOKGATE_BIN_B:-}"
PORT_BASE="${PORT_BASE:-24200}"
KEEP_TMP="${KEEP_TMP:-0}"
COUNT="${COUNT:-cpu}"
URL_PATH="/webhooks/firstpromoter"

log()  { echo "# $*" >&2; }
warn() { echo "load.sh: WARNING: $*" >&2; }
die()  { echo "load.sh: error: $*" >&2; exit 1; }

# ------------------------------------------------------------------ checks --
NGINX="$(command -v nginx || true)"
[[ -z "$NGINX" && -x /usr/sbin/nginx ]] && NGINX=/usr/sbin/nginx
missing=()
[[ -n "$NGINX" ]] || missing+=(nginx)
for tool in wrk curl openssl timeout awk; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if (( ${#missing[@]} )); then
  echo "load.sh: missing: ${missing[*]}" >&2
  echo "  on Debian/Ubuntu: apt-get install -y nginx wrk curl openssl" >&2
  exit 1
fi

for v in ROUNDS DURATION WARMUP CONNS THREADS PORT_BASE; do
  [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a whole number, got '${!v}'"
done
(( ROUNDS >= 1 && DURATION >= 1 )) || die "ROUNDS and DURATION must be >= 1"
(( THREADS >= 1 && CONNS >= THREADS )) || die "need CONNS >= THREADS >= 1"
(( PORT_BASE >= 1024 && PORT_BASE + 11 < 32768 )) || die "PORT_BASE must be in 1024..32756"
[[ "$STAGES" == all || "$STAGES" == off ]] || die "STAGES must be 'all' or 'off'"
[[ "$VERIFY" =~ ^(auto|hmac-sha256|token)$ ]] || die "VERIFY must be auto, hmac-sha256 or token"
[[ -r "$BODY" ]] || die "cannot read BODY $BODY"

[[ "$TLS" == 1 ]] && TARGETS="$TARGETS nginx-tls hookgate-tls"
TARGETS="$(tr ' ' '\n' <<<"$TARGETS" | awk 'NF && !seen[$0]++' | tr '\n' ' ')"
for t in $TARGETS; do
  case "$t" in
    direct|nginx|hookgate|hookgate-dup|hookgate-off) ;;
    nginx-tls|hookgate-tls) TLS=1 ;;
    hookgate-b|hookgate-b-dup)
      [[ -x "$HOOKGATE_BIN_B" ]] || die "target $t needs HOOKGATE_BIN_B, an executable hookgate" ;;
    *) die "unknown target '$t' (direct nginx nginx-tls hookgate hookgate-dup hookgate-tls hookgate-off hookgate-b hookgate-b-dup)" ;;
  esac
done
want() { [[ " $TARGETS " == *" $1 "* ]]; }
case "$COUNT" in
  cpu) ;;
  instructions)
    if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
      die "COUNT=instructions needs valgrind (apt-get install -y valgrind)"
    fi ;;
  *) die "COUNT must be cpu or instructions, not $COUNT" ;;
esac

UP_PORT=$(( PORT_BASE + 1 ))        # upstream (nginx return 200)
NGINX_PORT=$(( PORT_BASE + 2 ))     # reference proxy
NGINX_TLS_PORT=$(( PORT_BASE + 3 ))
HG_PORT=$(( PORT_BASE + 4 ))        # hookgate, plain HTTP
HG_ADMIN=$(( PORT_BASE + 5 ))
HGT_PORT=$(( PORT_BASE + 6 ))       # second hookgate with [server.tls] (TLS on/off needs a restart)
HGT_ADMIN=$(( PORT_BASE + 7 ))
HGO_PORT=$(( PORT_BASE + 8 ))       # third hookgate, every optional stage off (hookgate-off)
HGO_ADMIN=$(( PORT_BASE + 9 ))
HGB_PORT=$(( PORT_BASE + 10 ))      # HOOKGATE_BIN_B with hookgate's config (hookgate-b)
HGB_ADMIN=$(( PORT_BASE + 11 ))
for p in $(seq $(( PORT_BASE + 1 )) $(( PORT_BASE + 11 ))); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    die "127.0.0.1:$p is in use (choose another PORT_BASE)"
  fi
done

# ----------------------------------------------------------------- hookgate --
if [[ -z "$HOOKGATE_BIN" ]]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust (https://rustup.rs) or set HOOKGATE_BIN"
  log "building hookgate: cargo build --release --locked"
  (cd "$REPO" && cargo build --release --locked)
  HOOKGATE_BIN="${CARGO_TARGET_DIR:-$REPO/target}/release/hookgate"
fi
[[ -x "$HOOKGATE_BIN" ]] || die "HOOKGATE_BIN is not an executable: $HOOKGATE_BIN"

# ------------------------------------------------------------------ cleanup --
TMP="$(mktemp -d "${TMPDIR:-/tmp}/hookgate-load.XXXXXX")"
NGINX_PIDS=()
HG_PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT
  trap '' INT TERM      # a second Ctrl-C must not cut the cleanup short
  set +e
  local pid _
  for pid in "${HG_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${HG_PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  for pid in "${NGINX_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${NGINX_PIDS[@]}"; do wait "$pid" 2>/dev/null; done
  if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "load.sh: interrupted" >&2; exit 130' INT TERM

printf '%s' "$(cat "$BODY")" >"$TMP/body.json"   # the bytes unique.lua sends (no trailing newline)
SECRET="$(openssl rand -hex 24)"           # the sender's (wrk's) secret
WHSEC="whsec_$(openssl rand -base64 24)"

# -------------------------------------------------------------------- nginx --
nginx_head() { # $1 = instance dir, $2 = worker_processes
  cat <<EOF
daemon off;
master_process on;
worker_processes $2;
pid $1/nginx.pid;
error_log $1/error.log warn;
$([[ "$(id -u)" == 0 ]] && echo "user root root;")
events { worker_connections 4096; }
EOF
}
nginx_http_common() { # $1 = instance dir
  cat <<EOF
    access_log off;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
EOF
}
start_nginx() { # $1 = instance dir with nginx.conf; sets STARTED_PID
  "$NGINX" -t -q -p "$1" -c "$1/nginx.conf" -e "$1/error.log" || die "bad nginx config $1/nginx.conf"
  "$NGINX" -p "$1" -c "$1/nginx.conf" -e "$1/error.log" </dev/null >>"$1/stdout.log" 2>&1 &
  STARTED_PID=$!
  NGINX_PIDS+=("$STARTED_PID")
}
status_of() { # POST the body once: prints the HTTP status (000 = no answer); $1 = url, rest = curl args
  local url=$1; shift
  curl -sk -o /dev/null -w '%{http_code}' --max-time 3 -X POST -H 'Content-Type: application/json' \
    --data-binary "@$TMP/body.json" "$@" "$url" 2>/dev/null || true
}
wait_for() { # $1 = url (GET), $2 = pid that must stay alive
  local _
  for _ in $(seq 300); do
    [[ "$(curl -sk -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null || true)" == 2* ]] && return 0
    kill -0 "$2" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

# The upstream: 1 worker, keep-alive, answers every request 200 {"ok":true};
# /__count (stub_status) tells how many requests it has served. hookgate's upstreams
# point at /signed/ with STAGES=all: there a forward without a Standard Webhooks
# signature is refused (403), so a run where `sign` did not happen shows up as non-2xx.
UP="$TMP/upstream"; mkdir -p "$UP"
cat >"$UP/nginx.conf" <<EOF
$(nginx_head "$UP" 1)
http {
$(nginx_http_common "$UP")
    server {
        listen 127.0.0.1:$UP_PORT reuseport backlog=4096;
        location = /__count { stub_status; }
        location / { default_type application/json; return 200 '{"ok":true}'; }
        location /signed/ {
            default_type application/json;
            if (\$http_webhook_signature !~ "^v1,") { return 403 '{"error":"no webhook-signature"}'; }
            return 200 '{"ok":true}';
        }
    }
}
EOF
start_nginx "$UP"; UP_PID=$STARTED_PID
wait_for "http://127.0.0.1:$UP_PORT/__count" "$UP_PID" || die "upstream did not start (KEEP_TMP=1, see $UP/error.log)"
[[ "$(status_of "http://127.0.0.1:$UP_PORT/signed/probe")" == 403 ]] || die "the upstream's /signed/ check does not work"

# STAGES=all verifies the sender: with hmac-sha256 if wrk's Lua can sign (one short wrk run
# against the upstream tells), else with a token.
AUTH=""
if [[ "$STAGES" == all ]]; then
  if [[ "$VERIFY" != token ]]; then
    if timeout 20 wrk -t1 -c1 -d1s -s "$HERE/unique.lua" "http://127.0.0.1:$UP_PORT/" \
         -- "$TMP/body.json" dup 10000 "hmac:probe" >"$TMP/wrk-sign-probe.txt" 2>&1 \
       && grep -q '^RESULT ' "$TMP/wrk-sign-probe.txt"; then
      VERIFY=hmac-sha256
    elif [[ "$VERIFY" == hmac-sha256 ]]; then
      die "wrk cannot sign requests: $(grep -m1 unique.lua "$TMP/wrk-sign-probe.txt" || tail -1 "$TMP/wrk-sign-probe.txt")"
    else
      warn "wrk's Lua cannot compute HMAC-SHA256 ($(grep -m1 unique.lua "$TMP/wrk-sign-probe.txt" || echo 'see KEEP_TMP=1'));"
      warn "verifying with scheme = \"token\" instead of \"hmac-sha256\""
      VERIFY=token
    fi
  fi
  if [[ "$VERIFY" == hmac-sha256 ]]; then AUTH="hmac:$SECRET"; else AUTH="token:$SECRET"; fi
else
  VERIFY=none
fi

# The reference proxy: proxy_pass with keep-alive to the upstream.
if [[ "$TLS" == 1 ]]; then
  mkdir -p "$TMP/tls"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TMP/tls/key.pem" -out "$TMP/tls/cert.pem" >"$TMP/tls/openssl.log" 2>&1 \
    || die "openssl could not make a certificate: $(cat "$TMP/tls/openssl.log")"
fi
PX="$TMP/nginx"; mkdir -p "$PX"
PROXY_LOCATION="location / { proxy_pass http://hook_upstream; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"
cat >"$PX/nginx.conf" <<EOF
$(nginx_head "$PX" auto)
http {
$(nginx_http_common "$PX")
    upstream hook_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport backlog=4096;
        $PROXY_LOCATION
    }
$(if [[ "$TLS" == 1 ]]; then cat <<TLSEOF
    server {
        listen 127.0.0.1:$NGINX_TLS_PORT ssl reuseport backlog=4096;
        ssl_certificate $TMP/tls/cert.pem;
        ssl_certificate_key $TMP/tls/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        $PROXY_LOCATION
    }
TLSEOF
fi)
}
EOF
start_nginx "$PX"; PX_PID=$STARTED_PID
wait_for "http://127.0.0.1:$NGINX_PORT/" "$PX_PID" || die "nginx proxy did not start (KEEP_TMP=1, see $PX/error.log)"
[[ "$(status_of "http://127.0.0.1:$NGINX_PORT$URL_PATH")" == 200 ]] || die "nginx proxy does not answer 200 (KEEP_TMP=1, see $PX/error.log)"

# ----------------------------------------------------------- hookgate config --
hookgate_config() { # $1 = listen port, $2 = admin port, $3 = 1 for TLS, $4 = stages (all|off)
  local limits="" verify="" up_extra="" up_path="" stages="$4"
  if [[ "$stages" == all ]]; then
    up_path="/signed"
    verify="[sources.verify]
scheme = \"$VERIFY\"
secret = \"$SECRET\"
header = \"$([[ "$VERIFY" == token ]] && echo x-hookgate-token || echo x-signature)\""
    limits="[rate_limit]                       # far above the load: runs the limiter, never a 429
per_client = { per_second = 1000000, burst = 1000000 }
global = { per_second = 1000000, burst = 1000000 }"
    up_extra="rate_limit = { per_second = 1000000, burst = 1000000 }
sign = { secret = \"$WHSEC\" }"
  fi
  cat <<EOF
# generated by bench/load.sh, STAGES=$stages
[server]
listen = "127.0.0.1:$1"
respond_within = "14s"
shutdown_timeout = "5s"
EOF
  [[ "$3" == 1 ]] && printf '[server.tls]\ncert = "%s"\nkey = "%s"\n' "$TMP/tls/cert.pem" "$TMP/tls/key.pem"
  cat <<EOF

[admin]
listen = "127.0.0.1:$2"

[[sources]]
name = "firstpromoter"
path = "$URL_PATH"
event_id = "/event/id"
event_type = "/event/type"
$verify

[dedup]
ttl = "1h"
max_entries = 10000000
backend = "memory"

$limits

[upstreams.billing]
url = "http://127.0.0.1:$UP_PORT$up_path/billing"
timeout = "10s"
max_in_flight = 1024
$up_extra

[upstreams.crm]
url = "http://127.0.0.1:$UP_PORT$up_path/crm"
timeout = "10s"
max_in_flight = 1024
$up_extra

# The fixture (fulfilment_pending, campaign 20417) passes two routes and matches the third.
[[routes]]
event_type = "fulfilment_pending"
match = { "/data/campaign/id" = 41001 }
upstream = "crm"

[[routes]]
event_type = ["lead_*", "reward_created"]
upstreams = ["crm", "billing"]

[[routes]]
event_type = "fulfilment_pending"
match = { "/data/campaign/id" = 20417 }
upstream = "billing"

[[routes]]
event_type = "*"
upstream = "crm"
EOF
}

start_hookgate() { # $1 = name, $2 = port, $3 = admin port, $4 = tls (0|1), $5 = stages,
                   # $6 = binary (default HOOKGATE_BIN); sets STARTED_PID
  local conf="$TMP/$1.toml" scheme=http stages="$5" bin="${6:-$HOOKGATE_BIN}"
  [[ "$4" == 1 ]] && scheme=https
  hookgate_config "$2" "$3" "$4" "$stages" >"$conf"
  "$bin" check --config "$conf" >"$TMP/$1.check" 2>&1 \
    || die "hookgate check rejected the generated config:"$'\n'"$(cat "$TMP/$1.check")"
  local -a under=()
  if [[ "$COUNT" == instructions ]]; then
    # Counting starts off; measure() turns it on for the measured window only.
    under=(valgrind --tool=callgrind --instr-atstart=no "--callgrind-out-file=$TMP/$1.cg.%p")
  fi
  "${under[@]}" "$bin" --log-format json serve --config "$conf" </dev/null >"$TMP/$1.log" 2>&1 &
  STARTED_PID=$!
  HG_PIDS+=("$STARTED_PID")
  wait_for "http://127.0.0.1:$3/healthz" "$STARTED_PID" \
    || die "$1 did not start:"$'\n'"$(tail -5 "$TMP/$1.log")"
  local url="$scheme://127.0.0.1:$2$URL_PATH" code
  if [[ "$stages" == all ]]; then
    # verification must really be on, and accept what unique.lua sends
    code="$(status_of "$url")"
    [[ "$code" == 401 ]] || die "$1: a POST without credentials got HTTP $code, expected 401"
    if [[ "$VERIFY" == hmac-sha256 ]]; then
      local sig; sig="$(openssl dgst -sha256 -hmac "$SECRET" -r "$TMP/body.json" | cut -d' ' -f1)"
      code="$(status_of "$url" -H "X-Signature: $sig")"
    else
      code="$(status_of "$url" -H "X-Hookgate-Token: $SECRET")"
    fi
  else
    code="$(status_of "$url")"
  fi
  [[ "$code" == 200 ]] || die "$1: a valid POST got HTTP $code, expected 200 (log: KEEP_TMP=1, $TMP/$1.log)"
}
if want hookgate || want hookgate-dup; then start_hookgate hookgate "$HG_PORT" "$HG_ADMIN" 0 "$STAGES"; HG_PID=$STARTED_PID; fi
if want hookgate-tls; then start_hookgate hookgate-tls "$HGT_PORT" "$HGT_ADMIN" 1 "$STAGES"; HGT_PID=$STARTED_PID; fi
if want hookgate-off; then start_hookgate hookgate-off "$HGO_PORT" "$HGO_ADMIN" 0 off; HGO_PID=$STARTED_PID; fi
if want hookgate-b || want hookgate-b-dup; then
  start_hookgate hookgate-b "$HGB_PORT" "$HGB_ADMIN" 0 "$STAGES" "$HOOKGATE_BIN_B"; HGB_PID=$STARTED_PID
fi

# --------------------------------------------------------------- accounting --
CLK_TCK="$(getconf CLK_TCK 2>/dev/null || echo 100)"
tree_pids() { # $1 and its children (nginx: master + workers), one per line
  local f kids
  echo "$1"
  for f in /proc/"$1"/task/*/children; do
    [[ -r "$f" ]] || continue
    read -r -a kids <"$f" || true
    (( ${#kids[@]} )) && printf '%s\n' "${kids[@]}"
  done
  return 0
}
tree_ticks() { # "utime stime" (clock ticks) of $1 and its children
  local p stat user=0 system=0
  local -a fields
  for p in $(tree_pids "$1"); do
    stat="$(cat "/proc/$p/stat" 2>/dev/null)" || continue
    read -r -a fields <<<"${stat##*) }"         # fields[0] = state (field 3 of stat)
    user=$(( user + fields[11] ))                # utime (14)
    system=$(( system + fields[12] ))            # stime (15): time in the kernel on its behalf
  done
  echo "$user $system"
}
tree_switches() { # context switches (voluntary + not) of every thread of $1 and its children
  local f p key value total=0
  for p in $(tree_pids "$1"); do
    for f in /proc/"$p"/task/*/status; do
      while read -r key value; do
        [[ "$key" == *ctxt_switches: ]] && total=$(( total + value ))
      done <"$f" 2>/dev/null || true
    done
  done
  echo "$total"
}
last_dump() { # the highest callgrind dump number of pid $1 so far (<name>.cg.<pid>.<n>)
  local max=0 f n
  for f in "$TMP"/*.cg."$1".*; do
    [[ -e "$f" ]] || continue
    n="${f##*.}"; [[ "$n" =~ ^[0-9]+$ ]] && (( n > max )) && max=$n
  done
  echo "$max"
}
instructions() { # callgrind's instruction count in $1 since its last dump (dumps it now)
  local last=0 file number _
  last="$(last_dump "$1")"
  callgrind_control --dump "$1" >/dev/null 2>&1 || { echo -; return; }
  for _ in $(seq 100); do   # the dump is written asynchronously: wait for its last line
    number="$(last_dump "$1")"
    if (( number > last )); then
      file="$(echo "$TMP"/*.cg."$1"."$number")"
      if grep -q '^totals:' "$file" 2>/dev/null; then
        awk '$1 == "totals:" { print $2; exit }' "$file"
        return
      fi
    fi
    sleep 0.1
  done
  echo -
}
upstream_count() { curl -s --max-time 2 "http://127.0.0.1:$UP_PORT/__count" | awk 'NR == 3 { print $3 }'; }
replays() { # hookgate_dedup_hits_total of the instance whose admin port is $1
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" \
    | awk '$1 ~ /^hookgate_dedup_hits_total({|$)/ { s += $2 } END { printf "%d\n", s }'
}

NONCE=10000
run_wrk() { # $1 = url, $2 = unique|dup, $3 = seconds, $4 = output file
  NONCE=$(( NONCE + 1 ))
  # every row sends the same requests (signed with STAGES=all), so wrk's own cost is the same
  timeout --foreground -k 5 $(( $3 + 30 )) wrk -t"$THREADS" -c"$CONNS" -d"$3s" --timeout 5s \
    -s "$HERE/unique.lua" "$1" -- "$TMP/body.json" "$2" "$NONCE" "$AUTH" >"$4" 2>&1
}

declare -A URL=( [direct]="http://127.0.0.1:$UP_PORT$URL_PATH"
                 [nginx]="http://127.0.0.1:$NGINX_PORT$URL_PATH"
                 [nginx-tls]="https://127.0.0.1:$NGINX_TLS_PORT$URL_PATH"
                 [hookgate]="http://127.0.0.1:$HG_PORT$URL_PATH"
                 [hookgate-dup]="http://127.0.0.1:$HG_PORT$URL_PATH"
                 [hookgate-tls]="https://127.0.0.1:$HGT_PORT$URL_PATH"
                 [hookgate-off]="http://127.0.0.1:$HGO_PORT$URL_PATH"
                 [hookgate-b]="http://127.0.0.1:$HGB_PORT$URL_PATH"
                 [hookgate-b-dup]="http://127.0.0.1:$HGB_PORT$URL_PATH" )
declare -A IDS=( [direct]=unique [nginx]=unique [nginx-tls]=unique
                 [hookgate]=unique [hookgate-dup]=dup [hookgate-tls]=unique [hookgate-off]=unique
                 [hookgate-b]=unique [hookgate-b-dup]=dup )
declare -A PROXY=( [direct]="" [nginx]="$PX_PID" [nginx-tls]="$PX_PID"
                   [hookgate]="${HG_PID:-}" [hookgate-dup]="${HG_PID:-}" [hookgate-tls]="${HGT_PID:-}"
                   [hookgate-off]="${HGO_PID:-}" [hookgate-b]="${HGB_PID:-}" [hookgate-b-dup]="${HGB_PID:-}" )
declare -A ADMIN=( [hookgate]="$HG_ADMIN" [hookgate-dup]="$HG_ADMIN" [hookgate-tls]="$HGT_ADMIN"
                   [hookgate-off]="$HGO_ADMIN" [hookgate-b]="$HGB_ADMIN" [hookgate-b-dup]="$HGB_ADMIN" )

RAW="$TMP/runs.tsv"
COST="cpu_us/req"; [[ "$COUNT" == instructions ]] && COST="kinstr/req"
printf 'round\ttarget\tids\treq/s\tp50_ms\tp99_ms\tnon2xx\tsock_err\t%s\trequests\tupstream_got\treplays\tdup_hdr\tcheck\tcs/req\tsys_us/req\n' "$COST" >"$RAW"
INVALID=0

measure() { # $1 = round, $2 = target
  local t=$2 url=${URL[$2]} ids=${IDS[$2]} ppid=${PROXY[$2]} admin=${ADMIN[$2]:-}
  local out="$TMP/wrk-$1-$t.txt"
  if (( WARMUP > 0 )); then run_wrk "$url" "$ids" "$WARMUP" "$out.warmup" || warn "$t warm-up: wrk failed"; fi
  local u0 u1 r0=0 r1=0 c0="0 0" c1="0 0" s0=0 s1=0
  u0="$(upstream_count)"
  [[ -n "$admin" ]] && r0="$(replays "$admin")"
  [[ -n "$ppid" ]] && c0="$(tree_ticks "$ppid")" && s0="$(tree_switches "$ppid")"
  local counted=""
  if [[ "$COUNT" == instructions && -n "$admin" ]]; then
    instructions "$ppid" >/dev/null   # drops what the warm-up left uncounted
    callgrind_control --instr=on "$ppid" >/dev/null
  fi
  run_wrk "$url" "$ids" "$DURATION" "$out" || warn "$t: wrk exited non-zero"
  [[ -n "$ppid" ]] && c1="$(tree_ticks "$ppid")" && s1="$(tree_switches "$ppid")"
  if [[ "$COUNT" == instructions ]]; then
    if [[ -n "$admin" ]]; then
      counted="$(instructions "$ppid")"
      callgrind_control --instr=off "$ppid" >/dev/null
    else
      counted="-"
    fi
  fi
  [[ -n "$admin" ]] && r1="$(replays "$admin")"
  u1="$(upstream_count)"
  local result; result="$(grep '^RESULT ' "$out" | tail -1 || true)"
  if [[ -z "$result" ]]; then
    warn "$t: no result from wrk:"; sed 's/^/    /' "$out" >&2
    INVALID=$(( INVALID + 1 ))
    return
  fi
  # upstream_got: requests the upstream served in the window (minus the second /__count itself)
  awk -v round="$1" -v t="$t" -v ids="$ids" -v res="$result" -v tck="$CLK_TCK" \
      -v cpu="$([[ -n "$ppid" ]] && echo $(( ${c1% *} + ${c1#* } - ${c0% *} - ${c0#* } )) || echo -)" \
      -v sys="$([[ -n "$ppid" ]] && echo $(( ${c1#* } - ${c0#* } )) || echo -)" -v got=$(( u1 - u0 - 1 )) \
      -v counted="$counted" \
      -v cs="$([[ -n "$ppid" ]] && echo $(( s1 - s0 )) || echo -)" \
      -v rep="$([[ -n "$admin" ]] && echo $(( r1 - r0 )) || echo -)" -v conns="$CONNS" '
    BEGIN {
      n = split(res, kv, " ")
      for (i = 2; i <= n; i++) { split(kv[i], a, "="); r[a[1]] = a[2] }
      req = r["requests"] + 0
      cpu_req = (cpu == "-" || req == 0) ? "-" : sprintf("%.1f", cpu / tck * 1e6 / req)
      if (counted != "") cpu_req = (counted == "-" || req == 0) ? "-" : sprintf("%.1f", counted / 1000 / req)
      cs_req = (cs == "-" || req == 0) ? "-" : sprintf("%.3f", cs / req)
      sys_req = (sys == "-" || req == 0) ? "-" : sprintf("%.1f", sys / tck * 1e6 / req)
      check = ""
      if (r["non2xx"] > 0) check = check sprintf("INVALID:%d_non2xx(last_HTTP_%d),", r["non2xx"], r["bad_status"])
      if (r["sock_err"] > 0) check = check "socket_errors,"
      if (ids == "unique") {
        if (got < req) check = check "upstream_got<requests,"
        if (got > req + conns) check = check "upstream_got>requests+conns,"
        if (rep != "-" && rep > 0) check = check "unexpected_replays,"
        if (r["dup_answers"] > 0) check = check "unexpected_duplicate_answers,"
      } else {
        if (got != 0) check = check "duplicates_forwarded,"
        if (rep != "-" && rep < req) check = check "replays<requests,"
        if (r["dup_answers"] != req) check = check "answers_without_hookgate-duplicate,"
      }
      if (check == "") check = "ok"; else sub(/,$/, "", check)
      printf "%s\t%s\t%s\t%.0f\t%.3f\t%.3f\t%d\t%d\t%s\t%d\t%d\t%s\t%d\t%s\t%s\t%s\n", round, t, ids, r["rps"],
        r["p50_us"] / 1000, r["p99_us"] / 1000, r["non2xx"], r["sock_err"], cpu_req, req, got, rep,
        r["dup_answers"], check, cs_req, sys_req
    }' >>"$RAW"
  local check; check="$(tail -1 "$RAW" | cut -f14)"
  if [[ "$check" != ok ]]; then
    INVALID=$(( INVALID + 1 ))
    warn "round $1, $t: $check"
    [[ "$check" == *non2xx* ]] && warn "a run measuring non-2xx answers (401/429/5xx) measures the wrong path: it is invalid"
  fi
}

# --------------------------------------------------------------------- run --
read -r _ a b c idle0 _ <"/proc/stat"; tot0=$(( a + b + c + idle0 ))
sleep 1
read -r _ a b c idle1 _ <"/proc/stat"; tot1=$(( a + b + c + idle1 ))
busy=$(( tot1 > tot0 ? 100 - 100 * (idle1 - idle0) / (tot1 - tot0) : 0 ))
log "hookgate: $HOOKGATE_BIN ($("$HOOKGATE_BIN" --version 2>/dev/null | head -1)), STAGES=$STAGES (verify: $VERIFY)"
log "nginx $("$NGINX" -v 2>&1 | sed 's/.*\///'), $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); $(nproc) cpus, ${busy}% busy before the run"
(( busy < 10 )) || warn "the machine is ${busy}% busy already: the numbers will be noisy"
log "body $(wc -c <"$TMP/body.json") bytes; wrk -t$THREADS -c$CONNS; ${WARMUP}s warm-up + ${DURATION}s measured; $ROUNDS round(s) of: $TARGETS"
for (( round = 1; round <= ROUNDS; round++ )); do
  for t in $TARGETS; do
    log "round $round/$ROUNDS: $t (${IDS[$t]} ids) ${URL[$t]}"
    measure "$round" "$t"
  done
done

# ------------------------------------------------------------------ report --
echo
echo "== runs (cpu_us/req: CPU time of the proxy's processes per request, or with COUNT=instructions"
echo "   kinstr/req: thousands of instructions hookgate ran per request; cs/req: their context"
echo "   switches per request, voluntary and not; sys_us/req: the part of the CPU time spent in the"
echo "   kernel on their behalf (stime; with COUNT=instructions, valgrind's); upstream_got: requests the"
echo "   upstream served in the window; replays: hookgate_dedup_hits_total delta; dup_hdr: answers"
echo "   carrying hookgate-duplicate)"
column -t -s $'\t' "$RAW" 2>/dev/null || cat "$RAW"
echo
awk -F'\t' -v order="$TARGETS" -v rounds="$ROUNDS" -v stages="$STAGES" -v cost="$COST" '
  function median(s,   v, n, i, j, x) {
    n = split(s, v, " "); if (n == 0) return ""
    for (i = 2; i <= n; i++) { x = v[i] + 0; for (j = i - 1; j >= 1 && v[j] + 0 > x; j--) v[j + 1] = v[j]; v[j + 1] = x }
    return (n % 2) ? v[(n + 1) / 2] + 0 : (v[n / 2] + v[n / 2 + 1]) / 2
  }
  NR > 1 { rps[$2] = rps[$2] " " $4; p50[$2] = p50[$2] " " $5; p99[$2] = p99[$2] " " $6
           if ($9 != "-") cpu[$2] = cpu[$2] " " $9
           if ($15 != "-") cs[$2] = cs[$2] " " $15
           if ($16 != "-") sys[$2] = sys[$2] " " $16
           bad[$2] += $7; sock[$2] += $8; ids[$2] = $3; runs[$2]++; if ($14 == "ok") ok[$2]++ }
  function ratio(a, b,   x, y, z) {
    if (!(a in R) || !(b in R)) return
    x = R[b] > 0 ? sprintf("%.3f", R[a] / R[b]) : "-"
    y = P[b] > 0 ? sprintf("%.3f", P[a] / P[b]) : "-"
    z = (C[a] != "" && C[b] != "" && C[b] > 0) ? sprintf("%.3f", C[a] / C[b]) : "-"
    printf "%-26s %8s %8s %12s\n", a "/" b, x, y, z
  }
  END {
    printf "== summary: medians of %d round(s), STAGES=%s\n", rounds, stages
    printf "%-15s %-6s %9s %8s %8s %7s %8s %12s %10s %8s %8s\n", "target", "ids", "req/s", "p50_ms", "p99_ms", "non2xx", "sock_err", cost, "sys_us/req", "cs/req", "checks"
    n = split(order, T, " ")
    for (i = 1; i <= n; i++) { t = T[i]; if (!(t in runs)) continue
      R[t] = median(rps[t]); P[t] = median(p50[t]); C[t] = median(cpu[t])
      S = median(cs[t]); K = median(sys[t])
      printf "%-15s %-6s %9.0f %8.3f %8.3f %7d %8d %12s %10s %8s %8s\n", t, ids[t], R[t], P[t], median(p99[t]),
        bad[t], sock[t], (C[t] == "" ? "-" : sprintf("%.1f", C[t])), (K == "" ? "-" : sprintf("%.1f", K)),
        (S == "" ? "-" : sprintf("%.2f", S)), (ok[t] + 0) "/" runs[t] }
    print ""
    print "== ratios (req/s > 1: more throughput; p50 and cpu/req < 1: faster, cheaper)"
    printf "%-26s %8s %8s %12s\n", "ratio", "req/s", "p50", "cpu/req"
    ratio("nginx", "direct"); ratio("hookgate", "nginx"); ratio("hookgate-tls", "nginx-tls")
    ratio("hookgate-dup", "direct"); ratio("hookgate-dup", "hookgate"); ratio("hookgate-off", "hookgate")
    ratio("hookgate-b", "hookgate"); ratio("hookgate-b-dup", "hookgate-dup")
  }' "$RAW"

show_metrics() { # $1 = name, $2 = admin port
  echo
  echo "== $1 /metrics at the end, non-zero lines (its whole life: probes and warm-ups included)"
  curl -s --max-time 2 "http://127.0.0.1:$2/metrics" \
    | awk '/^hookgate_(requests_total|upstream_requests_total|dedup_hits_total|rate_limited_total)/ && $NF != 0 { print "  " $0 }' || true
}
if want hookgate || want hookgate-dup; then show_metrics hookgate "$HG_ADMIN"; fi
if want hookgate-tls; then show_metrics hookgate-tls "$HGT_ADMIN"; fi
if want hookgate-off; then show_metrics hookgate-off "$HGO_ADMIN"; fi
if want hookgate-b || want hookgate-b-dup; then show_metrics hookgate-b "$HGB_ADMIN"; fi

if (( INVALID > 0 )); then
  echo
  warn "$INVALID run(s) failed their checks (see the check column): do not use these numbers"
  exit 2
fi
