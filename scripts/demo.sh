#!/usr/bin/env bash
# Sets up, builds svcc, compiles the bundled example cluster, prints the ruleset and loads it
# into a throwaway network namespace (removed on exit) to show the kernel accepts it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet
svcc=target/release/svcc
out=$(mktemp -d)
ns="svcc-demo-$$"
trap 'ip netns del "$ns" 2>/dev/null || true; rm -rf "$out"' EXIT
echo "\$ svcc compile --config fixtures/example/kube-proxy.yaml --node-ip 192.168.0.2,2001:db8::1 fixtures/example/cluster.yaml -v"
$svcc compile --config fixtures/example/kube-proxy.yaml --node-ip 192.168.0.2,2001:db8::1 \
  fixtures/example/cluster.yaml -v -o "$out/svcc.nft"
cat "$out/svcc.nft"
ip netns add "$ns"
ip netns exec "$ns" nft -f "$out/svcc.nft"
echo
echo "Loaded into network namespace $ns; the kernel now holds:"
ip netns exec "$ns" nft list tables
echo
echo "Packets through compiled rules (a fixture case, real TCP/UDP in network namespaces):"
SVCC_FLOW_LOADERS=nft SVCC_FLOW_VERBOSE=1 cargo test --quiet --test flow -- clusterip-basic --nocapture 2>&1 \
  | grep -vE '^(running|$)' || true
