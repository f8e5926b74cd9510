#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest): installs Debian's
# rabbitmq-server if it is missing and starts it detached.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

if answers 127.0.0.1 5672; then
  log "rabbitmq: already answering on 127.0.0.1:5672"
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  log "rabbitmq: installing Debian's rabbitmq-server"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rabbitmq-server >/dev/null
fi
log "rabbitmq: starting"
as_root env PATH="/usr/sbin:$PATH" rabbitmq-server -detached
wait_for 127.0.0.1 5672 120 rabbitmq
log "rabbitmq: ready on 127.0.0.1:5672"
