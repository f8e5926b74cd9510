#!/usr/bin/env bash
# The CDK app's template, checked against template.yaml: `make cdk`.
#   infra/cdk/synth.sh [artifacts-dir]
# artifacts-dir is where `make package` left the functions (<dir>/<binary>/bootstrap); default
# $CARGO_TARGET_DIR/lambda-arm64. CDK_STAND_INS=1 synthesises from empty stand-ins instead (the
# template does not depend on the binaries' content; the tests use it). The template goes to
# $CDK_OUT (default infra/cdk/cdk.out). Offline: no AWS account, no lookups.
set -euo pipefail
cdk_dir=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$cdk_dir/../.." && pwd)
. "$repo/infra/local/lib.sh"
"$repo/infra/cdk/ensure-node.sh"
artifacts=${1:-${CARGO_TARGET_DIR:-$repo/target}/lambda-arm64}
out=${CDK_OUT:-$cdk_dir/cdk.out}
if [ "${CDK_STAND_INS:-}" = 1 ]; then
  artifacts=$(mktemp -d)
  trap 'rm -rf "$artifacts"' EXIT
  for binary in $(grep -oP '^\s+Binary:\s*\K\S+' "$repo/template.yaml" | sort -u); do
    mkdir -p "$artifacts/$binary" && : >"$artifacts/$binary/bootstrap"
  done
fi
cd "$cdk_dir"
npx --no-install tsc
CDK_DISABLE_CLI_TELEMETRY=true npx --no-install cdk synth --quiet --no-notices \
  --no-version-reporting -c "artifacts=$artifacts" -o "$out" >/dev/null
"${PYTHON:-python3}" "$cdk_dir/drift.py" "$repo/template.yaml" "$out/GdprDsr.template.json"
