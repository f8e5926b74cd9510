#!/usr/bin/env bash
# Makes sure the project's virtualenv holds what requirements.txt pins (moto, cfn-lint,
# cargo-lambda, the benchmark's Python peer): installs it when missing or when the pins change.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"
venv=${DSR_VENV:-$HOME/.cache/gdpr-dsr/venv}

ensure_venv() {
  local stamp="$venv/.requirements.sha256" want
  want=$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)
  if [ -x "$venv/bin/moto_server" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  log "installing requirements.txt (moto, cfn-lint, cargo-lambda, the bench peer, pika) into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$here/requirements.txt"
  echo "$want" >"$stamp"
}

ensure_venv
