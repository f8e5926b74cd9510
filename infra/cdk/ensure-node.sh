#!/usr/bin/env bash
# Makes sure Node.js and the packages of the CDK app and of the AsyncAPI check (each from its
# package-lock.json) are installed.
set -euo pipefail
cdk_dir=$(cd "$(dirname "$0")" && pwd)
. "$cdk_dir/../local/lib.sh"
if ! command -v npm >/dev/null; then
  log "installing Node.js and npm from Debian's packages (the CDK app)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null \
    || { as_root apt-get update -q >/dev/null \
      && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm >/dev/null; }
fi
# The CDK app's packages, and the AsyncAPI parser the tests validate docs/asyncapi.yaml with.
for dir in "$cdk_dir" "$cdk_dir/../asyncapi"; do
  stamp="$dir/node_modules/.lock.sha256"
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing the packages of $(basename "$(cd "$dir" && pwd)") (package-lock.json) into its node_modules"
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    echo "$want" >"$stamp"
  fi
done
