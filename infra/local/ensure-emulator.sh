#!/usr/bin/env bash
# Makes sure an AWS emulator answers on AWS_ENDPOINT_URL (LocalStack's http://127.0.0.1:4566 by
# default). Whatever already answers there (a LocalStack, a moto) is used as it is. Otherwise
# moto is installed into the project's virtualenv, if it is not there yet, and started in the
# background with LocalStack's account id. The code itself only ever sees AWS_ENDPOINT_URL.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

endpoint=${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}
venv=${DSR_VENV:-$HOME/.cache/gdpr-dsr/venv}
state=${DSR_STATE_DIR:-$here/../../.local}
hostport=${endpoint#*://}
hostport=${hostport%%/*}
host=${hostport%:*}
port=${hostport##*:}

"$here/ensure-venv.sh"   # cfn-lint is needed by the tests whichever emulator answers

if answers "$host" "$port"; then
  log "emulator: using what already answers on $endpoint"
  exit 0
fi

mkdir -p "$state"
log "emulator: starting moto on $host:$port (log: $state/moto.log)"
# moto_server.py is moto's own server with DynamoDB transactions made atomic (see the file).
MOTO_ACCOUNT_ID=000000000000 setsid nohup "$venv/bin/python" "$here/moto_server.py" -H "$host" -p "$port" \
  >"$state/moto.log" 2>&1 </dev/null &
echo $! >"$state/moto.pid"
wait_for "$host" "$port" 60 moto
log "emulator: ready on $endpoint"
