#!/usr/bin/env bash
# Fuzzes every parser of outside input (shared/fuzz/fuzz_targets) with libFuzzer through cargo fuzz,
# on the stable toolchain (RUSTC_BOOTSTRAP lets cargo fuzz pass its -Z flags; no sanitizer, so
# no nightly is needed). Each target runs FUZZ_RUNS executions (default 10 million) and the
# table of runs, time and speed is printed and written to target/chaos/fuzz.md. A crash stops
# the run with libFuzzer's report; the input is kept under shared/fuzz/artifacts/<target>/ and belongs
# in tests/hostile/corpus.json as a regression case.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUNS="${FUZZ_RUNS:-10000000}"
TARGETS="${FUZZ_TARGETS:-api_request jwt_claims queue_messages amqp_inbound registry delay_keys}"
export RUSTC_BOOTSTRAP=1
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --version 0.13.2
mkdir -p target/chaos
out=target/chaos/fuzz.md
{
  echo "| target | executions | seconds | executions/s | crashes |"
  echo "| --- | ---: | ---: | ---: | ---: |"
} >"$out"
cargo fuzz build --fuzz-dir shared/fuzz --sanitizer none -O
for target in $TARGETS; do
  mkdir -p "shared/fuzz/corpus/$target"
  log="target/chaos/fuzz-$target.log"
  start=$(date +%s)
  if ! cargo fuzz run --fuzz-dir shared/fuzz --sanitizer none -O "$target" "shared/fuzz/corpus/$target" -- \
      -runs="$RUNS" -max_len=65536 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log"
    echo "| $target | - | - | - | CRASH (see $log) |" >>"$out"
    cat "$out"
    exit 1
  fi
  seconds=$(( $(date +%s) - start ))
  done_runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "$RUNS")
  rate=$(( done_runs / (seconds > 0 ? seconds : 1) ))
  echo "| $target | $done_runs | $seconds | $rate | 0 |" >>"$out"
  echo "fuzz: $target: $done_runs executions in $seconds s, no crash"
done
cat "$out"
