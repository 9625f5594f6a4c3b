#!/usr/bin/env bash
# Measures svcc at cluster scale on this machine, in one run, and writes docs/PERFORMANCE.md.
# Run as root (network namespaces). Takes about 10 minutes on 2 cores.
#   scripts/perf.sh            # everything
#   QUICK=1 scripts/perf.sh    # smaller data-plane runs
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --bins --examples
svcc=target/release/svcc
gen=target/release/examples/gen-cluster
work=$(mktemp -d)
# Every namespace made here is svcc-perf-<pid>-*: removed on exit, whatever happened.
cleanup() {
  for n in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^svcc-perf-$$-" || true); do ip netns del "$n" || true; done
  rm -rf "$work"
}
trap cleanup EXIT
newns() { local n="svcc-perf-$$-$1"; ip netns add "$n"; echo "$n"; }
secs() { python3 -c "import sys; print(f'{float(sys.argv[1]):.3f}')" "$1"; }
now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.3f}')" "$1" "$2"; }
node=(--hostname-override node-1 --node-ip 192.168.0.2 --cluster-cidr 10.128.0.0/9)

echo "== 1. cold compile, 10k services / 100k endpoints (YAML)"
$gen 10000 100000 > "$work/c10k.yaml"
/usr/bin/time -f "%e %M" -o "$work/t1" $svcc compile "${node[@]}" "$work/c10k.yaml" -o "$work/c10k.nft"
read -r c_time c_kb < "$work/t1"
c_mib=$((c_kb / 1024))
echo "   $c_time s, $c_mib MiB peak RSS"

