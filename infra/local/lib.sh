# Helpers shared by the local-stack scripts. Sourced, not run.

log() { printf '[local-stack] %s\n' "$*" >&2; }

# answers HOST PORT: true when something accepts TCP connections there.
answers() {
  python3 - "$1" "$2" <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except OSError:
    sys.exit(1)
PY
}

# wait_for HOST PORT SECONDS WHAT
wait_for() {
  local deadline=$((SECONDS + $3))
  until answers "$1" "$2"; do
    if ((SECONDS >= deadline)); then
      log "$4 did not come up on $1:$2 within $3 s"
      return 1
    fi
    sleep 0.5
  done
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}
