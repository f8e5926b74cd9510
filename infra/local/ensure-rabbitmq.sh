#!/usr/bin/env bash
# Makes sure a RabbitMQ broker answers on 127.0.0.1:5672 (guest/guest): installs Debian's
# rabbitmq-server if it is missing and starts it detached. Then makes sure the demo services'
# own broker users exist (each publishes as itself: the service checks who confirms).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/lib.sh"

demo_users() {
  local ctl=(env PATH="/usr/sbin:$PATH" rabbitmqctl -q)
  if ! command -v rabbitmqctl >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmqctl ]; then
    log "rabbitmq: no rabbitmqctl here; the demo services' users must exist already"
    return 0
  fi
  local existing
  existing=$(as_root "${ctl[@]}" list_users --no-table-headers 2>/dev/null | cut -f1 || true)
  for service in profile billing viewing-history email; do
    local user="dsr-demo-$service"
    if ! grep -qx "$user" <<<"$existing"; then
      # Local only: the password is the user name. A real broker gives each service its own
      # secret and only its own queue and exchanges (docs/security.md).
      as_root "${ctl[@]}" add_user "$user" "$user" >/dev/null
      as_root "${ctl[@]}" set_permissions -p / "$user" ".*" ".*" ".*" >/dev/null
      log "rabbitmq: created broker user $user"
    fi
  done
}

# The tests give every test its own namespace `t<ulid>.`; its durable queues outlive the test.
# They expire after 10 minutes unused, or a long-lived broker would recover thousands of them
# at every start (and run out of file handles doing so). Nothing else matches the pattern.
test_queue_expiry() {
  as_root env PATH="/usr/sbin:$PATH" rabbitmqctl -q set_policy --apply-to queues \
    dsr-test-namespaces '^t[0-9a-z]{26}\.' '{"expires": 600000}' >/dev/null \
    || log "rabbitmq: could not set the expiry policy of test queues"
}

if answers 127.0.0.1 5672; then
  log "rabbitmq: already answering on 127.0.0.1:5672"
  demo_users
  test_queue_expiry
  exit 0
fi
if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
  log "rabbitmq: installing Debian's rabbitmq-server"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq rabbitmq-server >/dev/null
fi
log "rabbitmq: starting"
# A broker recovering many durable queues needs a file handle per queue.
as_root bash -c 'ulimit -n 65536 2>/dev/null || true; PATH="/usr/sbin:$PATH" exec rabbitmq-server -detached'
wait_for 127.0.0.1 5672 120 rabbitmq
log "rabbitmq: ready on 127.0.0.1:5672"
demo_users
test_queue_expiry
