# One endpoint added to service S (E -> E+1) for compare.sh: inc.py LAYOUT S E > inc.nft
import sys
# an endpoint added to service s (e -> e+1)
lay, s, e = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
# REPLACE=1: endpoint 0 replaced by another address instead (the count stays)
import os
if os.environ.get("REPLACE"):
    P = 16; M = 65536; sh = s // P; loc = s % P
    if lay == "hash":
        k = f"{s+1} . 0"
    elif lay == "pipapo":
        k = f"{s+1} . 0-{M // e - 1}"
    else:
        k = f"{loc*M}-{loc*M + M // e - 1}"
    print(f"delete element ip t ep{sh} {{ {k} }}")
    print(f"add element ip t ep{sh} {{ {k} : 10.201.0.1 . 8080 }}")
    sys.exit(0)
P=16; M=65536; sh=s//P; loc=s%P
def ip(i): return f"10.200.{(i>>8)&255}.{i&255}"
def rng(i,N): return i*M//N, (i+1)*M//N-1
out=[]
if lay=="hash":
    out.append(f"add element ip t ep{sh} {{ {s+1} . {e} : {ip(e)} . 8080 }}")
    out.append(f"flush chain ip t s{s}")
    out.append(f"add rule ip t s{s} meta l4proto tcp dnat ip addr . port to numgen random mod 1 offset {s+1} . numgen random mod {e+1} map @ep{sh}")
else:
    old=[]; new=[]
    for i in range(e):
        lo,hi=rng(i,e)
        old.append(f"{s+1} . {lo}-{hi}" if lay=="pipapo" else f"{loc*M+lo}-{loc*M+hi}")
    for i in range(e+1):
        lo,hi=rng(i,e+1)
        k = f"{s+1} . {lo}-{hi}" if lay=="pipapo" else f"{loc*M+lo}-{loc*M+hi}"
        new.append(f"{k} : {ip(i)} . 8080")
    out.append(f"delete element ip t ep{sh} {{ {', '.join(old)} }}")
    out.append(f"add element ip t ep{sh} {{ {', '.join(new)} }}")
print("\n".join(out))
