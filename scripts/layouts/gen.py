# A synthetic table for compare.sh: gen.py LAYOUT SERVICES ENDPOINTS_PER_SERVICE > full.nft
import sys
# layout: hash | pipapo | rbtree ; n services, e endpoints each, P ports per map
lay, n, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
P = 16
M = 65536
K = (n + P - 1) // P
out = []
w = out.append
w("table ip t {")
for s in range(K):
    if lay == "hash":
        w(f" map ep{s} {{ typeof numgen random mod 1 . numgen random mod 1 : ip daddr . tcp dport; }}")
    elif lay == "pipapo":
        w(f" map ep{s} {{ typeof numgen random mod 1 . numgen random mod 65536 : ip daddr . th dport; flags interval; }}")
    else:
        w(f" map ep{s} {{ typeof numgen random mod 65536 : ip daddr . th dport; flags interval; }}")
w(" map svc { type ipv4_addr . inet_proto . inet_service : verdict; }")
w(" chain pre { type nat hook prerouting priority dstnat; ip daddr . meta l4proto . th dport vmap @svc; }")
def rng(i, N):
    lo = i * M // N; hi = (i + 1) * M // N - 1
    return lo, hi
for s in range(n):
    sh = s // P; loc = s % P
    if lay == "hash":
        r = f"meta l4proto tcp dnat ip addr . port to numgen random mod 1 offset {s+1} . numgen random mod {e} map @ep{sh}"
    elif lay == "pipapo":
        r = f"meta l4proto tcp dnat ip addr . port to numgen random mod 1 offset {s+1} . numgen random mod 65536 map @ep{sh}"
    else:
        r = f"meta l4proto tcp dnat ip addr . port to numgen random mod 65536 offset {loc*M} map @ep{sh}"
    w(f" chain s{s} {{ {r}; }}")
w("}")
for s in range(n):
    sh = s // P; loc = s % P
    els = []
    for i in range(e):
        a = f"10.{100+ (s>>16)}.{(s>>8)&255}.{s&255}"
        ip = f"10.{(s*e+i)>>16 & 255}.{(s*e+i)>>8 & 255}.{(s*e+i)&255}"
        if lay == "hash":
            els.append(f"{s+1} . {i} : {ip} . 8080")
        elif lay == "pipapo":
            lo, hi = rng(i, e); els.append(f"{s+1} . {lo}-{hi} : {ip} . 8080")
        else:
            lo, hi = rng(i, e); els.append(f"{loc*M+lo}-{loc*M+hi} : {ip} . 8080")
    w(f"add element ip t ep{sh} {{ {', '.join(els)} }}")
    w(f"add element ip t svc {{ 10.{100+(s>>16)}.{(s>>8)&255}.{s&255} . tcp . 80 : goto s{s} }}")
print("\n".join(out))
