#!/usr/bin/env bash
# Sets up and runs every test: unit, snapshot, and real-kernel packet-flow tests
# (network namespaces; run as root). This is the command CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export INSTA_UPDATE=no
# As root (CI), a flow test that cannot run is a failure, not a skip.
[ "$(id -u)" = 0 ] && export SVCC_FLOW_REQUIRE=1
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Benches are built, not run (they measure; CI only proves they compile).
cargo test --workspace --lib --bins --tests --examples 2>&1 | tee "$log"
cargo test --workspace --doc 2>&1 | tee -a "$log"
cargo bench --workspace --no-run
# Fuzz targets (fuzz/, its own workspace): built, then each run ~10 s from its committed
# corpus; any crash fails (scripts/fuzz-smoke.sh; installs cargo-fuzz if missing).
scripts/fuzz-smoke.sh
# Inside ONE VM on Debian's stock kernel (scripts/vm-test.sh; docs/FLOW-TESTS.md, "Inside a
# VM"): the flow cases on the older kernel users run, through the nftables writers (nft text
# and svcc's netlink applier: the kernel-version-sensitive part; the CPU is emulated there, and
# the iptables loaders would double the time: run them alone, see the doc), and IPVS, which the
# host kernel lacks.
# The IPVS suites join as soon as tests/ipvs.rs exists (it comes with the `ipvs` flow loader).
# SVCC_NO_VM=1 skips the step (a machine without the VM packages).
if [ "${SVCC_NO_VM:-0}" != 1 ]; then
  vm_args=(SVCC_FLOW_LOADERS=nft,apply flow)
  if [ -f tests/ipvs.rs ]; then
    vm_args+=(SVCC_IPVS=1 ipvs SVCC_FLOW_LOADERS=ipvs flow)
  fi
  scripts/vm-test.sh "${vm_args[@]}" 2>&1 | tee -a "$log"
fi
left=$(ip netns list 2>/dev/null | grep -E '^svcc' || true)
if [ -n "$left" ]; then
  echo "tests left network namespaces behind:" >&2
  echo "$left" >&2
  exit 1
fi
# One closing line for the whole run (cargo prints one per test binary, the VM's included).
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