echo "== 2. full sync: the netlink applier vs nft -f of the same compiled file"
ns=$(newns nft)
t0=$(now); ip netns exec "$ns" nft -f "$work/c10k.nft"; t1=$(now)
nft_time=$(elapsed "$t0" "$t1")
# The applier alone (model -> one netlink transaction, as nft -f goes text -> kernel), with the
# compile before it timed apart; then the whole `svcc apply` command, YAML to kernel.
ns=$(newns fullsync)
read -r _ fs_compile _ fs_apply _ fs_encode _ fs_kernel _ fs_msgs _ objects < <(ip netns exec "$ns" target/release/examples/fullsync "$work/c10k.yaml")
ns=$(newns apply)
t0=$(now); ip netns exec "$ns" $svcc apply "${node[@]}" "$work/c10k.yaml" 2> "$work/apply.log"; t1=$(now)
apply_time=$(elapsed "$t0" "$t1")
ns=$(newns applyfile)
t0=$(now); ip netns exec "$ns" $svcc apply --ruleset "$work/c10k.nft" 2> "$work/applyfile.log"; t1=$(now)
applyfile_time=$(elapsed "$t0" "$t1")
ratio=$(python3 -c "print(f'{$fs_apply/$nft_time:.2f}')")
objects=${objects//_/ }
echo "   nft -f: $nft_time s; applier: $fs_apply s (encode $fs_encode, kernel $fs_kernel; ratio $ratio) after compile $fs_compile s; svcc apply: $apply_time s; svcc apply --ruleset: $applyfile_time s; $objects"

echo "== 3. incremental sync after one endpoint change (svcc run's path: session delta + applier)"
sync_rows=""
for n in 1000 10000 30000; do
  ns=$(newns "sync$n")
  out=$(ip netns exec "$ns" target/release/examples/sync "$n" 2>/dev/null)
  rep=$(sed -n 's/^replaced: //p' <<<"$out"); cnt=$(sed -n 's|^added/removed: ||p' <<<"$out")
  svc=$(sed -n 's/^service: //p' <<<"$out")
  echo "   $n services: replaced: $rep; added/removed: $cnt; service: $svc"
  sync_rows+="| $n | $rep | $cnt | $svc |"$'\n'
done

echo "== 4. data plane: new TCP connections/s through one VIP"
dp_secs=3; [ -n "${QUICK:-}" ] && dp_secs=1
target/release/examples/dataplane --seconds "$dp_secs" --backend nft --backend iptables-legacy 1 10000 30000 > "$work/dp.tsv" 2> "$work/dp.log"
cat "$work/dp.tsv"

echo "== 5. sets and maps in the table"
count_sets() {
  local ns; ns=$(newns "sets$1")
  $gen "$1" "$(( $1 * 5 ))" > "$work/s$1.yaml"
  $svcc compile "${node[@]}" "$work/s$1.yaml" -o "$work/s$1.nft"
  ip netns exec "$ns" nft -f "$work/s$1.nft"
  ip netns exec "$ns" nft list table ip svcc | grep -cE '^\s+(set|map) '
}
sets100=$(count_sets 100); sets30k=$(count_sets 30000)
echo "   100 services: $sets100; 30,000 services: $sets30k"

dp() { awk -v b="$1" -v n="$2" '$1==b && $2==n {print $3}' "$work/dp.tsv"; }
nft1=$(dp nft 1); nft10k=$(dp nft 10000); nft30k=$(dp nft 30000)
ipt1=$(dp iptables-legacy 1); ipt10k=$(dp iptables-legacy 10000); ipt30k=$(dp iptables-legacy 30000)
dpratio=$(python3 -c "print(f'{$nft30k/$nft1:.2f}')")
cat > docs/PERFORMANCE.md <<MD
# svcc performance

Measured by \`scripts/perf.sh\` in one run on this machine ($(nproc) cores, $(free -g | awk '/Mem/{print $2}') GiB,
kernel $(uname -r), $(nft --version | head -1)), $(date -u +%Y-%m-%d). Synthetic clusters from
\`fixtures/gen/cluster.rs\` (mix of ClusterIP / NodePort / LoadBalancer with source ranges, multi-port,
affinity, traffic policies). Criterion benchmarks of each stage: \`cargo bench --bench stages\`.

| # | measure | result | target | anchor (kube-proxy) |
|---|---|---|---|---|
| 1 | cold compile, 10k services / 100k endpoints from YAML | $c_time s, $c_mib MiB peak RSS | ≤ 1.5 s, ≤ 200 MiB | — |
| 2 | full sync: the netlink applier vs \`nft -f\` of the same compiled file | $fs_apply s vs $nft_time s (ratio $ratio; encode $fs_encode s, kernel $fs_kernel s, $fs_msgs messages); with the compile ($fs_compile s) before it; whole \`svcc apply\` command $apply_time s, \`apply --ruleset\` $applyfile_time s | ≤ 2 s, ≤ 1/3 of nft -f | nftables mode: 13–16 min full syncs at 5k–44k services |
| 3 | incremental sync after one endpoint change | see below | ≤ 5 ms, 30k/1k ≤ 1.5 | 141 ms to add one Service at 10k |
| 4 | new TCP connections/s through one VIP (nftables) | 1: $nft1, 10k: $nft10k, 30k: $nft30k (30k/1 = $dpratio) | 30k/1 ≥ 0.95 | nftables flat; iptables +~20 ns/rule |
| 4b | same, iptables backend (legacy), for contrast | 1: $ipt1, 10k: $ipt10k, 30k: $ipt30k | — | |
| 5 | sets + maps in \`table ip svcc\` | 100 services: $sets100; 30,000: $sets30k (12 fixed + endpoint maps, see below) | constant, ≤ 16 | kube-proxy: grows with services and endpoints |

The 10k/100k tables: $objects.

## 3. Incremental sync (one endpoint changed; what \`svcc run\` does)

\`examples/sync.rs\`, median of 20 changes each: the changed file is parsed, the compile session
re-lowers the one Service whose endpoints changed and gives the delta of its service ports, the
applier sends it in one transaction. "replaced": one endpoint's address changes (a pod
rescheduled), the count stays; "added/removed": the count changes; "Service": a whole Service
(ClusterIP + external IP, two endpoints) added or removed (kube-proxy's anchor: 141 ms to add
one Service at 10k).

| services | endpoint replaced | endpoint added/removed | Service added/removed |
|---|---|---|---|
$sync_rows
MD
# The analysis below was written from these measurements and the profiles named in it.
cat >> docs/PERFORMANCE.md <<'MD'

## What the figures say

- **(1) cold compile — met.** Objects are cut down to the fields lowering reads as soon as
  they are parsed (`compiler/src/manifest/compact.rs`, checked by `compacting_changes_nothing`),
  kubectl List items are parsed in place on both cores, the input text and the typed objects
  are freed (and returned to the OS, `mi_collect`) before the model is built, and the ruleset
  is streamed to its file. The peak is now the nft model itself.
- **(2) full sync — met** (the applier alone against `nft -f` of the same file, as the item
  asks; ≈ 0.3 over three runs). Endpoints are elements of endpoint maps
  rather than rules (one `dnat … map` rule per service chain), so the 10k table has ≈26k rules
  instead of 125k, and the applier sends one batch of ≈44k messages. Both `nft -f` and the
  applier now spend most of their time outside the kernel's rule handling; the applier's
  remaining cost is encoding (libnftnl) and the kernel's element inserts.
- **(3) incremental sync — ≤ 5 ms met for endpoint changes that keep the count; the 30k/1k
  ratio is the kernel's.** A replaced endpoint is one element deleted and one added in an
  endpoint map (data, not verdicts), so `nf_tables_commit` does not re-validate the table, and
  the compile session re-lowers only the Service concerned (`Session::compile_delta`, no
  whole-model work): the compile and encode parts are flat (≈ 0.1–0.2 ms). What grows is the
  kernel's commit (the "of which kernel" figure), and `perf record -a` during 6,000 such
  changes at 30k (`SVCC_SYNC_CHANGES=6000 examples/sync 30000`) puts it in
  `nf_tables_commit` itself: every commit walks every chain of every table to publish the
  next generation's rules (step 2 of the commit), whatever changed — ≈ 20 ns per chain, so
  ≈ 1 ms with the 47k chains of 30k services. Only fewer chains per service would lower it. When
  the **count** changes, the service chain's one rule (`numgen random mod N`) changes, and any
  new rule with `dnat` makes the kernel walk every chain reachable from the base chains
  (`nft_table_validate`): that part grows with the table (see the column) and no layout that
  keeps `numgen` in the rule avoids it on this kernel. Adding or removing a whole Service is a
  delta too (its chains, its map elements), against kube-proxy's 141 ms at 10k.
- **(4) data plane — met.** Dispatch is one verdict-map lookup and endpoint choice one hash
  lookup, whatever the number of services (each figure is the median of five runs taken in
  rounds over the sizes; single runs on this 2-core VM vary by ±15 %, and a series' first runs
  tend to be faster, which is why the sizes are interleaved). The iptables backend walks `SVCC-SERVICES` linearly
  (the measured service sorts last): kube-proxy's published curve.
- **Benchmarks** (`cargo bench --bench stages`): each compiler stage at 1k/10k/30k, the
  whole-model diff, and `delta/endpoint` — the session's delta after one endpoint change —
  which stays at 0.1–0.2 ms from 1k to 30k services.
- **(5) sets/maps — traded for (3), measured.** 12 fixed sets/maps plus the endpoint maps,
  whose number grows with the cluster (a power of two, one per ≤ 16 service ports, at most
  1024). One endpoint map would be constant, but loading it is quadratic in the kernel: every
  rule that looks up a map walks all its elements when it binds it (`nf_tables_bind_set`), and
  every element added to a map is checked against every binding (`nft_add_set_elem`): one map
  for 10k services / 100k endpoints took 186 s of kernel time to load. Per-endpoint rules
  (constant 12 maps) cost instead a whole-table validation on every endpoint change (46–59 ms
  at 10k, 156 ms at 30k). `names::MAX_ENDPOINT_SHARDS = 1` restores the single map. The
  per-packet cost does not depend on the number of maps (each chain names its own).
MD
# ---- apply --ruleset and svcc run under churn (issue 14): a self-contained block -------------
# `svcc apply --ruleset` of the 10k/100k file against `nft -f` of it, time and peak RSS, three
# rounds interleaved (medians); the phases from examples/apply-ruleset (which also checks that
# the fast parser and pest give the same model). Then examples/churn: `svcc run`'s RSS under
# fast churn for CHURN_SECONDS (default 60; 0 skips; 3600 for the hour).
echo "== 6. apply --ruleset vs nft -f (10k/100k file), 3 rounds"
med() { sort -g | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
: > "$work/rs_nft"; : > "$work/rs_svcc"
for i in 1 2 3; do
  ns=$(newns "rsnft$i"); /usr/bin/time -f "%e %M" -a -o "$work/rs_nft" ip netns exec "$ns" nft -f "$work/c10k.nft"
  ns=$(newns "rssvcc$i"); /usr/bin/time -f "%e %M" -a -o "$work/rs_svcc" ip netns exec "$ns" $svcc apply --ruleset "$work/c10k.nft" 2>/dev/null
done
rs_nft_t=$(awk '{print $1}' "$work/rs_nft" | med); rs_nft_m=$(( $(awk '{print $2}' "$work/rs_nft" | med) / 1024 ))
rs_t=$(awk '{print $1}' "$work/rs_svcc" | med); rs_m=$(( $(awk '{print $2}' "$work/rs_svcc" | med) / 1024 ))
rs_ratio=$(python3 -c "print(f'{$rs_t/$rs_nft_t:.2f}')")
ns=$(newns rsphases)
read -r _ rs_parse _ rs_apply _ rs_encode _ rs_kernel _ rs_pest_stmts _ rs_pest < <(ip netns exec "$ns" target/release/examples/apply-ruleset "$work/c10k.nft" --pest)
echo "   nft -f: $rs_nft_t s, $rs_nft_m MiB; svcc apply --ruleset: $rs_t s, $rs_m MiB (ratio $rs_ratio); parse $rs_parse s (pest: $rs_pest s), encode $rs_encode s, kernel $rs_kernel s"
churn_secs=${CHURN_SECONDS:-60}
churn_out="(skipped: CHURN_SECONDS=0)"
if [ "$churn_secs" != 0 ]; then
  echo "== 7. svcc run under churn, 10k/100k, $churn_secs s"
  ns=$(newns churn)
  churn_out=$(ip netns exec "$ns" target/release/examples/churn --seconds "$churn_secs" 2>/dev/null)
  echo "$churn_out" | sed 's/^/   /'
fi
cat >> docs/PERFORMANCE.md <<MD

## 6. \`svcc apply --ruleset\` and \`svcc run\` memory under churn

\`svcc apply --ruleset\` of the 10k/100k file reads it with the fast parser (\`grammar/src/fast.rs\`:
a line at a time, straight into the model; pest only for what it does not recognise), medians
of 3 rounds, each in a fresh namespace:

| | time | peak RSS |
|---|---|---|
| \`nft -f\` | $rs_nft_t s | $rs_nft_m MiB |
| \`svcc apply --ruleset\` | $rs_t s (ratio $rs_ratio) | $rs_m MiB |

Phases (\`examples/apply-ruleset\`): parse $rs_parse s (the pest grammar on the same file:
$rs_pest s, same model), encode $rs_encode s, kernel $rs_kernel s; $rs_pest_stmts statements left to pest.

\`svcc run\` under churn (\`examples/churn\`, $churn_secs s; one change every 50 ms among 100
small watched files: endpoints replaced/added/removed, Services added/removed under new names):

\`\`\`
$churn_out
\`\`\`
MD
echo "wrote docs/PERFORMANCE.md"
