#!/usr/bin/env bash
# Runs cargo-fuzz targets for a bounded time each (`make fuzz`, `make fuzz-smoke`) and prints,
# per target, libFuzzer's executions and the coverage reached: `cov` (edges) and `ft`
# (features) of the last status line. Fails when any target crashed, panicked or timed out;
# the input is then in fuzz/artifacts/<target>/ (testdata/fuzz/README.md: reproduce, keep).
#
# Usage: fuzz/run.sh SECONDS TARGET...
# Environment (set by the Makefile): CARGO_FUZZ (the cargo-fuzz binary), FUZZ_FLAGS (the
# build flags, the same as `make fuzz-build` so nothing is rebuilt), FUZZ_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=$1
shift

# The corpus of a target starts from its committed seeds, the recorded provider payloads of
# testdata/ it parses, and the inputs of past crashes (copied anew each run: never lost).
seed() {
  local target=$1 corpus=$2
  local -a from=("fuzz/seeds/$target" "testdata/fuzz/$target")
  case $target in
    meta_webhook) from+=(testdata/messenger testdata/instagram) ;;
    whatsapp_webhook) from+=(testdata/whatsapp) ;;
    zalo_webhook) from+=(testdata/zalo) ;;
    config_file) from+=(config) ;;
  esac
  for dir in "${from[@]}"; do
    [ -d "$dir" ] && find "$dir" -maxdepth 1 -type f ! -name '*.md' -exec cp -f {} "$corpus/" \;
  done
  return 0
}

mkdir -p fuzz/logs
printf '%-18s %12s %7s %7s  %s\n' target executions cov ft result
failed=()
for target in "$@"; do
  corpus=fuzz/corpus/$target
  log=fuzz/logs/$target.log
  mkdir -p "$corpus"
  seed "$target" "$corpus"
  # shellcheck disable=SC2086 # FUZZ_FLAGS is a list of flags
  if "$CARGO_FUZZ" fuzz run $FUZZ_FLAGS --target-dir "$FUZZ_TARGET_DIR" "$target" "$corpus" -- \
    -max_total_time="$secs" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result="FAILED (see $log, fuzz/artifacts/$target/)"
    failed+=("$target")
  fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)
  status=$(grep -E '^#[0-9]+.*cov: [0-9]+ ft: [0-9]+' "$log" | tail -n 1 || true)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$status")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$status")
  printf '%-18s %12s %7s %7s  %s\n' "$target" "${execs:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
echo "fuzz: $(($# - ${#failed[@]})) passed, ${#failed[@]} failed"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz targets that failed: ${failed[*]}" >&2
  for target in "${failed[@]}"; do
    grep -E 'panicked at|ERROR: libFuzzer|SUMMARY|Test unit written|^Failing input' \
      "fuzz/logs/$target.log" | head -n 8 >&2 || true
  done
  exit 1
fi
