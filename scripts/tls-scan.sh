#!/usr/bin/env bash
# Scans hookgate's TLS listener with sslyze (from PyPI) and prints the summary, the way the
# README's security section was produced. Everything it makes (a throwaway CA and server
# certificate, a config, logs) lives in a temporary directory that is removed at exit; no key
# is ever written into the repository.
#
#   bash scripts/tls-scan.sh            # builds target/release/hookgate if needed
#   HOOKGATE_BIN=path bash scripts/tls-scan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
port="${TLS_SCAN_PORT:-18443}"
work="$(mktemp -d)"
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT

bin="${HOOKGATE_BIN:-target/release/hookgate}"
[ -x "$bin" ] || cargo build --release --locked --quiet
command -v sslyze >/dev/null || pip install -q sslyze==6.3.1
command -v openssl >/dev/null || { echo "openssl is needed to issue the scan certificate" >&2; exit 1; }

# A private CA and a 30-day P-256 server certificate for 127.0.0.1, as a real deployment
# would have from its CA (sslyze is told to trust the CA).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
  -keyout "$work/ca.key" -out "$work/ca.pem" -subj "/CN=hookgate scan CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$work/server.key" -out "$work/server.csr" -subj "/CN=127.0.0.1" 2>/dev/null
printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
  "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" \
  "authorityKeyIdentifier=keyid" "subjectKeyIdentifier=hash" > "$work/ext.cnf"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 30 -extfile "$work/ext.cnf" -out "$work/server.pem" 2>/dev/null

cat > "$work/config.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[server.tls]
cert = "server.pem"
key = "server.key"

[[sources]]
name = "scan"
path = "/webhooks/scan"

[upstreams.app]
url = "http://127.0.0.1:9/unused"

[[routes]]
event_type = "*"
upstream = "app"
TOML

"$bin" serve --config "$work/config.toml" --log-format json > "$work/hookgate.log" 2>&1 &
pid=$!
for _ in $(seq 1 50); do
  grep -q '"listen"' "$work/hookgate.log" 2>/dev/null && break
  sleep 0.1
done
sslyze --certinfo_ca_file "$work/ca.pem" "127.0.0.1:$port" > "$work/sslyze.txt" || true
sed -n '/Cipher Suites:/,/Elliptic Curve Key Exchange/p;/Supported curves/p;/Checking results against/,$p' \
  "$work/sslyze.txt" | grep -v '^\s*$'
grep -q 'OK - Compliant' "$work/sslyze.txt"
