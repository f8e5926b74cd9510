#!/usr/bin/env bash
# The proving ground: every scenario at full size, then every fuzz target, on loopback only,
# bounded in time and count; it stops by itself. Prints the table docs/reliability.md holds and
# writes it to target/chaos/report.md.
#   CHAOS_REQUESTS    requests in the AWS-faults run (default 500, half access, half erasure)
#   CHAOS_FAULT_RATE  share of AWS calls that fail (default 0.2)
#   CHAOS_DUPLICATED_REQUESTS  requests with every message delivered three times (default 100)
#   CHAOS_BROKER_ERASURES, CHAOS_BROKER_DOWN_SECONDS  erasures during a broker outage (1000, 600)
#   CRASH_REQUESTS    requests in flight when the functions' process is killed, per kill point (20)
#   FUZZ_RUNS         executions per fuzz target (default 10 million; CHAOS_SKIP_FUZZ=1 skips)
set -euo pipefail
cd "$(dirname "$0")/../.."
export CHAOS_REQUESTS="${CHAOS_REQUESTS:-500}"
export CHAOS_FAULT_RATE="${CHAOS_FAULT_RATE:-0.2}"
export CHAOS_DUPLICATED_REQUESTS="${CHAOS_DUPLICATED_REQUESTS:-100}"
export CHAOS_BROKER_ERASURES="${CHAOS_BROKER_ERASURES:-1000}"
export CHAOS_BROKER_DOWN_SECONDS="${CHAOS_BROKER_DOWN_SECONDS:-600}"
export CRASH_REQUESTS="${CRASH_REQUESTS:-20}"
mkdir -p target/chaos
log=target/chaos/scenarios.log
: >"$log"
start=$(date +%s)
# One scenario at a time, each on a fresh emulator when the project started it: moto keeps
# everything in memory, and after a 500-request run it holds gigabytes (a 200-request run on
# the leftovers of another swapped the machine and measured nothing).
fresh_emulator() {
  if [[ -f .local/moto.pid ]]; then
    kill "$(cat .local/moto.pid)" 2>/dev/null || true
    rm -f .local/moto.pid
    sleep 2
  fi
  infra/local/ensure-emulator.sh
}
# Shortest first, then the two the service's promises are stated at (500 requests under
# faults, 1,000 erasures through a broker outage); the report is rewritten after each, so an
# interrupted run keeps what it measured.
scenarios=(
  'test(every_hostile_input)'
  'test(/^chaos::with_aws_failing/)'
  'test(rabbitmq_restarted_in_the_middle)'
  'test(/^crash::/)'
  'test(/^chaos::every_message_delivered/)'
)
report() {
  {
    echo "## Scenarios ($(date -u +%F), $(nproc) cores, CHAOS_REQUESTS=$CHAOS_REQUESTS, CHAOS_FAULT_RATE=$CHAOS_FAULT_RATE)"
    echo
    echo "| scenario | figures |"
    echo "| --- | --- |"
    # A scenario without a figures line (hostile input) leaves grep nothing to find.
    grep -aE '^(chaos|crash):' "$log" | sed -E 's/^(chaos|crash): ([^|]*)\| (.*)$/| \1: \2| \3 |/' || true
    grep -aE '^\s+(PASS|FAIL) ' "$log" | sed -E 's/^\s+(PASS|FAIL) \[ *([0-9.]+)s\].* dsr-tests::it (.*)$/| \3 | \1 in \2 s |/' || true
    echo
    echo "Scenarios: $(( $(date +%s) - start )) s."
  } >target/chaos/report.md
}
status=0
for scenario in "${scenarios[@]}"; do
  fresh_emulator
  set +e
  cargo nextest run -p dsr-tests --no-fail-fast --no-capture --test-threads 1 -E "$scenario" \
    2>&1 | tee -a "$log" | grep -aE '^(chaos|crash):|PASS|FAIL'
  codes=("${PIPESTATUS[@]}")
  set -e
  [[ ${codes[0]} -eq 0 ]] || status=1
  report
done
if [[ "${CHAOS_SKIP_FUZZ:-}" != "1" ]]; then
  infra/chaos/fuzz.sh
  { echo; echo "## Fuzzing"; echo; cat target/chaos/fuzz.md; } >>target/chaos/report.md
fi
cat target/chaos/report.md
exit "$status"
