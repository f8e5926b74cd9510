#!/usr/bin/env bash
# Makes sure Node.js and the CDK app's packages (package-lock.json) are installed.
set -euo pipefail
cdk_dir=$(cd "$(dirname "$0")" && pwd)
. "$cdk_dir/../local/lib.sh"
if ! command -v npm >/dev/null; then
  log "installing Node.js and npm from Debian's packages (the CDK app)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null \
    || { as_root apt-get update -q >/dev/null \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }
fi
stamp="$cdk_dir/node_modules/.lock.sha256"
want=$(sha256sum "$cdk_dir/package-lock.json" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  log "installing the CDK app's packages (aws-cdk-lib, the cdk CLI) into infra/cdk/node_modules"
  (cd "$cdk_dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" >"$stamp"
fi
