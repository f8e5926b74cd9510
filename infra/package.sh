#!/usr/bin/env bash
# `make package`: every function's release `bootstrap`, built the way `sam build` builds it
# (BuildMethod rust-cargolambda: `cargo lambda build --release --arm64 --bin <Binary>`), one
# function at a time, so that each links only its own crate's features and not the union a
# workspace build makes. Then each is held to the size budget.
#   PACKAGE_ARCH        arm64 (default: what template.yaml deploys) or x86_64 (what `make bench`
#                       runs on this machine)
#   PACKAGE_MAX_BYTES   the budget per bootstrap (default 6,000,000)
# Output: $CARGO_TARGET_DIR/lambda-<arch>/<binary>/bootstrap and a table of sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
. infra/local/lib.sh
arch=${PACKAGE_ARCH:-arm64}
budget=${PACKAGE_MAX_BYTES:-6000000}
target_dir=${CARGO_TARGET_DIR:-target}
out="$target_dir/lambda-$arch"
case "$arch" in
  arm64) flag=--arm64 triple=aarch64-unknown-linux-gnu ;;
  x86_64) flag=--x86-64 triple=x86_64-unknown-linux-gnu ;;
  *) echo "PACKAGE_ARCH is arm64 or x86_64, not $arch" >&2; exit 2 ;;
esac
if ! rustup target list --installed | grep -qx "$triple"; then
  log "adding the Rust target $triple"
  rustup target add "$triple"
fi
command -v cargo-lambda >/dev/null || { echo "cargo-lambda missing: run infra/local/ensure-emulator.sh" >&2; exit 1; }
# The binaries template.yaml deploys (Metadata.BuildProperties.Binary), each once.
binaries=$(sed -nE 's/^ +Binary: *([A-Za-z0-9_-]+) *$/\1/p' template.yaml | sort -u)
[[ -n "$binaries" ]] || { echo "no BuildProperties.Binary in template.yaml" >&2; exit 1; }
for binary in $binaries; do
  log "package: $binary ($arch)"
  cargo lambda build --quiet --release "$flag" --bin "$binary" --lambda-dir "$out"
done
status=0
printf '%-10s %12s\n' binary bytes
for binary in $binaries; do
  bytes=$(stat -c %s "$out/$binary/bootstrap")
  verdict=""
  if (( bytes > budget )); then verdict="  over the budget of $budget"; status=1; fi
  printf '%-10s %12s%s\n' "$binary" "$bytes" "$verdict"
done
exit "$status"
