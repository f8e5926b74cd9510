#!/usr/bin/env bash
# Makes sure a headless browser is there for the operations page's tests: Debian's `chromium`
# package, and `chromium-driver` (WebDriver, for the test that clicks), installed when missing
# (as root, or through sudo).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  exit 0
fi
log "chromium: installing Debian's chromium and chromium-driver packages (the operations page is tested in them)"
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
  || { as_root apt-get update -q >/dev/null && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; }
command -v chromium >/dev/null 2>&1 || { log "chromium: not installed"; exit 1; }
command -v chromedriver >/dev/null 2>&1 || { log "chromium-driver: not installed"; exit 1; }
log "chromium: $(chromium --version 2>/dev/null || echo installed)"
