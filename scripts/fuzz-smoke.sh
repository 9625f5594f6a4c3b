#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/, cargo-fuzz + libFuzzer) and runs each one briefly from its
# committed corpus (fuzz/corpus/<target>): a crash, a failed assertion or a timeout fails.
# New inputs go to a temporary directory, so the tree stays clean; a crashing input is kept
# in fuzz/artifacts/<target>/ (reproduce: cargo +nightly fuzz run <target> <file>).
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]   (default 10; 6 targets)
#
# cargo-fuzz is installed if missing. It needs a nightly compiler (sanitizers, -Z flags):
# the `nightly` toolchain if rustup has it, else the stable one with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
secs=${1:-10}
targets=(manifest config grammar grammar_fast netlink compile)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz" >&2
  # From a neutral directory and with stdin closed: one run here failed in cargo's rustc
  # probe, which had read stray input; a second attempt is cheap next to a red CI.
  install() { (cd / && cargo install --locked cargo-fuzz </dev/null); }
  install || { echo "fuzz-smoke: retrying the cargo-fuzz install" >&2; install; }
fi
if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
else
  echo "fuzz-smoke: no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

start=$(date +%s)
"${fuzz[@]}" build
echo "fuzz-smoke: targets built in $(($(date +%s) - start)) s" >&2

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$tmp/$t"
  log="$tmp/$t.log"
  # -timeout: a single input taking 10 s is a hang; -rss_limit_mb: a blow-up is a failure.
  if ! "${fuzz[@]}" run "$t" "$tmp/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz-smoke: target $t FAILED (input kept in fuzz/artifacts/$t/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "fuzz-smoke: $t: ${runs:-?} executions in ${secs} s, no crash"
done
