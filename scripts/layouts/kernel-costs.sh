#!/usr/bin/env bash
# What a one-object transaction costs the kernel next to svcc's table, by kind of object
# (docs/PERFORMANCE.md, "What the kernel charges per commit"). For each size N: svcc's own
# table for N services / 10·N endpoints (`gen-cluster`, `svcc compile`, loaded by `svcc apply
# --ruleset`), then R times each of these one-line batches, added and deleted again (the
# kernel time of the add: strace -T of nft's sendmsg, which commits; median of R):
#   probe-elem   an element of a set in another, tiny table: touches nothing of svcc's, so what
#                it costs beyond the empty-netns figure is the commit's walk over every chain
#                of every table (nf_tables_commit publishes each chain's next rule generation)
#   accept-elem  `VIP . tcp . port : accept` into svcc's service-ips verdict map
#   goto-elem    `VIP . tcp . port : goto <an existing service chain>` into service-ips: a jump
#                makes the commit validate the whole table (nft_table_validate)
#   dnat-rule    a new chain with one `dnat` rule, referenced by nothing: any rule whose
#                expressions have a validate hook (dnat, jump, lookup …) does the same
# N = 0 is the empty netns (only the tiny table).
# Run as root from the repository:  scripts/layouts/kernel-costs.sh [sizes...]  (default 0 1000 10000 30000)
set -euo pipefail
cd "$(dirname "$0")/../.."
svcc=target/release/svcc
gen=target/release/examples/gen-cluster
[ -x "$svcc" ] && [ -x "$gen" ] || cargo build --release --quiet --bin svcc --example gen-cluster
work=$(mktemp -d)
ns="svcc-kcost-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
R=${R:-9}
node=(--hostname-override node-1 --node-ip 192.168.0.2 --cluster-cidr 10.128.0.0/9)
# kernel ms of the batch in $1 (the longest sendmsg: the one that commits)
kms() {
  ip netns exec "$ns" strace -T -e trace=sendmsg -o "$work/st" nft -f "$1"
  awk -F'<' '/sendmsg/ {gsub(">","",$NF); if ($NF+0 > m) m=$NF+0} END {printf "%.3f", m*1000}' "$work/st"
}
med() { tr ' ' '\n' | grep . | sort -g | awk '{v[NR]=$1} END {printf "%.3f", v[int((NR+1)/2)]}'; }
echo "services chains probe-elem accept-elem goto-elem dnat-rule (kernel ms, median of $R)"
sizes=("$@"); [ ${#sizes[@]} -eq 0 ] && sizes=(0 1000 10000 30000)
for n in "${sizes[@]}"; do
  ip netns add "$ns"
  chains=0
  if [ "$n" -gt 0 ]; then
    $gen "$n" $((n * 10)) > "$work/c.yaml"
    $svcc compile "${node[@]}" "$work/c.yaml" -o "$work/c.nft" 2>/dev/null
    ip netns exec "$ns" $svcc apply --ruleset "$work/c.nft" 2>/dev/null
    ip netns exec "$ns" nft list table ip svcc > "$work/listed"
    chains=$(grep -c '^\s*chain ' "$work/listed")
    # a service chain (service-<hash>-<namespace>/<name>/<proto>/<port>)
    target=$(awk '$1 == "chain" && $2 ~ /^service-[A-Z0-9]+-/ {print $2; exit}' "$work/listed")
  fi
  echo 'table ip probe { set s { type ipv4_addr; }; }' > "$work/probe.nft"
  ip netns exec "$ns" nft -f "$work/probe.nft"
  declare -A t=([probe]="" [accept]="" [goto]="" [dnat]="")
  for r in $(seq 1 "$R"); do
    a="10.255.$((r / 250)).$((r % 250 + 1))"
    echo "add element ip probe s { $a }" > "$work/add"; echo "delete element ip probe s { $a }" > "$work/del"
    t[probe]+=" $(kms "$work/add")"; ip netns exec "$ns" nft -f "$work/del"
    [ "$n" -gt 0 ] || continue
    echo "add element ip svcc service-ips { $a . tcp . 9 : accept }" > "$work/add"
    echo "delete element ip svcc service-ips { $a . tcp . 9 }" > "$work/del"
    t[accept]+=" $(kms "$work/add")"; ip netns exec "$ns" nft -f "$work/del"
    echo "add element ip svcc service-ips { $a . tcp . 9 : goto $target }" > "$work/add"
    t[goto]+=" $(kms "$work/add")"; ip netns exec "$ns" nft -f "$work/del"
    printf 'add chain ip svcc probe-%s\nadd rule ip svcc probe-%s meta l4proto tcp dnat to %s:80\n' "$r" "$r" "$a" > "$work/add"
    echo "delete chain ip svcc probe-$r" > "$work/del"
    echo "flush chain ip svcc probe-$r" > "$work/flush"
    t[dnat]+=" $(kms "$work/add")"; ip netns exec "$ns" nft -f "$work/flush"; ip netns exec "$ns" nft -f "$work/del"
  done
  row="$n $chains $(med <<<"${t[probe]}")"
  for k in accept goto dnat; do
    if [ -n "${t[$k]}" ]; then row+=" $(med <<<"${t[$k]}")"; else row+=" -"; fi
  done
  echo "$row"
  ip netns del "$ns"
done
