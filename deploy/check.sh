#!/usr/bin/env bash
# Checks the deployment files in deploy/ as far as this machine can: there is no Docker
# engine and no Kubernetes cluster here, so nothing is built into an image or applied to a
# cluster. What is checked instead is listed in deploy/README.md ("What deploy/check.sh
# verifies") and printed as it runs. Run from anywhere:  bash deploy/check.sh
#
#   HOOKGATE_BIN=path             use this hookgate binary instead of `cargo build --release --locked`
#   DEPLOY_CHECK_ALLOW_UNBUILT=1  count "not built yet" refusals by `hookgate check` as skipped
#                                 instead of failed (only those; any other problem still fails)
#   DEPLOY_CHECK_INSTALL=1        apt-get install the optional tools that are missing (strace,
#                                 nginx-light, prometheus for promtool) instead of skipping
#                                 their checks
set -euo pipefail
cd "$(dirname "$0")/.."

echo "=== deploy check: tools"
if [ "${DEPLOY_CHECK_INSTALL:-}" = 1 ]; then
  missing=()
  command -v strace >/dev/null || missing+=(strace)
  command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
  command -v promtool >/dev/null || missing+=(prometheus)
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
# Pinned Python tools in a venv under target/ (git-ignored, kept between runs).
venv=target/deploy-check/venv
reqs=(pyyaml==6.0.3 promql-parser==0.11.0 kubernetes-validate==1.37.0 check-jsonschema==0.39.0)
python=python3
if "$venv/bin/python" -c 'import yaml, promql_parser, kubernetes_validate' 2>/dev/null &&
   [ -x "$venv/bin/check-jsonschema" ]; then
  python="$venv/bin/python"
elif python3 -m venv "$venv" >/dev/null 2>&1 &&
     "$venv/bin/pip" install -q --disable-pip-version-check "${reqs[@]}"; then
  python="$venv/bin/python"
else
  echo "could not install ${reqs[*]} into $venv; using the system python3"
  python3 -c 'import yaml' 2>/dev/null || pip install -q pyyaml || {
    echo "FAIL PyYAML is required"; exit 1; }
fi
"$python" --version

bin="${HOOKGATE_BIN:-}"
bin_problem=""
if [ -z "$bin" ]; then
  # The same command as the Dockerfile's; a no-op when CI's release build is up to date.
  if cargo build --release --locked --quiet; then
    bin=target/release/hookgate
  else
    bin_problem="cargo build --release --locked failed (see above)"
  fi
fi

echo "=== deploy check: files"
exec "$python" deploy/check.py --bin "$bin" --bin-problem "$bin_problem"
