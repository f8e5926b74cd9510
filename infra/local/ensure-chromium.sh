#!/usr/bin/env bash
# Makes sure a headless browser is there for the operations page's test: Debian's `chromium`
# package, installed when missing (as root, or through sudo).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
log "chromium: installing Debian's chromium package (the operations page is tested in it)"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null \
  || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
command -v chromium >/dev/null 2>&1 || { log "chromium: not installed"; exit 1; }
log "chromium: $(chromium --version 2>/dev/null || echo installed)"
