#!/usr/bin/env bash
# Endpoint-map layouts compared in the kernel through `nft -f` (docs/PERFORMANCE.md, "Endpoint-map
# layouts"): a synthetic table of N services (a verdict map `daddr . proto . port` → one chain
# per service, one `dnat … map` rule in it, endpoint maps of 16 services each, E endpoints per
# service), loaded whole, then one endpoint added to a service, R times. Per layout: the full
# load (wall and sys of nft -f) and the kernel time of each incremental batch (strace -T of
# nft's sendmsg, the transaction is committed inside it).
#   hash:   typeof numgen random mod 1 . numgen random mod 1, rule `ID . numgen random mod N`
#           (the count is in the rule: an added endpoint replaces it)
#   rbtree: typeof numgen random mod 1, flags interval; rule `numgen random mod 65536 offset
#           BASE`, each endpoint a key range (svcc's layout)
#   pipapo: typeof numgen random mod 1 . numgen random mod 65536, flags interval; rule
#           `ID . numgen random mod 65536`, each endpoint `ID . range`
# Run as root:  scripts/layouts/compare.sh [sizes...]   (default 1000 10000 30000)
set -euo pipefail
cd "$(dirname "$0")"
work=$(mktemp -d)
ns="svcc-layouts-$$"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
E=${E:-10}; R=${R:-7}
one() { # layout n
  local lay=$1 n=$2
  ip netns add "$ns"
  python3 gen.py "$lay" "$n" "$E" > "$work/full.nft"
  /usr/bin/time -f "full %e s (sys %S)" ip netns exec "$ns" nft -f "$work/full.nft" 2> "$work/time"
  local line; line="$n $lay $(tail -1 "$work/time"):"
  for r in $(seq 1 "$R"); do
    python3 inc.py "$lay" $(( (r * 7919) % n )) "$E" > "$work/inc.nft"
    ip netns exec "$ns" strace -T -e trace=sendmsg -o "$work/st" nft -f "$work/inc.nft"
    line+=" $(awk -F'<' '/sendmsg/ {gsub(">","",$NF); if ($NF+0 > m) m=$NF+0} END {printf "%.2f", m*1000}' "$work/st")"
  done
  echo "$line ms"
  ip netns del "$ns"
}
sizes=("$@"); [ ${#sizes[@]} -eq 0 ] && sizes=(1000 10000 30000)
for n in "${sizes[@]}"; do
  for lay in hash rbtree pipapo; do one "$lay" "$n"; done
done
